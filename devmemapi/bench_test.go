package devmemapi

import (
	"strconv"
	"testing"
)

// The control-message benchmarks cover the per-fragment work of a devmem
// receive on both sides of recvmsg: the stack encoding one SCM_DEVMEM_DMABUF
// per fragment, the application parsing them, and the DONTNEED option value
// going back. Sizes are fragments per recvmsg call (256 is what
// harness.Receive makes room for). None of them may allocate.

var fragCounts = []int{1, 16, 256}

func filledOOB(n int) []byte {
	oob := make([]byte, n*CmsgSpaceDmabuf)
	off := 0
	for i := 0; i < n; i++ {
		c := DmabufCmsg{FragOffset: uint64(i) << 12, FragSize: 1448, FragToken: uint32(i + 1), DmabufID: 1}
		off, _ = PutDmabufCmsg(oob, off, SCM_DEVMEM_DMABUF, &c)
	}
	return oob
}

func BenchmarkPutDmabufCmsg(b *testing.B) {
	for _, n := range fragCounts {
		b.Run("frags="+strconv.Itoa(n), func(b *testing.B) {
			oob := make([]byte, n*CmsgSpaceDmabuf)
			c := DmabufCmsg{FragSize: 1448, DmabufID: 1}
			b.ReportAllocs()
			b.SetBytes(int64(len(oob)))
			for i := 0; i < b.N; i++ {
				off := 0
				for j := 0; j < n; j++ {
					c.FragOffset, c.FragToken = uint64(j)<<12, uint32(j+1)
					var ok bool
					if off, ok = PutDmabufCmsg(oob, off, SCM_DEVMEM_DMABUF, &c); !ok {
						b.Fatal("cmsg does not fit")
					}
				}
			}
		})
	}
}

func BenchmarkAppendFrags(b *testing.B) {
	for _, n := range fragCounts {
		b.Run("frags="+strconv.Itoa(n), func(b *testing.B) {
			oob := filledOOB(n)
			frags := make([]Frag, 0, n)
			b.ReportAllocs()
			b.SetBytes(int64(len(oob)))
			for i := 0; i < b.N; i++ {
				var err error
				if frags, err = AppendFrags(frags[:0], oob); err != nil || len(frags) != n {
					b.Fatalf("%d frags, %v", len(frags), err)
				}
			}
		})
	}
}

func BenchmarkTokensRoundTrip(b *testing.B) {
	for _, n := range []int{1, 16, MaxDontNeedTokens} {
		b.Run("tokens="+strconv.Itoa(n), func(b *testing.B) {
			toks := make([]DmabufToken, n)
			for i := range toks {
				toks[i] = DmabufToken{TokenStart: uint32(i + 1), TokenCount: 1}
			}
			buf := make([]byte, 0, n*SizeofDmabufToken)
			back := make([]DmabufToken, 0, n)
			b.ReportAllocs()
			b.SetBytes(int64(n * SizeofDmabufToken))
			for i := 0; i < b.N; i++ {
				buf = AppendTokens(buf[:0], toks)
				var err error
				if back, err = ParseTokens(back[:0], buf); err != nil || len(back) != n {
					b.Fatalf("%d tokens, %v", len(back), err)
				}
			}
		})
	}
}

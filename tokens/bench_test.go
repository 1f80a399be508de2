package tokens

import (
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/xdevmem/xdevmem/devmemapi"
)

// countFrames is a Frames with one atomic count per frame, roughly what the
// stack's UMEM region does on Hold and Release.
type countFrames struct{ refs []atomic.Int32 }

func (f *countFrames) Hold(frame uint32) { f.refs[frame].Add(1) }
func (f *countFrames) Release(frames []uint32) {
	for _, fr := range frames {
		f.refs[fr].Add(-1)
	}
}

// benchFrames is the frame-reference cost: "nop" measures this package
// alone, "atomic" adds one atomic per Hold and per released frame.
var benchFrames = []struct {
	name string
	make func(n int) Frames
}{
	{"nop", func(int) Frames { return nopFrames{} }},
	{"atomic", func(n int) Frames { return &countFrames{refs: make([]atomic.Int32, n)} }},
}

// deliverDontNeed delivers batch fragments on frames base, base+1, ... and
// returns them with one DONTNEED of batch single-token entries (as
// ncdevmem does); one b.N is one token.
func deliverDontNeed(b *testing.B, s *Socket, bind *Binding, base uint32, toks []devmemapi.DmabufToken) {
	for i := range toks {
		tok, err := s.Deliver(bind, base+uint32(i))
		if err != nil {
			b.Fatal(err)
		}
		toks[i] = devmemapi.DmabufToken{TokenStart: tok, TokenCount: 1}
	}
	if n, err := s.DontNeed(toks); n != len(toks) || err != nil {
		b.Fatalf("DontNeed = %d, %v; want %d", n, err, len(toks))
	}
}

// BenchmarkDeliverDontNeed: one Deliver and its share of one DONTNEED per
// op, so ns/op is ns per token.
func BenchmarkDeliverDontNeed(b *testing.B) {
	const nframes = 4096
	for _, auto := range []bool{false, true} {
		for _, fr := range benchFrames {
			for _, batch := range []int{1, 16, 128} {
				name := modeName(auto) + "/frames=" + fr.name + "/batch=" + strconv.Itoa(batch)
				b.Run(name, func(b *testing.B) {
					bind := NewBinding(1, fr.make(nframes), nframes, auto)
					s := NewSocket(auto)
					toks := make([]devmemapi.DmabufToken, batch)
					deliverDontNeed(b, s, bind, 0, toks) // grow the table
					b.ReportAllocs()
					b.ResetTimer()
					for i := 0; i < b.N; i += batch {
						deliverDontNeed(b, s, bind, 0, toks[:min(batch, b.N-i)])
					}
				})
			}
		}
	}
}

// BenchmarkDeliverDontNeedParallel: each goroutine has its own socket on
// one shared binding (as connections share a dmabuf) and its own frames,
// 64 frames (256 bytes of urefs) apart.
func BenchmarkDeliverDontNeedParallel(b *testing.B) {
	const stride, maxG = 64, 256
	for _, auto := range []bool{false, true} {
		for _, fr := range benchFrames {
			for _, batch := range []int{1, 16} {
				name := modeName(auto) + "/frames=" + fr.name + "/batch=" + strconv.Itoa(batch)
				b.Run(name, func(b *testing.B) {
					bind := NewBinding(1, fr.make(stride*maxG), stride*maxG, auto)
					var next atomic.Uint32
					b.ReportAllocs()
					b.RunParallel(func(pb *testing.PB) {
						base := (next.Add(1) - 1) % maxG * stride
						s := NewSocket(auto)
						toks := make([]devmemapi.DmabufToken, batch)
						for {
							n := 0
							for n < batch && pb.Next() {
								n++
							}
							if n == 0 {
								return
							}
							deliverDontNeed(b, s, bind, base, toks[:n])
						}
					})
				})
			}
		}
	}
}

// BenchmarkFloor is the least an autorelease-off token can cost: one
// atomic increment to deliver it and one compare-and-swap to return it,
// nothing else. It calibrates the numbers above on a given machine.
func BenchmarkFloor(b *testing.B) {
	urefs := make([]atomic.Uint32, 128)
	b.ReportAllocs()
	for i := 0; i < b.N; i += len(urefs) {
		n := min(len(urefs), b.N-i)
		for j := range n {
			urefs[j].Add(1)
		}
		for j := range n {
			decIfPositive(&urefs[j])
		}
	}
}

// BenchmarkAutoreleaseTableHeld: autorelease-on cost with many tokens held
// (the lowest-free search runs over a large table).
func BenchmarkAutoreleaseTableHeld(b *testing.B) {
	for _, held := range []int{0, 1 << 10, 1 << 16} {
		b.Run("held="+strconv.Itoa(held), func(b *testing.B) {
			bind := NewBinding(1, nopFrames{}, 1, true)
			s := NewSocket(true)
			for range held {
				if _, err := s.Deliver(bind, 0); err != nil {
					b.Fatal(err)
				}
			}
			toks := make([]devmemapi.DmabufToken, 16)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i += len(toks) {
				n := min(len(toks), b.N-i)
				for j := range n {
					tok, _ := s.Deliver(bind, 0)
					toks[j] = devmemapi.DmabufToken{TokenStart: tok, TokenCount: 1}
				}
				s.DontNeed(toks[:n])
			}
		})
	}
}

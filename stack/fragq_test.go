package stack

import (
	"math/rand"
	"testing"
)

func TestFragQueueInOrder(t *testing.T) {
	var fq fragQueue
	fq.reset(1000, nil)
	if k := fq.insert(1000, 100, 4096, 1, kindDmabuf, nil); k != 1 {
		t.Fatalf("insert: %d", k)
	}
	if k := fq.insert(1100, 50, 8192, 2, kindDmabuf, nil); k != 1 {
		t.Fatalf("insert: %d", k)
	}
	f := fq.front()
	if f == nil || f.addr != 4096 || f.n != 100 {
		t.Fatalf("front %+v", f)
	}
	if fq.consume(40) {
		t.Fatal("partial consume popped")
	}
	if f := fq.front(); f.addr != 4096+40 || f.n != 60 || f.off != 40 {
		t.Fatalf("after partial consume %+v", f)
	}
	if !fq.consume(60) {
		t.Fatal("full consume did not pop")
	}
	if f := fq.front(); f == nil || f.frame != 2 {
		t.Fatalf("front %+v", f)
	}
	// A retransmission of delivered bytes records nothing.
	if k := fq.insert(1000, 100, 12288, 3, kindDmabuf, nil); k != 0 {
		t.Fatalf("retransmit: %d", k)
	}
	// A retransmission overlapping the queue records nothing new.
	if k := fq.insert(1100, 50, 12288, 3, kindDmabuf, nil); k != 0 {
		t.Fatalf("duplicate: %d", k)
	}
	// Partly delivered, partly new: only the new tail is recorded.
	if k := fq.insert(1120, 60, 12288, 3, kindDmabuf, nil); k != 1 {
		t.Fatalf("overlap: %d", k)
	}
	if g := fq.at(1); g.off != 150 || g.n != 30 || g.addr != 12288+30 {
		t.Fatalf("tail %+v", g)
	}
}

func TestFragQueueGapsAndWindow(t *testing.T) {
	var fq fragQueue
	fq.window = 1000
	fq.reset(0, nil)
	fq.insert(100, 100, 0x1000, 1, kindDmabuf, nil) // [100,200)
	fq.insert(300, 100, 0x2000, 2, kindDmabuf, nil) // [300,400)
	if fq.front() != nil {
		t.Fatal("front exists over a hole at 0")
	}
	// [0, 500) fills holes [0,100), [200,300), [400,500).
	if k := fq.insert(0, 500, 0x3000, 3, kindDmabuf, nil); k != 3 {
		t.Fatalf("fill: %d", k)
	}
	want := []struct {
		off, addr uint64
		n         uint32
	}{{0, 0x3000, 100}, {100, 0x1000, 100}, {200, 0x3000 + 200, 100}, {300, 0x2000, 100}, {400, 0x3000 + 400, 100}}
	for i, w := range want {
		g := fq.at(i)
		if g == nil || g.off != w.off || g.addr != w.addr || g.n != w.n {
			t.Fatalf("frag %d = %+v, want %+v", i, g, w)
		}
	}
	if k := fq.insert(900, 200, 0x4000, 4, kindDmabuf, nil); k != -1 {
		t.Fatalf("beyond window: %d", k)
	}
	unpin := fq.drain(nil)
	if len(unpin) != 5 || fq.len() != 0 {
		t.Fatalf("drain gave %v, %d left", unpin, fq.len())
	}
}

// TestFragQueueRetransmitAtCap: with the queue at maxFrags, a
// retransmission of bytes it holds — the front segment gVisor dropped
// (its segment queue over the receive buffer), sent again — maps to the
// first arrival instead of being refused, which stalled the connection for
// good; bytes that would add a fragment are still refused.
func TestFragQueueRetransmitAtCap(t *testing.T) {
	var fq fragQueue
	fq.window = 10000
	fq.maxFrags = 3
	fq.reset(0, nil)
	for i, off := range []uint32{0, 200, 400} {
		if k := fq.insert(off, 100, uint64(i+1)<<12, uint32(i+1), kindDmabuf, nil); k != 1 {
			t.Fatalf("insert %d: %d", off, k)
		}
	}
	for _, tc := range []struct {
		seq  uint32
		n    int
		want int
	}{
		{0, 100, 0},   // the front, again
		{250, 50, 0},  // inside a queued fragment
		{400, 100, 0}, // the last one
		{100, 100, -1},
		{150, 100, -1}, // partly new
		{500, 10, -1},
	} {
		if k := fq.insert(tc.seq, tc.n, 0x9000, 9, kindDmabuf, nil); k != tc.want {
			t.Errorf("insert [%d,+%d) at the cap: %d, want %d", tc.seq, tc.n, k, tc.want)
		}
	}
	if fq.len() != 3 {
		t.Fatalf("%d fragments", fq.len())
	}
}

func TestFragQueueSequenceWrap(t *testing.T) {
	var fq fragQueue
	fq.reset(0xffffff00, nil)
	fq.insert(0xffffff00, 0x100, 0x1000, 1, kindDmabuf, nil)
	fq.insert(0, 0x100, 0x2000, 2, kindDmabuf, nil)
	fq.consume(0x100)
	if f := fq.front(); f == nil || f.frame != 2 || f.off != 0x100 {
		t.Fatalf("after wrap %+v", f)
	}
}

// TestFragQueueModel replays a stream cut into segments that arrive shuffled,
// duplicated and overlapping, each copy at its own "UMEM" address, and reads
// it back through the queue: every byte must come out once, in order, equal
// to the stream.
func TestFragQueueModel(t *testing.T) {
	for seed := int64(1); seed <= 200; seed++ {
		fragQueueModel(t, seed)
	}
}

func fragQueueModel(t *testing.T, seed int64) {
	rng := rand.New(rand.NewSource(seed))
	const streamLen = 20000
	stream := make([]byte, streamLen)
	rng.Read(stream)
	base := rng.Uint32()
	umem := make([]byte, 0, 1<<20)
	type seg struct{ start, n int }
	var segs []seg
	for off := 0; off < streamLen; {
		n := 1 + rng.Intn(1500)
		n = min(n, streamLen-off)
		segs = append(segs, seg{off, n})
		off += n
	}
	// Add duplicates and overlapping retransmissions with other cuts.
	for i := 0; i < len(segs)/3; i++ {
		s := rng.Intn(streamLen)
		segs = append(segs, seg{s, min(1+rng.Intn(3000), streamLen-s)})
	}
	rng.Shuffle(len(segs), func(i, j int) { segs[i], segs[j] = segs[j], segs[i] })

	var fq fragQueue
	fq.reset(base, nil)
	var out []byte
	pins := 0
	read := func() {
		for f := fq.front(); f != nil; f = fq.front() {
			k := uint32(1 + rng.Intn(int(f.n)))
			out = append(out, umem[f.addr:f.addr+uint64(k)]...)
			if fq.consume(k) {
				pins--
			}
		}
	}
	for _, s := range segs {
		addr := uint64(len(umem))
		umem = append(umem, stream[s.start:s.start+s.n]...)
		pins += fq.insert(base+uint32(s.start), s.n, addr, 0, kindDmabuf, nil)
		if rng.Intn(3) == 0 {
			read()
		}
	}
	read()
	if string(out) != string(stream) {
		t.Fatalf("seed %d: read %d bytes, mismatch with stream of %d", seed, len(out), len(stream))
	}
	if pins != 0 || fq.len() != 0 {
		t.Fatalf("seed %d: %d pins, %d frags left", seed, pins, fq.len())
	}
}

func FuzzFragQueue(f *testing.F) {
	f.Add(int64(1))
	f.Add(int64(42))
	f.Fuzz(func(t *testing.T, seed int64) { fragQueueModel(t, seed) })
}

// BenchmarkFragMapping measures the per-segment cost of recording a segment
// and mapping it back when read: the per-packet work of the devmem path
// besides gVisor.
func BenchmarkFragMapping(b *testing.B) {
	for _, size := range []int{100, 1448, 3400} {
		b.Run("segment="+itoa(size), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(size))
			var fq fragQueue
			fq.reset(1, nil)
			seq := uint32(1)
			for i := 0; i < b.N; i++ {
				fq.insert(seq, size, uint64(i&1023)<<12, uint32(i&1023), kindDmabuf, nil)
				seq += uint32(size)
				if i%8 == 7 {
					for f := fq.front(); f != nil; f = fq.front() {
						fq.consume(f.n)
					}
				}
			}
		})
	}
}

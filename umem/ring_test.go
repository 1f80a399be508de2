package umem

import (
	"testing"

	"golang.org/x/sys/unix"
)

// fakeRingMem lays out a ring the way the kernel's mmap does, in ordinary
// memory, so ring arithmetic can be tested without a socket.
func fakeRingMem(n uint32, descSize int) ([]byte, unix.XDPRingOffset) {
	off := unix.XDPRingOffset{Producer: 0, Consumer: 64, Flags: 128, Desc: 192}
	return make([]byte, 192+int(n)*descSize), off
}

func TestFillRingWraps(t *testing.T) {
	mem, off := fakeRingMem(8, 8)
	f := FillRing{ring: ringView(mem, off, 8), descs: addrDescs(mem, off, 8)}
	kernelCons := uint32(0)
	next := uint64(0)
	for round := 0; round < 10; round++ {
		addrs := []uint64{next, next + 1, next + 2, next + 3, next + 4, next + 5}
		n := f.Produce(addrs)
		f.Publish()
		if n != 6 && round == 0 {
			t.Fatalf("round %d: produced %d", round, n)
		}
		// The "kernel" consumes everything published and checks order.
		for kernelCons != f.producer.Load() {
			got := f.descs[kernelCons&f.mask]
			if got != next {
				t.Fatalf("round %d: kernel read %d, want %d", round, got, next)
			}
			next++
			kernelCons++
		}
		f.consumer.Store(kernelCons)
		if f.Pending() != 0 {
			t.Fatalf("pending %d after kernel consumed all", f.Pending())
		}
	}
	// Full ring refuses more.
	if n := f.Produce(make([]uint64, 20)); n != 8 {
		t.Fatalf("produce into empty ring of 8: %d", n)
	}
	if n := f.Produce([]uint64{1}); n != 0 {
		t.Fatalf("produce into full ring: %d", n)
	}
}

func TestRXRingConsume(t *testing.T) {
	mem, off := fakeRingMem(4, sizeofXDPDesc)
	r := RXRing{ring: ringView(mem, off, 4), descs: xdpDescs(mem, off, 4)}
	prod := uint32(0)
	push := func(addr uint64) {
		r.descs[prod&3] = unix.XDPDesc{Addr: addr, Len: uint32(addr)}
		prod++
		r.producer.Store(prod)
	}
	var dst [8]unix.XDPDesc
	if n := r.Consume(dst[:]); n != 0 {
		t.Fatalf("empty ring gave %d", n)
	}
	for i := uint64(1); i <= 3; i++ {
		push(i * 100)
	}
	if n := r.Consume(dst[:2]); n != 2 || dst[0].Addr != 100 || dst[1].Addr != 200 {
		t.Fatalf("consume 2: %d %+v", n, dst[:2])
	}
	if r.consumer.Load() != 2 {
		t.Fatalf("consumer index %d, want 2", r.consumer.Load())
	}
	push(400)
	push(500)
	if n := r.Consume(dst[:]); n != 3 || dst[0].Addr != 300 || dst[2].Addr != 500 {
		t.Fatalf("consume rest: %d %+v", n, dst[:3])
	}
}

func TestTXAndCompletionRings(t *testing.T) {
	mem, off := fakeRingMem(4, sizeofXDPDesc)
	tx := TXRing{ring: ringView(mem, off, 4), descs: xdpDescs(mem, off, 4)}
	cmem, coff := fakeRingMem(4, 8)
	comp := CompletionRing{ring: ringView(cmem, coff, 4), descs: addrDescs(cmem, coff, 4)}
	descs := []unix.XDPDesc{{Addr: 0x1000, Len: 60}, {Addr: 0x2000, Len: 60}, {Addr: 0x3000}, {Addr: 0x4000}, {Addr: 0x5000}}
	if n := tx.Produce(descs); n != 4 {
		t.Fatalf("tx produce: %d", n)
	}
	tx.Publish()
	// Kernel sends all four and completes them.
	for i := uint32(0); i < 4; i++ {
		comp.descs[i] = tx.descs[i].Addr
	}
	tx.consumer.Store(4)
	comp.producer.Store(4)
	var got [8]uint64
	if n := comp.Consume(got[:]); n != 4 || got[3] != 0x4000 {
		t.Fatalf("completions: %d %v", n, got[:4])
	}
	if n := tx.Produce(descs[4:]); n != 1 {
		t.Fatalf("tx produce after completion: %d", n)
	}
}

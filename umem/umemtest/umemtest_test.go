package umemtest_test

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/umem"
	"github.com/xdevmem/xdevmem/umem/umemtest"
)

func newRegion(t *testing.T, frames int) *umem.Region {
	t.Helper()
	r, err := umem.NewRegion(umem.RegionConfig{Size: uint64(frames) * umem.DefaultFrameSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// receiver is a minimal receive loop, as package stack runs one: refill,
// take a batch, hand each packet (its descriptors' bytes joined) to got,
// free the frames.
type receiver struct {
	d    *umemtest.Device
	r    *umem.Region
	stop chan struct{}
	done chan struct{}

	mu   sync.Mutex
	pkts [][]byte
	desc [][]unix.XDPDesc
}

func startReceiver(d *umemtest.Device, r *umem.Region) *receiver {
	rc := &receiver{d: d, r: r, stop: make(chan struct{}), done: make(chan struct{})}
	go rc.run()
	return rc
}

func (rc *receiver) run() {
	defer close(rc.done)
	var descs [8]unix.XDPDesc
	var pkt []byte
	var chain []unix.XDPDesc
	for {
		select {
		case <-rc.stop:
			return
		default:
		}
		rc.d.Refill()
		n := rc.d.Receive(descs[:])
		if n == 0 {
			rc.d.Wait(10)
			continue
		}
		for _, desc := range descs[:n] {
			pkt = append(pkt, rc.r.Bytes()[desc.Addr:desc.Addr+uint64(desc.Len)]...)
			chain = append(chain, desc)
			rc.r.Free(rc.r.FrameOf(desc.Addr))
			if desc.Options&unix.XDP_PKT_CONTD == 0 {
				rc.mu.Lock()
				rc.pkts = append(rc.pkts, pkt)
				rc.desc = append(rc.desc, chain)
				rc.mu.Unlock()
				pkt, chain = nil, nil
			}
		}
	}
}

func (rc *receiver) close() {
	close(rc.stop)
	rc.d.Wake()
	<-rc.done
}

func frame(n int, seed byte) []byte {
	f := make([]byte, n)
	for i := range f {
		f[i] = seed + byte(i*7)
	}
	return f
}

// TestInjectReceive: Inject returns once the receive loop has handled the
// frames, which arrive whole, at the copy-mode headroom, in fill frames;
// after Close every frame is back.
func TestInjectReceive(t *testing.T) {
	r := newRegion(t, 256)
	d, err := umemtest.New(r, umem.SocketConfig{RingSize: 16, TXFrames: 8}, umemtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if a := r.Snapshot(); a.Posted != 16 || a.TX != 8 || a.InFlight != 0 {
		t.Fatalf("after New: %v", a)
	}
	rc := startReceiver(d, r)
	want := [][]byte{frame(60, 1), frame(1514, 2), frame(4096-umemtest.Headroom, 3)}
	for round := 0; round < 20; round++ { // more frames than the ring: refills
		if n := d.Inject(want...); n != len(want) {
			t.Fatalf("round %d: %d of %d delivered", round, n, len(want))
		}
		rc.mu.Lock()
		got := len(rc.pkts)
		rc.mu.Unlock()
		if got != (round+1)*len(want) {
			t.Fatalf("round %d: Inject returned with %d packets handled", round, got)
		}
	}
	// Enqueue returns at once; Inject with no frames waits for them.
	if n := d.Enqueue(want...); n != len(want) {
		t.Fatalf("enqueue: %d of %d", n, len(want))
	}
	d.Inject()
	if rc.mu.Lock(); len(rc.pkts) != 21*len(want) {
		t.Fatalf("after enqueue and sync: %d packets", len(rc.pkts))
	}
	rc.mu.Unlock()
	rc.close()
	for i, p := range rc.pkts {
		if !bytes.Equal(p, want[i%len(want)]) {
			t.Fatalf("packet %d differs", i)
		}
		if a := rc.desc[i][0].Addr; a%umem.DefaultFrameSize != umemtest.Headroom {
			t.Fatalf("packet %d at %#x, not at the headroom", i, a)
		}
	}
	if st, _ := d.Stats(); st != (umem.Stats{}) {
		t.Fatalf("stats %+v", st)
	}
	d.Close()
	if a := r.Snapshot(); a.Free != a.Frames {
		t.Fatalf("after close: %v", a)
	}
	if n := d.Inject(want[0]); n != 0 {
		t.Fatalf("inject after close: %d", n)
	}
}

// TestInjectDrops: a frame larger than a UMEM frame is split into
// XDP_PKT_CONTD descriptors with SG and dropped without; an empty fill
// ring drops and counts, as the kernel does.
func TestInjectDrops(t *testing.T) {
	r := newRegion(t, 256)
	big := frame(9014, 5)
	for _, sg := range []bool{false, true} {
		d, err := umemtest.New(r, umem.SocketConfig{RingSize: 8, TXFrames: 1, SG: sg}, umemtest.Options{})
		if err != nil {
			t.Fatal(err)
		}
		rc := startReceiver(d, r)
		n := d.Inject(big)
		rc.close()
		st, _ := d.Stats()
		if !sg {
			if n != 0 || st.RxDropped != 1 || len(rc.pkts) != 0 {
				t.Fatalf("without SG: delivered %d, stats %+v", n, st)
			}
		} else {
			if n != 1 || len(rc.pkts) != 1 || !bytes.Equal(rc.pkts[0], big) || len(rc.desc[0]) != 3 {
				t.Fatalf("with SG: delivered %d in %d packets", n, len(rc.pkts))
			}
			for i, desc := range rc.desc[0] {
				if cont := desc.Options&unix.XDP_PKT_CONTD != 0; cont != (i < 2) {
					t.Fatalf("descriptor %d: options %#x", i, desc.Options)
				}
			}
		}
		d.Close()
	}

	// No receive loop: the fill ring is not refilled.
	d, err := umemtest.New(r, umem.SocketConfig{RingSize: 4, TXFrames: 1}, umemtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan int)
	go func() { done <- d.Inject(frame(100, 1), frame(100, 2), frame(100, 3), frame(100, 4), frame(100, 5)) }()
	var descs [8]unix.XDPDesc
	got := 0
	for deadline := time.Now().Add(5 * time.Second); got < 4; {
		got += d.Receive(descs[got:])
		if time.Now().After(deadline) {
			t.Fatalf("received %d", got)
		}
	}
	if d.FillPending() != 0 {
		t.Fatalf("fill pending %d", d.FillPending())
	}
	d.Wait(0) // came back: the batch is handled
	if n := <-done; n != 4 {
		t.Fatalf("delivered %d, want 4", n)
	}
	if st, _ := d.Stats(); st.RxFillRingEmpty != 1 {
		t.Fatalf("stats %+v", st)
	}
	for _, desc := range descs[:got] {
		r.Free(r.FrameOf(desc.Addr))
	}
	d.Close()
	if a := r.Snapshot(); a.Free != a.Frames {
		t.Fatalf("after close: %v", a)
	}
}

// TestTransmit: single frames and chains reach the callback joined, in
// order, on the kick; their addresses complete through the claim; TX frames
// come back. With NoChains the probe says no and chains are invalid.
func TestTransmit(t *testing.T) {
	r := newRegion(t, 256)
	for _, noChains := range []bool{false, true} {
		var sent [][]byte
		d, err := umemtest.New(r, umem.SocketConfig{RingSize: 8, TXFrames: 4, TXRingSize: 4}, umemtest.Options{
			NoChains: noChains,
			Transmit: func(f []byte) { sent = append(sent, append([]byte(nil), f...)) },
		})
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := d.TXProbeMultiBuffer(frame(60, 0), time.Second); ok == noChains || err != nil {
			t.Fatalf("probe: %v %v", ok, err)
		}
		if _, err := d.TXProbeMultiBuffer(frame(59, 0), time.Second); !errors.Is(err, unix.EINVAL) {
			t.Fatalf("short probe: %v", err)
		}
		span, err := r.ReserveSpan(2)
		if err != nil {
			t.Fatal(err)
		}
		payload := r.Bytes()[r.FrameAddr(span)+4000 : r.FrameAddr(span)+5000]
		copy(payload, frame(1000, 9))
		var claimed []uint64
		d.SetTXClaim(func(a uint64) bool {
			if r.FrameOf(a) == span || r.FrameOf(a) == span+1 {
				claimed = append(claimed, a)
				return true
			}
			return false
		})
		var addrs [4]uint64
		if n := d.TXAcquire(addrs[:]); n != 4 {
			t.Fatalf("acquired %d", n)
		}
		if n := d.TXAcquire(addrs[:1]); n != 0 {
			t.Fatalf("acquired %d of none", n)
		}
		copy(d.TXFrame(addrs[0]), frame(60, 1))
		copy(d.TXFrame(addrs[1]), frame(14, 2))
		pa := r.FrameAddr(span) + 4000
		descs := []unix.XDPDesc{
			{Addr: addrs[0], Len: 60},
			{Addr: addrs[1], Len: 14, Options: unix.XDP_PKT_CONTD},
			{Addr: pa, Len: 96, Options: unix.XDP_PKT_CONTD},
			{Addr: pa + 96, Len: 904},
		}
		if n, err := d.TXProduce(descs[:2]); n != 0 || !errors.Is(err, unix.EINVAL) {
			t.Fatalf("chain cut short: %d %v", n, err)
		}
		if n, err := d.TXProduce(descs); n != 4 || err != nil {
			t.Fatalf("produce: %d %v", n, err)
		}
		if len(sent) != 0 {
			t.Fatal("sent before the kick")
		}
		d.TXRelease(addrs[2:]...)
		if err := d.TXKick(); err != nil {
			t.Fatal(err)
		}
		st, _ := d.Stats()
		if noChains {
			if len(sent) != 1 || st.TxInvalidDescs != 3 {
				t.Fatalf("no chains: %d sent, stats %+v", len(sent), st)
			}
		} else {
			joined := append(frame(14, 2), frame(1000, 9)...)
			if len(sent) != 2 || !bytes.Equal(sent[0], frame(60, 1)) || !bytes.Equal(sent[1], joined) || st.TxInvalidDescs != 0 {
				t.Fatalf("sent %d frames, stats %+v", len(sent), st)
			}
		}
		if len(claimed) != 2 || claimed[0] != pa || claimed[1] != pa+96 {
			t.Fatalf("claimed %#x", claimed)
		}
		if n := d.TXAcquire(addrs[:]); n != 4 {
			t.Fatalf("after completion: %d TX frames free", n)
		}
		d.TXRelease(addrs[:]...)
		r.ReleaseSpan(span, 2)
		d.Close()
		if a := r.Snapshot(); a.Free != a.Frames {
			t.Fatalf("after close: %v", a)
		}
	}
}

// TestTXProduceFullRing: a ring without room for the next packet sends
// what it holds, as a kick would; a packet longer than the ring is
// EMSGSIZE.
func TestTXProduceFullRing(t *testing.T) {
	r := newRegion(t, 256)
	sent := 0
	d, err := umemtest.New(r, umem.SocketConfig{RingSize: 8, TXFrames: 8, TXRingSize: 2}, umemtest.Options{Transmit: func([]byte) { sent++ }})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var addrs [8]uint64
	n := d.TXAcquire(addrs[:5])
	descs := make([]unix.XDPDesc, n)
	for i := range descs {
		descs[i] = unix.XDPDesc{Addr: addrs[i], Len: 60}
	}
	if k, err := d.TXProduce(descs); k != 5 || err != nil || sent != 4 {
		t.Fatalf("produce 5 on a ring of 2: %d %v, %d sent", k, err, sent)
	}
	d.TXKick()
	long := []unix.XDPDesc{{Addr: addrs[0], Len: 14, Options: unix.XDP_PKT_CONTD}, {Addr: addrs[1], Len: 14, Options: unix.XDP_PKT_CONTD}, {Addr: addrs[2], Len: 14}}
	if k, err := d.TXProduce(long); k != 0 || !errors.Is(err, unix.EMSGSIZE) {
		t.Fatalf("3-descriptor packet on a ring of 2: %d %v", k, err)
	}
}

package stack

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/umem"
)

// TestRegionBudget: for every UMEM the stack accepts, one connection's
// window fits in half the receive frames, the fill rings in the other half,
// and the receive buffer (gVisor's window is half of it) never exceeds the
// window. The old sizing floored the buffer at 1 MiB, which a 2 MiB UMEM
// cannot hold.
func TestRegionBudget(t *testing.T) {
	for _, mtu := range []int{MinMTU, 576, 1500, SingleBufferMTU, 9000} {
		for _, queues := range []int{1, 2, 4} {
			lo := MinRegionSize(mtu, queues)
			for _, size := range []uint64{lo, lo + 1<<20, 2 << 20, 16 << 20, DefaultRegionSize, 1 << 30} {
				if size < lo {
					continue
				}
				b := budgetFor(size/umem.DefaultFrameSize, mtu, queues, false)
				fpp := framesPerPacket(mtu)
				if b.ring < minRing || uint64(b.ring)*uint64(queues) > b.rxFrames/2 {
					t.Errorf("mtu %d queues %d size %d: ring %d for %d receive frames", mtu, queues, size, b.ring, b.rxFrames)
				}
				if full := b.window / segPayload(mtu, false) * fpp; full > uint64(b.maxFrags) || uint64(b.maxFrags) > b.rxFrames/2 {
					t.Errorf("mtu %d queues %d size %d: window of %d bytes (%d frames) against %d fragments, %d receive frames",
						mtu, queues, size, b.window, full, b.maxFrags, b.rxFrames)
				}
				if b.window/segPayload(mtu, false) < minWindowSegs || b.window < minRcvBufBytes {
					t.Errorf("mtu %d queues %d size %d: window of %d bytes is below the minimum", mtu, queues, size, b.window)
				}
				for _, rb := range []int{0, 4096, 1 << 20, 64 << 20} {
					cfg := Config{RegionSize: size, MTU: mtu, Queues: queues, RcvBuf: rb}
					if err := cfg.sizeRcvBuf(); err != nil {
						t.Fatal(err)
					}
					if uint64(cfg.RcvBuf) > b.window || cfg.RcvBuf < minRcvBufBytes || (rb == 0 && cfg.RcvBuf > maxRcvBufBytes) ||
						(rb != 0 && uint64(rb) <= b.window && cfg.RcvBuf != rb) {
						t.Errorf("mtu %d queues %d size %d: rcvbuf %d became %d, window %d", mtu, queues, size, rb, cfg.RcvBuf, b.window)
					}
				}
			}
			if err := CheckRegionSize(lo, mtu, queues); err != nil {
				t.Errorf("minimum %d refused: %v", lo, err)
			}
			if err := CheckRegionSize(lo-umem.DefaultFrameSize, mtu, queues); !errors.Is(err, unix.EINVAL) {
				t.Errorf("below the minimum (%d): %v", lo-umem.DefaultFrameSize, err)
			}
		}
	}
	if err := (&Config{RcvBuf: 100}).sizeRcvBuf(); !errors.Is(err, unix.EINVAL) {
		t.Errorf("rcvbuf 100: %v", err)
	}
}

func TestCheckRegionSizeLimits(t *testing.T) {
	if err := CheckRegionSize(0, 1500, 1); !errors.Is(err, unix.EINVAL) {
		t.Errorf("0: %v", err)
	}
	if err := CheckRegionSize((MaxRegionFrames+1)*umem.DefaultFrameSize, 1500, 1); !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOMEM) {
		t.Errorf("above the frame limit: %v", err)
	}
	avail, err := MemAvailable()
	if err != nil || avail == 0 {
		t.Fatalf("MemAvailable: %d, %v", avail, err)
	}
	if over := (avail/2 + 1<<20) &^ (1<<20 - 1); over/umem.DefaultFrameSize <= MaxRegionFrames {
		if err := CheckRegionSize(over, 1500, 1); !errors.Is(err, unix.ENOMEM) {
			t.Errorf("%d bytes with %d available: %v", over, avail, err)
		}
	}
	if err := CheckRegionSize(DefaultRegionSize, 1500, 1); err != nil && avail/2 >= DefaultRegionSize {
		t.Errorf("default size: %v", err)
	}
}

func TestCheckMTU(t *testing.T) {
	for _, tc := range []struct {
		mtu  int
		ipv6 bool
		want error
	}{
		{67, false, unix.EINVAL}, {68, false, unix.EINVAL}, {MinMTU - 1, false, unix.EINVAL}, {MinMTU, false, nil},
		{1500, false, nil}, {9000, false, nil}, {MaxMTU, false, nil}, {MaxMTU + 1, false, unix.EMSGSIZE},
		{1279, true, unix.EINVAL}, {1280, true, nil}, {MaxMTU + 1, true, unix.EMSGSIZE},
	} {
		err := CheckMTU(tc.mtu, tc.ipv6)
		if (tc.want == nil) != (err == nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("MTU %d ipv6=%v: %v, want %v", tc.mtu, tc.ipv6, err, tc.want)
		}
	}
}

// TestInprocOutOfOrderBounded: a peer that leaves a hole at the front and
// sends far more out-of-order data than the UMEM holds (a 2 MiB UMEM took
// a 1 MiB receive buffer, which pinned every frame and stalled the
// connection for good) pins at most the connection's share of the frames;
// the segment that fills the hole is still taken and the stream flows on.
func TestInprocOutOfOrderBounded(t *testing.T) {
	size := MinRegionSize(1500, 1)
	ip := newInproc(t, Config{RegionSize: size})
	b := budgetFor(size/umem.DefaultFrameSize, 1500, 1, false)
	ln := ip.bindListen(t)
	c, seq := ip.connect(ln, 40002, 5000)
	const mss = 1448
	seg := func(i int) []byte {
		payload := make([]byte, mss)
		for j := range payload {
			payload[j] = byte(i*13 + j)
		}
		return segment(40002, 5201, seq+uint32(i*mss), 1, tcpFlagAck, nil, payload)
	}
	// Segments 1..300 without segment 0: more than all the region's frames.
	total := int(size / umem.DefaultFrameSize)
	for i := 1; i <= total-64; i++ {
		ip.inject(seg(i))
		if a := ip.s.region.Snapshot(); a.Pinned > uint32(b.maxFrags) {
			t.Fatalf("after out-of-order segment %d: %d frames pinned, budget %d of %d receive frames", i, a.Pinned, b.maxFrags, b.rxFrames)
		}
	}
	accepted := int(ip.s.region.Snapshot().Pinned)
	if accepted == 0 || ip.s.Stats().DropOutOfWindow == 0 {
		t.Fatalf("%d segments queued, %d out-of-window drops", accepted, ip.s.Stats().DropOutOfWindow)
	}
	// Then the peer goes on as TCP does, from the hole, in order, through
	// the same small UMEM: the segment filling the hole is taken, and
	// segments the fragment queue holds beyond gVisor's window, sent
	// again, map to their first arrival.
	var got []byte
	n := accepted + 1 + 3*total
	ip.peerLoop(c, n*mss, func(read int) []byte { return seg(read / mss) }, &got)
	for i := 0; i < n; i++ {
		want := seg(i)[14+20+20:]
		if string(got[i*mss:(i+1)*mss]) != string(want) {
			t.Fatalf("segment %d differs", i)
		}
	}
	c.Close()
	if a := ip.s.region.Snapshot(); a.Pinned != 0 || a.Held != 0 {
		t.Fatalf("after close: %v", a)
	}
}

// TestInprocTinySegmentsBounded: one-byte out-of-order segments, each in a
// frame of its own, stay within the byte window but would pin a frame per
// byte; the fragment cap bounds them, and the hole still fills.
func TestInprocTinySegmentsBounded(t *testing.T) {
	size := MinRegionSize(1500, 1)
	ip := newInproc(t, Config{RegionSize: size})
	b := budgetFor(size/umem.DefaultFrameSize, 1500, 1, false)
	ln := ip.bindListen(t)
	c, seq := ip.connect(ln, 40003, 9000)
	total := int(size / umem.DefaultFrameSize)
	for i := 1; i <= total-64; i++ {
		ip.inject(segment(40003, 5201, seq+uint32(i), 1, tcpFlagAck, nil, []byte{byte(i)}))
		if a := ip.s.region.Snapshot(); a.Pinned > uint32(b.maxFrags) {
			t.Fatalf("after one-byte segment %d: %d frames pinned, budget %d", i, a.Pinned, b.maxFrags)
		}
	}
	accepted := int(ip.s.region.Snapshot().Pinned)
	var got []byte
	ip.peerLoop(c, accepted+1, func(read int) []byte {
		return segment(40003, 5201, seq+uint32(read), 1, tcpFlagAck, nil, []byte{byte(read)})
	}, &got)
	for i, v := range got {
		if v != byte(i) {
			t.Fatalf("byte %d = %d", i, v)
		}
	}
}

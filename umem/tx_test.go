package umem

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/internal/netns"
	"github.com/xdevmem/xdevmem/internal/testutil"
)

func TestReserveSpan(t *testing.T) {
	r := newTestRegion(t, 64)
	first, err := r.ReserveSpan(16)
	if err != nil || first != 48 {
		t.Fatalf("ReserveSpan(16) = %d, %v; want the top run at 48", first, err)
	}
	if a := r.Snapshot(); a.TX != 16 || a.Free != 48 || a.InFlight != 0 {
		t.Fatalf("after reserve: %v", a)
	}
	// The span's frames never come off the free list again.
	var got [64]uint32
	n := r.alloc(got[:])
	for _, f := range got[:n] {
		if f >= 48 {
			t.Fatalf("alloc returned span frame %d", f)
		}
	}
	// Fragment what is left: every other frame free.
	var back []uint32
	for _, f := range got[:n] {
		if f%2 == 0 {
			back = append(back, f)
		}
	}
	r.Free(back...)
	if _, err := r.ReserveSpan(2); !errors.Is(err, unix.ENOMEM) {
		t.Fatalf("ReserveSpan on a fragmented list: %v", err)
	}
	if _, err := r.ReserveSpan(1); err != nil {
		t.Fatalf("ReserveSpan(1): %v", err)
	}
	if _, err := r.ReserveSpan(0); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("ReserveSpan(0): %v", err)
	}
	if _, err := r.ReserveSpan(65); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("ReserveSpan(65): %v", err)
	}
	r.ReleaseSpan(first, 16)
	if a := r.Snapshot(); a.TX != 1 || a.Free != 16+uint32(len(back))-1 {
		t.Fatalf("after release: %v", a)
	}
}

func TestWholePackets(t *testing.T) {
	c := unix.XDPDesc{Options: unix.XDP_PKT_CONTD}
	e := unix.XDPDesc{}
	descs := []unix.XDPDesc{c, c, e, e, c, e}
	for _, tc := range []struct{ room, want int }{{0, 0}, {1, 0}, {2, 0}, {3, 3}, {4, 4}, {5, 4}, {6, 6}, {100, 6}} {
		if got := wholePackets(descs, tc.room); got != tc.want {
			t.Errorf("room %d: %d, want %d", tc.room, got, tc.want)
		}
	}
}

// TestTXMultiBufferVeth: on veth in copy mode the kernel joins a chain of
// descriptors into one frame; the payload descriptor can point anywhere in
// the UMEM (here, a span), and each descriptor's address completes.
func TestTXMultiBufferVeth(t *testing.T) {
	testutil.Watchdog(t, time.Minute)
	pair := testutil.NewPair(t, netns.Options{})
	r := newTestRegion(t, 4096)
	var s *Socket
	if err := pair.Emu.Do(func() (err error) {
		s, err = NewSocket(r, pair.EmuIndex, SocketConfig{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const etherType = 0x88b5
	var pfd int
	if err := pair.Peer.Do(func() (err error) {
		proto := int(etherType>>8 | etherType&0xff<<8) // network order
		if pfd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto); err != nil {
			return err
		}
		return unix.Bind(pfd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: pair.PeerIndex})
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pfd)

	if err := s.SetTXBudget(0); err != nil {
		t.Logf("tx budget: %v (older kernel)", err)
	}
	probe := make([]byte, 60)
	copy(probe, pair.PeerMAC)
	copy(probe[6:], pair.EmuMAC)
	binary.BigEndian.PutUint16(probe[12:], etherType)
	ok, err := s.TXProbeMultiBuffer(probe, time.Second)
	if err != nil || !ok {
		t.Fatalf("probe: %v %v (multi-buffer AF_XDP TX needs Linux 6.6+)", ok, err)
	}

	first, err := r.ReserveSpan(8)
	if err != nil {
		t.Fatal(err)
	}
	defer r.ReleaseSpan(first, 8)
	span := r.FrameAddr(first)
	payload := r.Bytes()[span+4000 : span+4000+1000] // crosses a frame boundary
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	var hdr [1]uint64
	if s.TXAcquire(hdr[:]) != 1 {
		t.Fatal("no TX frame")
	}
	copy(s.TXFrame(hdr[0]), probe[:14])
	chain := []unix.XDPDesc{
		{Addr: hdr[0], Len: 14, Options: unix.XDP_PKT_CONTD},
		{Addr: span + 4000, Len: 96, Options: unix.XDP_PKT_CONTD},
		{Addr: span + 4096, Len: 904},
	}
	var claimed []uint64
	claim := func(a uint64) bool {
		if a >= span && a < span+8*DefaultFrameSize {
			claimed = append(claimed, a)
			return true
		}
		return false
	}
	s.SetTXClaim(claim)
	if n, err := s.TXProduce(chain); n != 3 || err != nil {
		t.Fatalf("TXProduce: %d %v", n, err)
	}
	if err := s.TXKick(); err != nil {
		t.Fatalf("TXKick: %v", err)
	}
	buf := make([]byte, 4096)
	unix.SetsockoptTimeval(pfd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 2})
	for {
		n, _, err := unix.Recvfrom(pfd, buf, 0)
		if err != nil {
			t.Fatalf("peer: %v", err)
		}
		if n == 60 {
			continue // the probe
		}
		if n != 14+1000 || !bytes.Equal(buf[14:n], payload) {
			t.Fatalf("peer got %d bytes: %x", n, buf[:min(n, 32)])
		}
		break
	}
	deadline := time.Now().Add(time.Second)
	for len(claimed) < 2 && time.Now().Before(deadline) {
		s.TXReclaim()
		time.Sleep(time.Millisecond)
	}
	if len(claimed) != 2 || claimed[0] != span+4000 || claimed[1] != span+4096 {
		t.Fatalf("claimed %x", claimed)
	}
	// A single-buffer frame goes through the same calls.
	if s.TXAcquire(hdr[:]) != 1 {
		t.Fatal("no TX frame")
	}
	single := s.TXFrame(hdr[0])
	copy(single, probe[:14])
	for i := 14; i < 100; i++ {
		single[i] = byte(i)
	}
	if n, err := s.TXProduce([]unix.XDPDesc{{Addr: hdr[0], Len: 100}}); n != 1 || err != nil {
		t.Fatalf("TXProduce: %d %v", n, err)
	}
	if err := s.TXKick(); err != nil {
		t.Fatalf("TXKick: %v", err)
	}
	if n, _, err := unix.Recvfrom(pfd, buf, 0); err != nil || n != 100 || !bytes.Equal(buf[14:n], single[14:100]) {
		t.Fatalf("peer got %d bytes (%v): %x", n, err, buf[:min(n, 32)])
	}
	s.TXReclaim()
	st, _ := s.Stats()
	if st.TxInvalidDescs != 0 || st.TxDrops != 0 || st.KickStalls != 0 {
		t.Fatalf("counters: %+v", st)
	}
	// The header frame went back to the free TX frames.
	s.txMu.Lock()
	free := len(s.txFree)
	s.txMu.Unlock()
	if free != len(s.txAll) {
		t.Fatalf("%d of %d TX frames free", free, len(s.txAll))
	}
}

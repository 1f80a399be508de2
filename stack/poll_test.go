package stack

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/internal/pattern"
)

// waitNotified waits for a SetNotify callback.
func waitNotified(t *testing.T, ch chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(5 * time.Second):
		t.Fatalf("no notification: %s", what)
	}
}

func notifier() (chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	return ch, func() {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// TestInprocReadiness: listeners and connections report poll bits and
// call SetNotify's function when they change; TryAccept, Send and
// Shutdown are the non-blocking and sending calls libxdevmem builds
// accept4, send and shutdown on.
func TestInprocReadiness(t *testing.T) {
	ip := newInproc(t, Config{})
	if _, err := ip.s.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}}); err != nil {
		t.Fatal(err)
	}
	lnx, err := ip.s.Listen(netip.AddrPortFrom(netip.Addr{}, 5201))
	if err != nil {
		t.Fatal(err)
	}
	ln := lnx.(*Listener)
	lch, lfn := notifier()
	ln.SetNotify(lfn)
	if r := ln.Readiness(); r != 0 {
		t.Fatalf("idle listener readiness %#x", r)
	}
	if _, err := ln.TryAccept(); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("TryAccept with nothing pending: %v", err)
	}
	opts := []byte{2, 4, 0x05, 0xb4, 1, 3, 3, 7}
	ip.inject(segment(40010, 5201, 100, 0, tcpFlagSyn, opts, nil))
	synack := ip.waitTX()
	srvISN := binary.BigEndian.Uint32(synack[14+20+4:])
	ip.inject(segment(40010, 5201, 101, srvISN+1, tcpFlagAck, nil, nil))
	waitNotified(t, lch, "connection pending")
	if r := ln.Readiness(); r&PollIn == 0 {
		t.Fatalf("listener with a pending connection: readiness %#x", r)
	}
	cx, err := ln.TryAccept()
	if err != nil {
		t.Fatal(err)
	}
	c := cx.(*Conn)
	defer c.Close()
	cch, cfn := notifier()
	c.SetNotify(cfn)
	if r := c.Readiness(); r&PollIn != 0 || r&PollOut == 0 {
		t.Fatalf("fresh connection readiness %#x, want writable, not readable", r)
	}
	payload := bytes.Repeat([]byte{7}, 1000)
	ip.inject(segment(40010, 5201, 101, srvISN+1, tcpFlagAck, nil, payload))
	waitNotified(t, cch, "data")
	if r := c.Readiness(); r&PollIn == 0 {
		t.Fatalf("connection with data: readiness %#x", r)
	}
	p := make([]byte, 4096)
	oob := make([]byte, 16*devmemapi.CmsgSpaceDmabuf)
	if n, _, err := c.RecvMsg(p, oob, devmemapi.MSG_SOCK_DEVMEM|unix.MSG_DONTWAIT); err != nil || n != len(payload) {
		t.Fatalf("RecvMsg: %d %v", n, err)
	}
	if r := c.Readiness(); r&PollIn != 0 {
		t.Fatalf("drained connection readiness %#x", r)
	}
	if _, _, err := c.RecvMsg(p, oob, devmemapi.MSG_SOCK_DEVMEM|unix.MSG_DONTWAIT); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("RecvMsg on a drained connection: %v", err)
	}

	// Send: the bytes leave in a segment to the peer.
	for len(ip.ack) > 0 {
		<-ip.ack
	}
	if n, err := c.Send([]byte("reply"), 0); err != nil || n != 5 {
		t.Fatalf("Send: %d %v", n, err)
	}
	deadline := time.After(5 * time.Second)
	for found := false; !found; {
		select {
		case f := <-ip.ack:
			found = bytes.HasSuffix(f, []byte("reply"))
		case <-deadline:
			t.Fatal("the reply was not transmitted")
		}
	}
	if err := c.Shutdown(7); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("Shutdown(7): %v", err)
	}
	if err := c.Shutdown(unix.SHUT_WR); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Send([]byte("late"), unix.MSG_DONTWAIT); !errors.Is(err, unix.EPIPE) {
		t.Fatalf("Send after SHUT_WR: %v", err)
	}
	// The peer's FIN: end of stream, readable.
	ip.inject(segment(40010, 5201, 101+uint32(len(payload)), srvISN+7, tcpFlagAck|tcpFlagFin, nil, nil))
	waitNotified(t, cch, "FIN")
	for deadline := time.Now().Add(5 * time.Second); c.Readiness()&PollRdHUp == 0; {
		if time.Now().After(deadline) {
			t.Fatalf("after the peer's FIN: readiness %#x", c.Readiness())
		}
		time.Sleep(time.Millisecond)
	}
	if n, _, err := c.RecvMsg(p, oob, devmemapi.MSG_SOCK_DEVMEM); n != 0 || err != nil {
		t.Fatalf("RecvMsg at end of stream: %d %v", n, err)
	}
	ln.Close()
	if r := ln.Readiness(); r&PollHUp == 0 {
		t.Fatalf("closed listener readiness %#x", r)
	}
	if _, err := ln.TryAccept(); !errors.Is(err, devmemapi.ErrClosed) {
		t.Fatalf("TryAccept after Close: %v", err)
	}
}

// TestInprocTXReserved: a TX binding over a span the caller reserved sends
// its bytes, reports PollErr while completions wait, and leaves the span
// reserved when it is closed (the stack never receives into it).
func TestInprocTXReserved(t *testing.T) {
	ip := newInproc(t, Config{})
	peer := newFakePeer(t, ip)
	// The span is any run of free frames: the receive loop posted frames
	// to the fill ring, and the socket took its TX frames, when the stack
	// started.
	const n = 16
	first := uint32(0)
	for f := ip.s.region.Frames() - n; ; f -= n {
		if ip.s.region.ReserveSpanAt(f, n) == nil {
			first = f
			break
		}
		if f < n {
			t.Fatal("no 16 free frames in a row")
		}
	}
	if _, err := ip.s.BindTXReserved(0, first, n, n*4096+1); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("size beyond the span: %v", err)
	}
	if _, err := ip.s.BindTXReserved(ip.s.ifindex+1, first, n, n*4096); !errors.Is(err, unix.ENODEV) {
		t.Fatalf("another ifindex: %v", err)
	}
	tb, err := ip.s.BindTXReserved(0, first, n, n*4096)
	if err != nil {
		t.Fatal(err)
	}
	b := tb.(*txBinding)
	if _, err := ip.s.BindTXReserved(0, first, n, n*4096); !errors.Is(err, unix.EBUSY) {
		t.Fatalf("the same span twice: %v", err)
	}
	pattern.Fill(7, 0, b.Bytes())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tc, err := ip.s.Dial(ctx, netip.AddrPortFrom(netip.AddrFrom4(ipPeer), peerPort))
	if err != nil {
		t.Fatal(err)
	}
	c := tc.(*TXConn)
	c.SetZeroCopy(true)
	ch, fn := notifier()
	c.SetNotify(fn)
	if _, err := devmemapi.SendDmabuf(c, b.ID(), []devmemapi.Iovec{{Base: 0, Len: 10000}}, 0); err != nil {
		t.Fatal(err)
	}
	peer.waitBytes(t, 10000)
	if err := pattern.NewValidator(7).Check(peer.received()); err != nil {
		t.Fatalf("the peer received other bytes: %v", err)
	}
	for deadline := time.Now().Add(5 * time.Second); c.Readiness()&PollErr == 0; {
		if time.Now().After(deadline) {
			t.Fatalf("no PollErr with a completion queued: %#x", c.Readiness())
		}
		select {
		case <-ch:
		case <-time.After(10 * time.Millisecond):
		}
	}
	rs, err := devmemapi.RecvCompletions(c, nil)
	if err != nil || len(rs) != 1 || rs[0] != (devmemapi.ZerocopyRange{Lo: 0, Hi: 0}) {
		t.Fatalf("completions %v %v", rs, err)
	}
	if r := c.Readiness(); r&PollErr != 0 {
		t.Fatalf("PollErr with an empty error queue: %#x", r)
	}
	c.Close()
	b.Close()
	if a := ip.s.region.Snapshot(); a.TX < n {
		t.Fatalf("the span went back to the free list: %v", a)
	}
}

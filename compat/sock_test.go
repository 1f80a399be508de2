package compat_test

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat"
	"github.com/xdevmem/xdevmem/devmemapi"
)

// pair returns an accepted KernelConn and the peer's client socket, over
// loopback in the test's namespace.
func pair(t *testing.T) (devmemapi.Conn, *net.TCPConn) {
	t.Helper()
	l, err := compat.ListenTCP(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	peer, err := net.DialTCP("tcp", nil, l.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if c.RemoteAddr().String() != peer.LocalAddr().String() || c.LocalAddr().String() != peer.RemoteAddr().String() {
		t.Errorf("addresses %v/%v vs peer %v/%v", c.LocalAddr(), c.RemoteAddr(), peer.LocalAddr(), peer.RemoteAddr())
	}
	return c, peer
}

// TestKernelConnRecv proves RecvMsg is the kernel's recvmsg with the flags
// passed through: MSG_SOCK_DEVMEM over data that is no dmabuf data copies
// the bytes and adds no control message (the kernel's "regular TCP data"
// case); MSG_PEEK is honoured; end of stream is n = 0, nil.
func TestKernelConnRecv(t *testing.T) {
	c, peer := pair(t)
	if _, err := peer.Write([]byte("hello devmem")); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 64)
	oob := make([]byte, 4*devmemapi.CmsgSpaceDmabuf)
	n, _, err := c.RecvMsg(p, oob, unix.MSG_PEEK)
	if err != nil || string(p[:n]) != "hello devmem" {
		t.Fatalf("peek = %q, %v", p[:n], err)
	}
	frags := make([]devmemapi.Frag, 0, 4)
	n, frags, err = devmemapi.RecvFrags(c, p, oob, frags, 0)
	if err != nil || string(p[:n]) != "hello devmem" || len(frags) != 0 {
		t.Fatalf("RecvFrags = %q, %v, %v", p[:n], frags, err)
	}
	peer.CloseWrite()
	n, oobn, err := c.RecvMsg(p, oob, devmemapi.MSG_SOCK_DEVMEM)
	if n != 0 || oobn != 0 || err != nil {
		t.Errorf("at EOF: %d, %d, %v", n, oobn, err)
	}
	if n, _, err := c.RecvMsg(nil, oob, 0); n != 0 || err != nil {
		t.Errorf("empty p at EOF: %d, %v", n, err)
	}
}

// TestKernelConnZeroLength: a zero-length read goes to the kernel, which
// treats it as tcp_recvmsg_locked does (target one byte): with nothing
// queued it waits, or answers EAGAIN with MSG_DONTWAIT; with data queued
// it returns 0 and takes nothing.
func TestKernelConnZeroLength(t *testing.T) {
	c, peer := pair(t)
	if _, _, err := c.RecvMsg(nil, nil, unix.MSG_DONTWAIT); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("zero-length read, nothing queued, MSG_DONTWAIT: %v; want EAGAIN", err)
	}
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, _, err := c.RecvMsg(nil, nil, 0); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("zero-length read, nothing queued: %v; want it to wait until the deadline", err)
	}
	c.SetReadDeadline(time.Time{})
	if _, err := peer.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if n, _, err := c.RecvMsg(nil, nil, 0); n != 0 || err != nil {
		t.Fatalf("zero-length read over data: %d, %v", n, err)
	}
	p := make([]byte, 8)
	if n, _, err := c.RecvMsg(p, nil, 0); err != nil || string(p[:n]) != "abc" {
		t.Fatalf("read after the zero-length read: %q, %v", p[:n], err)
	}
}

// TestKernelConnDeadline proves a passed read deadline ends a waiting
// RecvMsg with os.ErrDeadlineExceeded, MSG_DONTWAIT returns EAGAIN at
// once, and Close makes RecvMsg fail with ErrClosed.
func TestKernelConnDeadline(t *testing.T) {
	c, _ := pair(t)
	p := make([]byte, 16)
	if _, _, err := c.RecvMsg(p, nil, unix.MSG_DONTWAIT); !errors.Is(err, unix.EAGAIN) {
		t.Errorf("MSG_DONTWAIT: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	_, _, err := c.RecvMsg(p, nil, devmemapi.MSG_SOCK_DEVMEM)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("deadline: %v", err)
	}
	if d := time.Since(start); d < 40*time.Millisecond || d > 5*time.Second {
		t.Errorf("deadline took %v", d)
	}
	c.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, _, err := c.RecvMsg(p, nil, 0)
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, devmemapi.ErrClosed) {
			t.Errorf("after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not interrupt RecvMsg")
	}
}

// TestKernelConnDontNeedAllocs proves DontNeed is allocation-free.
func TestKernelConnDontNeedAllocs(t *testing.T) {
	c, _ := pair(t)
	toks := []devmemapi.DmabufToken{{TokenStart: 1, TokenCount: 4}, {TokenStart: 9, TokenCount: 1}}
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := c.DontNeed(toks); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("DontNeed allocates %v times per call", allocs)
	}
}

// TestKernelConnRecvAllocs proves RecvMsg is allocation-free.
func TestKernelConnRecvAllocs(t *testing.T) {
	c, peer := pair(t)
	if _, err := peer.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	p, oob := make([]byte, 16), make([]byte, devmemapi.CmsgSpaceDmabuf)
	allocs := testing.AllocsPerRun(100, func() {
		if n, _, err := c.RecvMsg(p, oob, unix.MSG_PEEK|devmemapi.MSG_SOCK_DEVMEM); n != 1 || err != nil {
			t.Fatal(n, err)
		}
	})
	if allocs != 0 {
		t.Errorf("RecvMsg allocates %v times per call", allocs)
	}
}

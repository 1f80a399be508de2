package stack

import (
	"errors"
	"io"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
)

// TestUseAfterClose: after the stack closes, the binding's reads, the
// connection's receives and token returns fail with ErrClosed — the
// region is unmapped, and reading it used to kill the process with
// SIGSEGV — and short reads end in io.EOF as on the kernel backend.
func TestUseAfterClose(t *testing.T) {
	ip := newInproc(t, Config{})
	b, err := ip.s.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := ip.s.Listen(netip.AddrPortFrom(netip.Addr{}, 5201))
	if err != nil {
		t.Fatal(err)
	}
	c, _ := ip.connect(ln, 40001, 1000)
	size := int64(ip.s.region.Size())
	p := make([]byte, 16)
	if n, err := b.ReadAt(p, size-8); n != 8 || err != io.EOF {
		t.Fatalf("read across the end: %d, %v; want 8, io.EOF", n, err)
	}
	if n, err := b.ReadAt(p, size); n != 0 || err != io.EOF {
		t.Fatalf("read at the end: %d, %v; want 0, io.EOF", n, err)
	}
	if _, err := b.ReadAt(p, -1); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("read at -1: %v, want EINVAL", err)
	}
	if err := ip.s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.ReadAt(p, 0); !errors.Is(err, devmemapi.ErrClosed) {
		t.Fatalf("read after close: %v, want ErrClosed", err)
	}
	oob := make([]byte, 64)
	if _, _, err := c.RecvMsg(p, oob, devmemapi.MSG_SOCK_DEVMEM); !errors.Is(err, devmemapi.ErrClosed) {
		t.Fatalf("recvmsg after close: %v, want ErrClosed", err)
	}
	if _, err := c.DontNeed([]devmemapi.DmabufToken{{TokenStart: 1, TokenCount: 1}}); !errors.Is(err, devmemapi.ErrClosed) {
		t.Fatalf("dontneed after close: %v, want ErrClosed", err)
	}
	if _, err := ln.Accept(); !errors.Is(err, devmemapi.ErrClosed) {
		t.Fatalf("accept after close: %v, want ErrClosed", err)
	}
	if _, err := ip.s.Listen(netip.AddrPortFrom(netip.Addr{}, 5202)); !errors.Is(err, devmemapi.ErrClosed) {
		t.Fatalf("listen after close: %v, want ErrClosed", err)
	}
}

package compat_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat"
	"github.com/xdevmem/xdevmem/compat/netdevtest"
	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
)

// txPair dials a KernelTXConn to a loopback listener in the test's
// namespace and returns it with the accepted peer.
func txPair(t *testing.T) (*compat.KernelTXConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	nc, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	c, err := compat.NewKernelTXConn(nc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	return c, peer
}

// TestKernelTXSendErrors: the kernel backend's devmem sendmsg is the
// kernel's (Linux 6.18, loopback): its refusals come back as the table's
// sendmsg rows — more than 1024 iovecs EMSGSIZE, an unknown dmabuf id
// EINVAL, a dmabuf id without MSG_ZEROCOPY or SO_ZEROCOPY EINVAL, a
// malformed SCM_DEVMEM_DMABUF EINVAL — and a failed call sends nothing.
func TestKernelTXSendErrors(t *testing.T) {
	c, peer := txPair(t)
	one := []devmemapi.Iovec{{Base: 0, Len: 100}}
	cm := devmemapi.AppendDmabufTxCmsg(nil, 12345)
	bad := devmemapi.AppendDmabufTxCmsg(nil, 12345)
	bad[0] = 24 // cmsg_len CMSG_LEN(8)
	for _, tc := range []struct {
		name  string
		zc    bool
		iov   []devmemapi.Iovec
		oob   []byte
		flags int
		want  devmemerr.Case
	}{
		{"1025 iovecs", true, make([]devmemapi.Iovec, devmemapi.UIO_MAXIOV+1), cm, devmemapi.MSG_ZEROCOPY, devmemerr.SendMsgTooManyIovecs},
		{"no SO_ZEROCOPY", false, one, cm, devmemapi.MSG_ZEROCOPY, devmemerr.SendMsgNoZerocopy},
		{"no MSG_ZEROCOPY", true, one, cm, 0, devmemerr.SendMsgNoZerocopy},
		{"unknown dmabuf id", true, one, cm, devmemapi.MSG_ZEROCOPY, devmemerr.SendMsgUnknownBinding},
		{"bad SCM_DEVMEM_DMABUF length", true, one, bad, devmemapi.MSG_ZEROCOPY, devmemerr.SendMsgBadCmsg},
	} {
		if err := c.SetZeroCopy(tc.zc); err != nil {
			t.Fatal(err)
		}
		n, err := c.SendMsg(tc.iov, tc.oob, tc.flags)
		if n != 0 || !devmemerr.Match(err, tc.want) || !errors.Is(err, tc.want.Errno) {
			t.Errorf("%s: %d, %v; want %s (%s)", tc.name, n, err, tc.want.Name, devmemerr.ErrnoName(tc.want.Errno))
		}
	}
	peer.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if n, _ := peer.Read(make([]byte, 16)); n != 0 {
		t.Errorf("failed sends put %d bytes on the wire", n)
	}
	if _, _, err := c.RecvErrQueue(make([]byte, devmemapi.CmsgSpaceZerocopy), 0); !errors.Is(err, unix.EAGAIN) {
		t.Errorf("empty error queue: %v", err)
	}
	if ok, err := c.PollErrQueue(20 * time.Millisecond); ok || err != nil {
		t.Errorf("poll of an empty error queue = %v, %v", ok, err)
	}
}

// TestKernelTXCompletions: the error-queue side against the kernel. A
// MSG_ZEROCOPY send without a dmabuf id reads user memory (its iovec base
// is an address, as in any sendmsg); over loopback the kernel copies it
// and posts a completion (SO_EE_CODE_ZEROCOPY_COPIED) that PollErrQueue
// sees and RecvErrQueue returns in the kernel's IP_RECVERR layout, parsed
// by devmemapi.AppendZerocopyRanges: send numbers 0 and 1 complete once.
func TestKernelTXCompletions(t *testing.T) {
	c, peer := txPair(t)
	if err := c.SetZeroCopy(true); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	for i := range buf {
		buf[i] = byte(i)
	}
	iov := []devmemapi.Iovec{{Base: uint64(uintptr(unsafe.Pointer(&buf[0]))), Len: uint64(len(buf))}}
	for range 2 {
		if n, err := c.SendMsg(iov, nil, devmemapi.MSG_ZEROCOPY); n != len(buf) || err != nil {
			t.Fatalf("zerocopy send: %d, %v", n, err)
		}
	}
	got := make([]byte, 2*len(buf))
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	for off := 0; off < len(got); {
		n, err := peer.Read(got[off:])
		if err != nil {
			t.Fatal(err)
		}
		off += n
	}
	var tr devmemapi.ZerocopyTracker
	deadline := time.Now().Add(5 * time.Second)
	for !tr.Covers(2) {
		if time.Now().After(deadline) {
			t.Fatalf("completions cover %d of 2 sends", tr.Completed())
		}
		if _, err := c.PollErrQueue(100 * time.Millisecond); err != nil {
			t.Fatal(err)
		}
		rs, err := devmemapi.RecvCompletions(c, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			if err := tr.Add(r); err != nil {
				t.Fatal(err)
			}
		}
	}
	if tr.Completed() != 2 {
		t.Fatalf("%d completions for 2 sends", tr.Completed())
	}
}

// TestKernelProviderBindTXFake: BindTX through the fake kernel: bind-tx
// needs no privilege, the binding lives until Close (the netlink socket's
// life), and the kernel's refusal keeps its row.
func TestKernelProviderBindTXFake(t *testing.T) {
	k := netdevtest.New()
	k.Unprivileged = true
	k.AddDevice(netdevtest.Device{Ifindex: 7, Name: "eth0", Driver: "fake", NetmemTX: true, RXQueues: 4, TXQueues: 4})
	k.AddDevice(netdevtest.Device{Ifindex: 8, Name: "veth0", Driver: "veth", RXQueues: 1, TXQueues: 1})
	fd, err := k.NewDmabuf(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	env := compat.Env{Dial: k.Dial, Interface: k.LookupInterface}
	p, err := compat.NewKernelProvider(compat.KernelOptions{Ifname: "eth0", Env: env})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var _ devmemapi.TXProvider = p
	b, err := p.BindTX(devmemapi.BindTXConfig{DmabufFD: fd})
	if err != nil {
		t.Fatalf("unprivileged bind-tx: %v", err)
	}
	if bs := k.Bindings(); len(bs) != 1 || !bs[0].TX || bs[0].ID != b.ID() || b.Size() != 1<<20 {
		t.Fatalf("bindings %+v, binding %d of %d bytes", bs, b.ID(), b.Size())
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if bs := k.Bindings(); len(bs) != 0 {
		t.Fatalf("after Close: %+v", bs)
	}
	_, err = p.BindTX(devmemapi.BindTXConfig{Ifindex: 8, DmabufFD: fd})
	if !devmemerr.Match(err, devmemerr.BindTXNoNetmemTX) || !errors.Is(err, unix.EOPNOTSUPP) {
		t.Errorf("bind-tx on a driver without netmem TX: %v", err)
	}
	p.Close()
	if _, err := p.BindTX(devmemapi.BindTXConfig{DmabufFD: fd}); !errors.Is(err, devmemapi.ErrClosed) {
		t.Errorf("BindTX after Close: %v", err)
	}
	if _, err := p.Dial(context.Background(), netip.MustParseAddrPort("127.0.0.1:9")); err == nil {
		t.Error("Dial after Close succeeded")
	}
	if n := k.OpenSockets(); n != 0 {
		t.Errorf("%d netlink sockets left open", n)
	}
}

package devmemerr_test

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat"
	"github.com/xdevmem/xdevmem/compat/ethnl"
	"github.com/xdevmem/xdevmem/compat/netdev"
	"github.com/xdevmem/xdevmem/compat/netdevtest"
	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
	"github.com/xdevmem/xdevmem/internal/netns"
	"github.com/xdevmem/xdevmem/internal/testutil"
	"github.com/xdevmem/xdevmem/stack"
)

// TestMain fails the run if a test leaves a namespace or an XDP program
// behind.
func TestMain(m *testing.M) { os.Exit(testutil.CheckLeaks(m)) }

// rows is what one backend answered: the error each produced row came
// with, and for each row it cannot produce here, why.
type rows struct {
	got    map[string]error
	cannot map[string]string
}

func newRows() *rows { return &rows{got: map[string]error{}, cannot: map[string]string{}} }

func (r *rows) put(c devmemerr.Case, err error) { r.got[c.Name] = err }

func (r *rows) not(why string, cs ...devmemerr.Case) {
	for _, c := range cs {
		r.cannot[c.Name] = why
	}
}

// TestBackends holds both backends to every row of the table: the
// emulation (package stack, on a veth pair) and the kernel backend
// (package compat: the real kernel where this machine lets it — loopback
// sockets, a veth — and the fake netlink kernel for what needs a devmem
// NIC) are each driven into every row they can produce, and must answer
// with the row's operation, errno and message. Each row a backend cannot
// produce here is listed with the reason; a row neither produced nor
// explained fails the test, so a new row needs both backends' answer.
func TestBackends(t *testing.T) {
	testutil.RequirePrivileged(t)
	testutil.Watchdog(t, 90*time.Second)
	backends := map[string]*rows{
		"emulated": emulatedRows(t),
		"kernel":   kernelRows(t),
	}
	for name, r := range backends {
		t.Logf("%s backend: %d rows produced, %d explained", name, len(r.got), len(r.cannot))
		for _, c := range devmemerr.Cases {
			err, produced := r.got[c.Name]
			why, explained := r.cannot[c.Name]
			switch {
			case produced && explained:
				t.Errorf("%s backend: %s is both produced and explained away (%s)", name, c.Name, why)
			case produced:
				if !devmemerr.Match(err, c) || !errors.Is(err, c.Errno) {
					t.Errorf("%s backend: %s: got %v; want %s %q", name, c.Name, err, devmemerr.ErrnoName(c.Errno), c.Message)
				}
				if got, ok := devmemerr.Classify(err); c.Message != "" && (!ok || got.Name != c.Name) {
					t.Errorf("%s backend: %s classified as %q", name, c.Name, got.Name)
				}
			case explained:
				if why == "" {
					t.Errorf("%s backend: %s: no reason", name, c.Name)
				}
			default:
				t.Errorf("%s backend: row %s is neither produced nor explained", name, c.Name)
			}
			delete(r.got, c.Name)
			delete(r.cannot, c.Name)
		}
		for n := range r.got {
			t.Errorf("%s backend: %s is not a row of the table", name, n)
		}
		for n := range r.cannot {
			t.Errorf("%s backend: %s is not a row of the table", name, n)
		}
	}
}

// emulatedRows drives a stack on a two-queue veth pair, with a kernel TCP
// peer, into every row the emulation can produce.
func emulatedRows(t *testing.T) *rows {
	r := newRows()
	r.not("the emulation's bind-rx is a call into the process's own stack; only making the stack needs privileges (AF_XDP, XDP)", devmemerr.BindRXNotAdmin)
	r.not("the emulated NIC always has queue management, restarts its queues and takes the UMEM", devmemerr.BindRXNoQueueOps, devmemerr.BindRXNoQueueRestart, devmemerr.BindRXNotPickedUp)
	r.not("BindRXConfig names RX queues by id: a queue without id or type, or of type tx, cannot be asked for", devmemerr.BindRXQueueAttr, devmemerr.BindRXQueueType)
	r.not("the UMEM is the emulated NIC's one DMA memory", devmemerr.BindRXDMAMismatch, devmemerr.BindRXNoDMA, devmemerr.BindTXNoDMA)
	r.not("the emulated dmabuf is the stack's UMEM: a dmabuf fd is not used", devmemerr.BindRXBadFD, devmemerr.BindRXNotDmabuf, devmemerr.BindTXBadFD, devmemerr.BindTXNotDmabuf)
	r.not("the emulation checks queue ids as Linux 6.18 does (bind-rx/queue-range)", devmemerr.BindRXQueueRangeMP)
	r.not("the emulated NIC is the XDP program and its AF_XDP sockets; another holder makes stack.New fail instead", devmemerr.BindRXXDPAttached, devmemerr.BindRXAFXDP)
	r.not("BindTXConfig cannot leave out the device or the dmabuf", devmemerr.BindTXMissingAttr)
	r.not("the emulated NIC transmits from its UMEM", devmemerr.BindTXNoNetmemTX)
	r.not("a devmemapi.Conn is a TCP connection", devmemerr.DontNeedNotTCP)

	p := testutil.NewPair(t, netns.Options{Prefix: "xdt", RxQueues: 2, TxQueues: 2})
	var st *stack.Stack
	if err := p.Emu.Do(func() (err error) {
		st, err = stack.New(stack.Config{Ifname: p.EmuIf, Addr: p.EmuAddr, RegionSize: 32 << 20})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	off, on := false, true
	bind := func(qs []uint32, auto *bool) (devmemapi.Binding, error) {
		return st.BindRX(devmemapi.BindRXConfig{Queues: qs, Autorelease: auto})
	}
	bindErr := func(qs []uint32, auto *bool) error { _, err := bind(qs, auto); return err }

	// bind-rx.
	r.put(devmemerr.BindRXMissingAttr, bindErr(nil, &off))
	_, err := st.BindRX(devmemapi.BindRXConfig{Ifindex: 1 << 20, Queues: []uint32{0}})
	r.put(devmemerr.BindRXNoDevice, err)
	r.put(devmemerr.BindRXQueueRange, bindErr([]uint32{5}, &off))
	st.NIC().SetRings(stack.Rings{TCPDataSplit: false})
	r.put(devmemerr.BindRXHDSDisabled, bindErr([]uint32{0}, &off))
	st.NIC().SetRings(stack.Rings{TCPDataSplit: true, HDSThresh: 64})
	r.put(devmemerr.BindRXHDSThresh, bindErr([]uint32{0}, &off))
	st.NIC().SetRings(stack.Rings{TCPDataSplit: true})
	b0, err := bind([]uint32{0}, &off)
	if err != nil {
		t.Fatal(err)
	}
	r.put(devmemerr.BindRXAutoreleaseMismatch, bindErr([]uint32{1}, &on))
	r.put(devmemerr.BindRXQueueBound, bindErr([]uint32{0}, &off))
	_, err = st.BindTX(devmemapi.BindTXConfig{Ifindex: 1 << 20})
	r.put(devmemerr.BindTXNoDevice, err)

	// A connection on queue 0 (bound to b0, autorelease off).
	const port = 5400
	rule, err := st.NIC().AddFlowRule(stack.FlowRule{DstPort: port, Queue: 0})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := st.Listen(netip.AddrPortFrom(netip.Addr{}, port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	dial := func() (devmemapi.Conn, net.Conn) {
		t.Helper()
		var pc net.Conn
		if err := p.Peer.Do(func() (err error) {
			pc, err = net.DialTimeout("tcp", netip.AddrPortFrom(p.EmuAddr.Addr(), port).String(), 10*time.Second)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, pc
	}
	waitQueued := func(c devmemapi.Conn) {
		t.Helper()
		q := c.(interface{ Queued() int })
		for deadline := time.Now().Add(5 * time.Second); q.Queued() == 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("no data arrived")
			}
		}
		time.Sleep(10 * time.Millisecond) // let TCP take it too
	}
	c, pc := dial()
	_, err = c.DontNeed([]devmemapi.DmabufToken{{TokenStart: 1, TokenCount: 1}})
	r.put(devmemerr.DontNeedNoBinding, err)
	_, err = c.DontNeed(nil)
	r.put(devmemerr.DontNeedShortOptlen, err)
	_, err = c.(interface{ DontNeedOpt([]byte) (int, error) }).DontNeedOpt(make([]byte, 12))
	r.put(devmemerr.DontNeedBadOptlen, err)
	_, err = c.DontNeed(make([]devmemapi.DmabufToken, 129))
	r.put(devmemerr.DontNeedTooManyTokens, err)

	// recvmsg.
	buf := make([]byte, 4096)
	oob := make([]byte, 8*devmemapi.CmsgSpaceDmabuf)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := pc.Write(make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	waitQueued(c)
	_, _, err = c.RecvMsg(buf, oob, 0)
	r.put(devmemerr.RecvMsgNoDevmemFlag, err)
	_, _, err = c.RecvMsg(buf, oob[:10], devmemapi.MSG_SOCK_DEVMEM)
	r.put(devmemerr.RecvMsgCmsgSpace, err)
	if _, fs, err := devmemapi.RecvFrags(c, buf, oob, nil, 0); err != nil || len(fs) == 0 {
		t.Fatalf("receive on b0: %v, %d frags", err, len(fs)) // c is tied to b0 now
	}
	// The flow moves to queue 1, bound to another binding: c, tied to
	// b0, may not receive from it.
	b1, err := bind([]uint32{1}, &off)
	if err != nil {
		t.Fatal(err)
	}
	st.NIC().DeleteFlowRule(rule)
	if _, err := st.NIC().AddFlowRule(stack.FlowRule{DstPort: port, Queue: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.Write(make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	waitQueued(c)
	_, _, err = c.RecvMsg(buf, oob, devmemapi.MSG_SOCK_DEVMEM)
	r.put(devmemerr.RecvMsgOtherBinding, err)
	// A second connection, on queue 1, never receives before b1 goes:
	// b1 has no user left (no socket tied to it).
	c2, pc2 := dial()
	if _, err := pc2.Write(make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	waitQueued(c2)
	b1.Close()
	c2.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, _, err = c2.RecvMsg(buf, oob, devmemapi.MSG_SOCK_DEVMEM)
	r.put(devmemerr.RecvMsgUnbound, err)
	b0.Close()

	// sendmsg, to a kernel listener in the peer namespace, and a TX
	// binding of another stack (another device) for ENODEV.
	tb, err := st.BindTX(devmemapi.BindTXConfig{Size: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	p2 := testutil.NewPair(t, netns.Options{Prefix: "xdt"})
	var st2 *stack.Stack
	if err := p2.Emu.Do(func() (err error) {
		st2, err = stack.New(stack.Config{Ifname: p2.EmuIf, Addr: p2.EmuAddr, RegionSize: 16 << 20})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st2.Close() })
	tb2, err := st2.BindTX(devmemapi.BindTXConfig{Size: 16 << 10})
	if err != nil {
		t.Fatal(err)
	}
	var pl net.Listener
	if err := p.Peer.Do(func() (err error) {
		pl, err = net.Listen("tcp", netip.AddrPortFrom(p.PeerAddr.Addr(), 0).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pl.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tc, err := st.Dial(ctx, netip.MustParseAddrPort(pl.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	sendRows(t, r, tc, tb.ID(), tb2.ID(), tb.Size())
	return r
}

// kernelRows drives the kernel backend: bind-rx and bind-tx through the
// netdev client against the fake kernel (no devmem NIC here) and, for the
// rows a veth answers, the real one; DONTNEED and sendmsg against the real
// kernel over loopback.
func kernelRows(t *testing.T) *rows {
	r := newRows()
	r.not("the netdev client always sends a queue's id and type", devmemerr.BindRXQueueAttr)
	r.not("a KernelConn is a TCP socket", devmemerr.DontNeedNotTCP)
	r.not("autorelease off exists only with the unmerged series; Linux 6.18 has no manual mode", devmemerr.DontNeedNoBinding,
		devmemerr.RecvMsgOtherBinding, devmemerr.RecvMsgUnbound)
	r.not("needs a NIC that delivers devmem data into a dmabuf; none on this machine", devmemerr.RecvMsgNoDevmemFlag, devmemerr.RecvMsgCmsgSpace)
	r.not("needs a TX binding, which needs a NIC with netmem TX; none on this machine", devmemerr.SendMsgOtherDevice, devmemerr.SendMsgOutsideDmabuf)

	// bind-rx and bind-tx, one fake kernel per row.
	nic := func() netdevtest.Device {
		return netdevtest.Device{Ifindex: 7, Name: "eth0", RXQueues: 4, TXQueues: 4, QueueMgmt: true, NetmemTX: true,
			TCPDataSplit: ethnl.TCPDataSplitEnabled}
	}
	fake := func(kern func(*netdevtest.Kernel), dev func(*netdevtest.Device), fn func(c *netdev.Conn, fd int) error) error {
		k := netdevtest.New()
		if kern != nil {
			kern(k)
		}
		d := nic()
		if dev != nil {
			dev(&d)
		}
		k.AddDevice(d)
		fd, err := k.NewDmabuf(1 << 20)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		gc, err := k.Dial()
		if err != nil {
			t.Fatal(err)
		}
		c, err := netdev.NewConn(gc)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return fn(c, fd)
	}
	rx := func(qs ...uint32) func(*netdev.Conn, int) error {
		return func(c *netdev.Conn, fd int) error {
			_, err := c.BindRX(netdev.BindRXRequest{Ifindex: 7, FD: fd, Queues: netdev.RXQueues(qs...)})
			return err
		}
	}
	on, off := true, false
	r.put(devmemerr.BindRXNotAdmin, fake(func(k *netdevtest.Kernel) { k.Unprivileged = true }, nil, rx(0)))
	r.put(devmemerr.BindRXMissingAttr, fake(nil, nil, func(c *netdev.Conn, _ int) error {
		_, err := c.BindRX(netdev.BindRXRequest{Ifindex: 7, FD: -1, Queues: netdev.RXQueues(0)})
		return err
	}))
	r.put(devmemerr.BindRXNoDevice, fake(nil, nil, func(c *netdev.Conn, fd int) error {
		_, err := c.BindRX(netdev.BindRXRequest{Ifindex: 99, FD: fd, Queues: netdev.RXQueues(0)})
		return err
	}))
	r.put(devmemerr.BindRXQueueType, fake(nil, nil, func(c *netdev.Conn, fd int) error {
		_, err := c.BindRX(netdev.BindRXRequest{Ifindex: 7, FD: fd, Queues: []netdev.QueueRef{{ID: 0, Type: netdev.QueueTypeTX}}})
		return err
	}))
	r.put(devmemerr.BindRXQueueRange, fake(nil, nil, rx(0, 4)))
	r.put(devmemerr.BindRXDMAMismatch, fake(nil, func(d *netdevtest.Device) { d.QueueDMADevs = []int{0, 1} }, rx(0, 1)))
	r.put(devmemerr.BindRXNoDMA, fake(nil, func(d *netdevtest.Device) { d.NoDMA = true }, rx(0)))
	r.put(devmemerr.BindRXBadFD, fake(nil, nil, func(c *netdev.Conn, _ int) error {
		_, err := c.BindRX(netdev.BindRXRequest{Ifindex: 7, FD: 1 << 30, Queues: netdev.RXQueues(0)})
		return err
	}))
	r.put(devmemerr.BindRXNotDmabuf, fake(nil, nil, func(c *netdev.Conn, _ int) error {
		mfd, err := unix.MemfdCreate("not-a-dmabuf", unix.MFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(mfd)
		_, err = c.BindRX(netdev.BindRXRequest{Ifindex: 7, FD: mfd, Queues: netdev.RXQueues(0)})
		return err
	}))
	r.put(devmemerr.BindRXAutoreleaseMismatch, fake(func(k *netdevtest.Kernel) { k.AutoreleaseSeries = true }, nil, func(c *netdev.Conn, fd int) error {
		if _, err := c.BindRX(netdev.BindRXRequest{Ifindex: 7, FD: fd, Queues: netdev.RXQueues(0), Autorelease: &on}); err != nil {
			t.Fatal(err)
		}
		_, err := c.BindRX(netdev.BindRXRequest{Ifindex: 7, FD: fd, Queues: netdev.RXQueues(1), Autorelease: &off})
		return err
	}))
	r.put(devmemerr.BindRXQueueRangeMP, fake(func(k *netdevtest.Kernel) { k.Before618 = true }, nil, rx(4)))
	r.put(devmemerr.BindRXHDSDisabled, fake(nil, func(d *netdevtest.Device) { d.TCPDataSplit = ethnl.TCPDataSplitDisabled }, rx(0)))
	r.put(devmemerr.BindRXHDSThresh, fake(nil, func(d *netdevtest.Device) { d.HDSThresh = 256 }, rx(0)))
	r.put(devmemerr.BindRXXDPAttached, fake(nil, func(d *netdevtest.Device) { d.XDPAttached = true }, rx(0)))
	r.put(devmemerr.BindRXQueueBound, fake(nil, nil, func(c *netdev.Conn, fd int) error {
		if err := rx(1)(c, fd); err != nil {
			t.Fatal(err)
		}
		return rx(1)(c, fd)
	}))
	r.put(devmemerr.BindRXAFXDP, fake(nil, func(d *netdevtest.Device) { d.XSKQueues = []uint32{0} }, rx(0)))
	r.put(devmemerr.BindRXNoQueueRestart, fake(nil, func(d *netdevtest.Device) { d.NoQueueRestart = true }, rx(0)))
	r.put(devmemerr.BindRXNotPickedUp, fake(nil, func(d *netdevtest.Device) { d.IgnoresProvider = true }, rx(0)))
	tx := func(ifindex int) func(*netdev.Conn, int) error {
		return func(c *netdev.Conn, fd int) error { _, err := c.BindTX(ifindex, fd); return err }
	}
	r.put(devmemerr.BindTXMissingAttr, fake(nil, nil, func(c *netdev.Conn, _ int) error { return tx(7)(c, -1) }))
	r.put(devmemerr.BindTXNoDevice, fake(nil, nil, tx(99)))
	r.put(devmemerr.BindTXNoDMA, fake(nil, func(d *netdevtest.Device) { d.NoDMA = true }, tx(7)))
	r.put(devmemerr.BindTXBadFD, fake(nil, nil, func(c *netdev.Conn, _ int) error { return tx(7)(c, 1<<30) }))
	r.put(devmemerr.BindTXNotDmabuf, fake(nil, nil, func(c *netdev.Conn, _ int) error {
		mfd, err := unix.MemfdCreate("not-a-dmabuf", unix.MFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(mfd)
		return tx(7)(c, mfd)
	}))

	// What a veth answers, from the real kernel through the provider.
	p := testutil.NewPair(t, netns.Options{Prefix: "xdt", SharedAddr: true})
	if err := p.Emu.Do(func() error {
		kp, err := compat.NewKernelProvider(compat.KernelOptions{Ifname: p.EmuIf})
		if err != nil {
			return err
		}
		defer kp.Close()
		mfd, err := unix.MemfdCreate("not-a-dmabuf", unix.MFD_CLOEXEC)
		if err != nil {
			return err
		}
		defer unix.Close(mfd)
		_, err = kp.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}, DmabufFD: mfd})
		r.put(devmemerr.BindRXNoQueueOps, err)
		_, err = kp.BindTX(devmemapi.BindTXConfig{DmabufFD: mfd})
		r.put(devmemerr.BindTXNoNetmemTX, err)
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// DONTNEED on a kernel TCP socket over loopback.
	l, err := compat.ListenTCP(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	peer, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.DontNeed(nil)
	r.put(devmemerr.DontNeedShortOptlen, err)
	_, err = c.(*compat.KernelConn).DontNeedOpt(make([]byte, 12))
	r.put(devmemerr.DontNeedBadOptlen, err)
	_, err = c.DontNeed(make([]devmemapi.DmabufToken, 129))
	r.put(devmemerr.DontNeedTooManyTokens, err)

	// sendmsg on a kernel TCP socket over loopback; no TX binding can
	// exist here, so any dmabuf id is unknown.
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	kp, err := compat.NewKernelProvider(compat.KernelOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer kp.Close()
	tc, err := kp.Dial(context.Background(), netip.MustParseAddrPort(tl.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	sendRows(t, r, tc, 12345, 0, 0)
	return r
}

// sendRows drives a TX connection into the sendmsg rows: id names a TX
// binding of size bytes on the connection's device (or no binding at all
// when size is 0), otherID one of another device (0: none).
func sendRows(t *testing.T, r *rows, c devmemapi.TXConn, id, otherID uint32, size uint64) {
	t.Helper()
	if err := c.SetZeroCopy(true); err != nil {
		t.Fatal(err)
	}
	one := []devmemapi.Iovec{{Base: 0, Len: 100}}
	cm := devmemapi.AppendDmabufTxCmsg(nil, id)
	_, err := c.SendMsg(make([]devmemapi.Iovec, devmemapi.UIO_MAXIOV+1), cm, devmemapi.MSG_ZEROCOPY)
	r.put(devmemerr.SendMsgTooManyIovecs, err)
	_, err = devmemapi.SendDmabuf(c, 999999, one, 0)
	r.put(devmemerr.SendMsgUnknownBinding, err)
	if otherID != 0 {
		_, err = devmemapi.SendDmabuf(c, otherID, one, 0)
		r.put(devmemerr.SendMsgOtherDevice, err)
	}
	_, err = c.SendMsg(one, cm, 0)
	r.put(devmemerr.SendMsgNoZerocopy, err)
	bad := devmemapi.AppendDmabufTxCmsg(nil, id)
	binary.NativeEndian.PutUint64(bad, 24) // cmsg_len CMSG_LEN(8)
	_, err = c.SendMsg(one, bad, devmemapi.MSG_ZEROCOPY)
	r.put(devmemerr.SendMsgBadCmsg, err)
	mark := make([]byte, 24)
	binary.NativeEndian.PutUint64(mark, 20)
	binary.NativeEndian.PutUint32(mark[8:], uint32(unix.SOL_SOCKET))
	binary.NativeEndian.PutUint32(mark[12:], unix.SO_MARK)
	withoutNetCaps(t, func() {
		_, err = c.SendMsg(one, append(mark, cm...), devmemapi.MSG_ZEROCOPY)
	})
	r.put(devmemerr.SendMsgCmsgPerm, err)
	if size > 0 {
		_, err = devmemapi.SendDmabuf(c, id, []devmemapi.Iovec{{Base: size, Len: 1}}, 0)
		r.put(devmemerr.SendMsgOutsideDmabuf, err)
	}
}

// withoutNetCaps runs fn on this goroutine's OS thread with CAP_NET_ADMIN
// and CAP_NET_RAW dropped from the thread's effective set (capabilities
// are per thread), then raises them again from the permitted set.
func withoutNetCaps(t *testing.T, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var saved [2]unix.CapUserData
	if err := unix.Capget(&hdr, &saved[0]); err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	data := saved
	for _, c := range []uint{unix.CAP_NET_ADMIN, unix.CAP_NET_RAW} {
		data[c/32].Effective &^= 1 << (c % 32)
	}
	hdr = unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer func() {
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		if err := unix.Capset(&hdr, &saved[0]); err != nil {
			// Leave the thread locked: it dies with the goroutine.
			t.Errorf("restore capabilities: %v", err)
			return
		}
		runtime.UnlockOSThread()
	}()
	fn()
}

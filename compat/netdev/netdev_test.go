package netdev_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat/ethnl"
	"github.com/xdevmem/xdevmem/compat/netdev"
	"github.com/xdevmem/xdevmem/compat/netdevtest"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
)

// nic is a fake devmem-capable NIC: 4 RX queues, header split on,
// hds-thresh 0, ntuple on.
func nic() netdevtest.Device {
	return netdevtest.Device{
		Ifindex: 7, Name: "eth0", Driver: "bnxt_en",
		RXQueues: 4, TXQueues: 4,
		XDPFeatures: netdev.XDPActBasic | netdev.XDPActRedirect | netdev.XDPActXSKZeroCopy,
		QueueMgmt:   true, NetmemTX: true,
		TCPDataSplit: ethnl.TCPDataSplitEnabled, HDSThreshMax: 1024,
		HWFeatures: []string{ethnl.NtupleFeature}, Features: []string{ethnl.NtupleFeature},
	}
}

// newDmabuf registers a memfd with the fake as a dmabuf.
func newDmabuf(t *testing.T, k *netdevtest.Kernel) int {
	t.Helper()
	fd, err := k.NewDmabuf(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// theDmabuf in a table stands for the fd newDmabuf returns.
const theDmabuf = -100

func dial(t *testing.T, k *netdevtest.Kernel) *netdev.Conn {
	t.Helper()
	gc, err := k.Dial()
	if err != nil {
		t.Fatal(err)
	}
	c, err := netdev.NewConn(gc)
	if err != nil {
		t.Fatalf("NewConn: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestFamily proves the family resolves through nlctrl with its ops list,
// and that a kernel without the family answers ENOENT.
func TestFamily(t *testing.T) {
	k := netdevtest.New()
	c := dial(t, k)
	f := c.Family()
	if f.ID != netdevtest.NetdevFamilyID || f.Name != "netdev" || f.Version != 1 {
		t.Errorf("family = %+v", f)
	}
	for _, op := range []uint8{netdev.CmdDevGet, netdev.CmdQueueGet, netdev.CmdBindRX, netdev.CmdBindTX} {
		if !f.HasOp(op) {
			t.Errorf("family lacks op %d: %v", op, f.Ops)
		}
	}
	reqs := k.Requests()
	if len(reqs) != 1 || reqs[0].Family != "nlctrl" || reqs[0].Command != unix.CTRL_CMD_GETFAMILY {
		t.Errorf("requests = %+v", reqs)
	}

	k = netdevtest.New()
	k.NoBindTX = true
	if f := dial(t, k).Family(); f.HasOp(netdev.CmdBindTX) || !f.HasOp(netdev.CmdBindRX) {
		t.Errorf("pre-6.16 kernel: ops %v", f.Ops)
	}

	k = netdevtest.New()
	k.NoNetdev = true
	gc, _ := k.Dial()
	_, err := netdev.NewConn(gc)
	if !errors.Is(err, unix.ENOENT) {
		t.Errorf("no family: err = %v, want ENOENT", err)
	}
	if n := k.OpenSockets(); n != 0 {
		t.Errorf("NewConn left %d sockets open on error", n)
	}
}

// TestDevGet proves the request carries the ifindex and the reply decodes.
func TestDevGet(t *testing.T) {
	k := netdevtest.New()
	k.AddDevice(nic())
	c := dial(t, k)
	d, err := c.DevGet(7)
	if err != nil {
		t.Fatal(err)
	}
	want := &netdev.Dev{Ifindex: 7, XDPFeatures: netdev.XDPActBasic | netdev.XDPActRedirect | netdev.XDPActXSKZeroCopy, XDPZCMaxSegs: 1}
	if diff := cmp.Diff(want, d); diff != "" {
		t.Errorf("dev (-want +got):\n%s", diff)
	}
	if s := d.XDPFeatures.String(); s != "basic,redirect,xsk-zerocopy" {
		t.Errorf("xdp features %q", s)
	}
	last := k.Requests()[len(k.Requests())-1]
	if last.Command != netdev.CmdDevGet || last.Flags != netlink.Request {
		t.Errorf("request %+v", last)
	}
	if _, err := c.DevGet(99); !errors.Is(err, unix.ENODEV) {
		t.Errorf("DevGet(99) err = %v, want ENODEV", err)
	}
}

// TestQueueGet proves the dump request (Request|Dump, ifindex) and that
// bound, AF_XDP and plain queues decode; a down device lists none and an
// unknown ifindex ends the dump with ENODEV.
func TestQueueGet(t *testing.T) {
	k := netdevtest.New()
	d := nic()
	d.RXQueues, d.TXQueues = 2, 1
	d.XSKQueues = []uint32{1}
	k.AddDevice(d)
	fd := newDmabuf(t, k)
	c := dial(t, k)
	id, err := c.BindRX(netdev.BindRXRequest{Ifindex: 7, FD: fd, Queues: netdev.RXQueues(0)})
	if err != nil {
		t.Fatal(err)
	}
	qs, err := c.QueueGet(7)
	if err != nil {
		t.Fatal(err)
	}
	want := []netdev.Queue{
		{ID: 0, Ifindex: 7, Type: netdev.QueueTypeRX, NapiID: 8192, Dmabuf: id},
		{ID: 1, Ifindex: 7, Type: netdev.QueueTypeRX, NapiID: 8193, XSK: true},
		{ID: 0, Ifindex: 7, Type: netdev.QueueTypeTX},
	}
	if diff := cmp.Diff(want, qs); diff != "" {
		t.Errorf("queues (-want +got):\n%s", diff)
	}
	last := k.Requests()[len(k.Requests())-1]
	if last.Command != netdev.CmdQueueGet || last.Flags != netlink.Request|netlink.Dump {
		t.Errorf("request %+v", last)
	}
	k.Update(7, func(d *netdevtest.Device) { d.Down = true })
	if qs, err := c.QueueGet(7); err != nil || len(qs) != 0 {
		t.Errorf("down device: %v, %v", qs, err)
	}
	if _, err := c.QueueGet(99); !errors.Is(err, unix.ENODEV) {
		t.Errorf("QueueGet(99) err = %v, want ENODEV", err)
	}
}

// TestBindRXRequest proves the wire form of bind-rx: ifindex u32, fd u32,
// one queues nest per queue with id and type, autorelease u8 only when set.
func TestBindRXRequest(t *testing.T) {
	k := netdevtest.New()
	k.AutoreleaseSeries = true
	k.AddDevice(nic())
	fd := newDmabuf(t, k)
	c := dial(t, k)
	off := false
	id, err := c.BindRX(netdev.BindRXRequest{Ifindex: 7, FD: fd, Queues: netdev.RXQueues(2, 3), Autorelease: &off})
	if err != nil || id == 0 {
		t.Fatalf("BindRX = %d, %v", id, err)
	}
	req := k.Requests()[len(k.Requests())-1]
	if req.Command != netdev.CmdBindRX || req.Flags != netlink.Request {
		t.Errorf("request header %+v", req)
	}
	type queue struct{ ID, Type uint32 }
	var got struct {
		Ifindex, FD uint32
		Queues      []queue
		Autorelease []uint8
	}
	ad, err := netlink.NewAttributeDecoder(req.Attrs)
	if err != nil {
		t.Fatal(err)
	}
	for ad.Next() {
		switch ad.Type() {
		case netdev.AttrDmabufIfindex:
			got.Ifindex = ad.Uint32()
		case netdev.AttrDmabufFD:
			got.FD = ad.Uint32()
		case netdev.AttrDmabufQueues:
			var q queue
			ad.Nested(func(nad *netlink.AttributeDecoder) error {
				for nad.Next() {
					switch nad.Type() {
					case netdev.AttrQueueID:
						q.ID = nad.Uint32()
					case netdev.AttrQueueType:
						q.Type = nad.Uint32()
					}
				}
				return nil
			})
			got.Queues = append(got.Queues, q)
		case netdev.AttrDmabufAutorelease:
			got.Autorelease = append(got.Autorelease, ad.Bytes()...)
		default:
			t.Errorf("unexpected attribute %d", ad.Type())
		}
	}
	if err := ad.Err(); err != nil {
		t.Fatal(err)
	}
	want := struct {
		Ifindex, FD uint32
		Queues      []queue
		Autorelease []uint8
	}{7, uint32(fd), []queue{{2, 0}, {3, 0}}, []uint8{0}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("bind-rx attributes (-want +got):\n%s", diff)
	}
	bs := k.Bindings()
	if len(bs) != 1 || bs[0].ID != id || bs[0].FD != fd || !cmp.Equal(bs[0].Queues, []uint32{2, 3}) || bs[0].Autorelease == nil || *bs[0].Autorelease {
		t.Errorf("bindings = %+v", bs)
	}
}

// TestBindRXErrors walks the kernel's checks: each refusal keeps its errno
// (errors.Is), its extended-ack text (in the error and in Message) and is
// classified as the devmemerr case.
func TestBindRXErrors(t *testing.T) {
	on, off := true, false
	for _, tt := range []struct {
		name   string
		setup  func(k *netdevtest.Kernel, d *netdevtest.Device)
		req    netdev.BindRXRequest
		want   devmemerr.Case
		wantTx string // extended-ack text, when the case has none of its own
	}{
		{name: "not admin", setup: func(k *netdevtest.Kernel, _ *netdevtest.Device) { k.Unprivileged = true },
			want: devmemerr.BindRXNotAdmin},
		{name: "no fd", req: netdev.BindRXRequest{Ifindex: 7, FD: -1, Queues: netdev.RXQueues(0)}, want: devmemerr.BindRXMissingAttr},
		{name: "no queues", req: netdev.BindRXRequest{Ifindex: 7, FD: theDmabuf}, want: devmemerr.BindRXMissingAttr},
		{name: "no ifindex", req: netdev.BindRXRequest{FD: theDmabuf, Queues: netdev.RXQueues(0)}, want: devmemerr.BindRXMissingAttr},
		{name: "no device", req: netdev.BindRXRequest{Ifindex: 99, FD: theDmabuf, Queues: netdev.RXQueues(0)}, want: devmemerr.BindRXNoDevice},
		{name: "no queue ops", setup: func(_ *netdevtest.Kernel, d *netdevtest.Device) { d.QueueMgmt = false },
			want: devmemerr.BindRXNoQueueOps},
		{name: "bad fd", req: netdev.BindRXRequest{Ifindex: 7, FD: 1 << 30, Queues: netdev.RXQueues(0)}, want: devmemerr.BindRXBadFD},
		{name: "not a dmabuf", req: netdev.BindRXRequest{Ifindex: 7, FD: notDmabuf(t), Queues: netdev.RXQueues(0)}, want: devmemerr.BindRXNotDmabuf},
		{name: "tx queue", req: netdev.BindRXRequest{Ifindex: 7, FD: theDmabuf, Queues: []netdev.QueueRef{{ID: 0, Type: netdev.QueueTypeTX}}},
			want: devmemerr.BindRXQueueType},
		{name: "queue range", req: netdev.BindRXRequest{Ifindex: 7, FD: theDmabuf, Queues: netdev.RXQueues(0, 4)}, want: devmemerr.BindRXQueueRange},
		// 6.18 reads the queue list before it looks at the dmabuf fd.
		{name: "queue range before the fd", req: netdev.BindRXRequest{Ifindex: 7, FD: 1 << 30, Queues: netdev.RXQueues(4)}, want: devmemerr.BindRXQueueRange},
		{name: "queue range, 6.12 to 6.17", setup: func(k *netdevtest.Kernel, _ *netdevtest.Device) { k.Before618 = true },
			req: netdev.BindRXRequest{Ifindex: 7, FD: theDmabuf, Queues: netdev.RXQueues(0, 4)}, want: devmemerr.BindRXQueueRangeMP},
		{name: "queue range after the fd, 6.12 to 6.17", setup: func(k *netdevtest.Kernel, _ *netdevtest.Device) { k.Before618 = true },
			req: netdev.BindRXRequest{Ifindex: 7, FD: 1 << 30, Queues: netdev.RXQueues(4)}, want: devmemerr.BindRXBadFD},
		{name: "no dma device", setup: func(_ *netdevtest.Kernel, d *netdevtest.Device) { d.NoDMA = true },
			req: netdev.BindRXRequest{Ifindex: 7, FD: 1 << 30, Queues: netdev.RXQueues(0)}, want: devmemerr.BindRXNoDMA},
		{name: "dma device mismatch", setup: func(_ *netdevtest.Kernel, d *netdevtest.Device) { d.QueueDMADevs = []int{0, 0, 1, 1} },
			req: netdev.BindRXRequest{Ifindex: 7, FD: theDmabuf, Queues: netdev.RXQueues(2, 1)}, want: devmemerr.BindRXDMAMismatch,
			wantTx: "DMA device mismatch between queue 2 and 1 (multi-PF device?)"},
		{name: "hds off", setup: func(_ *netdevtest.Kernel, d *netdevtest.Device) { d.TCPDataSplit = ethnl.TCPDataSplitDisabled },
			want: devmemerr.BindRXHDSDisabled},
		{name: "hds thresh", setup: func(_ *netdevtest.Kernel, d *netdevtest.Device) { d.HDSThresh = 256 },
			want: devmemerr.BindRXHDSThresh},
		{name: "xdp", setup: func(_ *netdevtest.Kernel, d *netdevtest.Device) { d.XDPAttached = true },
			want: devmemerr.BindRXXDPAttached},
		{name: "af_xdp", setup: func(_ *netdevtest.Kernel, d *netdevtest.Device) { d.XSKQueues = []uint32{0} },
			want: devmemerr.BindRXAFXDP},
		{name: "not picked up", setup: func(_ *netdevtest.Kernel, d *netdevtest.Device) { d.IgnoresProvider = true },
			want: devmemerr.BindRXNotPickedUp},
		{name: "autorelease on a 6.18 kernel", req: netdev.BindRXRequest{Ifindex: 7, FD: theDmabuf, Queues: netdev.RXQueues(0), Autorelease: &on},
			want: devmemerr.BindRXMissingAttr, wantTx: "Unknown attribute type"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			k := netdevtest.New()
			d := nic()
			if tt.setup != nil {
				tt.setup(k, &d)
			}
			k.AddDevice(d)
			fd := newDmabuf(t, k)
			req := tt.req
			if req.Ifindex == 0 && req.FD == 0 && req.Queues == nil {
				req = netdev.BindRXRequest{Ifindex: 7, FD: theDmabuf, Queues: netdev.RXQueues(0)}
			}
			if req.FD == theDmabuf {
				req.FD = fd
			}
			_, err := dial(t, k).BindRX(req)
			if !errors.Is(err, tt.want.Errno) {
				t.Fatalf("err = %v, want errno %v", err, tt.want.Errno)
			}
			text := tt.want.Message
			if tt.wantTx != "" {
				text = tt.wantTx
			}
			var de *devmemerr.Error
			if !errors.As(err, &de) || de.Message != text || de.Op != devmemerr.OpBindRX {
				t.Fatalf("err = %#v, want message %q", err, text)
			}
			if text != "" && !strings.Contains(err.Error(), text) {
				t.Errorf("error text %q lacks the kernel's %q", err, text)
			}
			if (tt.wantTx == "" || tt.want.Message != "") && !devmemerr.Match(err, tt.want) {
				t.Errorf("Match(%v, %s) = false", err, tt.want.Name)
			}
			if c, _ := devmemerr.Classify(err); tt.want.Message != "" && c.Name != tt.want.Name {
				t.Errorf("Classify = %s, want %s", c.Name, tt.want.Name)
			}
			if bs := k.Bindings(); len(bs) != 0 {
				t.Errorf("a refused bind left bindings %+v", bs)
			}
		})
	}

	// The series makes the mode system-wide.
	k := netdevtest.New()
	k.AutoreleaseSeries = true
	k.AddDevice(nic())
	fd := newDmabuf(t, k)
	if _, err := dial(t, k).BindRX(netdev.BindRXRequest{Ifindex: 7, FD: fd, Queues: netdev.RXQueues(0), Autorelease: &on}); err != nil {
		t.Fatal(err)
	}
	_, err := dial(t, k).BindRX(netdev.BindRXRequest{Ifindex: 7, FD: fd, Queues: netdev.RXQueues(1), Autorelease: &off})
	if !devmemerr.Match(err, devmemerr.BindRXAutoreleaseMismatch) || !strings.Contains(err.Error(), "autorelease=1") {
		t.Errorf("mode mismatch: %v", err)
	}
	// Absent means 0 on a series kernel.
	if _, err := dial(t, k).BindRX(netdev.BindRXRequest{Ifindex: 7, FD: fd, Queues: netdev.RXQueues(2)}); !devmemerr.Match(err, devmemerr.BindRXAutoreleaseMismatch) {
		t.Errorf("absent attribute with the system at 1: %v", err)
	}

	// 6.18 reads the queue list into a bitmap: a queue named twice is
	// bound once.
	k = netdevtest.New()
	k.AddDevice(nic())
	fd = newDmabuf(t, k)
	if _, err := dial(t, k).BindRX(netdev.BindRXRequest{Ifindex: 7, FD: fd, Queues: netdev.RXQueues(3, 1, 3)}); err != nil {
		t.Fatal(err)
	}
	if bs := k.Bindings(); len(bs) != 1 || !slices.Equal(bs[0].Queues, []uint32{1, 3}) {
		t.Errorf("bindings %+v, want queues [1 3]", bs)
	}
}

// TestBindingLifetime proves a binding lives as long as its connection:
// closing the conn unbinds, and another conn's bindings stay.
func TestBindingLifetime(t *testing.T) {
	k := netdevtest.New()
	k.AddDevice(nic())
	fd := newDmabuf(t, k)
	a, b := dial(t, k), dial(t, k)
	ida, err := a.BindRX(netdev.BindRXRequest{Ifindex: 7, FD: fd, Queues: netdev.RXQueues(0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	idb, err := b.BindRX(netdev.BindRXRequest{Ifindex: 7, FD: fd, Queues: netdev.RXQueues(2)})
	if err != nil {
		t.Fatal(err)
	}
	if ida == idb {
		t.Fatalf("two bindings share id %d", ida)
	}
	if _, err := b.BindRX(netdev.BindRXRequest{Ifindex: 7, FD: fd, Queues: netdev.RXQueues(1)}); !devmemerr.Match(err, devmemerr.BindRXQueueBound) {
		t.Errorf("binding a bound queue: %v", err)
	}
	a.Close()
	bs := k.Bindings()
	if len(bs) != 1 || bs[0].ID != idb {
		t.Fatalf("after closing a: bindings %+v", bs)
	}
	if _, err := b.BindRX(netdev.BindRXRequest{Ifindex: 7, FD: fd, Queues: netdev.RXQueues(1)}); err != nil {
		t.Errorf("queue 1 not free after unbind: %v", err)
	}
	b.Close()
	if bs := k.Bindings(); len(bs) != 0 {
		t.Errorf("after closing b: %+v", bs)
	}
	if n := k.OpenSockets(); n != 0 {
		t.Errorf("%d sockets open", n)
	}
}

// TestBindTX proves bind-tx's request and its refusals, including the
// kernel's extended-ack text for a driver without netmem TX.
func TestBindTX(t *testing.T) {
	k := netdevtest.New()
	d := nic()
	k.AddDevice(d)
	d.Ifindex, d.Name, d.NetmemTX = 8, "veth0", false
	k.AddDevice(d)
	fd := newDmabuf(t, k)
	c := dial(t, k)
	id, err := c.BindTX(7, fd)
	if err != nil || id == 0 {
		t.Fatalf("BindTX = %d, %v", id, err)
	}
	if bs := k.Bindings(); len(bs) != 1 || !bs[0].TX || bs[0].FD != fd {
		t.Errorf("bindings %+v", bs)
	}
	_, err = c.BindTX(8, fd)
	if !errors.Is(err, unix.EOPNOTSUPP) || !devmemerr.Match(err, devmemerr.BindTXNoNetmemTX) {
		t.Errorf("no netmem tx: %v", err)
	}
	if got, want := err.Error(), "bind-tx: Driver does not support netmem TX: operation not supported"; got != want {
		t.Errorf("text %q, want %q", got, want)
	}
	if _, err := c.BindTX(7, -1); !devmemerr.Match(err, devmemerr.BindTXMissingAttr) {
		t.Errorf("no fd: %v", err)
	}
	if _, err := c.BindTX(99, fd); !devmemerr.Match(err, devmemerr.BindTXNoDevice) {
		t.Errorf("no device: %v", err)
	}
	if _, err := c.BindTX(7, 1<<30); !devmemerr.Match(err, devmemerr.BindTXBadFD) {
		t.Errorf("bad fd: %v", err)
	}
	if _, err := c.BindTX(7, notDmabuf(t)); !devmemerr.Match(err, devmemerr.BindTXNotDmabuf) {
		t.Errorf("not a dmabuf: %v", err)
	}
	k.Update(7, func(d *netdevtest.Device) { d.NoDMA = true })
	if _, err := c.BindTX(7, fd); !devmemerr.Match(err, devmemerr.BindTXNoDMA) {
		t.Errorf("no dma device: %v", err)
	}
	k.Update(7, func(d *netdevtest.Device) { d.NoDMA = false })

	// bind-tx is not admin-only (the netdev family gives it no
	// GENL_ADMIN_PERM): an unprivileged caller binds.
	k.Unprivileged = true
	if id, err := dial(t, k).BindTX(7, fd); err != nil || id == 0 {
		t.Errorf("unprivileged bind-tx = %d, %v; want a binding", id, err)
	}
	if _, err := dial(t, k).BindRX(netdev.BindRXRequest{Ifindex: 7, FD: fd, Queues: netdev.RXQueues(0)}); !devmemerr.Match(err, devmemerr.BindRXNotAdmin) {
		t.Errorf("unprivileged bind-rx: %v", err)
	}
}

// notDmabuf is an open file the fake does not know as a dmabuf.
func notDmabuf(t *testing.T) int {
	fd, err := unix.MemfdCreate("not-a-dmabuf", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// TestDefaultAutorelease: the kernel's default token mode comes from
// bind-rx's policy. Without NETDEV_A_DMABUF_AUTORELEASE (upstream, 6.18
// included) it is 1, per-socket tokens freed on close; with the series'
// u8 attribute it is the series' default, 0; without bind-rx it is 1.
func TestDefaultAutorelease(t *testing.T) {
	for _, tc := range []struct {
		name   string
		setup  func(k *netdevtest.Kernel)
		on     bool
		series bool
	}{
		{"6.18", nil, true, false},
		{"autorelease series", func(k *netdevtest.Kernel) { k.AutoreleaseSeries = true }, false, true},
		{"no bind-rx", func(k *netdevtest.Kernel) { k.NoBindRX = true }, true, false},
	} {
		k := netdevtest.New()
		if tc.setup != nil {
			tc.setup(k)
		}
		c := dial(t, k)
		d := netdev.DefaultAutorelease(c)
		if d.On != tc.on || d.Series != tc.series || d.Reason == "" {
			t.Errorf("%s: %+v; want on %v series %v", tc.name, d, tc.on, tc.series)
		}
		if !tc.series && tc.name != "no bind-rx" {
			p, err := c.BindRXPolicy()
			if err != nil || len(p) != 3 || p[netdev.AttrDmabufFD] != unix.NL_ATTR_TYPE_U32 {
				t.Errorf("%s: bind-rx policy %v, %v", tc.name, p, err)
			}
		}
	}
}

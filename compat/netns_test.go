package compat_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat"
	"github.com/xdevmem/xdevmem/compat/ethnl"
	"github.com/xdevmem/xdevmem/compat/netdev"
	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
	"github.com/xdevmem/xdevmem/internal/netns"
	"github.com/xdevmem/xdevmem/internal/testutil"
)

// These tests ask the real kernel, in namespaces of their own joined by a
// veth pair (internal/netns; removed in t.Cleanup, and by the watchdog
// before it panics on a hang). They need root; with CI set they fail
// rather than skip. Their bodies run inside NS.Do: the test goroutine
// locked to an OS thread switched into the namespace, switched back after.

const watchdog = 60 * time.Second

// emuVeth makes a veth pair and returns the emu namespace and the name and
// index of the veth end inside it.
func emuVeth(t *testing.T) (*netns.NS, string, int) {
	t.Helper()
	testutil.Watchdog(t, watchdog)
	p := testutil.NewPair(t, netns.Options{})
	return p.Emu, p.EmuIf, p.EmuIndex
}

// in runs fn inside ns on the test goroutine (t.Fatal is fine in fn).
func in(t *testing.T, ns *netns.NS, fn func()) {
	t.Helper()
	if err := ns.Do(func() error { fn(); return nil }); err != nil {
		t.Fatal(err)
	}
}

// memfd is an open file that is no dmabuf: the closest this machine has
// (no /dev/udmabuf, no dma-heap, no GPU).
func memfd(t *testing.T) int {
	t.Helper()
	fd, err := unix.MemfdCreate("not-a-dmabuf", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	unix.Ftruncate(fd, 1<<20)
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// TestNetnsNetdev proves the netdev client against Linux itself: the
// family resolves with bind-rx and bind-tx, dev-get and queue-get answer
// for the veth, and the kernel refuses bind-rx and bind-tx the way the
// table says, extended-ack text included.
func TestNetnsNetdev(t *testing.T) {
	ns, name, ifindex := emuVeth(t)
	in(t, ns, func() {
		c, err := netdev.Dial(nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		f := c.Family()
		t.Logf("netdev family: %+v", f)
		if f.Name != "netdev" || f.Version != 1 || !f.HasOp(netdev.CmdBindRX) || !f.HasOp(netdev.CmdBindTX) || !f.HasOp(netdev.CmdQueueGet) {
			t.Errorf("family %+v", f)
		}

		d, err := c.DevGet(ifindex)
		if err != nil {
			t.Fatal(err)
		}
		if d.Ifindex != ifindex || d.XDPFeatures&netdev.XDPActBasic == 0 {
			t.Errorf("dev-get %s: %+v", name, d)
		}
		qs, err := c.QueueGet(ifindex)
		if err != nil {
			t.Fatal(err)
		}
		var rx, tx int
		for _, q := range qs {
			if q.Ifindex != ifindex || q.Dmabuf != 0 || q.XSK {
				t.Errorf("queue %+v", q)
			}
			if q.Type == netdev.QueueTypeRX {
				rx++
			} else {
				tx++
			}
		}
		if rx != 1 || tx != 1 {
			t.Errorf("queue-get %s: %+v", name, qs)
		}
		if _, err := c.QueueGet(1 << 20); !errors.Is(err, unix.ENODEV) {
			t.Errorf("queue-get of a missing device: %v", err)
		}

		mfd := memfd(t)
		on := true
		for _, tt := range []struct {
			name string
			req  netdev.BindRXRequest
			want devmemerr.Case
			text string
		}{
			// The driver check comes before the fd: veth is refused whatever
			// the fd, so neither EBADF nor EINVAL (not a dmabuf) is reached.
			{"veth, invalid fd", netdev.BindRXRequest{Ifindex: ifindex, FD: 1 << 30, Queues: netdev.RXQueues(0)}, devmemerr.BindRXNoQueueOps, ""},
			{"veth, memfd", netdev.BindRXRequest{Ifindex: ifindex, FD: mfd, Queues: netdev.RXQueues(0)}, devmemerr.BindRXNoQueueOps, ""},
			// ... and before the queues are parsed (6.18).
			{"veth, tx queue", netdev.BindRXRequest{Ifindex: ifindex, FD: mfd, Queues: []netdev.QueueRef{{ID: 0, Type: netdev.QueueTypeTX}}}, devmemerr.BindRXNoQueueOps, ""},
			{"veth, queue 55", netdev.BindRXRequest{Ifindex: ifindex, FD: mfd, Queues: netdev.RXQueues(55)}, devmemerr.BindRXNoQueueOps, ""},
			{"no fd", netdev.BindRXRequest{Ifindex: ifindex, FD: -1, Queues: netdev.RXQueues(0)}, devmemerr.BindRXMissingAttr, ""},
			{"no queues", netdev.BindRXRequest{Ifindex: ifindex, FD: mfd}, devmemerr.BindRXMissingAttr, ""},
			{"no device", netdev.BindRXRequest{Ifindex: 1 << 20, FD: mfd, Queues: netdev.RXQueues(0)}, devmemerr.BindRXNoDevice, ""},
			// Linux 6.18 has no autorelease attribute: policy validation
			// refuses it first.
			{"autorelease attribute", netdev.BindRXRequest{Ifindex: ifindex, FD: mfd, Queues: netdev.RXQueues(0), Autorelease: &on}, devmemerr.BindRXMissingAttr, "Unknown attribute type"},
		} {
			_, err := c.BindRX(tt.req)
			var de *devmemerr.Error
			if !errors.Is(err, tt.want.Errno) || !errors.As(err, &de) || de.Message != tt.text {
				t.Errorf("%s: %v (%#v), want %s %q", tt.name, err, err, devmemerr.ErrnoName(tt.want.Errno), tt.text)
				continue
			}
			if tt.text == "" && !devmemerr.Match(err, tt.want) {
				t.Errorf("%s: %v is not %s", tt.name, err, tt.want.Name)
			}
			t.Logf("%s: %v", tt.name, err)
		}

		_, err = c.BindTX(ifindex, mfd)
		if !devmemerr.Match(err, devmemerr.BindTXNoNetmemTX) || err.Error() != "bind-tx: Driver does not support netmem TX: operation not supported" {
			t.Errorf("bind-tx on veth: %v", err)
		}
		if _, err := c.BindTX(1<<20, mfd); !devmemerr.Match(err, devmemerr.BindTXNoDevice) {
			t.Errorf("bind-tx, no device: %v", err)
		}
		if _, err := c.BindTX(ifindex, -1); !devmemerr.Match(err, devmemerr.BindTXMissingAttr) {
			t.Errorf("bind-tx, no fd: %v", err)
		}
		if qs, _ := c.QueueGet(ifindex); len(qs) != 2 || qs[0].Dmabuf != 0 {
			t.Errorf("a refused bind changed the queues: %+v", qs)
		}
	})
}

// TestNetnsEthtool proves rings-get and features-get against the kernel:
// veth has no ring parameters (EOPNOTSUPP) and ntuple is off [fixed].
func TestNetnsEthtool(t *testing.T) {
	ns, _, ifindex := emuVeth(t)
	in(t, ns, func() {
		c, err := ethnl.Dial(nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Rings(ifindex); !errors.Is(err, unix.EOPNOTSUPP) {
			t.Errorf("rings-get on veth: %v", err)
		}
		f, err := c.Features(ifindex)
		if err != nil {
			t.Fatal(err)
		}
		if f.Hardware[ethnl.NtupleFeature] || f.Active[ethnl.NtupleFeature] || len(f.Active) == 0 || !f.Active["rx-checksum"] {
			t.Errorf("features: hw %v active %v", f.Hardware, f.Active)
		}
		if _, err := c.Rings(1 << 20); !errors.Is(err, unix.ENODEV) {
			t.Errorf("rings-get of a missing device: %v", err)
		}
	})
}

// TestNetnsProbeVeth proves the probe on a real veth: it fails, first at
// queue management with the kernel's EOPNOTSUPP, and says so.
func TestNetnsProbeVeth(t *testing.T) {
	ns, name, ifindex := emuVeth(t)
	in(t, ns, func() {
		r, err := compat.Probe(name)
		if err != nil {
			t.Fatal(err)
		}
		var table bytes.Buffer
		r.WriteTable(&table)
		t.Logf("\n%s", table.String())
		if r.Supported() || r.Ifindex != ifindex || r.Driver != "veth" {
			t.Fatalf("result %+v", r)
		}
		want := "queue-management: driver lacks queue management ops (bind-rx EOPNOTSUPP)"
		if r.Reason() != want {
			t.Errorf("Reason() = %q, want %q", r.Reason(), want)
		}
		err = r.Err()
		if !errors.Is(err, unix.EOPNOTSUPP) || !errors.Is(err, devmemapi.ErrNotSupported) {
			t.Errorf("Err() = %v", err)
		}
		st := statuses(r)
		for check, want := range map[string]compat.Status{
			compat.CheckNetdevFamily: compat.StatusPass, compat.CheckDevice: compat.StatusPass,
			compat.CheckRXQueues: compat.StatusPass, compat.CheckQueueMgmt: compat.StatusFail,
			compat.CheckHeaderSplit: compat.StatusFail, compat.CheckNtuple: compat.StatusFail,
		} {
			if st[check] != want {
				t.Errorf("%s = %s, want %s", check, st[check], want)
			}
		}
		if dm, _ := r.Check(compat.CheckDmabuf); dm.Status != compat.StatusFail && dm.Status != compat.StatusPass {
			t.Errorf("dmabuf-source = %+v", dm)
		}
	})
}

// TestNetnsProbeLoopback proves the probe on lo fails with a clear reason:
// down, the kernel lists no queues; up, the driver lacks queue management.
func TestNetnsProbeLoopback(t *testing.T) {
	testutil.Watchdog(t, watchdog)
	testutil.RequirePrivileged(t)
	testutil.RequireTools(t, "ip")
	ns, err := netns.NewNS(fmt.Sprintf("%s-lo-%d-%d", testutil.Prefix, os.Getpid(), time.Now().UnixNano()%1e9))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Close(); err != nil {
			t.Error(err)
		}
	})
	in(t, ns, func() {
		r, err := compat.Probe("lo")
		if err != nil {
			t.Fatal(err)
		}
		if r.Supported() || !strings.HasPrefix(r.Reason(), "rx-queues: the kernel lists no RX queue") {
			t.Errorf("lo down: %q", r.Reason())
		}
		if c, _ := r.Check(compat.CheckRXQueues); c.Hint != "ip link set lo up" {
			t.Errorf("hint %q", c.Hint)
		}
		if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
			t.Fatalf("ip link set lo up: %v: %s", err, out)
		}
		r, err = compat.Probe("lo")
		if err != nil {
			t.Fatal(err)
		}
		var table bytes.Buffer
		r.WriteTable(&table)
		t.Logf("\n%s", table.String())
		if r.Supported() || r.Reason() != "queue-management: driver lacks queue management ops (bind-rx EOPNOTSUPP); the emulated backend cannot run on lo either (not an Ethernet device)" {
			t.Errorf("lo up: %q", r.Reason())
		}
		// The emulation refuses lo: nothing may suggest it.
		if strings.Contains(table.String(), "or the emulated backend") || r.Emulation == nil || r.Emulation.Possible {
			t.Errorf("lo up: the probe suggests the emulation (emulation %+v)", r.Emulation)
		}
		r, err = compat.Probe("xdnone0")
		if err != nil {
			t.Fatal(err)
		}
		if r.Supported() || !strings.HasPrefix(r.Reason(), "device: no interface xdnone0") {
			t.Errorf("missing interface: %q", r.Reason())
		}
	})
}

// TestNetnsOpen proves the choice on a real veth: auto picks the
// emulation with the probe's reason; a forced kernel backend fails with
// an error matching EOPNOTSUPP and devmemapi.ErrNotSupported.
func TestNetnsOpen(t *testing.T) {
	ns, name, _ := emuVeth(t)
	in(t, ns, func() {
		var calls int
		p, ch, err := compat.Open(compat.Options{Backend: compat.BackendAuto, Ifname: name, Emulated: emulated(&calls)})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		t.Logf("choice: %+v", *ch)
		if p.Name() != "emulated" || ch.Backend != compat.BackendEmulated || calls != 1 ||
			!strings.Contains(ch.Reason, "queue-management: driver lacks queue management ops") {
			t.Errorf("auto on veth: %s, %+v", p.Name(), ch)
		}
		_, _, err = compat.Open(compat.Options{Backend: compat.BackendKernel, Ifname: name, Emulated: emulated(&calls)})
		if !errors.Is(err, unix.EOPNOTSUPP) || !errors.Is(err, devmemapi.ErrNotSupported) || calls != 1 {
			t.Errorf("forced kernel on veth: %v", err)
		}
		t.Logf("forced kernel: %v", err)
	})
}

// TestNetnsKernelProvider proves the kernel backend's BindRX on a veth:
// the kernel refuses it (EOPNOTSUPP) even with an fd, nothing stays bound
// and no fd leaks; without /dev/udmabuf a dmabuf cannot be made.
func TestNetnsKernelProvider(t *testing.T) {
	testutil.CheckFDs(t)
	ns, name, ifindex := emuVeth(t)
	in(t, ns, func() {
		p, err := compat.NewKernelProvider(compat.KernelOptions{Ifname: name})
		if err != nil {
			t.Fatal(err)
		}
		mfd := memfd(t)
		_, err = p.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}, DmabufFD: mfd})
		if !devmemerr.Match(err, devmemerr.BindRXNoQueueOps) || !strings.HasPrefix(err.Error(), "bind rx "+name+" queues [0]: bind-rx: ") {
			t.Errorf("BindRX on veth: %v", err)
		}
		_, err = p.BindRX(devmemapi.BindRXConfig{Ifindex: ifindex, Queues: []uint32{0}})
		if errors.Is(err, devmemapi.ErrNotSupported) {
			t.Logf("no dmabuf source: %v", err)
		} else if !devmemerr.Match(err, devmemerr.BindRXNoQueueOps) {
			t.Errorf("BindRX with a udmabuf on veth: %v", err)
		}
		p.Close()
		c, err := netdev.Dial(nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if qs, err := c.QueueGet(ifindex); err != nil || len(qs) == 0 || qs[0].Dmabuf != 0 {
			t.Errorf("queues after refused binds: %+v, %v", qs, err)
		}
	})
}

// TestNetnsKernelProviderTX proves the kernel backend's devmem TX against
// Linux on a veth: bind-tx through the provider reaches the kernel, which
// refuses it (EOPNOTSUPP, "Driver does not support netmem TX"), nothing
// stays bound and no fd leaks; Dial connects a kernel TCP socket across
// the pair whose devmem sendmsg gets the kernel's own errors.
func TestNetnsKernelProviderTX(t *testing.T) {
	testutil.CheckFDs(t)
	testutil.Watchdog(t, watchdog)
	p := testutil.NewPair(t, netns.Options{SharedAddr: true}) // the kernel's socket needs the address
	in(t, p.Emu, func() {
		kp, err := compat.NewKernelProvider(compat.KernelOptions{Ifname: p.EmuIf})
		if err != nil {
			t.Fatal(err)
		}
		defer kp.Close()
		_, err = kp.BindTX(devmemapi.BindTXConfig{DmabufFD: memfd(t)})
		if !devmemerr.Match(err, devmemerr.BindTXNoNetmemTX) || !errors.Is(err, unix.EOPNOTSUPP) ||
			!strings.HasSuffix(err.Error(), "bind-tx: Driver does not support netmem TX: operation not supported") {
			t.Errorf("BindTX on veth: %v", err)
		}
	})
	var ln net.Listener
	in(t, p.Peer, func() {
		var err error
		if ln, err = net.Listen("tcp", netip.AddrPortFrom(p.PeerAddr.Addr(), 0).String()); err != nil {
			t.Fatal(err)
		}
	})
	defer ln.Close()
	in(t, p.Emu, func() {
		kp, err := compat.NewKernelProvider(compat.KernelOptions{Ifname: p.EmuIf})
		if err != nil {
			t.Fatal(err)
		}
		defer kp.Close()
		c, err := kp.Dial(context.Background(), netip.MustParseAddrPort(ln.Addr().String()))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.SetZeroCopy(true); err != nil {
			t.Fatal(err)
		}
		// No TX binding can exist on this kernel's veth: the id is
		// unknown to net_devmem_get_binding.
		_, err = devmemapi.SendDmabuf(c, 12345, []devmemapi.Iovec{{Base: 0, Len: 100}}, 0)
		if !devmemerr.Match(err, devmemerr.SendMsgUnknownBinding) {
			t.Errorf("send with an unknown dmabuf id over the veth: %v", err)
		}
	})
}

// TestNetnsDefaultAutorelease reads the running kernel's bind-rx policy:
// the default token mode follows whether bind-rx takes
// NETDEV_A_DMABUF_AUTORELEASE (Linux 6.18 does not: autorelease on).
func TestNetnsDefaultAutorelease(t *testing.T) {
	c, err := netdev.Dial(nil)
	if err != nil {
		t.Skipf("no netdev family: %v", err)
	}
	defer c.Close()
	has, err := c.HasAutoreleaseAttr()
	if err != nil {
		t.Fatal(err)
	}
	d := netdev.HostAutorelease()
	if d.On == has || d.Series != has {
		t.Fatalf("attribute present %v, default %+v", has, d)
	}
	t.Logf("this kernel: %v", d)
}

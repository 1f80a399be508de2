package compat_test

import (
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat"
	"github.com/xdevmem/xdevmem/compat/netdevtest"
	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
	"github.com/xdevmem/xdevmem/internal/testutil"
)

// fakeEmulated stands in for package stack's provider.
type fakeEmulated struct{ closed bool }

func (f *fakeEmulated) Name() string { return "emulated" }
func (f *fakeEmulated) BindRX(devmemapi.BindRXConfig) (devmemapi.Binding, error) {
	return nil, devmemapi.ErrNotSupported
}
func (f *fakeEmulated) Listen(netip.AddrPort) (devmemapi.Listener, error) {
	return nil, devmemapi.ErrNotSupported
}
func (f *fakeEmulated) Close() error { f.closed = true; return nil }

func emulated(calls *int) func() (devmemapi.Provider, error) {
	return func() (devmemapi.Provider, error) {
		*calls++
		return &fakeEmulated{}, nil
	}
}

// TestOpenAuto proves auto picks the kernel where the probe passes and
// the emulation otherwise, with a reason naming the failing check.
func TestOpenAuto(t *testing.T) {
	k := netdevtest.New()
	k.AddDevice(devmemNIC())
	k.AddDevice(vethLike())
	env := fakeEnv(t, k, false)
	var calls int

	p, ch, err := compat.Open(compat.Options{Ifname: "eth0", Emulated: emulated(&calls), Env: env})
	if err != nil {
		t.Fatal(err)
	}
	if p.Name() != "kernel" || ch.Backend != compat.BackendKernel || calls != 0 || ch.Probe == nil || !ch.Probe.Supported() {
		t.Errorf("eth0: %s, %+v, emulated calls %d", p.Name(), ch, calls)
	}
	p.Close()

	p, ch, err = compat.Open(compat.Options{Backend: compat.BackendAuto, Ifname: "veth0", Emulated: emulated(&calls), Env: env})
	if err != nil {
		t.Fatal(err)
	}
	if p.Name() != "emulated" || ch.Backend != compat.BackendEmulated || calls != 1 {
		t.Errorf("veth0: %s, %+v", p.Name(), ch)
	}
	want := "kernel devmem unavailable on veth0 (queue-management: driver lacks queue management ops (bind-rx EOPNOTSUPP)); using the emulation"
	if ch.Reason != want {
		t.Errorf("reason %q\nwant   %q", ch.Reason, want)
	}

	p, ch, err = compat.Open(compat.Options{Emulated: emulated(&calls), Env: env})
	if err != nil || p.Name() != "emulated" || !strings.Contains(ch.Reason, "no interface") {
		t.Errorf("no ifname: %v, %+v", err, ch)
	}

	// Auto without an emulation to fall back on says both.
	_, ch, err = compat.Open(compat.Options{Ifname: "veth0", Env: env})
	if !errors.Is(err, devmemapi.ErrNotSupported) || !errors.Is(err, unix.EOPNOTSUPP) || ch == nil {
		t.Errorf("auto, no emulation: %v", err)
	}
	if n := k.OpenSockets(); n != 0 {
		t.Errorf("%d netlink sockets left open", n)
	}
}

// TestOpenForced proves a forced backend is honoured, and that a forced
// kernel backend on an unsupported interface fails with the probe's
// reason, matching the kernel's errno and devmemapi.ErrNotSupported.
func TestOpenForced(t *testing.T) {
	k := netdevtest.New()
	k.AddDevice(devmemNIC())
	k.AddDevice(vethLike())
	env := fakeEnv(t, k, false)
	var calls int

	_, ch, err := compat.Open(compat.Options{Backend: compat.BackendKernel, Ifname: "veth0", Emulated: emulated(&calls), Env: env})
	if !errors.Is(err, unix.EOPNOTSUPP) || !errors.Is(err, devmemapi.ErrNotSupported) {
		t.Fatalf("forced kernel on veth: %v", err)
	}
	if !strings.Contains(err.Error(), "queue-management: driver lacks queue management ops") || calls != 0 {
		t.Errorf("error text %q, emulated calls %d", err, calls)
	}
	if ch == nil || ch.Backend != compat.BackendKernel || ch.Probe == nil || ch.Probe.Supported() {
		t.Errorf("choice %+v", ch)
	}

	p, ch, err := compat.Open(compat.Options{Backend: compat.BackendKernel, Ifname: "eth0", Env: env})
	if err != nil || p.Name() != "kernel" || ch.Backend != compat.BackendKernel {
		t.Fatalf("forced kernel on eth0: %v, %+v", err, ch)
	}
	p.Close()

	p, ch, err = compat.Open(compat.Options{Backend: compat.BackendEmulated, Ifname: "eth0", Emulated: emulated(&calls), Env: env})
	if err != nil || p.Name() != "emulated" || ch.Probe != nil || calls != 1 {
		t.Errorf("forced emulated: %v, %+v", err, ch)
	}
	if _, _, err := compat.Open(compat.Options{Backend: compat.BackendEmulated}); !errors.Is(err, devmemapi.ErrNotSupported) {
		t.Errorf("emulated not wired: %v", err)
	}
	if _, _, err := compat.Open(compat.Options{Backend: compat.BackendKernel, Env: env}); !errors.Is(err, unix.EINVAL) {
		t.Errorf("kernel without ifname: %v", err)
	}
	if _, _, err := compat.Open(compat.Options{Backend: "gpu"}); !errors.Is(err, unix.EINVAL) {
		t.Errorf("unknown backend: %v", err)
	}
	boom := errors.New("boom")
	_, _, err = compat.Open(compat.Options{Backend: compat.BackendEmulated,
		Emulated: func() (devmemapi.Provider, error) { return nil, boom }})
	if !errors.Is(err, boom) {
		t.Errorf("emulated constructor error lost: %v", err)
	}
}

// TestKernelProviderFake proves BindRX over the fake kernel: the request
// names the dmabuf (a dup of the caller's fd), the binding lives until
// Close, refusals keep their devmemerr case, a missing udmabuf device is
// ErrNotSupported, and Provider.Close unbinds what is left.
func TestKernelProviderFake(t *testing.T) {
	testutil.CheckFDs(t)
	k := netdevtest.New()
	k.AddDevice(devmemNIC())
	env := fakeEnv(t, k, false)
	env.UdmabufPath = filepath.Join(t.TempDir(), "udmabuf")
	p, err := compat.NewKernelProvider(compat.KernelOptions{Ifname: "eth0", Env: env})
	if err != nil {
		t.Fatal(err)
	}
	fd, err := k.NewDmabuf(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)

	b, err := p.BindRX(devmemapi.BindRXConfig{Queues: []uint32{1, 2}, DmabufFD: fd})
	if err != nil {
		t.Fatal(err)
	}
	bs := k.Bindings()
	if len(bs) != 1 || bs[0].ID != b.ID() || bs[0].Ifindex != 7 || bs[0].FD == fd || len(bs[0].Queues) != 2 {
		t.Errorf("bindings %+v (caller fd %d)", bs, fd)
	}
	if b.Size() != 1<<20 {
		t.Errorf("size %d", b.Size())
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if bs := k.Bindings(); len(bs) != 0 {
		t.Errorf("after Close: %+v", bs)
	}

	_, err = p.BindRX(devmemapi.BindRXConfig{Queues: []uint32{9}, DmabufFD: fd})
	if !errors.Is(err, unix.EINVAL) || !devmemerr.Match(err, devmemerr.BindRXQueueRange) || !strings.HasPrefix(err.Error(), "bind rx eth0 queues [9]: bind-rx: ") {
		t.Errorf("queue 9: %v", err)
	}
	_, err = p.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}})
	if !errors.Is(err, devmemapi.ErrNotSupported) || !errors.Is(err, compat.ErrNoUdmabuf) {
		t.Errorf("no udmabuf: %v", err)
	}

	b1, err := p.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}, DmabufFD: fd})
	if err != nil {
		t.Fatal(err)
	}
	l, err := p.Listen(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if bs := k.Bindings(); len(bs) != 0 {
		t.Errorf("Provider.Close left %+v", bs)
	}
	if _, err := l.Accept(); !errors.Is(err, devmemapi.ErrClosed) {
		t.Errorf("Accept after Provider.Close: %v", err)
	}
	if err := b1.Close(); err != nil {
		t.Errorf("Binding.Close after Provider.Close: %v", err)
	}
	if _, err := p.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}, DmabufFD: fd}); !errors.Is(err, devmemapi.ErrClosed) {
		t.Errorf("BindRX after Close: %v", err)
	}
	if n := k.OpenSockets(); n != 0 {
		t.Errorf("%d netlink sockets left open", n)
	}
}

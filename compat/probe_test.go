package compat_test

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat"
	"github.com/xdevmem/xdevmem/compat/ethnl"
	"github.com/xdevmem/xdevmem/compat/netdev"
	"github.com/xdevmem/xdevmem/compat/netdevtest"
	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
)

// devmemNIC is a fake NIC ready for devmem.
func devmemNIC() netdevtest.Device {
	return netdevtest.Device{
		Ifindex: 7, Name: "eth0", Driver: "bnxt_en", RXQueues: 4, TXQueues: 4,
		XDPFeatures: netdev.XDPActBasic, QueueMgmt: true, NetmemTX: true,
		TCPDataSplit: ethnl.TCPDataSplitEnabled, HDSThreshMax: 1024,
		HWFeatures: []string{ethnl.NtupleFeature}, Features: []string{ethnl.NtupleFeature},
	}
}

// vethLike is a fake device shaped like veth on Linux 6.18.
func vethLike() netdevtest.Device {
	return netdevtest.Device{Ifindex: 3, Name: "veth0", Driver: "veth", RXQueues: 1, TXQueues: 1,
		XDPFeatures: netdev.XDPActBasic | netdev.XDPActRedirect | netdev.XDPActRXSG, NoRings: true}
}

// fakeEnv is an Env over k with a udmabuf device that exists (a regular
// file) unless noUdmabuf, and a kernel config that says
// CONFIG_NET_DEVMEM=y.
func fakeEnv(t *testing.T, k *netdevtest.Kernel, noUdmabuf bool) compat.Env {
	t.Helper()
	dir := t.TempDir()
	udmabuf := filepath.Join(dir, "udmabuf")
	if !noUdmabuf {
		if err := os.WriteFile(udmabuf, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return compat.Env{
		Dial:             k.Dial,
		Interface:        k.LookupInterface,
		Ethernet:         k.Ethernet,
		UdmabufPath:      udmabuf,
		KernelConfigPath: writeConfig(t, dir, "CONFIG_NET_DEVMEM=y"),
	}
}

func writeConfig(t *testing.T, dir, line string) string {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write([]byte("CONFIG_NET=y\n" + line + "\n"))
	zw.Close()
	p := filepath.Join(dir, "config.gz")
	if err := os.WriteFile(p, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func statuses(r *compat.ProbeResult) map[string]compat.Status {
	m := map[string]compat.Status{}
	for _, c := range r.Checks {
		m[c.Name] = c.Status
	}
	return m
}

// TestProbeSupported proves a ready NIC passes every check, and that the
// probe's bind-rx bound nothing.
func TestProbeSupported(t *testing.T) {
	k := netdevtest.New()
	k.AddDevice(devmemNIC())
	r, err := fakeEnv(t, k, false).Probe("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if !r.Supported() || r.Err() != nil {
		var b bytes.Buffer
		r.WriteTable(&b)
		t.Fatalf("not supported:\n%s", b.String())
	}
	want := []string{compat.CheckNetdevFamily, compat.CheckDevice, compat.CheckRXQueues, compat.CheckQueueMgmt,
		compat.CheckHeaderSplit, compat.CheckHDSThresh, compat.CheckNtuple, compat.CheckDmabuf}
	for i, c := range r.Checks {
		if i >= len(want) || c.Name != want[i] || c.Status != compat.StatusPass {
			t.Errorf("check %d = %+v, want %s pass", i, c, want[i])
		}
	}
	if r.Ifindex != 7 || r.Driver != "bnxt_en" || !strings.Contains(r.Reason(), "every check passed") {
		t.Errorf("result %+v, reason %q", r, r.Reason())
	}
	if bs := k.Bindings(); len(bs) != 0 {
		t.Errorf("the probe left bindings %+v", bs)
	}
	if n := k.OpenSockets(); n != 0 {
		t.Errorf("the probe left %d netlink sockets open", n)
	}
}

// TestProbeFailures proves each requirement fails its own check with a
// reason and a hint a person can act on, and that Err matches the errno
// the kernel would return and devmemapi.ErrNotSupported.
func TestProbeFailures(t *testing.T) {
	for _, tt := range []struct {
		name       string
		dev        func(*netdevtest.Device)
		kern       func(*netdevtest.Kernel)
		env        func(*compat.Env)
		ifname     string
		check      string
		reason     string
		hint       string
		errno      error
		alsoFailed []string
	}{
		{name: "veth-like driver", dev: func(d *netdevtest.Device) { *d = vethLike(); d.Name = "eth0" },
			check: compat.CheckQueueMgmt, reason: "driver lacks queue management ops (bind-rx EOPNOTSUPP)",
			hint: "queue management", errno: unix.EOPNOTSUPP,
			alsoFailed: []string{compat.CheckHeaderSplit, compat.CheckNtuple}},
		{name: "no device", ifname: "eth9", check: compat.CheckDevice, reason: "no interface eth9", hint: "ip link", errno: unix.ENODEV},
		{name: "no netdev family", kern: func(k *netdevtest.Kernel) { k.NoNetdev = true },
			check: compat.CheckNetdevFamily, reason: "no netdev generic netlink family", hint: "6.12", errno: unix.ENOENT},
		{name: "kernel before devmem", kern: func(k *netdevtest.Kernel) { k.NoBindRX = true },
			check: compat.CheckNetdevFamily, reason: "no bind-rx op", hint: "6.12"},
		{name: "no CONFIG_NET_DEVMEM", env: func(e *compat.Env) {
			e.KernelConfigPath = writeConfig(t, t.TempDir(), "# CONFIG_NET_DEVMEM is not set")
		}, check: compat.CheckNetdevFamily, reason: "CONFIG_NET_DEVMEM is not set", hint: "CONFIG_NET_DEVMEM=y"},
		{name: "unprivileged", kern: func(k *netdevtest.Kernel) { k.Unprivileged = true },
			check: compat.CheckQueueMgmt, reason: "lacks CAP_NET_ADMIN", hint: "root", errno: unix.EPERM},
		{name: "device down", dev: func(d *netdevtest.Device) { d.Down = true },
			check: compat.CheckRXQueues, reason: "no RX queue", hint: "ip link set eth0 up", errno: unix.ENODEV},
		{name: "header split off", dev: func(d *netdevtest.Device) { d.TCPDataSplit = ethnl.TCPDataSplitDisabled },
			check: compat.CheckHeaderSplit, reason: "off", hint: "ethtool -G eth0 tcp-data-split on", errno: unix.EINVAL},
		{name: "header split unknown", dev: func(d *netdevtest.Device) { d.TCPDataSplit = ethnl.TCPDataSplitUnknown },
			check: compat.CheckHeaderSplit, reason: "does not report tcp-data-split", hint: "splits headers", errno: unix.EINVAL},
		{name: "no ring parameters", dev: func(d *netdevtest.Device) { d.NoRings = true },
			check: compat.CheckHeaderSplit, reason: "no ring parameters", hint: "tcp-data-split on", errno: unix.EOPNOTSUPP},
		{name: "hds-thresh", dev: func(d *netdevtest.Device) { d.HDSThresh = 128 },
			check: compat.CheckHDSThresh, reason: "128 (must be 0)", hint: "ethtool -G eth0 hds-thresh 0", errno: unix.EINVAL},
		{name: "ntuple off", dev: func(d *netdevtest.Device) { d.Features = nil },
			check: compat.CheckNtuple, reason: "off", hint: "ethtool -K eth0 ntuple on"},
		{name: "no ntuple filters", dev: func(d *netdevtest.Device) { d.Features, d.HWFeatures = nil, nil },
			check: compat.CheckNtuple, reason: "no ntuple filters", hint: "ntuple flow steering"},
		{name: "no udmabuf", env: func(e *compat.Env) { e.UdmabufPath = filepath.Join(t.TempDir(), "none") },
			check: compat.CheckDmabuf, reason: "CONFIG_UDMABUF", hint: "modprobe udmabuf", errno: unix.ENOENT},
	} {
		t.Run(tt.name, func(t *testing.T) {
			k := netdevtest.New()
			d := devmemNIC()
			if tt.dev != nil {
				tt.dev(&d)
			}
			k.AddDevice(d)
			if tt.kern != nil {
				tt.kern(k)
			}
			env := fakeEnv(t, k, false)
			if tt.env != nil {
				tt.env(&env)
			}
			ifname := tt.ifname
			if ifname == "" {
				ifname = "eth0"
			}
			r, err := env.Probe(ifname)
			if err != nil {
				t.Fatal(err)
			}
			var table bytes.Buffer
			if err := r.WriteTable(&table); err != nil {
				t.Fatal(err)
			}
			t.Logf("\n%s", table.String())
			if r.Supported() {
				t.Fatal("supported")
			}
			c, _ := r.Check(tt.check)
			if c.Status != compat.StatusFail || !strings.Contains(c.Detail, tt.reason) || !strings.Contains(c.Hint, tt.hint) {
				t.Errorf("check %s = %+v; want fail with %q, hint %q", tt.check, c, tt.reason, tt.hint)
			}
			if want := tt.check + ": "; !strings.HasPrefix(r.Reason(), want) || !strings.Contains(r.Reason(), tt.reason) {
				t.Errorf("Reason() = %q, want the %s check first", r.Reason(), tt.check)
			}
			err = r.Err()
			if !errors.Is(err, devmemapi.ErrNotSupported) {
				t.Errorf("Err() = %v, does not match ErrNotSupported", err)
			}
			if tt.errno != nil && !errors.Is(err, tt.errno) {
				t.Errorf("Err() = %v, does not match %v", err, tt.errno)
			}
			var ue *compat.UnsupportedError
			if !errors.As(err, &ue) || ue.Check != tt.check || ue.Hint != c.Hint {
				t.Errorf("Err() = %#v", err)
			}
			for _, name := range tt.alsoFailed {
				if c, _ := r.Check(name); c.Status != compat.StatusFail {
					t.Errorf("check %s = %s, want fail too", name, c.Status)
				}
			}
			if !strings.Contains(table.String(), "result: not supported — "+r.Reason()) || !strings.Contains(table.String(), "→ "+c.Hint) {
				t.Errorf("table lacks the verdict or the hint")
			}
			if n := k.OpenSockets(); n != 0 {
				t.Errorf("%d netlink sockets left open", n)
			}
		})
	}
}

// TestProbeVethShape pins what the probe concludes from the kernel's
// answers for a veth-like device, check by check.
func TestProbeVethShape(t *testing.T) {
	k := netdevtest.New()
	k.AddDevice(vethLike())
	r, err := fakeEnv(t, k, true).Probe("veth0")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]compat.Status{
		compat.CheckNetdevFamily: compat.StatusPass,
		compat.CheckDevice:       compat.StatusPass,
		compat.CheckRXQueues:     compat.StatusPass,
		compat.CheckQueueMgmt:    compat.StatusFail,
		compat.CheckHeaderSplit:  compat.StatusFail,
		compat.CheckHDSThresh:    compat.StatusSkip,
		compat.CheckNtuple:       compat.StatusFail,
		compat.CheckDmabuf:       compat.StatusFail,
	}
	got := statuses(r)
	for name, s := range want {
		if got[name] != s {
			t.Errorf("%s = %s, want %s", name, got[name], s)
		}
	}
	c, _ := r.Check(compat.CheckQueueMgmt)
	if c.Errno != "EOPNOTSUPP" || !devmemerr.Match(c.Err, devmemerr.BindRXNoQueueOps) {
		t.Errorf("queue-management %+v", c)
	}
	if d, _ := r.Check(compat.CheckDevice); d.Detail != "ifindex 3, driver veth, xdp basic,redirect,rx-sg" {
		t.Errorf("device detail %q", d.Detail)
	}
	if q, _ := r.Check(compat.CheckRXQueues); q.Detail != "1 rx, 1 tx" {
		t.Errorf("queues detail %q", q.Detail)
	}
}

// TestProbeJSON proves the JSON form carries the verdict, the reason and
// every check with its fields, and reads back.
func TestProbeJSON(t *testing.T) {
	k := netdevtest.New()
	k.AddDevice(vethLike())
	env := fakeEnv(t, k, false)
	var out bytes.Buffer
	ok, err := env.RunProbe(&out, "veth0", true)
	if err != nil || ok {
		t.Fatalf("RunProbe = %v, %v", ok, err)
	}
	var got struct {
		Supported bool   `json:"supported"`
		Reason    string `json:"reason"`
		Ifname    string `json:"ifname"`
		Ifindex   int    `json:"ifindex"`
		Driver    string `json:"driver"`
		Checks    []struct {
			Name, Status, Detail, Hint, Errno string
		} `json:"checks"`
	}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if got.Supported || got.Ifname != "veth0" || got.Ifindex != 3 || got.Driver != "veth" ||
		got.Reason != "queue-management: driver lacks queue management ops (bind-rx EOPNOTSUPP)" || len(got.Checks) != 8 {
		t.Errorf("json %+v", got)
	}
	qm := got.Checks[3]
	if qm.Name != "queue-management" || qm.Status != "fail" || qm.Errno != "EOPNOTSUPP" || qm.Hint == "" {
		t.Errorf("queue-management %+v", qm)
	}
	var back compat.ProbeResult
	if err := json.Unmarshal(out.Bytes(), &back); err != nil || back.Reason() != got.Reason || len(back.Checks) != 8 {
		t.Errorf("read back: %v, %q", err, back.Reason())
	}

	out.Reset()
	ok, err = env.RunProbe(&out, "veth0", false)
	if err != nil || ok {
		t.Fatalf("RunProbe table = %v, %v", ok, err)
	}
	t.Logf("\n%s", out.String())
	lines := strings.Split(out.String(), "\n")
	if !strings.HasPrefix(lines[0], "xdevmem probe veth0 (ifindex 3, driver veth)") || !strings.HasPrefix(lines[1], "CHECK") {
		t.Errorf("table head %q", lines[:2])
	}
	// Aligned: every check row's status starts in the STATUS column.
	col := strings.Index(lines[1], "STATUS")
	for _, l := range lines[2:] {
		name, _, _ := strings.Cut(l, " ")
		if _, ok := got0(got.Checks, name); ok && l[col:col+4] != "pass" && l[col:col+4] != "fail" && l[col:col+4] != "skip" {
			t.Errorf("misaligned row %q", l)
		}
	}
	if _, err := env.Probe(""); !errors.Is(err, unix.EINVAL) {
		t.Errorf("empty name: %v", err)
	}
}

func got0(checks []struct{ Name, Status, Detail, Hint, Errno string }, name string) (int, bool) {
	for i, c := range checks {
		if c.Name == name {
			return i, true
		}
	}
	return 0, false
}

// TestProbeEmulationNote: the probe says whether the emulated backend could
// run instead; on a device without Ethernet framing (lo) the reason says it
// cannot either, no hint suggests it, and auto mode fails at once rather
// than trying it.
func TestProbeEmulationNote(t *testing.T) {
	k := netdevtest.New()
	k.AddDevice(vethLike())
	lo := vethLike()
	lo.Ifindex, lo.Name, lo.Driver, lo.NotEthernet = 1, "lo", "", true
	k.AddDevice(lo)
	env := fakeEnv(t, k, false)

	r, err := env.Probe("veth0")
	if err != nil {
		t.Fatal(err)
	}
	if r.Emulation == nil || !r.Emulation.Possible || strings.Contains(r.Reason(), "either") {
		t.Errorf("veth0: emulation %+v, reason %q", r.Emulation, r.Reason())
	}
	if c, _ := r.Check(compat.CheckQueueMgmt); !strings.Contains(c.Hint, "emulated backend") {
		t.Errorf("veth0: hint %q does not suggest the emulation", c.Hint)
	}

	r, err = env.Probe("lo")
	if err != nil {
		t.Fatal(err)
	}
	if r.Emulation == nil || r.Emulation.Possible || !strings.Contains(r.Emulation.Detail, "not an Ethernet device") {
		t.Fatalf("lo: emulation %+v", r.Emulation)
	}
	if !strings.Contains(r.Reason(), "the emulated backend cannot run on lo either") {
		t.Errorf("lo: reason %q", r.Reason())
	}
	var table, js bytes.Buffer
	r.WriteTable(&table)
	if strings.Contains(table.String(), "or the emulated backend") || !strings.Contains(table.String(), "emulation: not possible") {
		t.Errorf("lo: table suggests the emulation or does not rule it out:\n%s", table.String())
	}
	if err := json.NewEncoder(&js).Encode(r); err != nil {
		t.Fatal(err)
	}
	var back struct {
		Emulation struct{ Possible *bool }
	}
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || back.Emulation.Possible == nil || *back.Emulation.Possible {
		t.Errorf("lo: JSON emulation %s (%v)", js.String(), err)
	}

	var calls int
	_, ch, err := compat.Open(compat.Options{Ifname: "lo", Emulated: emulated(&calls), Env: env})
	if err == nil || calls != 0 || ch != nil || !errors.Is(err, devmemapi.ErrNotSupported) || !strings.Contains(err.Error(), "no backend can run on lo") {
		t.Errorf("Open(auto, lo) = choice %+v, %v; emulated constructor called %d times", ch, err, calls)
	}
}

// TestProbeTokenMode: the probe says which token release mode a bind-rx
// without the attribute gets and why (from bind-rx's policy): 1 on an
// upstream kernel, the series' 0 on a kernel with the autorelease series.
func TestProbeTokenMode(t *testing.T) {
	for _, series := range []bool{false, true} {
		k := netdevtest.New()
		k.AutoreleaseSeries = series
		k.AddDevice(devmemNIC())
		r, err := fakeEnv(t, k, false).Probe("eth0")
		if err != nil {
			t.Fatal(err)
		}
		if r.TokenMode.On == series || r.TokenMode.Series != series || r.TokenMode.Reason == "" {
			t.Errorf("series %v: token mode %+v", series, r.TokenMode)
		}
		var buf bytes.Buffer
		if err := r.WriteTable(&buf); err != nil {
			t.Fatal(err)
		}
		want := "token mode: autorelease=1 by default — this kernel's bind-rx has no NETDEV_A_DMABUF_AUTORELEASE"
		if series {
			want = "token mode: autorelease=0 by default — this kernel's bind-rx takes NETDEV_A_DMABUF_AUTORELEASE"
		}
		if !strings.Contains(buf.String(), want) {
			t.Errorf("series %v: table lacks %q:\n%s", series, want, buf.String())
		}
		js, _ := json.Marshal(r)
		if !bytes.Contains(js, []byte(`"token_mode":{"autorelease":`)) {
			t.Errorf("JSON lacks token_mode: %s", js)
		}
	}
}

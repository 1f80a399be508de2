package netns_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xdevmem/xdevmem/internal/netns"
	"github.com/xdevmem/xdevmem/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(testutil.CheckLeaks(m)) }

type ipLink struct {
	Index     int      `json:"ifindex"`
	Name      string   `json:"ifname"`
	Flags     []string `json:"flags"`
	MTU       int      `json:"mtu"`
	OperState string   `json:"operstate"`
	Address   string   `json:"address"`
	TxQueues  int      `json:"num_tx_queues"`
	RxQueues  int      `json:"num_rx_queues"`
	AddrInfo  []struct {
		Family    string `json:"family"`
		Local     string `json:"local"`
		PrefixLen int    `json:"prefixlen"`
	} `json:"addr_info"`
}

// showLink returns what "ip -d addr show" in ns says about one interface.
func showLink(t *testing.T, ns, ifname string) ipLink {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns, "-j", "-d", "addr", "show", "dev", ifname).Output()
	if err != nil {
		t.Fatalf("ip -n %s addr show %s: %v", ns, ifname, err)
	}
	var links []ipLink
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		t.Fatalf("parse ip addr show %s: %v: %s", ifname, err, out)
	}
	return links[0]
}

func nsExists(t *testing.T, name string) bool {
	t.Helper()
	names, err := netns.List()
	if err != nil {
		t.Fatal(err)
	}
	return slices.Contains(names, name)
}

// ethtoolFeature returns the state of one feature ("on", "off", ...) from
// ethtool -k run inside the pair's peer namespace.
func ethtoolFeature(t *testing.T, ns *netns.NS, ifname, feature string) string {
	t.Helper()
	out, err := ns.Command("ethtool", "-k", ifname).Output()
	if err != nil {
		t.Fatalf("ethtool -k %s: %v", ifname, err)
	}
	s := bufio.NewScanner(strings.NewReader(string(out)))
	for s.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(s.Text()), feature+":"); ok {
			return strings.Fields(v)[0]
		}
	}
	t.Fatalf("ethtool -k %s: no %q in\n%s", ifname, feature, out)
	return ""
}

func TestPairComesUp(t *testing.T) {
	testutil.Watchdog(t, time.Minute)
	opts := netns.Options{MTU: 3000, TxQueues: 2, RxQueues: 3}
	p := testutil.NewPair(t, opts)
	q := testutil.NewPair(t, netns.Options{})

	// Unique names, within the kernel's limits.
	if p.ID == q.ID || p.Peer.Name == q.Peer.Name || p.Emu.Name == q.Emu.Name || p.PeerIf == q.PeerIf {
		t.Errorf("two pairs share names: %+v and %+v", p, q)
	}
	if want := testutil.Prefix + "-" + p.ID + "-peer"; p.Peer.Name != want {
		t.Errorf("peer namespace %q, want %q", p.Peer.Name, want)
	}
	if want := testutil.Prefix + "-" + p.ID + "-emu"; p.Emu.Name != want {
		t.Errorf("emu namespace %q, want %q", p.Emu.Name, want)
	}
	for _, name := range []string{p.PeerIf, p.EmuIf} {
		if len(name) > 15 {
			t.Errorf("interface name %q longer than 15", name)
		}
	}
	for _, name := range []string{p.Peer.Name, p.Emu.Name} {
		if !nsExists(t, name) {
			t.Errorf("namespace %s not listed", name)
		}
	}

	peer := showLink(t, p.Peer.Name, p.PeerIf)
	emu := showLink(t, p.Emu.Name, p.EmuIf)
	for _, l := range []struct {
		link ipLink
		idx  int
		mac  net.HardwareAddr
	}{{peer, p.PeerIndex, p.PeerMAC}, {emu, p.EmuIndex, p.EmuMAC}} {
		if !slices.Contains(l.link.Flags, "UP") || !slices.Contains(l.link.Flags, "LOWER_UP") || l.link.OperState != "UP" {
			t.Errorf("%s not up: flags %v, operstate %s", l.link.Name, l.link.Flags, l.link.OperState)
		}
		if l.link.MTU != 3000 || p.MTU != 3000 {
			t.Errorf("%s mtu %d (pair says %d), want 3000", l.link.Name, l.link.MTU, p.MTU)
		}
		if l.link.TxQueues != 2 || l.link.RxQueues != 3 {
			t.Errorf("%s queues tx %d rx %d, want 2 and 3", l.link.Name, l.link.TxQueues, l.link.RxQueues)
		}
		if l.link.Index != l.idx || l.link.Address != l.mac.String() {
			t.Errorf("%s index %d mac %s, pair says %d %s", l.link.Name, l.link.Index, l.link.Address, l.idx, l.mac)
		}
	}

	// The peer has its address in the kernel; the emu end has no IPv4 one.
	var peerV4 []string
	for _, a := range peer.AddrInfo {
		if a.Family == "inet" {
			peerV4 = append(peerV4, fmt.Sprintf("%s/%d", a.Local, a.PrefixLen))
		}
	}
	if len(peerV4) != 1 || peerV4[0] != p.PeerAddr.String() {
		t.Errorf("peer IPv4 addresses %v, want [%v]", peerV4, p.PeerAddr)
	}
	for _, a := range emu.AddrInfo {
		if a.Family == "inet" {
			t.Errorf("emu end has kernel IPv4 address %s", a.Local)
		}
	}
	// Default addresses: 10.211.X.1/24 and .2/24, X from the id.
	for _, pair := range []*netns.Pair{p, q} {
		var x byte
		fmt.Sscanf(pair.ID[:2], "%x", &x)
		if want := netip.MustParsePrefix(fmt.Sprintf("10.211.%d.1/24", x)); pair.PeerAddr != want {
			t.Errorf("peer address %v, want %v", pair.PeerAddr, want)
		}
		if want := netip.MustParsePrefix(fmt.Sprintf("10.211.%d.2/24", x)); pair.EmuAddr != want {
			t.Errorf("emu address %v, want %v", pair.EmuAddr, want)
		}
	}

	// Loopback up on both sides.
	for _, ns := range []string{p.Peer.Name, p.Emu.Name} {
		if lo := showLink(t, ns, "lo"); !slices.Contains(lo.Flags, "UP") {
			t.Errorf("lo down in %s", ns)
		}
	}

	if got := ethtoolFeature(t, p.Peer, p.PeerIf, "tx-checksumming"); got != "off" {
		t.Errorf("peer tx-checksumming %s, want off", got)
	}

	// No static neighbour entry: the userspace stack answers ARP.
	if out, err := exec.Command("ip", "-n", p.Peer.Name, "neigh", "show", "dev", p.PeerIf).Output(); err != nil || strings.TrimSpace(string(out)) != "" {
		t.Errorf("peer neighbour table: %q, %v; want empty", out, err)
	}
}

func TestPairOptions(t *testing.T) {
	p := testutil.NewPair(t, netns.Options{
		Prefix:            "xdvtest-opts",
		PeerAddr:          netip.MustParsePrefix("192.0.2.10/28"),
		EmuAddr:           netip.MustParsePrefix("192.0.2.11/28"),
		KeepPeerTxOffload: true,
	})
	if !strings.HasPrefix(p.Peer.Name, "xdvtest-opts-") {
		t.Errorf("peer namespace %q lacks the prefix", p.Peer.Name)
	}
	if p.MTU != 1500 {
		t.Errorf("default mtu %d, want 1500", p.MTU)
	}
	if l := showLink(t, p.Peer.Name, p.PeerIf); l.MTU != 1500 || l.TxQueues != 1 || l.RxQueues != 1 {
		t.Errorf("defaults not applied: mtu %d tx %d rx %d", l.MTU, l.TxQueues, l.RxQueues)
	}
	if p.PeerAddr.String() != "192.0.2.10/28" || p.EmuAddr.String() != "192.0.2.11/28" {
		t.Errorf("addresses %v %v", p.PeerAddr, p.EmuAddr)
	}
	if got := ethtoolFeature(t, p.Peer, p.PeerIf, "tx-checksumming"); got != "on" {
		t.Errorf("KeepPeerTxOffload: peer tx-checksumming %s, want on", got)
	}
}

func TestPairIPv6(t *testing.T) {
	p := testutil.NewPair(t, netns.Options{
		PeerAddr: netip.MustParsePrefix("fd00:211::1/64"),
		EmuAddr:  netip.MustParsePrefix("fd00:211::2/64"),
	})
	found := false
	for _, a := range showLink(t, p.Peer.Name, p.PeerIf).AddrInfo {
		found = found || (a.Family == "inet6" && a.Local == "fd00:211::1" && a.PrefixLen == 64)
	}
	if !found {
		t.Errorf("peer lacks fd00:211::1/64")
	}
	// Usable at once (no duplicate address detection to wait for).
	err := p.Peer.Do(func() error {
		c, err := net.ListenPacket("udp6", "[fd00:211::1]:0")
		if err == nil {
			c.Close()
		}
		return err
	})
	if err != nil {
		t.Errorf("bind the peer's IPv6 address: %v", err)
	}
}

func TestPairOptionErrors(t *testing.T) {
	for _, opts := range []netns.Options{
		{Prefix: "Bad_Prefix"},
		{Prefix: "-x"},
		{Prefix: strings.Repeat("a", 40)},
		{MTU: 67},
		{MTU: 70000},
		{TxQueues: -1},
		{RxQueues: 1000},
		{PeerAddr: netip.MustParsePrefix("10.1.1.1/24")},
		{PeerAddr: netip.MustParsePrefix("10.1.1.1/24"), EmuAddr: netip.MustParsePrefix("10.1.1.1/24")},
	} {
		p, err := netns.NewPair(opts)
		if err == nil {
			p.Close()
			t.Errorf("NewPair(%+v) succeeded", opts)
		}
	}
}

// TestPairFailureCleansUp makes NewPair fail after each step, from the
// moment the namespaces and the veth exist, and checks nothing is left.
func TestPairFailureCleansUp(t *testing.T) {
	testutil.RequirePrivileged(t)
	const prefix = "xdvtest-fail"
	for _, step := range []string{"veth", "addr", "up", "features"} {
		t.Run(step, func(t *testing.T) {
			injected := errors.New("injected failure after " + step)
			defer netns.SetTestHook(func(s string) error {
				if s == step {
					return injected
				}
				return nil
			})()
			p, err := netns.NewPair(netns.Options{Prefix: prefix})
			if err == nil {
				p.Close()
				t.Fatal("NewPair succeeded")
			}
			if !errors.Is(err, injected) {
				t.Errorf("error %v, want the injected one", err)
			}
			names, _ := netns.List()
			for _, name := range names {
				if strings.HasPrefix(name, prefix+"-") {
					t.Errorf("namespace %s left after a failed NewPair", name)
				}
			}
			if left, _ := netns.Leftovers(); len(left) > 0 {
				t.Errorf("leftovers: %v", left)
			}
		})
	}
}

// emptyPATH points PATH at an empty directory for the rest of the test: no
// ip, no ethtool, nothing.
func emptyPATH(t *testing.T) {
	t.Helper()
	t.Setenv("PATH", t.TempDir())
	if _, err := exec.LookPath("ip"); err == nil {
		t.Fatal("ip still in PATH")
	}
}

// TestPairWithoutTools builds a pair, looks at it and runs a program in it
// with nothing in PATH: set-up needs Go alone.
func TestPairWithoutTools(t *testing.T) {
	testutil.RequirePrivileged(t)
	testutil.Watchdog(t, time.Minute)
	emptyPATH(t)
	p, err := netns.NewPair(netns.Options{Prefix: testutil.Prefix, MTU: 2000, TxQueues: 2, RxQueues: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, name := range []string{p.Peer.Name, p.Emu.Name} {
		if !nsExists(t, name) {
			t.Errorf("namespace %s not listed", name)
		}
	}
	err = p.Emu.Do(func() error {
		ifi, err := net.InterfaceByName(p.EmuIf)
		if err != nil {
			return err
		}
		if ifi.MTU != 2000 || ifi.Flags&net.FlagUp == 0 || ifi.Index != p.EmuIndex || ifi.HardwareAddr.String() != p.EmuMAC.String() {
			return fmt.Errorf("emu end %+v, pair says index %d mac %s", ifi, p.EmuIndex, p.EmuMAC)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	// The kernel's TCP on the peer address answers from the peer namespace.
	var ln net.Listener
	if err := p.Peer.Do(func() (err error) {
		ln, err = net.Listen("tcp4", net.JoinHostPort(p.PeerAddr.Addr().String(), "0"))
		return err
	}); err != nil {
		t.Fatalf("listen on the peer address: %v", err)
	}
	ln.Close()
	// A program by absolute path runs inside the namespace.
	helper := p.Emu.Command(os.Args[0], "-test.run=^TestCommandHelper$")
	helper.Env = append(os.Environ(), commandHelperEnv+"=0")
	out, err := helper.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if !strings.Contains(string(out), "iface "+p.EmuIf+"\n") || strings.Contains(string(out), "iface "+p.PeerIf+"\n") {
		t.Errorf("helper inside the emu namespace saw:\n%s", out)
	}
	// A name not in PATH fails at Start, as exec.Command does.
	if err := p.Emu.Command("ip", "link").Run(); !errors.Is(err, exec.ErrNotFound) {
		t.Errorf("ip without PATH: %v, want exec.ErrNotFound", err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{p.Peer.Name, p.Emu.Name} {
		if nsExists(t, name) {
			t.Errorf("namespace %s left after Close", name)
		}
	}
}

const commandHelperEnv = "XDEVMEM_NETNS_COMMAND_HELPER"

// TestCommandHelper is run by NS.Command in the tests, with
// commandHelperEnv set to the exit status it is to end with: it prints the
// interfaces it sees and its argv[0], and exits before the leak check of
// TestMain, which would look at the namespace as if it were the root.
func TestCommandHelper(t *testing.T) {
	code := os.Getenv(commandHelperEnv)
	if code == "" {
		return // only meaningful when run by NS.Command
	}
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, ifi := range ifs {
		fmt.Printf("iface %s\n", ifi.Name)
	}
	fmt.Printf("argv0 %s\n", filepath.Base(os.Args[0]))
	var n int
	fmt.Sscan(code, &n)
	os.Exit(n)
}

// TestNSCommandProcess: the process NS.Command starts is the program itself
// (same pid, its exit status, its death by signal), in the namespace, with
// the caller's environment and a /sys that shows the namespace's devices;
// a namespace gone before Start is a clear failure.
func TestNSCommandProcess(t *testing.T) {
	testutil.Watchdog(t, time.Minute)
	p := testutil.NewPair(t, netns.Options{})

	cmd := p.Emu.Command(os.Args[0], "-test.run=^TestCommandHelper$")
	cmd.Env = append(os.Environ(), commandHelperEnv+"=7")
	out, err := cmd.Output()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 7 {
		t.Errorf("helper exit: %v, want status 7", err)
	}
	if want := "argv0 " + filepath.Base(os.Args[0]) + "\n"; !strings.Contains(string(out), want) {
		t.Errorf("helper output lacks %q:\n%s", want, out)
	}

	out, err = p.Emu.Command("sh", "-c", "ls /sys/class/net").CombinedOutput()
	if err != nil {
		t.Fatalf("ls /sys/class/net: %v: %s", err, out)
	}
	if f := strings.Fields(string(out)); !slices.Contains(f, p.EmuIf) || slices.Contains(f, p.PeerIf) {
		t.Errorf("/sys/class/net inside the emu namespace: %v", f)
	}
	if _, err := os.Stat("/sys/class/net/" + p.EmuIf); err == nil {
		t.Errorf("the namespace's sysfs leaked into the caller's mounts")
	}

	sleep := p.Emu.Command("sleep", "30")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	defer sleep.Wait()
	defer sleep.Process.Kill()
	pid := sleep.Process.Pid
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if strings.TrimSpace(string(comm)) == "sleep" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d never became sleep (comm %q)", pid, comm)
		}
	}
	var want, got syscall.Stat_t
	if err := syscall.Stat(filepath.Join(netns.RunDir, p.Emu.Name), &want); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &got); err != nil {
		t.Fatal(err)
	}
	if got.Ino != want.Ino || got.Dev != want.Dev {
		t.Errorf("sleep runs in namespace inode %d, want the emu namespace's %d", got.Ino, want.Ino)
	}
	if err := sleep.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err = sleep.Wait()
	if !errors.As(err, &exit) || !exit.Sys().(syscall.WaitStatus).Signaled() || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
		t.Errorf("sleep ended with %v, want killed by SIGTERM", err)
	}

	ns, err := netns.NewNS(fmt.Sprintf("xdvtest-gone-%d", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	gone := ns.Command("true")
	ns.Close()
	out, err = gone.CombinedOutput()
	if !errors.As(err, &exit) || exit.ExitCode() != 255 || !strings.Contains(string(out), "netns exec "+ns.Name) {
		t.Errorf("command in a deleted namespace: %v: %s", err, out)
	}
}

// TestNSLinkMethods: addresses, neighbours, offload features and counters
// set and read through netlink, as ip(8) and ethtool(8) see them.
func TestNSLinkMethods(t *testing.T) {
	testutil.Watchdog(t, time.Minute)
	p := testutil.NewPair(t, netns.Options{})

	// The emu end gets the kernel address the stack would otherwise answer for.
	if err := p.Emu.AddAddr(p.EmuIf, p.EmuAddr); err != nil {
		t.Fatal(err)
	}
	if err := p.Emu.AddAddr(p.EmuIf, p.EmuAddr); !errors.Is(err, syscall.EEXIST) {
		t.Errorf("second add: %v, want EEXIST", err)
	}
	v6 := netip.MustParsePrefix("fd00:212::2/64")
	if err := p.Emu.AddAddr(p.EmuIf, v6); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range showLink(t, p.Emu.Name, p.EmuIf).AddrInfo {
		if a.Family == "inet" || !strings.HasPrefix(a.Local, "fe80") {
			got = append(got, fmt.Sprintf("%s/%d", a.Local, a.PrefixLen))
		}
	}
	if want := []string{p.EmuAddr.String(), v6.String()}; !slices.Equal(got, want) {
		t.Errorf("emu addresses %v, want %v", got, want)
	}
	if err := p.Emu.AddAddr("nosuchif", v6); err == nil || !strings.Contains(err.Error(), "nosuchif") {
		t.Errorf("address on a missing interface: %v", err)
	}

	// Counters: packets from the peer to that address show on both ends,
	// as "ip -s link show" counts them.
	var c net.Conn
	if err := p.Peer.Do(func() (err error) {
		c, err = net.Dial("udp4", net.JoinHostPort(p.EmuAddr.Addr().String(), "9"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		c.Write([]byte("count me"))
	}
	c.Close()
	time.Sleep(100 * time.Millisecond) // let the last ones arrive
	for _, end := range []struct {
		ns     *netns.NS
		ifname string
	}{{p.Peer, p.PeerIf}, {p.Emu, p.EmuIf}} {
		st, err := end.ns.LinkStats(end.ifname)
		if err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("ip", "-n", end.ns.Name, "-j", "-s", "link", "show", "dev", end.ifname).Output()
		if err != nil {
			t.Fatal(err)
		}
		var ip []struct {
			Stats64 struct {
				RX, TX struct{ Packets, Bytes, Dropped uint64 }
			} `json:"stats64"`
		}
		if err := json.Unmarshal(out, &ip); err != nil || len(ip) != 1 {
			t.Fatalf("ip -s link show: %v: %s", err, out)
		}
		want := netns.LinkStats{
			RxPackets: ip[0].Stats64.RX.Packets, RxBytes: ip[0].Stats64.RX.Bytes, RxDropped: ip[0].Stats64.RX.Dropped,
			TxPackets: ip[0].Stats64.TX.Packets, TxBytes: ip[0].Stats64.TX.Bytes, TxDropped: ip[0].Stats64.TX.Dropped,
		}
		if st != want || st.RxPackets == 0 || st.TxPackets == 0 {
			t.Errorf("%s counters %+v, ip says %+v", end.ifname, st, want)
		}
	}
	if _, err := p.Emu.LinkStats("nosuchif"); err == nil {
		t.Errorf("stats of a missing interface")
	}

	if err := p.Emu.DelAddr(p.EmuIf, p.EmuAddr); err != nil {
		t.Fatal(err)
	}
	if err := p.Emu.DelAddr(p.EmuIf, p.EmuAddr); !errors.Is(err, syscall.EADDRNOTAVAIL) {
		t.Errorf("second delete: %v, want EADDRNOTAVAIL", err)
	}

	// A permanent neighbour entry, replaced in place.
	mac, _ := net.ParseMAC("02:00:00:00:00:01")
	if err := p.Peer.SetNeigh(p.PeerIf, p.EmuAddr.Addr(), mac); err != nil {
		t.Fatal(err)
	}
	if err := p.Peer.SetNeigh(p.PeerIf, p.EmuAddr.Addr(), p.EmuMAC); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ip", "-n", p.Peer.Name, "neigh", "show", "dev", p.PeerIf).Output()
	if want := p.EmuAddr.Addr().String() + " lladdr " + p.EmuMAC.String() + " PERMANENT"; err != nil || strings.TrimSpace(string(out)) != want {
		t.Errorf("peer neighbours %q (%v), want %q", out, err, want)
	}

	// Offloads off on the emu end, as the bench does, and one on again.
	if err := p.Emu.SetFeatures(p.EmuIf, map[string]bool{"tx": false, "tso": false, "gso": false, "gro": false}); err != nil {
		t.Fatal(err)
	}
	for feature, want := range map[string]string{"tx-checksumming": "off", "tcp-segmentation-offload": "off",
		"generic-segmentation-offload": "off", "generic-receive-offload": "off"} {
		if got := ethtoolFeature(t, p.Emu, p.EmuIf, feature); got != want {
			t.Errorf("emu %s %s, want %s", feature, got, want)
		}
	}
	if err := p.Emu.SetFeatures(p.EmuIf, map[string]bool{"rx-gro": true}); err != nil {
		t.Fatal(err)
	}
	if got := ethtoolFeature(t, p.Emu, p.EmuIf, "generic-receive-offload"); got != "on" {
		t.Errorf("emu gro %s after rx-gro on", got)
	}
	if err := p.Emu.SetFeatures(p.EmuIf, map[string]bool{"no-such-feature": true}); !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Errorf("unknown feature: %v, want EOPNOTSUPP", err)
	}
}

func TestNewNS(t *testing.T) {
	testutil.RequirePrivileged(t)
	testutil.RequireTools(t, "ip")
	for _, bad := range []string{"", ".", "..", "a/b", "a b"} {
		if ns, err := netns.NewNS(bad); err == nil {
			ns.Close()
			t.Errorf("NewNS(%q) succeeded", bad)
		}
	}
	name := fmt.Sprintf("xdvtest-ns-%d", os.Getpid())
	ns, err := netns.NewNS(name)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if _, err := netns.NewNS(name); err == nil {
		t.Errorf("NewNS of an existing name succeeded")
	}
	if left, _ := netns.Leftovers(); !slices.Contains(left, name) {
		t.Errorf("open namespace %s not among leftovers %v", name, left)
	}
	if err := ns.Close(); err != nil {
		t.Fatal(err)
	}
	if nsExists(t, name) {
		t.Errorf("%s exists after Close", name)
	}
}

// TestCleanup leaves namespaces behind as a killed process would and checks
// that Cleanup removes exactly those named like a pair's with its prefix.
func TestCleanup(t *testing.T) {
	testutil.RequirePrivileged(t)
	testutil.RequireTools(t, "ip", "ethtool")
	const prefix = "xdvtest-cleanup"
	keep := []string{prefix + "-other", prefix + "-abcdef-peer-x", prefix + "x-abcdef-peer"}
	gone := []string{prefix + "-abc123-peer", prefix + "-abc123-emu"}
	t.Cleanup(func() {
		for _, name := range append(keep, gone...) {
			exec.Command("ip", "netns", "delete", name).Run()
		}
	})
	for _, name := range append(keep, gone...) {
		if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
			t.Fatalf("ip netns add %s: %v: %s", name, err, out)
		}
	}
	if out, err := exec.Command("ip", "-n", gone[0], "link", "add", "xdvpabc123", "type", "veth",
		"peer", "name", "xdveabc123", "netns", gone[1]).CombinedOutput(); err != nil {
		t.Fatalf("veth: %v: %s", err, out)
	}
	// A pair of this process with the same prefix goes too.
	p, err := netns.NewPair(netns.Options{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	gone = append(gone, p.Peer.Name, p.Emu.Name)

	if err := netns.Cleanup(prefix); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	for _, name := range gone {
		if nsExists(t, name) {
			t.Errorf("%s survived Cleanup", name)
		}
	}
	for _, name := range keep {
		if !nsExists(t, name) {
			t.Errorf("Cleanup removed %s, which does not match", name)
		}
	}
	if err := p.Close(); err != nil {
		t.Errorf("close after cleanup: %v", err)
	}
	if err := netns.Cleanup("Bad"); err == nil {
		t.Errorf("Cleanup accepted an invalid prefix")
	}
}

const signalHelperEnv = "XDEVMEM_NETNS_SIGNAL_HELPER"

// TestCloseOnSignalHelper is the child of TestCloseOnSignal.
func TestCloseOnSignalHelper(t *testing.T) {
	prefix := os.Getenv(signalHelperEnv)
	if prefix == "" {
		return // only meaningful when re-executed as a helper process
	}
	p, err := netns.NewPair(netns.Options{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	p.CloseOnSignal()
	fmt.Printf("ready %s %s\n", p.Peer.Name, p.Emu.Name)
	time.Sleep(time.Minute)
	p.Close()
	t.Fatal("no signal came")
}

func TestCloseOnSignal(t *testing.T) {
	testutil.RequirePrivileged(t)
	testutil.RequireTools(t, "ip", "ethtool")
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			prefix := fmt.Sprintf("xdvtest-sig%d", int(sig))
			t.Cleanup(func() { netns.Cleanup(prefix) })
			cmd := exec.Command(os.Args[0], "-test.run=^TestCloseOnSignalHelper$", "-test.v")
			cmd.Env = append(os.Environ(), signalHelperEnv+"="+prefix)
			cmd.Stderr = os.Stderr
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

			var names []string
			s := bufio.NewScanner(stdout)
			for s.Scan() {
				if f := strings.Fields(s.Text()); len(f) == 3 && f[0] == "ready" {
					names = f[1:]
					break
				}
			}
			if names == nil {
				t.Fatal("helper never got ready")
			}
			for _, name := range names {
				if !nsExists(t, name) {
					t.Fatalf("helper's namespace %s missing", name)
				}
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			err = cmd.Wait()
			var exit *exec.ExitError
			if !errors.As(err, &exit) {
				t.Fatalf("helper exited with %v", err)
			}
			if ws := exit.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != sig {
				t.Errorf("helper status %v, want killed by %v", ws, sig)
			}
			for _, name := range names {
				if nsExists(t, name) {
					t.Errorf("namespace %s survived %v", name, sig)
				}
			}
		})
	}
}

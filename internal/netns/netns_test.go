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

// TestPairFailureCleansUp makes NewPair fail after the namespaces and the
// veth exist (ethtool is missing from PATH) and checks nothing is left.
func TestPairFailureCleansUp(t *testing.T) {
	testutil.RequirePrivileged(t)
	testutil.RequireTools(t, "ip")
	ip, _ := exec.LookPath("ip")
	dir := t.TempDir()
	if err := os.Symlink(ip, filepath.Join(dir, "ip")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	const prefix = "xdvtest-fail"
	p, err := netns.NewPair(netns.Options{Prefix: prefix})
	if err == nil {
		p.Close()
		t.Fatal("NewPair succeeded without ethtool")
	}
	if !strings.Contains(err.Error(), "ethtool") {
		t.Errorf("error does not name ethtool: %v", err)
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
}

func TestPairClose(t *testing.T) {
	testutil.RequirePrivileged(t)
	testutil.RequireTools(t, "ip", "ethtool")
	p, err := netns.NewPair(netns.Options{Prefix: testutil.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	for _, name := range []string{p.Peer.Name, p.Emu.Name} {
		if nsExists(t, name) {
			t.Errorf("namespace %s still exists after Close", name)
		}
	}
	if err := p.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
	if err := p.Emu.Do(func() error { return nil }); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Do on a closed namespace: %v, want os.ErrClosed", err)
	}
	if left, _ := netns.Leftovers(); slices.Contains(left, p.Peer.Name) || slices.Contains(left, p.Emu.Name) {
		t.Errorf("leftovers after close: %v", left)
	}
}

func TestPairCloseWhileSocketOpen(t *testing.T) {
	testutil.RequirePrivileged(t)
	testutil.RequireTools(t, "ip", "ethtool")
	p, err := netns.NewPair(netns.Options{Prefix: testutil.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	// A socket inside keeps the namespace alive after its name is gone; the
	// veth must still disappear at once.
	var conn net.PacketConn
	if err := p.Peer.Do(func() (err error) {
		conn, err = net.ListenPacket("udp4", net.JoinHostPort(p.PeerAddr.Addr().String(), "0"))
		return err
	}); err != nil {
		p.Close()
		t.Fatal(err)
	}
	defer conn.Close()
	if err := p.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if nsExists(t, p.Peer.Name) {
		t.Errorf("namespace %s still named", p.Peer.Name)
	}
	out, _ := exec.Command("ip", "-o", "-all", "netns", "exec", "ip", "-o", "link", "show").CombinedOutput()
	if strings.Contains(string(out), p.PeerIf) || strings.Contains(string(out), p.EmuIf) {
		t.Errorf("veth still exists:\n%s", out)
	}
}

func TestNSDo(t *testing.T) {
	p := testutil.NewPair(t, netns.Options{})

	// The interface exists only inside the namespace.
	if _, err := net.InterfaceByName(p.EmuIf); err == nil {
		t.Fatalf("%s visible outside its namespace", p.EmuIf)
	}
	err := p.Emu.Do(func() error {
		ifi, err := net.InterfaceByName(p.EmuIf)
		if err != nil {
			return err
		}
		if ifi.Index != p.EmuIndex {
			return fmt.Errorf("index %d, want %d", ifi.Index, p.EmuIndex)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("inside: %v", err)
	}
	if _, err := net.InterfaceByName(p.EmuIf); err == nil {
		t.Fatalf("%s visible after Do returned", p.EmuIf)
	}

	// fn's error comes back as is.
	sentinel := errors.New("sentinel")
	if err := p.Emu.Do(func() error { return sentinel }); err != sentinel {
		t.Errorf("Do returned %v, want the function's error", err)
	}

	// A panic inside still switches the thread back.
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Errorf("recovered %v", r)
			}
		}()
		_ = p.Emu.Do(func() error { panic("boom") })
	}()
	for range 20 { // whatever thread we land on, it is in our namespace
		if _, err := net.InterfaceByName(p.EmuIf); err == nil {
			t.Fatalf("%s visible after a panic in Do", p.EmuIf)
		}
	}

	// Sockets keep their namespace: a UDP socket bound to the peer address
	// inside Do works from outside, talking to one made in the same way.
	var server, client net.PacketConn
	err = p.Peer.Do(func() (err error) {
		addr := net.JoinHostPort(p.PeerAddr.Addr().String(), "0")
		if server, err = net.ListenPacket("udp4", addr); err != nil {
			return err
		}
		client, err = net.ListenPacket("udp4", addr)
		return err
	})
	if err != nil {
		t.Fatalf("sockets inside: %v", err)
	}
	defer server.Close()
	defer client.Close()
	if _, err := client.WriteTo([]byte("hello"), server.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	n, from, err := server.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "hello" || from.String() != client.LocalAddr().String() {
		t.Errorf("read %q from %v: %v", buf[:n], from, err)
	}
	// Outside, the peer address does not exist.
	if c, err := net.ListenPacket("udp4", net.JoinHostPort(p.PeerAddr.Addr().String(), "0")); err == nil {
		c.Close()
		t.Errorf("bound %v outside the peer namespace", p.PeerAddr.Addr())
	}
}

func TestNSCommand(t *testing.T) {
	p := testutil.NewPair(t, netns.Options{})
	out, err := p.Emu.Command("ip", "-o", "link", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if !strings.Contains(string(out), p.EmuIf+"@") || strings.Contains(string(out), p.PeerIf+"@") {
		t.Errorf("emu namespace links:\n%s", out)
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

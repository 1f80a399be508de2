package testutil

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/xdevmem/xdevmem/internal/netns"
)

func TestMain(m *testing.M) { os.Exit(CheckLeaks(m)) }

// fakeTB records what a helper does to a test instead of doing it.
type fakeTB struct {
	testing.TB
	skipped, failed bool
	msgs            []string
	cleanups        []func()
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Skip(args ...any) {
	f.skipped = true
	f.msgs = append(f.msgs, fmt.Sprint(args...))
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = true
	f.msgs = append(f.msgs, fmt.Sprintf(format, args...))
}
func (f *fakeTB) Errorf(format string, args ...any) { f.Fatalf(format, args...) }
func (f *fakeTB) Cleanup(fn func())                 { f.cleanups = append(f.cleanups, fn) }
func (f *fakeTB) runCleanups() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}

func TestSkipOrFail(t *testing.T) {
	t.Setenv("CI", "")
	f := &fakeTB{TB: t}
	SkipOrFail(f, "needs %s", "x")
	if !f.skipped || f.failed || f.msgs[0] != "needs x" {
		t.Errorf("without CI: skipped %v failed %v msgs %q", f.skipped, f.failed, f.msgs)
	}

	t.Setenv("CI", "true")
	f = &fakeTB{TB: t}
	SkipOrFail(f, "needs %s", "x")
	if f.skipped || !f.failed || !strings.Contains(f.msgs[0], "needs x") || !strings.Contains(f.msgs[0], "CI") {
		t.Errorf("with CI: skipped %v failed %v msgs %q", f.skipped, f.failed, f.msgs)
	}

	f = &fakeTB{TB: t}
	RequireTools(f, "sh", "no-such-tool-xdevmem")
	if !f.failed || !strings.Contains(f.msgs[0], "no-such-tool-xdevmem") {
		t.Errorf("RequireTools with CI: failed %v msgs %q", f.failed, f.msgs)
	}
}

func TestMissingCapsIn(t *testing.T) {
	const head = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n"
	for _, tc := range []struct {
		capEff  string
		missing []string
	}{
		{"000001ffffffffff", nil},
		{"0000000000000000", []string{"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_ADMIN", "CAP_BPF"}},
		// NET_ADMIN (12), NET_RAW (13), SYS_ADMIN (21), but no BPF (39).
		{fmt.Sprintf("%016x", 1<<12|1<<13|1<<21), []string{"CAP_BPF"}},
		{fmt.Sprintf("%016x", 1<<12|1<<39), []string{"CAP_NET_RAW", "CAP_SYS_ADMIN"}},
	} {
		got, err := missingCapsIn(head + "CapEff:\t" + tc.capEff + "\nCapBnd:\t000001ffffffffff\n")
		if err != nil || !slices.Equal(got, tc.missing) {
			t.Errorf("CapEff %s: missing %v, %v; want %v", tc.capEff, got, err, tc.missing)
		}
	}
	for _, bad := range []string{head, head + "CapEff:\tzz\n"} {
		if _, err := missingCapsIn(bad); err == nil {
			t.Errorf("no error for %q", bad)
		}
	}
}

func TestRequirePrivilegedAsRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("meaningful as root only")
	}
	f := &fakeTB{TB: t}
	RequirePrivileged(f)
	if testing.Short() {
		if !f.skipped || f.failed {
			t.Errorf("under -short a kernel test must skip (in CI too): skipped %v failed %v", f.skipped, f.failed)
		}
		return
	}
	if f.skipped || f.failed {
		t.Errorf("root judged unprivileged: %q", f.msgs)
	}
}

func TestFDCount(t *testing.T) {
	before, err := FDCount()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := FDCount(); n != before+1 {
		t.Errorf("count with one more file open: %d, want %d", n, before+1)
	}
	f.Close()
	if n, _ := FDCount(); n != before {
		t.Errorf("count after closing: %d, want %d", n, before)
	}
}

func TestCheckFDs(t *testing.T) {
	f := &fakeTB{TB: t}
	CheckFDs(f)
	file, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	f.runCleanups()
	file.Close()
	if !f.failed || !strings.Contains(strings.Join(f.msgs, " "), filepath.Base(os.Args[0])) {
		t.Errorf("leak not reported: %q", f.msgs)
	}

	f = &fakeTB{TB: t}
	CheckFDs(f)
	file, err = os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	file.Close()
	f.runCleanups()
	if f.failed {
		t.Errorf("false leak: %q", f.msgs)
	}
}

// TestRootLinks: the leak check's view of the root namespace lists its
// links, and describes an XDP program by id and mode.
func TestRootLinks(t *testing.T) {
	RequirePrivileged(t)
	links, err := rootLinks()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, l := range links {
		found = found || l.Name == "lo"
	}
	if !found {
		t.Errorf("no lo among %+v", links)
	}
	for _, c := range []struct {
		x    *netlink.LinkXdp
		want string
	}{
		{nil, ""},
		{&netlink.LinkXdp{}, ""},
		{&netlink.LinkXdp{Attached: true, AttachMode: 1, ProgId: 42}, "prog 42 (driver)"},
		{&netlink.LinkXdp{Attached: true, AttachMode: 2, ProgId: 7}, "prog 7 (generic)"},
		{&netlink.LinkXdp{Attached: true, AttachMode: 9, ProgId: 7}, "prog 7 (mode 9)"},
	} {
		if got := describeXDP(c.x); got != c.want {
			t.Errorf("describeXDP(%+v) = %q, want %q", c.x, got, c.want)
		}
	}
}

func TestNewPairFixture(t *testing.T) {
	var peer, emu string
	t.Run("pair", func(t *testing.T) {
		p := NewPair(t, netns.Options{})
		peer, emu = p.Peer.Name, p.Emu.Name
		if !strings.HasPrefix(peer, Prefix+"-") {
			t.Errorf("namespace %s without the test prefix", peer)
		}
	})
	if peer == "" {
		t.Skip("pair subtest skipped")
	}
	names, _ := netns.List()
	for _, name := range []string{peer, emu} {
		if slices.Contains(names, name) {
			t.Errorf("%s survived the subtest's cleanup", name)
		}
	}
}

func TestWatchdogStops(t *testing.T) {
	t.Run("quick", func(t *testing.T) { Watchdog(t, 100*time.Millisecond) })
	time.Sleep(300 * time.Millisecond) // a watchdog still armed would crash us here
}

const helperEnv = "XDEVMEM_TESTUTIL_HELPER"

// TestHelperProcess is the child of the tests that expect the process to
// crash or fail; it does nothing unless started by them.
func TestHelperProcess(t *testing.T) {
	switch os.Getenv(helperEnv) {
	case "":
		return // only meaningful when re-executed as a helper process
	case "watchdog":
		p := NewPair(t, netns.Options{Prefix: "xdvtest-wd"})
		fmt.Printf("names %s %s\n", p.Peer.Name, p.Emu.Name)
		Watchdog(t, 200*time.Millisecond)
		time.Sleep(30 * time.Second)
	case "leak":
		ns, err := netns.NewNS(fmt.Sprintf("xdvtest-leak-%d", os.Getpid()))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("names %s\n", ns.Name)
	case "clean":
		NewPair(t, netns.Options{Prefix: "xdvtest-clean"})
	}
}

// runHelper runs TestHelperProcess in a child with the given mode and
// returns its exit code, the namespace names it printed and its stderr.
func runHelper(t *testing.T, mode string) (code int, names []string, stderr string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, "CI=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("run helper: %v", err)
		}
	}
	for line := range strings.Lines(out.String()) {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "names" {
			names = f[1:]
		}
	}
	return cmd.ProcessState.ExitCode(), names, errb.String()
}

func TestWatchdogFires(t *testing.T) {
	RequirePrivileged(t)
	RequireTools(t, "ip", "ethtool")
	t.Cleanup(func() { netns.Cleanup("xdvtest-wd") })
	code, names, stderr := runHelper(t, "watchdog")
	if code == 0 {
		t.Fatalf("helper survived its watchdog; stderr:\n%s", stderr)
	}
	for _, want := range []string{"watchdog: TestHelperProcess still running after 200ms", "goroutine ", "panic: watchdog"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	if len(names) != 2 {
		t.Fatalf("helper printed no namespace names; stderr:\n%s", stderr)
	}
	list, _ := netns.List()
	for _, name := range names {
		if slices.Contains(list, name) {
			t.Errorf("namespace %s survived the watchdog", name)
		}
	}
}

func TestCheckLeaksFindsNamespace(t *testing.T) {
	RequirePrivileged(t)
	RequireTools(t, "ip")
	code, names, stderr := runHelper(t, "leak")
	if len(names) != 1 {
		t.Fatalf("helper printed no namespace; code %d stderr:\n%s", code, stderr)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "delete", names[0]).Run() })
	if code != 1 || !strings.Contains(stderr, "namespaces left behind: "+names[0]) {
		t.Errorf("exit code %d, stderr:\n%s", code, stderr)
	}
	if list, _ := netns.List(); slices.Contains(list, names[0]) {
		t.Errorf("CheckLeaks did not remove %s", names[0])
	}

	code, _, stderr = runHelper(t, "clean")
	if code != 0 || strings.Contains(stderr, "leak check") {
		t.Errorf("clean run: exit code %d, stderr:\n%s", code, stderr)
	}
}

// Package testutil holds the helpers xdevmem's kernel-facing tests share:
// privilege checks that skip locally but fail in CI, a namespace-and-veth
// fixture with cleanup, a watchdog against hangs, and leak checks for
// TestMain.
//
// # Skips in CI
//
// A test that needs root, a tool or a kernel feature skips when it is
// missing, unless the environment variable CI is non-empty: there a skipped
// kernel test would hide a broken setup, so it fails instead.
//
// # Typical use
//
//	func TestMain(m *testing.M) { os.Exit(testutil.CheckLeaks(m)) }
//
//	func TestSomething(t *testing.T) {
//		testutil.Watchdog(t, time.Minute)
//		pair := testutil.NewPair(t, netns.Options{})
//		err := pair.Emu.Do(func() error { ... })
//	}
package testutil

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/internal/netns"
)

// Prefix names the namespaces that [NewPair] creates when the options name
// none, so that test leftovers are told apart from the commands'.
const Prefix = "xdvtest"

// InCI reports whether the tests run in CI (the CI variable is non-empty),
// where a missing privilege or tool is a failure, not a skip.
func InCI() bool { return os.Getenv("CI") != "" }

// SkipOrFail skips the test, or fails it when [InCI].
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if InCI() {
		t.Fatalf("%s (CI is set: a skip here is a failure)", msg)
		return
	}
	t.Skip(msg)
}

// ShortSkip skips a kernel or end-to-end test under go test -short, which
// runs the unit tests alone, in seconds and without root. CI runs the suite
// without -short, where such a test runs (or fails).
func ShortSkip(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("kernel test: skipped under -short")
	}
}

// Capabilities a kernel test needs: namespaces and mounts (SYS_ADMIN, which
// also covers BPF on kernels without CAP_BPF), links and XDP (NET_ADMIN),
// AF_XDP sockets (NET_RAW) and BPF programs and maps (BPF).
var requiredCaps = []struct {
	bit  uint
	name string
}{
	{unix.CAP_NET_ADMIN, "CAP_NET_ADMIN"},
	{unix.CAP_NET_RAW, "CAP_NET_RAW"},
	{unix.CAP_SYS_ADMIN, "CAP_SYS_ADMIN"},
	{unix.CAP_BPF, "CAP_BPF"},
}

// RequirePrivileged skips the test (fails it in CI) unless the process has
// the capabilities the kernel tests need: CAP_NET_ADMIN, CAP_NET_RAW,
// CAP_SYS_ADMIN and CAP_BPF.
//
// Under go test -short it always skips, in CI too: -short is the quick run
// of the unit tests, without the kernel (see ShortSkip).
func RequirePrivileged(t testing.TB) {
	t.Helper()
	ShortSkip(t)
	missing, err := missingCaps()
	if err != nil {
		SkipOrFail(t, "cannot read capabilities: %v", err)
		return
	}
	if len(missing) > 0 {
		SkipOrFail(t, "needs root: missing %s", strings.Join(missing, ", "))
	}
}

func missingCaps() ([]string, error) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil, err
	}
	return missingCapsIn(string(status))
}

// missingCapsIn names the required capabilities absent from the CapEff line
// of a /proc/<pid>/status text.
func missingCapsIn(status string) ([]string, error) {
	s := bufio.NewScanner(strings.NewReader(status))
	for s.Scan() {
		hex, ok := strings.CutPrefix(s.Text(), "CapEff:")
		if !ok {
			continue
		}
		eff, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
		if err != nil {
			return nil, fmt.Errorf("parse CapEff: %w", err)
		}
		var missing []string
		for _, c := range requiredCaps {
			if eff&(1<<c.bit) == 0 {
				missing = append(missing, c.name)
			}
		}
		return missing, nil
	}
	return nil, fmt.Errorf("no CapEff line in status")
}

// RequireTools skips the test (fails it in CI) unless every named program is
// in PATH.
func RequireTools(t testing.TB, names ...string) {
	t.Helper()
	for _, name := range names {
		if _, err := exec.LookPath(name); err != nil {
			SkipOrFail(t, "needs %s: %v", name, err)
		}
	}
}

// NewPair creates a [netns.Pair] for the test and closes it in t.Cleanup.
// It requires privileges first, and ip(8) and ethtool(8): the pair itself
// needs neither, but the tests look at it with them. An empty opts.Prefix
// becomes [Prefix].
func NewPair(t testing.TB, opts netns.Options) *netns.Pair {
	t.Helper()
	RequirePrivileged(t)
	RequireTools(t, "ip", "ethtool")
	if opts.Prefix == "" {
		opts.Prefix = Prefix
	}
	p, err := netns.NewPair(opts)
	if err != nil {
		t.Fatalf("new veth pair: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("close veth pair %s: %v", p.ID, err)
		}
	})
	return p
}

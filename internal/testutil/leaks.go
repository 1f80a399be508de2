package testutil

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/xdevmem/xdevmem/internal/netns"
)

// CheckLeaks runs the tests and then looks for what they left behind:
// namespaces this process created that still exist, links in the root
// namespace that gained an XDP program during the run, and veths named like
// a [netns.Pair]'s in the root namespace. It reports and removes any it
// finds, and turns a passing exit code into 1. Use it as
//
//	func TestMain(m *testing.M) { os.Exit(testutil.CheckLeaks(m)) }
//
// It judges namespaces by this process's own record, not by prefix, so that
// test binaries of other packages running at the same time do not count.
func CheckLeaks(m *testing.M) int {
	xdpBefore, xdpErr := rootXDP()
	fdsBefore, fdErr := openFDs()
	goBefore := runtime.NumGoroutine()
	code := m.Run()

	var problems []string
	// File descriptors and goroutines: give asynchronous closes a moment.
	var newFDs []string
	goAfter := 0
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		newFDs = newFDs[:0]
		if after, err := openFDs(); err == nil && fdErr == nil {
			for fd, target := range after {
				if fdsBefore[fd] != target && !runtimeFD(target) {
					newFDs = append(newFDs, fmt.Sprintf("%d -> %s", fd, target))
				}
			}
		}
		goAfter = runtime.NumGoroutine()
		if (len(newFDs) == 0 && goAfter <= goBefore+goroutineSlack) || time.Now().After(deadline) {
			break
		}
	}
	if len(newFDs) > 0 {
		sort.Strings(newFDs)
		problems = append(problems, fmt.Sprintf("file descriptors left open: %s", strings.Join(newFDs, ", ")))
	}
	if goAfter > goBefore+goroutineSlack {
		buf := make([]byte, 1<<16)
		buf = buf[:runtime.Stack(buf, true)]
		problems = append(problems, fmt.Sprintf("%d goroutines left running (%d before the tests):\n%s", goAfter, goBefore, buf))
	}
	if left, err := netns.Leftovers(); err != nil {
		problems = append(problems, fmt.Sprintf("list namespaces: %v", err))
	} else if len(left) > 0 {
		problems = append(problems, fmt.Sprintf("namespaces left behind: %s", strings.Join(left, ", ")))
		removeNamespaces(left)
	}
	if xdpErr == nil {
		xdpAfter, err := rootXDP()
		if err != nil {
			problems = append(problems, fmt.Sprintf("list root links: %v", err))
		}
		for ifname, prog := range xdpAfter {
			if xdpBefore[ifname] != prog {
				problems = append(problems, fmt.Sprintf("XDP program left attached to %s in the root namespace: %s", ifname, prog))
			}
		}
	}
	if veths, err := rootPairVeths(); err == nil && len(veths) > 0 {
		problems = append(problems, fmt.Sprintf("pair veths in the root namespace: %s", strings.Join(veths, ", ")))
	}

	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintf(os.Stderr, "leak check: %s\n", p)
		}
		if code == 0 {
			code = 1
		}
	}
	return code
}

func removeNamespaces(names []string) {
	if err := netns.CloseAll(); err != nil {
		fmt.Fprintf(os.Stderr, "leak check: close namespaces: %v\n", err)
	}
	for _, name := range names {
		if err := netns.Delete(name); err != nil {
			fmt.Fprintf(os.Stderr, "leak check: %v\n", err)
		}
	}
}

// rootLink is what the leak check looks at in a link of the root namespace.
type rootLink struct {
	Name string
	// XDP describes the attached XDP program; empty when there is none.
	XDP string
}

// rootLinks lists the links of the caller's (the root) namespace over
// rtnetlink.
func rootLinks() ([]rootLink, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	out := make([]rootLink, 0, len(links))
	for _, l := range links {
		out = append(out, rootLink{Name: l.Attrs().Name, XDP: describeXDP(l.Attrs().Xdp)})
	}
	return out, nil
}

// xdpModes names the attach modes of IFLA_XDP_ATTACHED (XDP_ATTACHED_DRV,
// _SKB, _HW, _MULTI in include/uapi/linux/if_link.h).
var xdpModes = map[uint32]string{1: "driver", 2: "generic", 3: "offload", 4: "multi"}

// describeXDP names an attached XDP program by id (none is reported in
// multi mode) and attach mode, "" if none is attached.
func describeXDP(x *netlink.LinkXdp) string {
	if x == nil || !x.Attached {
		return ""
	}
	mode, ok := xdpModes[x.AttachMode]
	if !ok {
		mode = fmt.Sprintf("mode %d", x.AttachMode)
	}
	return fmt.Sprintf("prog %d (%s)", x.ProgId, mode)
}

// rootXDP maps each root-namespace link that carries an XDP program to a
// description of it.
func rootXDP() (map[string]string, error) {
	links, err := rootLinks()
	if err != nil {
		return nil, err
	}
	m := make(map[string]string)
	for _, l := range links {
		if l.XDP != "" {
			m[l.Name] = l.XDP
		}
	}
	return m, nil
}

func rootPairVeths() ([]string, error) {
	links, err := rootLinks()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, l := range links {
		if strings.HasPrefix(l.Name, netns.PeerIfPrefix) || strings.HasPrefix(l.Name, netns.EmuIfPrefix) {
			names = append(names, l.Name)
		}
	}
	return names, nil
}

// FDCount returns the number of file descriptors the process has open.
func FDCount() (int, error) {
	fds, err := openFDs()
	return len(fds), err
}

// openFDs maps each open file descriptor to what it refers to.
func openFDs() (map[int]string, error) {
	f, err := os.Open("/proc/self/fd")
	if err != nil {
		return nil, fmt.Errorf("fd count: %w", err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("fd count: %w", err)
	}
	self := int(f.Fd())
	fds := make(map[int]string, len(names))
	for _, name := range names {
		fd, err := strconv.Atoi(name)
		if err != nil || fd == self {
			continue
		}
		target, err := os.Readlink("/proc/self/fd/" + name)
		if err != nil {
			continue // closed meanwhile
		}
		fds[fd] = target
	}
	return fds, nil
}

// goroutineSlack is how many more goroutines than before the tests may
// remain (lazily started runtime and library workers, such as gVisor's
// shared timers).
const goroutineSlack = 8

// runtimeFD reports descriptors the Go runtime opens lazily and keeps, such
// as the network poller's, which are not a test's leak.
func runtimeFD(target string) bool {
	return target == "anon_inode:[eventpoll]" || target == "anon_inode:[eventfd]"
}

// CheckFDs fails the test if, when its cleanups run, it holds file
// descriptors it did not hold when CheckFDs was called. Call it first in the
// test, so its cleanup runs last, and not in parallel tests: it counts the
// whole process's descriptors. Descriptors closed asynchronously get a
// second to go.
func CheckFDs(t testing.TB) {
	t.Helper()
	before, err := openFDs()
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() {
		var leaked []string
		deadline := time.Now().Add(time.Second)
		for {
			after, err := openFDs()
			if err != nil {
				t.Errorf("%v", err)
				return
			}
			leaked = leaked[:0]
			for fd, target := range after {
				if prev, ok := before[fd]; (!ok || prev != target) && !runtimeFD(target) {
					leaked = append(leaked, fmt.Sprintf("%d -> %s", fd, target))
				}
			}
			if len(leaked) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if len(leaked) > 0 {
			slices.Sort(leaked)
			t.Errorf("file descriptors leaked: %s", strings.Join(leaked, ", "))
		}
	})
}

package netns

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// RunDir is where ip(8) keeps the bind mounts that name network namespaces.
const RunDir = "/run/netns"

// commandTimeout bounds every ip(8) and ethtool(8) invocation, so a wedged
// tool cannot hang a test or a command forever.
const commandTimeout = 30 * time.Second

// NS is a named network namespace created by [NewNS].
//
// Its methods are safe for concurrent use. Close must not race with a Do
// that is still switching into the namespace; a Do already inside keeps the
// namespace alive until it returns.
type NS struct {
	// Name is the namespace's name, as "ip netns list" shows it.
	Name string

	mu sync.RWMutex
	fd int // open /run/netns/<Name>; -1 once closed
}

// registry remembers every namespace this process created, so that leaks can
// be found and removed even when the code that created them is gone.
var registry struct {
	sync.Mutex
	live    map[string]*NS
	created map[string]bool
}

func register(ns *NS) {
	registry.Lock()
	defer registry.Unlock()
	if registry.live == nil {
		registry.live = make(map[string]*NS)
		registry.created = make(map[string]bool)
	}
	registry.live[ns.Name] = ns
	registry.created[ns.Name] = true
}

func unregister(ns *NS) {
	registry.Lock()
	defer registry.Unlock()
	if registry.live[ns.Name] == ns {
		delete(registry.live, ns.Name)
	}
}

func lookupLive(name string) *NS {
	registry.Lock()
	defer registry.Unlock()
	return registry.live[name]
}

// NewNS creates the network namespace name (ip netns add) and opens it.
// The name must be a plain file name; it must not exist yet.
func NewNS(name string) (*NS, error) {
	if err := validName(name); err != nil {
		return nil, fmt.Errorf("create netns %q: %w", name, err)
	}
	if err := run("ip", "netns", "add", name); err != nil {
		return nil, fmt.Errorf("create netns %q: %w", name, err)
	}
	fd, err := unix.Open(filepath.Join(RunDir, name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		_ = run("ip", "netns", "delete", name)
		return nil, fmt.Errorf("open netns %q: %w", name, err)
	}
	ns := &NS{Name: name, fd: fd}
	register(ns)
	recordOwner(name)
	return ns, nil
}

func validName(name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return errors.New("invalid name")
	case len(name) > 200:
		return errors.New("name too long")
	case strings.ContainsAny(name, "/ \t\n\x00"):
		return errors.New("name contains a slash, space or NUL")
	}
	return nil
}

// Do runs fn on an OS thread switched into the namespace and switches the
// thread back afterwards. Sockets, netlink sockets, BPF links and AF_XDP
// sockets that fn creates belong to the namespace and keep working from any
// thread once fn returns.
//
// Only the calling goroutine is inside the namespace: goroutines fn starts
// run in the caller's namespace. Paths under /sys still show the caller's
// mount namespace; use netlink or [NS.Command] to look at the namespace's
// devices. If the thread cannot be switched back, Do returns an error and
// leaves the calling goroutine locked to it, so that no other goroutine
// inherits a thread in the wrong namespace.
func (ns *NS) Do(fn func() error) (err error) {
	runtime.LockOSThread()
	// Open our own namespace only after locking: it must be this thread's.
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns %s: open current namespace: %w", ns.Name, err)
	}
	if err := ns.enter(); err != nil {
		unix.Close(orig)
		runtime.UnlockOSThread()
		return err
	}
	defer func() {
		restoreErr := unix.Setns(orig, unix.CLONE_NEWNET)
		unix.Close(orig)
		if restoreErr != nil {
			err = errors.Join(err, fmt.Errorf("netns %s: switch back: %w", ns.Name, restoreErr))
			return
		}
		runtime.UnlockOSThread()
	}()
	return fn()
}

func (ns *NS) enter() error {
	ns.mu.RLock()
	defer ns.mu.RUnlock()
	if ns.fd < 0 {
		return fmt.Errorf("netns %s: %w", ns.Name, os.ErrClosed)
	}
	if err := unix.Setns(ns.fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("netns %s: setns: %w", ns.Name, err)
	}
	return nil
}

// Command returns a command that runs name with args inside the namespace
// ("ip netns exec <ns> name args..."). Like [exec.Command], it does not
// start it.
func (ns *NS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// Close deletes the namespace (ip netns delete). The kernel destroys it,
// with every interface inside, once nothing else refers to it: sockets
// created inside by Do keep it alive until they are closed. Close is
// idempotent.
func (ns *NS) Close() error {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if ns.fd < 0 {
		return nil
	}
	unix.Close(ns.fd)
	ns.fd = -1
	unregister(ns)
	dropOwner(ns.Name)
	if err := deleteNS(ns.Name); err != nil {
		return fmt.Errorf("delete netns %s: %w", ns.Name, err)
	}
	return nil
}

// deleteNS runs "ip netns delete" and treats a namespace that is already gone
// as deleted.
func deleteNS(name string) error {
	err := run("ip", "netns", "delete", name)
	if err == nil {
		dropOwner(name)
		return nil
	}
	if _, statErr := os.Stat(filepath.Join(RunDir, name)); errors.Is(statErr, os.ErrNotExist) {
		return nil
	}
	return err
}

// CloseAll closes every namespace this process created and has not closed,
// and returns the errors joined. Watchdogs call it before they crash the
// process so that a hung test leaves nothing behind.
func CloseAll() error {
	registry.Lock()
	open := make([]*NS, 0, len(registry.live))
	for _, ns := range registry.live {
		open = append(open, ns)
	}
	registry.Unlock()
	var errs []error
	for _, ns := range open {
		errs = append(errs, ns.Close())
	}
	return errors.Join(errs...)
}

// Leftovers returns, sorted, the namespaces this process created that are
// still open or still listed by "ip netns list". After every test has
// cleaned up, it is empty.
func Leftovers() ([]string, error) {
	present, err := List()
	if err != nil {
		return nil, err
	}
	registry.Lock()
	defer registry.Unlock()
	var left []string
	for name := range registry.live {
		left = append(left, name)
	}
	for _, name := range present {
		if registry.created[name] && registry.live[name] == nil {
			left = append(left, name)
		}
	}
	slices.Sort(left)
	return left, nil
}

// List returns the names of all named network namespaces, sorted.
func List() ([]string, error) {
	entries, err := os.ReadDir(RunDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list netns: %w", err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names, nil
}

// run runs a command and folds its output into the error.
func run(name string, args ...string) error {
	_, err := output(name, args...)
	return err
}

// output runs a command and returns its standard output; on failure the
// error carries the command line and its standard error.
func output(name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			return out, fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
		}
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return out, nil
}

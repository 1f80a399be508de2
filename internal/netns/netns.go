package netns

import (
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

// RunDir is where ip(8) keeps the bind mounts that name network namespaces;
// this package names its namespaces there too, so "ip netns list" shows
// them.
const RunDir = "/run/netns"

// requestTimeout bounds every netlink request, so that a wedged kernel
// answer cannot hang a test or a command forever.
const requestTimeout = 30 * time.Second

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

// NewNS creates the network namespace name and opens it, as "ip netns add"
// would. The name must be a plain file name; it must not exist yet (the
// error then matches os.ErrExist).
func NewNS(name string) (*NS, error) {
	if err := validName(name); err != nil {
		return nil, fmt.Errorf("create netns %q: %w", name, err)
	}
	if err := createNamed(name); err != nil {
		return nil, fmt.Errorf("create netns %q: %w", name, err)
	}
	fd, err := unix.Open(filepath.Join(RunDir, name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		_ = deleteNamed(name)
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
// mount namespace; use netlink (the methods of [NS]) or [NS.Command] to
// look at the namespace's devices. If the thread cannot be switched back,
// Do returns an error and leaves the calling goroutine locked to it, so
// that no other goroutine inherits a thread in the wrong namespace.
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

// withFD runs fn with the namespace's open file, which stays open until fn
// returns.
func (ns *NS) withFD(fn func(fd int) error) error {
	ns.mu.RLock()
	defer ns.mu.RUnlock()
	if ns.fd < 0 {
		return fmt.Errorf("netns %s: %w", ns.Name, os.ErrClosed)
	}
	return fn(ns.fd)
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

// Command returns a command that runs name with args inside the namespace,
// as "ip netns exec <ns> name args..." would, without ip(8). Like
// [exec.Command], it looks name up in PATH now (Start reports a failed
// look-up) and does not start it; the caller may set Env, Dir, standard
// streams, ExtraFiles and SysProcAttr as usual.
//
// The command runs this binary (/proc/self/exe) with arguments that its
// copy of this package recognises before main: it switches into the
// namespace and into a mount namespace of its own whose /sys shows the
// namespace's devices, then executes the program in place, so the process
// the caller starts, signals and waits for is the program itself. Args
// therefore starts with that re-execution; Args[3:] are name and args.
// If the switch fails, the process prints why and exits with status 255.
func (ns *NS) Command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	if cmd.Err != nil {
		return cmd
	}
	cmd.Args = append([]string{execArg0, ns.Name, cmd.Path}, cmd.Args...)
	cmd.Path = selfExe
	return cmd
}

// Close deletes the namespace's name, as "ip netns delete" would. The
// kernel destroys the namespace, with every interface inside, once nothing
// else refers to it: sockets created inside by Do keep it alive until they
// are closed. Close is idempotent.
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

// Delete removes the name of the network namespace name, as "ip netns
// delete" does, whoever created it; a name that does not exist is no
// error. Prefer [NS.Close] for namespaces of this process: Delete is for
// leftovers found by [Leftovers] or [List].
func Delete(name string) error {
	if err := validName(name); err != nil {
		return fmt.Errorf("delete netns %q: %w", name, err)
	}
	if ns := lookupLive(name); ns != nil {
		return ns.Close()
	}
	if err := deleteNS(name); err != nil {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}

// deleteNS removes a namespace's name and its owner record; a namespace
// that is already gone counts as deleted.
func deleteNS(name string) error {
	if err := deleteNamed(name); err != nil {
		return err
	}
	dropOwner(name)
	return nil
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

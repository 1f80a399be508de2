package stack

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// nsHandle is the network namespace the stack was made in. The kernel
// sockets it makes later — port holds, neighbour look-ups — must be made
// there, whichever goroutine (and so thread, and so namespace) asks.
type nsHandle struct{ fd int }

// currentNS opens the calling thread's network namespace.
func currentNS() (*nsHandle, error) {
	fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open network namespace: %w", err)
	}
	return &nsHandle{fd: fd}, nil
}

// do runs fn on a thread in the namespace (the calling thread, switched
// there and back when it is elsewhere). Sockets fn makes belong to the
// namespace and work from any thread afterwards. If the thread cannot be
// switched back, it stays locked to the goroutine, so that Go retires it
// rather than run another goroutine in the wrong namespace.
func (h *nsHandle) do(fn func() error) error {
	if h == nil {
		return fn()
	}
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open network namespace: %w", err)
	}
	defer unix.Close(orig)
	var a, b unix.Stat_t
	if unix.Fstat(orig, &a) == nil && unix.Fstat(h.fd, &b) == nil && a.Ino == b.Ino && a.Dev == b.Dev {
		runtime.UnlockOSThread()
		return fn()
	}
	if err := unix.Setns(h.fd, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter the stack's network namespace: %w", err)
	}
	ferr := fn()
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("leave the stack's network namespace: %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}

func (h *nsHandle) close() {
	if h != nil && h.fd >= 0 {
		unix.Close(h.fd)
		h.fd = -1
	}
}

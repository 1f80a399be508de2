package stack

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"golang.org/x/sys/unix"
)

// portTable owns the stack's TCP ports: each is held by kernel sockets (one
// per address) so that the kernel neither answers on it nor gives it to
// another program, and, in shared-address mode, is in the XDP program's
// port map so that its segments come to the stack. Listeners, accepted
// connections and dialled connections each take a reference; the port is
// given back when the last one goes.
type portTable struct {
	mu       sync.Mutex
	held     map[uint16]*heldPort // guarded by mu
	steer    func(port uint16, add bool) error
	freebind bool      // hold with IP_FREEBIND: the address is configured nowhere
	ns       *nsHandle // where the holding sockets live
}

type heldPort struct {
	refs int
	fds  []int
}

func newPortTable(steer func(port uint16, add bool) error, freebind bool, ns *nsHandle) *portTable {
	return &portTable{held: map[uint16]*heldPort{}, steer: steer, freebind: freebind, ns: ns}
}

// acquire takes port (0: a port the kernel picks) on addrs, holding it with
// kernel sockets that listen when listen is set (so that ss shows the
// port, as scripts waiting for a listener expect). A port another program
// holds is EADDRINUSE. A port the stack holds already just gains a
// reference.
func (pt *portTable) acquire(port uint16, addrs []netip.Addr, listen bool) (uint16, error) {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	if port != 0 {
		if h := pt.held[port]; h != nil {
			if listen {
				return 0, fmt.Errorf("port %d: the stack uses it already: %w", port, unix.EADDRINUSE)
			}
			h.refs++
			return port, nil
		}
	}
	h := &heldPort{refs: 1}
	for _, a := range addrs {
		var fd int
		var p uint16
		err := pt.ns.do(func() (err error) {
			fd, p, err = holdSocket(a, port, listen, pt.freebind)
			return err
		})
		if err != nil {
			closeAll(h.fds)
			return 0, fmt.Errorf("hold %v: %w", netip.AddrPortFrom(a, port), err)
		}
		h.fds = append(h.fds, fd)
		port = p // the addresses share the first one's port
	}
	if pt.held[port] != nil { // the kernel cannot give a port we hold
		closeAll(h.fds)
		return 0, fmt.Errorf("port %d: held twice: %w", port, unix.EADDRINUSE)
	}
	if pt.steer != nil {
		if err := pt.steer(port, true); err != nil {
			closeAll(h.fds)
			return 0, err
		}
	}
	pt.held[port] = h
	return port, nil
}

// ref adds a reference to a held port (an accepted connection on a
// listener's port). It reports whether the port was held.
func (pt *portTable) ref(port uint16) bool {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	if h := pt.held[port]; h != nil {
		h.refs++
		return true
	}
	return false
}

// release drops a reference; the last one gives the port back.
func (pt *portTable) release(port uint16) {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	h := pt.held[port]
	if h == nil {
		return
	}
	if h.refs--; h.refs > 0 {
		return
	}
	delete(pt.held, port)
	if pt.steer != nil {
		_ = pt.steer(port, false) // the program is closing when this fails
	}
	closeAll(h.fds)
}

// ports lists the held ports.
func (pt *portTable) ports() []uint16 {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	out := make([]uint16, 0, len(pt.held))
	for p := range pt.held {
		out = append(out, p)
	}
	return out
}

// closeEverything releases every port at once (Stack.Close).
func (pt *portTable) closeEverything() {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	for p, h := range pt.held {
		closeAll(h.fds)
		delete(pt.held, p)
	}
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// holdSocket binds a kernel TCP socket to a:port (port 0: the kernel
// picks) and returns it with its port.
func holdSocket(a netip.Addr, port uint16, listen, freebind bool) (int, uint16, error) {
	a = a.Unmap()
	family := unix.AF_INET
	if a.Is6() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, 0, err
	}
	fail := func(err error) (int, uint16, error) {
		unix.Close(fd)
		return -1, 0, err
	}
	var sa unix.Sockaddr
	if a.Is6() {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return fail(err)
		}
		if freebind {
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1); err != nil {
				return fail(err)
			}
		}
		sa = &unix.SockaddrInet6{Addr: a.As16(), Port: int(port)}
	} else {
		if freebind {
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_FREEBIND, 1); err != nil {
				return fail(err)
			}
		}
		sa = &unix.SockaddrInet4{Addr: a.As4(), Port: int(port)}
	}
	if err := unix.Bind(fd, sa); err != nil {
		if errors.Is(err, unix.EADDRINUSE) {
			err = fmt.Errorf("another program uses this port: %w", err)
		}
		return fail(err)
	}
	if listen {
		if err := unix.Listen(fd, 1); err != nil {
			return fail(err)
		}
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		return fail(err)
	}
	switch g := got.(type) {
	case *unix.SockaddrInet4:
		port = uint16(g.Port)
	case *unix.SockaddrInet6:
		port = uint16(g.Port)
	}
	return fd, port, nil
}

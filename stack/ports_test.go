package stack

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// TestHoldSocketFamilies: an IPv6 address is held with an AF_INET6 socket
// and an IPv4 one, v4-mapped or not, with an AF_INET socket, listening on
// the address itself (IP_FREEBIND: none of these is configured here).
func TestHoldSocketFamilies(t *testing.T) {
	for _, tc := range []struct {
		addr   string
		family int
		want   string
	}{
		{"192.0.2.7", unix.AF_INET, "192.0.2.7"},
		{"::ffff:192.0.2.7", unix.AF_INET, "192.0.2.7"},
		{"2001:db8::7", unix.AF_INET6, "2001:db8::7"},
	} {
		fd, port, err := holdSocket(netip.MustParseAddr(tc.addr), 0, true, true)
		if err != nil {
			t.Errorf("hold %s: %v", tc.addr, err)
			continue
		}
		sa, err := unix.Getsockname(fd)
		accepting, aerr := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		unix.Close(fd)
		if err != nil || aerr != nil {
			t.Fatalf("%s: %v %v", tc.addr, err, aerr)
		}
		var got netip.Addr
		family := 0
		switch sa := sa.(type) {
		case *unix.SockaddrInet4:
			got, family = netip.AddrFrom4(sa.Addr), unix.AF_INET
		case *unix.SockaddrInet6:
			got, family = netip.AddrFrom16(sa.Addr), unix.AF_INET6
		}
		if family != tc.family || got.String() != tc.want || accepting != 1 || port == 0 {
			t.Errorf("hold %s: family %d address %v port %d listening %d; want %d %s 1", tc.addr, family, got, port, accepting, tc.family, tc.want)
		}
	}
}

// TestPortTable: a port is held once per stack, references keep it, the
// last release gives it back (steering it off again), and a port a kernel
// socket holds is EADDRINUSE.
func TestPortTable(t *testing.T) {
	var steered []uint16
	steer := func(port uint16, add bool) error {
		if add {
			steered = append(steered, port)
		} else {
			steered = slices.DeleteFunc(steered, func(p uint16) bool { return p == port })
		}
		return nil
	}
	pt := newPortTable(steer, true, nil)
	a := []netip.Addr{netip.MustParseAddr("192.0.2.9"), netip.MustParseAddr("2001:db8::9")}
	port, err := pt.acquire(0, a, true)
	if err != nil || port == 0 || !slices.Equal(steered, []uint16{port}) {
		t.Fatalf("acquire: port %d, %v, steered %v", port, err, steered)
	}
	if _, err := pt.acquire(port, a, true); !errors.Is(err, unix.EADDRINUSE) {
		t.Fatalf("second listener on %d: %v", port, err)
	}
	if !pt.ref(port) || pt.ref(port+1) {
		t.Fatal("ref")
	}
	// A kernel socket cannot take the port while it is held.
	fd, _, err := holdSocket(a[0], port, false, true)
	if !errors.Is(err, unix.EADDRINUSE) {
		if err == nil {
			unix.Close(fd)
		}
		t.Fatalf("kernel bind on a held port: %v", err)
	}
	pt.release(port)
	if len(pt.ports()) != 1 {
		t.Fatal("released with a reference left")
	}
	pt.release(port)
	if len(pt.ports()) != 0 || len(steered) != 0 {
		t.Fatalf("after the last release: held %v, steered %v", pt.ports(), steered)
	}
	fd, _, err = holdSocket(a[0], port, true, true)
	if err != nil {
		t.Fatalf("the port did not come back: %v", err)
	}
	unix.Close(fd)
	// Held by a kernel socket: the stack cannot take it.
	if _, err := pt.acquire(port, a[:1], true); err != nil {
		t.Fatal(err) // fd is closed: free again
	}
	pt.closeEverything()
}

// TestInterfacePrefixes: lo's IPv4 address comes as IPv4 (not v4-mapped)
// with its prefix length.
func TestInterfacePrefixes(t *testing.T) {
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err) // every namespace has lo
	}
	ps, err := InterfacePrefixes(lo)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(ps, netip.MustParsePrefix("127.0.0.1/8")) {
		t.Fatalf("lo: %v, want 127.0.0.1/8 among them", ps)
	}
}

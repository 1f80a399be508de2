package stack

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"golang.org/x/sys/unix"
)

// The stack's address is either the kernel's too (shared) or the stack's
// alone (dedicated).
//
// # Shared
//
// As on every real host: the address is configured on the interface. The
// XDP program takes only TCP to the ports the stack owns (a BPF map the
// stack keeps as listeners and connections come and go) and passes
// everything else — ARP, NDP, ICMP, other ports, other protocols — to the
// kernel. The kernel keeps answering ARP and NDP; the stack learns next-hop
// MACs from the frames that open its connections and, for the connections
// it opens, from the kernel's neighbour table. Each port the stack owns is
// held by a kernel socket, so the kernel never answers on it or gives it to
// another program (EADDRINUSE, as between two kernel sockets).
//
// # Dedicated
//
// The address is configured nowhere: the XDP program takes all of its
// traffic, ARP and NDP included, and the stack answers them. Ports are
// held by kernel sockets here too (with IP_FREEBIND).

// AddressMode says how the stack shares its address with the kernel.
type AddressMode uint8

// Address modes.
const (
	// AddressAuto is shared when the address is configured on the
	// interface and dedicated when it is configured nowhere.
	AddressAuto AddressMode = iota
	// AddressShared: the address is the kernel's too; the stack takes
	// only its own ports' TCP traffic.
	AddressShared
	// AddressDedicated: the address is the stack's alone; it takes all of
	// the address's traffic.
	AddressDedicated
)

// String names the mode as ParseAddressMode reads it.
func (m AddressMode) String() string {
	switch m {
	case AddressAuto:
		return "auto"
	case AddressShared:
		return "shared"
	case AddressDedicated:
		return "dedicated"
	}
	return fmt.Sprintf("AddressMode(%d)", uint8(m))
}

// ParseAddressMode reads "auto", "shared" or "dedicated".
func ParseAddressMode(s string) (AddressMode, error) {
	for _, m := range []AddressMode{AddressAuto, AddressShared, AddressDedicated} {
		if s == m.String() {
			return m, nil
		}
	}
	return 0, fmt.Errorf("address mode %q: want auto, shared or dedicated: %w", s, unix.EINVAL)
}

// kernelAddrs lists the addresses configured on each interface, read in the
// calling thread's network namespace.
func kernelAddrs() (map[string][]netip.Prefix, error) {
	ifcs, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	out := map[string][]netip.Prefix{}
	for _, ifc := range ifcs {
		ps, err := InterfacePrefixes(&ifc)
		if err != nil {
			return nil, err
		}
		if len(ps) > 0 {
			out[ifc.Name] = ps
		}
	}
	return out, nil
}

// InterfacePrefixes lists the addresses configured on ifc with their
// prefix lengths (IPv4 ones as IPv4, not v4-mapped), in the kernel's order.
func InterfacePrefixes(ifc *net.Interface) ([]netip.Prefix, error) {
	addrs, err := ifc.Addrs()
	if err != nil {
		return nil, err
	}
	var ps []netip.Prefix
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			ip, _ := netip.AddrFromSlice(ipn.IP)
			ones, _ := ipn.Mask.Size()
			ps = append(ps, netip.PrefixFrom(ip.Unmap(), ones))
		}
	}
	return ps, nil
}

// chooseAddressMode decides the mode for the stack's addresses on ifname,
// given the kernel's addresses, and says why in words.
func chooseAddressMode(want AddressMode, ifname string, addrs []netip.Prefix, kernel map[string][]netip.Prefix) (AddressMode, string, error) {
	where := func(a netip.Addr) string {
		for name, ps := range kernel {
			for _, p := range ps {
				if p.Addr() == a {
					return name
				}
			}
		}
		return ""
	}
	var here, nowhere []string
	for _, p := range addrs {
		switch w := where(p.Addr()); w {
		case ifname:
			here = append(here, p.Addr().String())
		case "":
			nowhere = append(nowhere, p.Addr().String())
		default:
			return 0, "", fmt.Errorf("address %v is configured on %s, not on %s: the stack serves it only on the interface that has it: %w",
				p.Addr(), w, ifname, unix.EADDRNOTAVAIL)
		}
	}
	ifAddrs := func() string {
		var s []string
		for _, p := range kernel[ifname] {
			s = append(s, p.String())
		}
		if len(s) == 0 {
			return "none"
		}
		return strings.Join(s, ", ")
	}
	switch {
	case want == AddressShared && len(nowhere) > 0:
		return 0, "", fmt.Errorf("shared address mode: %s is not configured on %s (its addresses: %s): %w",
			strings.Join(nowhere, ", "), ifname, ifAddrs(), unix.EADDRNOTAVAIL)
	case want == AddressDedicated && len(here) > 0:
		return 0, "", fmt.Errorf("dedicated address mode: %s is configured on %s, so the kernel uses it too; use the shared mode or an address configured nowhere: %w",
			strings.Join(here, ", "), ifname, unix.EADDRINUSE)
	case len(here) > 0 && len(nowhere) > 0:
		return 0, "", fmt.Errorf("%s is configured on %s but %s is not: give the stack addresses of one kind (all the kernel's, or none of them): %w",
			strings.Join(here, ", "), ifname, strings.Join(nowhere, ", "), unix.EINVAL)
	case len(here) > 0:
		return AddressShared, fmt.Sprintf("%s is configured on %s: the kernel keeps ARP/NDP and every flow but the stack's ports", strings.Join(here, ", "), ifname), nil
	}
	return AddressDedicated, fmt.Sprintf("%s is configured on no interface: the stack answers ARP/NDP for it and takes all of its traffic", strings.Join(nowhere, ", ")), nil
}

// AddressMode reports the stack's address mode and why it was chosen.
func (s *Stack) AddressMode() (AddressMode, string) { return s.addrMode, s.addrModeWhy }

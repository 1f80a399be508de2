package stack

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
)

// In shared-address mode ARP and NDP belong to the kernel, so gVisor does no
// link address resolution (the link endpoint does not ask for it) and the
// link endpoint writes each frame's destination MAC from this table. It
// learns the MAC of a peer from the first frame of a connection (a SYN or
// SYN-ACK: its source MAC is the next hop back, router or peer), and, for
// connections the stack opens, from the kernel's neighbour table.

// maxNeighbours bounds the table: a SYN flood from spoofed addresses must
// not grow it without end.
const maxNeighbours = 4096

type neighTable struct {
	mu   sync.RWMutex
	m    map[[16]byte]*neighEntry   // guarded by mu; entries are never changed, only replaced
	last atomic.Pointer[neighEntry] // one-entry cache for the transmit path: points into m, never allocates
	miss atomic.Uint64              // frames sent with no known next hop
}

type neighEntry struct {
	ip  [16]byte
	mac tcpip.LinkAddress
}

func newNeighTable() *neighTable { return &neighTable{m: map[[16]byte]*neighEntry{}} }

// learn records that ip is reached through mac.
func (t *neighTable) learn(ip [16]byte, mac []byte) {
	t.mu.RLock()
	old, ok := t.m[ip]
	t.mu.RUnlock()
	if ok && string(old.mac) == string(mac) {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.m) >= maxNeighbours {
		for k := range t.m { // evict one, any one
			delete(t.m, k)
			break
		}
	}
	t.m[ip] = &neighEntry{ip: ip, mac: tcpip.LinkAddress(mac)}
}

// lookup returns the MAC to send to ip (16-byte form), "" if unknown.
func (t *neighTable) lookup(ip [16]byte) tcpip.LinkAddress {
	if e := t.last.Load(); e != nil && e.ip == ip {
		return e.mac
	}
	t.mu.RLock()
	e := t.m[ip]
	t.mu.RUnlock()
	if e == nil {
		return ""
	}
	t.last.Store(e)
	return e.mac
}

// destMAC picks the destination MAC of a frame gVisor sends to remote via
// nextHop: multicast groups map to their MACs, others come from the table.
func (t *neighTable) destMAC(nextHop, remote tcpip.Address) tcpip.LinkAddress {
	for _, a := range []tcpip.Address{nextHop, remote} {
		if a.Len() == 0 {
			continue
		}
		b := a.AsSlice()
		switch {
		case a.Len() == 16 && b[0] == 0xff:
			return tcpip.LinkAddress([]byte{0x33, 0x33, b[12], b[13], b[14], b[15]})
		case a.Len() == 4 && b[0]&0xf0 == 0xe0:
			return tcpip.LinkAddress([]byte{0x01, 0x00, 0x5e, b[1] & 0x7f, b[2], b[3]})
		}
		if mac := t.lookup(as16(b)); mac != "" {
			return mac
		}
	}
	t.miss.Add(1)
	return ""
}

func as16(b []byte) [16]byte {
	if len(b) == 4 {
		return netip.AddrFrom4([4]byte(b)).As16()
	}
	return [16]byte(b)
}

// resolve finds the MAC of the next hop to remote through the kernel's
// neighbour table on ifindex, asking the kernel to resolve it when it has
// no entry, and records it for remote.
func (t *neighTable) resolve(ctx context.Context, ns *nsHandle, ifindex int, remote, nextHop netip.Addr) error {
	if mac := t.lookup(remote.As16()); mac != "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	asked := false
	for {
		var mac []byte
		err := ns.do(func() (err error) {
			if mac, err = kernelNeighbour(ifindex, nextHop); err == nil && mac == nil && !asked {
				askKernelToResolve(nextHop)
				asked = true
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("neighbour %v: %w", nextHop, err)
		}
		if mac != nil {
			t.learn(remote.As16(), mac)
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("neighbour %v: the kernel could not resolve it: %w", nextHop, unix.EHOSTUNREACH)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// kernelNeighbour looks ip up in the kernel's neighbour table on ifindex;
// nil when there is no usable entry.
func kernelNeighbour(ifindex int, ip netip.Addr) ([]byte, error) {
	family := unix.AF_INET
	if ip.Is6() {
		family = unix.AF_INET6
	}
	rib, err := syscall.NetlinkRIB(unix.RTM_GETNEIGH, family)
	if err != nil {
		return nil, err
	}
	msgs, err := syscall.ParseNetlinkMessage(rib)
	if err != nil {
		return nil, err
	}
	for _, m := range msgs {
		if m.Header.Type == unix.RTM_NEWNEIGH {
			if mac := parseNeighbour(m.Data, ifindex, ip); mac != nil {
				return mac, nil
			}
		}
	}
	return nil, nil
}

// parseNeighbour reads one RTM_NEWNEIGH message (struct ndmsg, then
// attributes) and returns its link-layer address if it is a usable entry
// for ip on ifindex.
func parseNeighbour(b []byte, ifindex int, ip netip.Addr) []byte {
	const usable = unix.NUD_REACHABLE | unix.NUD_STALE | unix.NUD_DELAY | unix.NUD_PROBE | unix.NUD_PERMANENT
	if len(b) < unix.SizeofNdMsg {
		return nil
	}
	idx := int32(binary.NativeEndian.Uint32(b[4:8]))
	state := binary.NativeEndian.Uint16(b[8:10])
	if int(idx) != ifindex || state&usable == 0 {
		return nil
	}
	var dst netip.Addr
	var lladdr []byte
	for a := b[unix.SizeofNdMsg:]; len(a) >= 4; {
		n := int(binary.NativeEndian.Uint16(a[0:2]))
		if n < 4 || n > len(a) {
			return nil
		}
		switch v := a[4:n]; binary.NativeEndian.Uint16(a[2:4]) {
		case unix.NDA_DST:
			dst, _ = netip.AddrFromSlice(v)
		case unix.NDA_LLADDR:
			lladdr = v
		}
		a = a[min((n+3)&^3, len(a)):]
	}
	if dst.Unmap() != ip.Unmap() || len(lladdr) != 6 {
		return nil
	}
	return append([]byte(nil), lladdr...)
}

// askKernelToResolve makes the kernel resolve ip: an empty UDP datagram to
// its discard port needs the neighbour, so the kernel sends ARP or a
// neighbour solicitation. (The datagram itself is harmless.)
func askKernelToResolve(ip netip.Addr) {
	family := unix.AF_INET
	var sa unix.Sockaddr = &unix.SockaddrInet4{Addr: ip.Unmap().As4(), Port: 9}
	if ip.Is6() && !ip.Is4In6() {
		family = unix.AF_INET6
		sa = &unix.SockaddrInet6{Addr: ip.As16(), Port: 9}
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	_ = unix.Sendto(fd, nil, 0, sa)
}

// localAddrFor is the stack's address of remote's family.
func (s *Stack) localAddrFor(remote netip.Addr) (netip.Addr, bool) {
	for _, p := range s.prefixes {
		if p.Addr().Is4() == remote.Unmap().Is4() {
			return p.Addr(), true
		}
	}
	return netip.Addr{}, false
}

// nextHop is the address whose MAC frames to remote carry: remote itself
// on one of the stack's prefixes, else the configured gateway.
func (s *Stack) nextHop(remote netip.Addr) netip.Addr {
	remote = remote.Unmap()
	for _, p := range s.prefixes {
		if p.Contains(remote) {
			return remote
		}
	}
	if g := s.cfg.Gateway; g.IsValid() && g.Is4() == remote.Is4() {
		return g
	}
	return remote
}

package stack

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
)

// ndMsg builds an RTM_NEWNEIGH body: struct ndmsg, then NDA_DST and
// NDA_LLADDR.
func ndMsg(ifindex int32, state uint16, dst netip.Addr, mac []byte) []byte {
	b := make([]byte, unix.SizeofNdMsg)
	b[0] = unix.AF_INET
	if dst.Is6() {
		b[0] = unix.AF_INET6
	}
	binary.NativeEndian.PutUint32(b[4:], uint32(ifindex))
	binary.NativeEndian.PutUint16(b[8:], state)
	attr := func(typ uint16, v []byte) {
		a := make([]byte, 4, (4+len(v)+3)&^3)
		binary.NativeEndian.PutUint16(a[0:], uint16(4+len(v)))
		binary.NativeEndian.PutUint16(a[2:], typ)
		a = append(a, v...)
		for len(a)%4 != 0 {
			a = append(a, 0)
		}
		b = append(b, a...)
	}
	attr(unix.NDA_DST, dst.AsSlice())
	if mac != nil {
		attr(unix.NDA_LLADDR, mac)
	}
	return b
}

func TestParseNeighbour(t *testing.T) {
	mac := []byte{2, 0, 0, 0, 0, 9}
	v4 := netip.MustParseAddr("10.1.2.3")
	v6 := netip.MustParseAddr("fd00::3")
	for _, tc := range []struct {
		name string
		msg  []byte
		ip   netip.Addr
		want []byte
	}{
		{"reachable", ndMsg(7, unix.NUD_REACHABLE, v4, mac), v4, mac},
		{"stale", ndMsg(7, unix.NUD_STALE, v4, mac), v4, mac},
		{"permanent ipv6", ndMsg(7, unix.NUD_PERMANENT, v6, mac), v6, mac},
		{"v4-mapped query", ndMsg(7, unix.NUD_REACHABLE, v4, mac), netip.AddrFrom16(v4.As16()), mac},
		{"incomplete", ndMsg(7, unix.NUD_INCOMPLETE, v4, mac), v4, nil},
		{"failed", ndMsg(7, unix.NUD_FAILED, v4, mac), v4, nil},
		{"other interface", ndMsg(8, unix.NUD_REACHABLE, v4, mac), v4, nil},
		{"other address", ndMsg(7, unix.NUD_REACHABLE, v4, mac), netip.MustParseAddr("10.1.2.4"), nil},
		{"no lladdr", ndMsg(7, unix.NUD_REACHABLE, v4, nil), v4, nil},
		{"short lladdr", ndMsg(7, unix.NUD_REACHABLE, v4, mac[:4]), v4, nil},
		{"truncated", ndMsg(7, unix.NUD_REACHABLE, v4, mac)[:20], v4, nil},
		{"empty", nil, v4, nil},
	} {
		if got := parseNeighbour(tc.msg, 7, tc.ip); !bytes.Equal(got, tc.want) {
			t.Errorf("%s: %x, want %x", tc.name, got, tc.want)
		}
	}
}

// FuzzParseNeighbour: any bytes parse without a panic, and a MAC comes
// back only for a 6-byte link-layer address of the asked-for address.
func FuzzParseNeighbour(f *testing.F) {
	f.Add(ndMsg(7, unix.NUD_REACHABLE, netip.MustParseAddr("10.1.2.3"), []byte{2, 0, 0, 0, 0, 9}))
	f.Add(ndMsg(7, unix.NUD_STALE, netip.MustParseAddr("fd00::3"), []byte{2, 0, 0, 0, 0, 9}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, ip := range []netip.Addr{netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("fd00::3")} {
			mac := parseNeighbour(b, 7, ip)
			if mac != nil && (len(mac) != 6 || !bytes.Contains(b, mac) || !bytes.Contains(b, ip.AsSlice())) {
				t.Fatalf("%x: mac %x for %v", b, mac, ip)
			}
		}
	})
}

// TestNeighTable: learned MACs come back by address and next hop;
// multicast maps to its group MAC; an unknown next hop is counted.
func TestNeighTable(t *testing.T) {
	nt := newNeighTable()
	peer := netip.MustParseAddr("10.1.2.3")
	mac := []byte{2, 0, 0, 0, 0, 9}
	nt.learn(peer.As16(), mac)
	a := tcpip.AddrFrom4(peer.As4())
	if got := nt.destMAC(a, a); string(got) != string(mac) {
		t.Fatalf("next hop: %x", got)
	}
	if got := nt.destMAC(tcpip.AddrFrom4([4]byte{10, 1, 2, 254}), a); string(got) != string(mac) {
		t.Fatalf("remote behind an unknown next hop: %x", got)
	}
	if got := nt.destMAC(tcpip.AddrFrom4([4]byte{224, 0, 0, 251}), tcpip.Address{}); string(got) != "\x01\x00\x5e\x00\x00\xfb" {
		t.Fatalf("IPv4 multicast: %x", got)
	}
	g := netip.MustParseAddr("ff02::1:ff00:2").As16()
	if got := nt.destMAC(tcpip.AddrFrom16(g), tcpip.Address{}); string(got) != "\x33\x33\xff\x00\x00\x02" {
		t.Fatalf("IPv6 multicast: %x", got)
	}
	if got := nt.destMAC(tcpip.AddrFrom4([4]byte{10, 9, 9, 9}), tcpip.Address{}); got != "" || nt.miss.Load() != 1 {
		t.Fatalf("unknown: %x, %d misses", got, nt.miss.Load())
	}
	// The transmit path's lookup allocates nothing, even when the peers
	// alternate and the one-entry cache misses every time.
	other := netip.MustParseAddr("10.1.2.4")
	nt.learn(other.As16(), mac)
	b := tcpip.AddrFrom4(other.As4())
	if n := testing.AllocsPerRun(1000, func() { nt.destMAC(a, a); nt.destMAC(b, b) }); n != 0 {
		t.Fatalf("%v allocations per pair of lookups", n)
	}
	for i := range maxNeighbours + 10 {
		nt.learn(netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)}).As16(), mac)
	}
	if n := len(nt.m); n > maxNeighbours {
		t.Fatalf("%d entries, bound %d", n, maxNeighbours)
	}
}

// FuzzPeekFlow: the alert path's best-effort flow reader never panics and
// reports a port only when it found a TCP header.
func FuzzPeekFlow(f *testing.F) {
	f.Add(buildFrame(nil, nil, []byte("x"), 1, tcpFlagAck))
	f.Add(buildFrame6(ipProtoTCP, nil, []byte("x"), 1))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		peer, lport := peekFlow(b)
		if (peer.Port() != 0 || lport != 0) && len(b) < ethHdrLen+20+4 {
			t.Fatalf("%x: ports from a frame too short to hold them: %v %d", b, peer, lport)
		}
	})
}

package umem

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// progIPv6Frame builds an Ethernet + IPv6 frame with the given destination
// and a small payload.
func progIPv6FrameTo(dst netip.Addr, version byte, n int) []byte {
	f := make([]byte, 14+40+8)
	binary.BigEndian.PutUint16(f[12:], 0x86dd)
	f[14] = version << 4
	binary.BigEndian.PutUint16(f[14+4:], 8)
	f[14+6] = 58 // ICMPv6
	f[14+7] = 255
	src := netip.MustParseAddr("fd00:211::1").As16()
	copy(f[14+8:], src[:])
	d := dst.As16()
	copy(f[14+24:], d[:])
	return f[:n]
}

// TestProgramIPv6: IPv6 packets to the stack's address or to its
// solicited-node group are matched; anything else passes untouched.
func TestProgramIPv6(t *testing.T) {
	ours := netip.MustParseAddr("fd00:211::2")
	p := progLoadMatcher(t, ProgramConfig{IPv4: []netip.Addr{netip.MustParseAddr("10.1.1.2")}, IPv6: []netip.Addr{ours}})
	cases := []struct {
		name  string
		frame []byte
		want  uint32
	}{
		{"to us", progIPv6FrameTo(ours, 6, 62), progXDPRedirect},
		{"neighbour solicitation group", progIPv6FrameTo(netip.MustParseAddr("ff02::1:ff00:2"), 6, 62), progXDPRedirect},
		{"other solicited-node group", progIPv6FrameTo(netip.MustParseAddr("ff02::1:ff00:3"), 6, 62), progXDPPass},
		{"all nodes", progIPv6FrameTo(netip.MustParseAddr("ff02::1"), 6, 62), progXDPPass},
		{"other address", progIPv6FrameTo(netip.MustParseAddr("fd00:211::3"), 6, 62), progXDPPass},
		{"prefix differs", progIPv6FrameTo(netip.MustParseAddr("fd01:211::2"), 6, 62), progXDPPass},
		{"wrong version", progIPv6FrameTo(ours, 4, 62), progXDPPass},
		{"truncated header", progIPv6FrameTo(ours, 6, 53), progXDPPass},
	}
	for _, c := range cases {
		got, err := progRun(t, p, c.frame, 0, 0)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got != c.want {
			t.Errorf("%s: verdict %d, want %d", c.name, got, c.want)
		}
	}
}

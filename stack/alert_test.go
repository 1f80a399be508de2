package stack

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestAlertBadChecksum: three frames in a row of one flow with bad TCP
// checksums raise one alert naming the flow and the fix; a good segment of
// the flow in between restarts the count; later runs raise nothing more.
func TestAlertBadChecksum(t *testing.T) {
	alerts := make(chan Alert, 4)
	ip := newInproc(t, Config{OnAlert: func(a Alert) { alerts <- a }})
	bad := func(sport uint16) []byte {
		f := segment(sport, 5201, 1, 0, tcpFlagSyn, nil, nil)
		f[14+20+16] ^= 0xff // the TCP checksum
		return f
	}
	ip.inject(bad(40000), bad(40000), segment(40000, 5201, 1, 0, tcpFlagAck|tcpFlagRst, nil, nil), bad(40000), bad(40001))
	select {
	case a := <-alerts:
		t.Fatalf("alert %v without three drops in a row from one flow", a)
	case <-time.After(50 * time.Millisecond):
	}
	ip.inject(bad(40001), bad(40001))
	var a Alert
	select {
	case a = <-alerts:
	case <-time.After(5 * time.Second):
		t.Fatal("no alert after three bad checksums in a row")
	}
	want := netip.AddrPortFrom(netip.AddrFrom4(ipPeer), 40001)
	if a.Reason != AlertBadChecksum || a.Peer != want || a.LocalPort != 5201 || a.Count != alertRun {
		t.Fatalf("alert %+v, want bad-checksum from %v to 5201", a, want)
	}
	if s := a.String(); !strings.Contains(s, "ethtool -K") || !strings.Contains(s, want.String()) {
		t.Fatalf("alert text %q lacks the fix or the flow", s)
	}
	ip.inject(bad(40002), bad(40002), bad(40002), bad(40002))
	select {
	case a := <-alerts:
		t.Fatalf("second alert %v for the same reason", a)
	case <-time.After(50 * time.Millisecond):
	}
	if d := ip.s.Stats().Drops(); d.BadTCPChecksum != 10 {
		t.Fatalf("drops %+v, want 10 bad TCP checksums", d)
	}
}

// TestPeekFlow reads the flow of IPv4 and IPv6 TCP frames and gives up
// cleanly on everything else.
func TestPeekFlow(t *testing.T) {
	v4 := buildFrame(nil, nil, []byte("x"), 1, tcpFlagAck)
	if peer, lport := peekFlow(v4); peer != netip.MustParseAddrPort("10.0.0.1:40000") || lport != 5201 {
		t.Fatalf("IPv4: %v %d", peer, lport)
	}
	v6 := buildFrame6(ipProtoTCP, nil, []byte("x"), 1)
	if peer, lport := peekFlow(v6); !peer.Addr().Is6() || peer.Port() == 0 || lport == 0 {
		t.Fatalf("IPv6: %v %d", peer, lport)
	}
	for _, b := range [][]byte{nil, v4[:10], v4[:20], v6[:30], make([]byte, 60)} {
		if peer, _ := peekFlow(b); peer.Port() != 0 {
			t.Fatalf("%d bytes: %v", len(b), peer)
		}
	}
}

// TestDropsString lists every counter and faults only when injected.
func TestDropsString(t *testing.T) {
	d := Drops{Malformed: 1, BadTCPChecksum: 2, FillRingEmpty: 3}
	if s := d.String(); !strings.Contains(s, "1 malformed") || !strings.Contains(s, "2 bad TCP checksum") || !strings.Contains(s, "3 fill-ring-empty") || strings.Contains(s, "injected") {
		t.Fatal(s)
	}
	d.Faults.Dropped = 4
	if s := d.String(); !strings.Contains(s, "injected: 4 dropped") {
		t.Fatal(s)
	}
}

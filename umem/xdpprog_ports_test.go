package umem

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// The shared-address matcher's reference: what the program must decide
// with a port map, written plainly in Go.

var (
	progOurs6  = netip.MustParseAddr("fd00:211::2")
	progOther6 = netip.MustParseAddr("fd00:211::3")
	progPorts  = []uint16{5201, 0x9c40, 0x8001} // 0x8001: high bit set in both bytes' order
)

func progRefPorts(addrs4, addrs6 []netip.Addr, ports []uint16, f []byte) progVerdict {
	if len(f) < 14 {
		return progPass
	}
	var l4 []byte
	switch binary.BigEndian.Uint16(f[12:]) {
	case 0x0800:
		if len(f) < 34 {
			return progPass
		}
		ip := f[14:]
		ihl := int(ip[0]&0x0f) * 4
		if ip[0]>>4 != 4 || ihl < 20 || !slices.Contains(addrs4, netip.AddrFrom4([4]byte(ip[16:20]))) {
			return progPass
		}
		if ip[9] != 6 || binary.BigEndian.Uint16(ip[6:])&0x1fff != 0 {
			return progPass
		}
		l4 = ip[min(ihl, len(ip)):]
	case 0x86dd:
		if len(f) < 54 {
			return progPass
		}
		ip := f[14:]
		if ip[0]>>4 != 6 || !slices.Contains(addrs6, netip.AddrFrom16([16]byte(ip[24:40]))) || ip[6] != 6 {
			return progPass
		}
		l4 = ip[40:]
	default:
		return progPass
	}
	if len(l4) < 4 || !slices.Contains(ports, binary.BigEndian.Uint16(l4[2:])) {
		return progPass
	}
	return progIPv4
}

// progTCPTo is a TCP header to dport.
func progTCPTo(dport uint16) []byte {
	h := slices.Clone(progTCP)
	binary.BigEndian.PutUint16(h[2:], dport)
	return h
}

func progIPv6TCP(dst netip.Addr, nh byte, l4 []byte) []byte {
	ip := make([]byte, 40, 40+len(l4))
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(l4)))
	ip[6] = nh
	ip[7] = 64
	src := netip.MustParseAddr("fd00:211::1").As16()
	copy(ip[8:], src[:])
	d := dst.As16()
	copy(ip[24:], d[:])
	return progEth(0x86dd, append(ip, l4...))
}

func progFragment(f []byte, field uint16) []byte {
	g := slices.Clone(f)
	binary.BigEndian.PutUint16(g[14+6:], field)
	return g
}

func progLoadPorts(t testing.TB) *Program {
	t.Helper()
	p := progLoadMatcher(t, ProgramConfig{IPv4: progAddrs, IPv6: []netip.Addr{progOurs6}, Ports: true})
	for _, port := range progPorts {
		if err := p.AddPort(port); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// TestProgramPorts: in shared-address mode only TCP to a port in the map,
// at one of the addresses, is taken; ARP, neighbour discovery, other
// protocols and ports, and later IPv4 fragments pass to the kernel.
func TestProgramPorts(t *testing.T) {
	p := progLoadPorts(t)
	tcp := progIPv4Frame(progPeerIP, progOurs, 6, nil, progTCPTo(5201))
	cases := []struct {
		name  string
		frame []byte
		want  progVerdict
	}{
		{"tcp to a port of ours", tcp, progIPv4},
		{"second address, options, other port of ours", progIPv4Frame(progPeerIP, progOurs2, 6, progIPOpts40, progTCPTo(0x8001)), progIPv4},
		{"tcp to a kernel port", progIPv4Frame(progPeerIP, progOurs, 6, nil, progTCPTo(22)), progPass},
		{"tcp to another address", progIPv4Frame(progPeerIP, progOther, 6, nil, progTCPTo(5201)), progPass},
		{"udp to a port of ours", progIPv4Frame(progPeerIP, progOurs, 17, nil, progTCPTo(5201)), progPass},
		{"icmp", progIPv4Frame(progPeerIP, progOurs, 1, nil, progICMP), progPass},
		{"arp request for our address", progARPFrame(1, progPeerIP, progOurs), progPass},
		{"arp reply", progARPFrame(2, progPeerIP, progOurs), progPass},
		{"first fragment (MF)", progFragment(tcp, 0x2000), progIPv4},
		{"later fragment", progFragment(tcp, 0x0010), progPass},
		{"last fragment", progFragment(tcp, 0x0001), progPass},
		{"DF", progFragment(tcp, 0x4000), progIPv4},
		{"ports cut off", tcp[:14+20+3], progPass},
		{"ports just in", tcp[:14+20+4], progIPv4},
		{"ipv6 tcp to a port of ours", progIPv6TCP(progOurs6, 6, progTCPTo(0x9c40)), progIPv4},
		{"ipv6 tcp to a kernel port", progIPv6TCP(progOurs6, 6, progTCPTo(443)), progPass},
		{"ipv6 to another address", progIPv6TCP(progOther6, 6, progTCPTo(5201)), progPass},
		{"ipv6 neighbour solicitation", progIPv6TCP(netip.MustParseAddr("ff02::1:ff00:2"), 58, progICMP), progPass},
		{"ipv6 tcp behind a hop-by-hop header", progIPv6TCP(progOurs6, 0, append([]byte{6, 0, 0, 0, 0, 0, 0, 0}, progTCPTo(5201)...)), progPass},
		{"ipv6 ports cut off", progIPv6TCP(progOurs6, 6, progTCPTo(5201)[:3]), progPass},
	}
	for _, c := range cases {
		if want := progRefPorts(progAddrs, []netip.Addr{progOurs6}, progPorts, c.frame); want != c.want {
			t.Fatalf("%s: the reference says %v, the table %v", c.name, want, c.want)
		}
		if got := progDecide(t, p, c.frame); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
	// Ports come and go.
	if err := p.DeletePort(5201); err != nil {
		t.Fatal(err)
	}
	if got := progDecide(t, p, tcp); got != progPass {
		t.Errorf("after DeletePort: %v", got)
	}
	if err := p.DeletePort(5201); err != nil {
		t.Errorf("second delete: %v", err)
	}
	got, err := p.Ports()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if want := []uint16{0x8001, 0x9c40}; !slices.Equal(got, want) {
		t.Errorf("ports %v, want %v", got, want)
	}
	// IPv6 alone: the IPv4 branch has nothing to match (and must still
	// load: the verifier refuses unreachable code).
	v6 := progLoadMatcher(t, ProgramConfig{IPv6: []netip.Addr{progOurs6}, Ports: true})
	if err := v6.AddPort(5201); err != nil {
		t.Fatal(err)
	}
	if got := progDecide(t, v6, progIPv6TCP(progOurs6, 6, progTCPTo(5201))); got != progIPv4 {
		t.Errorf("IPv6-only program: %v", got)
	}
	if got := progDecide(t, v6, tcp); got != progPass {
		t.Errorf("IPv6-only program on IPv4: %v", got)
	}
	q := progLoadMatcher(t, ProgramConfig{IPv4: progAddrs})
	if err := q.AddPort(1); err == nil {
		t.Error("AddPort on a program without a port map")
	}
}

// progRandomPortFrame is progRandomFrame's shared-mode sibling: TCP and
// other frames to our and other addresses and ports, IPv4 and IPv6,
// fragmented or damaged.
func progRandomPortFrame(r *rand.Rand) []byte {
	port := func() uint16 { return []uint16{5201, 0x9c40, 0x8001, 22, 0x0180}[r.IntN(5)] }
	var f []byte
	switch r.IntN(4) {
	case 0:
		f = progRandomFrame(r)
	case 1:
		addr := []netip.Addr{progOurs, progOurs2, progOther}[r.IntN(3)]
		opts := [][]byte{nil, progIPOpts4, progIPOpts40}[r.IntN(3)]
		f = progIPv4Frame(progPeerIP, addr, []byte{6, 6, 17}[r.IntN(3)], opts, progTCPTo(port()))
		if r.IntN(4) == 0 {
			f = progFragment(f, []uint16{0x2000, 0x0001, 0x2010, 0x4000}[r.IntN(4)])
		}
	case 2, 3:
		addr := []netip.Addr{progOurs6, progOther6, netip.MustParseAddr("ff02::1:ff00:2")}[r.IntN(3)]
		f = progIPv6TCP(addr, []byte{6, 6, 17, 0}[r.IntN(4)], progTCPTo(port()))
	}
	for range r.IntN(2) {
		if len(f) > 0 {
			f[r.IntN(len(f))] ^= byte(1 + r.IntN(255))
		}
	}
	if r.IntN(5) == 0 && len(f) > 0 {
		f = f[:r.IntN(len(f))]
	}
	return f
}

func TestProgramPortsRandomFrames(t *testing.T) {
	p := progLoadPorts(t)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 0))
	var counts [3]int
	for range 20000 {
		f := progRandomPortFrame(r)
		want := progRefPorts(progAddrs, []netip.Addr{progOurs6}, progPorts, f)
		counts[want]++
		if got := progDecide(t, p, f); got != want {
			t.Fatalf("frame %x: program says %v, reference %v", f, got, want)
		}
	}
	t.Logf("pass %d, match %d", counts[progPass], counts[progIPv4])
	if counts[progIPv4] < 1000 || counts[progPass] < 1000 {
		t.Errorf("pass %d, match %d: the generator misses cases", counts[progPass], counts[progIPv4])
	}
}

// FuzzProgramPorts checks the shared-address matcher against the Go
// reference through BPF_PROG_TEST_RUN. Its committed corpus
// (testdata/fuzz/FuzzProgramPorts) holds frames of progRandomPortFrame.
func FuzzProgramPorts(f *testing.F) {
	tcp := progIPv4Frame(progPeerIP, progOurs, 6, nil, progTCPTo(5201))
	for _, seed := range [][]byte{
		tcp,
		progFragment(tcp, 0x0010),
		progIPv4Frame(progPeerIP, progOurs2, 6, progIPOpts40, progTCPTo(0x8001)),
		progIPv6TCP(progOurs6, 6, progTCPTo(0x9c40)),
		progARPFrame(1, progPeerIP, progOurs),
		{},
	} {
		f.Add(seed)
	}
	p := progLoadPorts(f)
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) > 1500 {
			frame = frame[:1500]
		}
		if got, want := progDecide(t, p, frame), progRefPorts(progAddrs, []netip.Addr{progOurs6}, progPorts, frame); got != want {
			t.Errorf("frame %x: program says %v, reference %v", frame, got, want)
		}
	})
}

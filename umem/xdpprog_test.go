package umem

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/internal/netns"
	"github.com/xdevmem/xdevmem/internal/testutil"
)

// The reference matcher: what the XDP program must decide, written
// plainly in Go.

type progVerdict int

const (
	progPass progVerdict = iota
	progARP
	progIPv4
)

func (v progVerdict) String() string {
	return [...]string{"pass", "arp", "ipv4"}[v]
}

func progRefMatch(addrs []netip.Addr, f []byte) progVerdict {
	ours := func(b []byte) bool {
		for _, a := range addrs {
			if a.As4() == [4]byte(b) {
				return true
			}
		}
		return false
	}
	if len(f) < 14 {
		return progPass
	}
	switch binary.BigEndian.Uint16(f[12:]) {
	case 0x0806:
		if len(f) < 42 {
			return progPass
		}
		arp := f[14:]
		if binary.BigEndian.Uint16(arp[0:]) != 1 || binary.BigEndian.Uint16(arp[2:]) != 0x0800 || arp[4] != 6 || arp[5] != 4 {
			return progPass
		}
		if ours(arp[24:28]) {
			return progARP
		}
	case 0x0800:
		if len(f) < 34 {
			return progPass
		}
		ip := f[14:]
		if ip[0]>>4 != 4 || ip[0]&0x0f < 5 {
			return progPass
		}
		if ours(ip[16:20]) {
			return progIPv4
		}
	}
	return progPass
}

// Frames.

var (
	progPeerMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 1}
	progEmuMAC  = net.HardwareAddr{0x02, 0, 0, 0, 0, 2}
	progPeerIP  = netip.MustParseAddr("10.211.7.1")
	progOurs    = netip.MustParseAddr("10.211.7.2")
	// Its last byte has the high bit set: loaded as a little-endian word it
	// is negative, which a sign-extending 64-bit compare would get wrong.
	progOurs2 = netip.MustParseAddr("192.168.200.250")
	progOther = netip.MustParseAddr("10.211.7.3")
	progAddrs = []netip.Addr{progOurs, progOurs2}
)

func progEth(etype uint16, payload []byte) []byte {
	f := append(append([]byte{}, progEmuMAC...), progPeerMAC...)
	f = binary.BigEndian.AppendUint16(f, etype)
	return append(f, payload...)
}

// progVLAN inserts a tag with the given TPID after the MAC addresses.
func progVLAN(tpid uint16, frame []byte) []byte {
	f := append([]byte{}, frame[:12]...)
	f = binary.BigEndian.AppendUint16(f, tpid)
	f = binary.BigEndian.AppendUint16(f, 42)
	return append(f, frame[12:]...)
}

func progARPFrame(op uint16, spa, tpa netip.Addr) []byte {
	var arp []byte
	arp = binary.BigEndian.AppendUint16(arp, 1)      // Ethernet
	arp = binary.BigEndian.AppendUint16(arp, 0x0800) // IPv4
	arp = append(arp, 6, 4)
	arp = binary.BigEndian.AppendUint16(arp, op)
	arp = append(arp, progPeerMAC...)
	arp = append(arp, spa.AsSlice()...)
	if op == 1 {
		arp = append(arp, 0, 0, 0, 0, 0, 0)
	} else {
		arp = append(arp, progEmuMAC...)
	}
	arp = append(arp, tpa.AsSlice()...)
	return progEth(0x0806, arp)
}

func progIPv4Frame(src, dst netip.Addr, proto byte, opts, l4 []byte) []byte {
	if len(opts)%4 != 0 {
		panic("options must fill whole words")
	}
	hlen := 20 + len(opts)
	ip := make([]byte, hlen, hlen+len(l4))
	ip[0] = 0x40 | byte(hlen/4)
	binary.BigEndian.PutUint16(ip[2:], uint16(hlen+len(l4)))
	binary.BigEndian.PutUint16(ip[4:], 0x1234)
	ip[8] = 64
	ip[9] = proto
	copy(ip[12:], src.AsSlice())
	copy(ip[16:], dst.AsSlice())
	copy(ip[20:], opts)
	var sum uint32
	for i := 0; i < hlen; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	return progEth(0x0800, append(ip, l4...))
}

var (
	progTCP  = []byte{0x9c, 0x40, 0x1f, 0x90, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0}
	progUDP  = []byte{0x9c, 0x40, 0x00, 0x35, 0, 12, 0, 0, 'd', 'a', 't', 'a'}
	progICMP = []byte{8, 0, 0xf7, 0xfe, 0, 1, 0, 1}
	// Record Route (7) with room for one address, padded with an End.
	progIPOpts4 = []byte{7, 7, 4, 0, 0, 0, 0, 0}[:8]
	// The maximum: 40 bytes of options, IHL 15.
	progIPOpts40 = append([]byte{7, 39, 4}, make([]byte, 37)...)
)

func progIPv6Frame(dst []byte) []byte {
	ip := make([]byte, 40)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(progUDP)))
	ip[6] = 17
	ip[7] = 64
	copy(ip[24:], dst)
	return progEth(0x86dd, append(ip, progUDP...))
}

// Running the program.

// progXDPRedirect is XDP_REDIRECT: what bpf_redirect_map returns when the
// XSKMAP slot holds a socket.
const progXDPRedirect = 4

func progLoadTest(t testing.TB, cfg ProgramConfig) *Program {
	t.Helper()
	testutil.RequirePrivileged(t)
	p, err := LoadProgram(cfg)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("close program: %v", err)
		}
	})
	return p
}

// progLoadMatcher loads the program with an AF_XDP socket in the XSKMAP
// slot of queue 0, so that BPF_PROG_TEST_RUN makes its decisions visible: a
// match returns XDP_REDIRECT (the slot is filled), anything else XDP_PASS.
func progLoadMatcher(t testing.TB, cfg ProgramConfig) *Program {
	t.Helper()
	p := progLoadTest(t, cfg)
	if err := p.SetSocket(0, progXSK(t)); err != nil {
		t.Fatalf("SetSocket: %v", err)
	}
	return p
}

// progXDPMD mirrors struct xdp_md, the context BPF_PROG_TEST_RUN takes.
type progXDPMD struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// progRun runs the program once over frame, on the given interface and RX
// queue when ifindex is not zero, and checks that it leaves the frame as it
// was.
func progRun(t testing.TB, p *Program, frame []byte, ifindex, queue int) (uint32, error) {
	t.Helper()
	opts := &ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+256)}
	if ifindex != 0 {
		opts.Context = progXDPMD{DataEnd: uint32(len(frame)), IngressIfindex: uint32(ifindex), RxQueueIndex: uint32(queue)}
	}
	ret, err := p.prog.Run(opts)
	if err != nil {
		return 0, err
	}
	if !bytes.Equal(opts.DataOut, frame) {
		t.Errorf("program changed the frame:\n in %x\nout %x", frame, opts.DataOut)
	}
	return ret, nil
}

// progDecide runs a program from progLoadMatcher on queue 0 and turns its
// return value into a verdict: a redirected ARP frame is an ARP match, any
// other redirected frame an IP match (the program's ARP and IP branches
// start from the EtherType). Frames shorter than an Ethernet header cannot
// be run (the kernel refuses them); the program never sees them on a real
// interface either.
func progDecide(t testing.TB, p *Program, frame []byte) progVerdict {
	t.Helper()
	ret, err := progRun(t, p, frame, 0, 0)
	if err != nil {
		if len(frame) < 14 && errors.Is(err, unix.EINVAL) {
			return progPass
		}
		t.Fatalf("run %x: %v", frame, err)
	}
	switch {
	case ret == progXDPPass:
		return progPass
	case ret == progXDPRedirect && binary.BigEndian.Uint16(frame[12:]) == 0x0806:
		return progARP
	case ret == progXDPRedirect:
		return progIPv4
	}
	t.Fatalf("run %x: unexpected return value %d", frame, ret)
	return 0
}

func TestProgramConfig(t *testing.T) {
	addrs, queues, err := ProgramConfig{IPv4: []netip.Addr{
		progOurs, netip.MustParseAddr("::ffff:10.211.7.2"), progOurs2,
	}}.progCheck()
	if err != nil || queues != 1 || len(addrs) != 2 || addrs[0] != progOurs || addrs[1] != progOurs2 {
		t.Errorf("progCheck: %v %d %v", addrs, queues, err)
	}
	many := make([]netip.Addr, MaxProgramIPv4+1)
	for i := range many {
		many[i] = netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
	}
	for _, cfg := range []ProgramConfig{
		{},
		{IPv4: []netip.Addr{{}}},
		{IPv4: []netip.Addr{netip.MustParseAddr("fd00::1")}},
		{IPv4: many},
		{IPv4: progAddrs, Queues: -1},
		{IPv4: progAddrs, Queues: MaxProgramQueues + 1},
	} {
		if p, err := LoadProgram(cfg); err == nil {
			p.Close()
			t.Errorf("LoadProgram(%+v) succeeded", cfg)
		} else if !strings.HasPrefix(err.Error(), "load xdp program: ") {
			t.Errorf("error without prefix: %v", err)
		}
	}
}

// TestProgramConfigLimits: the largest configuration loads and verifies.
func TestProgramConfigLimits(t *testing.T) {
	many := make([]netip.Addr, MaxProgramIPv4)
	for i := range many {
		many[i] = netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
	}
	p := progLoadTest(t, ProgramConfig{IPv4: many, Queues: MaxProgramQueues})
	if p.Queues() != MaxProgramQueues {
		t.Errorf("Queues() = %d", p.Queues())
	}
}

func TestProgramMatch(t *testing.T) {
	p := progLoadMatcher(t, ProgramConfig{IPv4: progAddrs})

	garp := progARPFrame(1, progOurs, progOurs)
	arpPtypeV6 := progARPFrame(1, progPeerIP, progOurs)
	binary.BigEndian.PutUint16(arpPtypeV6[16:], 0x86dd)
	arpHlen8 := progARPFrame(1, progPeerIP, progOurs)
	arpHlen8[18] = 8
	arpPlen16 := progARPFrame(1, progPeerIP, progOurs)
	arpPlen16[19] = 16
	arpHwIEEE := progARPFrame(1, progPeerIP, progOurs)
	binary.BigEndian.PutUint16(arpHwIEEE[14:], 6)
	ipVersion6 := progIPv4Frame(progPeerIP, progOurs, 6, nil, progTCP)
	ipVersion6[14] = 0x65
	ipIHL4 := progIPv4Frame(progPeerIP, progOurs, 6, nil, progTCP)
	ipIHL4[14] = 0x44
	// Our address sits at the IPv4 destination offset of frames that are
	// not IPv4 or not ARP.
	lldp := progIPv4Frame(progPeerIP, progOurs, 17, nil, progUDP)
	binary.BigEndian.PutUint16(lldp[12:], 0x88cc)
	arpEthertypeIPv4Body := progARPFrame(1, progPeerIP, progOurs)
	binary.BigEndian.PutUint16(arpEthertypeIPv4Body[12:], 0x0800)
	v6 := make([]byte, 16)
	copy(v6[10:], []byte{0xff, 0xff})
	copy(v6[12:], progOurs.AsSlice())

	for _, tc := range []struct {
		name  string
		frame []byte
		want  progVerdict
	}{
		{"arp request for us", progARPFrame(1, progPeerIP, progOurs), progARP},
		{"arp reply to us", progARPFrame(2, progPeerIP, progOurs), progARP},
		{"arp request for our second address", progARPFrame(1, progPeerIP, progOurs2), progARP},
		{"gratuitous arp for us", garp, progARP},
		{"arp request for another address", progARPFrame(1, progPeerIP, progOther), progPass},
		{"arp from our address for another", progARPFrame(1, progOurs, progOther), progPass},
		{"arp with protocol type ipv6", arpPtypeV6, progPass},
		{"arp with hardware length 8", arpHlen8, progPass},
		{"arp with protocol length 16", arpPlen16, progPass},
		{"arp with ieee802 hardware type", arpHwIEEE, progPass},
		{"ipv4 tcp to us", progIPv4Frame(progPeerIP, progOurs, 6, nil, progTCP), progIPv4},
		{"ipv4 udp to us", progIPv4Frame(progPeerIP, progOurs, 17, nil, progUDP), progIPv4},
		{"ipv4 icmp to us", progIPv4Frame(progPeerIP, progOurs, 1, nil, progICMP), progIPv4},
		{"ipv4 tcp to our second address", progIPv4Frame(progPeerIP, progOurs2, 6, nil, progTCP), progIPv4},
		{"ipv4 tcp with 4 option bytes to us", progIPv4Frame(progPeerIP, progOurs, 6, progIPOpts4, progTCP), progIPv4},
		{"ipv4 tcp with 40 option bytes to us", progIPv4Frame(progPeerIP, progOurs, 6, progIPOpts40, progTCP), progIPv4},
		{"ipv4 options only, cut after the fixed header", progIPv4Frame(progPeerIP, progOurs, 6, progIPOpts40, progTCP)[:34], progIPv4},
		{"ipv4 header only to us", progIPv4Frame(progPeerIP, progOurs, 253, nil, nil), progIPv4},
		{"ipv4 tcp to another address", progIPv4Frame(progPeerIP, progOther, 6, nil, progTCP), progPass},
		{"ipv4 tcp from us", progIPv4Frame(progOurs, progOther, 6, nil, progTCP), progPass},
		{"ipv4 broadcast", progIPv4Frame(progPeerIP, netip.MustParseAddr("255.255.255.255"), 17, nil, progUDP), progPass},
		{"ipv4 multicast", progIPv4Frame(progPeerIP, netip.MustParseAddr("224.0.0.1"), 2, nil, progUDP), progPass},
		{"ipv4 ethertype, version 6", ipVersion6, progPass},
		{"ipv4 with ihl 4", ipIHL4, progPass},
		{"ipv6 udp", progIPv6Frame(v6), progPass},
		{"vlan-tagged arp for us", progVLAN(0x8100, progARPFrame(1, progPeerIP, progOurs)), progPass},
		{"vlan-tagged ipv4 to us", progVLAN(0x8100, progIPv4Frame(progPeerIP, progOurs, 6, nil, progTCP)), progPass},
		{"qinq-tagged ipv4 to us", progVLAN(0x88a8, progVLAN(0x8100, progIPv4Frame(progPeerIP, progOurs, 6, nil, progTCP))), progPass},
		{"lldp with our address at the ipv4 offset", lldp, progPass},
		{"arp body under the ipv4 ethertype", arpEthertypeIPv4Body, progPass},
		{"ethernet header only, arp", progEth(0x0806, nil), progPass},
		{"ethernet header only, ipv4", progEth(0x0800, nil), progPass},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if ref := progRefMatch(progAddrs, tc.frame); ref != tc.want {
				t.Fatalf("reference matcher says %v, want %v", ref, tc.want)
			}
			if got := progDecide(t, p, tc.frame); got != tc.want {
				t.Errorf("program says %v, want %v (frame %x)", got, tc.want, tc.frame)
			}
		})
	}
}

// TestProgramTruncated cuts matching frames at every length: an ARP packet
// shorter than 42 bytes and an IPv4 one shorter than 34 pass.
func TestProgramTruncated(t *testing.T) {
	p := progLoadMatcher(t, ProgramConfig{IPv4: progAddrs})
	for _, tc := range []struct {
		name  string
		frame []byte
		need  int
		match progVerdict
	}{
		{"arp", progARPFrame(1, progPeerIP, progOurs), 42, progARP},
		{"ipv4 tcp", progIPv4Frame(progPeerIP, progOurs, 6, nil, progTCP), 34, progIPv4},
		{"ipv4 tcp with options", progIPv4Frame(progPeerIP, progOurs, 6, progIPOpts40, progTCP), 34, progIPv4},
	} {
		for n := 0; n <= len(tc.frame); n++ {
			want := progPass
			if n >= tc.need {
				want = tc.match
			}
			frame := tc.frame[:n:n]
			if ref := progRefMatch(progAddrs, frame); ref != want {
				t.Fatalf("%s cut to %d: reference says %v, want %v", tc.name, n, ref, want)
			}
			if got := progDecide(t, p, frame); got != want {
				t.Errorf("%s cut to %d: program says %v, want %v", tc.name, n, got, want)
			}
		}
	}
}

// progRandomFrame makes a frame that is often almost a match: a valid ARP or
// IPv4 frame for one of our addresses or not, with a byte changed, cut
// short or wrapped in a VLAN tag; or random bytes.
func progRandomFrame(r *rand.Rand) []byte {
	addr := func() netip.Addr {
		return []netip.Addr{progOurs, progOurs2, progOther, progPeerIP}[r.IntN(4)]
	}
	var f []byte
	switch r.IntN(5) {
	case 0:
		f = make([]byte, r.IntN(80))
		for i := range f {
			f[i] = byte(r.Uint32())
		}
		if len(f) >= 14 && r.IntN(2) == 0 {
			binary.BigEndian.PutUint16(f[12:], []uint16{0x0800, 0x0806}[r.IntN(2)])
		}
	case 1:
		f = progARPFrame(uint16(1+r.IntN(2)), addr(), addr())
	case 2:
		opts := [][]byte{nil, progIPOpts4, progIPOpts40}[r.IntN(3)]
		f = progIPv4Frame(addr(), addr(), []byte{1, 6, 17}[r.IntN(3)], opts, progTCP)
	case 3:
		f = progVLAN(0x8100, progIPv4Frame(addr(), addr(), 6, nil, progTCP))
	case 4:
		f = progIPv6Frame(append(make([]byte, 12), addr().AsSlice()...))
	}
	for range r.IntN(3) {
		if len(f) > 0 {
			f[r.IntN(len(f))] ^= byte(1 + r.IntN(255))
		}
	}
	if r.IntN(4) == 0 && len(f) > 0 {
		f = f[:r.IntN(len(f))]
	}
	return f
}

func TestProgramRandomFrames(t *testing.T) {
	p := progLoadMatcher(t, ProgramConfig{IPv4: progAddrs})
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 0))
	var counts [3]int
	for range 20000 {
		f := progRandomFrame(r)
		want := progRefMatch(progAddrs, f)
		counts[want]++
		if got := progDecide(t, p, f); got != want {
			t.Fatalf("frame %x: program says %v, reference %v", f, got, want)
		}
	}
	t.Logf("pass %d, arp %d, ipv4 %d", counts[progPass], counts[progARP], counts[progIPv4])
	for v, n := range counts {
		if n < 500 {
			t.Errorf("only %d frames judged %v: the generator misses cases", n, progVerdict(v))
		}
	}
}

func FuzzProgramMatch(f *testing.F) {
	for _, seed := range [][]byte{
		progARPFrame(1, progPeerIP, progOurs),
		progARPFrame(2, progPeerIP, progOurs2),
		progIPv4Frame(progPeerIP, progOurs, 6, nil, progTCP),
		progIPv4Frame(progPeerIP, progOurs2, 17, progIPOpts4, progUDP),
		progIPv4Frame(progPeerIP, progOther, 6, nil, progTCP),
		progVLAN(0x8100, progIPv4Frame(progPeerIP, progOurs, 6, nil, progTCP)),
		progIPv6Frame(make([]byte, 16)),
		progEth(0x0806, nil),
		{},
	} {
		f.Add(seed)
	}
	p := progLoadMatcher(f, ProgramConfig{IPv4: progAddrs})
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) > 1500 {
			frame = frame[:1500] // single buffer, as on the wire
		}
		if got, want := progDecide(t, p, frame), progRefMatch(progAddrs, frame); got != want {
			t.Errorf("frame %x: program says %v, reference %v", frame, got, want)
		}
	})
}

// progXSK makes an AF_XDP socket the XSKMAP accepts: a UMEM with fill and
// completion rings and an RX ring, not bound. The lead's Socket does this
// for real; this test keeps to raw syscalls to stand alone.
func progXSK(t testing.TB) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	mem, err := unix.Mmap(-1, 0, 16*4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		unix.Close(fd)
		t.Fatalf("mmap: %v", err)
	}
	t.Cleanup(func() {
		unix.Close(fd)
		unix.Munmap(mem)
	})
	reg := unix.XDPUmemReg{Addr: uint64(uintptr(unsafe.Pointer(&mem[0]))), Len: uint64(len(mem)), Size: 4096}
	if _, _, errno := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_XDP, unix.XDP_UMEM_REG,
		uintptr(unsafe.Pointer(&reg)), unsafe.Sizeof(reg), 0); errno != 0 {
		t.Fatalf("XDP_UMEM_REG: %v", errno)
	}
	for _, opt := range []int{unix.XDP_UMEM_FILL_RING, unix.XDP_UMEM_COMPLETION_RING, unix.XDP_RX_RING} {
		if err := unix.SetsockoptInt(fd, unix.SOL_XDP, opt, 16); err != nil {
			t.Fatalf("ring option %d: %v", opt, err)
		}
	}
	return fd
}

// TestProgramRedirect runs the real program: a match goes to the socket of
// the RX queue it came in on, and passes when that queue has none.
func TestProgramRedirect(t *testing.T) {
	pair := testutil.NewPair(t, netns.Options{RxQueues: 2})
	ours := pair.EmuAddr.Addr()
	p := progLoadTest(t, ProgramConfig{IPv4: []netip.Addr{ours}, Queues: 2})
	match := progIPv4Frame(pair.PeerAddr.Addr(), ours, 6, nil, progTCP)
	arp := progARPFrame(1, pair.PeerAddr.Addr(), ours)
	other := progIPv4Frame(pair.PeerAddr.Addr(), progOther, 6, nil, progTCP)

	// The test run looks the interface up in the current namespace.
	check := func(step string, frame []byte, queue int, want uint32) {
		t.Helper()
		err := pair.Emu.Do(func() error {
			ret, err := progRun(t, p, frame, pair.EmuIndex, queue)
			if err != nil {
				return err
			}
			if ret != want {
				return fmt.Errorf("returned %d, want %d", ret, want)
			}
			return nil
		})
		if err != nil {
			t.Errorf("%s, queue %d: %v", step, queue, err)
		}
	}

	check("empty map", match, 0, progXDPPass)
	check("empty map", match, 1, progXDPPass)
	check("empty map", arp, 0, progXDPPass)

	fd := progXSK(t)
	if err := p.SetSocket(0, fd); err != nil {
		t.Fatalf("SetSocket: %v", err)
	}
	check("socket on queue 0", match, 0, progXDPRedirect)
	check("socket on queue 0", arp, 0, progXDPRedirect)
	check("socket on queue 0", other, 0, progXDPPass)
	check("socket on queue 0", match, 1, progXDPPass)

	if err := p.SetSocket(1, fd); err != nil {
		t.Fatalf("SetSocket: %v", err)
	}
	if err := p.DeleteSocket(0); err != nil {
		t.Fatalf("DeleteSocket: %v", err)
	}
	check("socket on queue 1 only", match, 0, progXDPPass)
	check("socket on queue 1 only", match, 1, progXDPRedirect)
	if err := p.DeleteSocket(0); err != nil {
		t.Errorf("DeleteSocket of an empty entry: %v", err)
	}

	// Closing the socket empties its entries.
	fd2 := progXSK(t)
	if err := p.SetSocket(0, fd2); err != nil {
		t.Fatal(err)
	}
	check("second socket on queue 0", match, 0, progXDPRedirect)
	unix.Close(fd2)
	deadline := time.Now().Add(2 * time.Second)
	for {
		var ret uint32
		pair.Emu.Do(func() (err error) { ret, err = progRun(t, p, match, pair.EmuIndex, 0); return err })
		if ret == progXDPPass {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("closed socket still in the map (returned %d)", ret)
		}
		time.Sleep(10 * time.Millisecond)
	}

	var sock [2]int
	sock, _ = unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	defer unix.Close(sock[0])
	defer unix.Close(sock[1])
	for _, bad := range []struct {
		queue, fd int
	}{{2, fd}, {-1, fd}, {0, -1}, {0, sock[0]}} {
		if err := p.SetSocket(bad.queue, bad.fd); err == nil || !strings.HasPrefix(err.Error(), "set xsk for queue ") {
			t.Errorf("SetSocket(%d, %d): %v", bad.queue, bad.fd, err)
		}
	}
	if err := p.DeleteSocket(2); err == nil {
		t.Errorf("DeleteSocket(2) of a 2-queue map succeeded")
	}

	p.Close()
	if err := p.SetSocket(0, fd); !errors.Is(err, net.ErrClosed) {
		t.Errorf("SetSocket after Close: %v", err)
	}
	if err := p.DeleteSocket(0); !errors.Is(err, net.ErrClosed) {
		t.Errorf("DeleteSocket after Close: %v", err)
	}
}

// TestProgramConcurrentClose runs the methods against Close under the race
// detector: after Close they fail with net.ErrClosed, never crash.
func TestProgramConcurrentClose(t *testing.T) {
	p := progLoadTest(t, ProgramConfig{IPv4: progAddrs, Queues: 4})
	fd := progXSK(t)
	done := make(chan struct{})
	for q := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for range 200 {
				if err := p.SetSocket(q, fd); err != nil && !errors.Is(err, net.ErrClosed) {
					t.Errorf("SetSocket: %v", err)
					return
				}
				if err := p.DeleteSocket(q); err != nil && !errors.Is(err, net.ErrClosed) {
					t.Errorf("DeleteSocket: %v", err)
					return
				}
				_ = p.Mode()
			}
		}()
	}
	time.Sleep(time.Millisecond)
	if err := p.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	for range 4 {
		<-done
	}
}

// progLinkXDP reads the XDP attachment of an interface as ip -d link shows
// it: mode 1 is native, 2 generic; id the program's. ok is false when no
// program is attached.
func progLinkXDP(t *testing.T, ns *netns.NS, ifname string) (mode int, id uint32, ok bool) {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns.Name, "-j", "-d", "link", "show", "dev", ifname).Output()
	if err != nil {
		t.Fatalf("ip link show %s: %v", ifname, err)
	}
	var links []struct {
		XDP *struct {
			Mode int `json:"mode"`
			Prog struct {
				ID uint32 `json:"id"`
			} `json:"prog"`
		} `json:"xdp"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		t.Fatalf("parse ip link show: %v: %s", err, out)
	}
	if links[0].XDP == nil {
		return 0, 0, false
	}
	return links[0].XDP.Mode, links[0].XDP.Prog.ID, true
}

func progID(t *testing.T, p *Program) uint32 {
	t.Helper()
	info, err := p.prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return uint32(id)
}

func progAttach(p *Program, ns *netns.NS, ifindex int, modes ...link.XDPAttachFlags) error {
	return ns.Do(func() error {
		if len(modes) == 0 {
			return p.Attach(ifindex)
		}
		return p.attach(ifindex, modes...)
	})
}

func TestProgramAttach(t *testing.T) {
	pair := testutil.NewPair(t, netns.Options{})
	p := progLoadTest(t, ProgramConfig{IPv4: []netip.Addr{pair.EmuAddr.Addr()}})
	if p.Mode() != "" {
		t.Errorf("Mode() before Attach = %q", p.Mode())
	}
	if err := progAttach(p, pair.Emu, pair.EmuIndex); err != nil {
		t.Fatalf("attach: %v", err)
	}
	if p.Mode() != "native" {
		t.Errorf("Mode() = %q, want native", p.Mode())
	}
	if mode, id, ok := progLinkXDP(t, pair.Emu, pair.EmuIf); !ok || mode != 1 || id != progID(t, p) {
		t.Errorf("ip link shows xdp %v mode %d id %d, want native mode 1 id %d", ok, mode, id, progID(t, p))
	}
	out, _ := exec.Command("ip", "-n", pair.Emu.Name, "-d", "link", "show", "dev", pair.EmuIf).Output()
	if !strings.Contains(string(out), "prog/xdp id "+strconv.Itoa(int(progID(t, p)))) {
		t.Errorf("ip -d link show lacks the program:\n%s", out)
	}
	if err := progAttach(p, pair.Emu, pair.EmuIndex); err == nil || !strings.Contains(err.Error(), "already attached") {
		t.Errorf("second Attach of the same program: %v", err)
	}

	if err := p.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if _, _, ok := progLinkXDP(t, pair.Emu, pair.EmuIf); ok {
		t.Errorf("program still attached after Close")
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if p.Mode() != "" {
		t.Errorf("Mode() after Close = %q", p.Mode())
	}
	if err := progAttach(p, pair.Emu, pair.EmuIndex); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Attach after Close: %v", err)
	}

	q := progLoadTest(t, ProgramConfig{IPv4: []netip.Addr{pair.EmuAddr.Addr()}})
	if err := progAttach(q, pair.Emu, 9999); err == nil || !strings.HasPrefix(err.Error(), "attach xdp to ifindex 9999: ") {
		t.Errorf("Attach to a missing interface: %v", err)
	}
}

// TestProgramAttachGenericFallback: native XDP on veth refuses an MTU above
// what one buffer holds; Attach falls back to generic mode.
func TestProgramAttachGenericFallback(t *testing.T) {
	pair := testutil.NewPair(t, netns.Options{MTU: 4000})
	p := progLoadTest(t, ProgramConfig{IPv4: []netip.Addr{pair.EmuAddr.Addr()}})
	if err := progAttach(p, pair.Emu, pair.EmuIndex); err != nil {
		t.Fatalf("attach: %v", err)
	}
	if p.Mode() != "generic" {
		t.Errorf("Mode() = %q, want generic", p.Mode())
	}
	if mode, id, ok := progLinkXDP(t, pair.Emu, pair.EmuIf); !ok || mode != 2 || id != progID(t, p) {
		t.Errorf("ip link shows xdp %v mode %d id %d, want generic mode 2 id %d", ok, mode, id, progID(t, p))
	}
	p.Close()
	if _, _, ok := progLinkXDP(t, pair.Emu, pair.EmuIf); ok {
		t.Errorf("program still attached after Close")
	}
}

// progNetlinkXDP attaches (fd >= 0) or detaches (fd = -1) an XDP program
// the old way, through rtnetlink, as ip(8) or xdp-loader would: not owned
// by a link, so it stays until removed.
func progNetlinkXDP(ifindex, fd int, flags uint32) error {
	s, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer unix.Close(s)
	attr := func(typ uint16, payload []byte) []byte {
		b := binary.NativeEndian.AppendUint16(nil, uint16(4+len(payload)))
		b = binary.NativeEndian.AppendUint16(b, typ)
		return append(b, payload...)
	}
	u32 := func(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }
	xdp := attr(unix.IFLA_XDP|unix.NLA_F_NESTED, append(
		attr(unix.IFLA_XDP_FD, u32(uint32(int32(fd)))),
		attr(unix.IFLA_XDP_FLAGS, u32(flags))...))
	ifi := make([]byte, unix.SizeofIfInfomsg)
	ifi[0] = unix.AF_UNSPEC
	binary.NativeEndian.PutUint32(ifi[4:], uint32(ifindex))
	body := append(ifi, xdp...)
	msg := binary.NativeEndian.AppendUint32(nil, uint32(unix.SizeofNlMsghdr+len(body)))
	msg = binary.NativeEndian.AppendUint16(msg, unix.RTM_SETLINK)
	msg = binary.NativeEndian.AppendUint16(msg, unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	msg = binary.NativeEndian.AppendUint32(msg, 1)
	msg = binary.NativeEndian.AppendUint32(msg, 0)
	msg = append(msg, body...)
	if err := unix.Sendto(s, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(s, buf, 0)
	if err != nil {
		return err
	}
	if n < unix.SizeofNlMsghdr+4 || binary.NativeEndian.Uint16(buf[4:]) != unix.NLMSG_ERROR {
		return fmt.Errorf("unexpected netlink answer %x", buf[:n])
	}
	if errno := int32(binary.NativeEndian.Uint32(buf[unix.SizeofNlMsghdr:])); errno != 0 {
		return unix.Errno(-errno)
	}
	return nil
}

// TestProgramAttachBusy: an interface that already carries an XDP program,
// in any mode and attached in any way, is refused with ErrXDPAttached and
// the program there stays.
func TestProgramAttachBusy(t *testing.T) {
	pair := testutil.NewPair(t, netns.Options{})
	cfg := ProgramConfig{IPv4: []netip.Addr{pair.EmuAddr.Addr()}}
	theirs := progLoadTest(t, cfg)
	ours := progLoadTest(t, cfg)

	for _, tc := range []struct {
		name   string
		attach func() error
		detach func() error
	}{
		{"native link",
			func() error { return progAttach(theirs, pair.Emu, pair.EmuIndex, link.XDPDriverMode) },
			func() error { return theirs.progDetach() }},
		{"generic link",
			func() error { return progAttach(theirs, pair.Emu, pair.EmuIndex, link.XDPGenericMode) },
			func() error { return theirs.progDetach() }},
		{"native netlink",
			func() error {
				return pair.Emu.Do(func() error {
					return progNetlinkXDP(pair.EmuIndex, theirs.prog.FD(), unix.XDP_FLAGS_DRV_MODE)
				})
			},
			func() error {
				return pair.Emu.Do(func() error { return progNetlinkXDP(pair.EmuIndex, -1, unix.XDP_FLAGS_DRV_MODE) })
			}},
		{"generic netlink",
			func() error {
				return pair.Emu.Do(func() error {
					return progNetlinkXDP(pair.EmuIndex, theirs.prog.FD(), unix.XDP_FLAGS_SKB_MODE)
				})
			},
			func() error {
				return pair.Emu.Do(func() error { return progNetlinkXDP(pair.EmuIndex, -1, unix.XDP_FLAGS_SKB_MODE) })
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.attach(); err != nil {
				t.Fatalf("attach the other program: %v", err)
			}
			defer func() {
				if err := tc.detach(); err != nil {
					t.Errorf("detach the other program: %v", err)
				}
				if _, _, ok := progLinkXDP(t, pair.Emu, pair.EmuIf); ok {
					t.Errorf("interface not free after the test")
				}
			}()
			err := progAttach(ours, pair.Emu, pair.EmuIndex)
			if !errors.Is(err, ErrXDPAttached) {
				t.Fatalf("Attach: %v, want ErrXDPAttached", err)
			}
			t.Logf("error: %v", err)
			if ours.Mode() != "" {
				t.Errorf("Mode() after a refused Attach = %q", ours.Mode())
			}
			if _, id, ok := progLinkXDP(t, pair.Emu, pair.EmuIf); !ok || id != progID(t, theirs) {
				t.Errorf("the other program was replaced: attached %v id %d", ok, id)
			}
		})
	}
	// And once the interface is free, Attach works.
	if err := progAttach(ours, pair.Emu, pair.EmuIndex); err != nil || ours.Mode() != "native" {
		t.Errorf("Attach to the freed interface: %v, mode %q", err, ours.Mode())
	}
}

// progDetach closes the link only, keeping the program for reuse in tests.
func (p *Program) progDetach() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.link == nil {
		return nil
	}
	err := p.link.Close()
	p.link = nil
	return err
}

// progVethStats sums one per-queue counter of ethtool -S over all queues.
func progVethStats(t *testing.T, ns *netns.NS, ifname, counter string) int {
	t.Helper()
	out, err := ns.Command("ethtool", "-S", ifname).Output()
	if err != nil {
		t.Fatalf("ethtool -S %s: %v", ifname, err)
	}
	total, found := 0, false
	for line := range strings.Lines(string(out)) {
		name, val, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && strings.HasPrefix(name, "rx_queue_") && strings.HasSuffix(name, "_"+counter) {
			n, err := strconv.Atoi(strings.TrimSpace(val))
			if err != nil {
				t.Fatalf("ethtool -S line %q: %v", line, err)
			}
			total, found = total+n, true
		}
	}
	if !found {
		t.Fatalf("ethtool -S %s has no rx_queue_*_%s:\n%s", ifname, counter, out)
	}
	return total
}

// TestProgramLiveTraffic attaches the program in native mode with an AF_XDP
// socket on the queue and sends the peer kernel's real traffic at it: ARP
// and IPv4 for our address arrive on the socket, for another address they
// pass to the kernel.
func TestProgramLiveTraffic(t *testing.T) {
	testutil.Watchdog(t, time.Minute)
	pair := testutil.NewPair(t, netns.Options{})
	ours, other := pair.EmuAddr.Addr(), pair.EmuAddr.Addr().Next()
	p := progLoadTest(t, ProgramConfig{IPv4: []netip.Addr{ours}})
	r := newTestRegion(t, 1024)
	var sock *Socket
	if err := pair.Emu.Do(func() (err error) {
		sock, err = NewSocket(r, pair.EmuIndex, SocketConfig{RingSize: 64, TXFrames: 1})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	if err := p.SetSocket(0, sock.FD()); err != nil {
		t.Fatal(err)
	}
	if err := progAttach(p, pair.Emu, pair.EmuIndex); err != nil {
		t.Fatal(err)
	}
	if p.Mode() != "native" {
		t.Fatalf("mode %q, want native", p.Mode())
	}
	// arrived takes what reached the socket and returns how many ARP and
	// IPv4 frames did so far; matched counts them by EtherType.
	matched := map[uint16]int{}
	var descs [16]unix.XDPDesc
	arrived := func() int {
		for {
			sock.Refill()
			n := sock.Receive(descs[:])
			if n == 0 {
				break
			}
			for _, d := range descs[:n] {
				matched[binary.BigEndian.Uint16(sock.Packet(d)[12:])]++
				r.Free(r.FrameOf(d.Addr))
			}
		}
		return matched[0x0800] + matched[0x0806]
	}
	seen := func() int { return progVethStats(t, pair.Emu, pair.EmuIf, "xdp_packets") }
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	send := func(dst netip.Addr, n int) {
		t.Helper()
		err := pair.Peer.Do(func() error {
			c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 9)))
			if err != nil {
				return err
			}
			defer c.Close()
			for range n {
				if _, err := c.Write([]byte("xdevmem")); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("send to %v: %v", dst, err)
		}
	}
	neigh := func(args ...string) {
		t.Helper()
		cmd := append([]string{"-n", pair.Peer.Name, "neigh"}, args...)
		if out, err := exec.Command("ip", cmd...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", cmd, err, out)
		}
	}

	// IPv4 to another address (neighbour entry static, so no ARP): seen,
	// not matched.
	neigh("replace", other.String(), "lladdr", pair.EmuMAC.String(), "dev", pair.PeerIf, "nud", "permanent")
	seen0, arrived0 := seen(), arrived()
	send(other, 5)
	waitFor("5 packets through XDP", func() bool { return seen() >= seen0+5 })
	if d := arrived(); d != arrived0 {
		t.Errorf("IPv4 to %v: %d packets matched, want 0", other, d-arrived0)
	}

	// ARP for another address: the kernel resolves it. Not matched.
	neigh("del", other.String(), "dev", pair.PeerIf)
	seen0 = seen()
	send(other, 1)
	waitFor("an ARP request through XDP", func() bool { return seen() > seen0 })
	if d := arrived(); d != arrived0 {
		t.Errorf("ARP for %v: %d packets matched, want 0", other, d-arrived0)
	}

	// IPv4 to our address: all matched.
	neigh("replace", ours.String(), "lladdr", pair.EmuMAC.String(), "dev", pair.PeerIf, "nud", "permanent")
	send(ours, 5)
	waitFor("5 IPv4 packets matched", func() bool { arrived(); return matched[0x0800] >= 5 })

	// ARP for our address: matched.
	neigh("del", ours.String(), "dev", pair.PeerIf)
	send(ours, 1)
	waitFor("an ARP request matched", func() bool { arrived(); return matched[0x0806] > 0 })

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := progLinkXDP(t, pair.Emu, pair.EmuIf); ok {
		t.Errorf("program still attached after Close")
	}
}

const progKillHelperEnv = "XDEVMEM_PROG_KILL_HELPER"

// TestProgramKillHelper is the child of TestProgramKilled: started inside
// the emu namespace, it attaches a program and waits to be killed.
func TestProgramKillHelper(t *testing.T) {
	ifname := os.Getenv(progKillHelperEnv)
	if ifname == "" {
		return // only meaningful when re-executed as a helper process
	}
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	p, err := LoadProgram(ProgramConfig{IPv4: []netip.Addr{progOurs}})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Attach(ifi.Index); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("attached %d\n", progID(t, p))
	time.Sleep(time.Minute)
	t.Fatal("not killed")
}

// TestProgramKilled: a process killed with SIGKILL leaves no program
// attached, because only its BPF link held it.
func TestProgramKilled(t *testing.T) {
	testutil.Watchdog(t, time.Minute)
	pair := testutil.NewPair(t, netns.Options{})
	cmd := pair.Emu.Command(os.Args[0], "-test.run=^TestProgramKillHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), progKillHelperEnv+"="+pair.EmuIf)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	var id uint32
	if _, err := fmt.Fscanf(stdout, "attached %d\n", &id); err != nil {
		t.Fatalf("helper did not attach: %v", err)
	}
	if _, got, ok := progLinkXDP(t, pair.Emu, pair.EmuIf); !ok || got != id {
		t.Fatalf("helper's program not attached: %v id %d, want %d", ok, got, id)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	// The link is released with the process's files; allow the kernel a
	// moment to finish.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, _, ok := progLinkXDP(t, pair.Emu, pair.EmuIf); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("program still attached after its process was killed")
		}
	}
}

package stack

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/umem"
)

// Defaults of Config.
const (
	DefaultRegionSize = 64 << 20
	DefaultRcvBuf     = 1 << 20 // the in-process tests' window
	DefaultMTU        = 1500
)

// Config configures an emulated devmem stack on one interface.
type Config struct {
	// Ifname names the interface; it must exist in the calling thread's
	// network namespace.
	Ifname string
	// Addr is the stack's address and prefix, IPv4 or IPv6. It must not be
	// configured on the kernel side of the interface: the XDP program takes
	// its ARP, IPv4 and IPv6 traffic (including neighbour solicitations).
	Addr netip.Prefix
	// Addr6 optionally adds an IPv6 address to an IPv4 Addr (dual stack).
	Addr6 netip.Prefix
	// Gateway, if valid, is the default route's next hop.
	Gateway netip.Addr
	// MTU defaults to the interface's MTU.
	MTU int
	// RegionSize is the UMEM (dmabuf) size; 0 means 64 MiB.
	RegionSize uint64
	// Queue is the RX queue the AF_XDP socket binds (default 0).
	Queue int
	// HDSThresh is the emulated device's header-split threshold: TCP
	// payloads shorter than it stay in the header buffer and are delivered
	// linear (copied, SCM_DEVMEM_LINEAR). 0 splits every payload. It models
	// the device, not the ethtool setting of the same name (see Rings,
	// whose bind-rx checks it does not trigger), so applications can
	// exercise their linear-data handling.
	HDSThresh int
	// TrustChecksum skips software checksum verification (benchmarks only;
	// corrupted frames would then reach the application).
	TrustChecksum bool
	// RcvBuf is each connection's TCP receive buffer (its window); 0 sizes
	// it from the UMEM: MSS-sized payload for half the frames, 1 to 8 MiB.
	// The window bounds throughput more than anything else on veth; the UMEM
	// bounds the window (each segment pins a frame until delivered).
	RcvBuf int
	// NoGRO disables coalescing consecutive segments before TCP.
	NoGRO bool
	// Faults injects seeded drops, duplicates, reordering, corruption and
	// truncation into received frames (off by default).
	Faults Faults
}

// Stack is an emulated devmem TCP stack: an AF_XDP socket and XDP program on
// one interface, gVisor's TCP on top, and the devmem receive path. It
// implements devmemapi.Provider.
type Stack struct {
	cfg      Config
	ifindex  int
	mac      net.HardwareAddr
	prefixes []netip.Prefix // the stack's addresses: Addr, then Addr6
	ours     [][16]byte     // the same, 16-byte (IPv4-mapped) for the split's check
	ns       *gstack.Stack
	region   *umem.Region
	sock     *umem.Socket
	prog     *umem.Program
	link     *linkEndpoint
	cnt      counters
	window   uint64
	active   atomic.Pointer[rxBinding]
	flows    flowTable
	closing  atomic.Bool

	mu        sync.Mutex
	rings     Rings // guarded by mu
	bindings  map[*rxBinding]struct{}
	listeners map[*Listener]struct{}
	conns     map[*Conn]struct{}
}

var _ devmemapi.Provider = (*Stack)(nil)

// New builds the stack: UMEM region, AF_XDP socket, XDP program, gVisor
// netstack. Call it from a thread in the interface's network namespace; the
// stack works from any goroutine afterwards.
func New(cfg Config) (_ *Stack, err error) {
	prefixes, err := cfg.prefixes()
	if err != nil {
		return nil, fmt.Errorf("xdevmem stack: %w", err)
	}
	ifc, err := net.InterfaceByName(cfg.Ifname)
	if err != nil {
		return nil, fmt.Errorf("xdevmem stack: interface %q: %w", cfg.Ifname, err)
	}
	if cfg.MTU == 0 {
		cfg.MTU = ifc.MTU
	}
	if cfg.RegionSize == 0 {
		cfg.RegionSize = DefaultRegionSize
	}
	if cfg.RcvBuf == 0 {
		frames := cfg.RegionSize / umem.DefaultFrameSize
		cfg.RcvBuf = int(min(max(frames/2*1400, 1<<20), 8<<20))
	}
	if cfg.HDSThresh < 0 {
		return nil, fmt.Errorf("xdevmem stack: hds-thresh %d: %w", cfg.HDSThresh, unix.EINVAL)
	}
	if max := umem.DefaultFrameSize - 256 - ethHdrLen; cfg.MTU > max {
		return nil, fmt.Errorf("xdevmem stack: MTU %d of %s is too large for %d-byte frames (at most %d without multi-buffer): %w",
			cfg.MTU, cfg.Ifname, umem.DefaultFrameSize, max, unix.EMSGSIZE)
	}
	s := &Stack{
		cfg:       cfg,
		ifindex:   ifc.Index,
		mac:       ifc.HardwareAddr,
		window:    2*uint64(cfg.RcvBuf) + 256<<10,
		bindings:  map[*rxBinding]struct{}{},
		listeners: map[*Listener]struct{}{},
		conns:     map[*Conn]struct{}{},
		rings:     Rings{TCPDataSplit: true},
	}
	s.flows.init()
	s.flows.window = s.window
	s.setPrefixes(prefixes)
	defer func() {
		if err != nil {
			s.Close()
			if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
				err = fmt.Errorf("%w (AF_XDP and XDP need root, or CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF)", err)
			}
		}
	}()
	if s.region, err = umem.NewRegion(umem.RegionConfig{Size: cfg.RegionSize}); err != nil {
		return nil, fmt.Errorf("xdevmem stack: %w", err)
	}
	if s.sock, err = umem.NewSocket(s.region, s.ifindex, umem.SocketConfig{Queue: cfg.Queue}); err != nil {
		return nil, fmt.Errorf("xdevmem stack: %w", err)
	}
	pc := umem.ProgramConfig{Queues: cfg.Queue + 1}
	for _, p := range prefixes {
		if p.Addr().Is4() {
			pc.IPv4 = append(pc.IPv4, p.Addr())
		} else {
			pc.IPv6 = append(pc.IPv6, p.Addr())
		}
	}
	if s.prog, err = umem.LoadProgram(pc); err != nil {
		return nil, fmt.Errorf("xdevmem stack: %w", err)
	}
	if err = s.prog.SetSocket(cfg.Queue, s.sock.FD()); err != nil {
		return nil, fmt.Errorf("xdevmem stack: %w", err)
	}
	if err = s.attach(); err != nil {
		return nil, fmt.Errorf("xdevmem stack: %w", err)
	}

	s.link = newLinkEndpoint(s)
	if err = s.initNetstack(); err != nil {
		return nil, err
	}
	return s, nil
}

// initNetstack creates gVisor's stack over the link endpoint.
func (s *Stack) initNetstack() error {
	cfg := s.cfg
	s.ns = gstack.New(gstack.Options{
		NetworkProtocols: []gstack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol,
			// No duplicate address detection: the address is usable at once,
			// as it is on the kernel side with nodad.
			ipv6.NewProtocolWithOptions(ipv6.Options{DADConfigs: gstack.DADConfigurations{DupAddrDetectTransmits: 0}})},
		TransportProtocols: []gstack.TransportProtocolFactory{tcp.NewProtocol},
	})
	sack := tcpip.TCPSACKEnabled(true)
	s.ns.SetTransportProtocolOption(tcp.ProtocolNumber, &sack)
	rb := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4096, Default: cfg.RcvBuf, Max: cfg.RcvBuf}
	s.ns.SetTransportProtocolOption(tcp.ProtocolNumber, &rb)
	mod := tcpip.TCPModerateReceiveBufferOption(false)
	s.ns.SetTransportProtocolOption(tcp.ProtocolNumber, &mod)

	if terr := s.ns.CreateNIC(1, s.link); terr != nil {
		return fmt.Errorf("xdevmem stack: create NIC: %s", terr)
	}
	var routes []tcpip.Route
	for _, p := range s.prefixes {
		proto, addr := ipv4.ProtocolNumber, tcpip.AddrFromSlice(p.Addr().AsSlice())
		if p.Addr().Is6() {
			proto = ipv6.ProtocolNumber
		}
		pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: tcpip.AddressWithPrefix{Address: addr, PrefixLen: p.Bits()}}
		if terr := s.ns.AddProtocolAddress(1, pa, gstack.AddressProperties{}); terr != nil {
			return fmt.Errorf("xdevmem stack: add address %v: %s", p, terr)
		}
		routes = append(routes, tcpip.Route{Destination: pa.AddressWithPrefix.Subnet(), NIC: 1})
	}
	if cfg.Gateway.IsValid() {
		zero := tcpip.AddrFromSlice(make([]byte, len(cfg.Gateway.AsSlice())))
		sn, _ := tcpip.NewSubnet(zero, tcpip.MaskFromBytes(zero.AsSlice()))
		routes = append(routes, tcpip.Route{Destination: sn, Gateway: tcpip.AddrFromSlice(cfg.Gateway.AsSlice()), NIC: 1})
	}
	s.ns.SetRouteTable(routes)
	return nil
}

func (s *Stack) attach() error { return s.prog.Attach(s.ifindex) }

// Name implements devmemapi.Provider.
func (s *Stack) Name() string { return "emulated" }

// Ifindex is the interface's index.
func (s *Stack) Ifindex() int { return s.ifindex }

// Addr is the stack's address (Config.Addr).
func (s *Stack) Addr() netip.Addr { return s.prefixes[0].Addr() }

// Addrs are all the stack's addresses (Config.Addr, then Config.Addr6).
func (s *Stack) Addrs() []netip.Prefix { return append([]netip.Prefix(nil), s.prefixes...) }

// prefixes validates and lists the configured addresses.
func (cfg *Config) prefixes() ([]netip.Prefix, error) {
	if !cfg.Addr.IsValid() {
		return nil, fmt.Errorf("address %v: need an IPv4 or IPv6 prefix: %w", cfg.Addr, unix.EINVAL)
	}
	ps := []netip.Prefix{netip.PrefixFrom(cfg.Addr.Addr().Unmap(), cfg.Addr.Bits())}
	if ps[0].Addr().Is4() && ps[0].Bits() > 32 {
		ps[0] = netip.PrefixFrom(ps[0].Addr(), 32)
	}
	if cfg.Addr6.IsValid() {
		if !cfg.Addr6.Addr().Is6() || cfg.Addr6.Addr().Is4In6() || !ps[0].Addr().Is4() {
			return nil, fmt.Errorf("address %v: Addr6 must be IPv6, beside an IPv4 Addr: %w", cfg.Addr6, unix.EINVAL)
		}
		ps = append(ps, cfg.Addr6)
	}
	return ps, nil
}

// setPrefixes records the stack's addresses.
func (s *Stack) setPrefixes(ps []netip.Prefix) {
	s.prefixes = ps
	s.ours = s.ours[:0]
	for _, p := range ps {
		s.ours = append(s.ours, p.Addr().As16())
	}
}

// isOurs reports whether dst (16-byte form) is one of the stack's
// addresses.
func (s *Stack) isOurs(dst [16]byte) bool {
	for _, a := range s.ours {
		if a == dst {
			return true
		}
	}
	return false
}

// Region is the UMEM: the emulated dmabuf.
func (s *Stack) Region() *umem.Region { return s.region }

// XDPMode reports how the XDP program is attached ("native" or "generic").
func (s *Stack) XDPMode() string { return s.prog.Mode() }

// Stats takes a snapshot of the counters.
func (s *Stack) Stats() Stats {
	c := &s.cnt
	st := Stats{
		RxFrames: c.rxFrames.Load(), RxTCP: c.rxTCP.Load(), RxOther: c.rxOther.Load(),
		DropMalformed:      c.verdicts[VerdictMalformed].Load(),
		DropBadIPChecksum:  c.verdicts[VerdictBadIPChecksum].Load(),
		DropBadTCPChecksum: c.verdicts[VerdictBadTCPChecksum].Load(),
		DropOutOfWindow:    c.dropOutOfWindow.Load(),
		DropNotOurs:        c.dropNotOurs.Load(),
		NoFlow:             c.noFlow.Load(),
		RetransmitBytes:    c.retransmitBytes.Load(),
		DmabufBytes:        c.delivered[kindDmabuf].Load(),
		LinearBytes:        c.delivered[kindLinear].Load(),
		PlainBytes:         c.delivered[kindPlain].Load(),
		DmabufBytesCopied:  c.copied[kindDmabuf].Load(),
		LinearBytesCopied:  c.copied[kindLinear].Load(),
		PlainBytesCopied:   c.copied[kindPlain].Load(),
		HeaderBytesCopied:  c.headerCopyBytes.Load(),
		FrameBytesCopied:   c.frameCopyBytes.Load(),
		Frags:              c.frags.Load(),
		Unmapped:           c.unmapped.Load(),
		TxFrames:           c.txFrames.Load(),
		TxBytes:            c.txBytes.Load(),
		RecvCalls:          c.recvCalls.Load(),
		ETooSmall:          c.etoosmall.Load(),
		EFault:             c.efault.Load(),
		ENoDev:             c.enodev.Load(),
		FlowsCreated:       c.flowsCreated.Load(),
		FlowsClosed:        c.flowsClosed.Load(),
	}
	if s.sock != nil {
		st.XSK, _ = s.sock.Stats()
		st.TxDrops = s.sock.TXDrops()
	}
	if s.region != nil {
		st.Frames = s.region.Snapshot()
	}
	if s.link != nil && s.link.inj != nil {
		st.Faults = s.link.inj.stats()
	}
	if s.ns != nil {
		st.TCPSegments = s.ns.Stats().TCP.ValidSegmentsReceived.Value()
	}
	return st
}

// Close tears the stack down: connections, listeners and bindings are
// closed, the XDP program is detached, the socket and region are released.
// Close is idempotent.
func (s *Stack) Close() error {
	if !s.closing.CompareAndSwap(false, true) {
		return nil
	}
	var errs []error
	s.mu.Lock()
	conns := make([]*Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	lns := make([]*Listener, 0, len(s.listeners))
	for l := range s.listeners {
		lns = append(lns, l)
	}
	bs := make([]*rxBinding, 0, len(s.bindings))
	for b := range s.bindings {
		bs = append(bs, b)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	for _, l := range lns {
		l.Close()
	}
	if s.prog != nil {
		if err := s.prog.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.ns != nil {
		s.ns.Close()
		s.ns.Wait()
	}
	if s.link != nil {
		s.link.stop()
	}
	s.flows.drainAll(s.region)
	for _, b := range bs {
		b.Close()
	}
	if s.sock != nil {
		if err := s.sock.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.region != nil {
		// Give late frees a moment, then unmap.
		deadline := time.Now().Add(time.Second)
		for s.region.Snapshot().Free != s.region.Frames() && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if err := s.region.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

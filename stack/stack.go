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
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/umem"
)

// Defaults of Config.
const (
	DefaultRegionSize = 16 << 20
	DefaultRcvBuf     = 1 << 20
	DefaultMTU        = 1500
)

// Config configures an emulated devmem stack on one interface.
type Config struct {
	// Ifname names the interface; it must exist in the calling thread's
	// network namespace.
	Ifname string
	// Addr is the stack's IPv4 address and prefix. It must not be
	// configured on the kernel side of the interface: the XDP program steals
	// its ARP and IPv4 traffic.
	Addr netip.Prefix
	// Gateway, if valid, is the default route's next hop.
	Gateway netip.Addr
	// MTU defaults to the interface's MTU.
	MTU int
	// RegionSize is the UMEM (dmabuf) size; 0 means 16 MiB.
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
	// RcvBuf is each connection's TCP receive buffer; 0 means 1 MiB.
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
	cfg     Config
	ifindex int
	mac     net.HardwareAddr
	addr    [4]byte
	ns      *gstack.Stack
	region  *umem.Region
	sock    *umem.Socket
	prog    *umem.Program
	link    *linkEndpoint
	cnt     counters
	window  uint64
	active  atomic.Pointer[rxBinding]
	flows   flowTable
	closing atomic.Bool

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
	if !cfg.Addr.IsValid() || !cfg.Addr.Addr().Is4() {
		return nil, fmt.Errorf("xdevmem stack: address %v: need an IPv4 prefix: %w", cfg.Addr, unix.EINVAL)
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
		cfg.RcvBuf = DefaultRcvBuf
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
		addr:      cfg.Addr.Addr().As4(),
		window:    2*uint64(cfg.RcvBuf) + 256<<10,
		bindings:  map[*rxBinding]struct{}{},
		listeners: map[*Listener]struct{}{},
		conns:     map[*Conn]struct{}{},
		rings:     Rings{TCPDataSplit: true},
	}
	s.flows.init()
	s.flows.window = s.window
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
	if s.prog, err = umem.LoadProgram(umem.ProgramConfig{IPv4: []netip.Addr{cfg.Addr.Addr()}, Queues: cfg.Queue + 1}); err != nil {
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
		NetworkProtocols:   []gstack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
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
	pa := tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddrFrom4(s.addr).WithPrefix(),
	}
	pa.AddressWithPrefix.PrefixLen = cfg.Addr.Bits()
	if terr := s.ns.AddProtocolAddress(1, pa, gstack.AddressProperties{}); terr != nil {
		return fmt.Errorf("xdevmem stack: add address %v: %s", cfg.Addr, terr)
	}
	routes := []tcpip.Route{{Destination: pa.AddressWithPrefix.Subnet(), NIC: 1}}
	if cfg.Gateway.IsValid() {
		zero := tcpip.AddrFrom4([4]byte{})
		sn, _ := tcpip.NewSubnet(zero, tcpip.MaskFromBytes(zero.AsSlice()))
		routes = append(routes, tcpip.Route{Destination: sn, Gateway: tcpip.AddrFrom4(cfg.Gateway.As4()), NIC: 1})
	}
	s.ns.SetRouteTable(routes)
	return nil
}

func (s *Stack) attach() error { return s.prog.Attach(s.ifindex) }

// Name implements devmemapi.Provider.
func (s *Stack) Name() string { return "emulated" }

// Ifindex is the interface's index.
func (s *Stack) Ifindex() int { return s.ifindex }

// Addr is the stack's IPv4 address.
func (s *Stack) Addr() netip.Addr { return netip.AddrFrom4(s.addr) }

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

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

	"github.com/xdevmem/xdevmem/compat/netdev"
	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/umem"
)

// Defaults of Config.
const (
	DefaultRegionSize = 64 << 20
	DefaultMTU        = 1500
)

// Config configures an emulated devmem stack on one interface.
type Config struct {
	// Ifname names the interface; it must exist in the calling thread's
	// network namespace.
	Ifname string
	// Addr is the stack's address and prefix, IPv4 or IPv6. Configured on
	// the interface, it is shared with the kernel; configured nowhere, it
	// is the stack's alone (see AddressMode and addrmode.go).
	Addr netip.Prefix
	// AddressMode says how the address is shared with the kernel; the zero
	// value, AddressAuto, decides by whether the interface has it.
	AddressMode AddressMode
	// Addr6 optionally adds an IPv6 address to an IPv4 Addr (dual stack).
	Addr6 netip.Prefix
	// Gateway, if valid, is the default route's next hop.
	Gateway netip.Addr
	// MTU defaults to the interface's MTU.
	MTU int
	// RegionSize is the UMEM (dmabuf) size; 0 means 64 MiB. It must pass
	// CheckRegionSize.
	RegionSize uint64
	// Region, if set, is the UMEM to use instead of making one of
	// RegionSize bytes (libxdevmem passes one whose frames are an
	// application's udmabuf memfd). The stack owns it from New on, also
	// when New fails, and closes it on Close.
	Region *umem.Region
	// Queues is how many of the interface's RX queues (0 to Queues-1) get
	// an AF_XDP socket and a receive goroutine, all sharing the UMEM; 0
	// means every RX queue the interface has. Traffic arriving on a queue
	// without a socket goes to the kernel, so run all of them.
	Queues int
	// Channels is the number of logical RX queues that bindings, flow rules
	// and the RSS spread refer to (see steer.go); 0 means Queues.
	Channels int
	// HDSThresh is the emulated device's header-split threshold: TCP
	// payloads shorter than it stay whole in the header buffer, so the
	// segment has no dmabuf fragment and its bytes are ordinary data
	// (copied, no devmem control message, readable without
	// MSG_SOCK_DEVMEM), as the kernel delivers a readable skb. 0 splits
	// every payload. It models the device, not the ethtool setting of the
	// same name (see Rings, whose bind-rx checks it does not trigger).
	HDSThresh int
	// LinearHead models a device that splits late: it leaves the first
	// LinearHead bytes of every split segment's payload in the header
	// buffer. They reach the application copied into p with
	// SCM_DEVMEM_LINEAR, followed in the same recvmsg by the segment's
	// SCM_DEVMEM_DMABUF fragments, as the kernel delivers the linear part
	// of an skb that also has dmabuf frags. A payload no longer than
	// LinearHead has no fragment and is ordinary data. 0 (the default)
	// splits exactly at the payload; applications set it to exercise their
	// SCM_DEVMEM_LINEAR handling.
	LinearHead int
	// RcvBuf is each connection's TCP receive buffer (gVisor advertises
	// half of it as the window); 0 sizes it from the UMEM: what half the
	// receive frames hold in full-sized segments, at most 8 MiB. The window
	// bounds throughput more than anything else on veth; the UMEM bounds
	// the window (each segment pins a frame until delivered), so a larger
	// RcvBuf is lowered to that bound (see budget.go); it must be at least
	// 4096.
	RcvBuf int
	// OnAlert, if set, is told once per reason when a run of drops
	// probably stalls a flow (a peer sending unfinished checksums, an
	// exhausted dmabuf, ...), so that a hung transfer says why. It runs on
	// a goroutine of its own.
	OnAlert func(Alert)
	// Autorelease is the token release mode of a bind-rx that does not
	// choose one (BindRXConfig.Autorelease nil). nil means the host
	// kernel's (netdev.HostAutorelease): autorelease on where the
	// kernel's bind-rx lacks NETDEV_A_DMABUF_AUTORELEASE, as every
	// upstream kernel does, the series' 0 where it has it; so a program
	// behaves the same when the auto backend picks the kernel.
	Autorelease *bool
	// Lab holds switches for measurements and robustness tests; a
	// deployment leaves them zero.
	Lab Lab
}

// Lab are a stack's lab switches (Config.Lab): each makes the stack do
// what a deployment does not want — skip a check, leave out an
// optimisation, copy, break frames on purpose — to measure or test it.
// The zero value turns them all off.
type Lab struct {
	// TrustChecksum skips software checksum verification (benchmarks only;
	// corrupted frames would then reach the application).
	TrustChecksum bool
	// NoGRO disables coalescing consecutive segments before TCP.
	NoGRO bool
	// Faults injects seeded drops, duplicates, reordering, corruption and
	// truncation into received frames (off by default). Off, it costs the
	// receive path one branch per batch.
	Faults Faults
	// TXCopy makes devmem TX copy payload into TX frames instead of
	// chaining descriptors that point into the TX dmabuf (tx.go; for
	// comparison and for kernels without multi-buffer AF_XDP TX). The
	// stack copies anyway on such kernels.
	TXCopy bool
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
	devs     []Device      // one per RX queue; devs[0] also transmits
	prog     *umem.Program // nil on NewOn's devices
	link     *linkEndpoint
	cnt      counters
	budget   rxBudget                               // the UMEM's frame budget (budget.go)
	window   uint64                                 // bytes past a connection's read offset its fragment queue records
	bound    [MaxChannels]atomic.Pointer[rxBinding] // logical queue → binding
	steer    steering                               // the NIC's channels, RSS and rules (steer.go)
	nic      NIC
	flows    flowTable
	reasm    reassembler
	closing  atomic.Bool
	alerts   alerter

	addrMode    AddressMode
	addrModeWhy string
	autorelease bool          // the default token mode (Config.Autorelease)
	autoWhy     string        // why
	ports       *portTable    // the kernel's ports the stack holds; nil on NewOn's devices
	netns       *nsHandle     // the namespace New ran in; nil on NewOn's devices
	neigh       *neighTable   // shared-address mode only
	tx          txState       // devmem TX (tx.go)
	keptFrames  atomic.Uint32 // frames of BindTXReserved spans: never free

	mu        sync.Mutex
	rings     Rings // the NIC's ring settings; guarded by mu
	bindings  map[*rxBinding]struct{}
	listeners map[*Listener]struct{}
	conns     map[*Conn]struct{}
}

var _ devmemapi.Provider = (*Stack)(nil)

// New builds the stack: UMEM region, AF_XDP socket, XDP program, gVisor
// netstack. Call it from a thread in the interface's network namespace; the
// stack works from any goroutine afterwards.
func New(cfg Config) (_ *Stack, err error) {
	adopted := false // cfg.Region is s.region, which s.Close closes
	if cfg.Region != nil {
		defer func() {
			if err != nil && !adopted {
				cfg.Region.Close()
			}
		}()
	}
	prefixes, err := cfg.prefixes()
	if err != nil {
		return nil, fmt.Errorf("xdevmem stack: %w", err)
	}
	ifc, err := net.InterfaceByName(cfg.Ifname)
	if err != nil {
		return nil, fmt.Errorf("xdevmem stack: interface %q: %w", cfg.Ifname, err)
	}
	if ifc.Flags&net.FlagLoopback != 0 || len(ifc.HardwareAddr) != 6 {
		return nil, fmt.Errorf("xdevmem stack: interface %q is not an Ethernet device (the emulation needs Ethernet frames, XDP and AF_XDP): %w",
			cfg.Ifname, devmemapi.ErrNotSupported)
	}
	kernel, err := kernelAddrs()
	if err != nil {
		return nil, fmt.Errorf("xdevmem stack: list addresses: %w", err)
	}
	mode, modeWhy, err := chooseAddressMode(cfg.AddressMode, cfg.Ifname, prefixes, kernel)
	if err != nil {
		return nil, fmt.Errorf("xdevmem stack: %w", err)
	}
	if cfg.MTU == 0 {
		cfg.MTU = ifc.MTU
	}
	if cfg.Region != nil {
		cfg.RegionSize = cfg.Region.Size()
	}
	if cfg.RegionSize == 0 {
		cfg.RegionSize = DefaultRegionSize
	}
	autoQueues := cfg.Queues == 0
	if autoQueues {
		// An upper bound: the allocated queues. Only active ones can be
		// bound; the socket loop below stops at the first that is not.
		cfg.Queues = rxQueueCount(cfg.Ifname)
	}
	autoChannels := cfg.Channels == 0
	if autoChannels {
		cfg.Channels = cfg.Queues
	}
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("xdevmem stack: %w", err)
	}
	s := newStackState(cfg, prefixes)
	s.ifindex, s.mac = ifc.Index, ifc.HardwareAddr
	s.addrMode, s.addrModeWhy = mode, modeWhy
	if mode == AddressShared {
		s.neigh = newNeighTable()
	}
	defer func() {
		if err != nil {
			s.Close()
			if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
				err = fmt.Errorf("%w (AF_XDP and XDP need root, or CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF)", err)
			}
		}
	}()
	if cfg.Region != nil {
		s.region, adopted = cfg.Region, true
	} else if s.region, err = umem.NewRegion(umem.RegionConfig{Size: cfg.RegionSize}); err != nil {
		return nil, fmt.Errorf("xdevmem stack: %w", err)
	}
	var socks []*umem.Socket
	for q := 0; q < cfg.Queues; q++ {
		sc := s.socketConfig(q)
		if q > 0 {
			sc.Shared = socks[0]
		}
		sock, err := umem.NewSocket(s.region, s.ifindex, sc)
		if err != nil && autoQueues && q > 0 && errors.Is(err, unix.EINVAL) {
			// Queue q is allocated but not active (ethtool -L): the
			// interface has q active RX queues.
			cfg.Queues, s.cfg.Queues = q, q
			if autoChannels {
				cfg.Channels, s.cfg.Channels = q, q
				s.steer.init(q)
			}
			break
		}
		if err != nil {
			return nil, fmt.Errorf("xdevmem stack: rx queue %d: %w", q, err)
		}
		socks = append(socks, sock)
		s.devs = append(s.devs, sock)
	}
	pc := umem.ProgramConfig{Queues: cfg.Queues, Frags: cfg.MTU > SingleBufferMTU, Ports: mode == AddressShared}
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
	var steer func(port uint16, add bool) error
	if mode == AddressShared {
		prog := s.prog
		steer = func(port uint16, add bool) error {
			if add {
				return prog.AddPort(port)
			}
			return prog.DeletePort(port)
		}
	}
	if s.netns, err = currentNS(); err != nil {
		return nil, fmt.Errorf("xdevmem stack: %w", err)
	}
	s.ports = newPortTable(steer, mode == AddressDedicated, s.netns)
	for q, sock := range socks {
		if err = s.prog.SetSocket(q, sock.FD()); err != nil {
			return nil, fmt.Errorf("xdevmem stack: %w", err)
		}
	}
	if err = s.attach(); err != nil {
		return nil, fmt.Errorf("xdevmem stack: %w", err)
	}
	if err = s.start(); err != nil {
		return nil, err
	}
	return s, nil
}

// Link is what NewOn builds a stack on in place of an interface: devices
// that stand in for the interface's AF_XDP sockets.
type Link struct {
	// MAC is the stack's link address.
	MAC net.HardwareAddr
	// Open opens one RX queue's device over the stack's UMEM, configured
	// as a socket would be (cfg.Queue, ring sizes, TX frames, multi-buffer;
	// cfg.Shared is not set). The device of queue 0 also transmits. The
	// stack closes the devices it opened, on Close or when NewOn fails.
	Open func(region *umem.Region, cfg umem.SocketConfig) (Device, error)
}

// NewOn builds a stack over devices (see Device; umemtest.Device for tests
// that run without privileges) instead of an interface's AF_XDP sockets:
// the receive and transmit paths are New's, with no XDP program, no kernel
// port holds and no kernel neighbour table — the address is the stack's
// alone, and gVisor answers ARP itself. cfg.Ifname is not used; cfg.MTU 0
// means DefaultMTU and cfg.Queues 0 means 1.
func NewOn(cfg Config, l Link) (_ *Stack, err error) {
	prefixes, err := cfg.prefixes()
	if err != nil {
		return nil, fmt.Errorf("xdevmem stack: %w", err)
	}
	if len(l.MAC) != 6 || l.Open == nil {
		return nil, fmt.Errorf("xdevmem stack: a link needs a 6-byte MAC and an Open function: %w", unix.EINVAL)
	}
	if cfg.MTU == 0 {
		cfg.MTU = DefaultMTU
	}
	if cfg.RegionSize == 0 {
		cfg.RegionSize = DefaultRegionSize
	}
	if cfg.Queues == 0 {
		cfg.Queues = 1
	}
	if cfg.Channels == 0 {
		cfg.Channels = cfg.Queues
	}
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("xdevmem stack: %w", err)
	}
	s := newStackState(cfg, prefixes)
	s.mac = l.MAC
	s.addrMode, s.addrModeWhy = AddressDedicated, "a stack on devices has no kernel to share its address with"
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if s.region, err = umem.NewRegion(umem.RegionConfig{Size: cfg.RegionSize}); err != nil {
		return nil, fmt.Errorf("xdevmem stack: %w", err)
	}
	for q := 0; q < cfg.Queues; q++ {
		dev, err := l.Open(s.region, s.socketConfig(q))
		if err != nil {
			return nil, fmt.Errorf("xdevmem stack: rx queue %d: %w", q, err)
		}
		s.devs = append(s.devs, dev)
	}
	if err = s.start(); err != nil {
		return nil, err
	}
	return s, nil
}

// check validates a configuration whose defaults are filled in.
func (cfg *Config) check() error {
	if cfg.Queues < 1 || cfg.Channels < 1 || cfg.Channels > MaxChannels {
		return fmt.Errorf("%d queues, %d channels (1 to %d): %w", cfg.Queues, cfg.Channels, MaxChannels, unix.EINVAL)
	}
	if cfg.HDSThresh < 0 || cfg.LinearHead < 0 {
		return fmt.Errorf("hds-thresh %d, linear head %d: %w", cfg.HDSThresh, cfg.LinearHead, unix.EINVAL)
	}
	if cfg.MTU > MaxMTU {
		return fmt.Errorf("MTU %d of %s is too large (at most %d, in up to %d frames of %d bytes with XDP multi-buffer): %w",
			cfg.MTU, cfg.Ifname, MaxMTU, (MaxMTU+ethHdrLen+umem.DefaultFrameSize-1)/umem.DefaultFrameSize+1, umem.DefaultFrameSize, unix.EMSGSIZE)
	}
	if err := CheckMTU(cfg.MTU, cfg.hasIPv6()); err != nil {
		return fmt.Errorf("%s: %w", cfg.Ifname, err)
	}
	if err := CheckRegionSize(cfg.RegionSize, cfg.MTU, cfg.Queues); err != nil {
		return err
	}
	return cfg.sizeRcvBuf()
}

// socketConfig is how RX queue q's socket is configured: rings from the
// frame budget, TX frames only on queue 0 (the one that transmits), and
// XDP multi-buffer above SingleBufferMTU, where a frame may not fit one
// UMEM frame (and veth refuses single-buffer native XDP).
func (s *Stack) socketConfig(q int) umem.SocketConfig {
	sc := umem.SocketConfig{Queue: q, SG: s.cfg.MTU > SingleBufferMTU, RingSize: s.budget.ring}
	if q > 0 {
		sc.TXFrames = 1
	}
	return sc
}

// start builds the link endpoint over the devices and gVisor's stack over
// it, which starts the receive goroutines.
func (s *Stack) start() error {
	s.link = newLinkEndpoint(s)
	return s.initNetstack()
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

	// The NIC gets the link endpoint wrapped by the devmem TX engine (tx.go).
	if terr := s.ns.CreateNIC(1, s.nicEndpoint()); terr != nil {
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

// MTU limits: up to SingleBufferMTU every frame fits one UMEM frame; above
// it, up to MaxMTU, frames arrive in several (XDP multi-buffer).
const (
	SingleBufferMTU = 3506
	MaxMTU          = 9216
)

// newStackState builds a Stack's bookkeeping (no region, devices or
// netstack yet), shared by New and NewOn.
func newStackState(cfg Config, prefixes []netip.Prefix) *Stack {
	s := &Stack{
		cfg:       cfg,
		budget:    cfg.budget(),
		bindings:  map[*rxBinding]struct{}{},
		listeners: map[*Listener]struct{}{},
		conns:     map[*Conn]struct{}{},
		rings:     Rings{TCPDataSplit: true},
	}
	// The fragment queue records what gVisor's window (half of RcvBuf) may
	// bring with room to spare, never more than the budget allows.
	s.nic.s = s
	s.window = min(2*uint64(cfg.RcvBuf)+256<<10, s.budget.window)
	s.flows.init()
	s.flows.window = s.window
	s.flows.maxFrags = s.budget.maxFrags
	s.setPrefixes(prefixes)
	s.steer.init(max(cfg.Channels, 1))
	if cfg.Autorelease != nil {
		s.autorelease, s.autoWhy = *cfg.Autorelease, "set by the configuration"
	} else {
		d := hostAutorelease()
		s.autorelease, s.autoWhy = d.On, "the host kernel's default: "+d.Reason
	}
	return s
}

// hostAutorelease is the host kernel's default token mode (a variable for
// tests).
var hostAutorelease = netdev.HostAutorelease

// DefaultAutorelease reports the token release mode a bind-rx without the
// autorelease attribute gets (Config.Autorelease, else the host kernel's)
// and why, in words for a person.
func (s *Stack) DefaultAutorelease() (on bool, why string) { return s.autorelease, s.autoWhy }

// MaxChannels bounds the logical RX queues (channels) of the emulated NIC.
const MaxChannels = 64

// rxQueueCount is the number of RX queues the interface has (rtnetlink's
// IFLA_NUM_RX_QUEUES, read in the calling thread's network namespace, which
// sysfs may not show), at least 1.
func rxQueueCount(ifname string) int {
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return 1
	}
	n, err := umem.RXQueues(ifc.Index)
	if err != nil || n < 1 {
		return 1
	}
	return n
}

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

// Accounting is a snapshot of the UMEM's frame accounting (free, posted,
// pinned, held, TX): the emulated dmabuf's state, exact when the stack is
// quiet.
func (s *Stack) Accounting() umem.Accounting { return s.region.Snapshot() }

// DmabufSize is the UMEM's size in bytes: the emulated dmabuf's.
func (s *Stack) DmabufSize() uint64 { return s.region.Size() }

// XDPMode reports how the XDP program is attached ("native" or "generic";
// "" on NewOn's devices, which have none).
func (s *Stack) XDPMode() string {
	if s.prog == nil {
		return ""
	}
	return s.prog.Mode()
}

// Stats takes a snapshot of the counters.
func (s *Stack) Stats() Stats {
	c := &s.cnt
	st := Stats{
		RxFrames: c.rxFrames.Load(), RxTCP: c.rxTCP.Load(), RxOther: c.rxOther.Load(),
		DropMalformed:      c.verdicts[verdictMalformed].Load(),
		DropBadIPChecksum:  c.verdicts[verdictBadIPChecksum].Load(),
		DropBadTCPChecksum: c.verdicts[verdictBadTCPChecksum].Load(),
		DropUnsupported:    c.verdicts[verdictUnsupported].Load(),
		DropOutOfWindow:    c.dropOutOfWindow.Load(),
		DropNotOurs:        c.dropNotOurs.Load(),
		NoFlow:             c.noFlow.Load(),
		IPFragments:        c.ipFragments.Load(),
		IPReassembled:      c.ipReassembled.Load(),
		IPFragmentDrops:    c.ipFragDrops.Load(),
		RetransmitBytes:    c.retransmitBytes.Load(),
		RxCoalesced:        c.rxCoalesced.Load(),
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
		FlowsEvicted:       c.flowsEvicted.Load(),
	}
	for _, dev := range s.devs {
		x, _ := dev.Stats()
		st.XSK.RxDropped += x.RxDropped
		st.XSK.RxInvalidDescs += x.RxInvalidDescs
		st.XSK.TxInvalidDescs += x.TxInvalidDescs
		st.XSK.RxRingFull += x.RxRingFull
		st.XSK.RxFillRingEmpty += x.RxFillRingEmpty
		st.XSK.TxRingEmpty += x.TxRingEmpty
		st.TxDrops += x.TxDrops // only devs[0] transmits
		st.TxKickStalls += x.KickStalls
	}
	st.TxKickErrors = c.kickErrors.Load()
	if s.region != nil {
		st.Frames = s.region.Snapshot()
	}
	if s.link != nil {
		for _, q := range s.link.queues {
			if q.inj != nil {
				f := q.inj.stats()
				st.Faults.Dropped += f.Dropped
				st.Faults.Duplicated += f.Duplicated
				st.Faults.Reordered += f.Reordered
				st.Faults.Corrupted += f.Corrupted
				st.Faults.Truncated += f.Truncated
			}
		}
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
	s.closeTX() // devmem TX connections and bindings (tx.go)
	if s.prog != nil {
		if err := s.prog.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.ports != nil {
		s.ports.closeEverything()
	}
	s.netns.close()
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
	for i := len(s.devs) - 1; i >= 0; i-- { // sharers first, the UMEM's owner last
		if err := s.devs[i].Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.region != nil {
		// Give late frees a moment, then unmap.
		deadline := time.Now().Add(time.Second)
		for s.region.Snapshot().Free+s.keptFrames.Load() != s.region.Frames() && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if err := s.region.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

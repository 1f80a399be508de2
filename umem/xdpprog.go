package umem

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// ErrXDPAttached is returned (wrapped) by [Program.Attach] when the interface
// already carries an XDP program: xdevmem never replaces someone else's.
var ErrXDPAttached = errors.New("interface already has an XDP program")

// Limits of a [ProgramConfig].
const (
	// MaxProgramIPv4 is the most IPv4 addresses one program matches.
	MaxProgramIPv4 = 64
	// MaxProgramQueues is the largest XSKMAP a program gets.
	MaxProgramQueues = 1024
)

// ProgramConfig says which traffic the XDP program steers to the AF_XDP
// sockets. Everything it does not match goes on to the kernel untouched.
type ProgramConfig struct {
	// IPv4 are the userspace stack's addresses: the program steers ARP
	// packets whose target protocol address is one of them and IPv4 packets
	// whose destination is one of them. At least one is required.
	IPv4 []netip.Addr
	// IPv6 are the stack's IPv6 addresses: the program steers IPv6 packets
	// whose destination is one of them or its solicited-node multicast
	// address (neighbour solicitations for it).
	IPv6 []netip.Addr
	// Queues is the number of RX queues, the size of the XSKMAP
	// (default 1).
	Queues int

	// Ports switches the program to shared-address mode, for addresses
	// the kernel has too: it takes only TCP segments to a port in its port
	// map ([Program.AddPort]) — whole segments and first IPv4 fragments,
	// which carry the ports — and passes everything else to the kernel:
	// ARP, neighbour discovery, ICMP, UDP, other ports, later fragments.
	// Without it the program takes all of the addresses' traffic
	// (dedicated-address mode).
	Ports bool

	// Frags loads the program as multi-buffer capable (BPF_F_XDP_HAS_FRAGS):
	// frames larger than one page, as jumbo MTUs need, reach it in pieces
	// (it reads only the first piece's headers), and veth allows native
	// XDP above MTU 3506 only with such a program.
	Frags bool
}

func progFlags(cfg ProgramConfig) uint32 {
	if cfg.Frags {
		return unix.BPF_F_XDP_HAS_FRAGS
	}
	return 0
}

// progIPv6Targets returns the 16-byte destinations the program steers for
// the IPv6 addresses: each address and its solicited-node multicast group.
func progIPv6Targets(addrs []netip.Addr) [][16]byte {
	var out [][16]byte
	for _, a := range addrs {
		b := a.As16()
		if !slices.Contains(out, b) {
			out = append(out, b)
		}
		sn := [16]byte{0xff, 0x02, 10: 0, 11: 0x01, 12: 0xff, 13: b[13], 14: b[14], 15: b[15]}
		if !slices.Contains(out, sn) {
			out = append(out, sn)
		}
	}
	return out
}

// Program is the XDP program that steers the stack's traffic into AF_XDP
// sockets, with its XSKMAP and, once attached, the BPF link that holds it on
// an interface. A packet the program matches is redirected to the socket
// registered for the RX queue it arrived on; if that queue has no socket,
// it passes to the kernel.
//
// The link is the only thing that keeps the program attached, so a process
// that dies, even by kill -9, leaves nothing attached. Methods are safe for
// concurrent use.
type Program struct {
	mu      sync.Mutex
	prog    *ebpf.Program
	xsks    *ebpf.Map
	ports   *ebpf.Map // nil without ProgramConfig.Ports
	link    link.Link
	mode    string
	ifindex int
	queues  int
	closed  bool
}

// progXDPPass is XDP_PASS: what the program returns for frames it does
// not redirect, and the redirect's fallback for an empty XSKMAP slot.
const progXDPPass = 2

// Offsets in struct xdp_md.
const (
	progMDData    = 0
	progMDDataEnd = 4
	progMDRxQueue = 16
)

// Offsets and values in an untagged Ethernet frame.
const (
	progEthHdrLen   = 14
	progEthTypeOff  = 12
	progARPLen      = progEthHdrLen + 28 // Ethernet/IPv4 ARP
	progARPTPAOff   = progEthHdrLen + 24
	progIPv4MinLen  = progEthHdrLen + 20
	progIPv4DstOff  = progEthHdrLen + 16 // whatever the header length
	progEthTypeARP  = 0x0806
	progEthTypeIPv4 = 0x0800
	progARPHwEther  = 1
	ipProtoTCP      = 6
)

// Kernel object names (at most 15 characters) and the program's license.
const (
	progXSKMapName  = "xdevmem_xsks"
	progPortMapName = "xdevmem_ports"
	progProgramName = "xdevmem_steer"
	progLicense     = "Dual BSD/GPL"
)

// LoadProgram checks cfg, creates the XSKMAP and loads the program. It does
// not attach it; see [Program.Attach].
func LoadProgram(cfg ProgramConfig) (*Program, error) {
	addrs, queues, err := cfg.progCheck()
	if err != nil {
		return nil, fmt.Errorf("load xdp program: %w", err)
	}
	xsks, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       progXSKMapName,
		Type:       ebpf.XSKMap,
		KeySize:    4,
		ValueSize:  4,
		MaxEntries: uint32(queues),
	})
	if err != nil {
		return nil, fmt.Errorf("load xdp program: create xskmap: %w", err)
	}
	v6 := progIPv6Targets(cfg.IPv6)
	portsFD := -1
	var ports *ebpf.Map
	if cfg.Ports {
		// Neighbour discovery stays with the kernel: only the addresses
		// themselves, not their solicited-node groups.
		v6 = v6[:0]
		for _, a := range cfg.IPv6 {
			if b := a.As16(); !slices.Contains(v6, b) {
				v6 = append(v6, b)
			}
		}
		ports, err = ebpf.NewMap(&ebpf.MapSpec{
			Name:       progPortMapName,
			Type:       ebpf.Hash,
			KeySize:    4,
			ValueSize:  4,
			MaxEntries: 1 << 16,
		})
		if err != nil {
			xsks.Close()
			return nil, fmt.Errorf("load xdp program: create port map: %w", err)
		}
		portsFD = ports.FD()
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         progProgramName,
		Type:         ebpf.XDP,
		License:      progLicense,
		Instructions: progInstructions(addrs, v6, xsks.FD(), portsFD),
		Flags:        progFlags(cfg),
	})
	if err != nil {
		xsks.Close()
		if ports != nil {
			ports.Close()
		}
		return nil, fmt.Errorf("load xdp program: %w", err)
	}
	return &Program{prog: prog, xsks: xsks, ports: ports, queues: queues}, nil
}

// progPortKey is the port map's key for a TCP port: the port's two bytes in
// network order, as the program loads them from the header, zero-extended
// to a word.
func progPortKey(port uint16) [4]byte { return [4]byte{byte(port >> 8), byte(port)} }

// AddPort makes the program take TCP segments to port (shared-address
// mode only). Adding a port twice is not an error.
func (p *Program) AddPort(port uint16) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.progCheckPorts(); err != nil {
		return fmt.Errorf("add port %d: %w", port, err)
	}
	if err := p.ports.Update(progPortKey(port), uint32(1), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("add port %d: %w", port, err)
	}
	return nil
}

// DeletePort gives port's segments back to the kernel. Deleting a port
// that is not there is not an error.
func (p *Program) DeletePort(port uint16) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.progCheckPorts(); err != nil {
		return fmt.Errorf("delete port %d: %w", port, err)
	}
	if err := p.ports.Delete(progPortKey(port)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete port %d: %w", port, err)
	}
	return nil
}

// Ports lists the ports in the port map, in no particular order.
func (p *Program) Ports() ([]uint16, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.progCheckPorts(); err != nil {
		return nil, err
	}
	var out []uint16
	var k [4]byte
	var v uint32
	it := p.ports.Iterate()
	for it.Next(&k, &v) {
		out = append(out, binary.BigEndian.Uint16(k[:2]))
	}
	return out, it.Err()
}

func (p *Program) progCheckPorts() error {
	switch {
	case p.closed:
		return net.ErrClosed
	case p.ports == nil:
		return errors.New("the program matches addresses, not ports (ProgramConfig.Ports is off)")
	}
	return nil
}

// progCheck validates the configuration and returns the addresses, unique
// and in order, and the queue count.
func (cfg ProgramConfig) progCheck() ([]netip.Addr, int, error) {
	queues := cfg.Queues
	if queues == 0 {
		queues = 1
	}
	if queues < 1 || queues > MaxProgramQueues {
		return nil, 0, fmt.Errorf("queues %d out of range [1, %d]", cfg.Queues, MaxProgramQueues)
	}
	var addrs []netip.Addr
	for _, a := range cfg.IPv4 {
		a = a.Unmap()
		if !a.Is4() {
			return nil, 0, fmt.Errorf("%v is not an IPv4 address", a)
		}
		if !slices.Contains(addrs, a) {
			addrs = append(addrs, a)
		}
	}
	for _, a := range cfg.IPv6 {
		if !a.Is6() || a.Is4In6() {
			return nil, 0, fmt.Errorf("%v is not an IPv6 address", a)
		}
	}
	if len(addrs) == 0 && len(cfg.IPv6) == 0 {
		return nil, 0, errors.New("no IPv4 address to steer")
	}
	if len(addrs) > MaxProgramIPv4 {
		return nil, 0, fmt.Errorf("%d IPv4 addresses, at most %d", len(addrs), MaxProgramIPv4)
	}
	return addrs, queues, nil
}

// progNet16 and progNet32 turn bytes in network order into the immediate a
// load of them from the packet compares equal to.
func progNet16(v uint16) int32 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return int32(binary.NativeEndian.Uint16(b[:]))
}

func progNet32(b [4]byte) int32 { return int32(binary.NativeEndian.Uint32(b[:])) }

// progInstructions builds the program. In C it would read:
//
//	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
//	if (data + 14 > end) return XDP_PASS;
//	switch (eth->h_proto) {
//	case htons(ETH_P_ARP):
//		if (data + 42 > end) return XDP_PASS;
//		if (arp->htype != htons(1) || arp->ptype != htons(ETH_P_IP) ||
//		    arp->hlen != 6 || arp->plen != 4) return XDP_PASS;
//		if (arp->tpa is ours) goto match;
//		return XDP_PASS;
//	case htons(ETH_P_IP):
//		if (data + 34 > end) return XDP_PASS;
//		if (ip->version != 4 || ip->ihl < 5) return XDP_PASS;
//		if (ip->daddr is ours) goto match;  // fixed offset, options or not
//		return XDP_PASS;
//	}
//	return XDP_PASS;
//	match:
//	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
//
// VLAN-tagged frames have another ethertype and pass.
//
// With a port map (portsFD >= 0, shared-address mode) ARP always passes, and
// "goto match" for IPv4 and IPv6 becomes:
//
//	if (ip->protocol != IPPROTO_TCP) return XDP_PASS;      // IPv6: nexthdr
//	if (ip->frag_off & htons(0x1fff)) return XDP_PASS;     // IPv4: no ports
//	tcp = (void *)ip + ip->ihl * 4;                        // IPv6: ip + 40
//	if (tcp + 4 > end) return XDP_PASS;
//	key = tcp->dest;
//	if (!bpf_map_lookup_elem(&ports, &key)) return XDP_PASS;
//	goto match;
func progInstructions(addrs []netip.Addr, v6 [][16]byte, xsksFD, portsFD int) asm.Instructions {
	const (
		ctx  = asm.R6 // struct xdp_md *, kept across the helper call
		data = asm.R2
		end  = asm.R3
		tmp  = asm.R4
		val  = asm.R5
	)
	bounds := func(n int32) asm.Instructions {
		return asm.Instructions{
			asm.Mov.Reg(tmp, data),
			asm.Add.Imm(tmp, n),
			asm.JGT.Reg(tmp, end, "pass"),
		}
	}
	shared := portsFD >= 0
	ipv4Ours, ipv6Ours := "match", "match"
	if shared {
		ipv4Ours, ipv6Ours = "tcp4", "tcp6"
	}
	ours := func(match string) asm.Instructions {
		var insns asm.Instructions
		for _, a := range addrs {
			// 32-bit compare: a 64-bit one would sign-extend the immediate.
			insns = append(insns, asm.JEq.Imm32(val, progNet32(a.As4()), match))
		}
		return append(insns, asm.Ja.Label("pass"))
	}

	insns := asm.Instructions{
		asm.Mov.Reg(ctx, asm.R1),
		asm.LoadMem(data, ctx, progMDData, asm.Word),
		asm.LoadMem(end, ctx, progMDDataEnd, asm.Word),
	}
	insns = append(insns, bounds(progEthHdrLen)...)
	insns = append(insns, asm.LoadMem(val, data, progEthTypeOff, asm.Half))
	if !shared {
		insns = append(insns, asm.JEq.Imm(val, progNet16(progEthTypeARP), "arp"))
	}
	if len(v6) > 0 {
		insns = append(insns, asm.JEq.Imm(val, progNet16(0x86dd), "ipv6"))
	}
	insns = append(insns, asm.JNE.Imm(val, progNet16(progEthTypeIPv4), "pass"))

	// IPv4: version 4, a header of at least 20 bytes, all of it in bounds.
	insns = append(insns, bounds(progIPv4MinLen)...)
	insns = append(insns,
		asm.LoadMem(val, data, progEthHdrLen, asm.Byte),
		asm.Mov.Reg(tmp, val),
		asm.RSh.Imm(tmp, 4),
		asm.JNE.Imm(tmp, 4, "pass"),
		asm.And.Imm(val, 0x0f),
		asm.JLT.Imm(val, 5, "pass"),
		asm.LoadMem(val, data, progIPv4DstOff, asm.Word),
	)
	insns = append(insns, ours(ipv4Ours)...)

	if !shared {
		// ARP: Ethernet hardware, IPv4 protocol, 6- and 4-byte addresses.
		arp := bounds(progARPLen)
		arp[0] = arp[0].WithSymbol("arp")
		insns = append(insns, arp...)
		insns = append(insns,
			asm.LoadMem(val, data, progEthHdrLen, asm.Half),
			asm.JNE.Imm(val, progNet16(progARPHwEther), "pass"),
			asm.LoadMem(val, data, progEthHdrLen+2, asm.Half),
			asm.JNE.Imm(val, progNet16(progEthTypeIPv4), "pass"),
			asm.LoadMem(val, data, progEthHdrLen+4, asm.Half),
			asm.JNE.Imm(val, progNet16(6<<8|4), "pass"),
			asm.LoadMem(val, data, progARPTPAOff, asm.Word),
		)
		insns = append(insns, ours("match")...)
	}

	// IPv6: version 6, the fixed header in bounds, the destination (at
	// 14+24) one of ours or a solicited-node group of ours.
	if len(v6) > 0 {
		const w0, w1, w2 = asm.R7, asm.R8, asm.R9
		ip6 := bounds(14 + 40)
		ip6[0] = ip6[0].WithSymbol("ipv6")
		insns = append(insns, ip6...)
		insns = append(insns,
			asm.LoadMem(val, data, progEthHdrLen, asm.Byte),
			asm.RSh.Imm(val, 4),
			asm.JNE.Imm(val, 6, "pass"),
			asm.LoadMem(w0, data, 38, asm.Word),
			asm.LoadMem(w1, data, 42, asm.Word),
			asm.LoadMem(w2, data, 46, asm.Word),
			asm.LoadMem(val, data, 50, asm.Word),
		)
		word := func(t [16]byte, i int) int32 { return progNet32([4]byte(t[4*i : 4*i+4])) }
		for i, t := range v6 {
			next := fmt.Sprintf("v6_%d", i+1)
			first := asm.JNE.Imm32(w0, word(t, 0), next)
			if i > 0 {
				first = first.WithSymbol(fmt.Sprintf("v6_%d", i))
			}
			insns = append(insns,
				first,
				asm.JNE.Imm32(w1, word(t, 1), next),
				asm.JNE.Imm32(w2, word(t, 2), next),
				asm.JEq.Imm32(val, word(t, 3), ipv6Ours),
			)
		}
		insns = append(insns, asm.Ja.Label("pass").WithSymbol(fmt.Sprintf("v6_%d", len(v6))))
	}

	if shared {
		const tcp, port = asm.R7, asm.R8
		// IPv4 to one of our addresses (version and IHL checked above);
		// without any, the block would be unreachable, which the verifier
		// refuses.
		if len(addrs) > 0 {
			insns = append(insns,
				asm.LoadMem(val, data, progEthHdrLen+9, asm.Byte).WithSymbol("tcp4"),
				asm.JNE.Imm(val, ipProtoTCP, "pass"),
				asm.LoadMem(val, data, progEthHdrLen+6, asm.Half),
				asm.And.Imm(val, progNet16(0x1fff)),
				asm.JNE.Imm(val, 0, "pass"),
				asm.LoadMem(val, data, progEthHdrLen, asm.Byte),
				asm.And.Imm(val, 0x0f),
				asm.LSh.Imm(val, 2),
				asm.Mov.Reg(tcp, data),
				asm.Add.Reg(tcp, val),
				asm.Add.Imm(tcp, progEthHdrLen),
				asm.Ja.Label("ports"),
			)
		}
		if len(v6) > 0 {
			// IPv6 to one of our addresses; TCP right after the fixed
			// header (behind extension headers it passes).
			insns = append(insns,
				asm.LoadMem(val, data, progEthHdrLen+6, asm.Byte).WithSymbol("tcp6"),
				asm.JNE.Imm(val, ipProtoTCP, "pass"),
				asm.Mov.Reg(tcp, data),
				asm.Add.Imm(tcp, progEthHdrLen+40),
			)
		}
		insns = append(insns,
			asm.Mov.Reg(tmp, tcp).WithSymbol("ports"),
			asm.Add.Imm(tmp, 4),
			asm.JGT.Reg(tmp, end, "pass"),
			asm.LoadMem(port, tcp, 2, asm.Half),
			asm.StoreMem(asm.RFP, -4, port, asm.Word),
			asm.LoadMapPtr(asm.R1, portsFD),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "pass"),
			asm.Ja.Label("match"),
		)
	}

	insns = append(insns,
		// bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS)
		asm.LoadMapPtr(asm.R1, xsksFD).WithSymbol("match"),
		asm.LoadMem(asm.R2, ctx, progMDRxQueue, asm.Word),
		asm.Mov.Imm(asm.R3, progXDPPass),
		asm.FnRedirectMap.Call(),
		asm.Return(),
	)
	return append(insns,
		asm.Mov.Imm(asm.R0, progXDPPass).WithSymbol("pass"),
		asm.Return(),
	)
}

// Attach attaches the program to the interface with a BPF link: in native
// (driver) mode if the driver supports it, else in generic mode. It fails
// with [ErrXDPAttached] if the interface already has an XDP program, and
// if the program is attached already. The interface index is looked up in
// the calling thread's network namespace (see netns.NS.Do).
func (p *Program) Attach(ifindex int) error {
	return p.attach(ifindex, link.XDPDriverMode, link.XDPGenericMode)
}

func (p *Program) attach(ifindex int, modes ...link.XDPAttachFlags) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return fmt.Errorf("attach xdp to ifindex %d: %w", ifindex, net.ErrClosed)
	}
	if p.link != nil {
		return fmt.Errorf("attach xdp to ifindex %d: already attached to ifindex %d", ifindex, p.ifindex)
	}
	var errs []error
	for _, mode := range modes {
		l, err := link.AttachXDP(link.XDPOptions{Program: p.prog, Interface: ifindex, Flags: mode})
		if err == nil {
			p.link, p.mode, p.ifindex = l, progModeName(mode), ifindex
			return nil
		}
		switch {
		case errors.Is(err, unix.EBUSY), errors.Is(err, unix.EEXIST):
			// EBUSY: a program or link holds this mode; EEXIST: one holds
			// the other mode. Either way, not ours to replace.
			return fmt.Errorf("attach xdp to ifindex %d: %w: %w", ifindex, ErrXDPAttached, inUse(ifindex, err))
		case errors.Is(err, unix.ENODEV):
			return fmt.Errorf("attach xdp to ifindex %d: no such interface: %w", ifindex, err)
		}
		errs = append(errs, fmt.Errorf("%s mode: %w", progModeName(mode), err))
	}
	return fmt.Errorf("attach xdp to ifindex %d: %w", ifindex, errors.Join(errs...))
}

func progModeName(mode link.XDPAttachFlags) string {
	switch mode {
	case link.XDPDriverMode:
		return "native"
	case link.XDPGenericMode:
		return "generic"
	case link.XDPOffloadMode:
		return "offload"
	}
	return fmt.Sprintf("mode %#x", uint32(mode))
}

// Mode reports how the program is attached: "native" or "generic", or ""
// when it is not attached.
func (p *Program) Mode() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.link == nil {
		return ""
	}
	return p.mode
}

// Queues returns the size of the XSKMAP: queues 0 to Queues()-1 can have a
// socket.
func (p *Program) Queues() int { return p.queues }

// SetSocket makes the program redirect what it matches on RX queue queue to
// the AF_XDP socket fd (XSKMAP[queue] = fd), replacing any socket there.
// The socket must be bound to this interface and queue for the kernel to
// deliver to it. The map does not keep the socket open: when its last file
// descriptor closes, the kernel removes it from the map.
func (p *Program) SetSocket(queue int, fd int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.progCheckQueue(queue); err != nil {
		return fmt.Errorf("set xsk for queue %d: %w", queue, err)
	}
	if fd < 0 {
		return fmt.Errorf("set xsk for queue %d: invalid fd %d", queue, fd)
	}
	if err := p.xsks.Update(uint32(queue), uint32(fd), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("set xsk for queue %d: %w", queue, err)
	}
	return nil
}

// DeleteSocket removes queue's socket from the XSKMAP; what the program
// matches on that queue passes to the kernel again. Removing an empty entry
// is not an error.
func (p *Program) DeleteSocket(queue int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.progCheckQueue(queue); err != nil {
		return fmt.Errorf("delete xsk for queue %d: %w", queue, err)
	}
	if err := p.xsks.Delete(uint32(queue)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete xsk for queue %d: %w", queue, err)
	}
	return nil
}

func (p *Program) progCheckQueue(queue int) error {
	if p.closed {
		return net.ErrClosed
	}
	if queue < 0 || queue >= p.queues {
		return fmt.Errorf("queue out of range [0, %d)", p.queues)
	}
	return nil
}

// Close detaches the program (closes the link) and releases the program and
// its XSKMAP. It is idempotent.
func (p *Program) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	var errs []error
	if p.link != nil {
		if err := p.link.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach xdp from ifindex %d: %w", p.ifindex, err))
		}
		p.link = nil
	}
	if err := p.prog.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close xdp program: %w", err))
	}
	if err := p.xsks.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close xskmap: %w", err))
	}
	if p.ports != nil {
		if err := p.ports.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close port map: %w", err))
		}
	}
	return errors.Join(errs...)
}

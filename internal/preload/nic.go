package preload

import (
	"fmt"
	"net"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat"
	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/stack"
	"github.com/xdevmem/xdevmem/umem"
)

// An emulated NIC is an Ethernet interface of the namespace as the
// program sees it through the library: its ethtool settings (header
// split, channels, RSS, ntuple rules) and, while a dmabuf is bound, the
// emulated stack whose UMEM is that dmabuf's memory.
//
// # The stack's lifetime
//
// The UMEM has to be registered when the AF_XDP sockets are made, so the
// stack is made by the first bind (RX or TX) with that binding's dmabuf as
// its UMEM, and closed when the last binding and the last emulated socket
// on it are gone. Settings made before stay with the NIC and are applied
// to each new stack. One dmabuf at a time is the UMEM: binding another
// while the stack is in use is EBUSY.
//
// An RX dmabuf is the whole UMEM: received frames land in it (frame
// offset = dmabuf offset, so the program's own mapping shows the
// payload). A TX dmabuf is the UMEM's first frames, reserved for the
// program's payload, followed by memory the stack receives into and
// builds headers in (txTail).

// txTail is the memory a TX stack adds behind the TX dmabuf: a full fill
// ring per RX queue and room for TX frames.
func txTail(queues int) uint64 { return uint64(queues*2048+1024) * umem.DefaultFrameSize }

// nic is one emulated NIC. Its fields are guarded by Lib.mu.
type nic struct {
	ifindex    int
	name       string
	queues     int // the interface's active RX queues: AF_XDP sockets
	rings      stack.Rings
	channels   int // RX channels, the logical RX queues
	txChannels int
	rss        int // ethtool -X equal N; 0: every channel
	ntuple     bool
	rules      []*nicRule
	nextRule   int

	st       *stack.Stack
	umem     *dmabuf // the dmabuf whose memory is st's UMEM
	umemTX   bool    // it is a TX dmabuf (BindTXReserved)
	txBound  bool    // its TX binding is live
	bindings int     // live bindings on st
	socks    int     // emulated sockets on st
}

// nicRule is one ethtool ntuple rule: its id, and the stack's id while a
// stack runs.
type nicRule struct {
	id  int
	r   stack.FlowRule
	sid int
}

// nicFor returns the emulated NIC of ifindex, making it on first use;
// nil when the interface is not one the emulation runs on (not Ethernet,
// loopback) or does not exist. l.mu must be held.
func (l *Lib) nicFor(ifindex int) *nic {
	if n := l.nics[ifindex]; n != nil {
		return n
	}
	ifc, err := net.InterfaceByIndex(ifindex)
	if err != nil || ifc.Flags&net.FlagLoopback != 0 || len(ifc.HardwareAddr) != 6 {
		return nil
	}
	ch := compat.ActiveRXQueues(ifc.Name)
	n := &nic{ifindex: ifindex, name: ifc.Name, rings: stack.Rings{TCPDataSplit: true}, queues: ch,
		channels: max(ch, 2), txChannels: max(ch, 2), ntuple: true}
	l.nics[ifindex] = n
	return n
}

// nicByName is nicFor by interface name. l.mu must be held.
func (l *Lib) nicByName(name string) *nic {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return nil
	}
	return l.nicFor(ifc.Index)
}

// addrs picks the stack's addresses: the interface's first global IPv4
// and IPv6 addresses (the kernel keeps them: shared-address mode), or
// XDEVMEM_ADDR (a prefix configured nowhere: dedicated mode).
func (n *nic) addrs() (v4, v6 netip.Prefix, err error) {
	if s := os.Getenv("XDEVMEM_ADDR"); s != "" {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return v4, v6, fmt.Errorf("XDEVMEM_ADDR=%q: %w", s, unix.EINVAL)
		}
		return p, v6, nil
	}
	ifc, err := net.InterfaceByIndex(n.ifindex)
	if err != nil {
		return v4, v6, err
	}
	as, _ := ifc.Addrs()
	for _, a := range as {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, _ := netip.AddrFromSlice(ipn.IP)
		ip = ip.Unmap()
		ones, _ := ipn.Mask.Size()
		switch {
		case ip.Is4() && !v4.IsValid():
			v4 = netip.PrefixFrom(ip, ones)
		case ip.Is6() && !ip.IsLinkLocalUnicast() && !v6.IsValid():
			v6 = netip.PrefixFrom(ip, ones)
		}
	}
	if !v4.IsValid() && !v6.IsValid() {
		return v4, v6, fmt.Errorf("%s has no IP address for the emulated stack (configure one, or set XDEVMEM_ADDR=PREFIX): %w", n.name, unix.EADDRNOTAVAIL)
	}
	return v4, v6, nil
}

// ensureStack makes the NIC's stack with d as its UMEM (tx: as a TX
// dmabuf) unless it runs with it already. A stack over another dmabuf is
// replaced when nothing uses it, else EBUSY. l.mu must be held.
func (l *Lib) ensureStack(n *nic, d *dmabuf, tx bool) error {
	if n.st != nil {
		if n.umem == d && n.umemTX == tx {
			return nil
		}
		if n.bindings > 0 || n.socks > 0 {
			return fmt.Errorf("%s receives into dmabuf of memfd inode %d already (the emulation has one UMEM per interface, and binds one dmabuf at a time): %w",
				n.name, n.umem.ino, unix.EBUSY)
		}
		l.closeStack(n)
	}
	frames := uint32(d.size / umem.DefaultFrameSize)
	rc := umem.RegionConfig{File: &umem.FileBacking{FD: d.fd, Offset: d.off, Size: d.size}}
	if tx {
		rc.Size = d.size + txTail(n.queues)
	}
	region, err := umem.NewRegion(rc)
	if err != nil {
		return err
	}
	if tx {
		if err := region.ReserveSpanAt(0, frames); err != nil {
			region.Close()
			return err
		}
	}
	v4, v6, err := n.addrs()
	if err != nil {
		region.Close()
		return err
	}
	cfg := stack.Config{Ifname: n.name, Region: region, Queues: n.queues, Channels: n.channels}
	if v4.IsValid() {
		cfg.Addr, cfg.Addr6 = v4, v6
	} else {
		cfg.Addr = v6
	}
	st, err := stack.New(cfg)
	if err != nil {
		return err
	}
	if err := l.applyNIC(n, st); err != nil {
		st.Close()
		return err
	}
	d.use() // the TX binding itself is bindTX's; its span is reserved
	n.st, n.umem, n.umemTX, n.txBound = st, d, tx, false
	mode, why := st.AddressMode()
	l.logf("%s: emulated stack up on %v %v (%s address: %s), UMEM = dmabuf of inode %d (%d bytes%s)",
		n.name, cfg.Addr, cfg.Addr6, mode, why, d.ino, d.size, map[bool]string{true: ", TX"}[tx])
	return nil
}

// applyNIC gives a new stack the NIC's settings.
func (l *Lib) applyNIC(n *nic, st *stack.Stack) error {
	if err := st.NIC().SetRings(n.rings); err != nil {
		return err
	}
	for _, r := range n.rules {
		sid, err := st.NIC().AddFlowRule(r.r)
		if err != nil {
			return err
		}
		r.sid = sid
	}
	if n.rss > 0 {
		if err := st.NIC().SetRSS(n.rss); err != nil {
			return err
		}
	}
	return nil
}

// closeStack tears the NIC's stack down. l.mu must be held.
func (l *Lib) closeStack(n *nic) {
	if n.st == nil {
		return
	}
	l.logf("%s: emulated stack down (%s)", n.name, n.st.Accounting())
	n.st.Close()
	n.umem.unuse()
	n.st, n.umem = nil, nil
	for _, r := range n.rules {
		r.sid = -1
	}
}

// maybeRelease closes the NIC's stack when nothing uses it. l.mu must be
// held.
func (l *Lib) maybeRelease(n *nic) {
	if n.st != nil && n.bindings == 0 && n.socks == 0 {
		l.closeStack(n)
	}
}

// binding is a bind-rx or bind-tx made through a netlink socket.
type binding struct {
	n  *nic
	st *stack.Stack
	rx devmemapi.Binding
	tx devmemapi.TXBinding
	id uint32
}

// unbind closes the binding (the netlink socket that made it closed).
func (l *Lib) unbind(b *binding) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if b.rx != nil {
		b.rx.Close()
	}
	if b.tx != nil {
		b.tx.Close()
		if b.n.st == b.st {
			b.n.txBound = false
		}
	}
	l.logf("%s: dmabuf %d unbound", b.n.name, b.id)
	if b.n.st == b.st {
		b.n.bindings--
		l.maybeRelease(b.n)
	}
}

// Exit runs as the process exits: every emulated socket and netlink
// socket closes, as the kernel closes a dying process's files (tokens
// held in autorelease mode go with the sockets, the rest with the
// bindings), and the stacks go down, logging their frame accounting with
// XDEVMEM_DEBUG=1. The XDP program would go anyway: its BPF link dies
// with the process, even on SIGKILL.
func (l *Lib) Exit() {
	for fd := range l.fds {
		if r := l.fds[fd].Swap(nil); r != nil {
			if r.kind == KindEmu || r.kind == KindGenl {
				l.host.SetKind(fd, KindPlain)
				r.obj.release()
			} else {
				l.fds[fd].Store(r)
			}
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range l.nics {
		l.closeStack(n)
	}
}

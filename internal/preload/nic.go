package preload

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"time"

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
// to each new stack. The UMEM holds at most one RX and one TX dmabuf: a
// bind of the kind the stack lacks remakes it with both while no emulated
// socket uses it (its bindings move over under their ids); another dmabuf
// of a kind the stack has is EBUSY while the stack is in use.
//
// An RX dmabuf is the UMEM's first bytes: received frames land in it
// (frame offset = dmabuf offset, so the program's own mapping shows the
// payload), and so do the frames the stack builds headers in. A TX dmabuf
// follows it, reserved for the program's payload; alone, it is the UMEM's
// first frames, followed by memory the stack receives into and builds
// headers in (txTail).

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

	st *stack.Stack
	// st's UMEM: the RX dmabuf's bytes first (frame offset = dmabuf
	// offset), then the TX dmabuf's; a TX dmabuf alone has txTail behind
	// it (frames to receive into and build headers in).
	rxD, txD *dmabuf
	binds    []*binding // live bindings on st, in the order they were made
	socks    int        // emulated sockets on st
}

// txBound reports whether the TX dmabuf's binding is live.
func (n *nic) txBound() bool {
	return slices.ContainsFunc(n.binds, func(b *binding) bool { return b.tx != nil })
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
	ps, _ := stack.InterfacePrefixes(ifc)
	for _, p := range ps {
		switch ip := p.Addr(); {
		case ip.Is4() && !v4.IsValid():
			v4 = p
		case ip.Is6() && !ip.IsLinkLocalUnicast() && !v6.IsValid():
			v6 = p
		}
	}
	if !v4.IsValid() && !v6.IsValid() {
		return v4, v6, fmt.Errorf("%s has no IP address for the emulated stack (configure one, or set XDEVMEM_ADDR=PREFIX): %w", n.name, unix.EADDRNOTAVAIL)
	}
	return v4, v6, nil
}

// ensureStack makes the NIC's stack have d in its UMEM, as the RX dmabuf
// or (tx) the TX dmabuf. A stack without a dmabuf of that kind is remade
// with both while no emulated socket uses it: its live bindings move over
// under their ids. A stack with another dmabuf of that kind is replaced
// when nothing uses it, else EBUSY. l.mu must be held.
func (l *Lib) ensureStack(n *nic, d *dmabuf, tx bool) error {
	cur := n.rxD
	if tx {
		cur = n.txD
	}
	if n.st != nil && cur == d {
		return nil
	}
	rxD, txD := n.rxD, n.txD
	if tx {
		txD = d
	} else {
		rxD = d
	}
	var moving []*binding
	remake := false
	if n.st != nil {
		switch {
		case cur == nil && n.socks == 0:
			moving, remake = n.binds, true // add the other kind: remake with both
		case len(n.binds) > 0 || n.socks > 0:
			return fmt.Errorf("%s has dmabuf of memfd inode %d bound already, or sockets on it (the emulation has one UMEM per interface, made of at most one RX and one TX dmabuf, and can change it only while no socket uses it): %w",
				n.name, d.ino, unix.EBUSY)
		default:
			l.closeStack(n) // replace what nothing uses
			rxD, txD = nil, nil
			if tx {
				txD = d
			} else {
				rxD = d
			}
		}
	}
	var files []umem.FileBacking
	for _, x := range []*dmabuf{rxD, txD} {
		if x != nil {
			files = append(files, umem.FileBacking{FD: x.fd, Offset: x.off, Size: x.size})
		}
	}
	rc := umem.RegionConfig{Files: files}
	if rxD == nil {
		rc.Size = txD.size + txTail(n.queues)
	}
	region, err := umem.NewRegion(rc)
	if err != nil {
		return err
	}
	var txFirst uint32
	if txD != nil {
		if rxD != nil {
			txFirst = uint32(rxD.size / umem.DefaultFrameSize)
		}
		if err := region.ReserveSpanAt(txFirst, uint32(txD.size/umem.DefaultFrameSize)); err != nil {
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
	if remake {
		// The old stack goes first: its AF_XDP sockets hold the queues.
		l.logf("%s: emulated stack down to add a %s dmabuf (%s)", n.name, map[bool]string{true: "TX", false: "RX"}[tx], n.st.Accounting())
		n.st.Close()
		n.st = nil
	}
	st, err := stack.New(cfg)
	if err == nil {
		err = l.applyNIC(n, st)
		if err != nil {
			st.Close()
		}
	}
	if err == nil {
		for _, b := range moving {
			if err = b.remake(st, txFirst); err != nil {
				st.Close()
				break
			}
		}
	}
	if err != nil {
		if remake { // the old stack is gone: so are its bindings
			l.dropStack(n)
		}
		return err
	}
	for _, x := range []*dmabuf{rxD, txD} {
		if x != nil && x != n.rxD && x != n.txD {
			x.use() // the TX binding itself is bindTX's; its span is reserved
		}
	}
	n.st, n.rxD, n.txD = st, rxD, txD
	mode, why := st.AddressMode()
	l.logf("%s: emulated stack up on %v %v (%s address: %s), UMEM = RX dmabuf %s, TX dmabuf %s",
		n.name, cfg.Addr, cfg.Addr6, mode, why, inoOf(rxD), inoOf(txD))
	return nil
}

func inoOf(d *dmabuf) string {
	if d == nil {
		return "none"
	}
	return fmt.Sprintf("of inode %d (%d bytes)", d.ino, d.size)
}

// remake makes the binding again on st, a stack that replaced its own,
// under the same id.
func (b *binding) remake(st *stack.Stack, txFirst uint32) error {
	var err error
	switch {
	case b.rx != nil:
		b.rx, err = st.BindRXAs(b.rxCfg, b.id)
	case b.tx != nil:
		b.tx, err = st.BindTXReservedAs(b.n.ifindex, txFirst, uint32(b.txSize+umem.DefaultFrameSize-1)/umem.DefaultFrameSize, b.txSize, b.id)
	}
	b.st = st
	return err
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
	l.drain(n)
	l.logf("%s: emulated stack down (%s)", n.name, settled(n.st))
	n.st.Close()
	l.dropStack(n)
}

// dropStack forgets a closed stack and its dmabufs. l.mu must be held.
func (l *Lib) dropStack(n *nic) {
	for _, x := range []*dmabuf{n.rxD, n.txD} {
		if x != nil {
			x.unuse()
		}
	}
	n.st, n.rxD, n.txD, n.binds = nil, nil, nil, nil
	for _, r := range n.rules {
		r.sid = -1
	}
}

// drainTimeout bounds how long a stack going down waits for its closed
// connections' data to be acknowledged (Stack.Drain): the wait falls on
// the close(2) or exit that takes the stack down.
const drainTimeout = 2 * time.Second

// drain lets the stack send what closed sockets left: the program's
// sockets are closed, but their data may still be on its way, which a
// kernel would go on sending as orphans. l.mu must be held.
func (l *Lib) drain(n *nic) {
	if left := n.st.Drain(drainTimeout); left > 0 {
		l.logf("%s: %d connections still unacknowledged after %v: reset", n.name, left, drainTimeout)
	}
}

// maybeRelease closes the NIC's stack when nothing uses it. l.mu must be
// held.
func (l *Lib) maybeRelease(n *nic) {
	if n.st != nil && len(n.binds) == 0 && n.socks == 0 {
		l.closeStack(n)
	}
}

// binding is a bind-rx or bind-tx made through a netlink socket.
type binding struct {
	n      *nic
	st     *stack.Stack
	rx     devmemapi.Binding
	tx     devmemapi.TXBinding
	id     uint32
	rxCfg  devmemapi.BindRXConfig // to make it again on a new stack
	txSize uint64
}

// unbind closes the binding (the netlink socket that made it closed).
func (l *Lib) unbind(b *binding) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := b.n; n.st == b.st && n.socks == 0 && len(n.binds) == 1 && n.binds[0] == b {
		// The stack goes down after this: its RX queues stop steering
		// the connections' ACKs to it, so closed sockets' data goes
		// out first.
		l.drain(n)
	}
	if b.rx != nil {
		b.rx.Close()
	}
	if b.tx != nil {
		b.tx.Close()
	}
	l.logf("%s: dmabuf %d unbound", b.n.name, b.id)
	if b.n.st == b.st {
		b.n.binds = slices.DeleteFunc(b.n.binds, func(x *binding) bool { return x == b })
		l.maybeRelease(b.n)
	}
}

// Exit runs as the process exits: every emulated socket and netlink
// socket closes, as the kernel closes a dying process's files (tokens
// held in autorelease mode go with the sockets, the rest with the
// bindings), and the stacks go down, logging their frame accounting with
// XDEVMEM_DEBUG=1. The XDP program would go anyway: its BPF link dies
// with the process, even on SIGKILL.
//
// The sockets close first, then the stacks send what they left (as a
// kernel sends an exited process's orphans, here for at most
// drainTimeout), and only then do the netlink sockets close: unbinding
// stops the RX queues from steering the connections' ACKs to the stacks.
func (l *Lib) Exit() {
	l.releaseAll(KindEmu)
	l.mu.Lock()
	for _, n := range l.nics {
		if n.st != nil {
			l.drain(n)
		}
	}
	l.mu.Unlock()
	l.releaseAll(KindGenl)
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range l.nics {
		l.closeStack(n)
	}
}

// releaseAll closes every fd of kind k, as the kernel closes an exiting
// process's files.
func (l *Lib) releaseAll(k Kind) {
	for fd := range l.fds {
		if r := l.fds[fd].Load(); r != nil && r.kind == k && l.fds[fd].CompareAndSwap(r, nil) {
			l.host.SetKind(fd, KindPlain)
			r.obj.release()
		}
	}
}

// settled is the stack's frame accounting once no frame is between states
// (a packet being parsed as the last sockets close), waiting up to 100 ms
// for that: the snapshot is exact only at rest.
func settled(st *stack.Stack) umem.Accounting {
	a := st.Accounting()
	for i := 0; i < 20 && a.InFlight != 0; i++ {
		time.Sleep(5 * time.Millisecond)
		a = st.Accounting()
	}
	return a
}

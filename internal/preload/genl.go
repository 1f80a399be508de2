package preload

import (
	"encoding/binary"
	"errors"
	"sync"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat/netdev"
	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
	"github.com/xdevmem/xdevmem/umem"
)

// The netdev generic netlink family, answered by the emulation on the
// program's own netlink socket. The socket stays the kernel's: its
// options, bind and address are real, and every message that is not a
// netdev request about an emulated interface goes to the kernel
// unchanged. The library answers nlctrl's CTRL_CMD_GETFAMILY for "netdev"
// (with the kernel's family id and multicast groups when the kernel has
// the family), and bind-rx, bind-tx, dev-get and queue-get for emulated
// interfaces, with the kernel's acks, errors and extended-ack messages
// (NETLINK_CAP_ACK and NETLINK_EXT_ACK as the socket has them set).
// Replies wait in the socket's queue; receives take them before asking the
// kernel. Closing the socket (its last fd) unbinds what it bound, as in
// the kernel.

// Netlink constants not in x/sys/unix.
const (
	nlmsgHdrLen      = 16
	genlHdrLen       = 4
	nlmFCapped       = 0x100 // NLM_F_CAPPED
	nlmFAckTLVs      = 0x200 // NLM_F_ACK_TLVS
	nlmsgerrAttrMsg  = 1     // NLMSGERR_ATTR_MSG
	nlmsgerrMissType = 5     // NLMSGERR_ATTR_MISS_TYPE
	nlmsgerrMissNest = 6     // NLMSGERR_ATTR_MISS_NEST
	fakeNetdevID     = 0xfff0
)

// genlSock is the library's side of a generic netlink socket.
type genlSock struct {
	refs
	l        *Lib
	mu       sync.Mutex
	queue    [][]byte // datagrams to deliver, oldest first
	bindings []*binding
}

func (g *genlSock) release() {
	if !g.drop() {
		return
	}
	g.mu.Lock()
	bs := g.bindings
	g.bindings, g.queue = nil, nil
	g.mu.Unlock()
	for _, b := range bs {
		g.l.unbind(b)
	}
}

// genlFor returns fd's netlink state, making it on first use.
func (l *Lib) genlFor(fd int) *genlSock {
	if g, ok := l.get(fd, KindGenl).(*genlSock); ok {
		return g
	}
	g := &genlSock{l: l}
	l.install(fd, KindGenl, g)
	return g
}

// family is the netdev family as the kernel has it.
type family struct {
	id     uint16
	groups []genetlink.MulticastGroup
	kernel bool
}

var (
	netdevOnce sync.Once
	netdevFam  family
)

// netdevFamily resolves the kernel's netdev family once; a kernel without
// it gets an id of the library's.
func netdevFamily() family {
	netdevOnce.Do(func() {
		netdevFam = family{id: fakeNetdevID}
		c, err := genetlink.Dial(nil)
		if err != nil {
			return
		}
		defer c.Close()
		f, err := c.GetFamily(netdev.FamilyName)
		if err != nil {
			return
		}
		netdevFam = family{id: f.ID, groups: f.Groups, kernel: true}
	})
	return netdevFam
}

// nlmsg is one parsed netlink message.
type nlmsg struct {
	typ, flags uint16
	seq, pid   uint32
	raw        []byte // the whole message
	cmd        uint8
	attrs      []byte
}

func parseNlmsgs(b []byte) ([]nlmsg, bool) {
	var ms []nlmsg
	e := binary.NativeEndian
	for len(b) >= nlmsgHdrLen {
		l := int(e.Uint32(b))
		if l < nlmsgHdrLen || l > len(b) {
			return nil, false
		}
		m := nlmsg{typ: e.Uint16(b[4:]), flags: e.Uint16(b[6:]), seq: e.Uint32(b[8:]), pid: e.Uint32(b[12:]), raw: b[:l]}
		if l >= nlmsgHdrLen+genlHdrLen {
			m.cmd = b[16]
			m.attrs = b[nlmsgHdrLen+genlHdrLen : l]
		}
		ms = append(ms, m)
		b = b[min(nlmAlign(l), len(b)):]
	}
	return ms, len(b) == 0
}

func nlmAlign(n int) int { return (n + 3) &^ 3 }

// ours reports whether the library answers m. l.mu must not be held.
func (l *Lib) ours(m nlmsg) bool {
	fam := netdevFamily()
	switch m.typ {
	case unix.GENL_ID_CTRL:
		if m.cmd != unix.CTRL_CMD_GETFAMILY || m.flags&unix.NLM_F_DUMP == unix.NLM_F_DUMP {
			return false
		}
		a, ok := decodeAttrs(m.attrs)
		return ok && (a.str(unix.CTRL_ATTR_FAMILY_NAME) == netdev.FamilyName ||
			(a.has(unix.CTRL_ATTR_FAMILY_ID) && a.u16(unix.CTRL_ATTR_FAMILY_ID) == fam.id))
	case fam.id:
		if !fam.kernel {
			return true
		}
		a, ok := decodeAttrs(m.attrs)
		if !ok {
			return false
		}
		var ifindex uint32
		switch m.cmd {
		case netdev.CmdBindRX, netdev.CmdBindTX:
			ifindex = a.u32(netdev.AttrDmabufIfindex)
		case netdev.CmdDevGet:
			ifindex = a.u32(netdev.AttrDevIfindex)
		case netdev.CmdQueueGet:
			ifindex = a.u32(netdev.AttrQueueIfindex)
		default:
			return false
		}
		if ifindex == 0 {
			return false
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.nicFor(int(ifindex)) != nil
	}
	return false
}

// attrs is a decoded attribute set: every value of each type.
type attrs map[uint16][][]byte

func decodeAttrs(b []byte) (attrs, bool) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, false
	}
	a := attrs{}
	for ad.Next() {
		a[ad.Type()] = append(a[ad.Type()], ad.Bytes())
	}
	return a, ad.Err() == nil
}

func (a attrs) has(t uint16) bool { return len(a[t]) > 0 }

// missing is GENL_REQ_ATTR_CHECK over types: err, with the extended ack
// naming the first one absent; nil when all are there.
func (a attrs) missing(err error, types ...uint16) *nlErr {
	for _, t := range types {
		if !a.has(t) {
			e := errOf(err)
			e.missType = t
			return e
		}
	}
	return nil
}

func (a attrs) last(t uint16) []byte {
	v := a[t]
	if len(v) == 0 {
		return nil
	}
	return v[len(v)-1]
}

func (a attrs) u32(t uint16) uint32 {
	if b := a.last(t); len(b) >= 4 {
		return binary.NativeEndian.Uint32(b)
	}
	return 0
}

func (a attrs) u16(t uint16) uint16 {
	if b := a.last(t); len(b) >= 2 {
		return binary.NativeEndian.Uint16(b)
	}
	return 0
}

func (a attrs) str(t uint16) string {
	b := a.last(t)
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// genlSend serves a send on a generic netlink socket: the library's
// messages are answered into the socket's queue, the rest go to the
// kernel. It returns Pass when none is the library's.
func (l *Lib) genlSend(fd int, m Msghdr, iov []Iovec, total, flags int) (int, error) {
	if !l.choose() {
		return Pass, nil
	}
	if m.Name != 0 && m.Namelen >= 12 {
		var sa [12]byte
		if err := CopyIn(sa[:], m.Name); err != nil {
			return Pass, nil // the kernel reports it
		}
		if binary.NativeEndian.Uint32(sa[4:]) != 0 || binary.NativeEndian.Uint32(sa[8:]) != 0 {
			return Pass, nil // to another socket or a group
		}
	}
	if total > 1<<20 {
		return Pass, nil
	}
	buf := make([]byte, total)
	if err := gather(buf, iov); err != nil {
		return Pass, nil
	}
	msgs, ok := parseNlmsgs(buf)
	if !ok {
		return Pass, nil
	}
	var mine, theirs []nlmsg
	for _, msg := range msgs {
		if l.ours(msg) {
			mine = append(mine, msg)
		} else {
			theirs = append(theirs, msg)
		}
	}
	if len(mine) == 0 {
		return Pass, nil
	}
	if len(theirs) > 0 {
		var fwd []byte
		for _, msg := range theirs {
			fwd = append(fwd, msg.raw...)
			for len(fwd)%4 != 0 {
				fwd = append(fwd, 0)
			}
		}
		if err := unix.Send(fd, fwd, flags&^unix.MSG_NOSIGNAL); err != nil {
			return -1, err
		}
	}
	g := l.genlFor(fd)
	opts := nlOpts(fd)
	for _, msg := range mine {
		for _, r := range l.answer(g, opts, msg) {
			g.mu.Lock()
			g.queue = append(g.queue, r)
			g.mu.Unlock()
		}
	}
	return total, nil
}

// sockOpts are the socket's netlink options that shape replies.
type sockOpts struct {
	portid         uint32
	capAck, extAck bool
}

func nlOpts(fd int) sockOpts {
	var o sockOpts
	sa, err := unix.Getsockname(fd)
	if nl, ok := sa.(*unix.SockaddrNetlink); err == nil && ok {
		if nl.Pid == 0 { // the kernel binds on the first send; do the same
			unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
			if sa, err := unix.Getsockname(fd); err == nil {
				nl, _ = sa.(*unix.SockaddrNetlink)
			}
		}
		if nl != nil {
			o.portid = nl.Pid
		}
	}
	v, _ := unix.GetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK)
	o.capAck = v != 0
	v, _ = unix.GetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_EXT_ACK)
	o.extAck = v != 0
	return o
}

// nlErr is a kernel error as netlink reports it.
type nlErr struct {
	errno    unix.Errno
	msg      string
	missType uint16 // NLMSGERR_ATTR_MISS_TYPE, 0 for none
	missNest uint32 // NLMSGERR_ATTR_MISS_NEST: the nest's offset in the request, 0 for none
}

func errOf(err error) *nlErr {
	var de *devmemerr.Error
	if errors.As(err, &de) {
		return &nlErr{errno: de.Errno, msg: de.Message}
	}
	return &nlErr{errno: unix.Errno(Errno(err))}
}

// answer handles one of the library's messages and returns the
// datagrams it produces.
func (l *Lib) answer(g *genlSock, o sockOpts, m nlmsg) [][]byte {
	fam := netdevFamily()
	var payloads [][]byte // genl messages (header + attributes)
	var e *nlErr
	dump := m.flags&unix.NLM_F_DUMP == unix.NLM_F_DUMP
	if len(m.raw) < nlmsgHdrLen+genlHdrLen {
		e = &nlErr{errno: unix.EINVAL}
	} else if m.typ == unix.GENL_ID_CTRL {
		payloads = [][]byte{encodeFamily(fam)}
	} else if a, ok := decodeAttrs(m.attrs); !ok {
		e = &nlErr{errno: unix.EINVAL}
	} else {
		switch m.cmd {
		case netdev.CmdBindRX:
			payloads, e = l.bindRX(g, a, nestOffsets(m.attrs, netdev.AttrDmabufQueues, nlmsgHdrLen+genlHdrLen))
		case netdev.CmdBindTX:
			payloads, e = l.bindTX(g, a)
		case netdev.CmdDevGet:
			if dump {
				e = &nlErr{errno: unix.EOPNOTSUPP}
				break
			}
			payloads, e = l.devGet(a)
		case netdev.CmdQueueGet:
			payloads, e = l.queueGet(a, dump)
		default:
			e = &nlErr{errno: unix.EOPNOTSUPP}
		}
	}
	l.logf("netlink type %#x cmd %d flags %#x: %d replies, error %+v", m.typ, m.cmd, m.flags, len(payloads), e)
	var out [][]byte
	if e != nil {
		if dump {
			return [][]byte{nlDone(o, m, e)}
		}
		return [][]byte{nlError(o, m, e)}
	}
	if dump {
		var b []byte
		for _, p := range payloads {
			b = append(b, nlHeader(len(p), m.typ, unix.NLM_F_MULTI, m.seq, o.portid)...)
			b = append(b, p...)
		}
		b = append(b, nlDone(o, m, nil)...)
		return [][]byte{b}
	}
	for _, p := range payloads {
		out = append(out, append(nlHeader(len(p), m.typ, 0, m.seq, o.portid), p...))
	}
	if m.flags&unix.NLM_F_ACK != 0 {
		out = append(out, nlError(o, m, nil))
	}
	return out
}

func nlHeader(payload int, typ, flags uint16, seq, pid uint32) []byte {
	b := make([]byte, nlmsgHdrLen, nlmsgHdrLen+payload)
	e := binary.NativeEndian
	e.PutUint32(b, uint32(nlmsgHdrLen+payload))
	e.PutUint16(b[4:], typ)
	e.PutUint16(b[6:], flags)
	e.PutUint32(b[8:], seq)
	e.PutUint32(b[12:], pid)
	return b
}

// nlError is netlink_ack: NLMSG_ERROR with the errno (0: an ack), the
// request's header (and payload, for an error without NETLINK_CAP_ACK),
// and with NETLINK_EXT_ACK the message and missing-attribute TLVs.
func nlError(o sockOpts, m nlmsg, e *nlErr) []byte {
	var flags uint16
	var errno int32
	echo := m.raw[:nlmsgHdrLen]
	if e != nil {
		errno = -int32(e.errno)
		if !o.capAck {
			echo = m.raw
		}
	}
	if len(echo) == nlmsgHdrLen && e != nil || e == nil {
		flags |= nlmFCapped
	}
	var tlv []byte
	if e != nil && o.extAck {
		ae := netlink.NewAttributeEncoder()
		if e.msg != "" {
			ae.String(nlmsgerrAttrMsg, e.msg)
		}
		if e.missType != 0 {
			ae.Uint32(nlmsgerrMissType, uint32(e.missType))
		}
		if e.missNest != 0 {
			ae.Uint32(nlmsgerrMissNest, e.missNest)
		}
		tlv, _ = ae.Encode()
		if len(tlv) > 0 {
			flags |= nlmFAckTLVs
		}
	}
	body := binary.NativeEndian.AppendUint32(nil, uint32(errno))
	body = append(body, echo...)
	for len(body)%4 != 0 {
		body = append(body, 0)
	}
	body = append(body, tlv...)
	return append(nlHeader(len(body), unix.NLMSG_ERROR, flags, m.seq, o.portid), body...)
}

// nlDone ends a dump, carrying the error of a failed one.
func nlDone(o sockOpts, m nlmsg, e *nlErr) []byte {
	var errno int32
	var flags uint16 = unix.NLM_F_MULTI
	var tlv []byte
	if e != nil {
		errno = -int32(e.errno)
		if o.extAck && e.msg != "" {
			ae := netlink.NewAttributeEncoder()
			ae.String(nlmsgerrAttrMsg, e.msg)
			tlv, _ = ae.Encode()
			flags |= nlmFAckTLVs
		}
	}
	body := append(binary.NativeEndian.AppendUint32(nil, uint32(errno)), tlv...)
	return append(nlHeader(len(body), unix.NLMSG_DONE, flags, m.seq, o.portid), body...)
}

func genlMsg(cmd, version uint8, ae *netlink.AttributeEncoder) []byte {
	b, _ := ae.Encode()
	return append([]byte{cmd, version, 0, 0}, b...)
}

// encodeFamily is nlctrl's CTRL_CMD_NEWFAMILY for netdev.
func encodeFamily(f family) []byte {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.CTRL_ATTR_FAMILY_NAME, netdev.FamilyName)
	ae.Uint16(unix.CTRL_ATTR_FAMILY_ID, f.id)
	ae.Uint32(unix.CTRL_ATTR_VERSION, netdev.FamilyVersion)
	ae.Uint32(unix.CTRL_ATTR_HDRSIZE, 0)
	ae.Uint32(unix.CTRL_ATTR_MAXATTR, uint32(netdev.AttrDmabufAutorelease))
	ae.Nested(unix.CTRL_ATTR_OPS, func(ae *netlink.AttributeEncoder) error {
		ops := []uint8{netdev.CmdDevGet, netdev.CmdPagePoolGet, netdev.CmdQueueGet, netdev.CmdNapiGet,
			netdev.CmdQstatsGet, netdev.CmdBindRX, netdev.CmdNapiSet, netdev.CmdBindTX}
		for i, op := range ops {
			ae.Nested(uint16(i+1), func(ae *netlink.AttributeEncoder) error {
				ae.Uint32(unix.CTRL_ATTR_OP_ID, uint32(op))
				ae.Uint32(unix.CTRL_ATTR_OP_FLAGS, unix.GENL_CMD_CAP_DO)
				return nil
			})
		}
		return nil
	})
	if len(f.groups) > 0 {
		ae.Nested(unix.CTRL_ATTR_MCAST_GROUPS, func(ae *netlink.AttributeEncoder) error {
			for i, g := range f.groups {
				ae.Nested(uint16(i+1), func(ae *netlink.AttributeEncoder) error {
					ae.String(unix.CTRL_ATTR_MCAST_GRP_NAME, g.Name)
					ae.Uint32(unix.CTRL_ATTR_MCAST_GRP_ID, g.ID)
					return nil
				})
			}
			return nil
		})
	}
	return genlMsg(unix.CTRL_CMD_NEWFAMILY, 2, ae)
}

// unknownAttr is the policy check genetlink runs before a doit.
var unknownAttr = &nlErr{errno: unix.EINVAL, msg: "Unknown attribute type"}

// dmabufOf is dma_buf_get for the library's dmabufs: EBADF for an fd
// that is not open, EINVAL for one that is no dmabuf.
func (l *Lib) dmabufOf(fd uint32) (*dmabuf, *nlErr) {
	if d, ok := l.get(int(fd), KindDmabuf).(*dmabuf); ok {
		return d, nil
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
		return nil, errOf(devmemerr.BindRXBadFD.Err())
	}
	return nil, errOf(devmemerr.BindRXNotDmabuf.Err())
}

// nestOffsets returns the offsets, from the start of the message, of the
// attributes of type t in b (which starts at base).
func nestOffsets(b []byte, t uint16, base int) []uint32 {
	var offs []uint32
	for off := 0; off+4 <= len(b); {
		l := int(binary.NativeEndian.Uint16(b[off:]))
		if l < 4 || off+l > len(b) {
			break
		}
		if binary.NativeEndian.Uint16(b[off+2:])&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER) == t {
			offs = append(offs, uint32(base+off))
		}
		off += (l + 3) &^ 3
	}
	return offs
}

// bindRX follows netdev_nl_bind_rx_doit (Linux 6.18, and the
// autorelease attribute of the series) on an emulated NIC. nests are the
// offsets of the queue nests in the request, for extended acks.
func (l *Lib) bindRX(g *genlSock, a attrs, nests []uint32) ([][]byte, *nlErr) {
	for t := range a {
		if t > netdev.AttrDmabufAutorelease || t == netdev.AttrDmabufID {
			return nil, unknownAttr
		}
	}
	if e := a.missing(devmemerr.BindRXMissingAttr.Err(), netdev.AttrDmabufIfindex, netdev.AttrDmabufFD, netdev.AttrDmabufQueues); e != nil {
		return nil, e
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.nicFor(int(a.u32(netdev.AttrDmabufIfindex)))
	if n == nil {
		return nil, errOf(devmemerr.BindRXNoDevice.Err())
	}
	// Upstream kernels free a socket's tokens when it closes (autorelease
	// on); the autorelease series' attribute chooses.
	on := true
	if v := a.last(netdev.AttrDmabufAutorelease); len(v) > 0 {
		on = v[0] != 0
	}
	auto := &on
	d, e := l.dmabufOf(a.u32(netdev.AttrDmabufFD))
	if e != nil {
		return nil, e
	}
	var queues []uint32
	for i, nest := range a[netdev.AttrDmabufQueues] {
		q, ok := decodeAttrs(nest)
		if !ok {
			return nil, &nlErr{errno: unix.EINVAL}
		}
		for _, t := range []uint16{netdev.AttrQueueID, netdev.AttrQueueType} {
			if !q.has(t) {
				e := errOf(devmemerr.BindRXQueueAttr.Err())
				e.missType = t
				if i < len(nests) {
					e.missNest = nests[i]
				}
				return nil, e
			}
		}
		if netdev.QueueType(q.u32(netdev.AttrQueueType)) != netdev.QueueTypeRX {
			return nil, errOf(devmemerr.BindRXQueueType.Err())
		}
		id := q.u32(netdev.AttrQueueID)
		// __net_mp_open_rxq's checks, on the NIC's settings, before a
		// stack is made for the dmabuf.
		switch {
		case int(id) >= n.channels:
			return nil, errOf(devmemerr.BindRXQueueRange.Err())
		case !n.rings.TCPDataSplit:
			return nil, errOf(devmemerr.BindRXHDSDisabled.Err())
		case n.rings.HDSThresh != 0:
			return nil, errOf(devmemerr.BindRXHDSThresh.Err())
		}
		for _, p := range queues {
			if p == id {
				return nil, errOf(devmemerr.BindRXQueueBound.Err())
			}
		}
		queues = append(queues, id)
	}
	if err := l.ensureStack(n, d, false); err != nil {
		return nil, errOf(err)
	}
	rx, err := n.st.BindRX(devmemapi.BindRXConfig{Ifindex: n.ifindex, Queues: queues, Autorelease: auto})
	if err != nil {
		l.maybeRelease(n)
		return nil, errOf(err)
	}
	b := &binding{n: n, st: n.st, rx: rx, id: rx.ID(), rxCfg: devmemapi.BindRXConfig{Ifindex: n.ifindex, Queues: queues, Autorelease: auto}}
	n.binds = append(n.binds, b)
	g.mu.Lock()
	g.bindings = append(g.bindings, b)
	g.mu.Unlock()
	l.logf("%s: bind-rx queues %v = dmabuf id %d", n.name, queues, rx.ID())
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(netdev.AttrDmabufID, rx.ID())
	return [][]byte{genlMsg(netdev.CmdBindRX, netdev.FamilyVersion, ae)}, nil
}

// bindTX follows netdev_nl_bind_tx_doit on an emulated NIC.
func (l *Lib) bindTX(g *genlSock, a attrs) ([][]byte, *nlErr) {
	for t := range a {
		if t > netdev.AttrDmabufFD || t == netdev.AttrDmabufQueues {
			return nil, unknownAttr
		}
	}
	if e := a.missing(devmemerr.BindTXMissingAttr.Err(), netdev.AttrDmabufIfindex, netdev.AttrDmabufFD); e != nil {
		return nil, e
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.nicFor(int(a.u32(netdev.AttrDmabufIfindex)))
	if n == nil {
		return nil, errOf(devmemerr.BindTXNoDevice.Err())
	}
	d, e := l.dmabufOf(a.u32(netdev.AttrDmabufFD))
	if e != nil {
		return nil, e
	}
	if n.st != nil && n.txD == d && n.txBound() {
		return nil, &nlErr{errno: unix.EBUSY, msg: "xdevmem: this dmabuf is bound for TX already"}
	}
	if err := l.ensureStack(n, d, true); err != nil {
		return nil, errOf(err)
	}
	frames := uint32(d.size / umem.DefaultFrameSize)
	var first uint32
	if n.rxD != nil {
		first = uint32(n.rxD.size / umem.DefaultFrameSize)
	}
	tx, err := n.st.BindTXReserved(n.ifindex, first, frames, d.size)
	if err != nil {
		l.maybeRelease(n)
		return nil, errOf(err)
	}
	b := &binding{n: n, st: n.st, tx: tx, id: tx.ID(), txSize: d.size}
	n.binds = append(n.binds, b)
	g.mu.Lock()
	g.bindings = append(g.bindings, b)
	g.mu.Unlock()
	l.logf("%s: bind-tx = dmabuf id %d", n.name, tx.ID())
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(netdev.AttrDmabufID, tx.ID())
	return [][]byte{genlMsg(netdev.CmdBindTX, netdev.FamilyVersion, ae)}, nil
}

// devGet answers dev-get for an emulated NIC.
func (l *Lib) devGet(a attrs) ([][]byte, *nlErr) {
	if !a.has(netdev.AttrDevIfindex) {
		return nil, &nlErr{errno: unix.EINVAL, missType: netdev.AttrDevIfindex}
	}
	l.mu.Lock()
	n := l.nicFor(int(a.u32(netdev.AttrDevIfindex)))
	l.mu.Unlock()
	if n == nil {
		return nil, &nlErr{errno: unix.ENODEV}
	}
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(netdev.AttrDevIfindex, uint32(n.ifindex))
	ae.Uint64(netdev.AttrDevXDPFeatures, 0)
	ae.Uint32(netdev.AttrDevXDPZCMaxSegs, 1)
	ae.Uint64(netdev.AttrDevXDPRXMetadataFeatures, 0)
	ae.Uint64(netdev.AttrDevXSKFeatures, 0)
	return [][]byte{genlMsg(netdev.CmdDevGet, netdev.FamilyVersion, ae)}, nil
}

// queueGet answers queue-get (one queue, or a dump of an emulated NIC's):
// its RX and TX channels, and the dmabuf bound to each RX queue.
func (l *Lib) queueGet(a attrs, dump bool) ([][]byte, *nlErr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.nicFor(int(a.u32(netdev.AttrQueueIfindex)))
	if n == nil {
		return nil, &nlErr{errno: unix.ENODEV}
	}
	bound := map[uint32]uint32{}
	if n.st != nil {
		for q := 0; q < n.channels; q++ {
			if id, ok := n.st.BoundTo(q); ok {
				bound[uint32(q)] = id
			}
		}
	}
	queue := func(id uint32, typ netdev.QueueType) []byte {
		ae := netlink.NewAttributeEncoder()
		ae.Uint32(netdev.AttrQueueID, id)
		ae.Uint32(netdev.AttrQueueType, uint32(typ))
		ae.Uint32(netdev.AttrQueueIfindex, uint32(n.ifindex))
		if typ == netdev.QueueTypeRX {
			if b, ok := bound[id]; ok {
				ae.Uint32(netdev.AttrQueueDmabuf, b)
			}
		}
		return genlMsg(netdev.CmdQueueGet, netdev.FamilyVersion, ae)
	}
	if !dump {
		for _, t := range []uint16{netdev.AttrQueueIfindex, netdev.AttrQueueType, netdev.AttrQueueID} {
			if !a.has(t) {
				return nil, &nlErr{errno: unix.EINVAL, missType: t}
			}
		}
		id, typ := a.u32(netdev.AttrQueueID), netdev.QueueType(a.u32(netdev.AttrQueueType))
		limit := n.channels
		if typ == netdev.QueueTypeTX {
			limit = n.txChannels
		} else if typ != netdev.QueueTypeRX {
			return nil, &nlErr{errno: unix.EINVAL}
		}
		if int(id) >= limit {
			return nil, &nlErr{errno: unix.EINVAL}
		}
		return [][]byte{queue(id, typ)}, nil
	}
	var out [][]byte
	for q := 0; q < n.channels; q++ {
		out = append(out, queue(uint32(q), netdev.QueueTypeRX))
	}
	for q := 0; q < n.txChannels; q++ {
		out = append(out, queue(uint32(q), netdev.QueueTypeTX))
	}
	return out, nil
}

// genlRecv serves a receive on a generic netlink socket from its queue;
// with nothing queued it returns Pass and the kernel answers.
func (l *Lib) genlRecv(fd int, m Msghdr, msgp UPtr, iov []Iovec, flags int, namelenp UPtr) (int, error) {
	g, ok := l.get(fd, KindGenl).(*genlSock)
	if !ok || flags&unix.MSG_ERRQUEUE != 0 {
		return Pass, nil
	}
	g.mu.Lock()
	if len(g.queue) == 0 {
		g.mu.Unlock()
		return Pass, nil
	}
	d := g.queue[0]
	if flags&unix.MSG_PEEK == 0 {
		g.queue = g.queue[1:]
	}
	g.mu.Unlock()
	var mflags int32
	n := len(d)
	total := 0
	for _, v := range iov {
		total += int(v.Len)
	}
	if n > total {
		mflags |= unix.MSG_TRUNC
		d = d[:total]
	}
	if err := scatter(iov, d); err != nil {
		return -1, err
	}
	sa := []byte{unix.AF_NETLINK, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0} // sockaddr_nl of the kernel
	if msgp != 0 {
		if m.Name != 0 {
			if err := CopyOut(m.Name, sa[:min(len(sa), int(m.Namelen))]); err != nil {
				return -1, err
			}
			WriteU32(msgp.Add(offNamelen), uint32(len(sa)))
		}
		var z [8]byte
		CopyOut(msgp.Add(offControllen), z[:])
		WriteU32(msgp.Add(offMsgFlags), uint32(mflags))
	} else if namelenp != 0 {
		WriteU32(namelenp, 0)
	}
	l.logf("recv(%d) = %d bytes of the library's netlink replies", fd, n)
	if flags&unix.MSG_TRUNC != 0 {
		return n, nil
	}
	return min(n, total), nil
}

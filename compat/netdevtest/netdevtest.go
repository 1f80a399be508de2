// Package netdevtest is a fake kernel for the netdev and ethtool generic
// netlink families, in the style of netlink/nltest and genetlink/genltest:
// a Kernel holds fake devices and dmabufs, and Dial returns a
// *genetlink.Conn whose requests it answers the way Linux 6.18 does —
// the same checks in the same order, the same errnos, the same
// extended-ack messages (errors carry NLMSGERR_ATTR_MSG, so clients see the
// text in netlink.OpError.Message).
//
// # What it models
//
//   - nlctrl CTRL_CMD_GETFAMILY for "netdev" and "ethtool", with the ops
//     list, and CTRL_CMD_GETPOLICY for bind-rx (with the autorelease
//     attribute on a series kernel).
//   - netdev dev-get, queue-get (dump by ifindex; queues of up devices only),
//     bind-rx and bind-tx, including the autorelease attribute when
//     Kernel.AutoreleaseSeries is set.
//   - Bindings owned by the connection that made them: closing the
//     genetlink.Conn unbinds, as closing the netlink socket does.
//   - ethtool rings-get (tcp-data-split, hds-thresh), features-get
//     (verbose bitsets), features-set (a feature in HWFeatures changes, any
//     other named one of the device's stays and is reported back) and
//     channels-get (RXQueues and TXQueues as RX and TX channels).
//
// A dmabuf is whatever file the test registers with AddDmabuf (NewDmabuf
// makes a memfd); the fake only fstats the fds a bind names.
//
// Use it from tests of packages above compat/netdev, compat/ethnl and the
// probe: nothing here needs privileges.
package netdevtest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat/ethnl"
	"github.com/xdevmem/xdevmem/compat/internal/genl"
	"github.com/xdevmem/xdevmem/compat/netdev"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
)

// Family ids the fake controller hands out.
const (
	NetdevFamilyID  = 0x20
	EthtoolFamilyID = 0x21
)

// Device is a fake network device. Set its fields before the test's
// requests; Kernel.Update changes them while connections are open.
type Device struct {
	// Ifindex and Name identify the device.
	Ifindex int
	Name    string
	// Driver is what LookupInterface reports.
	Driver string
	// Down hides the queues from queue-get, as the kernel does for
	// devices that are not up.
	Down bool
	// RXQueues and TXQueues are the real queue counts.
	RXQueues, TXQueues int
	// XDPFeatures are reported by dev-get.
	XDPFeatures netdev.XDPAct
	// QueueMgmt is a driver with queue-management ops (and the instance
	// lock); without it bind-rx fails EOPNOTSUPP.
	QueueMgmt bool
	// NetmemTX is a driver that can transmit from a dmabuf.
	NetmemTX bool
	// NoRings is a driver without ring parameters (rings-get EOPNOTSUPP).
	NoRings bool
	// TCPDataSplit is the header-split state.
	TCPDataSplit ethnl.TCPDataSplit
	// HDSThresh and HDSThreshMax are the header-split threshold and its
	// maximum (0: the driver does not report them).
	HDSThresh, HDSThreshMax uint32
	// HWFeatures and Features are the changeable and active feature flags
	// by name (ethnl.NtupleFeature...).
	HWFeatures, Features []string
	// XDPAttached is an attached XDP program (bind-rx EEXIST).
	XDPAttached bool
	// XSKQueues are RX queues an AF_XDP socket uses (bind-rx EBUSY).
	XSKQueues []uint32
	// IgnoresProvider is a driver that restarts the queue without the
	// memory provider (bind-rx ENODATA).
	IgnoresProvider bool
	// NoQueueRestart is a driver that takes the netdev instance lock but
	// cannot restart a queue (no queue_mgmt_ops): bind-rx fails EOPNOTSUPP
	// when it opens the queue.
	NoQueueRestart bool
	// NoDMA is a device without a DMA device (a software device with
	// queue-management ops): bind-rx and bind-tx fail EOPNOTSUPP "Device
	// doesn't support DMA".
	NoDMA bool
	// QueueDMADevs gives RX queue i the DMA device QueueDMADevs[i] (0
	// beyond the slice): a bind-rx over queues of different DMA devices
	// fails EOPNOTSUPP "DMA device mismatch ..." (a multi-PF NIC).
	QueueDMADevs []int
	// NotEthernet is a device without Ethernet framing (loopback, a
	// tunnel): Ethernet reports false for it.
	NotEthernet bool
}

// Binding is a live dmabuf binding of the fake kernel.
type Binding struct {
	// ID is the binding's dmabuf id.
	ID uint32
	// TX is set for bind-tx bindings.
	TX bool
	// Ifindex is the bound device.
	Ifindex int
	// FD is the dmabuf fd the request named.
	FD int
	// Queues are the bound RX queues.
	Queues []uint32
	// Autorelease is the mode requested, nil when not sent.
	Autorelease *bool

	sock *socket
}

// Request is one request the fake received.
type Request struct {
	// Family is "nlctrl", "netdev" or "ethtool".
	Family string
	// Command is the generic netlink command.
	Command uint8
	// Flags are the netlink header flags.
	Flags netlink.HeaderFlags
	// Attrs are the request's attributes, encoded.
	Attrs []byte
}

// Kernel is the fake. The zero value is not usable; call New.
type Kernel struct {
	// Unprivileged makes admin operations fail EPERM: bind-rx, not
	// bind-tx, which the netdev family does not mark admin-only.
	Unprivileged bool
	// NoNetdev is a kernel without the netdev family.
	NoNetdev bool
	// NoBindRX is a kernel before devmem RX (no bind-rx op).
	NoBindRX bool
	// NoBindTX is a kernel before devmem TX (no bind-tx op).
	NoBindTX bool
	// AutoreleaseSeries is a kernel with the autorelease series (v7+):
	// bind-rx takes the autorelease attribute (absent: 0) and the mode is
	// system-wide.
	AutoreleaseSeries bool
	// Before618 is a kernel from 6.12 to 6.17: bind-rx checks a queue id
	// only when it opens the queue (ERANGE "rx queue index out of range",
	// after the dmabuf fd) and has no DMA-device checks.
	Before618 bool

	mu       sync.Mutex
	devs     map[int]*Device
	dmabufs  map[fileID]uint64
	bindings map[uint32]*Binding
	nextID   uint32
	socks    int
	reqs     []Request
}

// New returns a fake kernel without devices.
func New() *Kernel {
	return &Kernel{
		devs:     make(map[int]*Device),
		dmabufs:  make(map[fileID]uint64),
		bindings: make(map[uint32]*Binding),
	}
}

// AddDevice adds (or replaces) a device.
func (k *Kernel) AddDevice(d Device) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.devs[d.Ifindex] = &d
}

// Update changes a device under the kernel's lock.
func (k *Kernel) Update(ifindex int, fn func(*Device)) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if d := k.devs[ifindex]; d != nil {
		fn(d)
	}
}

// fileID identifies an open file, as the kernel's fget does, whatever fd
// number names it.
type fileID struct{ dev, ino uint64 }

func fileOf(fd int) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fileID{}, err
	}
	return fileID{uint64(st.Dev), st.Ino}, nil
}

// AddDmabuf registers the file open as fd as a dmabuf of size bytes. A
// bind names it by any fd of the same file (a dup works, as with the
// kernel's fget); an fd that is not open fails EBADF and an open file that
// was not registered EINVAL, as dma_buf_get does.
func (k *Kernel) AddDmabuf(fd int, size uint64) error {
	id, err := fileOf(fd)
	if err != nil {
		return fmt.Errorf("netdevtest: dmabuf fd %d: %w", fd, err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.dmabufs[id] = size
	return nil
}

// NewDmabuf makes a memfd of size bytes, registers it as a dmabuf and
// returns its fd; the caller closes it.
func (k *Kernel) NewDmabuf(size uint64) (int, error) {
	fd, err := unix.MemfdCreate("netdevtest-dmabuf", unix.MFD_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("netdevtest: memfd: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("netdevtest: memfd size: %w", err)
	}
	if err := k.AddDmabuf(fd, size); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// dmabufGet is dma_buf_get: EBADF for an fd that is not open, EINVAL for
// a file that is no (registered) dmabuf.
func (k *Kernel) dmabufGet(fd int) *kerr {
	id, err := fileOf(fd)
	if err != nil {
		return &kerr{unix.EBADF, ""}
	}
	if _, ok := k.dmabufs[id]; !ok {
		return &kerr{unix.EINVAL, ""}
	}
	return nil
}

// Bindings returns the live bindings, by id.
func (k *Kernel) Bindings() []Binding {
	k.mu.Lock()
	defer k.mu.Unlock()
	var bs []Binding
	for _, b := range k.bindings {
		bs = append(bs, *b)
	}
	slices.SortFunc(bs, func(a, b Binding) int { return int(a.ID) - int(b.ID) })
	return bs
}

// Requests returns the requests received so far.
func (k *Kernel) Requests() []Request {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.reqs)
}

// OpenSockets returns how many connections are open (leak checks).
func (k *Kernel) OpenSockets() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.socks
}

// LookupInterface finds a device by name: its ifindex and driver. It has
// the shape of compat.Env.Interface.
func (k *Kernel) LookupInterface(name string) (int, string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, d := range k.devs {
		if d.Name == name {
			return d.Ifindex, d.Driver, nil
		}
	}
	return 0, "", fmt.Errorf("netdevtest: interface %s: %w", name, unix.ENODEV)
}

// Ethernet reports whether a device has Ethernet framing. It has the shape
// of compat.Env.Ethernet.
func (k *Kernel) Ethernet(name string) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, d := range k.devs {
		if d.Name == name {
			return !d.NotEthernet, nil
		}
	}
	return false, fmt.Errorf("netdevtest: interface %s: %w", name, unix.ENODEV)
}

// Dial opens a connection to the fake. Closing it unbinds every binding
// made through it. It has the shape of compat.Env.Dial.
func (k *Kernel) Dial() (*genetlink.Conn, error) {
	k.mu.Lock()
	k.socks++
	k.mu.Unlock()
	return genetlink.NewConn(netlink.NewConn(&socket{k: k}, pid)), nil
}

const pid = 1

// socket is a netlink.Socket answering from the Kernel.
type socket struct {
	k      *Kernel
	mu     sync.Mutex
	queue  []netlink.Message
	closed bool
}

func (s *socket) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.k.mu.Lock()
	defer s.k.mu.Unlock()
	s.k.socks--
	for id, b := range s.k.bindings {
		if b.sock == s {
			delete(s.k.bindings, id)
		}
	}
	return nil
}

func (s *socket) Send(m netlink.Message) error { return s.SendMessages([]netlink.Message{m}) }

func (s *socket) SendMessages(ms []netlink.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return unix.EBADF
	}
	for _, m := range ms {
		s.queue = append(s.queue, s.k.handle(s, m)...)
	}
	return nil
}

func (s *socket) Receive() ([]netlink.Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, unix.EBADF
	}
	if len(s.queue) == 0 {
		return nil, errors.New("netdevtest: receive with no reply pending (the fake has no multicast)")
	}
	ms := s.queue
	s.queue = nil
	return ms, nil
}

// kerr is a kernel error: errno plus extended-ack message.
type kerr struct {
	errno unix.Errno
	msg   string
}

func fail(c devmemerr.Case) *kerr { return &kerr{c.Errno, c.Message} }

// handle answers one request message.
func (k *Kernel) handle(s *socket, m netlink.Message) []netlink.Message {
	var gm genetlink.Message
	if err := gm.UnmarshalBinary(m.Data); err != nil {
		return errorReply(m, &kerr{unix.EINVAL, "malformed generic netlink header"})
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	var fam string
	var replies [][]byte
	var dump bool
	var e *kerr
	switch m.Header.Type {
	case unix.GENL_ID_CTRL:
		fam = "nlctrl"
		if gm.Header.Command == unix.CTRL_CMD_GETPOLICY {
			dump = true
			replies, e = k.getPolicy(gm)
			break
		}
		replies, e = k.getFamily(gm)
	case NetdevFamilyID:
		fam = netdev.FamilyName
		if k.NoNetdev {
			e = &kerr{unix.ENOENT, ""}
			break
		}
		replies, dump, e = k.netdev(s, gm, m.Header.Flags)
	case EthtoolFamilyID:
		fam = ethnl.FamilyName
		replies, e = k.ethtool(gm)
	default:
		e = &kerr{unix.ENOENT, ""}
	}
	k.reqs = append(k.reqs, Request{Family: fam, Command: gm.Header.Command, Flags: m.Header.Flags, Attrs: slices.Clone(gm.Data)})
	if e != nil {
		if dump {
			return doneError(m, e)
		}
		return errorReply(m, e)
	}
	out := make([]netlink.Message, 0, len(replies)+1)
	for _, r := range replies {
		h := netlink.Header{Type: m.Header.Type, Sequence: m.Header.Sequence, PID: m.Header.PID}
		if dump {
			h.Flags = netlink.Multi
		}
		out = append(out, netlink.Message{Header: h, Data: r})
	}
	if dump {
		out = append(out, netlink.Message{
			Header: netlink.Header{Type: netlink.Done, Flags: netlink.Multi, Sequence: m.Header.Sequence, PID: m.Header.PID},
			Data:   make([]byte, 4),
		})
	}
	return out
}

// errorReply builds NLMSG_ERROR: the negative errno, the request echoed
// whole, and with a message the NLMSGERR_ATTR_MSG TLV and the
// AcknowledgeTLVs flag, as netlink_ack does for an extended ack.
func errorReply(req netlink.Message, e *kerr) []netlink.Message {
	req.Header.Length = uint32(16 + len(req.Data))
	echo, _ := req.MarshalBinary()
	b := binary.NativeEndian.AppendUint32(nil, uint32(-int32(e.errno)))
	b = append(b, echo...)
	var flags netlink.HeaderFlags
	if e.msg != "" {
		ae := netlink.NewAttributeEncoder()
		ae.String(unix.NLMSGERR_ATTR_MSG, e.msg)
		tlv, _ := ae.Encode()
		b = append(b, tlv...)
		flags |= netlink.AcknowledgeTLVs
	}
	return []netlink.Message{{
		Header: netlink.Header{Type: netlink.Error, Flags: flags, Sequence: req.Header.Sequence, PID: req.Header.PID},
		Data:   b,
	}}
}

// doneError ends a dump that failed: NLMSG_DONE carrying the negative
// errno (and the message TLV), as netlink_dump does when a dumpit fails.
func doneError(req netlink.Message, e *kerr) []netlink.Message {
	b := binary.NativeEndian.AppendUint32(nil, uint32(-int32(e.errno)))
	flags := netlink.Multi
	if e.msg != "" {
		ae := netlink.NewAttributeEncoder()
		ae.String(unix.NLMSGERR_ATTR_MSG, e.msg)
		tlv, _ := ae.Encode()
		b = append(b, tlv...)
		flags |= netlink.AcknowledgeTLVs
	}
	return []netlink.Message{{
		Header: netlink.Header{Type: netlink.Done, Flags: flags, Sequence: req.Header.Sequence, PID: req.Header.PID},
		Data:   b,
	}}
}

func reply(cmd uint8, version uint8, ae *netlink.AttributeEncoder) []byte {
	b, err := ae.Encode()
	if err != nil {
		panic(fmt.Sprintf("netdevtest: encode reply: %v", err))
	}
	gb, _ := (&genetlink.Message{Header: genetlink.Header{Command: cmd, Version: version}, Data: b}).MarshalBinary()
	return gb
}

// getPolicy answers CTRL_CMD_GETPOLICY for netdev's bind-rx: ifindex
// (u32), queues (nested), fd (u32) and, on a series kernel, autorelease
// (u8), as the kernel's policy dump reports them.
func (k *Kernel) getPolicy(gm genetlink.Message) ([][]byte, *kerr) {
	a, ok := decode(gm.Data)
	if !ok {
		return nil, &kerr{unix.EINVAL, ""}
	}
	if a.u16(unix.CTRL_ATTR_FAMILY_ID) != NetdevFamilyID || k.NoNetdev {
		return nil, &kerr{unix.ENOENT, ""}
	}
	if !a.has(unix.CTRL_ATTR_OP) || uint8(a.u32(unix.CTRL_ATTR_OP)) != netdev.CmdBindRX || k.NoBindRX {
		return nil, &kerr{unix.ENOENT, ""}
	}
	attrs := map[uint16]uint32{
		netdev.AttrDmabufIfindex: unix.NL_ATTR_TYPE_U32,
		netdev.AttrDmabufQueues:  unix.NL_ATTR_TYPE_NESTED,
		netdev.AttrDmabufFD:      unix.NL_ATTR_TYPE_U32,
	}
	if k.AutoreleaseSeries {
		attrs[netdev.AttrDmabufAutorelease] = unix.NL_ATTR_TYPE_U8
	}
	msgs, err := genl.EncodeDoPolicy(NetdevFamilyID, netdev.CmdBindRX, attrs)
	if err != nil {
		panic(err)
	}
	out := make([][]byte, len(msgs))
	for i, m := range msgs {
		out[i], _ = (&genetlink.Message{Header: genetlink.Header{Command: unix.CTRL_CMD_GETPOLICY, Version: 2}, Data: m}).MarshalBinary()
	}
	return out, nil
}

func (k *Kernel) getFamily(gm genetlink.Message) ([][]byte, *kerr) {
	if gm.Header.Command != unix.CTRL_CMD_GETFAMILY {
		return nil, &kerr{unix.EOPNOTSUPP, ""}
	}
	ad, err := netlink.NewAttributeDecoder(gm.Data)
	if err != nil {
		return nil, &kerr{unix.EINVAL, ""}
	}
	var name string
	for ad.Next() {
		if ad.Type() == unix.CTRL_ATTR_FAMILY_NAME {
			name = ad.String()
		}
	}
	var f genl.Family
	switch {
	case name == netdev.FamilyName && !k.NoNetdev:
		f = genl.Family{ID: NetdevFamilyID, Version: netdev.FamilyVersion, Name: name,
			Ops: []uint8{netdev.CmdDevGet, netdev.CmdPagePoolGet, netdev.CmdQueueGet, netdev.CmdNapiGet, netdev.CmdQstatsGet}}
		if !k.NoBindRX {
			f.Ops = append(f.Ops, netdev.CmdBindRX, netdev.CmdNapiSet)
		}
		if !k.NoBindTX && !k.NoBindRX {
			f.Ops = append(f.Ops, netdev.CmdBindTX)
		}
	case name == ethnl.FamilyName:
		f = genl.Family{ID: EthtoolFamilyID, Version: ethnl.FamilyVersion, Name: name,
			Ops: []uint8{unix.ETHTOOL_MSG_FEATURES_GET, unix.ETHTOOL_MSG_FEATURES_SET,
				unix.ETHTOOL_MSG_RINGS_GET, unix.ETHTOOL_MSG_CHANNELS_GET}}
	default:
		return nil, &kerr{unix.ENOENT, ""}
	}
	b, err := genl.EncodeFamily(f)
	if err != nil {
		panic(err)
	}
	gb, _ := (&genetlink.Message{Header: genetlink.Header{Command: unix.CTRL_CMD_NEWFAMILY, Version: 2}, Data: b}).MarshalBinary()
	return [][]byte{gb}, nil
}

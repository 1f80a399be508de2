package stack

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
)

const (
	// txHistory is how far below the acknowledged point the stream map
	// keeps its extents, so a retransmission gVisor built before it saw
	// an ACK the tap already read still maps.
	txHistory = 4 << 20
	// txLinger bounds how long a closed connection keeps sending its
	// queued data before it is reset.
	txLinger = 60 * time.Second
)

// txExtent maps a run of the byte stream to UMEM bytes, or (b nil) marks
// it as plain bytes, which gVisor's segments carry themselves.
type txExtent struct {
	off  uint64 // stream offset (0 = first byte after the SYN)
	n    uint64
	addr uint64 // UMEM address of off
	b    *txBinding
}

// txCall is a send call waiting for its completion.
type txCall struct {
	id     uint32
	end    uint64     // stream offset after its last byte
	b      *txBinding // nil for plain bytes sent with MSG_ZEROCOPY
	copied bool       // its completion says SO_EE_CODE_ZEROCOPY_COPIED
}

type mapResult int

const (
	mapOK mapResult = iota
	mapStale
	mapUnmapped
	mapPlain // every byte is plain: the segment carries them
)

// TXConn is an outgoing TCP connection of the emulated stack that sends
// from TX dmabufs. It implements devmemapi.TXConn. SendMsg calls are
// serialized; RecvErrQueue and PollErrQueue may run beside them.
type TXConn struct {
	s     *Stack
	eng   *txEngine
	ep    tcpip.Endpoint
	wq    waiter.Queue
	key   txKey
	laddr net.Addr
	raddr net.Addr
	port  uint16 // the local port, held in s.ports; 0 when not held
	// inet6 is the socket's family: AF_INET6 when Dial was given an IPv6
	// address, v4-mapped ones included (ncdevmem's sockets), so its
	// completions come as ipv6_recv_error writes them.
	inet6 bool
	// view: the sending side of an accepted Conn (conn_tx.go).
	view bool

	weOut, weIn waiter.Entry
	chOut, chIn chan struct{}

	zerocopy  atomic.Bool  // SO_ZEROCOPY
	deadline  atomic.Int64 // write deadline, unix nanoseconds; 0 = none
	rdeadline atomic.Int64 // read deadline (Read)
	wshut     atomic.Bool
	smu       sync.Mutex // serializes SendMsg

	mu       sync.Mutex
	iss      uint32
	issKnown bool
	recEnd   uint64 // stream offset after the last recorded byte
	acked    uint64 // the peer's cumulative ACK as a stream offset
	sndMax   uint64 // highest stream offset transmitted
	ext      []txExtent
	extHead  int
	calls    []txCall
	callHead int
	inflight []uint64 // stream starts of chains not yet completed
	nextID   uint32
	errq     []devmemapi.ZerocopyRange
	aborted  bool
	errCh    chan struct{}

	notifyMu    sync.Mutex
	notifyEntry *waiter.Entry          // SetNotify's; guarded by notifyMu
	notifyFn    atomic.Pointer[func()] // SetNotify's fn, for completions

	closed    chan struct{}
	closeOnce sync.Once
}

var _ devmemapi.TXConn = (*TXConn)(nil)
var _ devmemapi.TXProvider = (*Stack)(nil)

// Dial implements devmemapi.TXProvider: it connects to addr from one of
// the stack's addresses of the same family. The connection sends from TX
// dmabufs (SendMsg); SO_ZEROCOPY starts off, as on a kernel socket.
//
// The connection stands for a socket of addr's family: an IPv4 address
// gives an AF_INET socket, an IPv6 one an AF_INET6 socket, and a v4-mapped
// address (::ffff:a.b.c.d) an AF_INET6 socket that talks IPv4 to a.b.c.d,
// as a kernel AF_INET6 socket connected to it does. The family decides the
// layout of the completions (RecvErrQueue) and of the addresses
// (LocalAddr, RemoteAddr: v4-mapped on a v4-mapped socket, as getsockname
// gives them).
func (s *Stack) Dial(ctx context.Context, addr netip.AddrPort) (devmemapi.TXConn, error) {
	if s.closing.Load() {
		return nil, fmt.Errorf("dial %v: %w", addr, devmemapi.ErrClosed)
	}
	t, err := s.engine()
	if err != nil {
		return nil, fmt.Errorf("dial %v: %w", addr, err)
	}
	ra := addr.Addr().Unmap()
	proto := ipv4.ProtocolNumber
	if ra.Is6() {
		proto = ipv6.ProtocolNumber
	}
	c := &TXConn{s: s, eng: t, closed: make(chan struct{}), errCh: make(chan struct{}, 1), inet6: addr.Addr().Is6()}
	c.weOut, c.chOut = waiter.NewChannelEntry(waiter.WritableEvents | waiter.EventErr | waiter.EventHUp)
	c.weIn, c.chIn = waiter.NewChannelEntry(waiter.ReadableEvents | waiter.EventErr | waiter.EventHUp)
	ep, terr := s.ns.NewEndpoint(tcp.ProtocolNumber, proto, &c.wq)
	if terr != nil {
		return nil, fmt.Errorf("dial %v: %w", addr, tcpipErr(terr))
	}
	c.ep = ep
	c.wq.EventRegister(&c.weOut)
	c.wq.EventRegister(&c.weIn)
	fail := func(err error) (devmemapi.TXConn, error) {
		c.wq.EventUnregister(&c.weOut)
		c.wq.EventUnregister(&c.weIn)
		ep.Close()
		t.unregister(c)
		c.releasePort()
		return nil, fmt.Errorf("dial %v: %w", addr, err)
	}
	if ra.Is6() {
		ep.SocketOptions().SetV6Only(true)
	}
	// Bind first so the local port is known and the SYN maps: to a port
	// the kernel gives and the stack holds, where it holds ports.
	var local tcpip.FullAddress
	if s.ports != nil {
		la, ok := s.localAddrFor(ra)
		if !ok {
			return fail(fmt.Errorf("no address of the stack's in %v's family: %w", ra, unix.EAFNOSUPPORT))
		}
		if s.neigh != nil {
			if err := s.neigh.resolve(ctx, s.netns, s.ifindex, ra, s.nextHop(ra)); err != nil {
				return fail(err)
			}
		}
		p, err := s.ports.acquire(0, []netip.Addr{la}, false)
		if err != nil {
			return fail(err)
		}
		c.port = p
		local = tcpip.FullAddress{Addr: tcpip.AddrFromSlice(la.AsSlice()), Port: p}
	}
	if terr := ep.Bind(local); terr != nil {
		return fail(tcpipErr(terr))
	}
	la, terr := ep.GetLocalAddress()
	if terr != nil {
		return fail(tcpipErr(terr))
	}
	c.key = txKey{raddr: ra.As16(), rport: addr.Port(), lport: la.Port}
	if err := t.register(c); err != nil {
		return fail(err)
	}
	terr = ep.Connect(tcpip.FullAddress{Addr: tcpip.AddrFromSlice(ra.AsSlice()), Port: addr.Port()})
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-c.chOut:
		case <-ctx.Done():
			return fail(ctx.Err())
		}
		terr = ep.LastError()
	}
	if terr != nil {
		return fail(tcpipErr(terr))
	}
	if la, terr = ep.GetLocalAddress(); terr != nil {
		return fail(tcpipErr(terr))
	}
	lip, _ := netip.AddrFromSlice(la.Addr.AsSlice())
	if c.inet6 && lip.Is4() {
		lip = netip.AddrFrom16(lip.As16()) // ::ffff:a.b.c.d
	}
	c.laddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(lip, la.Port))
	c.raddr = net.TCPAddrFromAddrPort(addr)
	return c, nil
}

// LocalAddr implements devmemapi.TXConn.
func (c *TXConn) LocalAddr() net.Addr { return c.laddr }

// RemoteAddr implements devmemapi.TXConn.
func (c *TXConn) RemoteAddr() net.Addr { return c.raddr }

// SetZeroCopy implements devmemapi.Sender (SO_ZEROCOPY).
func (c *TXConn) SetZeroCopy(on bool) error {
	c.zerocopy.Store(on)
	return nil
}

// SetWriteDeadline implements devmemapi.TXConn.
func (c *TXConn) SetWriteDeadline(t time.Time) error {
	return setDeadline(&c.deadline, t, c.chOut)
}

// SendMsg implements devmemapi.Sender with the kernel's checks, in the
// kernel's order (net/ipv4/tcp.c tcp_sendmsg_locked), each failing with its
// devmemerr sendmsg case:
//
//   - more than UIO_MAXIOV (1024) iovecs is EMSGSIZE (import_iovec, before
//     anything else);
//   - the control buffer is parsed first (sock_cmsg_send, with the
//     process's CAP_NET_ADMIN/CAP_NET_RAW as the privilege SO_MARK and
//     SO_PRIORITY above 6 need); SO_MARK, SO_PRIORITY and SO_TIMESTAMPING
//     are accepted (and have no effect on the emulated link); its error is
//     held back like sockc_err;
//   - with MSG_ZEROCOPY, SO_ZEROCOPY and a nonzero length, the dmabuf id is
//     looked up (net_devmem_get_binding): no such TX binding EINVAL, another
//     device ENODEV;
//   - a dmabuf id without MSG_ZEROCOPY or without SO_ZEROCOPY is EINVAL;
//   - a send-side shutdown is EPIPE, then the held-back cmsg error;
//   - an iovec outside the dmabuf is EFAULT (zerocopy_fill_skb_from_devmem,
//     net_devmem_get_niov_at). The emulation checks every iovec before
//     sending, so a failed call sends nothing (the kernel checks per skb
//     and can return a partial count for sends beyond one skb).
//
// Without a dmabuf id the iovecs would be user addresses, which the
// emulation does not have: EFAULT. MSG_DONTWAIT returns what fitted, or
// EAGAIN. Each call that queued data takes the next send number.
func (c *TXConn) SendMsg(iov []devmemapi.Iovec, oob []byte, flags int) (int, error) {
	t := c.eng
	if len(iov) > devmemapi.UIO_MAXIOV {
		t.cnt.einval.Add(1)
		return 0, fmt.Errorf("sendmsg: %d iovecs: %w", len(iov), devmemerr.SendMsgTooManyIovecs.Err())
	}
	ck, cerr := devmemapi.ParseSendCmsg(oob, devmemapi.SendCmsgOptions{Privileged: true})
	if (cerr != nil || ck.HasMark || ck.HasPriority && ck.Priority > 6) && !netPrivileged() {
		// Only a mark or a high priority needs the capability: ask for
		// it (a syscall) only then, or on the error path, and parse
		// again with the kernel's order of errors.
		ck, cerr = devmemapi.ParseSendCmsg(oob, devmemapi.SendCmsgOptions{})
	}
	id, hasID := ck.DmabufID, ck.HasDmabufID
	var size uint64
	for _, v := range iov {
		if v.Len > 1<<62 || size+v.Len > 1<<62 {
			t.cnt.einval.Add(1)
			return 0, fmt.Errorf("sendmsg: iovec length %d: %w", v.Len, unix.EINVAL)
		}
		size += v.Len
	}
	zcFlag := flags&devmemapi.MSG_ZEROCOPY != 0
	sockZC := c.zerocopy.Load()
	devmem := cerr == nil && hasID && id != 0
	var b *txBinding
	if zcFlag && sockZC && size > 0 && devmem {
		var err error
		if b, err = c.s.lookupTXBinding(id); err != nil {
			if errors.Is(err, unix.ENODEV) {
				t.cnt.enodev.Add(1)
				return 0, fmt.Errorf("sendmsg: %w", devmemerr.SendMsgOtherDevice.Err())
			}
			t.cnt.einval.Add(1)
			return 0, fmt.Errorf("sendmsg: %w: %w", err, devmemerr.SendMsgUnknownBinding.Err())
		}
	}
	if devmem && (!zcFlag || !sockZC) {
		t.cnt.einval.Add(1)
		what := "MSG_ZEROCOPY"
		if zcFlag {
			what = "SO_ZEROCOPY"
		}
		return 0, fmt.Errorf("sendmsg: a dmabuf send needs %s: %w", what, devmemerr.SendMsgNoZerocopy.Err())
	}
	if err := c.sendable("sendmsg"); err != nil {
		return 0, err
	}
	if cerr != nil {
		t.cnt.einval.Add(1)
		row := devmemerr.SendMsgBadCmsg
		if errors.Is(cerr, unix.EPERM) {
			row = devmemerr.SendMsgCmsgPerm
		}
		return 0, fmt.Errorf("sendmsg: control message: %w", row.Err())
	}
	if size == 0 {
		return 0, nil
	}
	if b == nil {
		t.cnt.efault.Add(1)
		return 0, fmt.Errorf("sendmsg: no dmabuf id, and the emulation has no user addresses to send from: %w", unix.EFAULT)
	}
	for i, v := range iov {
		if v.Len != 0 && (v.Base >= b.size || v.Len > b.size-v.Base) {
			t.cnt.efault.Add(1)
			return 0, fmt.Errorf("sendmsg: iovec %d [%d, +%d) is outside the %d-byte dmabuf %d: %w", i, v.Base, v.Len, b.size, b.id, devmemerr.SendMsgOutsideDmabuf.Err())
		}
	}

	c.smu.Lock()
	defer c.smu.Unlock()
	c.mu.Lock()
	start := c.recEnd
	c.recordLocked(start, iov, b)
	c.mu.Unlock()

	total, err := c.write(size, func(done uint64) tcpip.Payloader { return &placeholder{left: int64(size - done)} }, flags)
	if total > 0 {
		b.get()
	}
	c.finishSend(start, total, txCall{b: b})
	if total > 0 {
		return int(total), nil
	}
	return 0, fmt.Errorf("sendmsg: %w", err)
}

// write queues size bytes into gVisor's send buffer, payload giving the
// bytes from offset done on, waiting for room unless flags has
// MSG_DONTWAIT. It returns the bytes queued and why it stopped short.
func (c *TXConn) write(size uint64, payload func(done uint64) tcpip.Payloader, flags int) (uint64, error) {
	var total uint64
	for total < size {
		n, terr := c.ep.Write(payload(total), tcpip.WriteOptions{})
		total += uint64(n)
		if terr == nil {
			continue
		}
		if _, ok := terr.(*tcpip.ErrWouldBlock); !ok {
			return total, sendErr(terr)
		}
		if flags&unix.MSG_DONTWAIT != 0 {
			if total == 0 {
				return 0, unix.EAGAIN
			}
			return total, nil
		}
		if err := c.waitOut(); err != nil {
			return total, err
		}
	}
	return total, nil
}

// finishSend drops what a send recorded from start on and gVisor did not
// take, and, when it queued bytes and call says what completes them (a
// binding, or copied plain bytes), gives the call the next send number.
func (c *TXConn) finishSend(start, total uint64, call txCall) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.truncateLocked(start + total)
	if total == 0 || (call.b == nil && !call.copied) {
		return
	}
	call.id, call.end = c.nextID, start+total
	c.calls = append(c.calls, call)
	c.nextID++
	c.eng.cnt.calls.Add(1)
	c.completeLocked()
}

// sendable is why op cannot send on c now: closed, or the sending side
// shut down (EPIPE); nil when it can.
func (c *TXConn) sendable(op string) error {
	select {
	case <-c.closed:
		return fmt.Errorf("%s: %w", op, devmemapi.ErrClosed)
	default:
	}
	if c.wshut.Load() {
		return fmt.Errorf("%s: %w", op, unix.EPIPE)
	}
	return nil
}

// Send sends plain bytes on the connection (send(2) without a dmabuf on a
// devmem TX socket, such as a header before dmabuf payload): they are
// copied into gVisor's send buffer and go out in the stream between the
// dmabuf sends, in call order. With MSG_ZEROCOPY on an SO_ZEROCOPY socket
// the call takes the next send number and completes, once acknowledged,
// with SO_EE_CODE_ZEROCOPY_COPIED, as the kernel reports a zerocopy send
// it copied. MSG_DONTWAIT queues what fits, or fails EAGAIN; a shut-down
// sending side is EPIPE.
func (c *TXConn) Send(p []byte, flags int) (int, error) {
	if err := c.sendable("send"); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	c.smu.Lock()
	defer c.smu.Unlock()
	c.mu.Lock()
	start := c.recEnd
	c.recordPlainLocked(start, uint64(len(p)))
	c.mu.Unlock()

	total, err := c.write(uint64(len(p)), func(done uint64) tcpip.Payloader { return bytes.NewReader(p[done:]) }, flags)
	c.finishSend(start, total, txCall{copied: flags&devmemapi.MSG_ZEROCOPY != 0 && c.zerocopy.Load()})
	if total > 0 {
		return int(total), nil
	}
	return 0, fmt.Errorf("send: %w", err)
}

// sendErr converts a gVisor write error.
func sendErr(terr tcpip.Error) error {
	switch terr.(type) {
	case *tcpip.ErrClosedForSend:
		return unix.EPIPE
	}
	return tcpipErr(terr)
}

func (c *TXConn) waitOut() error {
	closed, err := waitEvent(c.deadline.Load(), c.chOut, c.closed)
	if closed {
		return devmemapi.ErrClosed
	}
	return err
}

// placeholder is what gVisor's send buffer holds for devmem bytes: it
// reports the length and writes nothing (gVisor's fresh chunks are
// zeroed; the bytes never leave the stack).
type placeholder struct{ left int64 }

// Len implements tcpip.Payloader.
func (p *placeholder) Len() int { return int(p.left) }

// Read implements io.Reader without touching b.
func (p *placeholder) Read(b []byte) (int, error) {
	if p.left == 0 {
		return 0, io.EOF
	}
	n := min(int64(len(b)), p.left)
	p.left -= n
	return int(n), nil
}

// recordLocked maps the stream from start onto the iovecs' UMEM bytes,
// extending the last extent where the bytes continue it.
func (c *TXConn) recordLocked(start uint64, iov []devmemapi.Iovec, b *txBinding) {
	pos := start
	for _, v := range iov {
		if v.Len == 0 {
			continue
		}
		addr := b.base + v.Base
		if l := len(c.ext); l > c.extHead {
			last := &c.ext[l-1]
			if last.b == b && last.off+last.n == pos && last.addr+last.n == addr {
				last.n += v.Len
				pos += v.Len
				continue
			}
		}
		c.ext = append(c.ext, txExtent{off: pos, n: v.Len, addr: addr, b: b})
		pos += v.Len
	}
	c.recEnd = pos
}

// recordPlainLocked marks n plain bytes of the stream from start.
func (c *TXConn) recordPlainLocked(start, n uint64) {
	if l := len(c.ext); l > c.extHead {
		if last := &c.ext[l-1]; last.b == nil && last.off+last.n == start {
			last.n += n
			c.recEnd = start + n
			return
		}
	}
	c.ext = append(c.ext, txExtent{off: start, n: n})
	c.recEnd = start + n
}

// truncateLocked drops recorded bytes from end on (what gVisor did not
// take).
func (c *TXConn) truncateLocked(end uint64) {
	for len(c.ext) > c.extHead {
		last := &c.ext[len(c.ext)-1]
		if last.off >= end {
			c.ext = c.ext[:len(c.ext)-1]
			continue
		}
		if last.off+last.n > end {
			last.n = end - last.off
		}
		break
	}
	c.recEnd = end
}

// seqAt is the sequence number of stream offset off.
func (c *TXConn) seqAt(off uint64) uint32 { return c.iss + 1 + uint32(off) }

// setISS records the initial sequence number from the SYN.
func (c *TXConn) setISS(seq uint32) {
	c.mu.Lock()
	if !c.issKnown {
		c.iss, c.issKnown = seq, true
	}
	c.mu.Unlock()
}

// mapSegment maps the n payload bytes at sequence number seq to UMEM
// pieces appended to dst (pieces of plain bytes have no binding), and
// records the chain as in flight from start when it carries dmabuf bytes;
// mapPlain says it carries none.
func (c *TXConn) mapSegment(seq uint32, n int, dst []txPiece) (_ []txPiece, start uint64, _ mapResult) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.issKnown {
		return dst, 0, mapUnmapped
	}
	off := int64(c.acked) + int64(int32(seq-c.seqAt(c.acked)))
	end := off + int64(n)
	if end <= int64(c.acked) {
		return dst, 0, mapStale
	}
	ext := c.ext[c.extHead:]
	if off < 0 || len(ext) == 0 || uint64(off) < ext[0].off {
		return dst, 0, mapStale // older than the history kept
	}
	if uint64(end) > c.recEnd {
		return dst, 0, mapUnmapped
	}
	pos := uint64(off)
	i := sort.Search(len(ext), func(i int) bool { return ext[i].off+ext[i].n > pos })
	dmabuf := false
	for ; pos < uint64(end); i++ {
		if i >= len(ext) || ext[i].off > pos {
			return dst, 0, mapUnmapped
		}
		e := ext[i]
		take := min(uint64(end), e.off+e.n) - pos
		dst = append(dst, txPiece{addr: e.addr + (pos - e.off), n: uint32(take), b: e.b})
		dmabuf = dmabuf || e.b != nil
		pos += take
	}
	if uint64(end) > c.sndMax {
		c.sndMax = uint64(end)
	}
	if !dmabuf {
		return dst, uint64(off), mapPlain
	}
	c.inflight = append(c.inflight, uint64(off))
	return dst, uint64(off), mapOK
}

// onAck takes the peer's cumulative ACK.
func (c *TXConn) onAck(ack uint32) {
	c.mu.Lock()
	if !c.issKnown {
		c.mu.Unlock()
		return
	}
	d := int32(ack - c.seqAt(c.acked))
	if d <= 0 || c.acked+uint64(d) > c.sndMax+1 { // +1: our FIN
		c.mu.Unlock()
		return
	}
	c.acked = min(c.acked+uint64(d), c.sndMax)
	c.trimLocked()
	pending := c.callHead < len(c.calls)
	c.mu.Unlock()
	if pending {
		// The frames that carried the data have normally completed by
		// now (copy mode completes inside the kick): collect them.
		c.eng.dev.TXReclaim()
		c.mu.Lock()
		c.completeLocked()
		c.mu.Unlock()
	}
}

// trimLocked forgets extents more than txHistory below the ACK.
func (c *TXConn) trimLocked() {
	for c.extHead < len(c.ext) {
		e := c.ext[c.extHead]
		if e.off+e.n+txHistory > c.acked {
			break
		}
		c.ext[c.extHead] = txExtent{}
		c.extHead++
	}
	if c.extHead > 64 && c.extHead > len(c.ext)/2 {
		n := copy(c.ext, c.ext[c.extHead:])
		clear(c.ext[n:])
		c.ext = c.ext[:n]
		c.extHead = 0
	}
}

// chainDone is called when a chain's header frame has completed.
func (c *TXConn) chainDone(start uint64) {
	c.mu.Lock()
	for i, s := range c.inflight {
		if s == start {
			last := len(c.inflight) - 1
			c.inflight[i] = c.inflight[last]
			c.inflight = c.inflight[:last]
			break
		}
	}
	c.completeLocked()
	c.mu.Unlock()
}

// blockedLocked reports whether a chain carrying bytes before end is still
// in flight.
func (c *TXConn) blockedLocked(end uint64) bool {
	for _, s := range c.inflight {
		if s < end {
			return true
		}
	}
	return false
}

// completeLocked completes, in order, the calls whose bytes the peer
// acknowledged (or that a reset ended) and whose chains all came back.
func (c *TXConn) completeLocked() {
	for c.callHead < len(c.calls) {
		call := c.calls[c.callHead]
		if (call.end > c.acked && !c.aborted) || c.blockedLocked(call.end) {
			break
		}
		c.emitLocked(call.id, call.copied)
		c.calls[c.callHead] = txCall{}
		c.callHead++
		if call.b != nil {
			call.b.put()
		}
	}
	if c.callHead == len(c.calls) {
		c.calls, c.callHead = c.calls[:0], 0
	} else if c.callHead > 64 && c.callHead > len(c.calls)/2 {
		n := copy(c.calls, c.calls[c.callHead:])
		c.calls, c.callHead = c.calls[:n], 0
	}
}

// emitLocked queues the completion of send id, extending the newest
// queued notification when id continues it (the kernel's
// skb_zerocopy_notify_extend).
func (c *TXConn) emitLocked(id uint32, copied bool) {
	c.eng.cnt.completed.Add(1)
	if l := len(c.errq); l > 0 && c.errq[l-1].Hi+1 == id && c.errq[l-1].Count() < 1<<31 {
		c.errq[l-1].Hi = id
	} else {
		c.errq = append(c.errq, devmemapi.ZerocopyRange{Lo: id, Hi: id, Copied: copied})
		c.eng.cnt.notifications.Add(1)
	}
	select {
	case c.errCh <- struct{}{}:
	default:
	}
	if fn := c.notifyFn.Load(); fn != nil {
		(*fn)()
	}
}

// peerReset ends the connection's sends: pending calls complete once their
// chains are back (the kernel frees the reset socket's queued skbs, which
// fires their notifications).
func (c *TXConn) peerReset() {
	c.mu.Lock()
	c.aborted = true
	c.completeLocked()
	c.mu.Unlock()
}

// abort drops what is pending without notifications (teardown).
func (c *TXConn) abort() {
	c.mu.Lock()
	c.aborted = true
	for i := c.callHead; i < len(c.calls); i++ {
		if b := c.calls[i].b; b != nil {
			b.put()
		}
	}
	c.calls, c.callHead = nil, 0
	c.ext, c.extHead = nil, 0
	c.mu.Unlock()
}

// waitingLocked reports whether an acknowledged call waits for its frames.
func (c *TXConn) waitingLocked() bool {
	return c.callHead < len(c.calls) && (c.calls[c.callHead].end <= c.acked || c.aborted)
}

// RecvErrQueue implements devmemapi.Sender (recvmsg with MSG_ERRQUEUE): it
// never blocks, an empty queue is EAGAIN. The notification is a SOL_IP /
// IP_RECVERR message on an AF_INET connection and a SOL_IPV6 /
// IPV6_RECVERR one on an AF_INET6 connection (see Dial).
func (c *TXConn) RecvErrQueue(oob []byte, flags int) (oobn, recvflags int, err error) {
	c.mu.Lock()
	if len(c.errq) == 0 && c.waitingLocked() {
		c.mu.Unlock()
		c.eng.dev.TXReclaim()
		c.mu.Lock()
	}
	if len(c.errq) == 0 {
		c.mu.Unlock()
		return 0, 0, errErrQueueAgain
	}
	r := c.errq[0]
	c.errq = c.errq[1:]
	if len(c.errq) == 0 {
		c.errq = nil
	}
	c.mu.Unlock()
	put := devmemapi.PutZerocopyCmsg // ip_recv_error
	if c.inet6 {
		put = devmemapi.PutZerocopyCmsg6 // ipv6_recv_error (inet_recv_error chooses by family)
	}
	n, trunc := put(oob, r)
	recvflags = devmemapi.MSG_ERRQUEUE
	if trunc {
		recvflags |= devmemapi.MSG_CTRUNC
	}
	return n, recvflags, nil
}

// PollErrQueue implements devmemapi.Sender.
func (c *TXConn) PollErrQueue(timeout time.Duration) (bool, error) {
	var expire <-chan time.Time
	if timeout >= 0 {
		tm := time.NewTimer(timeout)
		defer tm.Stop()
		expire = tm.C
	}
	for {
		c.mu.Lock()
		ready, waiting := len(c.errq) > 0, c.waitingLocked()
		c.mu.Unlock()
		if ready {
			return true, nil
		}
		var tick <-chan time.Time
		if waiting {
			c.eng.dev.TXReclaim()
			tick = time.After(time.Millisecond)
		}
		select {
		case <-c.errCh:
		case <-tick:
		case <-expire:
			return false, nil
		case <-c.closed:
			return false, fmt.Errorf("poll errqueue: %w", devmemapi.ErrClosed)
		}
	}
}

// Read implements devmemapi.TXConn: ordinary bytes from the peer, copied.
func (c *TXConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		w := tcpip.SliceWriter(p)
		res, terr := c.ep.Read(&w, tcpip.ReadOptions{})
		switch terr.(type) {
		case nil:
			return res.Count, nil
		case *tcpip.ErrClosedForReceive:
			return 0, io.EOF
		case *tcpip.ErrWouldBlock:
		default:
			return 0, fmt.Errorf("read: %w", tcpipErr(terr))
		}
		isClosed, err := waitEvent(c.rdeadline.Load(), c.chIn, c.closed)
		switch {
		case isClosed:
			return 0, fmt.Errorf("read: %w", devmemapi.ErrClosed)
		case err != nil:
			return 0, fmt.Errorf("read: %w", err)
		}
	}
}

// CloseWrite implements devmemapi.TXConn.
func (c *TXConn) CloseWrite() error {
	c.wshut.Store(true)
	if terr := c.ep.Shutdown(tcpip.ShutdownWrite); terr != nil {
		return fmt.Errorf("shutdown: %w", tcpipErr(terr))
	}
	return nil
}

// TXConnStats describes a connection's send side.
type TXConnStats struct {
	// Queued is the number of bytes send calls queued; Acked how many of
	// them the peer acknowledged.
	Queued, Acked uint64
	// Sends counts send calls that queued data; Pending those not yet
	// completed; Notifications the ranges waiting in the error queue.
	Sends, Pending, Notifications int
	// InFlight counts chains not yet back from the device.
	InFlight int
}

// Stats reports the connection's send side.
func (c *TXConn) Stats() TXConnStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return TXConnStats{Queued: c.recEnd, Acked: c.acked, Sends: int(c.nextID), Pending: len(c.calls) - c.callHead,
		Notifications: len(c.errq), InFlight: len(c.inflight)}
}

// Close implements devmemapi.TXConn: the connection closes after its
// queued data (gVisor keeps sending it); its pending notifications are
// dropped with it, as the kernel drops a closed socket's error queue.
// SetLinger changes when it returns.
func (c *TXConn) Close() error {
	c.closeOnce.Do(func() {
		close(c.closed)
		c.wq.EventUnregister(&c.weOut)
		c.wq.EventUnregister(&c.weIn)
		c.SetNotify(nil)
		c.ep.Close()
		go c.linger()
		lingerWait(c.ep, &c.s.closing)
	})
	return nil
}

// SetLinger is SO_LINGER (see linger.go): on with d 0, Close resets the
// connection; on with d > 0, Close waits up to d for the peer to
// acknowledge the data and the FIN.
func (c *TXConn) SetLinger(on bool, d time.Duration) { setLinger(c.ep, on, d) }

// linger keeps the connection mapped while gVisor may still send its data
// (awaitOrphan): until its state can send no more (FIN acknowledged,
// closed or reset), or txLinger passes and the connection is reset.
// Unmapping earlier would let a retransmission carry placeholder bytes.
func (c *TXConn) linger() {
	if awaitOrphan(c.ep, &c.s.closing) {
		c.eng.unregister(c)
		c.abort()
		c.releasePort()
	}
}

// releasePort gives the connection's local port back (once).
func (c *TXConn) releasePort() {
	if c.port != 0 {
		c.s.ports.release(c.port)
		c.port = 0
	}
}

// Write implements net.Conn: plain bytes (Send without flags).
func (c *TXConn) Write(p []byte) (int, error) { return c.Send(p, 0) }

// SetReadDeadline implements net.Conn: it bounds Read; expiry fails with
// os.ErrDeadlineExceeded.
func (c *TXConn) SetReadDeadline(t time.Time) error {
	return setDeadline(&c.rdeadline, t, c.chIn)
}

// SetDeadline implements net.Conn: both deadlines.
func (c *TXConn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

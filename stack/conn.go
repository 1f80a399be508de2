package stack

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
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
	"github.com/xdevmem/xdevmem/tokens"
)

// Listener is a listening TCP socket of the emulated stack: one gVisor
// endpoint per address family it listens on. It implements
// devmemapi.Listener.
type Listener struct {
	s      *Stack
	eps    []*listenEP
	ch     chan struct{}
	port   uint16
	addr   net.Addr
	closed chan struct{}
	once   sync.Once

	notifyMu sync.Mutex
	notify   []*waiter.Entry // SetNotify's, one per ep; guarded by notifyMu
}

type listenEP struct {
	ep tcpip.Endpoint
	wq waiter.Queue
	we waiter.Entry
}

var _ devmemapi.Listener = (*Listener)(nil)

// Listen implements devmemapi.Provider. The address must be one of the
// stack's addresses or unspecified (then every family the stack has
// listens on the port).
func (s *Stack) Listen(addr netip.AddrPort) (devmemapi.Listener, error) {
	if s.closing.Load() {
		return nil, fmt.Errorf("listen %v: %w", addr, devmemapi.ErrClosed)
	}
	var want []netip.Addr
	a := addr.Addr().Unmap()
	for _, p := range s.prefixes {
		if !a.IsValid() || a.IsUnspecified() || p.Addr() == a {
			want = append(want, p.Addr())
		}
	}
	if len(want) == 0 {
		return nil, fmt.Errorf("listen %v: not one of the stack's addresses %v: %w", addr, s.prefixes, unix.EADDRNOTAVAIL)
	}
	port := addr.Port()
	if s.ports != nil {
		p, err := s.ports.acquire(port, want, true)
		if err != nil {
			return nil, fmt.Errorf("listen %v: %w", addr, err)
		}
		port = p
	}
	l := &Listener{s: s, port: port, closed: make(chan struct{}), ch: make(chan struct{}, 1)}
	fail := func(err error) (devmemapi.Listener, error) {
		for _, e := range l.eps {
			e.wq.EventUnregister(&e.we)
			e.ep.Close()
		}
		if s.ports != nil {
			s.ports.release(port)
		}
		return nil, err
	}
	for _, local := range want {
		e := &listenEP{}
		proto := ipv4.ProtocolNumber
		if local.Is6() {
			proto = ipv6.ProtocolNumber
		}
		ep, terr := s.ns.NewEndpoint(tcp.ProtocolNumber, proto, &e.wq)
		if terr != nil {
			return fail(fmt.Errorf("listen %v: %w", addr, tcpipErr(terr)))
		}
		e.ep = ep
		if local.Is6() {
			ep.SocketOptions().SetV6Only(true)
		}
		fa := tcpip.FullAddress{Port: l.port}
		if a.IsValid() && !a.IsUnspecified() {
			fa.Addr = tcpip.AddrFromSlice(local.AsSlice())
		}
		if terr := ep.Bind(fa); terr != nil {
			ep.Close()
			return fail(fmt.Errorf("listen %v: bind: %w", addr, tcpipErr(terr)))
		}
		if terr := ep.Listen(128); terr != nil {
			ep.Close()
			return fail(fmt.Errorf("listen %v: %w", addr, tcpipErr(terr)))
		}
		if la, terr := ep.GetLocalAddress(); terr == nil && s.ports == nil {
			l.port = la.Port // an ephemeral port is shared by the families
		}
		e.we = waiter.NewFunctionEntry(waiter.EventIn|waiter.EventHUp|waiter.EventErr, func(waiter.EventMask) {
			select {
			case l.ch <- struct{}{}:
			default:
			}
		})
		e.wq.EventRegister(&e.we)
		l.eps = append(l.eps, e)
	}
	l.addr = &net.TCPAddr{IP: want[0].AsSlice(), Port: int(l.port)}
	s.mu.Lock()
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	return l, nil
}

// Addr implements devmemapi.Listener.
func (l *Listener) Addr() net.Addr { return l.addr }

// Accept implements devmemapi.Listener.
func (l *Listener) Accept() (devmemapi.Conn, error) {
	for {
		for _, e := range l.eps {
			var ra tcpip.FullAddress
			ep, wq, terr := e.ep.Accept(&ra)
			if terr == nil {
				c, err := l.s.newConn(ep, wq, ra)
				if err != nil {
					ep.Close()
					continue
				}
				return c, nil
			}
			if _, ok := terr.(*tcpip.ErrWouldBlock); !ok {
				select {
				case <-l.closed:
					return nil, fmt.Errorf("accept: %w", devmemapi.ErrClosed)
				default:
				}
				return nil, fmt.Errorf("accept: %w", tcpipErr(terr))
			}
		}
		select {
		case <-l.ch:
		case <-l.closed:
			return nil, fmt.Errorf("accept: %w", devmemapi.ErrClosed)
		}
	}
}

// Close implements devmemapi.Listener.
func (l *Listener) Close() error {
	l.once.Do(func() {
		close(l.closed)
		l.SetNotify(nil)
		for _, e := range l.eps {
			e.wq.EventUnregister(&e.we)
			e.ep.Close()
		}
		l.s.flows.removeUnaccepted(l.port, l.s.region)
		if l.s.ports != nil {
			l.s.ports.release(l.port)
		}
		l.s.mu.Lock()
		delete(l.s.listeners, l)
		l.s.mu.Unlock()
	})
	return nil
}

// Conn is an accepted connection of the emulated stack. It implements
// devmemapi.Conn. RecvMsg calls are serialized; DontNeed may run
// concurrently with them from another goroutine.
type Conn struct {
	s     *Stack
	ep    tcpip.Endpoint
	wq    *waiter.Queue
	we    waiter.Entry
	ch    chan struct{}
	fl    *flow
	ts    *tokens.Socket
	laddr net.Addr
	raddr net.Addr
	port  uint16 // the local port, held in s.ports; 0 when not held

	rmu       sync.Mutex // serializes RecvMsg; guards cw and unpin
	cw        countWriter
	unpin     []uint32
	deadline  atomic.Int64 // read deadline, unix nanoseconds; 0 = none
	wdeadline atomic.Int64 // write deadline (Write, Send)

	weOut waiter.Entry
	chOut chan struct{} // writable, for Send

	notifyMu sync.Mutex
	notify   *waiter.Entry          // SetNotify's; guarded by notifyMu
	notifyFn atomic.Pointer[func()] // SetNotify's fn, for the TX view's completions

	// The sending side: plain bytes (Send), or, once a send needs send
	// numbers (SendMsg from a TX dmabuf, a MSG_ZEROCOPY send), through a
	// TXConn made over the same endpoint (txView).
	smu      sync.Mutex // serializes sends and the view's making
	sent     uint64     // bytes Send queued before the view
	zerocopy atomic.Bool
	inet6    atomic.Bool // an AF_INET6 socket (the completions' layout)
	txv      atomic.Pointer[TXConn]

	closed    chan struct{}
	closeOnce sync.Once
}

var _ devmemapi.Conn = (*Conn)(nil)

func (s *Stack) newConn(ep tcpip.Endpoint, wq *waiter.Queue, ra tcpip.FullAddress) (*Conn, error) {
	la, terr := ep.GetLocalAddress()
	if terr != nil {
		return nil, tcpipErr(terr)
	}
	rip, _ := netip.AddrFromSlice(ra.Addr.AsSlice())
	key := flowKey{raddr: rip.As16(), rport: ra.Port, lport: la.Port}
	fl := s.flows.attach(key)
	if fl == nil {
		s.cnt.flowsRefused.Add(1)
		return nil, fmt.Errorf("accept: no fragment queue for %v:%d: %w", ra.Addr, ra.Port, unix.ECONNABORTED)
	}
	mode := s.autorelease
	if b := s.bindingFor(s.steer.queueOf(fl)); b != nil {
		mode = b.tb.Autorelease()
	}
	c := &Conn{
		s: s, ep: ep, wq: wq, fl: fl,
		ts:     tokens.NewSocket(mode),
		laddr:  &net.TCPAddr{IP: la.Addr.AsSlice(), Port: int(la.Port)},
		raddr:  &net.TCPAddr{IP: ra.Addr.AsSlice(), Port: int(ra.Port)},
		unpin:  make([]uint32, 0, 64),
		closed: make(chan struct{}),
	}
	if s.ports != nil && s.ports.ref(la.Port) {
		c.port = la.Port
	}
	c.we, c.ch = waiter.NewChannelEntry(waiter.EventIn | waiter.EventHUp | waiter.EventErr)
	wq.EventRegister(&c.we)
	c.weOut, c.chOut = waiter.NewChannelEntry(waiter.EventOut | waiter.EventHUp | waiter.EventErr)
	wq.EventRegister(&c.weOut)
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	return c, nil
}

// LocalAddr implements devmemapi.Conn.
func (c *Conn) LocalAddr() net.Addr { return c.laddr }

// RemoteAddr implements devmemapi.Conn.
func (c *Conn) RemoteAddr() net.Addr { return c.raddr }

// SetReadDeadline implements devmemapi.Conn.
func (c *Conn) SetReadDeadline(t time.Time) error {
	return setDeadline(&c.deadline, t, c.ch)
}

// Queued reports how many received payload bytes wait in the connection's
// fragment queue (undelivered, including any not yet in order).
func (c *Conn) Queued() int {
	c.fl.mu.Lock()
	defer c.fl.mu.Unlock()
	n := 0
	for i := 0; ; i++ {
		f := c.fl.fq.at(i)
		if f == nil {
			return n
		}
		n += int(f.n)
	}
}

// TokensOutstanding is how many tokens the application holds on the
// connection (delivered, not yet returned).
func (c *Conn) TokensOutstanding() int { return c.ts.Outstanding() }

// SetAutorelease is the v6 SO_DEVMEM_AUTORELEASE socket option: it fails
// with EBUSY while the connection holds tokens.
func (c *Conn) SetAutorelease(on bool) error { return c.ts.SetAutorelease(on) }

// Autorelease is the SO_DEVMEM_AUTORELEASE getter.
func (c *Conn) Autorelease() bool { return c.ts.Autorelease() }

// DontNeed implements devmemapi.Conn (SO_DEVMEM_DONTNEED).
func (c *Conn) DontNeed(toks []devmemapi.DmabufToken) (int, error) {
	if c.isClosed() {
		return 0, fmt.Errorf("dontneed: %w", devmemapi.ErrClosed)
	}
	n, err := c.ts.DontNeed(toks)
	if err != nil {
		return n, fmt.Errorf("dontneed: %w", err)
	}
	return n, nil
}

// DontNeedOpt is DontNeed on a raw option value, with the kernel's optlen
// checks.
func (c *Conn) DontNeedOpt(optval []byte) (int, error) {
	if c.isClosed() {
		return 0, fmt.Errorf("dontneed: %w", devmemapi.ErrClosed)
	}
	n, err := c.ts.DontNeedOpt(optval)
	if err != nil {
		return n, fmt.Errorf("dontneed: %w", err)
	}
	return n, nil
}

// RecvMsg implements devmemapi.Conn; see that interface and package
// devmemapi for the semantics. It follows tcp_recvmsg_locked and
// tcp_recvmsg_dmabuf (Linux 6.18):
//
//   - Ordinary (readable) bytes and devmem data (dmabuf fragments, each with
//     SCM_DEVMEM_DMABUF, and the linear part of a segment that also has
//     fragments, copied into p with SCM_DEVMEM_LINEAR just before them)
//     never mix in one call. Devmem data without MSG_SOCK_DEVMEM is EFAULT;
//     a control buffer without room for the first control message is
//     ETOOSMALL; once it is full the call returns what it took.
//   - len(p) bounds the bytes taken, dmabuf bytes included (they count in
//     n but are not copied). A zero-length p takes nothing, but on devmem
//     data still reports the next piece with a zero-size control message
//     (a dmabuf fragment's carries a token that holds a reference), as the
//     kernel does.
//   - MSG_PEEK leaves the data queued; on devmem data it still hands out
//     tokens, each holding a reference until DONTNEED, as the kernel's
//     tcp_recvmsg_dmabuf does.
//   - MSG_TRUNC takes the bytes without copying them or reporting them:
//     no control messages, no tokens, no EFAULT, whatever their kind.
//   - MSG_WAITALL waits until len(p) bytes were taken, the stream ends or
//     the deadline passes, but still stops where the data changes between
//     ordinary and devmem or the control buffer is full.
//   - MSG_DONTWAIT returns EAGAIN instead of waiting when nothing is ready.
//
// An error with bytes already taken returns the bytes, as the kernel does.
func (c *Conn) RecvMsg(p, oob []byte, flags int) (n, oobn int, err error) {
	return c.recvMsg(p, oob, flags, false)
}

// ErrWouldCopy is RecvMsgNoCopy's answer when the bytes at the read point
// would be copied into p (ordinary data, or a linear part).
var ErrWouldCopy = errors.New("recvmsg: the next bytes are copied into the buffer")

// RecvMsgNoCopy is RecvMsg for a caller that has not checked p yet: it
// takes only dmabuf fragments, which leave p untouched, and stops before
// bytes that would be copied into p. When those are the first bytes at the
// read point it takes nothing and returns ErrWouldCopy; the caller then
// checks p and calls RecvMsg. libxdevmem probes an application's iovec
// only then, as the kernel's tcp_recvmsg_dmabuf touches the iovec only to
// copy.
func (c *Conn) RecvMsgNoCopy(p, oob []byte, flags int) (n, oobn int, err error) {
	return c.recvMsg(p, oob, flags, true)
}

func (c *Conn) recvMsg(p, oob []byte, flags int, noCopy bool) (n, oobn int, err error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.s.cnt.recvCalls.Add(1)
	r := recvCall{
		p: p, oob: oob,
		devmem:  flags&devmemapi.MSG_SOCK_DEVMEM != 0,
		peek:    flags&unix.MSG_PEEK != 0,
		trunc:   flags&unix.MSG_TRUNC != 0,
		class:   -1,
		slots:   len(oob) / devmemapi.CmsgSpaceDmabuf,
		wantAll: flags&unix.MSG_WAITALL != 0,
		noCopy:  noCopy && flags&unix.MSG_TRUNC == 0,
	}
	// sock_rcvlowat: the whole length with MSG_WAITALL, else one byte
	// (one byte even for a zero-length read, which therefore waits).
	target := 1
	if r.wantAll && len(p) > 0 {
		target = len(p)
	}
	for {
		select {
		case <-c.closed:
			if r.n > 0 {
				return r.n, r.oobn, nil
			}
			return 0, 0, fmt.Errorf("recvmsg: %w", devmemapi.ErrClosed)
		default:
		}
		res, err := c.step(&r)
		switch {
		case err != nil:
			if r.n > 0 {
				return r.n, r.oobn, nil
			}
			return 0, 0, err
		case res == stepMore:
			continue
		case res == stepStop, res == stepEOF:
			return r.n, r.oobn, nil
		}
		// Nothing at the read point (yet).
		if r.n >= target {
			return r.n, r.oobn, nil
		}
		if flags&unix.MSG_DONTWAIT != 0 {
			if r.n > 0 {
				return r.n, r.oobn, nil
			}
			return 0, 0, errRecvAgain
		}
		if err := c.wait(); err != nil {
			if r.n > 0 {
				return r.n, r.oobn, nil
			}
			return 0, 0, err
		}
	}
}

// The would-block errors of non-blocking calls, made once: a poll loop
// meets one on every call that finds nothing, which then allocates
// nothing.
var (
	errRecvAgain   = fmt.Errorf("recvmsg: %w", unix.EAGAIN)
	errReadAgain   = fmt.Errorf("read: %w", unix.EAGAIN)
	errSendAgain   = fmt.Errorf("send: %w", unix.EAGAIN)
	errAcceptAgain = fmt.Errorf("accept: %w", unix.EAGAIN)
	// errErrQueueAgain: no completion to read (MSG_ERRQUEUE).
	errErrQueueAgain = fmt.Errorf("recvmsg errqueue: %w", unix.EAGAIN)
)

// wait blocks for readability; RecvMsg's loop notices a close itself.
func (c *Conn) wait() error {
	if _, err := waitEvent(c.deadline.Load(), c.ch, c.closed); err != nil {
		return fmt.Errorf("recvmsg: %w", err)
	}
	return nil
}

// recvCall is one RecvMsg call's state (tcp_recvmsg_locked's locals).
type recvCall struct {
	p, oob              []byte
	devmem, peek, trunc bool
	wantAll             bool
	noCopy              bool   // RecvMsgNoCopy: take nothing that is copied into p
	n                   int    // bytes taken: copied, in the dmabuf, or discarded (MSG_TRUNC)
	pn                  int    // bytes copied into p
	oobn                int    // control bytes written
	slots               int    // control messages that still fit
	class               int8   // -1 before the first bytes, else classOf their kind
	peeked              uint64 // MSG_PEEK: stream bytes past the read point taken so far
}

// stepResult says how a step of RecvMsg ended.
type stepResult uint8

const (
	stepEmpty stepResult = iota // nothing at the read point yet
	stepMore                    // took bytes; more may follow at once
	stepStop                    // the call is complete (kind change, buffer or control full)
	stepEOF                     // end of stream
)

// Data classes: what one recvmsg never mixes (skb_frags_readable).
const (
	classReadable int8 = 0 // ordinary bytes, no control message
	classDevmem   int8 = 1 // dmabuf fragments and the linear parts before them
)

func classOf(k fragKind) int8 {
	if k == kindPlain {
		return classReadable
	}
	return classDevmem
}

// step takes one run of contiguous bytes at the read point (past what this
// call peeked): of one class (any class with MSG_TRUNC), bounded by what is
// left of p and, for devmem data, by the control messages that still fit.
func (c *Conn) step(r *recvCall) (stepResult, error) {
	s := c.s
	fl := c.fl
	fl.mu.Lock()
	defer fl.mu.Unlock()
	fq := &fl.fq

	start := fq.readOff + r.peeked
	i := fq.find(start)
	if i < 0 {
		// Nothing mapped at the read point: end of stream, an error, or
		// nothing yet. Anything readable here was never mapped: a bug.
		c.cw.reset(int64(r.peeked) + 1)
		res, terr := c.ep.Read(&c.cw, tcpip.ReadOptions{Peek: true})
		if terr == nil && uint64(res.Count) > r.peeked {
			s.cnt.unmapped.Add(uint64(res.Count) - r.peeked)
			return 0, fmt.Errorf("recvmsg: readable bytes at stream offset %d have no fragment: %w", start, unix.EIO)
		}
		return c.readErr(terr)
	}
	f := fq.at(i)
	cls := classOf(f.kind)
	if r.noCopy && f.kind != kindDmabuf {
		if r.n > 0 {
			return stepStop, nil
		}
		return 0, ErrWouldCopy
	}
	if !r.trunc {
		if r.class >= 0 && r.class != cls {
			return stepStop, nil
		}
		if cls == classDevmem {
			if !r.devmem {
				s.cnt.efault.Add(1)
				return 0, fmt.Errorf("recvmsg: dmabuf data without MSG_SOCK_DEVMEM: %w", devmemerr.RecvMsgNoDevmemFlag.Err())
			}
			if r.slots == 0 {
				s.cnt.etoosmall.Add(1)
				return 0, fmt.Errorf("recvmsg: control buffer of %d bytes has no room for a dmabuf_cmsg: %w", len(r.oob), devmemerr.RecvMsgCmsgSpace.Err())
			}
			if f.kind == kindDmabuf {
				if err := c.deliverable(f.bind); err != nil {
					return 0, err
				}
			}
		}
	}
	limit := uint64(len(r.p) - r.n)
	if limit == 0 {
		// A zero-length read: the kernel still reports the next devmem
		// piece with a zero-size control message.
		if !r.trunc && cls == classDevmem {
			if err := c.emit(r, f, start-f.off, 0); err != nil {
				return 0, err
			}
		}
		return stepStop, nil
	}

	// Plan: the run of contiguous bytes of the class from start.
	var want uint64
	slots := r.slots
	for j, cur := i, start; want < limit; j++ {
		g := fq.at(j)
		if g == nil || g.off > cur || (j > i && g.off != cur) {
			break
		}
		if (!r.trunc && classOf(g.kind) != cls) || (r.noCopy && g.kind != kindDmabuf) {
			break
		}
		if !r.trunc && cls == classDevmem {
			if slots == 0 || g.kind == kindDmabuf && c.ts.CanDeliver(g.bind.tb) != nil {
				break
			}
			slots--
		}
		want += g.end() - cur
		cur = g.end()
	}
	want = min(want, limit)

	// Take the bytes from gVisor (it holds placeholders: nothing is
	// copied).
	c.cw.reset(int64(r.peeked + want))
	res, terr := c.ep.Read(&c.cw, tcpip.ReadOptions{Peek: r.peek})
	if terr != nil {
		return c.readErr(terr)
	}
	got := uint64(res.Count)
	if r.peek {
		got -= min(got, r.peeked)
	}
	if got == 0 {
		return stepEmpty, nil
	}

	// Deliver them, fragment by fragment.
	var err error
	cur, j, left := start, i, got
	for left > 0 {
		g := fq.at(j)
		if g == nil || g.off > cur || cur >= g.end() {
			s.cnt.unmapped.Add(left)
			err = fmt.Errorf("recvmsg: %d bytes at stream offset %d have no fragment: %w", left, cur, unix.EIO)
			break
		}
		k := min(g.end()-cur, left)
		if !r.trunc {
			if err = c.emit(r, g, cur-g.off, k); err != nil {
				// Raced with a drain or close after planning: the bytes
				// are gone.
				break
			}
		}
		r.n += int(k)
		cur += k
		left -= k
		if r.peek {
			if cur == g.end() {
				j++
			}
			continue
		}
		frame := g.frame
		if fq.consume(uint32(k)) {
			c.unpin = append(c.unpin, frame)
		}
	}
	if r.peek {
		r.peeked += got - left
	}
	if len(c.unpin) > 0 {
		s.region.Unpin(c.unpin...)
		c.unpin = c.unpin[:0]
	}
	r.class = cls
	switch {
	case err != nil:
		return 0, err
	case r.n == len(r.p), !r.trunc && cls == classDevmem && r.slots == 0:
		return stepStop, nil
	}
	return stepMore, nil
}

// emit hands the application k bytes of g from off within it: a dmabuf
// fragment as a token and an SCM_DEVMEM_DMABUF message, a linear part copied
// into p with an SCM_DEVMEM_LINEAR message, ordinary bytes copied into p.
func (c *Conn) emit(r *recvCall, g *frag, off, k uint64) error {
	s := c.s
	addr := g.addr + off
	switch g.kind {
	case kindDmabuf:
		tok, err := c.ts.Deliver(g.bind.tb, g.frame)
		if err != nil {
			return c.deliverErr(g.bind, err)
		}
		cm := devmemapi.DmabufCmsg{FragOffset: addr, FragSize: uint32(k), FragToken: tok, DmabufID: g.bind.id}
		r.oobn, _ = devmemapi.PutDmabufCmsg(r.oob, r.oobn, devmemapi.SCM_DEVMEM_DMABUF, &cm)
		r.slots--
		s.cnt.frags.Add(1)
	case kindLinear:
		mem := s.region.Bytes()
		r.pn += copy(r.p[r.pn:], mem[addr:addr+k])
		cm := devmemapi.DmabufCmsg{FragSize: uint32(k)}
		r.oobn, _ = devmemapi.PutDmabufCmsg(r.oob, r.oobn, devmemapi.SCM_DEVMEM_LINEAR, &cm)
		r.slots--
		s.cnt.copied[kindLinear].Add(k)
	default:
		mem := s.region.Bytes()
		r.pn += copy(r.p[r.pn:], mem[addr:addr+k])
		s.cnt.copied[kindPlain].Add(k)
	}
	s.cnt.delivered[g.kind].Add(k)
	return nil
}

// deliverable checks that a fragment of binding b can be handed to this
// socket (tokens.Socket.CanDeliver, the series' v10 rules): in
// autorelease-off mode EFAULT for a binding other than the one the socket
// is tied to, ENODEV for a binding without users left (unbound, no socket
// tied) when the socket is not tied yet. A tied socket keeps its binding
// alive after unbind, and autorelease-on sockets always receive what was
// queued.
func (c *Conn) deliverable(b *rxBinding) error {
	return c.deliverErr(b, c.ts.CanDeliver(b.tb))
}

// deliverErr turns a refusal of the token layer into the table's recvmsg
// case, counted.
func (c *Conn) deliverErr(b *rxBinding, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.ENODEV):
		c.s.cnt.enodev.Add(1)
		return fmt.Errorf("recvmsg: dmabuf %d was unbound and has no socket tied to it: %w", b.id, devmemerr.RecvMsgUnbound.Err())
	case errors.Is(err, unix.EFAULT):
		c.s.cnt.efault.Add(1)
		id := uint32(0)
		if tb := c.ts.Binding(); tb != nil {
			id = tb.ID()
		}
		return fmt.Errorf("recvmsg: fragment of dmabuf %d on a socket tied to dmabuf %d: %w", b.id, id, devmemerr.RecvMsgOtherBinding.Err())
	}
	return fmt.Errorf("recvmsg: %w", err)
}

// readErr converts a gVisor read error into a step's result.
func (c *Conn) readErr(terr tcpip.Error) (stepResult, error) {
	switch terr.(type) {
	case nil, *tcpip.ErrWouldBlock:
		return stepEmpty, nil
	case *tcpip.ErrClosedForReceive:
		return stepEOF, nil
	}
	return 0, fmt.Errorf("recvmsg: %w", tcpipErr(terr))
}

// SetLinger is SO_LINGER (see linger.go): on with d 0, Close resets the
// connection; on with d > 0, Close waits up to d for the peer to
// acknowledge the data and the FIN.
func (c *Conn) SetLinger(on bool, d time.Duration) { setLinger(c.ep, on, d) }

// Close implements devmemapi.Conn: the connection closes, its fragment queue
// is dropped and, in autorelease-on mode, its outstanding tokens are freed.
// SetLinger changes when it returns.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		close(c.closed)
		c.wq.EventUnregister(&c.we)
		c.wq.EventUnregister(&c.weOut)
		c.SetNotify(nil)
		c.ep.Close()
		lingerWait(c.ep, &c.s.closing)
		if v := c.txv.Load(); v != nil {
			v.closeView(c.wq)
		}
		c.rmu.Lock()
		unpin := c.s.flows.remove(c.fl, nil)
		c.rmu.Unlock()
		if len(unpin) > 0 {
			c.s.region.Unpin(unpin...)
		}
		c.s.cnt.flowsClosed.Add(1)
		c.ts.Close()
		if c.port != 0 {
			if sendFinished(c.ep) {
				c.s.ports.release(c.port)
			} else {
				go c.releasePortWhenSent()
			}
		}
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.s.mu.Unlock()
	})
	return nil
}

// releasePortWhenSent gives a closed connection's port back once it can
// send no more (awaitOrphan): until then the port stays steered to the
// stack, so that the peer's ACKs reach it and not the kernel, which would
// answer them with a reset once the listener is gone too.
func (c *Conn) releasePortWhenSent() {
	awaitOrphan(c.ep, &c.s.closing)
	c.s.ports.release(c.port)
}

// countWriter is the io.Writer gVisor reads into: it counts bytes and
// copies nothing (the payload in gVisor is a placeholder; the real bytes
// are in the UMEM).
type countWriter struct{ left int64 }

func (w *countWriter) reset(n int64) { w.left = n }

// Write implements io.Writer.
func (w *countWriter) Write(b []byte) (int, error) {
	if int64(len(b)) > w.left {
		n := int(w.left)
		w.left = 0
		return n, io.ErrShortWrite
	}
	w.left -= int64(len(b))
	return len(b), nil
}

// tcpipErr converts a gVisor error into an errno where one fits.
func tcpipErr(e tcpip.Error) error {
	switch e.(type) {
	case *tcpip.ErrConnectionReset:
		return unix.ECONNRESET
	case *tcpip.ErrConnectionAborted:
		return unix.ECONNABORTED
	case *tcpip.ErrConnectionRefused:
		return unix.ECONNREFUSED
	case *tcpip.ErrTimeout:
		return unix.ETIMEDOUT
	case *tcpip.ErrNotConnected:
		return unix.ENOTCONN
	case *tcpip.ErrPortInUse:
		return unix.EADDRINUSE
	case *tcpip.ErrBadLocalAddress:
		return unix.EADDRNOTAVAIL
	case *tcpip.ErrClosedForReceive, *tcpip.ErrClosedForSend:
		return net.ErrClosed
	case *tcpip.ErrInvalidEndpointState:
		return unix.EINVAL
	case *tcpip.ErrWouldBlock:
		return unix.EAGAIN
	}
	return errors.New(e.String())
}

func (c *Conn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

// Read implements net.Conn: ordinary data, as a plain recv on a kernel
// devmem socket takes it; dmabuf data fails with EFAULT (read it with
// RecvMsg and MSG_SOCK_DEVMEM), and the end of the stream is io.EOF.
func (c *Conn) Read(p []byte) (int, error) {
	n, _, err := c.RecvMsg(p, nil, 0)
	if err == nil && n == 0 && len(p) > 0 {
		return 0, io.EOF
	}
	return n, err
}

// Write implements net.Conn: it sends plain bytes to the peer, waiting
// for room until the write deadline.
func (c *Conn) Write(p []byte) (int, error) { return c.Send(p, 0) }

// SetWriteDeadline implements net.Conn: it bounds Write and Send; expiry
// fails with os.ErrDeadlineExceeded.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	return setDeadline(&c.wdeadline, t, c.chOut)
}

// SetDeadline implements net.Conn: both deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

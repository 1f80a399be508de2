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

	rmu      sync.Mutex // serializes RecvMsg; guards cw and unpin
	cw       countWriter
	unpin    []uint32
	deadline atomic.Int64 // unix nanoseconds; 0 = none

	weOut waiter.Entry
	chOut chan struct{} // writable, for Send

	notifyMu sync.Mutex
	notify   *waiter.Entry // SetNotify's; guarded by notifyMu

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
	mode := false
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
	if t.IsZero() {
		c.deadline.Store(0)
	} else {
		c.deadline.Store(t.UnixNano())
	}
	// Wake a blocked RecvMsg so it sees the new deadline.
	select {
	case c.ch <- struct{}{}:
	default:
	}
	return nil
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

// Tokens exposes the connection's token state (for tests and statistics).
func (c *Conn) Tokens() *tokens.Socket { return c.ts }

// SetAutorelease is the v6 SO_DEVMEM_AUTORELEASE socket option: it fails
// with EBUSY while the connection holds tokens.
func (c *Conn) SetAutorelease(on bool) error { return c.ts.SetAutorelease(on) }

// Autorelease is the SO_DEVMEM_AUTORELEASE getter.
func (c *Conn) Autorelease() bool { return c.ts.Autorelease() }

// DontNeed implements devmemapi.Conn (SO_DEVMEM_DONTNEED).
func (c *Conn) DontNeed(toks []devmemapi.DmabufToken) (int, error) {
	n, err := c.ts.DontNeed(toks)
	if err != nil {
		return n, fmt.Errorf("dontneed: %w", err)
	}
	return n, nil
}

// DontNeedOpt is DontNeed on a raw option value, with the kernel's optlen
// checks.
func (c *Conn) DontNeedOpt(optval []byte) (int, error) {
	n, err := c.ts.DontNeedOpt(optval)
	if err != nil {
		return n, fmt.Errorf("dontneed: %w", err)
	}
	return n, nil
}

// RecvMsg implements devmemapi.Conn; see that interface and package
// devmemapi for the semantics. Besides MSG_SOCK_DEVMEM it honours
// MSG_DONTWAIT.
func (c *Conn) RecvMsg(p, oob []byte, flags int) (n, oobn int, err error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.s.cnt.recvCalls.Add(1)
	devmem := flags&devmemapi.MSG_SOCK_DEVMEM != 0
	for {
		select {
		case <-c.closed:
			return 0, 0, fmt.Errorf("recvmsg: %w", devmemapi.ErrClosed)
		default:
		}
		n, oobn, err, again := c.tryRecv(p, oob, devmem)
		if !again {
			return n, oobn, err
		}
		if flags&unix.MSG_DONTWAIT != 0 {
			return 0, 0, fmt.Errorf("recvmsg: %w", unix.EAGAIN)
		}
		if err := c.wait(); err != nil {
			return 0, 0, err
		}
	}
}

// wait blocks for readability; RecvMsg's loop notices a close itself.
func (c *Conn) wait() error {
	if _, err := waitEvent(c.deadline.Load(), c.ch, c.closed); err != nil {
		return fmt.Errorf("recvmsg: %w", err)
	}
	return nil
}

// tryRecv does one non-blocking receive; again reports that nothing was
// ready.
func (c *Conn) tryRecv(p, oob []byte, devmem bool) (n, oobn int, err error, again bool) {
	s := c.s
	fl := c.fl
	fl.mu.Lock()
	defer fl.mu.Unlock()
	fq := &fl.fq

	f := fq.front()
	if f == nil {
		// Nothing mapped at the read point: end of stream, an error, or
		// nothing yet. Anything readable here was never mapped: a bug.
		c.cw.reset(1)
		res, terr := c.ep.Read(&c.cw, tcpip.ReadOptions{Peek: true})
		if terr == nil && res.Count > 0 {
			s.cnt.unmapped.Add(uint64(res.Count))
			return 0, 0, fmt.Errorf("recvmsg: %d readable bytes at stream offset %d have no fragment: %w", res.Count, fq.readOff, unix.EIO), false
		}
		return c.readErr(terr)
	}
	kind := f.kind
	if kind == kindDmabuf {
		if !devmem {
			s.cnt.efault.Add(1)
			return 0, 0, fmt.Errorf("recvmsg: dmabuf data without MSG_SOCK_DEVMEM: %w", devmemerr.RecvMsgNoDevmemFlag.Err()), false
		}
		if err := c.deliverable(f.bind); err != nil {
			return 0, 0, err, false
		}
	}
	slots := len(oob) / devmemapi.CmsgSpaceDmabuf
	if devmem && kind != kindPlain && slots == 0 {
		s.cnt.etoosmall.Add(1)
		return 0, 0, fmt.Errorf("recvmsg: control buffer of %d bytes holds no dmabuf_cmsg: %w", len(oob), devmemerr.RecvMsgCmsgSpace.Err()), false
	}
	if len(p) == 0 {
		return 0, 0, nil, false
	}

	// Plan: the run of same-kind, contiguous bytes from the read point that
	// fits p and the control buffer.
	limit := uint64(len(p))
	var want uint64
	nfr := 0
	for i := 0; want < limit; i++ {
		g := fq.at(i)
		if g == nil || g.off != fq.readOff+want || g.kind != kind {
			break
		}
		if kind == kindDmabuf {
			if nfr == slots || c.deliverable(g.bind) != nil {
				break
			}
			nfr++
		}
		want += uint64(g.n)
	}
	want = min(want, limit)

	c.cw.reset(int64(want))
	res, terr := c.ep.Read(&c.cw, tcpip.ReadOptions{})
	if terr != nil {
		return c.readErr(terr)
	}
	got := uint64(res.Count)
	total := got
	pn := 0
	mem := s.region.Bytes()
	for got > 0 {
		g := fq.front()
		if g == nil {
			s.cnt.unmapped.Add(got)
			err = fmt.Errorf("recvmsg: %d bytes at stream offset %d have no fragment: %w", got, fq.readOff, unix.EIO)
			total -= got
			break
		}
		k := uint32(min(uint64(g.n), got))
		if kind == kindDmabuf {
			tok, derr := c.ts.Deliver(g.bind.tb, g.frame)
			if derr != nil {
				// Raced with an unbind after planning: the bytes are gone.
				err = fmt.Errorf("recvmsg: %w", derr)
				total -= got
				break
			}
			cm := devmemapi.DmabufCmsg{FragOffset: g.addr, FragSize: k, FragToken: tok, DmabufID: g.bind.id}
			oobn, _ = devmemapi.PutDmabufCmsg(oob, oobn, devmemapi.SCM_DEVMEM_DMABUF, &cm)
			s.cnt.frags.Add(1)
		} else {
			pn += copy(p[pn:], mem[g.addr:g.addr+uint64(k)])
			s.cnt.copied[kind].Add(uint64(k))
		}
		frame := g.frame
		if fq.consume(k) {
			c.unpin = append(c.unpin, frame)
		}
		got -= uint64(k)
	}
	if kind == kindLinear && devmem && pn > 0 {
		cm := devmemapi.DmabufCmsg{FragSize: uint32(pn)}
		oobn, _ = devmemapi.PutDmabufCmsg(oob, oobn, devmemapi.SCM_DEVMEM_LINEAR, &cm)
	}
	s.cnt.delivered[kind].Add(total)
	if len(c.unpin) > 0 {
		s.region.Unpin(c.unpin...)
		c.unpin = c.unpin[:0]
	}
	if total > 0 {
		err = nil // report what was delivered, as the kernel does
	}
	return int(total), oobn, err, false
}

// deliverable checks that a fragment of binding b can be handed to this
// socket: ENODEV once b is unbound, EFAULT for a binding other than the one
// an autorelease-off socket is tied to.
func (c *Conn) deliverable(b *rxBinding) error {
	if b.closed.Load() || b.tb.Unbound() {
		c.s.cnt.enodev.Add(1)
		return fmt.Errorf("recvmsg: dmabuf %d was unbound: %w", b.id, devmemerr.RecvMsgUnbound.Err())
	}
	if tb := c.ts.Binding(); tb != nil && tb != b.tb {
		c.s.cnt.efault.Add(1)
		return fmt.Errorf("recvmsg: fragment of dmabuf %d on a socket tied to dmabuf %d: %w", b.id, tb.ID(), devmemerr.RecvMsgOtherBinding.Err())
	}
	return nil
}

// readErr converts a gVisor read error into RecvMsg's results.
func (c *Conn) readErr(terr tcpip.Error) (int, int, error, bool) {
	switch terr.(type) {
	case nil, *tcpip.ErrWouldBlock:
		return 0, 0, nil, true
	case *tcpip.ErrClosedForReceive:
		return 0, 0, nil, false // end of stream
	}
	return 0, 0, fmt.Errorf("recvmsg: %w", tcpipErr(terr)), false
}

// Close implements devmemapi.Conn: the connection closes, its fragment queue
// is dropped and, in autorelease-on mode, its outstanding tokens are freed.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		close(c.closed)
		c.wq.EventUnregister(&c.we)
		c.wq.EventUnregister(&c.weOut)
		c.SetNotify(nil)
		c.ep.Close()
		c.rmu.Lock()
		unpin := c.s.flows.remove(c.fl, nil)
		c.rmu.Unlock()
		if len(unpin) > 0 {
			c.s.region.Unpin(unpin...)
		}
		c.s.cnt.flowsClosed.Add(1)
		c.ts.Close()
		if c.port != 0 {
			c.s.ports.release(c.port)
		}
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.s.mu.Unlock()
	})
	return nil
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

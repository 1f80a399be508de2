package stack

import (
	"bytes"
	"fmt"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/xdevmem/xdevmem/devmemapi"
)

// What a C program's poll, select and epoll see of the stack's sockets
// (libxdevmem emulates them with these): each socket reports its readiness
// as poll(2) bits and calls a function when the readiness may have changed.
// Non-blocking variants of the blocking calls complete the picture.

// Readiness bits, as poll(2) has them (and gVisor's waiter.EventMask).
const (
	PollIn    = uint32(unix.POLLIN)
	PollOut   = uint32(unix.POLLOUT)
	PollErr   = uint32(unix.POLLERR)
	PollHUp   = uint32(unix.POLLHUP)
	PollRdHUp = uint32(unix.POLLRDHUP)
)

// pollMask keeps the bits poll callers see.
func pollMask(m waiter.EventMask) uint32 {
	return uint32(m) & (PollIn | PollOut | PollErr | PollHUp | PollRdHUp)
}

// notifyEntry registers fn on wq for every event; it returns the entry to
// unregister. fn runs on the stack's goroutines, with gVisor's locks held:
// it must not block or call the socket.
func notifyEntry(wq *waiter.Queue, fn func()) *waiter.Entry {
	e := waiter.NewFunctionEntry(waiter.AllEvents, func(waiter.EventMask) { fn() })
	wq.EventRegister(&e)
	return &e
}

// Readiness reports the listener's poll bits: PollIn while a connection
// waits to be accepted.
func (l *Listener) Readiness() uint32 {
	var m uint32
	for _, e := range l.eps {
		m |= pollMask(e.ep.Readiness(waiter.ReadableEvents))
	}
	select {
	case <-l.closed:
		m |= PollHUp
	default:
	}
	return m
}

// SetNotify makes fn run whenever a connection arrives (nil stops it). fn
// must not block or call the listener.
func (l *Listener) SetNotify(fn func()) {
	l.notifyMu.Lock()
	defer l.notifyMu.Unlock()
	for i, e := range l.notify {
		l.eps[i].wq.EventUnregister(e)
	}
	l.notify = nil
	if fn == nil {
		return
	}
	for _, e := range l.eps {
		l.notify = append(l.notify, notifyEntry(&e.wq, fn))
	}
}

// TryAccept is Accept without waiting: EAGAIN when no connection is
// pending.
func (l *Listener) TryAccept() (devmemapi.Conn, error) {
	select {
	case <-l.closed:
		return nil, fmt.Errorf("accept: %w", devmemapi.ErrClosed)
	default:
	}
	for _, e := range l.eps {
		var ra tcpip.FullAddress
		ep, wq, terr := e.ep.Accept(&ra)
		if terr == nil {
			c, err := l.s.newConn(ep, wq, ra)
			if err != nil {
				ep.Close()
				return nil, err
			}
			return c, nil
		}
		if _, ok := terr.(*tcpip.ErrWouldBlock); !ok {
			return nil, fmt.Errorf("accept: %w", tcpipErr(terr))
		}
	}
	return nil, errAcceptAgain
}

// Readiness reports the connection's poll bits: PollIn when a receive
// would not block (data, end of stream or an error), PollOut when a send
// would not, PollRdHUp once the peer has closed its side, PollHUp when
// both sides are closed, PollErr on a pending error.
func (c *Conn) Readiness() uint32 {
	m := pollMask(c.ep.Readiness(waiter.AllEvents))
	if v := c.txv.Load(); v != nil && v.errqLen() > 0 {
		m |= PollErr // zerocopy completions wait in the error queue
	}
	return m
}

// SetNotify makes fn run whenever the connection's readiness may have
// changed (nil stops it). fn must not block or call the connection.
func (c *Conn) SetNotify(fn func()) {
	c.notifyMu.Lock()
	defer c.notifyMu.Unlock()
	if c.notify != nil {
		c.wq.EventUnregister(c.notify)
		c.notify = nil
	}
	if fn != nil {
		c.notify = notifyEntry(c.wq, fn)
		c.notifyFn.Store(&fn)
	} else {
		c.notifyFn.Store(nil)
	}
}

// Send writes ordinary bytes to the peer (send(2) on a devmem socket's
// sending side, which is plain TCP). It blocks until all of p is queued,
// unless flags has MSG_DONTWAIT: then it queues what fits, or fails
// EAGAIN. A shut-down sending side is EPIPE.
//
// Once the connection sends with send numbers (SendMsg, or Send with
// MSG_ZEROCOPY on an SO_ZEROCOPY connection), its sends go through its TX
// view (TXView), in call order with the rest.
func (c *Conn) Send(p []byte, flags int) (int, error) {
	c.smu.Lock()
	defer c.smu.Unlock()
	v := c.txv.Load()
	if v == nil && flags&devmemapi.MSG_ZEROCOPY != 0 && c.zerocopy.Load() && len(p) > 0 {
		var err error
		if v, err = c.viewLocked(flags); err != nil {
			return 0, fmt.Errorf("send: %w", err)
		}
	}
	if v != nil {
		return v.Send(p, flags)
	}
	n, err := c.sendPlain(p, flags)
	c.sent += uint64(n)
	return n, err
}

func (c *Conn) sendPlain(p []byte, flags int) (int, error) {
	total := 0
	for total < len(p) {
		n, terr := c.ep.Write(bytes.NewReader(p[total:]), tcpip.WriteOptions{})
		total += int(n)
		switch terr.(type) {
		case nil:
			continue
		case *tcpip.ErrWouldBlock:
		case *tcpip.ErrClosedForSend:
			if total > 0 {
				return total, nil
			}
			return 0, fmt.Errorf("send: %w", unix.EPIPE)
		default:
			if total > 0 {
				return total, nil
			}
			return 0, fmt.Errorf("send: %w", tcpipErr(terr))
		}
		if flags&unix.MSG_DONTWAIT != 0 {
			if total > 0 {
				return total, nil
			}
			return 0, errSendAgain
		}
		isClosed, err := waitEvent(c.wdeadline.Load(), c.chOut, c.closed)
		switch {
		case isClosed:
			return total, fmt.Errorf("send: %w", devmemapi.ErrClosed)
		case err != nil:
			return total, fmt.Errorf("send: %w", err)
		}
	}
	return total, nil
}

// Shutdown shuts down the receiving side (unix.SHUT_RD: later receives
// return end of stream), the sending side (SHUT_WR: FIN after the queued
// data) or both.
func (c *Conn) Shutdown(how int) error {
	var f tcpip.ShutdownFlags
	switch how {
	case unix.SHUT_RD:
		f = tcpip.ShutdownRead
	case unix.SHUT_WR:
		f = tcpip.ShutdownWrite
	case unix.SHUT_RDWR:
		f = tcpip.ShutdownRead | tcpip.ShutdownWrite
	default:
		return fmt.Errorf("shutdown %d: %w", how, unix.EINVAL)
	}
	if terr := c.ep.Shutdown(f); terr != nil {
		return fmt.Errorf("shutdown: %w", tcpipErr(terr))
	}
	return nil
}

// Readiness reports the connection's poll bits as Conn.Readiness does,
// with PollErr also while zerocopy completions wait in the error queue
// (as tcp_poll reports a non-empty sk_error_queue).
func (c *TXConn) Readiness() uint32 {
	m := pollMask(c.ep.Readiness(waiter.AllEvents))
	c.mu.Lock()
	if len(c.errq) > 0 {
		m |= PollErr
	}
	c.mu.Unlock()
	return m
}

// SetNotify makes fn run whenever the connection's readiness may have
// changed, completions included (nil stops it). fn must not block or call
// the connection.
func (c *TXConn) SetNotify(fn func()) {
	c.notifyMu.Lock()
	defer c.notifyMu.Unlock()
	if c.notifyEntry != nil {
		c.wq.EventUnregister(c.notifyEntry)
		c.notifyEntry = nil
	}
	if fn != nil {
		c.notifyEntry = notifyEntry(&c.wq, fn)
		c.notifyFn.Store(&fn)
	} else {
		c.notifyFn.Store(nil)
	}
}

// ReadFlags is Read with recv(2)'s flags, as tcp_recvmsg_locked treats
// them on ordinary data: MSG_DONTWAIT fails EAGAIN instead of waiting,
// MSG_PEEK leaves the bytes queued, MSG_TRUNC takes them without copying
// (p only gives the length), MSG_WAITALL waits until len(p) bytes came or
// the stream ended (with MSG_PEEK it returns what is there). At end of
// stream it returns 0 and no error; an error after bytes returns the bytes.
func (c *TXConn) ReadFlags(p []byte, flags int) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	peek := flags&unix.MSG_PEEK != 0
	all := flags&unix.MSG_WAITALL != 0 && !peek
	total := 0
	for {
		var res tcpip.ReadResult
		var terr tcpip.Error
		if flags&unix.MSG_TRUNC != 0 {
			w := countWriter{left: int64(len(p) - total)}
			res, terr = c.ep.Read(&w, tcpip.ReadOptions{Peek: peek})
		} else {
			w := tcpip.SliceWriter(p[total:])
			res, terr = c.ep.Read(&w, tcpip.ReadOptions{Peek: peek})
		}
		switch terr.(type) {
		case nil:
			total += res.Count
			if !all || total == len(p) {
				return total, nil
			}
			continue
		case *tcpip.ErrClosedForReceive:
			return total, nil
		case *tcpip.ErrWouldBlock:
			if flags&unix.MSG_DONTWAIT != 0 {
				if total > 0 {
					return total, nil
				}
				return 0, errReadAgain
			}
		default:
			if total > 0 {
				return total, nil
			}
			return 0, fmt.Errorf("read: %w", tcpipErr(terr))
		}
		isClosed, err := waitEvent(c.rdeadline.Load(), c.chIn, c.closed)
		switch {
		case isClosed:
			if total > 0 {
				return total, nil
			}
			return 0, fmt.Errorf("read: %w", devmemapi.ErrClosed)
		case err != nil:
			if total > 0 {
				return total, nil
			}
			return 0, fmt.Errorf("read: %w", err)
		}
	}
}

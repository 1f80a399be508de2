package stack

import (
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/xdevmem/xdevmem/devmemapi"
)

// Devmem sends on an accepted connection. The kernel lets any TCP socket
// send from a TX binding (sendmsg with SCM_DEVMEM_DMABUF and MSG_ZEROCOPY
// on an SO_ZEROCOPY socket); here the accepted connection's sending side
// becomes a TXConn over the same gVisor endpoint, its "view", made at the
// first send that needs send numbers. The view maps the stream from our
// initial sequence number, which the RX loop took from the handshake's ACK
// (flow.noteAckLocked); the bytes Send queued before it are plain bytes of
// the stream, so their retransmissions still go out.

// SendMsg sends from a TX dmabuf as TXConn.SendMsg does (the same checks,
// errors and completions), on the accepted connection.
func (c *Conn) SendMsg(iov []devmemapi.Iovec, oob []byte, flags int) (int, error) {
	c.smu.Lock()
	defer c.smu.Unlock()
	v, err := c.viewLocked(flags)
	if err != nil {
		return 0, fmt.Errorf("sendmsg: %w", err)
	}
	return v.SendMsg(iov, oob, flags)
}

var _ devmemapi.Sender = (*Conn)(nil)

// SetZeroCopy implements devmemapi.Sender: SO_ZEROCOPY, which MSG_ZEROCOPY
// sends need (off to begin with, as on a kernel socket).
func (c *Conn) SetZeroCopy(on bool) error {
	c.zerocopy.Store(on)
	if v := c.txv.Load(); v != nil {
		return v.SetZeroCopy(on)
	}
	return nil
}

// RecvErrQueue implements devmemapi.Sender: the TX view's completions;
// EAGAIN before any send made the view.
func (c *Conn) RecvErrQueue(oob []byte, flags int) (oobn, recvflags int, err error) {
	if v := c.txv.Load(); v != nil {
		return v.RecvErrQueue(oob, flags)
	}
	return 0, 0, errErrQueueAgain
}

// PollErrQueue implements devmemapi.Sender; before any send made the view
// there is nothing to wait for.
func (c *Conn) PollErrQueue(timeout time.Duration) (bool, error) {
	if v := c.txv.Load(); v != nil {
		return v.PollErrQueue(timeout)
	}
	return false, nil
}

// SetInet6 says the connection stands for an AF_INET6 socket (an IPv4 peer
// then shows v4-mapped): its completions come as ipv6_recv_error writes
// them. An IPv6 peer implies it.
func (c *Conn) SetInet6(on bool) { c.inet6.Store(on) }

// TXView returns the connection's TX view once a send made it, else nil:
// its RecvErrQueue and PollErrQueue serve the connection's completions.
func (c *Conn) TXView() *TXConn { return c.txv.Load() }

// viewLocked returns the TX view, making it if need be. c.smu must be held.
func (c *Conn) viewLocked(flags int) (*TXConn, error) {
	if v := c.txv.Load(); v != nil {
		return v, nil
	}
	select {
	case <-c.closed:
		return nil, devmemapi.ErrClosed
	default:
	}
	if c.fl.ackState.Load() != ackSeen || c.sent >= 1<<31 {
		// No handshake ACK was seen for the connection, or the bytes
		// before the view are too many for 32-bit sequence arithmetic.
		return nil, fmt.Errorf("devmem sends on this accepted connection: %w", unix.EOPNOTSUPP)
	}
	t, err := c.s.engine()
	if err != nil {
		return nil, err
	}
	la, ra := c.laddr.(*net.TCPAddr).AddrPort(), c.raddr.(*net.TCPAddr).AddrPort()
	v := &TXConn{s: c.s, eng: t, ep: c.ep, closed: make(chan struct{}), errCh: make(chan struct{}, 1),
		laddr: c.laddr, raddr: c.raddr, inet6: c.inet6.Load() || !ra.Addr().Unmap().Is4(),
		view: true, iss: c.fl.ourNext.Load() - 1, issKnown: true}
	if c.sent > 0 { // the bytes before the view: plain, maybe not all acknowledged
		v.recordPlainLocked(0, c.sent)
		v.sndMax = c.sent
	}
	v.key = txKey{raddr: ra.Addr().Unmap().As16(), rport: ra.Port(), lport: la.Port()}
	v.zerocopy.Store(c.zerocopy.Load())
	v.weOut, v.chOut = waiter.NewChannelEntry(waiter.WritableEvents | waiter.EventErr | waiter.EventHUp)
	c.wq.EventRegister(&v.weOut)
	fn := func() {
		if f := c.notifyFn.Load(); f != nil {
			(*f)()
		}
	}
	v.notifyFn.Store(&fn)
	if err := t.register(v); err != nil {
		c.wq.EventUnregister(&v.weOut)
		return nil, err
	}
	c.txv.Store(v)
	return v, nil
}

// closeView ends a view with its connection (whose endpoint is closed):
// blocked sends return, and the view stays mapped while gVisor may still
// send its data (linger).
func (c *TXConn) closeView(wq *waiter.Queue) {
	c.closeOnce.Do(func() {
		close(c.closed)
		wq.EventUnregister(&c.weOut)
		go c.linger()
	})
}

// errqLen is the number of notifications waiting in the error queue.
func (c *TXConn) errqLen() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.errq)
}

package compat

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat/netdev"
	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
)

// The kernel backend's devmem TX: NETDEV_CMD_BIND_TX over netlink, sendmsg
// with SCM_DEVMEM_DMABUF and MSG_ZEROCOPY on a kernel TCP socket, and the
// zerocopy completions read from MSG_ERRQUEUE. The kernel makes every
// check; its errors come back as *devmemerr.Error (ops bind-tx and
// sendmsg) with the kernel's errno, so the same program sends on either
// backend and sees the same errors.

var _ devmemapi.TXProvider = (*KernelProvider)(nil)

// BindTX binds a dmabuf for devmem TX with NETDEV_CMD_BIND_TX over a
// netlink connection of its own, which the binding keeps: closing the
// binding closes it and the kernel unbinds. The dmabuf is cfg.DmabufFD
// (duplicated) when positive, else a new udmabuf of cfg.Size bytes
// (DefaultDmabufSize when 0), mapped for writing. bind-tx needs no admin
// capability. A driver without netmem TX (veth, lo) fails with EOPNOTSUPP
// "Driver does not support netmem TX" (devmemerr.BindTXNoNetmemTX).
func (p *KernelProvider) BindTX(cfg devmemapi.BindTXConfig) (devmemapi.TXBinding, error) {
	ifindex, name, d, err := p.bindDmabuf("bind tx", cfg.Ifindex, cfg.DmabufFD, cfg.Size)
	if err != nil {
		return nil, err
	}
	d.writable = true
	c, err := p.env.netdev()
	if err != nil {
		d.close()
		return nil, fmt.Errorf("bind tx %s: %w", name, err)
	}
	id, err := c.BindTX(ifindex, d.fd)
	if err != nil {
		c.Close()
		d.close()
		return nil, fmt.Errorf("bind tx %s: %w", name, err)
	}
	b := &kernelTXBinding{p: p, c: c, id: id, d: d}
	if err := p.track(b); err != nil {
		b.close()
		return nil, fmt.Errorf("bind tx: %w", err)
	}
	return b, nil
}

// kernelTXBinding is a bind-tx binding: its netlink connection and dmabuf.
type kernelTXBinding struct {
	p  *KernelProvider
	c  *netdev.Conn
	id uint32
	d  *dmabuf

	once sync.Once
	err  error
}

var _ devmemapi.TXBinding = (*kernelTXBinding)(nil)

func (b *kernelTXBinding) ID() uint32   { return b.id }
func (b *kernelTXBinding) Size() uint64 { return b.d.size }

func (b *kernelTXBinding) WriteAt(p []byte, off int64) (int, error) { return b.d.WriteAt(p, off) }
func (b *kernelTXBinding) ReadAt(p []byte, off int64) (int, error)  { return b.d.ReadAt(p, off) }

// Close closes the netlink connection (the kernel unbinds; sends already
// queued still go out) and the dmabuf.
func (b *kernelTXBinding) Close() error {
	b.p.untrack(b)
	b.once.Do(func() { b.err = b.close() })
	return b.err
}

func (b *kernelTXBinding) close() error {
	err := b.c.Close()
	if derr := b.d.close(); err == nil {
		err = derr
	}
	if err != nil {
		return fmt.Errorf("unbind tx dmabuf %d: %w", b.id, err)
	}
	return nil
}

// Dial opens a kernel TCP connection to addr, in the calling thread's
// network namespace, that can send from a TX dmabuf.
func (p *KernelProvider) Dial(ctx context.Context, addr netip.AddrPort) (devmemapi.TXConn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return nil, fmt.Errorf("dial %v: %w", addr, err)
	}
	c, err := NewKernelTXConn(nc.(*net.TCPConn))
	if err != nil {
		nc.Close()
		return nil, err
	}
	if err := p.track(c); err != nil {
		c.Close()
		return nil, fmt.Errorf("dial: %w", err)
	}
	c.onClose = func() { p.untrack(c) }
	return c, nil
}

// KernelTXConn is a devmemapi.TXConn over a kernel TCP socket: SendMsg is
// sendmsg(2) with the iovecs' bases as dmabuf offsets and the caller's
// control messages and flags, RecvErrQueue is recvmsg(MSG_ERRQUEUE),
// PollErrQueue is poll(2) for POLLERR. Sends wait for room through Go's
// poller (the write deadline and Close interrupt them). SendMsg calls are
// serialized with each other; the error-queue calls may run beside them.
type KernelTXConn struct {
	c  *net.TCPConn
	rc syscall.RawConn

	smu    sync.Mutex // guards the send arguments and results
	siov   []rawIovec
	soob   []byte
	sflags int
	sn     int
	serr   unix.Errno
	sendFn func(fd uintptr) bool

	closed  atomic.Bool
	onClose func()
}

var _ devmemapi.TXConn = (*KernelTXConn)(nil)

// NewKernelTXConn wraps a connected kernel TCP socket; the KernelTXConn
// owns c.
func NewKernelTXConn(c *net.TCPConn) (*KernelTXConn, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("kernel tx conn: %w", err)
	}
	k := &KernelTXConn{c: c, rc: rc, siov: make([]rawIovec, 0, 64)}
	k.sendFn = k.send
	return k, nil
}

// SetZeroCopy is setsockopt(SO_ZEROCOPY).
func (k *KernelTXConn) SetZeroCopy(on bool) error {
	v := 0
	if on {
		v = 1
	}
	var serr error
	if err := k.rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ZEROCOPY, v)
	}); err != nil {
		return fmt.Errorf("set SO_ZEROCOPY: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("set SO_ZEROCOPY: %w", serr)
	}
	return nil
}

// SendMsg is sendmsg(2): iov holds dmabuf offsets and lengths, oob the
// control messages (SCM_DEVMEM_DMABUF), flags the send flags (MSG_ZEROCOPY).
// The kernel checks everything; its refusals come back as *devmemerr.Error
// (op sendmsg) with its errno: EMSGSIZE for more than 1024 iovecs, EINVAL
// for a bad control message, an unknown binding or a missing
// MSG_ZEROCOPY/SO_ZEROCOPY, ENODEV for a binding of another device, EFAULT
// outside the dmabuf. It waits for room unless flags hold MSG_DONTWAIT.
func (k *KernelTXConn) SendMsg(iov []devmemapi.Iovec, oob []byte, flags int) (int, error) {
	k.smu.Lock()
	defer k.smu.Unlock()
	k.siov = k.siov[:0]
	for _, v := range iov {
		k.siov = append(k.siov, rawIovec{base: v.Base, len: v.Len})
	}
	k.soob, k.sflags = oob, flags
	err := k.rc.Write(k.sendFn)
	n, errno := k.sn, k.serr
	k.soob, k.serr = nil, 0
	if err != nil {
		return 0, fmt.Errorf("sendmsg: %w", err)
	}
	if errno != 0 {
		return 0, &devmemerr.Error{Op: devmemerr.OpSendMsg, Errno: errno}
	}
	return n, nil
}

// send runs on the poller; it reports false to wait for writability.
func (k *KernelTXConn) send(fd uintptr) bool {
	for {
		n, errno := sendmsgDevmem(int(fd), k.siov, k.soob, k.sflags)
		switch {
		case errno == unix.EINTR:
			continue
		case errno == unix.EAGAIN && k.sflags&unix.MSG_DONTWAIT == 0:
			return false
		}
		k.sn, k.serr = n, errno
		return true
	}
}

// RecvErrQueue is recvmsg(MSG_ERRQUEUE): one notification into oob (an
// IP_RECVERR or IPV6_RECVERR message). It never waits: an empty queue is
// EAGAIN, as the kernel answers.
func (k *KernelTXConn) RecvErrQueue(oob []byte, flags int) (oobn, recvflags int, err error) {
	var errno unix.Errno
	if cerr := k.rc.Control(func(fd uintptr) {
		for {
			oobn, recvflags, errno = recvmsgErrqueue(int(fd), oob, flags)
			if errno != unix.EINTR {
				return
			}
		}
	}); cerr != nil {
		return 0, 0, fmt.Errorf("recvmsg errqueue: %w", cerr)
	}
	if errno != 0 {
		return 0, 0, fmt.Errorf("recvmsg errqueue: %w", errno)
	}
	return oobn, recvflags, nil
}

// pollSlice bounds one poll(2) in PollErrQueue, so that Close is noticed.
const pollSlice = 100 * time.Millisecond

// PollErrQueue waits up to timeout (negative: no limit) for the error
// queue to hold a notification (poll(2) reporting POLLERR).
func (k *KernelTXConn) PollErrQueue(timeout time.Duration) (bool, error) {
	var end time.Time
	if timeout >= 0 {
		end = time.Now().Add(timeout)
	}
	for {
		if k.closed.Load() {
			return false, fmt.Errorf("poll errqueue: %w", devmemapi.ErrClosed)
		}
		wait := pollSlice
		if !end.IsZero() {
			wait = min(wait, time.Until(end))
		}
		var ready bool
		var perr error
		if err := k.rc.Control(func(fd uintptr) {
			fds := []unix.PollFd{{Fd: int32(fd)}} // POLLERR is always reported
			n, err := unix.Poll(fds, int(max(wait, 0)/time.Millisecond))
			switch {
			case errors.Is(err, unix.EINTR):
			case err != nil:
				perr = err
			default:
				ready = n > 0 && fds[0].Revents&unix.POLLERR != 0
			}
		}); err != nil {
			return false, fmt.Errorf("poll errqueue: %w", err)
		}
		if perr != nil {
			return false, fmt.Errorf("poll errqueue: %w", perr)
		}
		if ready {
			return true, nil
		}
		if !end.IsZero() && !time.Now().Before(end) {
			return false, nil
		}
	}
}

// Read reads ordinary bytes the peer sent.
func (k *KernelTXConn) Read(p []byte) (int, error) { return k.c.Read(p) }

// SetWriteDeadline bounds SendMsg; expiry fails with
// os.ErrDeadlineExceeded.
func (k *KernelTXConn) SetWriteDeadline(t time.Time) error { return k.c.SetWriteDeadline(t) }

// CloseWrite shuts the sending side down.
func (k *KernelTXConn) CloseWrite() error { return k.c.CloseWrite() }

// LocalAddr is the connection's local address.
func (k *KernelTXConn) LocalAddr() net.Addr { return k.c.LocalAddr() }

// RemoteAddr is the peer's address.
func (k *KernelTXConn) RemoteAddr() net.Addr { return k.c.RemoteAddr() }

// Close closes the socket; queued data is still delivered.
func (k *KernelTXConn) Close() error {
	k.closed.Store(true)
	if k.onClose != nil {
		k.onClose()
	}
	return k.c.Close()
}

// Write sends plain bytes on the socket. It implements net.Conn.
func (k *KernelTXConn) Write(p []byte) (int, error) { return k.c.Write(p) }

// SetDeadline sets the read and write deadlines.
func (k *KernelTXConn) SetDeadline(t time.Time) error { return k.c.SetDeadline(t) }

// SetReadDeadline bounds Read.
func (k *KernelTXConn) SetReadDeadline(t time.Time) error { return k.c.SetReadDeadline(t) }

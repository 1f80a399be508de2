package compat

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
)

// ListenTCP listens on addr with a real kernel TCP socket (in the calling
// thread's network namespace) whose connections receive devmem fragments
// when the flow lands on a queue bound to a dmabuf.
func ListenTCP(addr netip.AddrPort) (devmemapi.Listener, error) {
	return listenTCP(addr)
}

func listenTCP(addr netip.AddrPort) (*kernelListener, error) {
	l, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(addr))
	if err != nil {
		return nil, fmt.Errorf("listen %v: %w", addr, err)
	}
	return &kernelListener{l: l}, nil
}

// kernelListener is a devmemapi.Listener over a kernel TCP listener.
type kernelListener struct {
	l       *net.TCPListener
	onClose func()
}

var _ devmemapi.Listener = (*kernelListener)(nil)

func (l *kernelListener) Accept() (devmemapi.Conn, error) { return l.accept() }

func (l *kernelListener) accept() (*KernelConn, error) {
	c, err := l.l.AcceptTCP()
	if err != nil {
		return nil, fmt.Errorf("accept: %w", err)
	}
	kc, err := NewKernelConn(c)
	if err != nil {
		c.Close()
		return nil, err
	}
	return kc, nil
}

func (l *kernelListener) Close() error {
	if l.onClose != nil {
		l.onClose()
	}
	return l.l.Close()
}

func (l *kernelListener) Addr() net.Addr { return l.l.Addr() }

// KernelConn is a devmemapi.Conn over a kernel TCP socket: RecvMsg is
// recvmsg(2) with the caller's flags (MSG_SOCK_DEVMEM among them; a raw
// syscall, as unix.Recvmsg allocates), DontNeed
// is setsockopt(SO_DEVMEM_DONTNEED) returning the kernel's count. Both wait
// through Go's poller, so read deadlines and Close interrupt them.
//
// RecvMsg calls are serialized with each other, and DontNeed calls with
// each other; a RecvMsg and a DontNeed may run at once. Neither allocates.
type KernelConn struct {
	c  *net.TCPConn
	rc syscall.RawConn

	// rmu guards the recvmsg arguments and results that readFn uses.
	rmu    sync.Mutex
	rp     []byte
	roob   []byte
	rflags int
	rn     int
	roobn  int
	rerr   error
	readFn func(fd uintptr) bool

	// dmu guards the DONTNEED buffer and results that dontNeedFn uses.
	dmu        sync.Mutex
	dbuf       []byte
	dn         int
	derr       error
	dontNeedFn func(fd uintptr)

	onClose func()
}

var _ devmemapi.Conn = (*KernelConn)(nil)

// NewKernelConn wraps a connected kernel TCP socket; the KernelConn owns c.
func NewKernelConn(c *net.TCPConn) (*KernelConn, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("kernel conn: %w", err)
	}
	k := &KernelConn{c: c, rc: rc, dbuf: make([]byte, 0, devmemapi.SizeofDmabufToken*devmemapi.MaxDontNeedTokens)}
	k.readFn = k.read
	k.dontNeedFn = k.dontNeed
	return k, nil
}

// RecvMsg is recvmsg(2) with flags passed through. It waits for data (or
// the read deadline) unless flags hold MSG_DONTWAIT. Kernel errors come
// back as *devmemerr.Error (op recvmsg) matching their errno; a passed
// deadline matches os.ErrDeadlineExceeded, a closed conn net.ErrClosed.
// An empty p is passed on as a zero-length iovec: the kernel then waits for
// data like any read (target one byte), takes none, and on devmem data
// still answers EFAULT without MSG_SOCK_DEVMEM or reports the next piece in
// a zero-size control message (tcp_recvmsg_locked, tcp_recvmsg_dmabuf).
func (k *KernelConn) RecvMsg(p, oob []byte, flags int) (n, oobn int, err error) {
	k.rmu.Lock()
	defer k.rmu.Unlock()
	k.rp, k.roob, k.rflags = p, oob, flags
	err = k.rc.Read(k.readFn)
	n, oobn, rerr := k.rn, k.roobn, k.rerr
	k.rp, k.roob, k.rerr = nil, nil, nil
	if err != nil {
		return 0, 0, fmt.Errorf("recvmsg: %w", err)
	}
	if rerr != nil {
		return 0, 0, rerr
	}
	return n, oobn, nil
}

// read runs on the poller; it reports false to wait for readability.
func (k *KernelConn) read(fd uintptr) bool {
	for {
		n, oobn, errno := recvmsg(int(fd), k.rp, k.roob, k.rflags)
		switch {
		case errno == 0:
			k.rn, k.roobn, k.rerr = n, oobn, nil
			return true
		case errno == unix.EINTR:
			continue
		case errno == unix.EAGAIN && k.rflags&unix.MSG_DONTWAIT == 0:
			return false
		}
		k.rn, k.roobn, k.rerr = 0, 0, &devmemerr.Error{Op: devmemerr.OpRecvMsg, Errno: errno}
		return true
	}
}

// DontNeed returns tokens with setsockopt(SO_DEVMEM_DONTNEED) and reports
// how many fragments the kernel freed. The kernel checks the arguments
// (devmemerr.DontNeed* cases); its errors come back as *devmemerr.Error.
func (k *KernelConn) DontNeed(tokens []devmemapi.DmabufToken) (int, error) {
	k.dmu.Lock()
	defer k.dmu.Unlock()
	k.dbuf = devmemapi.AppendTokens(k.dbuf[:0], tokens)
	if err := k.rc.Control(k.dontNeedFn); err != nil {
		return 0, fmt.Errorf("dontneed: %w", err)
	}
	if k.derr != nil {
		err := k.derr
		k.derr = nil
		return 0, err
	}
	return k.dn, nil
}

// DontNeedOpt is DontNeed on a raw option value (an array of struct
// dmabuf_token, native byte order), passed to the kernel as it is, so its
// optlen checks apply (devmemerr.DontNeedShortOptlen, DontNeedBadOptlen,
// DontNeedTooManyTokens).
func (k *KernelConn) DontNeedOpt(optval []byte) (int, error) {
	k.dmu.Lock()
	defer k.dmu.Unlock()
	k.dbuf = append(k.dbuf[:0], optval...)
	if err := k.rc.Control(k.dontNeedFn); err != nil {
		return 0, fmt.Errorf("dontneed: %w", err)
	}
	if k.derr != nil {
		err := k.derr
		k.derr = nil
		return 0, err
	}
	return k.dn, nil
}

func (k *KernelConn) dontNeed(fd uintptr) {
	n, err := setsockoptDontNeed(int(fd), k.dbuf)
	if errno, ok := err.(unix.Errno); ok {
		err = &devmemerr.Error{Op: devmemerr.OpDontNeed, Errno: errno}
	}
	k.dn, k.derr = n, err
}

// SetReadDeadline bounds RecvMsg; expiry fails with os.ErrDeadlineExceeded.
func (k *KernelConn) SetReadDeadline(t time.Time) error { return k.c.SetReadDeadline(t) }

// LocalAddr is the connection's local address.
func (k *KernelConn) LocalAddr() net.Addr { return k.c.LocalAddr() }

// RemoteAddr is the peer's address.
func (k *KernelConn) RemoteAddr() net.Addr { return k.c.RemoteAddr() }

// Close closes the socket; the kernel frees the tokens it still holds (in
// autorelease mode).
func (k *KernelConn) Close() error {
	if k.onClose != nil {
		k.onClose()
	}
	return k.c.Close()
}

// Read reads ordinary data (read(2)); dmabuf data fails with the kernel's
// EFAULT. It implements net.Conn.
func (k *KernelConn) Read(p []byte) (int, error) { return k.c.Read(p) }

// Write sends plain bytes. It implements net.Conn.
func (k *KernelConn) Write(p []byte) (int, error) { return k.c.Write(p) }

// SetDeadline sets the read and write deadlines.
func (k *KernelConn) SetDeadline(t time.Time) error { return k.c.SetDeadline(t) }

// SetWriteDeadline bounds Write.
func (k *KernelConn) SetWriteDeadline(t time.Time) error { return k.c.SetWriteDeadline(t) }

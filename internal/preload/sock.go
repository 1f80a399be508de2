package preload

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/stack"
)

// Emulated TCP sockets. A program's TCP socket becomes emulated when it
// binds to an address of an emulated NIC whose stack runs (a dmabuf is
// bound), binds to the unspecified address after SO_BINDTODEVICE to such a
// NIC, or connects through such a NIC. Until then it is the kernel's, and
// it stays so otherwise.
//
// # The fd
//
// The program's fd is kept but made to name one end (A) of a socketpair;
// the library holds A and the other end (B). Every socket call on the fd
// is served by the stack. A and B exist so that poll, select and epoll —
// which the kernel runs on the fd — see the emulated socket's readiness:
// while a program polls the socket (it has been passed to poll, select or
// epoll_ctl), one byte waits in A when the socket is readable (or has an
// error), A's send buffer is full when it is not writable, and shutting B
// down shows end of stream (POLLRDHUP) and hang-up. POLLERR, which a
// socketpair cannot show, and the exact bits are put in by the library's
// poll, select and epoll_wait, which also drop the wake-ups the byte
// causes when only POLLERR was due.

// Socket states.
const (
	stBound = iota
	stConnecting
	stListening
	stConnected
	stClosed
)

// esock is an emulated TCP socket.
type esock struct {
	refs
	l     *Lib
	n     *nic
	st    *stack.Stack
	fam   int // AF_INET or AF_INET6: the program's view
	a, b  int // the library's ends of the socketpair (A is the program's)
	dirty atomic.Bool
	// armed: the socket is polled, and A mirrors its readiness. Set once
	// (under mu); notify reads it without mu.
	armed atomic.Bool
	// rcvTimeo and sndTimeo are SO_RCVTIMEO and SO_SNDTIMEO in jiffies
	// (-1: none; see timeoJiffies). Guarded by mu.
	rcvTimeo, sndTimeo int64
	// linger is SO_LINGER (see lingerOpt). Guarded by mu.
	linger lingerOpt

	mu       sync.Mutex
	state    int
	nonblock bool
	local    netip.AddrPort // as bound (unmapped)
	ln       *stack.Listener
	conn     *stack.Conn
	tx       *stack.TXConn
	soErr    error // SO_ERROR: a failed connect
	opts     map[optKey]int32
	bindDev  string
	rsig     bool // a byte waits in A
	wfull    bool // A's send buffer is full
	rdhup    bool // B shut down for writing
	hup      bool // B shut down both ways
}

type optKey struct{ level, name int32 }

// Option numbers not in x/sys/unix.
const (
	soDevmemDontneed    = devmemapi.SO_DEVMEM_DONTNEED
	soDevmemAutorelease = devmemapi.SO_DEVMEM_AUTORELEASE
)

func (e *esock) release() {
	if e.drop() {
		e.teardown()
	}
}

// closeLingering is release for close(2). A socket whose SO_LINGER is on
// with a time tears down in the background, where its connection's Close
// waits (stack.Conn.SetLinger); the caller sleeps on event word slot until
// that is done, at most timeout ns (-1: no bound), or a signal handler
// runs, as the kernel's close waits in sk_stream_wait_close. Else it
// tears down here and slot is -1.
func (e *esock) closeLingering() (slot int, timeout int64) {
	if !e.drop() {
		return -1, 0
	}
	e.mu.Lock()
	lg := e.linger
	lingers := lg.on && lg.jiffies != 0 && side(e.conn, e.tx) != nil && e.b < MaxFD
	e.mu.Unlock()
	if !lingers {
		e.teardown()
		return -1, 0
	}
	e.l.host.SetLingering(e.b, true)
	go e.teardown()
	if d, ok := lg.wait(); ok {
		return e.b, int64(d)
	}
	return e.b, -1
}

// teardown closes the socket once no fd names it.
func (e *esock) teardown() {
	e.mu.Lock()
	ln, conn, tx := e.ln, e.conn, e.tx
	e.state = stClosed
	e.ln, e.conn, e.tx = nil, nil, nil
	e.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	if conn != nil {
		conn.Close()
	}
	if tx != nil {
		tx.Close()
	}
	unix.Close(e.a)
	e.l.mu.Lock()
	if e.n.st == e.st {
		e.n.socks--
		e.l.maybeRelease(e.n)
	}
	e.l.mu.Unlock()
	if e.b < MaxFD {
		e.l.host.SetLingering(e.b, false) // a lingering close(2) returns
		e.l.host.Wake(e.b)                // a receive asleep on the word tries again
	}
	unix.Close(e.b)
}

// newProxy makes the socketpair; A's send buffer is as small as the
// kernel allows, so that filling it takes one write.
func newProxy() (a, b int, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return -1, -1, err
	}
	unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF, 1)
	return fds[0], fds[1], nil
}

// stackFor returns the NIC whose running stack has addr (or, for the
// unspecified address, the NIC named by dev). l.mu must be held.
func (l *Lib) stackFor(addr netip.Addr, dev string) *nic {
	addr = addr.Unmap()
	for _, n := range l.nics {
		if n.st == nil {
			continue
		}
		if addr.IsUnspecified() {
			if dev != "" && dev == n.name {
				return n
			}
			continue
		}
		for _, p := range n.st.Addrs() {
			if p.Addr() == addr {
				return n
			}
		}
	}
	return nil
}

// routeFor returns the NIC whose running stack reaches dst on-link, or
// the one named by dev. l.mu must be held.
func (l *Lib) routeFor(dst netip.Addr, dev string) *nic {
	dst = dst.Unmap()
	for _, n := range l.nics {
		if n.st == nil {
			continue
		}
		if dev != "" {
			if dev == n.name {
				return n
			}
			continue
		}
		for _, p := range n.st.Addrs() {
			if p.Masked().Contains(dst) && p.Addr() != dst {
				return n
			}
		}
	}
	return nil
}

// kernelSockInfo reads what the emulation keeps of a kernel socket.
func kernelSockInfo(fd int) (fam int, dev string, err error) {
	fam, err = unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return 0, "", err
	}
	dev, _ = unix.GetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE)
	return fam, dev, nil
}

// adopt turns the kernel TCP socket fd into an emulated socket on n: its
// options come along, and the fd is made to name A. l.mu must be held.
func (l *Lib) adopt(fd int, n *nic, fam int, dev string) (*esock, error) {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return nil, err
	}
	fdfl, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	e := &esock{l: l, n: n, st: n.st, fam: fam, nonblock: fl&unix.O_NONBLOCK != 0, bindDev: dev, opts: map[optKey]int32{},
		rcvTimeo: kernelTimeo(fd, unix.SO_RCVTIMEO), sndTimeo: kernelTimeo(fd, unix.SO_SNDTIMEO), linger: kernelLinger(fd)}
	for _, o := range []struct{ level, name int }{
		{unix.SOL_SOCKET, unix.SO_REUSEADDR}, {unix.SOL_SOCKET, unix.SO_REUSEPORT}, {unix.SOL_SOCKET, unix.SO_ZEROCOPY},
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE}, {unix.SOL_SOCKET, unix.SO_RCVBUF}, {unix.SOL_SOCKET, unix.SO_SNDBUF},
		{unix.IPPROTO_TCP, unix.TCP_NODELAY},
	} {
		if v, err := unix.GetsockoptInt(fd, o.level, o.name); err == nil {
			e.opts[optKey{int32(o.level), int32(o.name)}] = int32(v)
		}
	}
	if fam == unix.AF_INET6 {
		if v, err := unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); err == nil {
			e.opts[optKey{unix.IPPROTO_IPV6, unix.IPV6_V6ONLY}] = int32(v)
		}
	}
	a, b, err := newProxy()
	if err != nil {
		return nil, err
	}
	flags := 0
	if fdfl&unix.FD_CLOEXEC != 0 {
		flags = unix.O_CLOEXEC
	}
	if err := unix.Dup3(a, fd, flags); err != nil {
		unix.Close(a)
		unix.Close(b)
		return nil, err
	}
	e.a, e.b = a, b
	n.socks++
	l.install(fd, KindEmu, e)
	return e, nil
}

// Bind is bind(2) on a kernel TCP socket (which it may emulate) or an
// emulated one.
func (l *Lib) Bind(fd int, sap UPtr, salen uint32) (int, error) {
	if e, ok := l.get(fd, KindEmu).(*esock); ok {
		if _, err := sockaddr(e.fam, sap, salen); err != nil {
			return -1, err
		}
		return -1, unix.EINVAL // bound already
	}
	fam, dev, err := kernelSockInfo(fd)
	if err != nil {
		return Pass, nil
	}
	ap, err := sockaddr(fam, sap, salen)
	if err != nil || !ap.IsValid() {
		return Pass, nil // the kernel gives the errno
	}
	if fam == unix.AF_INET6 && ap.Addr().Is4In6() {
		if v6only, _ := unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); v6only != 0 {
			return Pass, nil
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.stackFor(ap.Addr(), dev)
	if n == nil {
		return Pass, nil
	}
	port, err := probeBind(fd, fam, ap, dev)
	if err != nil {
		return -1, err
	}
	e, err := l.adopt(fd, n, fam, dev)
	if err != nil {
		return -1, err
	}
	e.local = netip.AddrPortFrom(ap.Addr().Unmap(), port)
	l.logf("bind(%d, %v) emulated on %s, port %d", fd, ap, n.name, port)
	return 0, nil
}

// probeBind asks the kernel whether the socket fd could bind ap: a new
// socket with fd's binding options (SO_REUSEADDR, SO_REUSEPORT,
// IPV6_V6ONLY, the device; IP_FREEBIND for a dedicated address) binds it
// and lets it go. Its errno is bind's (EADDRINUSE for a port a kernel
// program or another emulated socket holds, EACCES, ...), and port 0
// comes back as the port the kernel chose, as getsockname shows it after
// a bind. The stack takes the port itself when the socket listens or
// connects.
func probeBind(fd, fam int, ap netip.AddrPort, dev string) (uint16, error) {
	s, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(s)
	for _, o := range []struct{ level, name int }{
		{unix.SOL_SOCKET, unix.SO_REUSEADDR}, {unix.SOL_SOCKET, unix.SO_REUSEPORT}, {unix.IPPROTO_IPV6, unix.IPV6_V6ONLY},
	} {
		if o.level == unix.IPPROTO_IPV6 && fam != unix.AF_INET6 {
			continue
		}
		if v, err := unix.GetsockoptInt(fd, o.level, o.name); err == nil {
			unix.SetsockoptInt(s, o.level, o.name, v)
		}
	}
	if dev != "" {
		unix.SetsockoptString(s, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, dev)
	}
	unix.SetsockoptInt(s, unix.SOL_IP, unix.IP_FREEBIND, 1)
	var sa unix.Sockaddr
	if fam == unix.AF_INET {
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().Unmap().As4()}
	} else {
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	if err := unix.Bind(s, sa); err != nil {
		return 0, err
	}
	got, err := unix.Getsockname(s)
	if err != nil {
		return 0, err
	}
	switch a := got.(type) {
	case *unix.SockaddrInet4:
		return uint16(a.Port), nil
	case *unix.SockaddrInet6:
		return uint16(a.Port), nil
	}
	return ap.Port(), nil
}

// Connect is connect(2) on a kernel TCP socket (emulated when it goes
// through an emulated NIC) or an emulated one.
func (l *Lib) Connect(fd int, sap UPtr, salen uint32) (int, error) {
	e, ok := l.get(fd, KindEmu).(*esock)
	if !ok {
		fam, dev, err := kernelSockInfo(fd)
		if err != nil {
			return Pass, nil
		}
		ap, err := sockaddr(fam, sap, salen)
		if err != nil || !ap.IsValid() {
			return Pass, nil
		}
		l.mu.Lock()
		n := l.routeFor(ap.Addr(), dev)
		if n == nil {
			l.mu.Unlock()
			return Pass, nil
		}
		e, err = l.adopt(fd, n, fam, dev)
		l.mu.Unlock()
		if err != nil {
			return -1, err
		}
		l.logf("connect(%d, %v) emulated on %s", fd, ap, n.name)
	}
	ap, err := sockaddr(e.fam, sap, salen)
	if err != nil {
		return -1, err
	}
	e.mu.Lock()
	switch e.state {
	case stConnecting:
		e.mu.Unlock()
		return -1, unix.EALREADY
	case stConnected:
		e.mu.Unlock()
		return -1, unix.EISCONN
	case stListening, stClosed:
		e.mu.Unlock()
		return -1, unix.EINVAL
	}
	if !ap.IsValid() {
		e.mu.Unlock()
		return -1, unix.EAFNOSUPPORT
	}
	dst := netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	e.state = stConnecting
	e.soErr = nil
	nonblock := e.nonblock
	e.mu.Unlock()
	dial := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		c, err := e.st.Dial(ctx, dst)
		e.mu.Lock()
		defer e.mu.Unlock()
		if err != nil {
			e.state = stBound
			e.soErr = err
			if errors.Is(err, context.DeadlineExceeded) {
				e.soErr = unix.ETIMEDOUT
			}
			e.syncLocked()
			return e.soErr
		}
		if e.state == stClosed {
			c.Close()
			return unix.EBADF
		}
		e.tx = c.(*stack.TXConn)
		if v := e.opts[optKey{unix.SOL_SOCKET, unix.SO_ZEROCOPY}]; v != 0 {
			e.tx.SetZeroCopy(true)
		}
		e.linger.apply(e.tx)
		e.state = stConnected
		if e.armed.Load() {
			e.tx.SetNotify(e.notify)
		}
		e.syncLocked()
		return nil
	}
	if nonblock {
		go dial()
		return -1, unix.EINPROGRESS
	}
	if err := dial(); err != nil {
		e.mu.Lock()
		e.soErr = nil // reported here, not again by SO_ERROR
		e.mu.Unlock()
		return -1, err
	}
	return 0, nil
}

// Listen is listen(2) on an emulated socket.
func (l *Lib) Listen(fd, backlog int) (int, error) {
	e, ok := l.get(fd, KindEmu).(*esock)
	if !ok {
		return -1, unix.EBADF
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	switch e.state {
	case stListening:
		return 0, nil
	case stBound:
	default:
		return -1, unix.EINVAL
	}
	ln, err := e.st.Listen(e.local)
	if err != nil {
		return -1, err
	}
	e.ln = ln.(*stack.Listener)
	e.state = stListening
	if la, ok := e.ln.Addr().(*net.TCPAddr); ok {
		e.local = netip.AddrPortFrom(e.local.Addr(), uint16(la.Port))
	}
	if e.armed.Load() {
		e.ln.SetNotify(e.notify)
	}
	e.syncLocked()
	l.logf("listen(%d) on %v", fd, e.local)
	return 0, nil
}

// Accept is accept4(2) on an emulated socket.
func (l *Lib) Accept(fd int, sap, lenp UPtr, flags int) (int, error) {
	e, ok := l.get(fd, KindEmu).(*esock)
	if !ok {
		return -1, unix.EBADF
	}
	if flags&^(unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC) != 0 {
		return -1, unix.EINVAL
	}
	if sap != 0 {
		if _, err := ReadU32(lenp); err != nil {
			return -1, err
		}
	}
	e.mu.Lock()
	ln, nonblock := e.ln, e.nonblock
	e.mu.Unlock()
	if ln == nil {
		return -1, unix.EINVAL
	}
	var c devmemapi.Conn
	var err error
	if nonblock {
		c, err = ln.TryAccept()
	} else {
		c, err = ln.Accept()
	}
	e.mu.Lock()
	e.syncLocked()
	e.mu.Unlock()
	if err != nil {
		return -1, err
	}
	conn := c.(*stack.Conn)
	ne := &esock{l: l, n: e.n, st: e.st, fam: e.fam, state: stConnected, conn: conn,
		nonblock: flags&unix.SOCK_NONBLOCK != 0, opts: map[optKey]int32{}, bindDev: e.bindDev}
	e.mu.Lock()
	ne.rcvTimeo, ne.sndTimeo = e.rcvTimeo, e.sndTimeo // sk_rcvtimeo and sk_sndtimeo go with sock_copy
	ne.linger = e.linger                              // as do SOCK_LINGER and sk_lingertime
	e.mu.Unlock()
	ne.linger.apply(conn)
	e.mu.Lock()
	for k, v := range e.opts {
		ne.opts[k] = v
	}
	e.mu.Unlock()
	if la, ok := conn.LocalAddr().(*net.TCPAddr); ok {
		ne.local = la.AddrPort()
		ne.local = netip.AddrPortFrom(ne.local.Addr().Unmap(), ne.local.Port())
	}
	a, b, err := newProxy()
	if err != nil {
		conn.Close()
		return -1, err
	}
	cl := unix.F_DUPFD
	if flags&unix.SOCK_CLOEXEC != 0 {
		cl = unix.F_DUPFD_CLOEXEC
	}
	nfd, err := unix.FcntlInt(uintptr(a), cl, 0)
	if err != nil || nfd >= MaxFD {
		if err == nil {
			unix.Close(nfd)
			err = unix.EMFILE
		}
		unix.Close(a)
		unix.Close(b)
		conn.Close()
		return -1, err
	}
	ne.a, ne.b = a, b
	if sap != 0 {
		if err := putSockaddr(sap, lenp, encodeSockaddr(ne.fam, ne.peer())); err != nil {
			unix.Close(nfd)
			unix.Close(a)
			unix.Close(b)
			conn.Close()
			return -1, err
		}
	}
	l.mu.Lock()
	if e.n.st == e.st {
		e.n.socks++
	}
	l.mu.Unlock()
	// Blocked receives sleep on the event word of B (see Recv).
	conn.SetNotify(ne.notify)
	if ne.opts[optKey{unix.SOL_SOCKET, unix.SO_ZEROCOPY}] != 0 {
		conn.SetZeroCopy(true) // inherited from the listener, as sk_flags are
	}
	l.install(nfd, KindEmu, ne)
	l.logf("accept(%d) = %d from %v", fd, nfd, ne.peer())
	return nfd, nil
}

// peer is the connected peer's address.
func (e *esock) peer() netip.AddrPort {
	switch {
	case e.conn != nil:
		return tcpAddrPort(e.conn.RemoteAddr())
	case e.tx != nil:
		return tcpAddrPort(e.tx.RemoteAddr())
	}
	return netip.AddrPort{}
}

// Recv is recvmsg(2) and its variants (recv, recvfrom, read, readv) on
// an emulated or netlink socket. msgp is the program's msghdr, or one the
// C side built; namelenp is recvfrom's address length.
//
// When w is not nil and the socket would block, Recv may instead fill w in
// and return Wait: the caller sleeps outside Go until w's event word moves,
// then calls again (a thread of the program parked in the Go scheduler
// costs several handoffs per wakeup; one sleeping on a futex costs one).
func (l *Lib) Recv(fd int, msgp UPtr, flags int, namelenp UPtr, w *Waiter) (int, error) {
	m, err := ReadMsghdr(msgp)
	if err != nil {
		return -1, err
	}
	if namelenp != 0 && m.Name != 0 {
		nl, err := ReadU32(namelenp)
		if err != nil {
			return -1, err
		}
		m.Namelen = nl
	}
	var iovs [8]Iovec
	iov, total, err := ReadIovecs(m.Iov, m.Iovlen, iovs[:0])
	if err != nil {
		return -1, err
	}
	if g := l.get(fd, KindGenl); g != nil {
		return l.genlRecv(fd, m, msgp, iov, flags, namelenp)
	}
	e, ok := l.get(fd, KindEmu).(*esock)
	if !ok {
		return Pass, nil
	}
	n, err := e.recv(m, msgp, iov, total, flags, w)
	if err == nil && n != Wait && namelenp != 0 && m.Name != 0 {
		if err := WriteU32(namelenp, 0); err != nil {
			return -1, err
		}
	}
	return n, err
}

// stackSide is where a socket's options reach the stack: its connection,
// or the TXConn it dialled.
type stackSide interface {
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
	SetZeroCopy(bool) error
	SetLinger(bool, time.Duration)
}

// side returns conn or tx as a stackSide, nil when the socket has neither.
func side(conn *stack.Conn, tx *stack.TXConn) stackSide {
	switch {
	case conn != nil:
		return conn
	case tx != nil:
		return tx
	}
	return nil
}

// scratch is one call's buffers: a receive's data and control messages,
// a send's control messages, dmabuf iovecs and gathered bytes. They come
// from a pool, so that calls on one socket from several threads never
// share them (the data moves between the stack and the application after
// the stack's own call has returned) and a call allocates nothing once
// the pool is warm.
type scratch struct {
	data, ctrl []byte
	iov        []devmemapi.Iovec
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// Receive limits: one call takes at most maxRecvData bytes (a shorter
// read, as TCP allows) and writes at most maxCtrl bytes of control
// messages; a pooled buffer larger than maxRecvData is not kept.
const maxRecvData, maxCtrl = 4 << 20, 1 << 20

func getScratch() *scratch { return scratchPool.Get().(*scratch) }

func (s *scratch) put() {
	if cap(s.data) > maxRecvData {
		s.data = nil
	}
	scratchPool.Put(s)
}

// grow returns b resized to n bytes, reallocated when it is too small.
func grow(b *[]byte, n int) []byte {
	if cap(*b) < n {
		*b = make([]byte, n)
	}
	return (*b)[:n]
}

func (e *esock) recv(m Msghdr, msgp UPtr, iov []Iovec, total, flags int, w *Waiter) (int, error) {
	e.mu.Lock()
	state, conn, tx := e.state, e.conn, e.tx
	timeo, timed := timeoDuration(e.rcvTimeo)
	dontwait := e.nonblock || flags&unix.MSG_DONTWAIT != 0 || (timed && timeo == 0)
	e.mu.Unlock()
	// A blocking receive on a connection sleeps in C (see Recv): the
	// word is read before the connection is looked at, so an event
	// between the look and the sleep is not missed.
	cwait := w != nil && !dontwait && conn != nil && flags&unix.MSG_WAITALL == 0 && e.b < MaxFD
	var seq uint32
	if cwait {
		seq = e.l.host.Seq(e.b)
	} else if d := side(conn, tx); timed && !dontwait && d != nil { // SO_RCVTIMEO bounds the stack's own wait
		d.SetReadDeadline(time.Now().Add(timeo))
		defer d.SetReadDeadline(time.Time{})
	}
	if flags&unix.MSG_ERRQUEUE != 0 {
		return e.recvErrQueue(m, msgp, flags)
	}
	if flags&unix.MSG_OOB != 0 && state == stConnected {
		return -1, unix.EINVAL // tcp_recv_urg: no urgent data (the stack keeps none)
	}
	trunc := flags&unix.MSG_TRUNC != 0
	if state != stConnected {
		return -1, unix.ENOTCONN
	}
	if err := probe(m.Control, int(min(m.Controllen, maxCtrl))); err != nil {
		return -1, err
	}
	// The iovec is checked before any data moves, so that a bad one
	// loses nothing, but only when bytes will be copied into it: dmabuf
	// fragments never touch it, in the kernel either (tcp_recvmsg_dmabuf),
	// so a devmem receive asks the stack for those first. MSG_TRUNC
	// copies nothing.
	noCopy := !trunc && conn != nil && flags&devmemapi.MSG_SOCK_DEVMEM != 0
	if !trunc && !noCopy {
		if err := probeIov(iov); err != nil {
			return -1, err
		}
	}
	rflags := flags & (devmemapi.MSG_SOCK_DEVMEM | unix.MSG_PEEK | unix.MSG_TRUNC | unix.MSG_WAITALL)
	if dontwait || cwait {
		rflags |= unix.MSG_DONTWAIT
	}
	var n, oobn int
	var err error
	var mflags int32
	sc := getScratch()
	defer sc.put()
	p, oob := grow(&sc.data, min(total, maxRecvData)), grow(&sc.ctrl, int(min(m.Controllen, maxCtrl)))
	switch {
	case noCopy:
		n, oobn, err = conn.RecvMsgNoCopy(p, oob, rflags)
		if errors.Is(err, stack.ErrWouldCopy) {
			if err := probeIov(iov); err != nil {
				return -1, err
			}
			n, oobn, err = conn.RecvMsg(p, oob, rflags)
		}
	case conn != nil:
		n, oobn, err = conn.RecvMsg(p, oob, rflags)
	case tx != nil:
		n, err = tx.ReadFlags(p, rflags)
	}
	if err = e.settle(err); err != nil {
		if cwait && errors.Is(err, unix.EAGAIN) {
			*w = Waiter{Slot: e.b, Seq: seq, Timeout: -1}
			if timed {
				w.Timeout = int64(timeo)
			}
			return Wait, nil
		}
		return -1, err
	}
	copied := oobn == 0 || binary.NativeEndian.Uint32(oob[12:]) != devmemapi.SCM_DEVMEM_DMABUF
	if copied && n > 0 && !trunc {
		if err := scatter(iov, p[:n]); err != nil {
			return -1, err
		}
	}
	if oobn > 0 {
		if err := CopyOut(m.Control, oob[:oobn]); err != nil {
			e.dropTokens(conn, oob[:oobn])
			return -1, err
		}
	}
	if msgp != 0 {
		if m.Name != 0 {
			if err := WriteU32(msgp.Add(offNamelen), 0); err != nil {
				return -1, err
			}
		}
		var cl [8]byte
		binary.NativeEndian.PutUint64(cl[:], uint64(oobn))
		if err := CopyOut(msgp.Add(offControllen), cl[:]); err != nil {
			return -1, err
		}
		if err := WriteU32(msgp.Add(offMsgFlags), uint32(mflags)); err != nil {
			return -1, err
		}
	}
	return n, nil
}

// dropTokens gives back the tokens of fragments the program never saw
// (its control buffer faulted), as the kernel erases them.
func (e *esock) dropTokens(conn *stack.Conn, oob []byte) {
	if conn == nil {
		return
	}
	frags, _ := devmemapi.AppendFrags(nil, oob)
	var toks []devmemapi.DmabufToken
	for _, f := range frags {
		if !f.Linear {
			toks = append(toks, devmemapi.DmabufToken{TokenStart: f.FragToken, TokenCount: 1})
		}
	}
	for len(toks) > 0 {
		k := min(len(toks), devmemapi.MaxDontNeedTokens)
		conn.DontNeed(toks[:k])
		toks = toks[k:]
	}
}

// recvErrQueue is recvmsg(MSG_ERRQUEUE): zerocopy completions of a
// devmem sending socket; EAGAIN when there are none (always, on a
// receiving one).
func (e *esock) recvErrQueue(m Msghdr, msgp UPtr, flags int) (int, error) {
	e.mu.Lock()
	tx := e.tx
	if tx == nil && e.conn != nil {
		tx = e.conn.TXView() // an accepted socket that sent from a dmabuf
	}
	e.mu.Unlock()
	if tx == nil {
		return -1, unix.EAGAIN
	}
	oob := make([]byte, min(m.Controllen, 4096))
	var oobn, rflags int
	var err error
	if e.fam == unix.AF_INET6 {
		oobn, rflags, err = recvErrQueue6(tx, oob)
	} else {
		oobn, rflags, err = tx.RecvErrQueue(oob, 0)
	}
	if err = e.settle(err); err != nil {
		return -1, err
	}
	if err := CopyOut(m.Control, oob[:oobn]); err != nil {
		return -1, err
	}
	if msgp != 0 {
		var cl [8]byte
		binary.NativeEndian.PutUint64(cl[:], uint64(oobn))
		if err := CopyOut(msgp.Add(offControllen), cl[:]); err != nil {
			return -1, err
		}
		if err := WriteU32(msgp.Add(offMsgFlags), uint32(rflags)); err != nil {
			return -1, err
		}
	}
	return 0, nil
}

// recvErrQueue6 is RecvErrQueue for an AF_INET6 socket, whose completions
// the kernel's ipv6_recv_error reports as SOL_IPV6 / IPV6_RECVERR with a
// zeroed sockaddr_in6 behind the sock_extended_err.
func recvErrQueue6(tx *stack.TXConn, oob []byte) (int, int, error) {
	var v4 [devmemapi.CmsgSpaceZerocopy]byte
	_, rflags, err := tx.RecvErrQueue(v4[:], 0)
	if err != nil {
		return 0, 0, err
	}
	const hdr, ee, sin6 = 16, 16, 28
	var b [hdr + ee + sin6 + 4]byte // CMSG_SPACE(44) = 64
	binary.NativeEndian.PutUint64(b[0:], hdr+ee+sin6)
	binary.NativeEndian.PutUint32(b[8:], unix.SOL_IPV6)
	binary.NativeEndian.PutUint32(b[12:], unix.IPV6_RECVERR)
	copy(b[hdr:hdr+ee], v4[hdr:hdr+ee])
	if len(oob) < hdr {
		return 0, rflags | unix.MSG_CTRUNC, nil
	}
	if len(oob) < len(b) {
		binary.NativeEndian.PutUint64(b[0:], uint64(len(oob)))
		return copy(oob, b[:]), rflags | unix.MSG_CTRUNC, nil
	}
	return copy(oob, b[:]), rflags, nil
}

// Send is sendmsg(2) and its variants on an emulated or netlink socket.
func (l *Lib) Send(fd int, msgp UPtr, flags int) (int, error) {
	m, err := ReadMsghdr(msgp)
	if err != nil {
		return -1, err
	}
	var iovs [8]Iovec
	iov, total, err := ReadIovecs(m.Iov, m.Iovlen, iovs[:0])
	if err != nil {
		return -1, err
	}
	if e, ok := l.get(fd, KindEmu).(*esock); ok {
		return e.send(m, iov, total, flags)
	}
	return l.genlSend(fd, m, iov, total, flags)
}

func (e *esock) send(m Msghdr, iov []Iovec, total, flags int) (int, error) {
	e.mu.Lock()
	state, conn, tx := e.state, e.conn, e.tx
	timeo, timed := timeoDuration(e.sndTimeo)
	dontwait := e.nonblock || flags&unix.MSG_DONTWAIT != 0 || (timed && timeo == 0)
	e.mu.Unlock()
	if d := side(conn, tx); timed && !dontwait && d != nil { // SO_SNDTIMEO bounds a blocking send
		d.SetWriteDeadline(time.Now().Add(timeo))
		defer d.SetWriteDeadline(time.Time{})
	}
	if m.Controllen > maxCtrl {
		return -1, unix.ENOBUFS
	}
	sc := getScratch()
	defer sc.put()
	oob := grow(&sc.ctrl, int(m.Controllen))
	if err := CopyIn(oob, m.Control); err != nil {
		return -1, err
	}
	if state == stConnecting {
		return -1, unix.EAGAIN
	}
	if state != stConnected {
		return -1, unix.EPIPE
	}
	sflags := flags & devmemapi.MSG_ZEROCOPY
	if dontwait {
		sflags |= unix.MSG_DONTWAIT
	}
	var n int
	var err error
	_, hasID, _ := devmemapi.ParseDmabufTxCmsg(oob)
	// A connected socket sends through the TXConn it dialled, an accepted
	// one through its Conn (whose TX view serves dmabuf sends).
	var snd interface {
		SendMsg(iov []devmemapi.Iovec, oob []byte, flags int) (int, error)
		Send(p []byte, flags int) (int, error)
	} = conn
	if tx != nil {
		snd = tx
	}
	if hasID || (tx != nil && len(oob) > 0) {
		// iov_base is an offset into the dmabuf, not an address.
		dv := sc.iov[:0]
		for _, v := range iov {
			dv = append(dv, devmemapi.Iovec{Base: uint64(v.Base), Len: v.Len})
		}
		sc.iov = dv
		n, err = snd.SendMsg(dv, oob, sflags)
	} else { // plain bytes (on a devmem TX socket, between its dmabuf sends)
		buf := grow(&sc.data, total)
		if err := gather(buf, iov); err != nil {
			return -1, err
		}
		n, err = snd.Send(buf, sflags)
	}
	if err = e.settle(err); err != nil {
		return -1, err
	}
	return n, nil
}

// Mmsg is recvmmsg(2) and sendmmsg(2): one call per message, stopping at
// the first error (reported only when no message went through).
func (l *Lib) Mmsg(fd int, vec UPtr, n uint32, flags int, send bool) (int, error) {
	if n > maxIov {
		n = maxIov
	}
	done := 0
	for i := 0; i < int(n); i++ {
		h := vec.Add(i * sizeofMmsghdr)
		var r int
		var err error
		if send {
			r, err = l.Send(fd, h, flags)
		} else {
			r, err = l.Recv(fd, h, flags, 0, nil)
		}
		if r == Pass {
			err = unix.EOPNOTSUPP
		}
		if err != nil {
			if done == 0 {
				return -1, err
			}
			return done, nil
		}
		if err := WriteU32(h.Add(offMmsgLen), uint32(r)); err != nil {
			if done == 0 {
				return -1, err
			}
			return done, nil
		}
		done++
		if !send && flags&unix.MSG_WAITFORONE != 0 {
			flags |= unix.MSG_DONTWAIT
		}
	}
	return done, nil
}

// kernelTimeo reads SO_RCVTIMEO or SO_SNDTIMEO off the kernel socket fd
// (set before the library took it over) in jiffies.
func kernelTimeo(fd, name int) int64 {
	tv, err := unix.GetsockoptTimeval(fd, unix.SOL_SOCKET, name)
	if err != nil {
		return -1
	}
	j, err := timeoJiffies(tv.Sec, tv.Usec)
	if err != nil {
		return -1
	}
	return j
}

// settle ends a receive or a send: a polled socket's readiness is
// mirrored again (the call may have changed it), and the error of a socket
// closed under the call is EBADF.
func (e *esock) settle(err error) error {
	if e.armed.Load() {
		e.mu.Lock()
		e.syncLocked()
		e.mu.Unlock()
	}
	if errors.Is(err, devmemapi.ErrClosed) {
		return unix.EBADF
	}
	return err
}

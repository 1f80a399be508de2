package preload

import (
	"encoding/binary"
	"errors"
	"math"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
)

// Socket options, names, shutdown, fcntl and ioctl of emulated sockets.

// intOpts are the options an emulated socket keeps as plain integers (the
// stack does not act on them); their getsockopt returns what was set.
var intOpts = map[optKey]bool{
	{unix.SOL_SOCKET, unix.SO_REUSEADDR}: true, {unix.SOL_SOCKET, unix.SO_REUSEPORT}: true,
	{unix.SOL_SOCKET, unix.SO_KEEPALIVE}: true, {unix.SOL_SOCKET, unix.SO_RCVBUF}: true,
	{unix.SOL_SOCKET, unix.SO_SNDBUF}: true, {unix.SOL_SOCKET, unix.SO_PRIORITY}: true,
	{unix.SOL_SOCKET, unix.SO_RCVLOWAT}: true, {unix.SOL_SOCKET, unix.SO_MARK}: true,
	{unix.SOL_SOCKET, unix.SO_BUSY_POLL}: true, {unix.SOL_SOCKET, unix.SO_OOBINLINE}: true,
	{unix.IPPROTO_TCP, unix.TCP_NODELAY}: true, {unix.IPPROTO_TCP, unix.TCP_MAXSEG}: true,
	{unix.IPPROTO_TCP, unix.TCP_CORK}: true, {unix.IPPROTO_TCP, unix.TCP_KEEPIDLE}: true,
	{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL}: true, {unix.IPPROTO_TCP, unix.TCP_KEEPCNT}: true,
	{unix.IPPROTO_TCP, unix.TCP_QUICKACK}: true, {unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT}: true,
	{unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT}: true, {unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT}: true,
	{unix.IPPROTO_IP, unix.IP_TOS}: true, {unix.IPPROTO_IP, unix.IP_TTL}: true,
	{unix.IPPROTO_IP, unix.IP_RECVERR}: true, {unix.IPPROTO_IPV6, unix.IPV6_TCLASS}: true,
	{unix.IPPROTO_IPV6, unix.IPV6_RECVERR}: true, {unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS}: true,
}

// Setsockopt is setsockopt(2) on an emulated socket. SO_DEVMEM_DONTNEED
// returns, as in the kernel, the number of fragments it freed.
func (l *Lib) Setsockopt(fd, level, name int, val UPtr, vlen int) (int, error) {
	e, ok := l.get(fd, KindEmu).(*esock)
	if !ok {
		return Pass, nil
	}
	if vlen < 0 {
		return -1, unix.EINVAL
	}
	if level == unix.SOL_SOCKET && name == soDevmemDontneed {
		return e.dontNeed(val, vlen)
	}
	if level == unix.SOL_SOCKET && name == unix.SO_BINDTODEVICE {
		dev := make([]byte, min(vlen, unix.IFNAMSIZ-1))
		if err := CopyIn(dev, val); err != nil {
			return -1, err
		}
		if i := indexByte(dev, 0); i >= 0 {
			dev = dev[:i]
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		if string(dev) != "" && string(dev) != e.n.name {
			return -1, unix.EINVAL // the stack serves one interface
		}
		e.bindDev = string(dev)
		return 0, nil
	}
	k := optKey{int32(level), int32(name)}
	known := intOpts[k] || k == optKey{unix.SOL_SOCKET, unix.SO_ZEROCOPY} ||
		k == optKey{unix.SOL_SOCKET, soDevmemAutorelease} || k == optKey{unix.IPPROTO_IPV6, unix.IPV6_V6ONLY} ||
		(level == unix.SOL_SOCKET && (name == unix.SO_RCVTIMEO_NEW || name == unix.SO_RCVTIMEO_OLD ||
			name == unix.SO_SNDTIMEO_NEW || name == unix.SO_SNDTIMEO_OLD || name == unix.SO_LINGER))
	if !known {
		switch level {
		case unix.SOL_SOCKET, unix.IPPROTO_TCP, unix.IPPROTO_IP, unix.IPPROTO_IPV6:
			return -1, unix.ENOPROTOOPT
		}
		return -1, unix.ENOPROTOOPT
	}
	if level == unix.SOL_SOCKET && (name == unix.SO_LINGER || name == unix.SO_RCVTIMEO_NEW || name == unix.SO_RCVTIMEO_OLD ||
		name == unix.SO_SNDTIMEO_NEW || name == unix.SO_SNDTIMEO_OLD) {
		need := 16
		if name == unix.SO_LINGER {
			need = 8
		}
		if vlen < need {
			return -1, unix.EINVAL
		}
		b := make([]byte, need)
		if err := CopyIn(b, val); err != nil {
			return -1, err
		}
		if name == unix.SO_LINGER {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.linger.set(int32(binary.NativeEndian.Uint32(b)), int32(binary.NativeEndian.Uint32(b[4:])))
			if s := side(e.conn, e.tx); s != nil {
				e.linger.apply(s)
			}
			return 0, nil
		}
		j, err := timeoJiffies(int64(binary.NativeEndian.Uint64(b)), int64(binary.NativeEndian.Uint64(b[8:])))
		if err != nil {
			return -1, err
		}
		e.mu.Lock()
		if name == unix.SO_RCVTIMEO_NEW || name == unix.SO_RCVTIMEO_OLD {
			e.rcvTimeo = j
		} else {
			e.sndTimeo = j
		}
		e.mu.Unlock()
		return 0, nil
	}
	if vlen < 4 {
		return -1, unix.EINVAL
	}
	v, err := ReadU32(val)
	if err != nil {
		return -1, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	switch k {
	case optKey{unix.SOL_SOCKET, unix.SO_ZEROCOPY}:
		if s := side(e.conn, e.tx); s != nil {
			s.SetZeroCopy(v != 0)
		}
	case optKey{unix.SOL_SOCKET, soDevmemAutorelease}:
		if e.conn != nil {
			if err := e.conn.SetAutorelease(v != 0); err != nil {
				return -1, err
			}
		}
	case optKey{unix.IPPROTO_IPV6, unix.IPV6_V6ONLY}:
		if e.fam != unix.AF_INET6 {
			return -1, unix.ENOPROTOOPT
		}
		return -1, unix.EINVAL // bound already (the kernel refuses it then)
	}
	e.opts[k] = int32(v)
	return 0, nil
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// dontNeed is SO_DEVMEM_DONTNEED with sock_devmem_dontneed's checks: the
// option length first, then the copy, then the tokens.
func (e *esock) dontNeed(val UPtr, vlen int) (int, error) {
	e.mu.Lock()
	conn := e.conn
	e.mu.Unlock()
	if err := devmemapi.CheckDontNeedLen(vlen); err != nil {
		return -1, err
	}
	var buf [devmemapi.MaxDontNeedTokens * devmemapi.SizeofDmabufToken]byte
	b := buf[:vlen]
	if err := CopyIn(b, val); err != nil {
		return -1, err
	}
	if conn == nil {
		// A socket that never received devmem data has no tokens: the
		// kernel finds none to free.
		if _, err := devmemapi.ParseTokens(nil, b); err != nil {
			return -1, err
		}
		return 0, nil
	}
	n, err := conn.DontNeedOpt(b)
	if err != nil {
		var de *devmemerr.Error
		if errors.As(err, &de) {
			return -1, de.Errno
		}
		return -1, err
	}
	return n, nil
}

// Getsockopt is getsockopt(2) on an emulated socket.
func (l *Lib) Getsockopt(fd, level, name int, val, lenp UPtr) (int, error) {
	e, ok := l.get(fd, KindEmu).(*esock)
	if !ok {
		return -1, unix.EBADF
	}
	n, err := ReadU32(lenp)
	if err != nil {
		return -1, err
	}
	if int32(n) < 0 {
		return -1, unix.EINVAL
	}
	put := func(b []byte) (int, error) {
		if err := CopyOut(val, b[:min(int(n), len(b))]); err != nil {
			return -1, err
		}
		return 0, WriteU32(lenp, uint32(min(int(n), len(b))))
	}
	putInt := func(v int32) (int, error) {
		var b [4]byte
		binary.NativeEndian.PutUint32(b[:], uint32(v))
		return put(b[:])
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	k := optKey{int32(level), int32(name)}
	switch {
	case level == unix.SOL_SOCKET && name == unix.SO_TYPE:
		return putInt(unix.SOCK_STREAM)
	case level == unix.SOL_SOCKET && name == unix.SO_DOMAIN:
		return putInt(int32(e.fam))
	case level == unix.SOL_SOCKET && name == unix.SO_PROTOCOL:
		return putInt(unix.IPPROTO_TCP)
	case level == unix.SOL_SOCKET && name == unix.SO_ACCEPTCONN:
		return putInt(map[bool]int32{true: 1}[e.state == stListening])
	case level == unix.SOL_SOCKET && name == unix.SO_ERROR:
		err := e.soErr
		e.soErr = nil
		return putInt(int32(Errno(err)))
	case level == unix.SOL_SOCKET && name == unix.SO_BINDTODEVICE:
		return put(append([]byte(e.bindDev), 0))
	case level == unix.SOL_SOCKET && (name == unix.SO_RCVTIMEO_NEW || name == unix.SO_RCVTIMEO_OLD):
		return put(timeoTimeval(e.rcvTimeo))
	case level == unix.SOL_SOCKET && (name == unix.SO_SNDTIMEO_NEW || name == unix.SO_SNDTIMEO_OLD):
		return put(timeoTimeval(e.sndTimeo))
	case level == unix.SOL_SOCKET && name == unix.SO_LINGER:
		return put(e.linger.get())
	case level == unix.SOL_SOCKET && name == unix.SO_ZEROCOPY:
		return putInt(e.opts[k])
	case level == unix.SOL_SOCKET && name == soDevmemAutorelease:
		if e.conn != nil && e.conn.Autorelease() {
			return putInt(1)
		}
		return putInt(e.opts[k])
	case k == optKey{unix.IPPROTO_IPV6, unix.IPV6_V6ONLY} && e.fam == unix.AF_INET6:
		return putInt(e.opts[k])
	case intOpts[k]:
		if int(n) < 0 {
			return -1, unix.EINVAL
		}
		return putInt(e.opts[k])
	}
	return -1, unix.ENOPROTOOPT
}

// Sockname is getsockname(2) (peer false) and getpeername(2).
func (l *Lib) Sockname(fd int, peer bool, sap, lenp UPtr) (int, error) {
	e, ok := l.get(fd, KindEmu).(*esock)
	if !ok {
		return -1, unix.EBADF
	}
	e.mu.Lock()
	local, state := e.local, e.state
	ra := e.peer()
	if e.tx != nil {
		local = tcpAddrPort(e.tx.LocalAddr())
	}
	e.mu.Unlock()
	if peer {
		if state != stConnected {
			return -1, unix.ENOTCONN
		}
		return 0, putSockaddr(sap, lenp, encodeSockaddr(e.fam, ra))
	}
	return 0, putSockaddr(sap, lenp, encodeSockaddr(e.fam, local))
}

// Shutdown is shutdown(2) on an emulated socket.
func (l *Lib) Shutdown(fd, how int) (int, error) {
	e, ok := l.get(fd, KindEmu).(*esock)
	if !ok {
		return -1, unix.EBADF
	}
	if how < unix.SHUT_RD || how > unix.SHUT_RDWR {
		return -1, unix.EINVAL
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var err error
	switch {
	case e.conn != nil:
		err = e.conn.Shutdown(how)
	case e.tx != nil:
		if how != unix.SHUT_RD {
			err = e.tx.CloseWrite()
		}
	case e.ln != nil && how != unix.SHUT_WR:
		e.ln.Close()
		e.ln = nil
		e.state = stBound
		return 0, nil
	default:
		return -1, unix.ENOTCONN
	}
	e.syncLocked()
	if err != nil {
		return -1, err
	}
	return 0, nil
}

// Fcntl serves F_GETFL and F_SETFL on an emulated socket (its O_NONBLOCK
// is the library's); other commands go to the kernel.
func (l *Lib) Fcntl(fd, cmd int, arg uintptr) (int, error) {
	e, ok := l.get(fd, KindEmu).(*esock)
	if !ok {
		return Pass, nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	switch cmd {
	case unix.F_GETFL:
		fl := unix.O_RDWR
		if e.nonblock {
			fl |= unix.O_NONBLOCK
		}
		return fl, nil
	case unix.F_SETFL:
		e.nonblock = int(arg)&unix.O_NONBLOCK != 0
		return 0, nil
	}
	return Pass, nil
}

// fionbio is FIONBIO (asm-generic/ioctls.h).
const fionbio = 0x5421

// ioctl serves FIONBIO, FIONREAD (SIOCINQ) and SIOCOUTQ; interface
// requests (SIOCGIF*) run on a kernel socket; anything else is ENOTTY.
func (e *esock) ioctl(req uint, arg UPtr) (int, error) {
	switch req {
	case fionbio:
		v, err := ReadU32(arg)
		if err != nil {
			return -1, err
		}
		e.mu.Lock()
		e.nonblock = v != 0
		e.mu.Unlock()
		return 0, nil
	case unix.SIOCINQ:
		e.mu.Lock()
		conn, state := e.conn, e.state
		e.mu.Unlock()
		if state == stListening {
			return -1, unix.EINVAL
		}
		q := 0
		if conn != nil {
			q = conn.Queued()
		}
		return 0, WriteU32(arg, uint32(q))
	case unix.SIOCOUTQ:
		return 0, WriteU32(arg, 0)
	}
	if req>>8 == 0x89 { // SIOCGIF*, SIOCETHTOOL ...: the device, not the socket
		s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return -1, err
		}
		defer unix.Close(s)
		r, _, en := unix.Syscall(unix.SYS_IOCTL, uintptr(s), uintptr(req), uintptr(arg))
		if en != 0 {
			return -1, en
		}
		return int(r), nil
	}
	return -1, unix.ENOTTY
}

// tcpAddrPort is a *net.TCPAddr's address and port, unmapped.
func tcpAddrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// SO_RCVTIMEO and SO_SNDTIMEO are kept as the kernel keeps them: in
// jiffies (sock_set_timeout), -1 standing for MAX_SCHEDULE_TIMEOUT (no
// timeout, the default) and 0 for a negative time (the call never waits).

var jiffyOnce sync.Once
var jiffyUS int64 = 1000

// jiffy returns the running kernel's jiffy in microseconds, as a kernel
// socket shows it: SO_RCVTIMEO of 1 µs reads back as one jiffy.
func jiffy() int64 {
	jiffyOnce.Do(func() {
		s, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return
		}
		defer unix.Close(s)
		if unix.SetsockoptTimeval(s, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 1}) != nil {
			return
		}
		if tv, err := unix.GetsockoptTimeval(s, unix.SOL_SOCKET, unix.SO_RCVTIMEO); err == nil && tv.Usec > 0 && tv.Sec == 0 {
			jiffyUS = int64(tv.Usec)
		}
	})
	return jiffyUS
}

// timeoJiffies is sock_set_timeout: a usec out of range is EDOM, a
// negative sec 0 jiffies, 0.0 no timeout, else rounded up to jiffies.
func timeoJiffies(sec, usec int64) (int64, error) {
	if usec < 0 || usec >= 1e6 {
		return 0, unix.EDOM
	}
	if sec < 0 {
		return 0, nil
	}
	if sec == 0 && usec == 0 {
		return -1, nil
	}
	j := jiffy()
	hz := 1e6 / j
	if sec >= math.MaxInt64/hz-1 { // MAX_SCHEDULE_TIMEOUT / HZ - 1
		return -1, nil
	}
	return sec*hz + (usec+j-1)/j, nil
}

// timeoTimeval is sock_get_timeout: the timeval of j jiffies.
func timeoTimeval(j int64) []byte {
	var b [16]byte
	if j > 0 {
		hz := 1e6 / jiffy()
		binary.NativeEndian.PutUint64(b[:], uint64(j/hz))
		binary.NativeEndian.PutUint64(b[8:], uint64(j%hz*jiffy()))
	}
	return b[:]
}

// timeoDuration is how long a call may wait: ok false for no timeout,
// and for one too long for a time.Duration (centuries: the kernel keeps
// times up to ~2^63 jiffies), which would wrap.
func timeoDuration(j int64) (time.Duration, bool) {
	if j < 0 || j > math.MaxInt64/int64(time.Microsecond)/jiffy() {
		return 0, false
	}
	return time.Duration(j*jiffy()) * time.Microsecond, true
}

// lingerOpt is SO_LINGER as sk_setsockopt keeps it: the SOCK_LINGER flag
// and sk_lingertime in jiffies, -1 standing for MAX_SCHEDULE_TIMEOUT as in
// SO_RCVTIMEO's (timeoJiffies, timeoDuration). Turning it off keeps the
// time.
type lingerOpt struct {
	on      bool
	jiffies int64
}

// set is sk_setsockopt's SO_LINGER with struct linger {onoff, secs}: a
// negative secs is a huge unsigned one, hence MAX_SCHEDULE_TIMEOUT.
func (l *lingerOpt) set(onoff, secs int32) {
	if onoff == 0 {
		l.on = false
		return
	}
	hz := 1e6 / jiffy()
	if t := uint64(int64(secs)); t >= uint64(math.MaxInt64/hz) {
		l.jiffies = -1
	} else {
		l.jiffies = int64(t) * hz
	}
	l.on = true
}

// get is sk_getsockopt's SO_LINGER: onoff 0 or 1, and the time in seconds
// as the kernel's int conversion leaves it.
func (l *lingerOpt) get() []byte {
	var b [8]byte
	if l.on {
		binary.NativeEndian.PutUint32(b[:], 1)
	}
	j := l.jiffies
	if j < 0 {
		j = math.MaxInt64
	}
	binary.NativeEndian.PutUint32(b[4:], uint32(j/(1e6/jiffy())))
	return b[:]
}

// wait is how long close(2) may wait on the socket: ok false for no bound.
func (l lingerOpt) wait() (time.Duration, bool) { return timeoDuration(l.jiffies) }

// apply sets the option on the stack's side of a socket, whose Close then
// resets (no time) or waits (a time) as tcp_close does.
func (l lingerOpt) apply(c interface{ SetLinger(bool, time.Duration) }) {
	d, ok := l.wait()
	if !ok {
		d = math.MaxInt64
	}
	c.SetLinger(l.on, d)
}

// kernelLinger reads SO_LINGER off the kernel socket fd (set before the
// library took it over).
func kernelLinger(fd int) lingerOpt {
	var l lingerOpt
	if v, err := unix.GetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER); err == nil {
		l.set(1, v.Linger)
		l.on = v.Onoff != 0
	}
	return l
}

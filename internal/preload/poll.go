package preload

import (
	"encoding/binary"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/stack"
)

// Readiness of emulated sockets for poll, ppoll, select, pselect and epoll
// (see sock.go for the socketpair that carries it to the kernel).

// POLLRDNORM and POLLWRNORM (asm-generic/poll.h).
const (
	pollRdNorm = 0x040
	pollWrNorm = 0x100
)

// readiness is the socket's poll bits. e.mu must be held.
func (e *esock) readiness() uint32 {
	switch {
	case e.ln != nil:
		return e.ln.Readiness()
	case e.conn != nil:
		return e.conn.Readiness()
	case e.tx != nil:
		return e.tx.Readiness()
	case e.state == stConnecting:
		return 0
	case e.soErr != nil:
		return stack.PollErr | stack.PollHUp | stack.PollOut
	}
	return stack.PollOut | stack.PollHUp // a socket neither listening nor connected
}

// notify is the stack's callback: the socket's readiness may have
// changed. It moves the event word that blocked receives sleep on (see
// Recv) and, if the socket is polled, queues it for the syncer.
func (e *esock) notify() {
	if e.b < MaxFD {
		e.l.host.Wake(e.b)
	}
	if e.armed.Load() && e.dirty.CompareAndSwap(false, true) {
		select {
		case e.l.sync <- e:
		default:
			go func() { e.l.sync <- e }()
		}
	}
}

// syncer mirrors queued sockets' readiness into their socketpairs.
func (l *Lib) syncer() {
	for e := range l.sync {
		e.dirty.Store(false)
		e.mu.Lock()
		e.syncLocked()
		e.mu.Unlock()
	}
}

// arm starts mirroring the socket's readiness (it is being polled).
func (e *esock) arm() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.armed.Load() {
		return
	}
	e.armed.Store(true)
	switch {
	case e.ln != nil:
		e.ln.SetNotify(e.notify)
	case e.conn != nil:
		e.conn.SetNotify(e.notify)
	case e.tx != nil:
		e.tx.SetNotify(e.notify)
	}
	e.syncLocked()
}

// syncLocked makes the socketpair show the readiness: a byte in A for
// readable (or an error to report), A's buffer full for not writable, B
// shut down for end of stream and hang-up. e.mu must be held.
func (e *esock) syncLocked() {
	if !e.armed.Load() || e.state == stClosed {
		return
	}
	r := e.readiness()
	var one [1]byte
	if want := r&(stack.PollIn|stack.PollErr) != 0; want != e.rsig {
		if want {
			if _, err := unix.Write(e.b, one[:]); err == nil {
				e.rsig = true
			}
		} else if _, err := unix.Read(e.a, one[:]); err == nil || err == unix.EAGAIN {
			e.rsig = false
		}
	}
	if want := r&stack.PollOut == 0; want != e.wfull {
		if want {
			var fill [4096]byte
			for i := 0; i < 64; i++ {
				if _, err := unix.Write(e.a, fill[:]); err != nil {
					break
				}
			}
			e.wfull = true
		} else {
			var drain [16384]byte
			for {
				if _, err := unix.Read(e.b, drain[:]); err != nil {
					break
				}
			}
			e.wfull = false
		}
	}
	if r&(stack.PollRdHUp|stack.PollHUp) != 0 && !e.rdhup {
		unix.Shutdown(e.b, unix.SHUT_WR)
		e.rdhup = true
	}
	if r&stack.PollHUp != 0 && !e.hup {
		unix.Shutdown(e.b, unix.SHUT_RDWR)
		e.hup = true
	}
}

// revents is what poll reports for the socket given the requested
// events: POLLERR and POLLHUP always, the rest as asked.
func (e *esock) revents(events uint32) uint32 {
	e.mu.Lock()
	r := e.readiness()
	e.mu.Unlock()
	var out uint32
	if r&stack.PollIn != 0 {
		out |= unix.POLLIN | pollRdNorm
	}
	if r&stack.PollOut != 0 {
		out |= unix.POLLOUT | pollWrNorm
	}
	out |= r & (stack.PollErr | stack.PollHUp | stack.PollRdHUp)
	return out & (events | unix.POLLERR | unix.POLLHUP)
}

// deadline turns a timeout in ns (negative: none) into a time.
func deadline(ns int64) (time.Time, bool) {
	if ns < 0 {
		return time.Time{}, false
	}
	return time.Now().Add(time.Duration(ns)), true
}

// remaining is the time left as a timespec for the kernel (nil: none).
func remaining(dl time.Time, has bool) *unix.Timespec {
	if !has {
		return nil
	}
	d := max(time.Until(dl), 0)
	ts := unix.NsecToTimespec(d.Nanoseconds())
	return &ts
}

func readSigmask(p UPtr) (*unix.Sigset_t, error) {
	if p == 0 {
		return nil, nil
	}
	var b [8]byte
	if err := CopyIn(b[:], p); err != nil {
		return nil, err
	}
	var s unix.Sigset_t
	s.Val[0] = binary.NativeEndian.Uint64(b[:])
	return &s, nil
}

// Poll is poll(2) and ppoll(2) (and select, which the C side turns into
// poll) over a set with at least one emulated socket.
func (l *Lib) Poll(fdsp UPtr, n uint64, timeoutNs int64, sigmaskp UPtr) (int, error) {
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil && n > rl.Cur {
		return -1, unix.EINVAL
	}
	buf := make([]byte, n*sizeofPollfd)
	if err := CopyIn(buf, fdsp); err != nil {
		return -1, err
	}
	mask, err := readSigmask(sigmaskp)
	if err != nil {
		return -1, err
	}
	fds := make([]unix.PollFd, n)
	emu := make([]*esock, n)
	want := make([]uint32, n)
	for i := range fds {
		fds[i].Fd = int32(binary.NativeEndian.Uint32(buf[i*8:]))
		fds[i].Events = int16(binary.NativeEndian.Uint16(buf[i*8+4:]))
		if e, ok := l.get(int(fds[i].Fd), KindEmu).(*esock); ok {
			emu[i], want[i] = e, uint32(uint16(fds[i].Events))
			e.arm()
			fds[i].Events |= unix.POLLIN // the wake-up byte
		}
	}
	dl, has := deadline(timeoutNs)
	for {
		ready := false
		for i, e := range emu {
			if e != nil && e.revents(want[i]) != 0 {
				ready = true
			}
		}
		ts := remaining(dl, has)
		if ready {
			ts = &unix.Timespec{}
		}
		_, err := unix.Ppoll(fds, ts, mask)
		if err != nil {
			return -1, err
		}
		count, spurious := 0, false
		for i := range fds {
			if e := emu[i]; e != nil {
				spurious = spurious || fds[i].Revents != 0
				fds[i].Revents = int16(e.revents(want[i]))
			}
			if fds[i].Revents != 0 {
				count++
			}
		}
		if count == 0 && spurious {
			// The socket's byte says readable (or an error) but the
			// program asked for neither: wait a little, not in a spin.
			time.Sleep(time.Millisecond)
		}
		if count > 0 || (has && !time.Now().Before(dl)) {
			for i := range fds {
				binary.NativeEndian.PutUint16(buf[i*8+6:], uint16(fds[i].Revents))
			}
			if err := CopyOut(fdsp, buf); err != nil {
				return -1, err
			}
			return count, nil
		}
	}
}

// epollSet is the library's record of an epoll fd's emulated members.
type epollSet struct {
	mu     sync.Mutex
	byData map[uint64]*epollReg
	byFD   map[int]*epollReg
}

type epollReg struct {
	fd     int
	e      *esock
	events uint32
	data   uint64
}

func (s *epollSet) close() {}

func (l *Lib) epollSetOf(epfd int, create bool) *epollSet {
	if v, ok := l.epoll.Load(epfd); ok {
		return v.(*epollSet)
	}
	if !create {
		return nil
	}
	v, _ := l.epoll.LoadOrStore(epfd, &epollSet{byData: map[uint64]*epollReg{}, byFD: map[int]*epollReg{}})
	l.host.SetKind(epfd, KindEpoll)
	return v.(*epollSet)
}

// forgetEpoll drops fd from every epoll set (it was closed).
func (l *Lib) forgetEpoll(fd int) {
	l.epoll.Range(func(_, v any) bool {
		s := v.(*epollSet)
		s.mu.Lock()
		if r := s.byFD[fd]; r != nil {
			delete(s.byFD, fd)
			delete(s.byData, r.data)
		}
		s.mu.Unlock()
		return true
	})
}

// EpollCtl is epoll_ctl(2) for an emulated socket: the kernel watches its
// socketpair end (for POLLIN too, the wake-up byte) and the library
// remembers what the program asked for.
func (l *Lib) EpollCtl(epfd, op, fd int, evp UPtr) (int, error) {
	e, ok := l.get(fd, KindEmu).(*esock)
	if !ok {
		return Pass, nil
	}
	var ev unix.EpollEvent
	var events uint32
	var data uint64
	if op != unix.EPOLL_CTL_DEL {
		var b [sizeofEpollEv]byte
		if err := CopyIn(b[:], evp); err != nil {
			return -1, err
		}
		events = binary.NativeEndian.Uint32(b[:])
		data = binary.NativeEndian.Uint64(b[4:])
		ev.Events = events | unix.EPOLLIN
		*(*uint64)(unsafe.Pointer(&ev.Fd)) = data
	}
	if err := unix.EpollCtl(epfd, op, fd, &ev); err != nil {
		return -1, err
	}
	s := l.epollSetOf(epfd, true)
	s.mu.Lock()
	if r := s.byFD[fd]; r != nil {
		delete(s.byData, r.data)
		delete(s.byFD, fd)
	}
	if op != unix.EPOLL_CTL_DEL {
		r := &epollReg{fd: fd, e: e, events: events, data: data}
		s.byFD[fd], s.byData[data] = r, r
	}
	s.mu.Unlock()
	if op != unix.EPOLL_CTL_DEL {
		e.arm()
	}
	l.logf("epoll_ctl(%d, %d, %d, %#x)", epfd, op, fd, events)
	return 0, nil
}

// EpollWait is epoll_wait(2) and epoll_pwait(2) on an epoll fd that
// watches emulated sockets: their events are the library's, and a wake-up
// that leaves nothing to report waits again.
func (l *Lib) EpollWait(epfd int, evp UPtr, max int, timeoutNs int64, sigmaskp UPtr) (int, error) {
	if max <= 0 || max > 1<<20 {
		return -1, unix.EINVAL
	}
	if uintptr(evp)+uintptr(max*sizeofEpollEv) > maxUser { // access_ok; NULL passes it
		return -1, unix.EFAULT
	}
	mask, err := readSigmask(sigmaskp)
	if err != nil {
		return -1, err
	}
	s := l.epollSetOf(epfd, false)
	evs := make([]unix.EpollEvent, max)
	dl, has := deadline(timeoutNs)
	for {
		ms := -1
		if has {
			ms = int((max64(time.Until(dl), 0) + time.Millisecond - 1) / time.Millisecond)
		}
		var n int
		var err error
		if mask != nil {
			r, _, en := unix.Syscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&evs[0])), uintptr(max),
				uintptr(ms), uintptr(unsafe.Pointer(mask)), 8)
			n = int(r)
			if en != 0 {
				err = en
			}
		} else {
			n, err = unix.EpollWait(epfd, evs, ms)
		}
		if err != nil {
			return -1, err
		}
		out := evs[:0]
		for _, ev := range evs[:n] {
			data := *(*uint64)(unsafe.Pointer(&ev.Fd))
			if s != nil {
				s.mu.Lock()
				r := s.byData[data]
				s.mu.Unlock()
				if r != nil {
					got := r.e.revents(r.events)
					if got == 0 {
						if r.events&unix.EPOLLONESHOT != 0 {
							// The kernel disabled the registration
							// for a wake-up the program did not ask
							// for: enable it again.
							re := unix.EpollEvent{Events: r.events | unix.EPOLLIN}
							*(*uint64)(unsafe.Pointer(&re.Fd)) = r.data
							unix.EpollCtl(epfd, unix.EPOLL_CTL_MOD, r.fd, &re)
						}
						continue
					}
					ev.Events = got
				}
			}
			out = append(out, ev)
		}
		if len(out) == 0 && n > 0 {
			time.Sleep(time.Millisecond) // only wake-ups the program did not ask for
			if has && !time.Now().Before(dl) {
				return 0, nil
			}
			continue
		}
		{
			b := make([]byte, len(out)*sizeofEpollEv)
			for i, ev := range out {
				binary.NativeEndian.PutUint32(b[i*12:], ev.Events)
				binary.NativeEndian.PutUint64(b[i*12+4:], *(*uint64)(unsafe.Pointer(&ev.Fd)))
			}
			if err := CopyOut(evp, b); err != nil {
				return -1, err
			}
			return len(out), nil
		}
	}
}

func max64(a, b time.Duration) time.Duration {
	if a > b {
		return a
	}
	return b
}

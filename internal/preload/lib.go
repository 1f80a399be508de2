package preload

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat"
)

// Kind is what an fd is to the library (cmd/libxdevmem/xd.h, XD_*).
type Kind int

// The kinds.
const (
	KindPlain   Kind = 0 // every call goes to libc
	KindTCP     Kind = 1 // a kernel TCP socket that bind or connect may emulate
	KindEmu     Kind = 2 // an emulated TCP socket
	KindGenl    Kind = 3 // a generic netlink socket
	KindUdmabuf Kind = 4 // the stand-in for /dev/udmabuf
	KindDmabuf  Kind = 5 // a dmabuf
	KindEpoll   Kind = 6 // an epoll fd that watches an emulated socket
)

// States of the library (XD_* in xd.h).
const (
	StateActive = 1
	StateInert  = 2
)

// Pass is what a handler returns to send the call on to libc (XD_PASS).
const Pass = -4096

// MaxFD bounds the fds the library emulates (XD_MAXFD).
const MaxFD = 65536

// Wait, returned by Recv with a Waiter filled in, asks the caller to wait
// for the Waiter's event word to move and call Recv again (XD_WAIT).
const Wait = -4097

// Host is the C side: the fd kinds and the state its interposers read,
// and the event words its blocked receives sleep on.
type Host interface {
	// SetKind records fd's kind.
	SetKind(fd int, k Kind)
	// SetState changes the library's state (StateActive, StateInert).
	SetState(state int)
	// Seq reads event word slot (0 <= slot < MaxFD).
	Seq(slot int) uint32
	// Wake moves event word slot and wakes the threads sleeping on it.
	Wake(slot int)
	// SetLingering says whether the socket of event word slot is closing
	// with SO_LINGER on and a time: close(2) sleeps on the word while it
	// is (see Lib.Close).
	SetLingering(slot int, on bool)
}

// Waiter is where a blocking receive that found nothing to read tells the
// C side what to sleep on: event word Slot, as it was (Seq) before the
// receive looked. Whatever might make the receive succeed moves the word.
type Waiter struct {
	Slot int
	Seq  uint32
	// Timeout is how long the receive may wait in all, in nanoseconds
	// (SO_RCVTIMEO), -1 without a bound; past it the receive fails EAGAIN.
	Timeout int64
}

// Config is the library's environment.
type Config struct {
	// Debug logs every call the library handles to stderr
	// (XDEVMEM_DEBUG=1).
	Debug bool
	// Backend is XDEVMEM_BACKEND: auto (""), kernel or emulated; an
	// unknown name is auto.
	Backend compat.Backend
}

// ConfigFromEnv reads XDEVMEM_DEBUG and XDEVMEM_BACKEND.
func ConfigFromEnv() Config {
	d := os.Getenv("XDEVMEM_DEBUG")
	return Config{Debug: d != "" && d != "0", Backend: backendFromEnv()}
}

// object is what fds name: a udmabuf device, a dmabuf, a netlink socket,
// an emulated socket or an epoll set. Each counts the fds that name it.
type object interface {
	// release drops one fd's reference; the last one frees the object.
	release()
	// retain adds one.
	retain()
}

// refs is the reference count objects embed.
type refs struct{ n atomic.Int32 }

func (r *refs) retain() { r.n.Add(1) }

// drop reports whether the last reference went.
func (r *refs) drop() bool { return r.n.Add(-1) == 0 }

// Lib is the library's state: the fd table, the emulated NICs and their
// stacks. Its methods are the interposed calls; they may run on any
// thread, concurrently.
type Lib struct {
	host  Host
	cfg   Config
	fds   [MaxFD]atomic.Pointer[fdRef]
	mu    sync.Mutex   // guards nics and the NICs' state
	nics  map[int]*nic // by ifindex
	inert atomic.Bool  // the kernel backend serves the program
	once  sync.Once    // the backend choice
	epoll sync.Map     // epfd → *epollSet
	sync  chan *esock  // sockets whose readiness changed (syncer)
	logMu sync.Mutex
}

// fdRef ties an fd number to an object.
type fdRef struct {
	obj  object
	kind Kind
}

// New returns the library's state. It starts the goroutine that keeps
// emulated sockets' readiness visible to poll and epoll.
func New(host Host, cfg Config) *Lib {
	l := &Lib{host: host, cfg: cfg, nics: map[int]*nic{}, sync: make(chan *esock, 4096)}
	if cfg.Backend == compat.BackendKernel {
		l.inert.Store(true)
	}
	go l.syncer()
	return l
}

// State is the library's state for the C side: inert when
// XDEVMEM_BACKEND=kernel, else active (auto decides on the first devmem
// call; see choose).
func (l *Lib) State() int {
	if l.inert.Load() {
		return StateInert
	}
	return StateActive
}

// choose settles XDEVMEM_BACKEND=auto on the first devmem call: when the
// kernel's own devmem works on an interface of this namespace, the
// library gets out of the way (every call then goes to the kernel) and
// reports so; otherwise it emulates. It reports whether to emulate.
func (l *Lib) choose() bool {
	l.once.Do(func() {
		switch l.cfg.Backend {
		case compat.BackendKernel:
			l.inert.Store(true)
		case compat.BackendEmulated:
		default:
			ifs, err := net.Interfaces()
			if err != nil {
				return
			}
			for _, ifc := range ifs {
				if ifc.Flags&net.FlagLoopback != 0 {
					continue
				}
				r, err := compat.Env{CallerDmabuf: true}.Probe(ifc.Name)
				if err == nil && r.Supported() {
					l.logf("backend kernel: devmem works on %s (%s)", ifc.Name, r.Reason())
					l.inert.Store(true)
					return
				}
			}
		}
	})
	if l.inert.Load() {
		l.host.SetState(StateInert)
		return false
	}
	return true
}

// Debug reports whether XDEVMEM_DEBUG=1 asked for a log of the calls.
func (l *Lib) Debug() bool { return l.cfg.Debug }

// Trace logs one call the library served (XDEVMEM_DEBUG=1): its name,
// fd, result and errno.
func (l *Lib) Trace(call string, fd int, r int64, err error) {
	if r == Pass {
		l.logf("%s(%d) -> libc", call, fd)
		return
	}
	if err != nil {
		l.logf("%s(%d) = -1 %s", call, fd, unix.ErrnoName(unix.Errno(Errno(err))))
		return
	}
	l.logf("%s(%d) = %d", call, fd, r)
}

// Logf writes a debug line as the call log does (XDEVMEM_DEBUG=1).
func (l *Lib) Logf(format string, args ...any) { l.logf(format, args...) }

// logf writes a debug line (XDEVMEM_DEBUG=1) to stderr with a raw write,
// so that the application's stdio buffers are not involved.
func (l *Lib) logf(format string, args ...any) {
	if !l.cfg.Debug {
		return
	}
	s := "libxdevmem: " + fmt.Sprintf(format, args...)
	if !strings.HasSuffix(s, "\n") {
		s += "\n"
	}
	l.logMu.Lock()
	unix.Write(2, []byte(s))
	l.logMu.Unlock()
}

// get returns the object fd names, if it is kind k.
func (l *Lib) get(fd int, k Kind) object {
	if fd < 0 || fd >= MaxFD {
		return nil
	}
	r := l.fds[fd].Load()
	if r == nil || r.kind != k {
		return nil
	}
	return r.obj
}

// install makes fd name obj (taking a reference) and tells the C side.
func (l *Lib) install(fd int, k Kind, obj object) {
	obj.retain()
	if old := l.fds[fd].Swap(&fdRef{obj: obj, kind: k}); old != nil {
		old.obj.release()
	}
	l.host.SetKind(fd, k)
}

// Close forgets fd (close(2) and the target of dup2). The C side has
// cleared its kind already.
//
// When fd was the last of an emulated socket whose SO_LINGER is on with a
// time, the socket closes in the background and Close returns the event
// word the caller sleeps on (Host.SetLingering) and for how long at most,
// in nanoseconds (-1: no bound); else slot is -1.
func (l *Lib) Close(fd int) (slot int, timeout int64) {
	if fd < 0 || fd >= MaxFD {
		return -1, 0
	}
	slot = -1
	if r := l.fds[fd].Swap(nil); r != nil {
		l.logf("close(%d) %s", fd, kindName(r.kind))
		if k := r.kind; k == KindEmu {
			l.forgetEpoll(fd)
		}
		if e, ok := r.obj.(*esock); ok {
			slot, timeout = e.closeLingering()
		} else {
			r.obj.release()
		}
	}
	if v, ok := l.epoll.LoadAndDelete(fd); ok {
		v.(*epollSet).close()
	}
	return slot, timeout
}

// Dup makes newfd name what oldfd names (dup, dup2, dup3, F_DUPFD).
func (l *Lib) Dup(oldfd, newfd int) {
	if oldfd < 0 || oldfd >= MaxFD || newfd < 0 || newfd >= MaxFD {
		return
	}
	r := l.fds[oldfd].Load()
	if r == nil {
		// A kernel TCP or netlink socket the Go side never looked at:
		// only its kind travels.
		return
	}
	l.logf("dup(%d) -> %d", oldfd, newfd)
	l.install(newfd, r.kind, r.obj)
}

func kindName(k Kind) string {
	switch k {
	case KindTCP:
		return "tcp"
	case KindEmu:
		return "emulated socket"
	case KindGenl:
		return "genetlink"
	case KindUdmabuf:
		return "udmabuf"
	case KindDmabuf:
		return "dmabuf"
	case KindEpoll:
		return "epoll"
	}
	return "plain"
}

// Errno extracts the errno of err for the C side (EIO when it holds none).
func Errno(err error) int {
	if err == nil {
		return 0
	}
	// The usual chain first (an errno under %w wrappers), without the
	// reflection of errors.As: EAGAIN on an empty socket comes this way.
	for e := err; e != nil; {
		if en, ok := e.(syscall.Errno); ok {
			return int(en)
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			break
		}
		e = u.Unwrap()
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		return int(en)
	}
	if errors.Is(err, net.ErrClosed) {
		return int(unix.EBADF)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return int(unix.EAGAIN)
	}
	return int(unix.EIO)
}

// backendFromEnv reads XDEVMEM_BACKEND; an unknown name falls back to auto
// (the library must not fail the program it is loaded into).
func backendFromEnv() compat.Backend {
	b, err := compat.ParseBackend(os.Getenv("XDEVMEM_BACKEND"))
	if err != nil {
		return compat.BackendAuto
	}
	return b
}

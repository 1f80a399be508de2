// Command libxdevmem is xdevmem as a shared library for unmodified C
// programs: built with
//
//	go build -buildmode=c-shared -o libxdevmem.so ./cmd/libxdevmem
//
// and loaded with LD_PRELOAD=libxdevmem.so, it puts the emulated devmem
// stack inside a program that uses the kernel's devmem uAPI (such as the
// kernel's own ncdevmem), without changing the program or its output.
//
// The C side (interpose.c) exports libc's entry points of that uAPI —
// open of /dev/udmabuf, ioctl, mmap, socket calls, poll, select, epoll,
// system and popen — and passes every call that is not about a devmem
// object to libc. This file turns the rest into calls of package
// internal/preload, which holds the logic. XDEVMEM_DEBUG=1 logs what the
// library does to stderr; XDEVMEM_BACKEND=auto|kernel|emulated chooses the
// backend as for the xdevmem command (kernel: the library stays out of the
// way).
package main

/*
#cgo CFLAGS: -O2 -Wall -Wno-unused-function -Wno-maybe-uninitialized
#cgo LDFLAGS: -ldl
#include <stdint.h>
#include <stdlib.h>
#include "xd.h"
*/
import "C"

import (
	"math"
	"os"
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/internal/preload"
)

// host is the C side as package preload sees it.
type host struct{}

func (host) SetKind(fd int, k preload.Kind) { C.xd_set_kind(C.int(fd), C.int(k)) }

func (host) SetState(s int) { C.xd_set_state(C.int(s)) }

// futexWakePrivate is FUTEX_WAKE | FUTEX_PRIVATE_FLAG (linux/futex.h).
const futexWakePrivate = 1 | 128

// seqWord is event word slot of the C side (xd_seq).
func seqWord(slot int) *uint32 { return (*uint32)(unsafe.Pointer(&C.xd_seq[slot])) }

// SetLingering sets or clears xd_linger[slot] (see preload.Host).
func (host) SetLingering(slot int, on bool) {
	var v uint32
	if on {
		v = 1
	}
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&C.xd_linger[slot])), v)
}

// Seq reads event word slot without its sleeper bit.
func (host) Seq(slot int) uint32 { return atomic.LoadUint32(seqWord(slot)) &^ C.XD_SLEEPER }

// Wake is the waker's half of an event count (interpose.c's wait_event
// is the sleeper's): count an event and clear the sleeper bit in one
// step, then wake the sleepers if the bit was set.
func (host) Wake(slot int) {
	w := seqWord(slot)
	for {
		old := atomic.LoadUint32(w)
		if atomic.CompareAndSwapUint32(w, old, (old+2)&^C.XD_SLEEPER) {
			if old&C.XD_SLEEPER != 0 {
				unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(w)), futexWakePrivate, math.MaxInt32, 0, 0, 0)
			}
			return
		}
	}
}

var lib *preload.Lib

// trace logs a served call with XDEVMEM_DEBUG=1.
func trace(call string, fd int, r int64, err error) {
	if lib.Debug() {
		lib.Trace(call, fd, r, err)
	}
}

// ret turns a handler's result into the C convention: the value, or -1
// with the errno in *errp; preload.Pass passes through.
func ret(r int, err error, errp *C.int) C.int {
	if r == preload.Pass {
		return C.XD_PASS
	}
	if err != nil {
		*errp = C.int(preload.Errno(err))
		return -1
	}
	return C.int(r)
}

func ret64(r int64, err error, errp *C.int) C.longlong {
	if r == preload.Pass {
		return C.XD_PASS
	}
	if err != nil {
		*errp = C.int(preload.Errno(err))
		return -1
	}
	return C.longlong(r)
}

//export xdgo_init
func xdgo_init() C.int {
	lib = preload.New(host{}, preload.ConfigFromEnv())
	if lib.Debug() {
		C.xd_set_debug(1)
	}
	addProc()
	return C.int(lib.State())
}

// addProc gives the application's threads a P of their own. Each
// emulated call is a cgo callback, and a callback runs Go code only on a
// P: with the default GOMAXPROCS (the CPUs this process may use) the
// program's receive thread waits for one while the stack's goroutines hold
// them all, and the machine idles meanwhile. One more P takes that wait
// away: ncdevmem under the library at MTU 1500 went from ~0.83x to ~0.9x
// of xdevmem server's goodput (BenchmarkPreloadNcdevmem), where the
// server, which has no foreign threads, gains nothing from it. GOMAXPROCS
// in the environment is left as it is.
func addProc() {
	if _, set := os.LookupEnv("GOMAXPROCS"); set {
		lib.Logf("GOMAXPROCS=%d (from the environment)", runtime.GOMAXPROCS(0))
		return
	}
	n := runtime.GOMAXPROCS(0) + 1
	runtime.GOMAXPROCS(n)
	lib.Logf("GOMAXPROCS=%d (CPUs + 1: a P for the program's own threads)", n)
}

//export xdgo_exit
func xdgo_exit() { lib.Exit() }

//export xdgo_open
func xdgo_open(path *C.char, flags, mode C.int, errp *C.int) C.int {
	r, err := lib.Open(C.GoString(path), int(flags), int(mode))
	return ret(r, err, errp)
}

//export xdgo_close
func xdgo_close(fd C.int, timeout *C.longlong) C.int {
	slot, t := lib.Close(int(fd))
	*timeout = C.longlong(t)
	return C.int(slot)
}

//export xdgo_dup
func xdgo_dup(oldfd, newfd C.int) { lib.Dup(int(oldfd), int(newfd)) }

//export xdgo_ioctl
func xdgo_ioctl(fd C.int, req C.ulong, arg C.uintptr_t, errp *C.int) C.int {
	r, err := lib.Ioctl(int(fd), uint(req), preload.UPtr(arg))
	trace("Ioctl", int(fd), int64(r), err)
	return ret(r, err, errp)
}

//export xdgo_mmap_offset
func xdgo_mmap_offset(fd C.int, length C.size_t, off C.longlong, prot, flags C.int, errp *C.int) C.longlong {
	r, err := lib.MmapOffset(int(fd), uint64(length), int64(off), int(prot), int(flags))
	trace("MmapOffset", int(fd), int64(r), err)
	return ret64(r, err, errp)
}

//export xdgo_lseek
func xdgo_lseek(fd C.int, off C.longlong, whence C.int, errp *C.int) C.longlong {
	r, err := lib.Lseek(int(fd), int64(off), int(whence))
	trace("Lseek", int(fd), int64(r), err)
	return ret64(r, err, errp)
}

//export xdgo_bind
func xdgo_bind(fd C.int, addr C.uintptr_t, alen C.uint, errp *C.int) C.int {
	r, err := lib.Bind(int(fd), preload.UPtr(addr), uint32(alen))
	trace("Bind", int(fd), int64(r), err)
	return ret(r, err, errp)
}

//export xdgo_connect
func xdgo_connect(fd C.int, addr C.uintptr_t, alen C.uint, errp *C.int) C.int {
	r, err := lib.Connect(int(fd), preload.UPtr(addr), uint32(alen))
	trace("Connect", int(fd), int64(r), err)
	return ret(r, err, errp)
}

//export xdgo_listen
func xdgo_listen(fd, backlog C.int, errp *C.int) C.int {
	r, err := lib.Listen(int(fd), int(backlog))
	trace("Listen", int(fd), int64(r), err)
	return ret(r, err, errp)
}

//export xdgo_accept
func xdgo_accept(fd C.int, addr, lenp C.uintptr_t, flags C.int, errp *C.int) C.int {
	r, err := lib.Accept(int(fd), preload.UPtr(addr), preload.UPtr(lenp), int(flags))
	trace("Accept", int(fd), int64(r), err)
	return ret(r, err, errp)
}

//export xdgo_recv
func xdgo_recv(fd C.int, msg C.uintptr_t, flags C.int, namelenp C.uintptr_t, errp *C.int, seqp *C.uint32_t, timeoutp *C.longlong) C.longlong {
	var w preload.Waiter
	r, err := lib.Recv(int(fd), preload.UPtr(msg), int(flags), preload.UPtr(namelenp), &w)
	if r == preload.Wait {
		*errp, *seqp, *timeoutp = C.int(w.Slot), C.uint32_t(w.Seq), C.longlong(w.Timeout)
		return C.XD_WAIT
	}
	trace("Recv", int(fd), int64(r), err)
	return ret64(int64(r), err, errp)
}

//export xdgo_send
func xdgo_send(fd C.int, msg C.uintptr_t, flags C.int, errp *C.int) C.longlong {
	r, err := lib.Send(int(fd), preload.UPtr(msg), int(flags))
	trace("Send", int(fd), int64(r), err)
	return ret64(int64(r), err, errp)
}

//export xdgo_mmsg
func xdgo_mmsg(fd C.int, vec C.uintptr_t, n C.uint, flags C.int, send C.int, errp *C.int) C.int {
	r, err := lib.Mmsg(int(fd), preload.UPtr(vec), uint32(n), int(flags), send != 0)
	trace("Mmsg", int(fd), int64(r), err)
	return ret(r, err, errp)
}

//export xdgo_setsockopt
func xdgo_setsockopt(fd, level, name C.int, val C.uintptr_t, vlen C.uint, errp *C.int) C.int {
	r, err := lib.Setsockopt(int(fd), int(level), int(name), preload.UPtr(val), int(int32(vlen)))
	trace("Setsockopt", int(fd), int64(r), err)
	return ret(r, err, errp)
}

//export xdgo_getsockopt
func xdgo_getsockopt(fd, level, name C.int, val, lenp C.uintptr_t, errp *C.int) C.int {
	r, err := lib.Getsockopt(int(fd), int(level), int(name), preload.UPtr(val), preload.UPtr(lenp))
	trace("Getsockopt", int(fd), int64(r), err)
	return ret(r, err, errp)
}

//export xdgo_sockname
func xdgo_sockname(fd, peer C.int, addr, lenp C.uintptr_t, errp *C.int) C.int {
	r, err := lib.Sockname(int(fd), peer != 0, preload.UPtr(addr), preload.UPtr(lenp))
	trace("Sockname", int(fd), int64(r), err)
	return ret(r, err, errp)
}

//export xdgo_shutdown
func xdgo_shutdown(fd, how C.int, errp *C.int) C.int {
	r, err := lib.Shutdown(int(fd), int(how))
	trace("Shutdown", int(fd), int64(r), err)
	return ret(r, err, errp)
}

//export xdgo_fcntl
func xdgo_fcntl(fd, cmd C.int, arg C.uintptr_t, errp *C.int) C.int {
	r, err := lib.Fcntl(int(fd), int(cmd), uintptr(arg))
	trace("Fcntl", int(fd), int64(r), err)
	return ret(r, err, errp)
}

//export xdgo_poll
func xdgo_poll(fds C.uintptr_t, n C.ulong, timeoutNs C.longlong, mask C.uintptr_t, errp *C.int) C.int {
	r, err := lib.Poll(preload.UPtr(fds), uint64(n), int64(timeoutNs), preload.UPtr(mask))
	return ret(r, err, errp)
}

//export xdgo_epoll_ctl
func xdgo_epoll_ctl(epfd, op, fd C.int, ev C.uintptr_t, errp *C.int) C.int {
	r, err := lib.EpollCtl(int(epfd), int(op), int(fd), preload.UPtr(ev))
	trace("EpollCtl", int(epfd), int64(r), err)
	return ret(r, err, errp)
}

//export xdgo_epoll_wait
func xdgo_epoll_wait(epfd C.int, evs C.uintptr_t, max C.int, timeoutNs C.longlong, mask C.uintptr_t, errp *C.int) C.int {
	r, err := lib.EpollWait(int(epfd), preload.UPtr(evs), int(max), int64(timeoutNs), preload.UPtr(mask))
	trace("EpollWait", int(epfd), int64(r), err)
	return ret(r, err, errp)
}

//export xdgo_system
func xdgo_system(cmd *C.char, status *C.int) C.int {
	s, ok := lib.System(C.GoString(cmd))
	if !ok {
		return 0
	}
	*status = C.int(s)
	return 1
}

//export xdgo_popen
func xdgo_popen(cmd *C.char, status *C.int) C.int {
	fd, s := lib.Popen(C.GoString(cmd))
	if fd == preload.Pass {
		return -1
	}
	*status = C.int(s)
	return C.int(fd)
}

// main runs only when the package is built as a program by mistake.
func main() {
	os.Stderr.WriteString("libxdevmem is a library: go build -buildmode=c-shared -o libxdevmem.so ./cmd/libxdevmem, then LD_PRELOAD=$PWD/libxdevmem.so PROGRAM\n")
	os.Exit(2)
}

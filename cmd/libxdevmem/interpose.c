// The interposers: libc's entry points of the devmem uAPI, exported by
// libxdevmem.so so that LD_PRELOAD puts them before libc's. Each one looks
// at the fd's kind (xd.h) and either calls libc's own function, found with
// dlsym(RTLD_NEXT, ...), or hands the call to Go (main.go). Nothing here
// dereferences an application pointer: Go reads and writes application
// memory, and turns a bad pointer into EFAULT as the kernel does.
//
// The Go runtime makes its own system calls directly, so nothing the
// library does re-enters these functions, with one exception: with cgo
// the runtime maps memory through libc's mmap, which passes straight
// through here (fd -1).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <ucontext.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <linux/futex.h>
#include <linux/netlink.h>
#include <sys/syscall.h>
#include <netinet/in.h>

#include "xd.h"
#include "_cgo_export.h"

static unsigned char kinds[XD_MAXFD];
static int state = XD_LOADING;
static int emu_fds; // fds of kind XD_EMU: while there are none, poll and select pass through

void xd_set_kind(int fd, int kind)
{
	if (fd < 0 || fd >= XD_MAXFD)
		return;
	unsigned char old = __atomic_exchange_n(&kinds[fd], (unsigned char)kind, __ATOMIC_ACQ_REL);
	if (old != XD_EMU && kind == XD_EMU)
		__atomic_add_fetch(&emu_fds, 1, __ATOMIC_RELEASE);
	else if (old == XD_EMU && kind != XD_EMU)
		__atomic_sub_fetch(&emu_fds, 1, __ATOMIC_RELEASE);
}

int xd_get_kind(int fd)
{
	if (fd < 0 || fd >= XD_MAXFD)
		return XD_PLAIN;
	return __atomic_load_n(&kinds[fd], __ATOMIC_ACQUIRE);
}

void xd_set_state(int s) { __atomic_store_n(&state, s, __ATOMIC_RELEASE); }

static inline int active(void) { return __atomic_load_n(&state, __ATOMIC_ACQUIRE) == XD_ACTIVE; }

static inline int in_child(void) { return __atomic_load_n(&state, __ATOMIC_ACQUIRE) == XD_CHILD; }

// kind is the fd's kind while the library is active, else XD_PLAIN; in a
// fork child, emulated sockets keep their kind so that calls on them are
// refused (refuse) instead of reaching the socketpair.
static inline int kind(int fd)
{
	int s = __atomic_load_n(&state, __ATOMIC_ACQUIRE);
	if (s == XD_ACTIVE)
		return xd_get_kind(fd);
	if (s == XD_CHILD && xd_get_kind(fd) == XD_EMU)
		return XD_EMU;
	return XD_PLAIN;
}

// The real functions, resolved on first use (the Go runtime may call mmap
// before the constructor below runs).
#define REAL(name) \
	static __typeof__(name) *real_##name; \
	static __typeof__(name) *get_##name(void) \
	{ \
		__typeof__(name) *f = __atomic_load_n(&real_##name, __ATOMIC_ACQUIRE); \
		if (!f) { \
			f = (__typeof__(name) *)dlsym(RTLD_NEXT, #name); \
			__atomic_store_n(&real_##name, f, __ATOMIC_RELEASE); \
		} \
		return f; \
	}

REAL(open)
REAL(open64)
REAL(openat)
REAL(openat64)
REAL(close)
REAL(dup)
REAL(dup2)
REAL(dup3)
REAL(fcntl)
REAL(ioctl)
REAL(mmap)
REAL(mmap64)
REAL(lseek)
REAL(lseek64)
REAL(socket)
REAL(bind)
REAL(connect)
REAL(listen)
REAL(accept)
REAL(accept4)
REAL(read)
REAL(readv)
REAL(write)
REAL(writev)
REAL(recv)
REAL(recvfrom)
REAL(recvmsg)
REAL(recvmmsg)
REAL(send)
REAL(sendto)
REAL(sendmsg)
REAL(sendmmsg)
REAL(setsockopt)
REAL(getsockopt)
REAL(getsockname)
REAL(getpeername)
REAL(shutdown)
REAL(poll)
REAL(ppoll)
REAL(select)
REAL(pselect)
REAL(epoll_ctl)
REAL(epoll_wait)
REAL(epoll_pwait)
REAL(sigaction)
REAL(signal)
REAL(system)
REAL(popen)
REAL(pclose)

// ret sets errno from a Go handler's result.
static inline long ret(long r, int err)
{
	if (r < 0)
		errno = err;
	return r;
}

// ret_after is ret for a call written as the argument: the handler's
// result is evaluated before *err is read (C leaves the order of a call's
// arguments open).
static inline long ret_after(long r, const int *err) { return ret(r, *err); }

// refuse fails a call on an emulated fd in a fork child: the emulated
// socket lives in the parent's stack.
static inline int refuse(int fd)
{
	if (in_child() && xd_get_kind(fd) == XD_EMU) {
		errno = EOPNOTSUPP;
		return 1;
	}
	return 0;
}

static pid_t self_pid; // for process_vm_readv/writev (safe_copy)

static void child_after_fork(void)
{
	self_pid = getpid();
	xd_set_state(state == XD_ACTIVE ? XD_CHILD : state);
}

__attribute__((constructor(101))) static void xd_constructor(void)
{
	self_pid = getpid();
	pthread_atfork(NULL, NULL, child_after_fork);
}

// At exit the emulated sockets close and the stacks go down, as the
// kernel closes an exiting process's files.
__attribute__((destructor)) static void xd_destructor(void)
{
	if (__atomic_load_n(&state, __ATOMIC_ACQUIRE) == XD_ACTIVE) {
		xd_set_state(XD_LOADING); // from here every call goes to libc
		xdgo_exit();
	}
}

// __libc_start_main runs after every shared object's constructors and
// before the program's own: the point where the Go runtime can be waited
// for safely. Calls made earlier pass to libc.
typedef int (*main_fn)(int, char **, char **);
int __libc_start_main(main_fn main, int argc, char **argv, void (*init)(void), void (*fini)(void),
		      void (*rtld_fini)(void), void *stack_end)
{
	int (*real)(main_fn, int, char **, void (*)(void), void (*)(void), void (*)(void), void *) =
		dlsym(RTLD_NEXT, "__libc_start_main");
	Dl_info self, prog;
	// Built as a program (go build, go run) rather than a library, this
	// runs before the Go runtime: stay out of the way, and let main say so.
	if (!dladdr((void *)__libc_start_main, &self) || !dladdr((void *)main, &prog) || self.dli_fbase != prog.dli_fbase)
		xd_set_state(xdgo_init());
	return real(main, argc, argv, init, fini, rtld_fini, stack_end);
}

// ---- files: /dev/udmabuf, dmabufs, fd lifetime ----

static const char udmabuf_path[] = "/dev/udmabuf";

static int is_udmabuf(int dirfd, const char *path)
{
	// path is the application's: reading it is what libc's open does too.
	return active() && path && (dirfd == AT_FDCWD || path[0] == '/') && strcmp(path, udmabuf_path) == 0;
}

// open_udmabuf returns XD_PASS when the kernel backend serves the
// program (the real device is opened then).
static int open_udmabuf(const char *path, int flags, mode_t mode)
{
	int err = 0;
	int fd = xdgo_open((char *)path, flags, (int)mode, &err);
	return fd == XD_PASS ? XD_PASS : (int)ret(fd, err);
}

static mode_t open_mode(int flags, va_list ap)
{
	return (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, mode_t) : 0;
}

int open(const char *path, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t mode = open_mode(flags, ap);
	va_end(ap);
	if (is_udmabuf(AT_FDCWD, path)) {
		int fd = open_udmabuf(path, flags, mode);
		if (fd != XD_PASS)
			return fd;
	}
	return get_open()(path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t mode = open_mode(flags, ap);
	va_end(ap);
	if (is_udmabuf(AT_FDCWD, path)) {
		int fd = open_udmabuf(path, flags, mode);
		if (fd != XD_PASS)
			return fd;
	}
	return get_open64()(path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t mode = open_mode(flags, ap);
	va_end(ap);
	if (is_udmabuf(dirfd, path)) {
		int fd = open_udmabuf(path, flags, mode);
		if (fd != XD_PASS)
			return fd;
	}
	return get_openat()(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
	va_list ap;
	va_start(ap, flags);
	mode_t mode = open_mode(flags, ap);
	va_end(ap);
	if (is_udmabuf(dirfd, path)) {
		int fd = open_udmabuf(path, flags, mode);
		if (fd != XD_PASS)
			return fd;
	}
	return get_openat64()(dirfd, path, flags, mode);
}

// The _FORTIFY_SOURCE entry points.
int __open_2(const char *path, int flags) { return open(path, flags); }
int __open64_2(const char *path, int flags) { return open64(path, flags); }
int __openat_2(int dirfd, const char *path, int flags) { return openat(dirfd, path, flags); }
int __openat64_2(int dirfd, const char *path, int flags) { return openat64(dirfd, path, flags); }

static void linger_wait(int slot, long long timeout);

// close_emu tells Go that fd no longer names what it named and, if that
// was the last fd of a socket closing with SO_LINGER on and a time, waits
// as the kernel's close does.
static void close_emu(int fd)
{
	long long timeout = -1;
	int slot = xdgo_close(fd, &timeout);
	if (slot >= 0)
		linger_wait(slot, timeout);
}

int close(int fd)
{
	if (xd_get_kind(fd) != XD_PLAIN) {
		int k = xd_get_kind(fd);
		xd_set_kind(fd, XD_PLAIN);
		if (k != XD_PLAIN && state == XD_ACTIVE)
			close_emu(fd);
	}
	return get_close()(fd);
}

// dup_done tells Go that newfd now names what oldfd names.
static int dup_done(int oldfd, int newfd)
{
	if (newfd >= 0 && active() && xd_get_kind(oldfd) != XD_PLAIN)
		xdgo_dup(oldfd, newfd);
	return newfd;
}

// dup_target drops what newfd named before dup2/dup3 replace it.
static void dup_target(int oldfd, int newfd)
{
	if (oldfd != newfd && xd_get_kind(newfd) != XD_PLAIN) {
		xd_set_kind(newfd, XD_PLAIN);
		if (active())
			close_emu(newfd);
	}
}

int dup(int fd) { return dup_done(fd, get_dup()(fd)); }

int dup2(int oldfd, int newfd)
{
	if (oldfd != newfd && fcntl(oldfd, F_GETFD) >= 0)
		dup_target(oldfd, newfd);
	return dup_done(oldfd, get_dup2()(oldfd, newfd));
}

int dup3(int oldfd, int newfd, int flags)
{
	if (oldfd != newfd && fcntl(oldfd, F_GETFD) >= 0)
		dup_target(oldfd, newfd);
	return dup_done(oldfd, get_dup3()(oldfd, newfd, flags));
}

int fcntl(int fd, int cmd, ...)
{
	va_list ap;
	va_start(ap, cmd);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	int k = kind(fd);
	if (k == XD_PLAIN)
		return get_fcntl()(fd, cmd, arg);
	if (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)
		return dup_done(fd, get_fcntl()(fd, cmd, arg));
	if (refuse(fd))
		return -1;
	if (k == XD_EMU) {
		int err = 0;
		int r = xdgo_fcntl(fd, cmd, (uintptr_t)arg, &err);
		if (r != XD_PASS)
			return (int)ret(r, err);
	}
	return get_fcntl()(fd, cmd, arg);
}

int fcntl64(int fd, int cmd, ...)
{
	va_list ap;
	va_start(ap, cmd);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	return fcntl(fd, cmd, arg);
}

// ---- ioctl: the one call a devmem program makes twice per fragment ----

static int debug;

void xd_set_debug(int on) { __atomic_store_n(&debug, on, __ATOMIC_RELEASE); }

// The calling thread's stack, [stack_lo, stack_hi), found once per thread;
// stack_hi is 1 when it cannot be found.
static __thread uintptr_t stack_lo, stack_hi;

// on_own_stack reports whether [p, p+n) lies on the calling thread's stack
// between this frame and the stack's top: memory that stays mapped while
// the call runs, so reading it here cannot fault. Everything else is read
// by Go, which turns a fault into EFAULT as the kernel does.
static int on_own_stack(const void *p, size_t n)
{
	if (!stack_hi) {
		pthread_attr_t at;
		void *base;
		size_t size;
		stack_hi = 1;
		if (pthread_getattr_np(pthread_self(), &at) == 0) {
			if (pthread_attr_getstack(&at, &base, &size) == 0) {
				stack_lo = (uintptr_t)base;
				stack_hi = (uintptr_t)base + size;
			}
			pthread_attr_destroy(&at);
		}
	}
	uintptr_t sp = (uintptr_t)__builtin_frame_address(0), a = (uintptr_t)p;
	// On a signal's alternate stack sp is outside the thread's stack:
	// nothing between the two is known to be mapped.
	return sp >= stack_lo && sp < stack_hi && a >= sp && a + n >= a && a + n <= stack_hi;
}

// DMA_BUF_IOCTL_SYNC, _IOW('b', 0, struct dma_buf_sync), and its flags
// (include/uapi/linux/dma-buf.h).
#define XD_DMA_BUF_IOCTL_SYNC 0x40086200UL
#define XD_DMA_BUF_SYNC_RW 3ULL
#define XD_DMA_BUF_SYNC_VALID 7ULL

// dmabuf_sync serves DMA_BUF_IOCTL_SYNC on an emulated dmabuf without
// calling Go when its argument is on the caller's stack (where C programs
// keep it): dma_buf_ioctl's checks, then nothing to do, since the UMEM is
// the CPU's own memory. It returns XD_PASS when Go must answer.
static int dmabuf_sync(void *arg)
{
	if (__atomic_load_n(&debug, __ATOMIC_ACQUIRE) || !on_own_stack(arg, sizeof(uint64_t)))
		return XD_PASS;
	uint64_t flags;
	memcpy(&flags, arg, sizeof(flags));
	if ((flags & ~XD_DMA_BUF_SYNC_VALID) || !(flags & XD_DMA_BUF_SYNC_RW)) {
		errno = EINVAL;
		return -1;
	}
	return 0;
}

int ioctl(int fd, unsigned long req, ...)
{
	va_list ap;
	va_start(ap, req);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	int k = kind(fd);
	if (k == XD_DMABUF && req == XD_DMA_BUF_IOCTL_SYNC) {
		int r = dmabuf_sync(arg);
		if (r != XD_PASS)
			return r;
	}
	if (k == XD_UDMABUF || k == XD_DMABUF || k == XD_EMU) {
		if (refuse(fd))
			return -1;
		int err = 0;
		int r = xdgo_ioctl(fd, req, (uintptr_t)arg, &err);
		if (r != XD_PASS)
			return (int)ret(r, err);
	}
	return get_ioctl()(fd, req, arg);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	if (fd >= 0 && kind(fd) == XD_DMABUF) {
		int err = 0;
		long long o = xdgo_mmap_offset(fd, len, off, prot, flags, &err);
		if (o < 0) {
			errno = err;
			return MAP_FAILED;
		}
		off = (off_t)o;
	}
	return get_mmap()(addr, len, prot, flags, fd, off);
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return mmap(addr, len, prot, flags, fd, off);
}

off_t lseek(int fd, off_t off, int whence)
{
	if (kind(fd) == XD_DMABUF) {
		int err = 0;
		return (off_t)ret_after(xdgo_lseek(fd, off, whence, &err), &err);
	}
	return get_lseek()(fd, off, whence);
}

off_t lseek64(int fd, off_t off, int whence) { return lseek(fd, off, whence); }

// ---- sockets ----

int socket(int domain, int type, int protocol)
{
	int fd = get_socket()(domain, type, protocol);
	if (fd < 0 || !active())
		return fd;
	int t = type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
	if ((domain == AF_INET || domain == AF_INET6) && t == SOCK_STREAM && (protocol == 0 || protocol == IPPROTO_TCP))
		xd_set_kind(fd, XD_TCP);
	else if (domain == AF_NETLINK && protocol == NETLINK_GENERIC)
		xd_set_kind(fd, XD_GENL);
	else
		xd_set_kind(fd, XD_PLAIN);
	return fd;
}

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
	int k = kind(fd);
	if (k == XD_TCP || k == XD_EMU) {
		if (refuse(fd))
			return -1;
		int err = 0;
		int r = xdgo_bind(fd, (uintptr_t)addr, len, &err);
		if (r != XD_PASS)
			return (int)ret(r, err);
	}
	return get_bind()(fd, addr, len);
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
	int k = kind(fd);
	if (k == XD_TCP || k == XD_EMU) {
		if (refuse(fd))
			return -1;
		int err = 0;
		int r = xdgo_connect(fd, (uintptr_t)addr, len, &err);
		if (r != XD_PASS)
			return (int)ret(r, err);
	}
	return get_connect()(fd, addr, len);
}

int listen(int fd, int backlog)
{
	if (kind(fd) == XD_EMU) {
		if (refuse(fd))
			return -1;
		int err = 0;
		return (int)ret_after(xdgo_listen(fd, backlog, &err), &err);
	}
	return get_listen()(fd, backlog);
}

int accept4(int fd, struct sockaddr *addr, socklen_t *lenp, int flags)
{
	if (kind(fd) == XD_EMU) {
		if (refuse(fd))
			return -1;
		int err = 0;
		return (int)ret_after(xdgo_accept(fd, (uintptr_t)addr, (uintptr_t)lenp, flags, &err), &err);
	}
	return get_accept4()(fd, addr, lenp, flags);
}

int accept(int fd, struct sockaddr *addr, socklen_t *lenp)
{
	if (kind(fd) == XD_EMU)
		return accept4(fd, addr, lenp, 0);
	return get_accept()(fd, addr, lenp);
}

// ---- signals: which handler ended a receive's sleep ----
//
// A receive blocked in the kernel that a signal handler interrupts is
// restarted if the handler has SA_RESTART and the socket no SO_RCVTIMEO,
// else it fails EINTR (sk_wait_data, sock_intr_errno). The emulated
// receive sleeps on a futex, which a handler ends with EINTR without
// saying whose: so the handlers the program installs (sigaction, signal)
// run behind a trampoline that notes the signal on its thread.

static struct sigaction app_act[_NSIG]; // the program's, for the signals wrapped
static unsigned char wrapped[_NSIG];
static __thread int last_sig;
// timed_slot is the event word a sleep that every handler ends sleeps on
// (a receive with SO_RCVTIMEO, a lingering close), -1 when none: the
// kernel restarts a futex sleep after an SA_RESTART handler, where
// sk_wait_data with a timeout and sk_stream_wait_close end, so the
// trampoline moves the word to end the restarted sleep.
static __thread int timed_slot = -1;

extern uint32_t xd_seq[XD_MAXFD];

// The Go runtime turns a fault in Go code into EFAULT (it reads the
// application's memory with SetPanicOnFault), with the SIGSEGV and SIGBUS
// handlers it installed before main. A program that installs its own
// keeps them reachable: the trampoline hands a fault whose PC is in this
// library to the handler it replaced, every other one to the program's.
static struct sigaction go_act[_NSIG];
static uintptr_t lib_lo, lib_hi; // this library's executable segment

static int find_text(struct dl_phdr_info *info, size_t size, void *data)
{
	(void)size;
	uintptr_t self = (uintptr_t)data;
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
		if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X) && self >= lo && self < lo + ph->p_memsz) {
			lib_lo = lo;
			lib_hi = lo + ph->p_memsz;
			return 1;
		}
	}
	return 0;
}

static uintptr_t fault_pc(void *ctx)
{
	ucontext_t *uc = ctx;
#if defined(__x86_64__)
	return (uintptr_t)uc->uc_mcontext.gregs[REG_RIP];
#elif defined(__aarch64__)
	return (uintptr_t)uc->uc_mcontext.pc;
#else
	return 0;
#endif
}

static void trampoline(int sig, siginfo_t *info, void *ctx)
{
	if ((sig == SIGSEGV || sig == SIGBUS) && (go_act[sig].sa_flags & SA_SIGINFO) && go_act[sig].sa_sigaction) {
		uintptr_t pc = fault_pc(ctx);
		if (pc >= lib_lo && pc < lib_hi) {
			go_act[sig].sa_sigaction(sig, info, ctx);
			return;
		}
	}
	last_sig = sig;
	if (timed_slot >= 0)
		__atomic_add_fetch(&xd_seq[timed_slot], 2, __ATOMIC_SEQ_CST); // an event, XD_SLEEPER kept
	struct sigaction a = app_act[sig];
	if (a.sa_flags & SA_RESETHAND) { // the kernel reset the trampoline
		app_act[sig].sa_handler = SIG_DFL;
		app_act[sig].sa_flags &= ~SA_SIGINFO;
	}
	if (a.sa_flags & SA_SIGINFO)
		a.sa_sigaction(sig, info, ctx);
	else if (a.sa_handler != SIG_IGN && a.sa_handler != SIG_DFL)
		a.sa_handler(sig);
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *old)
{
	// Before main (the Go runtime's own handlers) and for the signals a
	// handler cannot be given, libc's sigaction as it is.
	if (!active() || sig <= 0 || sig >= _NSIG || sig == SIGKILL || sig == SIGSTOP)
		return get_sigaction()(sig, act, old);
	struct sigaction prev = app_act[sig];
	int was = wrapped[sig];
	if (!act || act->sa_handler == SIG_IGN || act->sa_handler == SIG_DFL) {
		int r = get_sigaction()(sig, act, old);
		if (r == 0 && old && was && old->sa_sigaction == trampoline)
			*old = prev;
		if (r == 0 && act)
			wrapped[sig] = 0;
		return r;
	}
	struct sigaction t = *act, replaced;
	t.sa_sigaction = trampoline;
	t.sa_flags |= SA_SIGINFO;
	if (sig == SIGSEGV || sig == SIGBUS) {
		if (!lib_hi)
			dl_iterate_phdr(find_text, (void *)trampoline);
		t.sa_flags |= SA_ONSTACK; // Go's handler runs on its signal stack only
	}
	app_act[sig] = *act;
	int r = get_sigaction()(sig, &t, &replaced);
	if (r != 0) {
		app_act[sig] = prev;
		return r;
	}
	if ((sig == SIGSEGV || sig == SIGBUS) && replaced.sa_sigaction != trampoline && (replaced.sa_flags & SA_SIGINFO))
		go_act[sig] = replaced; // the Go runtime's
	if (old)
		*old = replaced;
	wrapped[sig] = 1;
	if (old && was && old->sa_sigaction == trampoline)
		*old = prev;
	return r;
}

// signal is glibc's: a handler with SA_RESTART (BSD semantics).
sighandler_t signal(int sig, sighandler_t h)
{
	if (!active())
		return get_signal()(sig, h);
	struct sigaction a = {.sa_handler = h, .sa_flags = SA_RESTART}, old;
	sigemptyset(&a.sa_mask);
	sigaddset(&a.sa_mask, sig);
	if (sigaction(sig, &a, &old) < 0)
		return SIG_ERR;
	return old.sa_handler;
}

// mono_ns is CLOCK_MONOTONIC in nanoseconds, what sleeps' deadlines count.
static long long mono_ns(void)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
}

// interrupted reports whether the signal handled during a sleep ends the
// receive (EINTR) rather than restarting it.
static int interrupted(int timed)
{
	int sig = last_sig;
	if (sig <= 0 || sig >= _NSIG)
		return 0; // a handler the library did not install: restart
	return timed || !(app_act[sig].sa_flags & SA_RESTART);
}

// ---- receives ----

uint32_t xd_seq[XD_MAXFD];

// wait_event sleeps while event word slot still counts seq's events: the
// sleeper's half of an event count (Go's host.Wake is the waker's). The
// sleeper sets XD_SLEEPER in the word itself and sleeps on the word with
// the bit set; a waker adds an event and clears the bit in one
// compare-and-swap and wakes only if the bit was set. An event after the
// bit was set wakes the sleeper or changes the word before it sleeps
// (the futex then returns at once), so no wakeup is lost, and a burst
// of events costs one FUTEX_WAKE, not one each.
//
// deadline (CLOCK_MONOTONIC ns, 0 for none) bounds the sleep: it returns
// -1 once the deadline has passed, -2 when a signal handler interrupted
// the sleep in a way that ends it, else 0. For a receive (anysig 0) that
// is interrupted()'s choice; with anysig every handler run ends it, a
// sleep the kernel restarts after an SA_RESTART handler included (the
// trampoline moves the word of timed_slot).
static int wait_event(int slot, uint32_t seq, long long deadline, int anysig)
{
	if (slot < 0 || slot >= XD_MAXFD)
		return 0;
	struct timespec rel, *relp = NULL;
	if (deadline) {
		long long left = deadline - mono_ns();
		if (left <= 0)
			return -1;
		rel.tv_sec = left / 1000000000LL;
		rel.tv_nsec = left % 1000000000LL;
		relp = &rel;
	}
	last_sig = 0;
	if (deadline || anysig)
		timed_slot = slot;
	int eintr = 0;
	uint32_t cur = __atomic_load_n(&xd_seq[slot], __ATOMIC_SEQ_CST);
	while ((cur & ~XD_SLEEPER) == (seq & ~XD_SLEEPER)) {
		// A failed exchange reloads cur: look again.
		if (!(cur & XD_SLEEPER) &&
		    !__atomic_compare_exchange_n(&xd_seq[slot], &cur, cur | XD_SLEEPER, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
			continue;
		eintr = syscall(SYS_futex, &xd_seq[slot], FUTEX_WAIT_PRIVATE, cur | XD_SLEEPER, relp, NULL, 0) < 0 && errno == EINTR;
		break;
	}
	timed_slot = -1;
	// A handler ran during the sleep: it ended it (EINTR), or, in a sleep
	// the kernel restarted, moved the word.
	if (!last_sig)
		return 0;
	return anysig || ((eintr || deadline) && interrupted(deadline != 0)) ? -2 : 0;
}

uint32_t xd_linger[XD_MAXFD];

// linger_wait is close(2) on a socket with SO_LINGER on and a time
// (sk_stream_wait_close): it sleeps on event word slot until Go has closed
// the socket (xd_linger[slot] back to 0), timeout ns have passed (-1: no
// bound), or a signal handler has run on this thread, whatever its
// SA_RESTART. The socket then goes on closing in the background, and
// close returns 0, as the kernel's does.
static void linger_wait(int slot, long long timeout)
{
	if (slot < 0 || slot >= XD_MAXFD)
		return;
	long long deadline = timeout >= 0 ? mono_ns() + timeout : 0;
	for (;;) {
		// The word before the flag: Go clears the flag, then moves the word.
		uint32_t seq = __atomic_load_n(&xd_seq[slot], __ATOMIC_SEQ_CST);
		if (!__atomic_load_n(&xd_linger[slot], __ATOMIC_SEQ_CST) || wait_event(slot, seq, deadline, 1) < 0)
			return;
	}
}

// recv_emu hands a receive to Go: msg is the application's msghdr, or
// one built here around its buffer (namelenp: where recvfrom wants the
// address length). XD_PASS: libc's function serves it (a netlink socket
// with no reply of the library's waiting).
static ssize_t recv_emu(int fd, struct msghdr *msg, int flags, uintptr_t namelenp)
{
	if (refuse(fd))
		return -1;
	long long deadline = 0; // SO_RCVTIMEO, from the first wait on
	for (;;) {
		int err = 0;
		uint32_t seq = 0;
		long long timeout = -1;
		long long r = xdgo_recv(fd, (uintptr_t)msg, flags, namelenp, &err, &seq, &timeout);
		if (r == XD_WAIT) {
			if (timeout >= 0 && !deadline)
				deadline = mono_ns() + timeout;
			int w = wait_event(err, seq, deadline, 0);
			if (w < 0) {
				// sock_rcvtimeo ran out, or a signal ends the wait
				// (sk_wait_data, sock_intr_errno).
				errno = w == -1 ? EAGAIN : EINTR;
				return -1;
			}
			continue;
		}
		return r == XD_PASS ? XD_PASS : ret(r, err);
	}
}

static ssize_t send_emu(int fd, struct msghdr *msg, int flags)
{
	if (refuse(fd))
		return -1;
	int err = 0;
	long long r = xdgo_send(fd, (uintptr_t)msg, flags, &err);
	if (r == XD_PASS)
		return XD_PASS;
	if (r < 0 && err == EPIPE && !(flags & MSG_NOSIGNAL))
		raise(SIGPIPE); // as the kernel's send does
	return ret(r, err);
}

static inline int emu_or_genl(int fd)
{
	int k = kind(fd);
	return k == XD_EMU || k == XD_GENL;
}

ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
	if (emu_or_genl(fd)) {
		ssize_t r = recv_emu(fd, msg, flags, 0);
		if (r != XD_PASS)
			return r;
	}
	return get_recvmsg()(fd, msg, flags);
}

ssize_t recv(int fd, void *buf, size_t len, int flags)
{
	if (emu_or_genl(fd)) {
		struct iovec iov = {.iov_base = buf, .iov_len = len};
		struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
		ssize_t r = recv_emu(fd, &m, flags, 0);
		if (r != XD_PASS)
			return r;
	}
	return get_recv()(fd, buf, len, flags);
}

ssize_t recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *addr, socklen_t *lenp)
{
	if (emu_or_genl(fd)) {
		struct iovec iov = {.iov_base = buf, .iov_len = len};
		struct msghdr m = {.msg_name = addr, .msg_iov = &iov, .msg_iovlen = 1};
		ssize_t r = recv_emu(fd, &m, flags, addr ? (uintptr_t)lenp : 0);
		if (r != XD_PASS)
			return r;
	}
	return get_recvfrom()(fd, buf, len, flags, addr, lenp);
}

ssize_t read(int fd, void *buf, size_t len)
{
	if (emu_or_genl(fd)) {
		struct iovec iov = {.iov_base = buf, .iov_len = len};
		struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
		ssize_t r = recv_emu(fd, &m, 0, 0);
		if (r != XD_PASS)
			return r;
	}
	return get_read()(fd, buf, len);
}

ssize_t readv(int fd, const struct iovec *iov, int n)
{
	if (emu_or_genl(fd)) {
		struct msghdr m = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)n};
		if (n < 0) {
			errno = EINVAL;
			return -1;
		}
		ssize_t r = recv_emu(fd, &m, 0, 0);
		if (r != XD_PASS)
			return r;
	}
	return get_readv()(fd, iov, n);
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	if (emu_or_genl(fd)) {
		ssize_t r = send_emu(fd, (struct msghdr *)msg, flags);
		if (r != XD_PASS)
			return r;
	}
	return get_sendmsg()(fd, msg, flags);
}

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
	if (emu_or_genl(fd)) {
		struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
		struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
		ssize_t r = send_emu(fd, &m, flags);
		if (r != XD_PASS)
			return r;
	}
	return get_send()(fd, buf, len, flags);
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *addr, socklen_t alen)
{
	if (emu_or_genl(fd)) {
		struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
		struct msghdr m = {.msg_name = (void *)addr, .msg_namelen = alen, .msg_iov = &iov, .msg_iovlen = 1};
		ssize_t r = send_emu(fd, &m, flags);
		if (r != XD_PASS)
			return r;
	}
	return get_sendto()(fd, buf, len, flags, addr, alen);
}

ssize_t write(int fd, const void *buf, size_t len)
{
	if (emu_or_genl(fd)) {
		struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
		struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
		ssize_t r = send_emu(fd, &m, 0);
		if (r != XD_PASS)
			return r;
	}
	return get_write()(fd, buf, len);
}

ssize_t writev(int fd, const struct iovec *iov, int n)
{
	if (emu_or_genl(fd)) {
		struct msghdr m = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)n};
		if (n < 0) {
			errno = EINVAL;
			return -1;
		}
		ssize_t r = send_emu(fd, &m, 0);
		if (r != XD_PASS)
			return r;
	}
	return get_writev()(fd, iov, n);
}

int recvmmsg(int fd, struct mmsghdr *vec, unsigned int n, int flags, struct timespec *timeout)
{
	if (emu_or_genl(fd)) {
		if (refuse(fd))
			return -1;
		int err = 0;
		return (int)ret_after(xdgo_mmsg(fd, (uintptr_t)vec, n, flags, 0, &err), &err);
	}
	return get_recvmmsg()(fd, vec, n, flags, timeout);
}

int sendmmsg(int fd, struct mmsghdr *vec, unsigned int n, int flags)
{
	if (emu_or_genl(fd)) {
		if (refuse(fd))
			return -1;
		int err = 0;
		return (int)ret_after(xdgo_mmsg(fd, (uintptr_t)vec, n, flags, 1, &err), &err);
	}
	return get_sendmmsg()(fd, vec, n, flags);
}

// The _FORTIFY_SOURCE entry points (the size checks are the compiler's).
ssize_t __read_chk(int fd, void *buf, size_t len, size_t buflen) { return read(fd, buf, len); }
ssize_t __recv_chk(int fd, void *buf, size_t len, size_t buflen, int flags) { return recv(fd, buf, len, flags); }
ssize_t __recvfrom_chk(int fd, void *buf, size_t len, size_t buflen, int flags, struct sockaddr *addr, socklen_t *lenp)
{
	return recvfrom(fd, buf, len, flags, addr, lenp);
}

int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
	if (kind(fd) == XD_EMU) {
		if (refuse(fd))
			return -1;
		int err = 0;
		int r = xdgo_setsockopt(fd, level, name, (uintptr_t)val, len, &err);
		if (r != XD_PASS)
			return (int)ret(r, err);
	}
	return get_setsockopt()(fd, level, name, val, len);
}

int getsockopt(int fd, int level, int name, void *val, socklen_t *lenp)
{
	if (kind(fd) == XD_EMU) {
		if (refuse(fd))
			return -1;
		int err = 0;
		return (int)ret_after(xdgo_getsockopt(fd, level, name, (uintptr_t)val, (uintptr_t)lenp, &err), &err);
	}
	return get_getsockopt()(fd, level, name, val, lenp);
}

int getsockname(int fd, struct sockaddr *addr, socklen_t *lenp)
{
	if (kind(fd) == XD_EMU) {
		if (refuse(fd))
			return -1;
		int err = 0;
		return (int)ret_after(xdgo_sockname(fd, 0, (uintptr_t)addr, (uintptr_t)lenp, &err), &err);
	}
	return get_getsockname()(fd, addr, lenp);
}

int getpeername(int fd, struct sockaddr *addr, socklen_t *lenp)
{
	if (kind(fd) == XD_EMU) {
		if (refuse(fd))
			return -1;
		int err = 0;
		return (int)ret_after(xdgo_sockname(fd, 1, (uintptr_t)addr, (uintptr_t)lenp, &err), &err);
	}
	return get_getpeername()(fd, addr, lenp);
}

int shutdown(int fd, int how)
{
	if (kind(fd) == XD_EMU) {
		if (refuse(fd))
			return -1;
		int err = 0;
		return (int)ret_after(xdgo_shutdown(fd, how, &err), &err);
	}
	return get_shutdown()(fd, how);
}

// ---- readiness ----

// A pointer into the first page is certainly bad: libc's function gets
// it, and the kernel says EFAULT.
static inline int bad_ptr(const void *p) { return (uintptr_t)p < 4096; }

// safe_copy copies n bytes from src to dst, where one of them is the
// application's and may be a bad address: -1 (EFAULT) instead of a crash.
// The kernel does the copy (process_vm_readv/writev on this process) unless
// the application's side is on the caller's stack; where those calls are
// not allowed (a seccomp filter), the copy is made directly.
static int safe_copy(void *dst, const void *src, size_t n, int to_app)
{
	if (n == 0 || on_own_stack(to_app ? dst : src, n)) {
		memcpy(dst, src, n);
		return 0;
	}
	struct iovec l = {.iov_base = to_app ? (void *)src : dst, .iov_len = n};
	struct iovec r = {.iov_base = to_app ? dst : (void *)src, .iov_len = n};
	int saved = errno;
	ssize_t got = to_app ? process_vm_writev(self_pid, &l, 1, &r, 1, 0) : process_vm_readv(self_pid, &l, 1, &r, 1, 0);
	if (got == (ssize_t)n || (got < 0 && errno != EFAULT)) {
		if (got < 0)
			memcpy(dst, src, n);
		errno = saved;
		return 0;
	}
	errno = saved;
	return -1;
}

static inline int copy_in(void *dst, const void *app, size_t n) { return safe_copy(dst, app, n, 0); }
static inline int copy_out(void *app, const void *src, size_t n) { return safe_copy(app, src, n, 1); }

// any_emu reports whether the pollfd array names an emulated socket. It
// reads the array without trusting it: one it cannot read names none, and
// the kernel's poll, which gets it then, fails EFAULT as it should.
static int any_emu(const struct pollfd *fds, nfds_t n)
{
	if (!active() || !__atomic_load_n(&emu_fds, __ATOMIC_ACQUIRE) || bad_ptr(fds))
		return 0;
	struct pollfd buf[64];
	for (nfds_t i = 0; i < n; i += 64) {
		nfds_t k = n - i < 64 ? n - i : 64;
		if (copy_in(buf, fds + i, k * sizeof(buf[0])))
			return 0;
		for (nfds_t j = 0; j < k; j++)
			if (xd_get_kind(buf[j].fd) == XD_EMU)
				return 1;
	}
	return 0;
}

// ts_ns reads a timeout (NULL: none, -1); a bad address is EFAULT (-2).
static long long ts_ns(const struct timespec *ts)
{
	if (!ts)
		return -1;
	struct timespec t;
	if (copy_in(&t, ts, sizeof(t)))
		return -2;
	return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

int poll(struct pollfd *fds, nfds_t n, int timeout)
{
	if (any_emu(fds, n)) {
		int err = 0;
		long long ns = timeout < 0 ? -1 : (long long)timeout * 1000000LL;
		return (int)ret_after(xdgo_poll((uintptr_t)fds, n, ns, 0, &err), &err);
	}
	return get_poll()(fds, n, timeout);
}

int ppoll(struct pollfd *fds, nfds_t n, const struct timespec *ts, const sigset_t *mask)
{
	if (any_emu(fds, n)) {
		long long ns = ts_ns(ts);
		if (ns == -2) {
			errno = EFAULT;
			return -1;
		}
		int err = 0;
		return (int)ret_after(xdgo_poll((uintptr_t)fds, n, ns, (uintptr_t)mask, &err), &err);
	}
	return get_ppoll()(fds, n, ts, mask);
}

int __poll_chk(struct pollfd *fds, nfds_t n, int timeout, size_t fdslen) { return poll(fds, n, timeout); }

// select_emu runs select over poll when an emulated socket is in a set.
// The sets are read and written as the kernel's select does (the first
// nfds bits, in longs), without trusting their addresses: a set it cannot
// read leaves the call to the kernel's select, which fails EFAULT; one it
// cannot write back is EFAULT. ts is the timeout (timeval or timespec,
// by tv_usec), read here so that a bad one is EFAULT too.
static int select_emu(int nfds, fd_set *ar, fd_set *aw, fd_set *ae, const void *ts, int usec, const sigset_t *mask,
		      int *handled)
{
	*handled = 0;
	if (!active() || !__atomic_load_n(&emu_fds, __ATOMIC_ACQUIRE) || nfds <= 0 || nfds > FD_SETSIZE ||
	    (ar && bad_ptr(ar)) || (aw && bad_ptr(aw)) || (ae && bad_ptr(ae)))
		return 0;
	size_t bytes = (size_t)(nfds + 8 * sizeof(long) - 1) / (8 * sizeof(long)) * sizeof(long);
	fd_set rs, ws, es, *r = NULL, *w = NULL, *e = NULL;
	FD_ZERO(&rs);
	FD_ZERO(&ws);
	FD_ZERO(&es);
	if ((ar && copy_in(r = &rs, ar, bytes)) || (aw && copy_in(w = &ws, aw, bytes)) || (ae && copy_in(e = &es, ae, bytes)))
		return 0;
	int found = 0;
	for (int fd = 0; fd < nfds && !found; fd++)
		if (((r && FD_ISSET(fd, r)) || (w && FD_ISSET(fd, w)) || (e && FD_ISSET(fd, e))) &&
		    xd_get_kind(fd) == XD_EMU)
			found = 1;
	if (!found)
		return 0;
	*handled = 1;
	long long ns = -1;
	if (ts) {
		struct timespec t;
		if (copy_in(&t, ts, sizeof(t))) {
			errno = EFAULT;
			return -1;
		}
		ns = (long long)t.tv_sec * 1000000000LL + (long long)t.tv_nsec * (usec ? 1000 : 1);
	}
	struct pollfd pfd[FD_SETSIZE];
	nfds_t n = 0;
	for (int fd = 0; fd < nfds; fd++) {
		short ev = 0;
		if (r && FD_ISSET(fd, r))
			ev |= POLLIN;
		if (w && FD_ISSET(fd, w))
			ev |= POLLOUT;
		if (e && FD_ISSET(fd, e))
			ev |= POLLPRI;
		if (ev)
			pfd[n++] = (struct pollfd){.fd = fd, .events = ev};
	}
	int err = 0;
	int rc = xdgo_poll((uintptr_t)pfd, n, ns, (uintptr_t)mask, &err);
	if (rc < 0) {
		errno = err;
		return -1;
	}
	if (r)
		FD_ZERO(r);
	if (w)
		FD_ZERO(w);
	if (e)
		FD_ZERO(e);
	int count = 0;
	for (nfds_t i = 0; i < n; i++) {
		short re = pfd[i].revents;
		if (re & POLLNVAL) {
			errno = EBADF;
			return -1;
		}
		if ((pfd[i].events & POLLIN) && (re & (POLLIN | POLLHUP | POLLERR))) {
			FD_SET(pfd[i].fd, r);
			count++;
		}
		if ((pfd[i].events & POLLOUT) && (re & (POLLOUT | POLLERR))) {
			FD_SET(pfd[i].fd, w);
			count++;
		}
		if ((pfd[i].events & POLLPRI) && (re & POLLPRI)) {
			FD_SET(pfd[i].fd, e);
			count++;
		}
	}
	if ((ar && copy_out(ar, r, bytes)) || (aw && copy_out(aw, w, bytes)) || (ae && copy_out(ae, e, bytes))) {
		errno = EFAULT;
		return -1;
	}
	return count;
}

int select(int nfds, fd_set *r, fd_set *w, fd_set *e, struct timeval *tv)
{
	int handled;
	long long t0 = mono_ns();
	int rc = select_emu(nfds, r, w, e, tv, 1, NULL, &handled);
	if (!handled)
		return get_select()(nfds, r, w, e, tv);
	struct timeval in;
	if (tv && rc >= 0 && !copy_in(&in, tv, sizeof(in))) { // Linux select leaves the time not slept in tv
		long long ns = (long long)in.tv_sec * 1000000000LL + (long long)in.tv_usec * 1000LL;
		long long left = ns - (mono_ns() - t0);
		if (left < 0 || rc == 0)
			left = 0;
		struct timeval out = {.tv_sec = left / 1000000000LL, .tv_usec = (left % 1000000000LL) / 1000};
		copy_out(tv, &out, sizeof(out)); // a read-only timeval is left as it is, as the kernel does
	}
	return rc;
}

int pselect(int nfds, fd_set *r, fd_set *w, fd_set *e, const struct timespec *ts, const sigset_t *mask)
{
	int handled;
	int rc = select_emu(nfds, r, w, e, ts, 0, mask, &handled);
	if (!handled)
		return get_pselect()(nfds, r, w, e, ts, mask);
	return rc;
}

int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
	if (kind(fd) == XD_EMU) {
		if (refuse(fd))
			return -1;
		int err = 0;
		int r = xdgo_epoll_ctl(epfd, op, fd, (uintptr_t)ev, &err);
		if (r != XD_PASS)
			return (int)ret(r, err);
	}
	return get_epoll_ctl()(epfd, op, fd, ev);
}

int epoll_wait(int epfd, struct epoll_event *evs, int max, int timeout)
{
	if (kind(epfd) == XD_EPOLL) {
		int err = 0;
		long long ns = timeout < 0 ? -1 : (long long)timeout * 1000000LL;
		return (int)ret_after(xdgo_epoll_wait(epfd, (uintptr_t)evs, max, ns, 0, &err), &err);
	}
	return get_epoll_wait()(epfd, evs, max, timeout);
}

int epoll_pwait(int epfd, struct epoll_event *evs, int max, int timeout, const sigset_t *mask)
{
	if (kind(epfd) == XD_EPOLL) {
		int err = 0;
		long long ns = timeout < 0 ? -1 : (long long)timeout * 1000000LL;
		return (int)ret_after(xdgo_epoll_wait(epfd, (uintptr_t)evs, max, ns, (uintptr_t)mask, &err), &err);
	}
	return get_epoll_pwait()(epfd, evs, max, timeout, mask);
}

// ---- ethtool through the shell ----

// popen'd streams the library answered itself, with their exit status.
#define XD_POPENS 16
static struct {
	FILE *f;
	int status;
} popens[XD_POPENS];
static pthread_mutex_t popens_mu = PTHREAD_MUTEX_INITIALIZER;

static int maybe_ethtool(const char *cmd) { return active() && cmd && strstr(cmd, "ethtool"); }

int system(const char *cmd)
{
	if (maybe_ethtool(cmd)) {
		int status = 0;
		if (xdgo_system((char *)cmd, &status))
			return status;
	}
	return get_system()(cmd);
}

FILE *popen(const char *cmd, const char *type)
{
	if (maybe_ethtool(cmd) && type && type[0] == 'r') {
		int status = 0;
		int fd = xdgo_popen((char *)cmd, &status);
		if (fd >= 0) {
			FILE *f = fdopen(fd, strchr(type, 'e') ? "re" : "r");
			if (!f) {
				int e = errno;
				get_close()(fd);
				errno = e;
				return NULL;
			}
			int stored = 0;
			pthread_mutex_lock(&popens_mu);
			for (int i = 0; i < XD_POPENS && !stored; i++)
				if (!popens[i].f) {
					popens[i].f = f;
					popens[i].status = status;
					stored = 1;
				}
			pthread_mutex_unlock(&popens_mu);
			if (stored)
				return f;
			fclose(f); // table full: run the command for real
		}
	}
	return get_popen()(cmd, type);
}

int pclose(FILE *f)
{
	int found = 0, status = 0;
	pthread_mutex_lock(&popens_mu);
	for (int i = 0; i < XD_POPENS; i++)
		if (f && popens[i].f == f) {
			popens[i].f = NULL;
			status = popens[i].status;
			found = 1;
			break;
		}
	pthread_mutex_unlock(&popens_mu);
	if (!found)
		return get_pclose()(f);
	fclose(f);
	return status;
}

// preload_check: what tests/preload_test.go runs under libxdevmem beside
// the example (whose helpers it reuses): a table of bad calls on an
// emulated devmem socket and, where the kernel can answer the same call, on
// a kernel TCP socket; a program that leaks its tokens and exits; and the
// cost of a recvmsg.
//
//   preload_check badinput IFACE ADDR PORT   # prints one "row" line per call
//   preload_check leak IFACE ADDR PORT       # receives to EOF, returns no token
//   preload_check threads IFACE ADDR PORT    # receives, releases and polls on three threads
//   preload_check bench IFACE ADDR PORT N    # ns per recvmsg, emulated and kernel
#define main example_main
#include "../../examples/c/devmem_example.c"
#undef main

#include <netinet/tcp.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>

static int emu, kern, kpeer, dfd, udev;

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
static char *dmem;

// row prints a call's result on the emulated socket and on the kernel one
// ("-" when the kernel has no equivalent here).
static void row(const char *name, long e, int eerr, int kernel_too, long k, int kerr)
{
	printf("row %s emu=%ld/%d", name, e, e < 0 ? eerr : 0);
	if (kernel_too)
		printf(" kernel=%ld/%d", k, k < 0 ? kerr : 0);
	printf("\n");
}

#define BOTH(name, call)                                     \
	do {                                                 \
		int fd = emu;                                \
		errno = 0;                                   \
		long e = (call);                             \
		int ee = errno;                              \
		fd = kern;                                   \
		errno = 0;                                   \
		long k = (call);                             \
		row(name, e, ee, 1, k, errno);               \
		(void)fd;                                    \
	} while (0)

#define EMU(name, call)                          \
	do {                                     \
		errno = 0;                       \
		long e = (call);                 \
		row(name, e, errno, 0, 0, 0);    \
	} while (0)

// bad_page returns an address with nothing mapped at it; ro_page a
// read-only page holding the len bytes at src.
static void *bad_page(void)
{
	void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	munmap(p, 4096);
	return p;
}

// page_before_hole returns a mapped page with nothing mapped after it.
static char *page_before_hole(void)
{
	char *p = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	munmap(p + 4096, 4096);
	return p;
}

static void *ro_page(const void *src, size_t len)
{
	char *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	memcpy(p, src, len);
	mprotect(p, 4096, PROT_READ);
	return p;
}

// poll and select with their arrays, sets and timeouts at bad addresses;
// fd is the socket they name.
static long poll_straddling(int fd)
{
	char *p = page_before_hole();
	struct pollfd *pf = (struct pollfd *)(p + 4096 - sizeof(struct pollfd));
	*pf = (struct pollfd){.fd = fd, .events = POLLIN};
	long r = poll(pf, 2, 0); // the second entry is unmapped
	munmap(p, 4096);
	return r;
}

static long poll_readonly(int fd)
{
	struct pollfd pf = {.fd = fd, .events = POLLIN | POLLOUT};
	return poll(ro_page(&pf, sizeof(pf)), 1, 0); // ready: revents cannot be written back
}

static long ppoll_bad_timeout(int fd)
{
	struct pollfd pf = {.fd = fd, .events = POLLIN};
	return ppoll(&pf, 1, bad_page(), NULL);
}

static long select_bad_set(int fd)
{
	struct timeval tv = {0};
	return select(fd + 1, bad_page(), NULL, NULL, &tv);
}

static long select_readonly_set(int fd)
{
	fd_set set;
	FD_ZERO(&set);
	FD_SET(fd, &set);
	struct timeval tv = {0};
	return select(fd + 1, NULL, ro_page(&set, sizeof(set)), NULL, &tv);
}

static long select_bad_timeout(int fd)
{
	fd_set set;
	FD_ZERO(&set);
	FD_SET(fd, &set);
	return select(fd + 1, &set, NULL, NULL, bad_page());
}

static long pselect_bad_timeout(int fd)
{
	fd_set set;
	FD_ZERO(&set);
	FD_SET(fd, &set);
	return pselect(fd + 1, &set, NULL, NULL, bad_page(), NULL);
}

// first_of describes what a receive returned (the first fragment's dmabuf
// offset, or the first byte of ordinary data) and gives its tokens back.
static long long first_of(int fd, struct msghdr *m, const char *data)
{
	long long first = -1;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(m); cm; cm = CMSG_NXTHDR(m, cm)) {
		struct dmabuf_cmsg *d = (void *)CMSG_DATA(cm);
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_DEVMEM_DMABUF)
			continue;
		if (first < 0)
			first = (long long)d->frag_offset;
		struct dmabuf_token tok = {d->frag_token, 1};
		setsockopt(fd, SOL_SOCKET, SO_DEVMEM_DONTNEED, &tok, sizeof(tok));
	}
	return first >= 0 ? first : (unsigned char)data[0];
}

// recv_flags is recvmsg(MSG_SOCK_DEVMEM | flags) of up to len bytes; it
// gives back the tokens it got.
static long recv_flags(int fd, size_t len, int flags)
{
	static char d[65536], c[8192];
	struct iovec iov = {.iov_base = d, .iov_len = len};
	struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = c, .msg_controllen = sizeof(c)};
	long n = recvmsg(fd, &m, MSG_SOCK_DEVMEM | flags);
	int err = errno;
	if (n > 0)
		first_of(fd, &m, d);
	errno = err;
	return n;
}

// recv_into is recvmsg(MSG_SOCK_DEVMEM) of len bytes into the buffer at
// base, which may be anything; it gives back the tokens it got.
static long recv_into(int fd, void *base, size_t len)
{
	static char c[8192];
	struct iovec iov = {.iov_base = base, .iov_len = len};
	struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = c, .msg_controllen = sizeof(c)};
	long n = recvmsg(fd, &m, MSG_SOCK_DEVMEM);
	int err = errno;
	if (n > 0)
		first_of(fd, &m, "");
	errno = err;
	return n;
}

// peek_then_read peeks 4 KiB and then reads them: 1 when both calls
// returned the same bytes (the same first fragment, or first byte).
static long peek_then_read(int fd)
{
	static char d1[4096], d2[4096], c1[8192], c2[8192];
	struct iovec i1 = {.iov_base = d1, .iov_len = sizeof(d1)}, i2 = {.iov_base = d2, .iov_len = sizeof(d2)};
	struct msghdr m1 = {.msg_iov = &i1, .msg_iovlen = 1, .msg_control = c1, .msg_controllen = sizeof(c1)};
	struct msghdr m2 = {.msg_iov = &i2, .msg_iovlen = 1, .msg_control = c2, .msg_controllen = sizeof(c2)};
	long n1 = recvmsg(fd, &m1, MSG_SOCK_DEVMEM | MSG_PEEK);
	if (n1 <= 0)
		return n1;
	long long f1 = first_of(fd, &m1, d1);
	long n2 = recvmsg(fd, &m2, MSG_SOCK_DEVMEM);
	if (n2 <= 0)
		return n2;
	return n1 == n2 && f1 == first_of(fd, &m2, d2);
}

// timeo_roundtrip sets a timeout option and reads it back: the timeval in
// microseconds, or -1 and errno.
static long timeo_roundtrip(int fd, int name, long sec, long usec)
{
	struct timeval tv = {.tv_sec = sec, .tv_usec = usec}, got;
	socklen_t l = sizeof(got);
	if (setsockopt(fd, SOL_SOCKET, name, &tv, sizeof(tv)) || getsockopt(fd, SOL_SOCKET, name, &got, &l))
		return -1;
	return got.tv_sec * 1000000 + got.tv_usec;
}

// timeo_sec sets SO_RCVTIMEO to sec seconds and returns the seconds read
// back (-1 on an error).
static long timeo_sec(int fd, long sec)
{
	struct timeval tv = {.tv_sec = sec}, got;
	socklen_t l = sizeof(got);
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) || getsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &got, &l))
		return -1;
	return got.tv_sec;
}

// linger_roundtrip sets SO_LINGER to {on, secs} and reads it back: the
// row value is l_onoff * 1e10 + l_linger (as unsigned), or -2 when the
// length read back is not that of struct linger.
static long linger_roundtrip(int fd, int on, int secs)
{
	struct linger l = {on, secs}, got = {-1, -1};
	socklen_t len = sizeof(got);
	if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l)) || getsockopt(fd, SOL_SOCKET, SO_LINGER, &got, &len))
		return -1;
	if (len != sizeof(got))
		return -2;
	return got.l_onoff * 10000000000L + (unsigned)got.l_linger;
}

// timed_recv is a blocking recvmsg on an empty socket with SO_RCVTIMEO
// set to sec.usec: 1 when it failed EAGAIN after [lo, hi) ms, else what
// it returned (errno kept).
static long timed_recv(int fd, long sec, long usec, long lo, long hi)
{
	struct timeval tv = {.tv_sec = sec, .tv_usec = usec}, none = {0};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	long long t0 = now_ns();
	long r = recv_flags(fd, 4096, 0);
	int err = errno;
	long ms = (long)((now_ns() - t0) / 1000000);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none));
	errno = err;
	if (r == -1 && err == EAGAIN)
		return ms >= lo && ms < hi ? 1 : 1000 + ms;
	return r;
}

// own_segv installs a SIGSEGV handler of the program's, makes a call
// with a bad pointer (the library reads it, and must still answer EFAULT),
// then faults in the program's own code (its handler must run), and puts
// the old handler back: the call's result, or -100 if the program's
// handler did not run exactly once.
static sigjmp_buf segv_jmp;
static volatile int segv_seen;

static void on_segv(int sig, siginfo_t *si, void *ctx)
{
	(void)sig, (void)si, (void)ctx;
	segv_seen++;
	siglongjmp(segv_jmp, 1);
}

static long own_segv(int fd)
{
	struct sigaction a = {.sa_sigaction = on_segv, .sa_flags = SA_SIGINFO}, old;
	sigaction(SIGSEGV, &a, &old);
	segv_seen = 0;
	errno = 0;
	long r = setsockopt(fd, SOL_SOCKET, SO_DEVMEM_DONTNEED, bad_page(), 8);
	int err = errno;
	if (!sigsetjmp(segv_jmp, 1)) {
		volatile char c = *(volatile char *)bad_page();
		(void)c;
	}
	sigaction(SIGSEGV, &old, NULL);
	errno = err;
	return segv_seen == 1 ? r : -100;
}

// sync_thread and sync_handler make a DMA_BUF_IOCTL_SYNC with the struct
// on a new thread's stack and on a signal's alternate stack.
static void *sync_thread(void *arg)
{
	long *r = arg;
	struct dma_buf_sync s = {.flags = DMA_BUF_SYNC_START | DMA_BUF_SYNC_RW};
	errno = 0;
	r[0] = ioctl(dfd, DMA_BUF_IOCTL_SYNC, &s);
	r[1] = errno;
	return NULL;
}

static volatile long sig_sync[2];

static void sync_handler(int sig)
{
	(void)sig;
	struct dma_buf_sync s = {.flags = DMA_BUF_SYNC_END | DMA_BUF_SYNC_WRITE};
	errno = 0;
	sig_sync[0] = ioctl(dfd, DMA_BUF_IOCTL_SYNC, &s);
	sig_sync[1] = errno;
}

// steer_to_queue1 has the selftests' ethtool commands send the flow to
// port on queue 1 alone (RSS over queue 0, an ntuple rule), as ncdevmem
// does before it binds.
static void steer_to_queue1(const char *ifname, const char *addr, int port)
{
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "ethtool -X %s equal 1", ifname);
	if (system(cmd))
		error(1, 0, "%s", cmd);
	snprintf(cmd, sizeof(cmd), "ethtool -N %s flow-type %s dst-port %d queue 1 >/dev/null", ifname,
		 strchr(addr, ':') ? "tcp6" : "tcp4", port);
	if (system(cmd))
		error(1, 0, "%s", cmd);
}

// emu_listener is a listening TCP socket on addr:port (the emulated
// interface's address): AF_INET6, an IPv4 address v4-mapped, as ncdevmem
// does.
static int emu_listener(const char *addr, int port)
{
	struct sockaddr_in6 sa;
	char mapped[64];
	snprintf(mapped, sizeof(mapped), strchr(addr, ':') ? "%s" : "::ffff:%s", addr);
	int ls = tcp_socket(mapped, port, &sa);
	if (bind(ls, (void *)&sa, sizeof(sa)) < 0 || listen(ls, 1) < 0)
		error(1, errno, "emulated listener");
	return ls;
}

// setup binds a dmabuf to queue 1, listens on ADDR:PORT (emulated) and
// 127.0.0.1:PORT (kernel), prints "ready" and accepts one connection on
// each: the test's peer connects to the first, this program to the second.
static void setup(const char *ifname, const char *addr, int port)
{
	dmem = dmabuf_alloc(&dfd);
	steer_to_queue1(ifname, addr, port);
	bind_dmabuf(if_nametoindex(ifname), dfd, 1);
	int ls = emu_listener(addr, port);
	struct sockaddr_in6 sa;
	int kls = tcp_socket("::ffff:127.0.0.1", port, &sa);
	if (bind(kls, (void *)&sa, sizeof(sa)) < 0 || listen(kls, 1) < 0)
		error(1, errno, "kernel listener");
	int kc = kpeer = tcp_socket("::ffff:127.0.0.1", port, &sa);
	if (connect(kc, (void *)&sa, sizeof(sa)) < 0)
		error(1, errno, "kernel connect");
	printf("ready\n");
	fflush(stdout);
	emu = accept(ls, NULL, NULL);
	kern = accept(kls, NULL, NULL);
	if (emu < 0 || kern < 0)
		error(1, errno, "accept");
	static char buf[65536];
	memset(buf, 1, sizeof(buf));
	if (write(kc, buf, sizeof(buf)) != sizeof(buf))
		error(1, errno, "kernel write");
	for (int fd = emu;; fd = kern) { // wait for data on both
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, 10000) != 1 || !(p.revents & POLLIN))
			error(1, errno, "no data on fd %d", fd);
		if (fd == kern)
			break;
	}
}

static int do_badinput(const char *ifname, const char *addr, int port)
{
	setup(ifname, addr, port);
	static char data[4096], ctrl[4096];
	struct iovec iov = {.iov_base = data, .iov_len = sizeof(data)};
	struct msghdr ok = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctrl, .msg_controllen = sizeof(ctrl)};
	struct msghdr m;
	struct iovec big[1025];
	for (int i = 0; i < 1025; i++)
		big[i] = iov;
	int one = 1, v = 0;
	socklen_t len;
	struct sockaddr_in6 sa;
	struct dmabuf_token toks[129] = {{0}};

	// recvmsg: the msghdr and iovec array, before any data moves.
	BOTH("recvmsg/null-msghdr", recvmsg(fd, NULL, MSG_SOCK_DEVMEM));
	BOTH("recvmsg/bad-msghdr", recvmsg(fd, (void *)8, MSG_SOCK_DEVMEM));
	m = ok, m.msg_iov = NULL;
	BOTH("recvmsg/null-iov", recvmsg(fd, &m, MSG_SOCK_DEVMEM));
	m = ok, m.msg_iov = big, m.msg_iovlen = 1025;
	BOTH("recvmsg/iovlen-1025", recvmsg(fd, &m, MSG_SOCK_DEVMEM));
	struct iovec neg = {.iov_base = data, .iov_len = (size_t)-1};
	m = ok, m.msg_iov = &neg;
	BOTH("recvmsg/negative-iov-len", recvmsg(fd, &m, MSG_SOCK_DEVMEM));
	BOTH("recv/null-buf", recv(fd, NULL, 100, MSG_DONTWAIT));
	// recvmsg on dmabuf data (the kernel's tcp_recvmsg_dmabuf).
	EMU("recvmsg/dmabuf-without-flag", recvmsg(emu, &ok, 0));
	m = ok, m.msg_control = NULL, m.msg_controllen = 0;
	EMU("recvmsg/no-control-room", recvmsg(emu, &m, MSG_SOCK_DEVMEM));
	m = ok, m.msg_controllen = 20;
	EMU("recvmsg/short-control", recvmsg(emu, &m, MSG_SOCK_DEVMEM));
	m = ok, m.msg_control = (void *)16;
	EMU("recvmsg/bad-control", recvmsg(emu, &m, MSG_SOCK_DEVMEM));
	EMU("read/dmabuf", read(emu, data, sizeof(data)));
	// Dmabuf fragments never touch the iovec: an unmapped one is no error.
	EMU("recvmsg/dmabuf-unmapped-iov", recv_into(emu, bad_page(), 4096));
	// Receive flags (tcp_recvmsg_locked): MSG_PEEK leaves the data (and
	// hands out tokens of its own), MSG_TRUNC discards without copying,
	// MSG_WAITALL fills the buffer, MSG_OOB without urgent data is EINVAL.
	BOTH("recvmsg/peek-then-read", peek_then_read(fd));
	BOTH("recvmsg/trunc-100", recv_flags(fd, 100, MSG_TRUNC));
	BOTH("recvmsg/waitall-4096", recv_flags(fd, 4096, MSG_WAITALL));
	BOTH("recvmsg/oob", recv_flags(fd, 1, MSG_OOB));

	// SO_DEVMEM_DONTNEED (sock_devmem_dontneed: length, copy, tokens).
	BOTH("dontneed/null", setsockopt(fd, SOL_SOCKET, SO_DEVMEM_DONTNEED, NULL, 8));
	BOTH("dontneed/bad-pointer-own-segv-handler", own_segv(fd));
	BOTH("dontneed/bad-pointer", setsockopt(fd, SOL_SOCKET, SO_DEVMEM_DONTNEED, (void *)8, 8));
	BOTH("dontneed/len-7", setsockopt(fd, SOL_SOCKET, SO_DEVMEM_DONTNEED, toks, 7));
	BOTH("dontneed/len-0", setsockopt(fd, SOL_SOCKET, SO_DEVMEM_DONTNEED, toks, 0));
	BOTH("dontneed/129-tokens", setsockopt(fd, SOL_SOCKET, SO_DEVMEM_DONTNEED, toks, sizeof(toks)));
	toks[0] = (struct dmabuf_token){12345, 1};
	BOTH("dontneed/unknown-token", setsockopt(fd, SOL_SOCKET, SO_DEVMEM_DONTNEED, toks, 8));
	BOTH("dontneed/wrong-level-tcp", setsockopt(fd, IPPROTO_TCP, SO_DEVMEM_DONTNEED, toks, 8));
	BOTH("getsockopt/dontneed", getsockopt(fd, SOL_SOCKET, SO_DEVMEM_DONTNEED, toks, &(socklen_t){8}));

	// Other options: lengths, pointers, levels.
	BOTH("setsockopt/short-int", setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, 2));
	BOTH("setsockopt/null-int", setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, NULL, 4));
	BOTH("setsockopt/negative-len", setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, -1));
	BOTH("setsockopt/unknown-level", setsockopt(fd, 9999, 1, &one, 4));
	BOTH("setsockopt/unknown-name", setsockopt(fd, SOL_SOCKET, 9999, &one, 4));
	BOTH("setsockopt/tcp-unknown", setsockopt(fd, IPPROTO_TCP, 9999, &one, 4));
	BOTH("setsockopt/nodelay", setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, 4));
	BOTH("setsockopt/v6only-after-bind", setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, 4));
	len = 4;
	BOTH("getsockopt/null-val", getsockopt(fd, SOL_SOCKET, SO_TYPE, NULL, &len));
	BOTH("getsockopt/null-len", getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, NULL));
	len = -1;
	BOTH("getsockopt/negative-len", getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &len));
	BOTH("getsockopt/type", (len = 4, getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &len) ?: v * 100 + (int)len));
	BOTH("getsockopt/short-len", (len = 2, v = 0, getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &len) ?: v * 100 + (int)len));
	BOTH("getsockopt/domain", (len = 4, getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &v, &len) ?: v));
	BOTH("getsockopt/error", (len = 4, getsockopt(fd, SOL_SOCKET, SO_ERROR, &v, &len) ?: v));
	BOTH("getsockopt/unknown", (len = 4, getsockopt(fd, SOL_SOCKET, 9999, &v, &len)));

	// bind: a port someone holds is EADDRINUSE at bind, as in the kernel
	// (a wildcard listener holds port+1 here), and port 0 is a port at
	// once (getsockname, row value 1 when it is not 0).
	{
		char mapped[64];
		snprintf(mapped, sizeof(mapped), strchr(addr, ':') ? "%s" : "::ffff:%s", addr);
		struct sockaddr_in6 any = {.sin6_family = AF_INET6, .sin6_port = htons(port + 1)}, b;
		int holder = socket(AF_INET6, SOCK_STREAM, 0);
		if (bind(holder, (void *)&any, sizeof(any)) || listen(holder, 1))
			error(1, errno, "wildcard listener");
		int s1 = tcp_socket(mapped, port + 1, &b), k1 = tcp_socket("::ffff:127.0.0.1", port + 1, &sa);
		long e = bind(s1, (void *)&b, sizeof(b));
		int ee = errno;
		long k = bind(k1, (void *)&sa, sizeof(sa));
		row("bind/port-in-use", e, ee, 1, k, errno);
		int s2 = tcp_socket(mapped, 0, &b), k2 = tcp_socket("::ffff:127.0.0.1", 0, &sa);
		socklen_t bl = sizeof(b), kl = sizeof(sa);
		e = bind(s2, (void *)&b, sizeof(b)) ?: getsockname(s2, (void *)&b, &bl) ?: b.sin6_port != 0;
		k = bind(k2, (void *)&sa, sizeof(sa)) ?: getsockname(k2, (void *)&sa, &kl) ?: sa.sin6_port != 0;
		row("bind/port-0", e, 0, 1, k, 0);
		close(s1), close(k1), close(s2), close(k2), close(holder);
	}

	// SO_RCVTIMEO and SO_SNDTIMEO: kept in jiffies, as sock_set_timeout
	// keeps them (row value: the timeval read back, in microseconds).
	BOTH("rcvtimeo/get", timeo_roundtrip(fd, SO_RCVTIMEO, 1, 234567));
	BOTH("sndtimeo/get", timeo_roundtrip(fd, SO_SNDTIMEO, 0, 1));
	BOTH("rcvtimeo/usec-range", timeo_roundtrip(fd, SO_RCVTIMEO, 0, 1000000));
	BOTH("rcvtimeo/negative", timeo_roundtrip(fd, SO_RCVTIMEO, -5, 0));
	BOTH("rcvtimeo/none", timeo_roundtrip(fd, SO_RCVTIMEO, 0, 0));
	{
		// The longest time sock_set_timeout keeps: MAX_SCHEDULE_TIMEOUT /
		// HZ - 2 seconds (HZ from the jiffy SO_RCVTIMEO of 1 us reads
		// back as); row value 1 if it reads back unchanged.
		long hz = 1000000 / timeo_roundtrip(kern, SO_RCVTIMEO, 0, 1), sec = 0x7fffffffffffffffL / hz - 2;
		BOTH("rcvtimeo/longest", timeo_sec(fd, sec) == sec);
		BOTH("rcvtimeo/too-long", timeo_sec(fd, sec + 1));
		BOTH("rcvtimeo/none-again", timeo_roundtrip(fd, SO_RCVTIMEO, 0, 0));
	}
	BOTH("sndtimeo/none", timeo_roundtrip(fd, SO_SNDTIMEO, 0, 0));

	// SO_LINGER: the flag and sk_lingertime in jiffies, as sk_setsockopt
	// keeps them (off keeps the time; a negative time is the longest).
	BOTH("linger/on-5", linger_roundtrip(fd, 1, 5));
	BOTH("linger/onoff-7", linger_roundtrip(fd, 7, 9));
	BOTH("linger/off-keeps-time", linger_roundtrip(fd, 0, 3));
	BOTH("linger/negative", linger_roundtrip(fd, 1, -1));
	BOTH("linger/int-max", linger_roundtrip(fd, 1, 2147483647));
	BOTH("linger/short", setsockopt(fd, SOL_SOCKET, SO_LINGER, &(struct linger){1, 1}, 7));
	BOTH("linger/null", setsockopt(fd, SOL_SOCKET, SO_LINGER, NULL, 8));
	BOTH("linger/get-short", (len = 4, v = -1, getsockopt(fd, SOL_SOCKET, SO_LINGER, &v, &len) ?: v * 100 + (int)len));
	BOTH("linger/off", linger_roundtrip(fd, 0, 0));

	// Names, shutdown, state.
	len = sizeof(sa);
	BOTH("getsockname/null-addr", getsockname(fd, NULL, &len));
	BOTH("getsockname/null-len", getsockname(fd, (void *)&sa, NULL));
	BOTH("getsockname/negative-len", (len = -1, getsockname(fd, (void *)&sa, &len)));
	BOTH("getsockname/short", (len = 4, getsockname(fd, (void *)&sa, &len) ?: (int)len));
	BOTH("getpeername/family", (len = sizeof(sa), getpeername(fd, (void *)&sa, &len) ?: sa.sin6_family * 100 + (int)len));
	BOTH("shutdown/bad-how", shutdown(fd, 7));
	BOTH("bind/connected", bind(fd, (void *)&sa, sizeof(sa)));
	BOTH("bind/short-len", bind(fd, (void *)&sa, 8));
	BOTH("connect/connected", connect(fd, (void *)&sa, sizeof(sa)));
	BOTH("listen/connected", listen(fd, 1));
	BOTH("accept/connected", accept(fd, NULL, NULL));
	BOTH("accept4/bad-flags", accept4(fd, NULL, NULL, 0x40000000));
	BOTH("fcntl/getfl", fcntl(fd, F_GETFL) & (O_ACCMODE | O_NONBLOCK));
	BOTH("ioctl/fionread-null", ioctl(fd, FIONREAD, NULL));
	BOTH("ioctl/unknown", ioctl(fd, 0x12345678, NULL));
	BOTH("sendmsg/null-msghdr", sendmsg(fd, NULL, 0));
	BOTH("send/null-buf", send(fd, NULL, 100, MSG_DONTWAIT));
	BOTH("poll/null", poll(NULL, 1, 0));
	BOTH("poll/unmapped", poll(bad_page(), 1, 0));
	BOTH("poll/straddles-unmapped", poll_straddling(fd));
	BOTH("poll/read-only", poll_readonly(fd));
	BOTH("select/bad-set", select_bad_set(fd));
	BOTH("select/read-only-set", select_readonly_set(fd));
	// glibc reads these timeouts itself (a kernel socket's call crashes
	// in libc); the system calls answer EFAULT, and so does the library.
	EMU("ppoll/bad-timeout", ppoll_bad_timeout(emu));
	EMU("select/bad-timeout", select_bad_timeout(emu));
	EMU("pselect/bad-timeout", pselect_bad_timeout(emu));

	// epoll: one epoll fd per socket; ep(fd) names the socket's.
	int eps[2] = {epoll_create1(EPOLL_CLOEXEC), epoll_create1(EPOLL_CLOEXEC)};
#define ep(fd) eps[(fd) == kern]
	struct epoll_event ev = {.events = EPOLLIN};
	BOTH("epoll_ctl/null-event", epoll_ctl(ep(fd), EPOLL_CTL_ADD, fd, NULL));
	BOTH("epoll_ctl/bad-op", epoll_ctl(ep(fd), 99, fd, &ev));
	BOTH("epoll_ctl/add", epoll_ctl(ep(fd), EPOLL_CTL_ADD, fd, &ev));
	BOTH("epoll_ctl/add-twice", epoll_ctl(ep(fd), EPOLL_CTL_ADD, fd, &ev));
	BOTH("epoll_wait/zero-max", epoll_wait(ep(fd), &ev, 0, 0));
	BOTH("epoll_wait/null-events", epoll_wait(ep(fd), NULL, 1, 0));
	BOTH("epoll_wait/ready", epoll_wait(ep(fd), &ev, 1, 1000));
	BOTH("epoll_ctl/del", epoll_ctl(ep(fd), EPOLL_CTL_DEL, fd, NULL));

	// The dmabuf and the udmabuf device (udmabuf_create, dma_buf_ioctl,
	// dma_buf_mmap_internal, dma_buf_llseek).
	struct dma_buf_sync sync = {.flags = DMA_BUF_SYNC_START};
	EMU("sync/null", ioctl(dfd, DMA_BUF_IOCTL_SYNC, NULL));
	EMU("sync/no-direction", ioctl(dfd, DMA_BUF_IOCTL_SYNC, &sync));
	sync.flags = 0x100;
	EMU("sync/unknown-flag", ioctl(dfd, DMA_BUF_IOCTL_SYNC, &sync));
	sync.flags = DMA_BUF_SYNC_END | DMA_BUF_SYNC_RW;
	EMU("sync/ok", ioctl(dfd, DMA_BUF_IOCTL_SYNC, &sync));
	// The library answers a struct on the caller's stack in C and any
	// other in Go: the same answers from both, and from another thread's
	// stack and a signal's alternate stack.
	struct dma_buf_sync *heap = malloc(sizeof(*heap));
	heap->flags = DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ;
	EMU("sync/heap-ok", ioctl(dfd, DMA_BUF_IOCTL_SYNC, heap));
	heap->flags = DMA_BUF_SYNC_END;
	EMU("sync/heap-no-direction", ioctl(dfd, DMA_BUF_IOCTL_SYNC, heap));
	free(heap);
	EMU("sync/unmapped", ioctl(dfd, DMA_BUF_IOCTL_SYNC, bad_page()));
	char *page = page_before_hole();
	memcpy(page + 4092, &sync.flags, 4);
	EMU("sync/straddles-unmapped", ioctl(dfd, DMA_BUF_IOCTL_SYNC, page + 4092));
	munmap(page, 4096);
	pthread_t th;
	long tr[2];
	pthread_create(&th, NULL, sync_thread, tr);
	pthread_join(th, NULL);
	EMU("sync/thread-stack-ok", (errno = (int)tr[1], tr[0]));
	stack_t alt = {.ss_sp = malloc(65536), .ss_size = 65536};
	sigaltstack(&alt, NULL);
	struct sigaction act = {.sa_handler = sync_handler, .sa_flags = SA_ONSTACK};
	sigaction(SIGUSR1, &act, NULL);
	raise(SIGUSR1);
	EMU("sync/altstack-ok", (errno = sig_sync[1], sig_sync[0]));
	EMU("dmabuf/unknown-ioctl", ioctl(dfd, 0x1234, NULL));
	EMU("dmabuf/seek-end", lseek(dfd, 0, SEEK_END));
	EMU("dmabuf/seek-cur", lseek(dfd, 0, SEEK_CUR));
	EMU("dmabuf/mmap-past-end", mmap(NULL, size + 4096, PROT_READ, MAP_SHARED, dfd, 0) == MAP_FAILED ? -1 : 0);
	EMU("dmabuf/mmap-private", mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, dfd, 0) == MAP_FAILED ? -1 : 0);
	udev = open("/dev/udmabuf", O_RDWR);
	int mfd = memfd_create("check", MFD_ALLOW_SEALING), plain = memfd_create("check", 0);
	ftruncate(mfd, 1 << 20);
	ftruncate(plain, 1 << 20);
	fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK);
	struct udmabuf_create c = {.memfd = mfd, .offset = 0, .size = 1 << 20};
	EMU("udmabuf/null", ioctl(udev, UDMABUF_CREATE, NULL));
	EMU("udmabuf/unknown-ioctl", ioctl(udev, 0x1234, NULL));
	EMU("udmabuf/ok", ioctl(udev, UDMABUF_CREATE, &c) >= 0 ? 0 : -1);
	c.size = 0;
	EMU("udmabuf/size-0", ioctl(udev, UDMABUF_CREATE, &c));
	c.size = 4096, c.offset = 100;
	EMU("udmabuf/unaligned", ioctl(udev, UDMABUF_CREATE, &c));
	c.offset = 0, c.size = 2 << 20;
	EMU("udmabuf/past-end", ioctl(udev, UDMABUF_CREATE, &c));
	c.size = 128 << 20;
	EMU("udmabuf/over-limit", ioctl(udev, UDMABUF_CREATE, &c));
	c.size = 4096, c.memfd = plain;
	EMU("udmabuf/not-sealed", ioctl(udev, UDMABUF_CREATE, &c));
	c.memfd = 1000;
	EMU("udmabuf/bad-fd", ioctl(udev, UDMABUF_CREATE, &c));

	// fork: the child keeps its plain fds; the emulated socket lives in
	// the parent's stack, so the child's calls on it are EOPNOTSUPP (and
	// close works). The parent's socket is untouched.
	int pfd[2];
	if (pipe(pfd) < 0)
		error(1, errno, "pipe");
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		long r[4];
		errno = 0;
		r[0] = write(pfd[1], "x", 1) == 1 ? 0 : -errno;
		errno = 0;
		r[1] = recv(emu, data, sizeof(data), MSG_DONTWAIT) < 0 ? -errno : 0;
		errno = 0;
		r[2] = setsockopt(emu, SOL_SOCKET, SO_DEVMEM_DONTNEED, toks, 8) < 0 ? -errno : 0;
		r[3] = close(emu) < 0 ? -errno : 0;
		write(pfd[1], r, sizeof(r));
		_exit(0);
	}
	char x;
	long r[4];
	if (pid < 0 || read(pfd[0], &x, 1) != 1 || read(pfd[0], r, sizeof(r)) != sizeof(r) || waitpid(pid, NULL, 0) != pid)
		error(1, errno, "fork");
	EMU("fork/child-plain-fd", r[0]);
	EMU("fork/child-recv", r[1]);
	EMU("fork/child-dontneed", r[2]);
	EMU("fork/child-close", r[3]);
	EMU("fork/parent-still-works", (len = 4, getsockopt(emu, SOL_SOCKET, SO_TYPE, &v, &len) ?: v));
	fflush(stdout);
	return 0;
}

// recv_devmem is a blocking recvmsg(MSG_SOCK_DEVMEM) of fd into data and
// ctrl, described by *m and *iov; an error ends the program.
static ssize_t recv_devmem(int fd, struct msghdr *m, struct iovec *iov, void *data, size_t dlen, void *ctrl, size_t clen)
{
	*iov = (struct iovec){.iov_base = data, .iov_len = dlen};
	*m = (struct msghdr){.msg_iov = iov, .msg_iovlen = 1, .msg_control = ctrl, .msg_controllen = clen};
	ssize_t n = recvmsg(fd, m, MSG_SOCK_DEVMEM);
	if (n < 0)
		error(1, errno, "recvmsg");
	return n;
}

// do_leak receives to the end and returns no token: exit must free them.
static int do_leak(const char *ifname, const char *addr, int port)
{
	setup(ifname, addr, port);
	static char data[65536], ctrl[64 * CMSG_SPACE(sizeof(struct dmabuf_cmsg))];
	size_t total = 0;
	for (;;) {
		struct iovec iov;
		struct msghdr m;
		ssize_t n = recv_devmem(emu, &m, &iov, data, sizeof(data), ctrl, sizeof(ctrl));
		if (n == 0)
			break;
		total += n;
	}
	printf("leaked the tokens of %zu bytes\n", total);
	fflush(stdout);
	exit(0); // no close, no DONTNEED
}

// do_threads receives on two threads at once and returns the tokens on a
// third, with a fourth polling the socket meanwhile, until the peer closes.
static pthread_mutex_t tmu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t tcv = PTHREAD_COND_INITIALIZER;
static uint32_t tq[1 << 16];
static size_t tq_head, tq_tail, t_freed, t_polls;
static int t_done;

static void *releaser(void *arg)
{
	(void)arg;
	struct dmabuf_token toks[128];
	for (;;) {
		pthread_mutex_lock(&tmu);
		while (tq_head == tq_tail && !t_done)
			pthread_cond_wait(&tcv, &tmu);
		int n = 0;
		while (tq_head != tq_tail && n < 128)
			toks[n++] = (struct dmabuf_token){tq[tq_head++ % (1 << 16)], 1};
		int done = t_done && tq_head == tq_tail;
		pthread_mutex_unlock(&tmu);
		if (n) {
			int r = setsockopt(emu, SOL_SOCKET, SO_DEVMEM_DONTNEED, toks, n * sizeof(toks[0]));
			if (r != n)
				error(1, errno, "DONTNEED freed %d of %d", r, n);
			t_freed += r;
		}
		if (done)
			return NULL;
	}
}

static void *poller(void *arg)
{
	(void)arg;
	while (!__atomic_load_n(&t_done, __ATOMIC_ACQUIRE)) {
		struct pollfd p = {.fd = emu, .events = POLLIN};
		if (poll(&p, 1, 10) < 0)
			error(1, errno, "poll");
		t_polls++;
	}
	return NULL;
}

// receiver receives to the end of the stream, checks each fragment's
// bytes and queues its token for the releaser. Two run at once on the
// socket: each must get its own fragments, every token once.
static void *receiver(void *arg)
{
	size_t *got = arg; // bytes, fragments
	char data[65536], ctrl[256 * CMSG_SPACE(sizeof(struct dmabuf_cmsg))];
	for (;;) {
		struct iovec iov;
		struct msghdr m;
		ssize_t n = recv_devmem(emu, &m, &iov, data, sizeof(data), ctrl, sizeof(ctrl));
		if (n == 0)
			return NULL;
		got[0] += n;
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&m); cm; cm = CMSG_NXTHDR(&m, cm)) {
			struct dmabuf_cmsg *d = (void *)CMSG_DATA(cm);
			if (cm->cmsg_type != SCM_DEVMEM_DMABUF)
				continue;
			for (uint32_t i = 0; i < d->frag_size; i++)
				if (dmem[d->frag_offset + i])
					error(1, 0, "fragment at %llu: byte %u is %d", (unsigned long long)d->frag_offset, i, dmem[d->frag_offset + i]);
			pthread_mutex_lock(&tmu);
			tq[tq_tail++ % (1 << 16)] = d->frag_token;
			pthread_cond_signal(&tcv);
			pthread_mutex_unlock(&tmu);
			got[1]++;
		}
	}
}

static int do_threads(const char *ifname, const char *addr, int port)
{
	setup(ifname, addr, port);
	pthread_t rel, pol, rcv;
	pthread_create(&rel, NULL, releaser, NULL);
	pthread_create(&pol, NULL, poller, NULL);
	size_t a[2] = {0}, b[2] = {0};
	pthread_create(&rcv, NULL, receiver, b);
	receiver(a);
	pthread_join(rcv, NULL);
	size_t total = a[0] + b[0], frags = a[1] + b[1];
	pthread_mutex_lock(&tmu);
	__atomic_store_n(&t_done, 1, __ATOMIC_RELEASE);
	pthread_cond_signal(&tcv);
	pthread_mutex_unlock(&tmu);
	pthread_join(rel, NULL);
	pthread_join(pol, NULL);
	printf("threads: %zu bytes, %zu frags, %zu tokens freed, %zu polls\n", total, frags, t_freed, t_polls);
	return t_freed == frags ? 0 : 1;
}

// waker, on its own thread, interrupts a receive blocked on fd: after
// 50 ms a signal (with SA_RESTART the receive goes on waiting, without it
// ends with EINTR), and, with SA_RESTART, after 100 ms shutdown(SHUT_RD),
// which ends the wait with 0.
struct wake_args {
	int fd, shut;
	pthread_t target;
};

static void on_usr2(int sig) { (void)sig; }

static void *waker(void *arg)
{
	struct wake_args *a = arg;
	usleep(50000);
	pthread_kill(a->target, SIGUSR2);
	usleep(50000);
	if (a->shut)
		shutdown(a->fd, SHUT_RD);
	return NULL;
}

static long blocked_recv_with(int fd, int sa_flags, int shut);

// blocked_recv is a blocking recvmsg(MSG_SOCK_DEVMEM) on fd, with nothing
// to read, that waker ends; the SIGUSR2 handler has sa_flags (and with
// SA_RESTART, the waker shuts the socket down after the signal).
static long blocked_recv(int fd, int sa_flags) { return blocked_recv_with(fd, sa_flags, sa_flags & SA_RESTART); }

// blocked_recv_noshut: an SA_RESTART handler and no shutdown.
static long blocked_recv_noshut(int fd) { return blocked_recv_with(fd, SA_RESTART, 0); }

static long blocked_recv_with(int fd, int sa_flags, int shut)
{
	static char data[4096], ctrl[4096];
	struct sigaction act = {.sa_handler = on_usr2, .sa_flags = sa_flags};
	sigaction(SIGUSR2, &act, NULL);
	struct wake_args a = {.fd = fd, .shut = shut, .target = pthread_self()};
	pthread_t th;
	pthread_create(&th, NULL, waker, &a);
	struct iovec iov = {.iov_base = data, .iov_len = sizeof(data)};
	struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctrl, .msg_controllen = sizeof(ctrl)};
	long r = recvmsg(fd, &m, MSG_SOCK_DEVMEM);
	int err = errno;
	pthread_join(th, NULL);
	errno = err;
	return r;
}

// do_oneshot registers EPOLLRDHUP | EPOLLONESHOT on both sockets, which
// have data: no event yet; then prints "waiting", closes the kernel
// socket's peer (the test closes the emulated one's) and waits for the
// event. Rows: epoll_wait's count, 1 when the event was EPOLLRDHUP.
static int do_oneshot(const char *ifname, const char *addr, int port)
{
	setup(ifname, addr, port);
	int fds[2] = {emu, kern}, ep[2];
	long first[2], later[2];
	for (int i = 0; i < 2; i++) {
		ep[i] = epoll_create1(0);
		struct epoll_event ev = {.events = EPOLLRDHUP | EPOLLONESHOT, .data.fd = fds[i]};
		if (epoll_ctl(ep[i], EPOLL_CTL_ADD, fds[i], &ev))
			error(1, errno, "epoll_ctl");
		first[i] = epoll_wait(ep[i], &ev, 1, 300);
	}
	printf("waiting\n");
	close(kpeer);
	for (int i = 0; i < 2; i++) {
		struct epoll_event ev = {0};
		later[i] = epoll_wait(ep[i], &ev, 1, 20000);
		if (later[i] == 1 && !(ev.events & EPOLLRDHUP))
			later[i] = 2;
	}
	row("epoll/oneshot-nothing-yet", first[0], 0, 1, first[1], 0);
	row("epoll/oneshot-rdhup-later", later[0], 0, 1, later[1], 0);
	return 0;
}

// do_accepttx binds a TX dmabuf (the pattern byte i = i % 251), accepts
// one connection on ADDR:PORT and sends on the accepted socket: a plain
// header line, then the first 1 MiB of the dmabuf with SCM_DEVMEM_DMABUF
// and MSG_ZEROCOPY in 64 KiB calls; it waits for every completion and
// shuts its side down.
static int do_accepttx(const char *ifname, const char *addr, int port)
{
	int tfd;
	char *mem = dmabuf_alloc(&tfd);
	for (size_t i = 0; i < (1 << 20); i++)
		mem[i] = (char)(i % 251);
	uint32_t id = bind_dmabuf(if_nametoindex(ifname), tfd, -1);
	int ls = emu_listener(addr, port), one = 1;
	printf("ready\n");
	int c = accept(ls, NULL, NULL);
	if (c < 0)
		error(1, errno, "accept");
	const char hdr[] = "accepttx 1048576\n";
	if (send(c, hdr, sizeof(hdr) - 1, 0) != sizeof(hdr) - 1)
		error(1, errno, "send");
	if (setsockopt(c, SOL_SOCKET, SO_ZEROCOPY, &one, sizeof(one)))
		error(1, errno, "SO_ZEROCOPY");
	uint32_t sends = 0;
	for (size_t off = 0; off < (1 << 20); sends++) {
		ssize_t n = send_dmabuf(c, id, off, 65536);
		if (n <= 0)
			error(1, errno, "sendmsg from the dmabuf on the accepted socket");
		off += n;
	}
	await_completions(c, sends);
	printf("accepttx: %u sends, all completed\n", sends);
	shutdown(c, SHUT_WR);
	char b[16];
	while (read(c, b, sizeof(b)) > 0) // until the peer closes
		;
	return 0;
}

// do_rxtx is a devmem echo server on one interface: an RX dmabuf bound to
// queue 1 and a TX dmabuf bound for sending (two dmabufs, one UMEM), one
// accepted connection; each received fragment is copied from the RX
// dmabuf into the TX dmabuf, its token returned, and sent back from there
// with SCM_DEVMEM_DMABUF on the accepted socket. At the peer's end of
// stream it waits for every completion and shuts its side down.
static int do_rxtx(const char *ifname, const char *addr, int port)
{
	int rfd, tfd;
	char *rmem = dmabuf_alloc(&rfd), *tmem = dmabuf_alloc(&tfd);
	int ifindex = if_nametoindex(ifname);
	steer_to_queue1(ifname, addr, port);
	uint32_t rid = bind_dmabuf(ifindex, rfd, 1), tid = bind_dmabuf(ifindex, tfd, -1);
	int ls = emu_listener(addr, port), one = 1;
	printf("ready\n");
	int c = accept(ls, NULL, NULL);
	if (c < 0 || setsockopt(c, SOL_SOCKET, SO_ZEROCOPY, &one, sizeof(one)))
		error(1, errno, "accept");
	static char data[65536], ctrl[256 * CMSG_SPACE(sizeof(struct dmabuf_cmsg))];
	size_t echoed = 0, frags = 0;
	uint32_t sends = 0;
	for (;;) {
		struct iovec iov;
		struct msghdr m;
		ssize_t n = recv_devmem(c, &m, &iov, data, sizeof(data), ctrl, sizeof(ctrl));
		if (n == 0)
			break;
		size_t start = echoed;
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&m); cm; cm = CMSG_NXTHDR(&m, cm)) {
			struct dmabuf_cmsg *d = (void *)CMSG_DATA(cm);
			if (cm->cmsg_type == SCM_DEVMEM_LINEAR) {
				memcpy(tmem + echoed, data, d->frag_size);
			} else if (cm->cmsg_type == SCM_DEVMEM_DMABUF) {
				if (d->dmabuf_id != rid)
					error(1, 0, "fragment of dmabuf %u, bound %u", d->dmabuf_id, rid);
				memcpy(tmem + echoed, rmem + d->frag_offset, d->frag_size);
				struct dmabuf_token tok = {d->frag_token, 1};
				if (setsockopt(c, SOL_SOCKET, SO_DEVMEM_DONTNEED, &tok, sizeof(tok)) != 1)
					error(1, errno, "DONTNEED");
				frags++;
			} else {
				continue;
			}
			echoed += d->frag_size;
		}
		if (!m.msg_controllen)
			error(1, 0, "%zd bytes without devmem cmsgs", n);
		for (size_t off = start; off < echoed; sends++) {
			ssize_t k = send_dmabuf(c, tid, off, echoed - off);
			if (k <= 0)
				error(1, errno, "sendmsg");
			off += k;
		}
	}
	await_completions(c, sends);
	if (!frags)
		error(1, 0, "no dmabuf fragments: nothing came through the RX dmabuf");
	printf("rxtx: echoed %zu bytes (%zu dmabuf frags) in %u sends, all completed; rx dmabuf %u, tx dmabuf %u\n",
	       echoed, frags, sends, rid, tid);
	shutdown(c, SHUT_WR);
	return 0;
}

// timed_blocked_recv is blocked_recv with an SA_RESTART handler and
// SO_RCVTIMEO of 5 s: the signal at 50 ms ends it.
static long timed_blocked_recv(int fd)
{
	struct timeval tv = {.tv_sec = 5}, none = {0};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	long long t0 = now_ns();
	long r = blocked_recv_noshut(fd);
	int err = errno;
	long ms = (long)((now_ns() - t0) / 1000000);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none));
	errno = err;
	return r == -1 && ms > 1000 ? -1000 - ms : r; // EINTR, but only at the timeout: wrong
}

// do_bench times recvmsg(MSG_SOCK_DEVMEM | MSG_DONTWAIT) on an emulated
// and a kernel socket with nothing to read: the cost of a call.
static int do_bench(const char *ifname, const char *addr, int port, long n)
{
	setup(ifname, addr, port);
	static char data[65536], ctrl[4096];
	for (int fd = emu;; fd = kern) { // drain both: 64 KiB each
		struct iovec iov = {.iov_base = data, .iov_len = sizeof(data)};
		struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctrl};
		ssize_t n;
		for (size_t got = 0; got < 65536; got += n) {
			m.msg_controllen = sizeof(ctrl);
			if ((n = recvmsg(fd, &m, MSG_SOCK_DEVMEM)) <= 0)
				error(1, errno, "drain");
		}
		if (fd == kern)
			break;
	}
	long long ns[2];
	for (int i = 0; i < 2; i++) {
		int fd = i ? kern : emu;
		long long t0 = now_ns();
		for (long j = 0; j < n; j++) {
			struct iovec iov = {.iov_base = data, .iov_len = sizeof(data)};
			struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctrl, .msg_controllen = sizeof(ctrl)};
			if (recvmsg(fd, &m, MSG_SOCK_DEVMEM | MSG_DONTWAIT) >= 0 || errno != EAGAIN)
				error(1, errno, "recvmsg on an empty socket");
		}
		ns[i] = (now_ns() - t0) / n;
	}
	printf("bench recvmsg_ns emu=%lld kernel=%lld\n", ns[0], ns[1]);
	// The other two calls a devmem program makes per fragment: the
	// DMA_BUF_IOCTL_SYNC pair around its CPU access, and the DONTNEED of
	// the fragment's token (here one the socket does not hold: freed 0).
	struct dma_buf_sync s = {.flags = DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ};
	long long t0 = now_ns();
	for (long j = 0; j < n; j++)
		if (ioctl(dfd, DMA_BUF_IOCTL_SYNC, &s))
			error(1, errno, "DMA_BUF_IOCTL_SYNC");
	long long sync_ns = (now_ns() - t0) / n;
	struct dmabuf_token tok = {.token_start = 1u << 30, .token_count = 1};
	t0 = now_ns();
	for (long j = 0; j < n; j++)
		if (setsockopt(emu, SOL_SOCKET, SO_DEVMEM_DONTNEED, &tok, sizeof(tok)) < 0)
			error(1, errno, "SO_DEVMEM_DONTNEED");
	printf("bench call_ns sync=%lld dontneed=%lld\n", sync_ns, (now_ns() - t0) / n);
	// A receive blocked on an empty socket sleeps through a signal and
	// wakes for shutdown(SHUT_RD) from another thread, as the kernel's.
	// SO_RCVTIMEO ends a blocking receive with EAGAIN; a negative one
	// makes it not wait at all.
	BOTH("timeo/recv-100ms", timed_recv(fd, 0, 100000, 90, 1000));
	BOTH("timeo/recv-negative", timed_recv(fd, -1, 0, 0, 50));
	// Without SA_RESTART the signal ends the receive: EINTR; with
	// SO_RCVTIMEO set, so does a handler with SA_RESTART (sock_intr_errno).
	BOTH("wake/signal-no-restart", blocked_recv(fd, 0));
	BOTH("wake/signal-rcvtimeo-restart", timed_blocked_recv(fd));
	BOTH("wake/signal-then-shutdown", blocked_recv(fd, SA_RESTART));
	return 0;
}

static void on_usr1(int sig) { (void)sig; }

struct kill_later {
	pthread_t t;
	int ms;
};

static void *kill_later(void *arg)
{
	struct kill_later *k = arg;
	usleep(k->ms * 1000);
	pthread_kill(k->t, SIGUSR1);
	return NULL;
}

// do_linger binds a dmabuf, accepts one connection on ADDR:PORT, writes
// 768 KiB of plain bytes, sets SO_LINGER to {1, secs} (none if secs is
// negative) and closes, and prints what close returned and how long it
// took; then it exits. With sigms > 0 a
// thread sends this one SIGUSR1 (handled, SA_RESTART) sigms after the
// close starts, and the program stays 3 s longer so that the connection
// can finish closing in the background.
static int do_linger(const char *ifname, const char *addr, int port, int secs, int sigms)
{
	int dfd;
	dmabuf_alloc(&dfd);
	steer_to_queue1(ifname, addr, port);
	bind_dmabuf(if_nametoindex(ifname), dfd, 1);
	int ls = emu_listener(addr, port);
	printf("ready\n");
	int c = accept(ls, NULL, NULL);
	if (c < 0)
		error(1, errno, "accept");
	static char buf[768 << 10];
	memset(buf, 7, sizeof(buf));
	for (size_t off = 0; off < sizeof(buf);) {
		ssize_t n = write(c, buf + off, sizeof(buf) - off);
		if (n <= 0)
			error(1, errno, "write");
		off += n;
	}
	struct linger lg = {1, secs};
	if (secs >= 0 && setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)))
		error(1, errno, "SO_LINGER");
	struct kill_later k = {pthread_self(), sigms};
	pthread_t killer;
	if (sigms > 0) {
		struct sigaction sa = {.sa_handler = on_usr1, .sa_flags = SA_RESTART};
		sigaction(SIGUSR1, &sa, NULL);
		pthread_create(&killer, NULL, kill_later, &k);
	}
	long long t0 = now_ns();
	int r = close(c);
	printf("linger %d: close %d after %lld ms\n", secs, r, (now_ns() - t0) / 1000000);
	if (sigms > 0) {
		pthread_join(killer, NULL);
		sleep(3);
	}
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0); // rows survive a crash
	if (argc < 5)
		error(2, 0, "usage: %s badinput|leak|bench IFACE ADDR PORT [N]", argv[0]);
	if (!strcmp(argv[1], "badinput"))
		return do_badinput(argv[2], argv[3], atoi(argv[4]));
	if (!strcmp(argv[1], "threads"))
		return do_threads(argv[2], argv[3], atoi(argv[4]));
	if (!strcmp(argv[1], "rxtx"))
		return do_rxtx(argv[2], argv[3], atoi(argv[4]));
	if (!strcmp(argv[1], "accepttx"))
		return do_accepttx(argv[2], argv[3], atoi(argv[4]));
	if (!strcmp(argv[1], "oneshot"))
		return do_oneshot(argv[2], argv[3], atoi(argv[4]));
	if (!strcmp(argv[1], "linger") && argc > 5)
		return do_linger(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]), argc > 6 ? atoi(argv[6]) : 0);
	if (!strcmp(argv[1], "leak"))
		return do_leak(argv[2], argv[3], atoi(argv[4]));
	if (!strcmp(argv[1], "bench") && argc > 5)
		return do_bench(argv[2], argv[3], atoi(argv[4]), atol(argv[5]));
	error(2, 0, "unknown command %s", argv[1]);
	return 2;
}

// SPDX-License-Identifier: Apache-2.0
// devmem_example: a small devmem TCP program written against the kernel's
// uAPI only (udmabuf, netdev generic netlink, MSG_SOCK_DEVMEM,
// SO_DEVMEM_DONTNEED, SCM_DEVMEM_DMABUF + MSG_ZEROCOPY, MSG_ERRQUEUE). It
// runs on a devmem NIC as it is, and anywhere under LD_PRELOAD=libxdevmem.so.
//
//   devmem_example rx -f IFACE -s ADDR -p PORT [-q QUEUE] [-n] [-w poll|epoll] > received
//   devmem_example tx -f IFACE -s PEER -p PORT [-z CHUNK] [-H] [-n] [-w poll|epoll] < data
//
// rx: binds a udmabuf to RX queue QUEUE (default 1, steered there with
// ethtool), accepts one connection and writes what arrives to stdout, reading
// dmabuf fragments through its own mapping and returning every token.
// tx: copies stdin into a udmabuf, binds it for TX and sends it from there
// in CHUNK-byte iovecs (dmabuf offsets), waiting for every zerocopy
// completion; -H sends a plain header line ("devmem_example SIZE") first,
// with send(2). -n uses non-blocking sockets, waiting with poll or epoll (-w).
// An IPv4 ADDR makes an AF_INET socket, an IPv6 one an AF_INET6 socket.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <error.h>
#include <fcntl.h>
#include <linux/dma-buf.h>
#include <linux/errqueue.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <linux/udmabuf.h>
#include <net/if.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

// The devmem uAPI (include/uapi/asm-generic/socket.h, linux/uio.h,
// linux/netdev.h), for C libraries whose headers predate it.
#define SO_DEVMEM_DMABUF 79
#define SCM_DEVMEM_DMABUF SO_DEVMEM_DMABUF
#define SO_DEVMEM_LINEAR 78
#define SCM_DEVMEM_LINEAR SO_DEVMEM_LINEAR
#define SO_DEVMEM_DONTNEED 80
#define MSG_SOCK_DEVMEM 0x2000000
struct dmabuf_cmsg { uint64_t frag_offset; uint32_t frag_size, frag_token, dmabuf_id, flags; };
struct dmabuf_token { uint32_t token_start, token_count; };
enum { NETDEV_CMD_BIND_RX = 13, NETDEV_CMD_BIND_TX = 15 };
enum { A_IFINDEX = 1, A_QUEUES = 2, A_FD = 3, A_ID = 4, Q_ID = 1, Q_TYPE = 3 };

static int nonblock, use_epoll, header;
static size_t size = 64 << 20, chunk = 4096;

// ---- generic netlink, by hand ----

struct req { struct nlmsghdr h; struct genlmsghdr g; char attrs[256]; };

static void *put(struct nlmsghdr *h, int type, const void *data, int len)
{
	struct nlattr *a = (void *)((char *)h + NLMSG_ALIGN(h->nlmsg_len));
	a->nla_type = type;
	a->nla_len = NLA_HDRLEN + len;
	memcpy((char *)a + NLA_HDRLEN, data, len);
	h->nlmsg_len = NLMSG_ALIGN(h->nlmsg_len) + NLA_ALIGN(a->nla_len);
	return a;
}

// talk sends r and returns the value of u32 attribute want in the reply
// (0 for an ack); on an error it prints the kernel's message and exits.
static uint32_t talk(int nl, struct req *r, int want)
{
	static uint32_t seq;
	static char buf[8192];
	r->h.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
	r->h.nlmsg_seq = ++seq;
	if (send(nl, r, r->h.nlmsg_len, 0) < 0)
		error(1, errno, "netlink send");
	uint32_t val = 0;
	for (;;) {
		int n = recv(nl, buf, sizeof(buf), 0);
		if (n < 0)
			error(1, errno, "netlink recv");
		for (struct nlmsghdr *h = (void *)buf; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_type == NLMSG_ERROR) {
				struct nlmsgerr *e = NLMSG_DATA(h);
				if (!e->error)
					return val;
				const char *msg = ""; // NETLINK_CAP_ACK: the TLVs follow the echoed header
				for (struct nlattr *a = (void *)((char *)e + NLMSG_ALIGN(sizeof(*e)));
				     (char *)a + NLA_HDRLEN <= (char *)h + h->nlmsg_len && a->nla_len >= NLA_HDRLEN;
				     a = (void *)((char *)a + NLA_ALIGN(a->nla_len)))
					if (a->nla_type == NLMSGERR_ATTR_MSG)
						msg = (char *)a + NLA_HDRLEN;
				error(1, -e->error, "netlink request %d: %s", r->g.cmd, msg);
			}
			char *end = (char *)h + h->nlmsg_len;
			for (struct nlattr *a = (void *)((char *)NLMSG_DATA(h) + GENL_HDRLEN);
			     (char *)a + NLA_HDRLEN <= end && a->nla_len >= NLA_HDRLEN; a = (void *)((char *)a + NLA_ALIGN(a->nla_len)))
				if ((a->nla_type & NLA_TYPE_MASK) == want)
					memcpy(&val, (char *)a + NLA_HDRLEN, want == CTRL_ATTR_FAMILY_ID ? 2 : 4);
		}
	}
}

// bind_dmabuf binds fd to queue (RX) or for TX (queue < 0) and returns the
// dmabuf id. The netlink socket stays open: closing it unbinds.
static uint32_t bind_dmabuf(int ifindex, int fd, int queue)
{
	int nl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC), one = 1;
	if (nl < 0)
		error(1, errno, "netlink socket");
	setsockopt(nl, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof(one));
	setsockopt(nl, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof(one));
	struct req r = {.h = {.nlmsg_len = NLMSG_LENGTH(GENL_HDRLEN), .nlmsg_type = GENL_ID_CTRL},
			.g = {.cmd = CTRL_CMD_GETFAMILY, .version = 1}};
	put(&r.h, CTRL_ATTR_FAMILY_NAME, "netdev", 7);
	uint16_t family = talk(nl, &r, CTRL_ATTR_FAMILY_ID);
	r = (struct req){.h = {.nlmsg_len = NLMSG_LENGTH(GENL_HDRLEN), .nlmsg_type = family},
			 .g = {.cmd = queue < 0 ? NETDEV_CMD_BIND_TX : NETDEV_CMD_BIND_RX, .version = 1}};
	uint32_t v = ifindex;
	put(&r.h, A_IFINDEX, &v, 4);
	v = fd;
	put(&r.h, A_FD, &v, 4);
	if (queue >= 0) {
		struct nlattr *nest = put(&r.h, A_QUEUES | NLA_F_NESTED, NULL, 0);
		uint32_t q[2] = {queue, 0 /* NETDEV_QUEUE_TYPE_RX */};
		put(&r.h, Q_ID, &q[0], 4);
		put(&r.h, Q_TYPE, &q[1], 4);
		nest->nla_len = (char *)&r + r.h.nlmsg_len - (char *)nest;
	}
	return talk(nl, &r, A_ID);
}

// ---- the dmabuf ----

static char *dmabuf_alloc(int *dmabuf_fd)
{
	int dev = open("/dev/udmabuf", O_RDWR | O_CLOEXEC);
	if (dev < 0)
		error(1, errno, "open /dev/udmabuf");
	int memfd = memfd_create("devmem_example", MFD_ALLOW_SEALING | MFD_CLOEXEC);
	if (memfd < 0 || ftruncate(memfd, size) < 0 || fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK) < 0)
		error(1, errno, "memfd");
	struct udmabuf_create c = {.memfd = memfd, .flags = UDMABUF_FLAGS_CLOEXEC, .offset = 0, .size = size};
	*dmabuf_fd = ioctl(dev, UDMABUF_CREATE, &c);
	if (*dmabuf_fd < 0)
		error(1, errno, "UDMABUF_CREATE");
	char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, *dmabuf_fd, 0);
	if (mem == MAP_FAILED)
		error(1, errno, "mmap dmabuf");
	return mem;
}

static void sync_dmabuf(int fd, uint64_t flags)
{
	struct dma_buf_sync s = {.flags = flags};
	if (ioctl(fd, DMA_BUF_IOCTL_SYNC, &s) < 0)
		error(1, errno, "DMA_BUF_IOCTL_SYNC");
}

// ---- waiting for a non-blocking socket ----

// wait_for blocks until fd has one of events (POLLIN, POLLOUT, POLLERR),
// with poll or epoll.
static void wait_for(int fd, short events)
{
	if (!nonblock)
		return;
	if (!use_epoll) {
		struct pollfd p = {.fd = fd, .events = events};
		if (poll(&p, 1, 20000) != 1)
			error(1, errno, "poll (revents %#x)", p.revents);
		return;
	}
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event ev = {.events = events, .data.fd = fd};
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		error(1, errno, "epoll");
	if (epoll_wait(ep, &ev, 1, 20000) != 1 || ev.data.fd != fd)
		error(1, errno, "epoll_wait");
	close(ep);
}

// tcp_socket makes an AF_INET or AF_INET6 socket for addr and fills sa
// (sizeof(*sa) fits both) with addr and port.
static int tcp_socket(const char *addr, int port, struct sockaddr_in6 *sa)
{
	struct sockaddr_in *sin = (void *)sa;
	memset(sa, 0, sizeof(*sa));
	int fam = AF_INET6;
	sa->sin6_family = AF_INET6;
	sa->sin6_port = htons(port);
	if (inet_pton(AF_INET6, addr, &sa->sin6_addr) != 1) {
		fam = AF_INET;
		sin->sin_family = AF_INET;
		sin->sin_port = htons(port);
		if (inet_pton(AF_INET, addr, &sin->sin_addr) != 1)
			error(1, 0, "bad address %s", addr);
	}
	int fd = socket(fam, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
	if (fd < 0)
		error(1, errno, "socket");
	return fd;
}

static socklen_t salen(const struct sockaddr_in6 *sa)
{
	return sa->sin6_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

// ---- rx ----

static int do_rx(const char *ifname, const char *addr, int port, int queue)
{
	int dfd;
	char *mem = dmabuf_alloc(&dfd);
	char cmd[256];
	const char *ft = strchr(addr, ':') ? "tcp6" : "tcp4";
	// Steer the flow to the bound queue, everything else away from it.
	snprintf(cmd, sizeof(cmd), "ethtool -X %s equal %d", ifname, queue);
	if (queue > 0 && system(cmd)) // (no RSS change for queue 0)
		error(1, 0, "%s failed", cmd);
	snprintf(cmd, sizeof(cmd), "ethtool -N %s flow-type %s dst-port %d queue %d >/dev/null", ifname, ft, port, queue);
	if (system(cmd))
		error(1, 0, "%s failed", cmd);
	uint32_t id = bind_dmabuf(if_nametoindex(ifname), dfd, queue);
	fprintf(stderr, "rx: dmabuf %u on %s queue %d\n", id, ifname, queue);

	struct sockaddr_in6 sa;
	int ls = tcp_socket(addr, port, &sa), one = 1;
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(ls, (void *)&sa, salen(&sa)) < 0 || listen(ls, 1) < 0)
		error(1, errno, "bind/listen %s:%d", addr, port);
	fprintf(stderr, "rx: listening on %s:%d\n", addr, port);
	wait_for(ls, POLLIN);
	int c = accept4(ls, NULL, NULL, SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0));
	if (c < 0)
		error(1, errno, "accept");

	static char data[1 << 16], ctrl[256 * CMSG_SPACE(sizeof(struct dmabuf_cmsg))];
	struct dmabuf_token toks[128];
	size_t total = 0, frags = 0, linear = 0;
	for (;;) {
		struct iovec iov = {.iov_base = data, .iov_len = sizeof(data)};
		struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctrl, .msg_controllen = sizeof(ctrl)};
		ssize_t n = recvmsg(c, &m, MSG_SOCK_DEVMEM);
		if (n < 0 && errno == EAGAIN) {
			wait_for(c, POLLIN);
			continue;
		}
		if (n < 0)
			error(1, errno, "recvmsg");
		if (n == 0)
			break;
		int nt = 0;
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&m); cm; cm = CMSG_NXTHDR(&m, cm)) {
			struct dmabuf_cmsg *d = (void *)CMSG_DATA(cm);
			if (cm->cmsg_level != SOL_SOCKET)
				continue;
			if (cm->cmsg_type == SCM_DEVMEM_LINEAR) { // the bytes are in data
				fwrite(data, 1, d->frag_size, stdout);
				linear += d->frag_size;
			} else if (cm->cmsg_type == SCM_DEVMEM_DMABUF) {
				if (d->dmabuf_id != id)
					error(1, 0, "fragment of dmabuf %u", d->dmabuf_id);
				sync_dmabuf(dfd, DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ);
				fwrite(mem + d->frag_offset, 1, d->frag_size, stdout);
				sync_dmabuf(dfd, DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ);
				toks[nt++] = (struct dmabuf_token){d->frag_token, 1};
				frags++;
			}
			if (nt == 128 || (nt && !CMSG_NXTHDR(&m, cm))) {
				int freed = setsockopt(c, SOL_SOCKET, SO_DEVMEM_DONTNEED, toks, nt * sizeof(toks[0]));
				if (freed != nt)
					error(1, errno, "SO_DEVMEM_DONTNEED freed %d of %d", freed, nt);
				nt = 0;
			}
		}
		if (!m.msg_controllen) // not devmem data: flow steering missed the queue
			error(1, 0, "%zd bytes without devmem cmsgs", n);
		total += n;
	}
	fflush(stdout);
	fprintf(stderr, "rx: %zu bytes, %zu dmabuf frags, %zu linear bytes\n", total, frags, linear);
	close(c);
	close(ls);
	return 0;
}

// ---- tx ----

// send_dmabuf sends len bytes of TX dmabuf id from offset off:
// sendmsg(MSG_ZEROCOPY) with the offset as iov_base and SCM_DEVMEM_DMABUF.
static ssize_t send_dmabuf(int s, uint32_t id, size_t off, size_t len)
{
	char ctrl[CMSG_SPACE(sizeof(uint32_t))] = {0};
	struct iovec iov = {.iov_base = (void *)off, .iov_len = len};
	struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctrl, .msg_controllen = sizeof(ctrl)};
	struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_DEVMEM_DMABUF;
	cm->cmsg_len = CMSG_LEN(sizeof(uint32_t));
	memcpy(CMSG_DATA(cm), &id, sizeof(id));
	return sendmsg(s, &m, MSG_ZEROCOPY);
}

// await_completions reads zerocopy completions off MSG_ERRQUEUE until
// sends 0..sends-1 have all completed.
static void await_completions(int s, uint32_t sends)
{
	for (uint32_t completed = 0; completed < sends;) {
		char c[128];
		struct msghdr m = {.msg_control = c, .msg_controllen = sizeof(c)};
		if (recvmsg(s, &m, MSG_ERRQUEUE) < 0) {
			if (errno != EAGAIN)
				error(1, errno, "recvmsg MSG_ERRQUEUE");
			if (nonblock)
				wait_for(s, POLLERR);
			else
				poll(&(struct pollfd){.fd = s, .events = POLLERR}, 1, 100);
			continue;
		}
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&m); cm; cm = CMSG_NXTHDR(&m, cm)) {
			struct sock_extended_err *e = (void *)CMSG_DATA(cm);
			if (e->ee_origin == SO_EE_ORIGIN_ZEROCOPY && !e->ee_errno)
				completed += e->ee_data - e->ee_info + 1;
		}
	}
}

static int do_tx(const char *ifname, const char *addr, int port)
{
	int dfd;
	char *mem = dmabuf_alloc(&dfd);
	size_t len = 0;
	sync_dmabuf(dfd, DMA_BUF_SYNC_START | DMA_BUF_SYNC_WRITE);
	for (ssize_t n; len < size && (n = read(0, mem + len, size - len)) > 0;)
		len += n;
	sync_dmabuf(dfd, DMA_BUF_SYNC_END | DMA_BUF_SYNC_WRITE);
	uint32_t id = bind_dmabuf(if_nametoindex(ifname), dfd, -1);

	struct sockaddr_in6 sa;
	int s = tcp_socket(addr, port, &sa), one = 1;
	if (setsockopt(s, SOL_SOCKET, SO_ZEROCOPY, &one, sizeof(one)) < 0 ||
	    setsockopt(s, SOL_SOCKET, SO_BINDTODEVICE, ifname, strlen(ifname) + 1) < 0)
		error(1, errno, "setsockopt");
	if (connect(s, (void *)&sa, salen(&sa)) < 0) {
		if (errno != EINPROGRESS)
			error(1, errno, "connect %s:%d", addr, port);
		wait_for(s, POLLOUT);
		int err = 0;
		socklen_t el = sizeof(err);
		if (getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err)
			error(1, err, "connect %s:%d", addr, port);
	}
	fprintf(stderr, "tx: dmabuf %u, %zu bytes to %s:%d\n", id, len, addr, port);
	if (header) { // -H: a plain header line first, sent from ordinary memory
		char h[64];
		int hl = snprintf(h, sizeof(h), "devmem_example %zu\n", len);
		for (int off = 0; off < hl;) {
			ssize_t n = send(s, h + off, hl - off, 0);
			if (n < 0 && errno == EAGAIN) {
				wait_for(s, POLLOUT);
				continue;
			}
			if (n < 0)
				error(1, errno, "send");
			off += n;
		}
	}

	uint32_t sends = 0;
	for (size_t off = 0; off < len;) {
		ssize_t n = send_dmabuf(s, id, off, len - off < chunk ? len - off : chunk);
		if (n < 0 && errno == EAGAIN) {
			wait_for(s, POLLOUT);
			continue;
		}
		if (n < 0)
			error(1, errno, "sendmsg");
		off += n;
		sends++;
	}
	await_completions(s, sends); // each send completes once its data is acknowledged
	fprintf(stderr, "tx: %zu bytes in %u sends, all completed\n", len, sends);
	close(s);
	return 0;
}

int main(int argc, char **argv)
{
	const char *ifname = NULL, *addr = NULL;
	int port = 0, queue = 1, opt;
	if (argc < 2 || (strcmp(argv[1], "rx") && strcmp(argv[1], "tx")))
		error(2, 0, "usage: %s rx|tx -f IFACE -s ADDR -p PORT [-q QUEUE] [-z CHUNK] [-S SIZE] [-H] [-n] [-w poll|epoll]", argv[0]);
	while ((opt = getopt(argc - 1, argv + 1, "f:s:p:q:z:S:Hnw:")) != -1) {
		switch (opt) {
		case 'f': ifname = optarg; break;
		case 's': addr = optarg; break;
		case 'p': port = atoi(optarg); break;
		case 'q': queue = atoi(optarg); break;
		case 'z': chunk = strtoul(optarg, NULL, 0); break;
		case 'S': size = strtoul(optarg, NULL, 0); break;
		case 'H': header = 1; break;
		case 'n': nonblock = 1; break;
		case 'w': use_epoll = !strcmp(optarg, "epoll"); break;
		default: return 2;
		}
	}
	if (!ifname || !addr || !port || !chunk || !size)
		error(2, 0, "-f, -s and -p are required");
	return argv[1][0] == 'r' ? do_rx(ifname, addr, port, queue) : do_tx(ifname, addr, port);
}

// Shared between the C interposers (interpose.c) and the Go side (cgo
// preamble of main.go).
#ifndef XDEVMEM_XD_H
#define XDEVMEM_XD_H

#include <stdint.h>

// What a file descriptor is to the library. The Go side sets it; the
// interposers read it to decide, without calling Go, whether a call
// passes straight to libc.
enum {
	XD_PLAIN = 0,   // not the library's business: every call goes to libc
	XD_TCP = 1,     // a kernel TCP socket that bind or connect may emulate
	XD_EMU = 2,     // an emulated TCP socket (its fd is a socketpair end)
	XD_GENL = 3,    // a generic netlink socket (netdev requests answered here)
	XD_UDMABUF = 4, // the stand-in for /dev/udmabuf
	XD_DMABUF = 5,  // a dmabuf made by UDMABUF_CREATE (a memfd reopened)
	XD_EPOLL = 6,   // an epoll fd watching an emulated socket
};

// The library's state.
enum {
	XD_LOADING = 0, // before main: every call goes to libc
	XD_ACTIVE = 1,  // emulating
	XD_INERT = 2,   // XDEVMEM_BACKEND=kernel (or auto on a devmem host)
	XD_CHILD = 3,   // in a fork child: emulated fds are refused
};

// XD_PASS, returned by a Go handler, sends the call on to libc.
#define XD_PASS (-4096)

// XD_WAIT, returned by Go's receive, means: sleep until event word
// xd_seq[slot] has moved past seq, then call again (interpose.c,
// wait_event).
#define XD_WAIT (-4097)

// The fd table covers fds below XD_MAXFD; the library emulates nothing
// at or above it.
#define XD_MAXFD 65536

// Event words, one per fd of the library's. Go adds 2 to xd_seq[slot]
// when what a receive waits for may have happened; bit 0 says a thread
// sleeps on it (XD_SLEEPER), so that only the first event after a thread
// went to sleep makes a FUTEX_WAKE.
extern uint32_t xd_seq[XD_MAXFD];
#define XD_SLEEPER 1u

// xd_linger[slot] is 1 while an emulated socket whose event word is slot
// closes with SO_LINGER on and a time (close(2) waits on the word, see
// interpose.c's linger_wait); Go clears it, then moves the word.
extern uint32_t xd_linger[XD_MAXFD];

void xd_set_kind(int fd, int kind);
int xd_get_kind(int fd);
void xd_set_state(int state);
void xd_set_debug(int on); // XDEVMEM_DEBUG: every call goes to Go, which logs it

#endif

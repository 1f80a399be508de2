// Package tokens manages devmem TCP tokens and the frame references they
// hold, in both release modes of the kernel's autorelease series. It is
// pure data structures: it knows nothing of packets, sockets or I/O. The
// stack calls Socket.Deliver for every fragment a devmem recvmsg hands to
// the application and puts the returned token in the fragment's
// dmabuf_cmsg; the application's SO_DEVMEM_DONTNEED becomes
// Socket.DontNeed; closing the connection becomes Socket.Close; unbinding
// the dmabuf becomes Binding.Unbind.
//
// A Binding stands for one dmabuf binding. Its memory (the stack's UMEM
// region, one frame per kernel net_iov page) is reached through the Frames
// interface: every token holds exactly one Frames reference, taken by
// Deliver and dropped when the token is returned, or when close or unbind
// frees it. A frame goes back to the fill ring when its last reference
// drops, so unreturned tokens exhaust the binding as they do a real NIC's
// dmabuf.
//
// # Autorelease on (mode 1, the original devmem behaviour)
//
// Each socket keeps a table of its tokens, the kernel's per-socket xarray:
// Deliver allocates the lowest free token starting at 1 (xa_alloc with
// XA_FLAGS_ALLOC1 and xa_limit_31b, so at most MaxToken) and records
// (binding, frame). DONTNEED looks tokens up in the table; unknown tokens
// are skipped. Closing the socket frees every token still in the table:
// leaks end with the socket. A token is private to its socket, and one
// socket may receive from several bindings. The table is guarded by one
// mutex per socket (the kernel's xa_lock).
//
//	s := tokens.NewSocket(true)
//	tok, _ := s.Deliver(b, frame) // tok = 1, 2, 3, ...
//	s.DontNeed([]devmemapi.DmabufToken{{TokenStart: tok, TokenCount: 1}})
//	s.Close() // frees what is left
//
// # Autorelease off (mode 0, the series' faster mode)
//
// There is no per-socket table. The token is the frame's index in its
// binding (the kernel's net_iov_virtual_addr >> PAGE_SHIFT), and the
// binding keeps one atomic user-reference count (uref) per frame: Deliver
// increments it, DONTNEED decrements it if positive. Delivery takes no lock
// and DONTNEED no table lock, and neither allocates: that is where the
// series' ~13% CPU saving comes from. Because a token does not say which binding it belongs to, a
// socket is tied to the first binding it receives from and becomes one of
// its users (v10 binding->users): a fragment of another binding fails with
// EFAULT, tying to a binding without users left (unbound, no socket tied)
// with ENODEV, and DONTNEED before any delivery with EINVAL. Tokens are
// shared by all sockets tied to a binding (the same frame index is the
// same uref), and closing a socket frees nothing by itself: leaked urefs
// are dropped when the binding's last user goes, that is once it is
// unbound and every socket tied to it has closed.
//
// # Choosing the mode: the two uAPI forms
//
// The series offered two ways to choose, and xdevmem accepts both:
//
//   - v7 and later: the u8 attribute NETDEV_A_DMABUF_AUTORELEASE of
//     NETDEV_CMD_BIND_RX, absent meaning 0 (autorelease off). The mode is
//     system-wide: the first RX binding sets it and a bind-rx asking for
//     the other mode while any RX binding exists fails with EBUSY,
//     "System already configured with autorelease=N". When the last RX
//     binding goes away the system returns to 0. Registry implements this;
//     in xdevmem the system is the process (Default), because each process
//     runs its own emulated NIC and its bindings are invisible to others.
//   - v6: the socket option SO_DEVMEM_AUTORELEASE (85), an int 0 or 1,
//     read and written per socket (Socket.Autorelease, SetAutorelease,
//     SetAutoreleaseOpt). Setting it while the socket holds tokens fails
//     with EBUSY; any value other than 0 or 1 with EINVAL.
//
// What "holds tokens" means differs by mode. With autorelease on it is the
// socket's table. With autorelease off a token is a frame index that every
// socket tied to the binding may return, so the tokens a socket holds are
// its binding's outstanding urefs (Socket.Outstanding). v6 kept a
// per-socket counter instead (outstanding_urefs, updated on every
// recvmsg); xdevmem does not, because it would cost an atomic per delivery
// on the path the mode exists to make cheap, and because a socket could
// still return tokens another socket received. The difference shows only
// when a socket switches modes while another socket holds tokens of the
// same binding: v6 allowed it, xdevmem answers EBUSY.
//
// # How the two forms relate in xdevmem
//
// In the v7+ kernel the mode is one global switch read at every recvmsg
// and DONTNEED; in v6 it is a per-socket field. xdevmem stores the mode
// where it is used: each Binding records the mode it was bound with, and
// each Socket carries its own. One rule joins the forms:
//
//  1. A socket starts in the system mode (NewSocket(Default().Mode())).
//  2. Until it first receives, or until the socket option is set, it
//     follows the binding: the first Deliver adopts the mode of the
//     binding the fragment came from. Under the v7+ form every live RX
//     binding has the system mode, so the socket behaves exactly as on a
//     v7+ kernel, including a socket created before the first bind-rx.
//  3. The socket option overrides per socket, and only while the socket
//     holds no tokens (EBUSY otherwise, as in v6). After that the socket's
//     mode is its own and no longer follows bindings, as in v6, where the
//     mode was per socket and bindings had none. Every binding therefore
//     carries the uref array, whatever mode it was bound with.
//
// Why: keeping the mode per socket and per binding, instead of one global
// switch consulted at run time, means a change of system mode can never
// reinterpret the tokens a socket already holds (the race the series fixed
// in v8 to v10 by delaying the switch until every binding was freed), and
// Registry.Release can be called at unbind time. The two forms never
// contradict each other: an application that uses only bind-rx sees v7+
// semantics, one that uses only the socket option sees v6 semantics, and
// one that mixes them gets the socket option's choice on that socket.
//
// # Returning tokens
//
// Socket.DontNeed and DontNeedOpt follow sock_devmem_dontneed exactly: at
// most devmemapi.MaxDontNeedTokens entries (else EINVAL); entry i covers
// TokenStart+j for j < TokenCount; every token tried counts, and once more
// than devmemapi.MaxDontNeedFrags were tried the call stops and returns the
// number freed so far; unknown tokens are skipped. In autorelease-off mode
// a token at or beyond the binding's frame count ends its entry without
// being counted, and a uref is decremented only if positive
// (atomic_dec_if_positive), so a repeated or forged token never frees a
// reference another delivery holds, and only tokens that were outstanding
// count as freed. (The series' v10 code uses atomic_dec_and_test and
// counts every in-range token: a token returned twice there drives the
// uref below zero and is counted twice.)
//
// Token arithmetic is 64-bit: TokenStart+j never wraps, and tokens at or
// above 1<<32 do not exist. The kernel adds in u32, so an entry such as
// {0xffffffff, 3} wraps to tokens 0 and 1 there and frees token 1. This package
// never frees a token outside [TokenStart, TokenStart+TokenCount) taken
// in 64 bits; the difference only shows for entries that cross 1<<32,
// which no correct application sends (tokens stay below 1<<31), and the
// counting of tried tokens, and so the MaxDontNeedFrags cut-off, is the
// same. In autorelease-off mode the kernel never wraps either (its
// range check breaks first).
//
// A tied socket keeps its binding alive past Unbind: its deliveries and
// DONTNEEDs go on working until it closes (v10 binding->users).
//
// # Close and unbind
//
// Socket.Close frees every autorelease-on token of the socket and, in
// autorelease-off mode, drops the socket's user of its binding.
// Binding.Unbind drops the RX queues' user. Whichever drops a binding's
// last user drains it: every uref is dropped (one frame reference each)
// and no socket can tie to it any more (ENODEV). Autorelease-on sockets
// never get ENODEV: fragments queued before the unbind are delivered, and
// their tokens stay with their sockets until DONTNEED or close. After every
// socket closed and every binding was unbound, no frame holds a reference
// taken by this package.
//
// # Concurrency and allocation
//
// Every method is safe for concurrent use. Deliver and DontNeed on one
// socket may run on different goroutines; Unbind may race with both; every
// reference is dropped exactly once. No Frames method is called with a
// table lock held, and Frames.Release receives batches of up to 16 frames
// of one binding (the kernel's netmems[16]) from a buffer the socket owns,
// so DONTNEED never allocates. Deliver allocates only when an
// autorelease-on table is full and doubles. Error paths may allocate.
package tokens

// Package devmemapi mirrors the Linux devmem TCP user API: its constants,
// its structs with the kernel's exact layouts, the control messages a
// devmem recvmsg returns, the SO_DEVMEM_DONTNEED argument, and the small
// interfaces an application programs against.
//
// Both of xdevmem's backends implement these interfaces: the emulation
// (package stack, AF_XDP + gVisor netstack) and the kernel backend (package
// compat, netdev genetlink and real sockets). An application written only
// against this package runs unchanged on either.
//
// # Receiving
//
// A devmem receive returns no payload bytes. RecvMsg(p, oob, MSG_SOCK_DEVMEM)
// fills oob with one SCM_DEVMEM_DMABUF control message per fragment; each
// carries a DmabufCmsg: where the fragment lies in the dmabuf (FragOffset,
// FragSize), the token that holds it (FragToken) and the binding it landed in
// (DmabufID). The returned n counts the fragment bytes. The application reads
// the payload from the dmabuf itself (Binding.ReadAt, or a mapping) and then
// returns the tokens with Conn.DontNeed. When a packet's payload split late,
// the part left in host memory is copied into p and reported with an
// SCM_DEVMEM_LINEAR message whose FragSize is the byte count, just before
// the packet's SCM_DEVMEM_DMABUF messages; successive LINEAR parts follow
// each other in p. A packet whose payload did not split at all is ordinary
// data: copied into p with no devmem control message, readable without
// MSG_SOCK_DEVMEM. One RecvMsg never mixes ordinary and devmem data.
//
// Reading dmabuf data without MSG_SOCK_DEVMEM fails with EFAULT, as in the
// kernel.
//
// # Returning tokens
//
// DontNeed takes up to MaxDontNeedTokens DmabufToken ranges, frees at most
// MaxDontNeedFrags fragments per call, skips unknown tokens and returns the
// number of fragments it freed (the setsockopt return value in the kernel).
//
// # Errors
//
// Where the kernel's devmem code returns an errno, both backends return the
// same unix.Errno, wrapped with context, so callers can test
// errors.Is(err, unix.EINVAL) on either.
package devmemapi

// Package umem is xdevmem's AF_XDP layer: the UMEM region that stands in for
// the dmabuf, the four AF_XDP rings, one socket per RX queue, and the XDP
// program that steers the stack's traffic into those sockets.
//
// It never imports netstack; package stack adapts it to gVisor.
//
// # Frames
//
// A Region is page-aligned memory cut into frames (4096 bytes by
// default): anonymous, or with its first frames the pages of a file that
// another mapping also shows (FileBacking: libxdevmem makes an
// application's udmabuf memfd the UMEM, so the application reads payload
// through its own mapping of its dmabuf). A frame is the emulation's net_iov: the unit a token refers to.
// Each frame has a reference count in two halves: references held by the
// stack (a connection's fragment queue pins the frame while payload in it is
// undelivered) and references held by the application (one per token or
// uref). When both reach zero the frame returns to the free list, and from
// there to the fill ring.
//
// # Receive: fill → RX
//
// The socket posts free frames on the fill ring; the kernel copies an
// incoming packet into one (copy mode) and places its descriptor on the RX
// ring; Socket.Receive hands descriptors to the caller, who parses the frame
// and then either pins it (payload stays) or frees it. Unreturned tokens
// therefore starve the fill ring and the kernel drops packets, exactly as a
// devmem NIC does when its dmabuf is exhausted.
//
// # Transmit: TX → completion
//
// A fixed set of frames is reserved for transmission. The caller takes
// reserved frames (Socket.TXAcquire), writes packets into them, queues
// them on the TX ring (TXProduce: single frames or multi-buffer chains)
// and wakes the kernel (TXKick); the kernel returns each address on the
// completion ring once sent (TXReclaim). One API for both, in tx.go.
//
// # A fake for tests
//
// Package umemtest has a fake Socket over a real Region, with the kernel's
// side played by the test (frames injected on the RX ring, transmitted
// frames handed to a callback); package stack runs on it without
// privileges.
//
// # Accounting
//
// Region.Snapshot reports how many frames are free, posted to the kernel,
// pinned by the stack, held by the application or reserved for TX. At rest
// the states sum to the frame count and, after close, every frame is free.
//
// # Unsafe code
//
// Every syscall and unsafe pointer conversion lives in xsk_unsafe.go; the
// ring arithmetic is plain Go over atomics and is tested on ordinary memory.
package umem

// The raw layouts here (struct iovec, msghdr and AF_XDP ring offsets as
// 64-bit words) are those of 64-bit Linux, as in gVisor's pkg/xdp.

//go:build linux && (amd64 || arm64)

package compat

import (
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
)

// Every raw syscall and unsafe.Pointer of the kernel backend lives in this
// file.

// ioc builds an ioctl number as the kernel's _IOC does on x86-64 and arm64.
func ioc(dir, typ, nr, size uintptr) uintptr {
	return dir<<30 | size<<16 | typ<<8 | nr
}

const iocWrite = 1

// udmabufCreate is struct udmabuf_create (include/uapi/linux/udmabuf.h).
type udmabufCreate struct {
	memfd  uint32
	flags  uint32
	offset uint64
	size   uint64
}

// dmaBufSync is struct dma_buf_sync (include/uapi/linux/dma-buf.h).
type dmaBufSync struct {
	flags uint64
}

// ioctl numbers and flags.
var (
	// udmabufCreateIoctl is UDMABUF_CREATE, _IOW('u', 0x42, struct udmabuf_create).
	udmabufCreateIoctl = ioc(iocWrite, 'u', 0x42, unsafe.Sizeof(udmabufCreate{}))
	// dmaBufIoctlSync is DMA_BUF_IOCTL_SYNC, _IOW('b', 0, struct dma_buf_sync).
	dmaBufIoctlSync = ioc(iocWrite, 'b', 0, unsafe.Sizeof(dmaBufSync{}))
)

const (
	udmabufFlagsCloexec = 0x01

	dmaBufSyncRead  = 1 << 0
	dmaBufSyncWrite = 1 << 1
	dmaBufSyncStart = 0 << 2
	dmaBufSyncEnd   = 1 << 2
)

// udmabufIoctl asks /dev/udmabuf (open as dev) for a dmabuf over size
// bytes of memfd from offset 0, and returns its fd (close-on-exec).
func udmabufIoctl(dev, memfd int, size uint64) (int, error) {
	req := udmabufCreate{memfd: uint32(memfd), flags: udmabufFlagsCloexec, size: size}
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(dev), udmabufCreateIoctl, uintptr(unsafe.Pointer(&req)))
	if e != 0 {
		return -1, e
	}
	return int(r), nil
}

// dmabufSync brackets CPU access to a dmabuf (DMA_BUF_IOCTL_SYNC).
func dmabufSync(fd int, flags uint64) error {
	req := dmaBufSync{flags: flags}
	for {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), dmaBufIoctlSync, uintptr(unsafe.Pointer(&req)))
		switch e {
		case 0:
			return nil
		case unix.EINTR, unix.EAGAIN:
			continue
		}
		return e
	}
}

// setsockoptDontNeed is setsockopt(fd, SOL_SOCKET, SO_DEVMEM_DONTNEED,
// optval, len(optval)), returning the kernel's count of freed fragments,
// which unix.Setsockopt* drop.
func setsockoptDontNeed(fd int, optval []byte) (int, error) {
	var p unsafe.Pointer
	if len(optval) > 0 {
		p = unsafe.Pointer(&optval[0])
	}
	r, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, devmemapi.SO_DEVMEM_DONTNEED,
		uintptr(p), uintptr(len(optval)), 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

// rawIovec is struct iovec with iov_base as a number: a devmem send puts a
// dmabuf offset there, which must not sit in a Go pointer field.
type rawIovec struct {
	base uint64
	len  uint64
}

// sendmsgDevmem is sendmsg(2) with iovecs whose bases are dmabuf offsets,
// the control buffer oob and flags; errno is 0 on success.
func sendmsgDevmem(fd int, iov []rawIovec, oob []byte, flags int) (n int, errno unix.Errno) {
	var msg unix.Msghdr
	if len(iov) > 0 {
		msg.Iov = (*unix.Iovec)(unsafe.Pointer(&iov[0]))
		msg.SetIovlen(len(iov))
	}
	if len(oob) > 0 {
		msg.Control = &oob[0]
		msg.SetControllen(len(oob))
	}
	r, _, e := unix.Syscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), uintptr(flags))
	runtime.KeepAlive(iov)
	if e != 0 {
		return 0, e
	}
	return int(r), 0
}

// recvmsgErrqueue is recvmsg(fd, MSG_ERRQUEUE|flags) with no data buffer:
// the control messages go to oob; recvflags are the returned msg_flags.
func recvmsgErrqueue(fd int, oob []byte, flags int) (oobn, recvflags int, errno unix.Errno) {
	var msg unix.Msghdr
	if len(oob) > 0 {
		msg.Control = &oob[0]
		msg.SetControllen(len(oob))
	}
	_, _, e := unix.Syscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), uintptr(flags|unix.MSG_ERRQUEUE))
	if e != 0 {
		return 0, 0, e
	}
	return int(msg.Controllen), int(msg.Flags), 0
}

// recvmsg is recvmsg(2) into p and oob, with flags passed through; errno
// is 0 on success. Unlike unix.Recvmsg it does not allocate and never
// substitutes a one-byte buffer for an empty p: an empty p is a zero-length
// iovec, as a C caller's would be.
func recvmsg(fd int, p, oob []byte, flags int) (n, oobn int, errno unix.Errno) {
	var iov unix.Iovec
	if len(p) > 0 {
		iov.Base = &p[0]
	}
	iov.SetLen(len(p))
	var msg unix.Msghdr
	msg.Iov = &iov
	msg.SetIovlen(1)
	if len(oob) > 0 {
		msg.Control = &oob[0]
		msg.SetControllen(len(oob))
	}
	r, _, e := unix.Syscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), uintptr(flags))
	if e != 0 {
		return 0, 0, e
	}
	return int(r), int(msg.Controllen), 0
}

package preload

import (
	"encoding/binary"
	"runtime/debug"
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file holds every access to the application's memory. Addresses
// arrive from C as integers (UPtr) and become pointers only inside the
// copies below, which run with SetPanicOnFault: a bad address faults, the
// fault becomes a panic, and the panic becomes EFAULT, as the kernel's
// copy_from_user and copy_to_user do. Addresses below the first page, and
// ranges that wrap or reach the kernel's half of the address space, are
// EFAULT without a try (the kernel's access_ok).

// UPtr is an address in the application's memory.
type UPtr uintptr

// maxUser is the end of x86-64's user address space (TASK_SIZE_MAX).
const maxUser = 1<<47 - 4096

func (p UPtr) ptr() unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&p)) }

// Add returns p+n.
func (p UPtr) Add(n int) UPtr { return p + UPtr(n) }

// accessOK is the kernel's access_ok plus the null page.
func accessOK(p UPtr, n int) bool {
	if n == 0 {
		return true
	}
	end := uintptr(p) + uintptr(n)
	return n > 0 && uintptr(p) >= 4096 && end > uintptr(p) && end <= maxUser
}

// CopyIn copies len(dst) bytes of application memory at src into dst.
func CopyIn(dst []byte, src UPtr) (err error) {
	if len(dst) == 0 {
		return nil
	}
	if !accessOK(src, len(dst)) {
		return unix.EFAULT
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if recover() != nil {
			err = unix.EFAULT
		}
	}()
	copy(dst, unsafe.Slice((*byte)(src.ptr()), len(dst)))
	return nil
}

// CopyOut copies src into application memory at dst.
func CopyOut(dst UPtr, src []byte) (err error) {
	if len(src) == 0 {
		return nil
	}
	if !accessOK(dst, len(src)) {
		return unix.EFAULT
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if recover() != nil {
			err = unix.EFAULT
		}
	}()
	copy(unsafe.Slice((*byte)(dst.ptr()), len(src)), src)
	return nil
}

// probe reads one byte of every page of [p, p+n): a cheap check that a
// buffer is mapped before data is taken off a socket for it.
func probe(p UPtr, n int) (err error) {
	if n == 0 {
		return nil
	}
	if !accessOK(p, n) {
		return unix.EFAULT
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if recover() != nil {
			err = unix.EFAULT
		}
	}()
	var sink byte
	for a := uintptr(p); a < uintptr(p)+uintptr(n); a = (a | 4095) + 1 {
		sink += *(*byte)(UPtr(a).ptr())
	}
	sink += *(*byte)(UPtr(uintptr(p) + uintptr(n) - 1).ptr())
	_ = sink
	return nil
}

// CString reads a NUL-terminated string of at most max bytes; a longer one
// is EINVAL (strndup_user's rule).
func CString(p UPtr, max int) (string, error) {
	var b []byte
	var c [1]byte
	for i := 0; i <= max; i++ {
		if err := CopyIn(c[:], p.Add(i)); err != nil {
			return "", err
		}
		if c[0] == 0 {
			return string(b), nil
		}
		b = append(b, c[0])
	}
	return "", unix.EINVAL
}

// ReadU32 reads a native-endian uint32.
func ReadU32(p UPtr) (uint32, error) {
	var b [4]byte
	if err := CopyIn(b[:], p); err != nil {
		return 0, err
	}
	return binary.NativeEndian.Uint32(b[:]), nil
}

// WriteU32 writes a native-endian uint32.
func WriteU32(p UPtr, v uint32) error {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return CopyOut(p, b[:])
}

// ReadU64 reads a native-endian uint64.
func ReadU64(p UPtr) (uint64, error) {
	var b [8]byte
	if err := CopyIn(b[:], p); err != nil {
		return 0, err
	}
	return binary.NativeEndian.Uint64(b[:]), nil
}

// Msghdr is struct msghdr (x86-64, 56 bytes), decoded.
type Msghdr struct {
	Name       UPtr
	Namelen    uint32
	Iov        UPtr
	Iovlen     uint64
	Control    UPtr
	Controllen uint64
	Flags      int32
}

// Offsets in struct msghdr.
const (
	sizeofMsghdr    = 56
	offNamelen      = 8
	offControllen   = 40
	offMsgFlags     = 48
	sizeofIovec     = 16
	sizeofMmsghdr   = 64
	offMmsgLen      = 56
	maxIov          = 1024         // UIO_MAXIOV
	maxRWCount      = 1<<31 - 4096 // MAX_RW_COUNT
	sizeofPollfd    = 8
	sizeofEpollEv   = 12
	sizeofSockaddr6 = 28
)

// ReadMsghdr reads a struct msghdr.
func ReadMsghdr(p UPtr) (Msghdr, error) {
	var b [sizeofMsghdr]byte
	if err := CopyIn(b[:], p); err != nil {
		return Msghdr{}, err
	}
	e := binary.NativeEndian
	return Msghdr{
		Name: UPtr(e.Uint64(b[0:])), Namelen: e.Uint32(b[8:]),
		Iov: UPtr(e.Uint64(b[16:])), Iovlen: e.Uint64(b[24:]),
		Control: UPtr(e.Uint64(b[32:])), Controllen: e.Uint64(b[40:]),
		Flags: int32(e.Uint32(b[48:])),
	}, nil
}

// Iovec is one struct iovec.
type Iovec struct {
	Base UPtr
	Len  uint64
}

// ReadIovecs reads n iovecs; more than UIO_MAXIOV is EMSGSIZE, and a total
// above what one call may move is truncated as the kernel truncates it
// (lengths whose sum overflows ssize_t are EINVAL).
func ReadIovecs(p UPtr, n uint64, dst []Iovec) ([]Iovec, int, error) {
	if n > maxIov {
		return dst, 0, unix.EMSGSIZE
	}
	if n == 0 {
		return dst[:0], 0, nil
	}
	var small [8 * sizeofIovec]byte
	b := small[:]
	if n > 8 {
		b = make([]byte, n*sizeofIovec)
	}
	b = b[:n*sizeofIovec]
	if err := CopyIn(b, p); err != nil {
		return dst, 0, err
	}
	dst = dst[:0]
	total := uint64(0)
	e := binary.NativeEndian
	for i := uint64(0); i < n; i++ {
		v := Iovec{Base: UPtr(e.Uint64(b[i*16:])), Len: e.Uint64(b[i*16+8:])}
		if int64(v.Len) < 0 {
			return dst, 0, unix.EINVAL
		}
		if v.Len > maxRWCount-total {
			v.Len = maxRWCount - total
		}
		total += v.Len
		dst = append(dst, v)
	}
	return dst, int(total), nil
}

// scatter copies src into the iovecs in order, as far as it goes.
func scatter(iov []Iovec, src []byte) error {
	for _, v := range iov {
		if len(src) == 0 {
			return nil
		}
		k := int(min(v.Len, uint64(len(src))))
		if err := CopyOut(v.Base, src[:k]); err != nil {
			return err
		}
		src = src[k:]
	}
	return nil
}

// gather copies the iovecs' bytes into dst (sized to their total).
func gather(dst []byte, iov []Iovec) error {
	off := 0
	for _, v := range iov {
		k := int(min(v.Len, uint64(len(dst)-off)))
		if err := CopyIn(dst[off:off+k], v.Base); err != nil {
			return err
		}
		off += k
	}
	return nil
}

// probeIov checks that the iovecs' buffers are mapped.
func probeIov(iov []Iovec) error {
	for _, v := range iov {
		if err := probe(v.Base, int(min(v.Len, maxRWCount))); err != nil {
			return err
		}
	}
	return nil
}

// The raw layouts here (struct iovec, msghdr and AF_XDP ring offsets as
// 64-bit words) are those of 64-bit Linux, as in gVisor's pkg/xdp.

//go:build linux && (amd64 || arm64)

package umem

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file holds every syscall and unsafe conversion of the AF_XDP layer.

func mmapAnon(n int) ([]byte, error) {
	return unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
}

func munmap(b []byte) error { return unix.Munmap(b) }

// mmapFiles maps the files shared, one after another, at the start of an
// anonymous mapping of total bytes: one contiguous range (no files: all
// anonymous). A file shorter than its Offset+Size is EINVAL.
func mmapFiles(files []FileBacking, total int) ([]byte, error) {
	for _, f := range files {
		var st unix.Stat_t
		if err := unix.Fstat(f.FD, &st); err != nil {
			return nil, err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size < f.Offset+int64(f.Size) {
			return nil, fmt.Errorf("file of %d bytes (mode %#o) cannot back %d bytes at offset %d: %w", st.Size, st.Mode, f.Size, f.Offset, unix.EINVAL)
		}
	}
	mem, err := mmapAnon(total)
	if err != nil {
		return nil, err
	}
	const prot = unix.PROT_READ | unix.PROT_WRITE
	at := 0
	for _, f := range files {
		if _, err := unix.MmapPtr(f.FD, f.Offset, unsafe.Pointer(&mem[at]), uintptr(f.Size), prot, unix.MAP_SHARED|unix.MAP_FIXED|unix.MAP_POPULATE); err != nil {
			unix.Munmap(mem)
			return nil, err
		}
		at += int(f.Size)
	}
	return mem, nil
}

func registerUMEM(fd int, mem []byte, frameSize uint32, headroom uint32) error {
	reg := unix.XDPUmemReg{
		Addr:     uint64(uintptr(unsafe.Pointer(&mem[0]))),
		Len:      uint64(len(mem)),
		Size:     frameSize,
		Headroom: headroom,
	}
	_, _, errno := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_XDP, unix.XDP_UMEM_REG,
		uintptr(unsafe.Pointer(&reg)), unsafe.Sizeof(reg), 0)
	if errno != 0 {
		return errno
	}
	return nil
}

func mmapOffsets(fd int) (unix.XDPMmapOffsets, error) {
	var off unix.XDPMmapOffsets
	size := uint32(unsafe.Sizeof(off))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_XDP, unix.XDP_MMAP_OFFSETS,
		uintptr(unsafe.Pointer(&off)), uintptr(unsafe.Pointer(&size)), 0)
	if errno != 0 {
		return off, errno
	}
	return off, nil
}

// xdpStatistics mirrors struct xdp_statistics.
type xdpStatistics struct {
	RxDropped            uint64
	RxInvalidDescs       uint64
	TxInvalidDescs       uint64
	RxRingFull           uint64
	RxFillRingEmptyDescs uint64
	TxRingEmptyDescs     uint64
}

func getStatistics(fd int) (xdpStatistics, error) {
	var st xdpStatistics
	size := uint32(unsafe.Sizeof(st))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_XDP, unix.XDP_STATISTICS,
		uintptr(unsafe.Pointer(&st)), uintptr(unsafe.Pointer(&size)), 0)
	if errno != 0 {
		return st, errno
	}
	return st, nil
}

// kickTX asks the kernel to process the TX ring (copy mode sends inside this
// call).
func kickTX(fd int) error {
	_, _, errno := unix.Syscall6(unix.SYS_SENDTO, uintptr(fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
	switch errno {
	case 0, unix.EAGAIN, unix.EBUSY, unix.ENOBUFS, unix.ENETDOWN:
		return nil
	}
	return errno
}

// ringView builds ring bookkeeping over mem at the kernel-reported offsets.
func ringView(mem []byte, off unix.XDPRingOffset, n uint32) ring {
	return ring{
		producer: (*atomic.Uint32)(unsafe.Pointer(&mem[off.Producer])),
		consumer: (*atomic.Uint32)(unsafe.Pointer(&mem[off.Consumer])),
		flags:    (*atomic.Uint32)(unsafe.Pointer(&mem[off.Flags])),
		mask:     n - 1,
		size:     n,
	}
}

func addrDescs(mem []byte, off unix.XDPRingOffset, n uint32) []uint64 {
	return unsafe.Slice((*uint64)(unsafe.Pointer(&mem[off.Desc])), n)
}

func xdpDescs(mem []byte, off unix.XDPRingOffset, n uint32) []unix.XDPDesc {
	return unsafe.Slice((*unix.XDPDesc)(unsafe.Pointer(&mem[off.Desc])), n)
}

const (
	sizeofAddrDesc = 8
	sizeofXDPDesc  = int(unsafe.Sizeof(unix.XDPDesc{}))
)

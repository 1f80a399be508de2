package bench

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// xskStats are an AF_XDP socket's kernel counters, named as in umem.Stats.
type xskStats struct {
	RxDropped, RxRingFull, RxFillRingEmptyDescs uint64
}

// xskStatistics reads getsockopt(SOL_XDP, XDP_STATISTICS) for a socket the
// bench did not create through umem (gVisor's endpoint's).
func xskStatistics(fd int) (xskStats, error) {
	var st unix.XDPStatistics
	l := uint32(unsafe.Sizeof(st))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_XDP, unix.XDP_STATISTICS,
		uintptr(unsafe.Pointer(&st)), uintptr(unsafe.Pointer(&l)), 0)
	if errno != 0 {
		return xskStats{}, errno
	}
	return xskStats{st.Rx_dropped, st.Rx_ring_full, st.Rx_fill_ring_empty_descs}, nil
}

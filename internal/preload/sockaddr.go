package preload

import (
	"encoding/binary"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Socket addresses as the kernel's inet_bind, inet6_bind, connect and
// move_addr_to_user read and write them.

// sockaddr reads a socket address of family fam (the socket's) from
// application memory with the kernel's checks: a short length is EINVAL,
// another family EAFNOSUPPORT (AF_UNSPEC is family 0: connect's
// disconnect, reported as an invalid AddrPort with no error).
func sockaddr(fam int, p UPtr, n uint32) (netip.AddrPort, error) {
	need := uint32(unix.SizeofSockaddrInet4)
	if fam == unix.AF_INET6 {
		need = 24 // SIN6_LEN_RFC2133
	}
	if n < 2 {
		return netip.AddrPort{}, unix.EINVAL
	}
	var b [28]byte
	if err := CopyIn(b[:min(n, 28)], p); err != nil {
		return netip.AddrPort{}, err
	}
	got := int(binary.NativeEndian.Uint16(b[:]))
	if got == unix.AF_UNSPEC {
		return netip.AddrPort{}, nil
	}
	if n < need {
		return netip.AddrPort{}, unix.EINVAL
	}
	if got != fam {
		return netip.AddrPort{}, unix.EAFNOSUPPORT
	}
	port := binary.BigEndian.Uint16(b[2:])
	if fam == unix.AF_INET {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port), nil
	}
	return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])), port), nil
}

// encodeSockaddr renders ap in family fam (an IPv4 address in an AF_INET6
// socket is v4-mapped).
func encodeSockaddr(fam int, ap netip.AddrPort) []byte {
	if fam == unix.AF_INET {
		b := make([]byte, unix.SizeofSockaddrInet4)
		binary.NativeEndian.PutUint16(b, unix.AF_INET)
		binary.BigEndian.PutUint16(b[2:], ap.Port())
		a4 := ap.Addr().Unmap().As4()
		copy(b[4:], a4[:])
		return b
	}
	b := make([]byte, unix.SizeofSockaddrInet6)
	binary.NativeEndian.PutUint16(b, unix.AF_INET6)
	binary.BigEndian.PutUint16(b[2:], ap.Port())
	a16 := ap.Addr().As16()
	copy(b[8:], a16[:])
	return b
}

// putSockaddr is move_addr_to_user: it reads the caller's length (EFAULT,
// negative EINVAL), copies at most that much of sa, and writes the full
// length back.
func putSockaddr(p, lenp UPtr, sa []byte) error {
	n, err := ReadU32(lenp)
	if err != nil {
		return err
	}
	if int32(n) < 0 {
		return unix.EINVAL
	}
	if err := CopyOut(p, sa[:min(int(n), len(sa))]); err != nil {
		return err
	}
	return WriteU32(lenp, uint32(len(sa)))
}

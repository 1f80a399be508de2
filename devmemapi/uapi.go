package devmemapi

import (
	"encoding/binary"
	"syscall"
	"unsafe"
)

// Socket options, control-message types and flags of the devmem uAPI
// (include/uapi/asm-generic/socket.h, include/linux/socket.h).
const (
	// SO_DEVMEM_LINEAR is the SOL_SOCKET level of linear (copied) data.
	SO_DEVMEM_LINEAR = 78
	// SCM_DEVMEM_LINEAR is the control message for linear data in p.
	SCM_DEVMEM_LINEAR = SO_DEVMEM_LINEAR
	// SO_DEVMEM_DMABUF is the SOL_SOCKET level of dmabuf fragments.
	SO_DEVMEM_DMABUF = 79
	// SCM_DEVMEM_DMABUF is the control message for a dmabuf fragment (RX)
	// and for the dmabuf id of a devmem send (TX).
	SCM_DEVMEM_DMABUF = SO_DEVMEM_DMABUF
	// SO_DEVMEM_DONTNEED returns tokens to the kernel.
	SO_DEVMEM_DONTNEED = 80
	// SO_DEVMEM_AUTORELEASE selects the token release mode per socket (the
	// autorelease series, v6 form; v7+ moved the choice to bind-rx).
	SO_DEVMEM_AUTORELEASE = 85
	// MSG_SOCK_DEVMEM asks recvmsg for devmem fragments.
	MSG_SOCK_DEVMEM = 0x2000000

	// MaxDontNeedTokens is the most DmabufToken entries one DONTNEED takes
	// (the kernel's MAX_DONTNEED_TOKENS).
	MaxDontNeedTokens = 128
	// MaxDontNeedFrags is the most fragments one DONTNEED frees (the
	// kernel's MAX_DONTNEED_FRAGS); it stops there and reports the count.
	MaxDontNeedFrags = 1024
)

// ETOOSMALL is the kernel-internal errno (524) that a devmem recvmsg returns
// when not even the first control message fits in the control buffer.
const ETOOSMALL = syscall.Errno(524)

// DmabufCmsg is struct dmabuf_cmsg: the payload of SCM_DEVMEM_DMABUF and
// SCM_DEVMEM_LINEAR control messages. 24 bytes, no holes.
type DmabufCmsg struct {
	// FragOffset is the offset into the dmabuf where the fragment starts.
	FragOffset uint64
	// FragSize is the size of the fragment (or of the linear data).
	FragSize uint32
	// FragToken is the token to pass to SO_DEVMEM_DONTNEED.
	FragToken uint32
	// DmabufID is the id of the binding the fragment landed in.
	DmabufID uint32
	// Flags is reserved and 0.
	Flags uint32
}

// DmabufToken is struct dmabuf_token: a range of tokens for
// SO_DEVMEM_DONTNEED. 8 bytes.
type DmabufToken struct {
	// TokenStart is the first token of the range.
	TokenStart uint32
	// TokenCount is the number of tokens in the range.
	TokenCount uint32
}

// DmabufTxCmsg is struct dmabuf_tx_cmsg: the payload of the
// SCM_DEVMEM_DMABUF control message of a devmem send. 4 bytes.
type DmabufTxCmsg struct {
	// DmabufID is the id of the TX binding whose dmabuf holds the data.
	DmabufID uint32
}

// Sizes of the uAPI structs in bytes.
const (
	SizeofDmabufCmsg   = 24
	SizeofDmabufToken  = 8
	SizeofDmabufTxCmsg = 4
)

// Compile-time layout checks; the tests check offsets too.
var (
	_ [SizeofDmabufCmsg - unsafe.Sizeof(DmabufCmsg{})]struct{}
	_ [unsafe.Sizeof(DmabufCmsg{}) - SizeofDmabufCmsg]struct{}
	_ [SizeofDmabufToken - unsafe.Sizeof(DmabufToken{})]struct{}
	_ [unsafe.Sizeof(DmabufToken{}) - SizeofDmabufToken]struct{}
)

// Marshal writes c in the kernel's native (little-endian on the supported
// architectures) layout into b, which must hold SizeofDmabufCmsg bytes.
func (c *DmabufCmsg) Marshal(b []byte) {
	_ = b[SizeofDmabufCmsg-1]
	binary.NativeEndian.PutUint64(b[0:], c.FragOffset)
	binary.NativeEndian.PutUint32(b[8:], c.FragSize)
	binary.NativeEndian.PutUint32(b[12:], c.FragToken)
	binary.NativeEndian.PutUint32(b[16:], c.DmabufID)
	binary.NativeEndian.PutUint32(b[20:], c.Flags)
}

// Unmarshal reads c from b; it fails with EINVAL when b is too short.
func (c *DmabufCmsg) Unmarshal(b []byte) error {
	if len(b) < SizeofDmabufCmsg {
		return syscall.EINVAL
	}
	c.FragOffset = binary.NativeEndian.Uint64(b[0:])
	c.FragSize = binary.NativeEndian.Uint32(b[8:])
	c.FragToken = binary.NativeEndian.Uint32(b[12:])
	c.DmabufID = binary.NativeEndian.Uint32(b[16:])
	c.Flags = binary.NativeEndian.Uint32(b[20:])
	return nil
}

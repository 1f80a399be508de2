package devmemapi

import (
	"encoding/binary"
	"syscall"

	"golang.org/x/sys/unix"
)

// Control-message geometry on 64-bit Linux (struct cmsghdr: u64 len,
// i32 level, i32 type; 8-byte alignment).
const (
	cmsgHdrLen = 16
	cmsgAlign  = 8
)

// CmsgSpaceDmabuf is CMSG_SPACE(sizeof(struct dmabuf_cmsg)): the room one
// SCM_DEVMEM_DMABUF or SCM_DEVMEM_LINEAR message takes in a control buffer.
const CmsgSpaceDmabuf = cmsgHdrLen + SizeofDmabufCmsg

// Frag is one parsed devmem control message: a dmabuf fragment, or (Linear
// set) a count of linear bytes that RecvMsg copied into p.
type Frag struct {
	DmabufCmsg
	// Linear is true for SCM_DEVMEM_LINEAR: FragSize bytes are in p and
	// there is no token.
	Linear bool
}

func cmsgAlignUp(n int) int { return (n + cmsgAlign - 1) &^ (cmsgAlign - 1) }

// PutDmabufCmsg appends one SOL_SOCKET control message of type typ
// (SCM_DEVMEM_DMABUF or SCM_DEVMEM_LINEAR) carrying c to oob[off:], as the
// kernel's put_cmsg does. It returns the new offset, or ok=false when the
// message does not fit (the kernel's put_cmsg_notrunc then fails with
// ETOOSMALL and writes nothing).
func PutDmabufCmsg(oob []byte, off int, typ int32, c *DmabufCmsg) (next int, ok bool) {
	if off < 0 || len(oob)-off < CmsgSpaceDmabuf {
		return off, false
	}
	b := oob[off : off+CmsgSpaceDmabuf]
	binary.NativeEndian.PutUint64(b[0:], uint64(cmsgHdrLen+SizeofDmabufCmsg))
	binary.NativeEndian.PutUint32(b[8:], uint32(unix.SOL_SOCKET))
	binary.NativeEndian.PutUint32(b[12:], uint32(typ))
	c.Marshal(b[cmsgHdrLen:])
	return off + CmsgSpaceDmabuf, true
}

// AppendFrags parses the devmem control messages in oob, as filled by either
// backend's RecvMsg (or the kernel's recvmsg), and appends them to dst.
// Control messages of other levels or types are skipped. It allocates only
// when dst must grow. A malformed buffer fails with EINVAL.
func AppendFrags(dst []Frag, oob []byte) ([]Frag, error) {
	it := cmsgIter{oob: oob}
	for it.next() {
		if it.level == unix.SOL_SOCKET && (it.typ == SCM_DEVMEM_DMABUF || it.typ == SCM_DEVMEM_LINEAR) {
			var f Frag
			if err := f.DmabufCmsg.Unmarshal(it.data); err != nil {
				return dst, err
			}
			f.Linear = it.typ == SCM_DEVMEM_LINEAR
			dst = append(dst, f)
		}
	}
	if it.bad || it.short {
		return dst, syscall.EINVAL
	}
	return dst, nil
}

// cmsgIter walks the control messages of a buffer as the kernel's
// for_each_cmsghdr and CMSG_OK do: one header at a time, cmsg_len checked
// against what is left, the next one at CMSG_ALIGN(cmsg_len). The one
// walker of the package's parsers; each decides what a short tail (short)
// or a bad cmsg_len (bad) means to it.
type cmsgIter struct {
	oob        []byte
	off        int
	short, bad bool // stopped at a tail too short for a header, or at a bad cmsg_len

	// The current message.
	level, typ int32
	len        uint64 // cmsg_len
	data       []byte
}

// next moves to the next message; false at the end or where the walk
// stops (short or bad).
func (it *cmsgIter) next() bool {
	if it.off >= len(it.oob) {
		return false
	}
	if len(it.oob)-it.off < cmsgHdrLen {
		it.short = true
		return false
	}
	l := binary.NativeEndian.Uint64(it.oob[it.off:])
	if l < cmsgHdrLen || l > uint64(len(it.oob)-it.off) {
		it.bad = true
		return false
	}
	it.len = l
	it.level = int32(binary.NativeEndian.Uint32(it.oob[it.off+8:]))
	it.typ = int32(binary.NativeEndian.Uint32(it.oob[it.off+12:]))
	it.data = it.oob[it.off+cmsgHdrLen : it.off+int(l)]
	it.off += cmsgAlignUp(int(l))
	return true
}

// AppendTokens encodes toks as a SO_DEVMEM_DONTNEED option value (an array
// of struct dmabuf_token) appended to dst.
func AppendTokens(dst []byte, toks []DmabufToken) []byte {
	for _, t := range toks {
		dst = binary.NativeEndian.AppendUint32(dst, t.TokenStart)
		dst = binary.NativeEndian.AppendUint32(dst, t.TokenCount)
	}
	return dst
}

// ParseTokens decodes a SO_DEVMEM_DONTNEED option value with the kernel's
// checks: its length must be a multiple of SizeofDmabufToken and at most
// MaxDontNeedTokens entries, else EINVAL. It appends to dst.
func ParseTokens(dst []DmabufToken, optval []byte) ([]DmabufToken, error) {
	if err := CheckDontNeedLen(len(optval)); err != nil {
		return dst, err
	}
	for off := 0; off < len(optval); off += SizeofDmabufToken {
		dst = append(dst, DmabufToken{
			TokenStart: binary.NativeEndian.Uint32(optval[off:]),
			TokenCount: binary.NativeEndian.Uint32(optval[off+4:]),
		})
	}
	return dst, nil
}

// CheckDontNeedLen applies the kernel's optlen rules for SO_DEVMEM_DONTNEED:
// sk_setsockopt refuses anything shorter than an int (so an empty array
// too), and sock_devmem_dontneed wants a multiple of SizeofDmabufToken and
// at most MaxDontNeedTokens entries. Each violation is EINVAL.
func CheckDontNeedLen(optlen int) error {
	if optlen < 4 || optlen%SizeofDmabufToken != 0 || optlen > SizeofDmabufToken*MaxDontNeedTokens {
		return syscall.EINVAL
	}
	return nil
}

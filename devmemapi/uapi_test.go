package devmemapi

import (
	"bytes"
	"errors"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The kernel's layouts (include/uapi/linux/uio.h), proven rather than
// assumed.
func TestLayout(t *testing.T) {
	var c DmabufCmsg
	var tok DmabufToken
	var tx DmabufTxCmsg
	cases := []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(struct dmabuf_cmsg)", unsafe.Sizeof(c), 24},
		{"dmabuf_cmsg.frag_offset", unsafe.Offsetof(c.FragOffset), 0},
		{"dmabuf_cmsg.frag_size", unsafe.Offsetof(c.FragSize), 8},
		{"dmabuf_cmsg.frag_token", unsafe.Offsetof(c.FragToken), 12},
		{"dmabuf_cmsg.dmabuf_id", unsafe.Offsetof(c.DmabufID), 16},
		{"dmabuf_cmsg.flags", unsafe.Offsetof(c.Flags), 20},
		{"sizeof(struct dmabuf_token)", unsafe.Sizeof(tok), 8},
		{"dmabuf_token.token_start", unsafe.Offsetof(tok.TokenStart), 0},
		{"dmabuf_token.token_count", unsafe.Offsetof(tok.TokenCount), 4},
		{"sizeof(struct dmabuf_tx_cmsg)", unsafe.Sizeof(tx), 4},
		{"dmabuf_tx_cmsg.dmabuf_id", unsafe.Offsetof(tx.DmabufID), 0},
		{"SizeofDmabufCmsg", SizeofDmabufCmsg, unsafe.Sizeof(c)},
		{"SizeofDmabufToken", SizeofDmabufToken, unsafe.Sizeof(tok)},
		{"SizeofDmabufTxCmsg", SizeofDmabufTxCmsg, unsafe.Sizeof(tx)},
		// CMSG_SPACE(sizeof(struct dmabuf_cmsg)) as x/sys computes it.
		{"CmsgSpaceDmabuf", CmsgSpaceDmabuf, uintptr(unix.CmsgSpace(SizeofDmabufCmsg))},
		{"cmsghdr", cmsgHdrLen, uintptr(unix.CmsgLen(0))},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}

// The constants x/sys/unix also has must agree with it.
func TestConstants(t *testing.T) {
	cases := []struct {
		name      string
		got, want int
	}{
		{"SO_DEVMEM_LINEAR", SO_DEVMEM_LINEAR, unix.SO_DEVMEM_LINEAR},
		{"SCM_DEVMEM_LINEAR", SCM_DEVMEM_LINEAR, unix.SCM_DEVMEM_LINEAR},
		{"SO_DEVMEM_DMABUF", SO_DEVMEM_DMABUF, unix.SO_DEVMEM_DMABUF},
		{"SCM_DEVMEM_DMABUF", SCM_DEVMEM_DMABUF, unix.SCM_DEVMEM_DMABUF},
		{"SO_DEVMEM_DONTNEED", SO_DEVMEM_DONTNEED, unix.SO_DEVMEM_DONTNEED},
		{"MSG_SOCK_DEVMEM", MSG_SOCK_DEVMEM, unix.MSG_SOCK_DEVMEM},
		// Not in x/sys: from the uAPI and the series.
		{"SO_DEVMEM_AUTORELEASE", SO_DEVMEM_AUTORELEASE, 85},
		{"MaxDontNeedTokens", MaxDontNeedTokens, 128},
		{"MaxDontNeedFrags", MaxDontNeedFrags, 1024},
		{"ETOOSMALL", int(ETOOSMALL), 524},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}

// memBytes is the in-memory representation of *p.
func memBytes[T any](p *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(p)), unsafe.Sizeof(*p))
}

func TestDmabufCmsgMarshal(t *testing.T) {
	cases := []DmabufCmsg{
		{},
		{FragOffset: 0x0102030405060708, FragSize: 0x11121314, FragToken: 0x21222324, DmabufID: 0x31323334, Flags: 0x41424344},
		{FragOffset: 1<<64 - 1, FragSize: 1<<32 - 1, FragToken: 1<<32 - 1, DmabufID: 1<<32 - 1, Flags: 1<<32 - 1},
		{FragOffset: 4096 * 7, FragSize: 1448, FragToken: 1, DmabufID: 3},
	}
	for _, c := range cases {
		b := make([]byte, SizeofDmabufCmsg)
		c.Marshal(b)
		if !bytes.Equal(b, memBytes(&c)) {
			t.Errorf("Marshal(%+v) = %x, memory holds %x", c, b, memBytes(&c))
		}
		var back DmabufCmsg
		if err := back.Unmarshal(b); err != nil || back != c {
			t.Errorf("Unmarshal(Marshal(%+v)) = %+v, %v", c, back, err)
		}
		// Longer input: the first 24 bytes count.
		var back2 DmabufCmsg
		if err := back2.Unmarshal(append(b, 0xff, 0xff)); err != nil || back2 != c {
			t.Errorf("Unmarshal of 26 bytes = %+v, %v", back2, err)
		}
	}
}

func TestDmabufCmsgUnmarshalShort(t *testing.T) {
	for _, n := range []int{0, 1, 8, 23} {
		var c DmabufCmsg
		err := c.Unmarshal(make([]byte, n))
		if !errors.Is(err, syscall.EINVAL) || !errors.Is(err, unix.EINVAL) {
			t.Errorf("Unmarshal(%d bytes) = %v, want EINVAL", n, err)
		}
	}
}

func TestDmabufCmsgMarshalShortPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("Marshal into 23 bytes did not panic")
		}
	}()
	var c DmabufCmsg
	c.Marshal(make([]byte, SizeofDmabufCmsg-1))
}

// AppendTokens writes exactly the memory of a []DmabufToken: the kernel
// copies optval straight into a struct dmabuf_token array.
func TestAppendTokensIsMemoryLayout(t *testing.T) {
	toks := []DmabufToken{{1, 1}, {0xdeadbeef, 0x01020304}, {1<<32 - 1, 1<<32 - 1}, {0, 0}}
	got := AppendTokens(nil, toks)
	want := unsafe.Slice((*byte)(unsafe.Pointer(&toks[0])), len(toks)*SizeofDmabufToken)
	if !bytes.Equal(got, want) {
		t.Fatalf("AppendTokens = %x, memory holds %x", got, want)
	}
	// Appends: the prefix stays.
	got = AppendTokens([]byte{9, 9}, toks[:1])
	if !bytes.Equal(got[:2], []byte{9, 9}) || len(got) != 2+SizeofDmabufToken {
		t.Fatalf("AppendTokens with a prefix = %x", got)
	}
}

package devmemapi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestTXLayouts(t *testing.T) {
	if got := unsafe.Sizeof(SockExtendedErr{}); got != SizeofSockExtendedErr || got != unsafe.Sizeof(unix.SockExtendedErr{}) {
		t.Errorf("sizeof sock_extended_err = %d, want %d", got, SizeofSockExtendedErr)
	}
	for _, f := range []struct {
		name     string
		got, off uintptr
	}{
		{"ee_errno", unsafe.Offsetof(SockExtendedErr{}.Errno), unsafe.Offsetof(unix.SockExtendedErr{}.Errno)},
		{"ee_origin", unsafe.Offsetof(SockExtendedErr{}.Origin), 4},
		{"ee_code", unsafe.Offsetof(SockExtendedErr{}.Code), 6},
		{"ee_info", unsafe.Offsetof(SockExtendedErr{}.Info), 8},
		{"ee_data", unsafe.Offsetof(SockExtendedErr{}.Data), 12},
	} {
		if f.got != f.off {
			t.Errorf("offset of %s = %d, want %d", f.name, f.got, f.off)
		}
	}
	if got := unsafe.Sizeof(Iovec{}); got != SizeofIovec || got != unsafe.Sizeof(unix.Iovec{}) {
		t.Errorf("sizeof iovec = %d, want %d", got, SizeofIovec)
	}
	if got := unsafe.Sizeof(DmabufTxCmsg{}); got != SizeofDmabufTxCmsg {
		t.Errorf("sizeof dmabuf_tx_cmsg = %d", got)
	}
	// CMSG_SPACE / CMSG_LEN as libc computes them.
	if CmsgSpaceDmabufTx != unix.CmsgSpace(4) || CmsgLenDmabufTx != unix.CmsgLen(4) {
		t.Errorf("dmabuf tx cmsg space/len %d/%d, want %d/%d", CmsgSpaceDmabufTx, CmsgLenDmabufTx, unix.CmsgSpace(4), unix.CmsgLen(4))
	}
	if CmsgSpaceZerocopy != unix.CmsgSpace(SizeofZerocopyErr) {
		t.Errorf("zerocopy cmsg space %d, want %d", CmsgSpaceZerocopy, unix.CmsgSpace(SizeofZerocopyErr))
	}
}

// kernelErrhdr6 is ipv6_recv_error's errhdr: what follows the cmsghdr of an
// IPV6_RECVERR message.
type kernelErrhdr6 struct {
	ee       unix.SockExtendedErr
	offender unix.RawSockaddrInet6
}

// kernelErrhdr4 is ip_recv_error's errhdr.
type kernelErrhdr4 struct {
	ee       unix.SockExtendedErr
	offender unix.RawSockaddrInet4
}

// TestZerocopyErrLayouts: the IP_RECVERR and IPV6_RECVERR payloads and
// their control-message sizes as the kernel's structs and libc's macros
// give them (sock_extended_err 16 bytes, sockaddr_in 16, sockaddr_in6 28:
// sin6_family 0, sin6_port 2, sin6_flowinfo 4, sin6_addr 8, sin6_scope_id
// 24; SO_EE_OFFENDER right after the sock_extended_err).
func TestZerocopyErrLayouts(t *testing.T) {
	if SOL_IPV6, IPV6_RECVERR := 41, 25; unix.SOL_IPV6 != SOL_IPV6 || IPV6_RECVERR != unix.IPV6_RECVERR {
		t.Fatalf("SOL_IPV6 %d IPV6_RECVERR %d", unix.SOL_IPV6, unix.IPV6_RECVERR)
	}
	if SOL_IP, IP_RECVERR := 0, 11; unix.SOL_IP != SOL_IP || IP_RECVERR != unix.IP_RECVERR {
		t.Fatalf("SOL_IP %d IP_RECVERR %d", unix.SOL_IP, unix.IP_RECVERR)
	}
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof errhdr (ip_recv_error)", SizeofZerocopyErr, unsafe.Sizeof(kernelErrhdr4{})},
		{"sizeof errhdr (ipv6_recv_error)", SizeofZerocopyErr6, unsafe.Sizeof(kernelErrhdr6{})},
		{"sizeof errhdr (ipv6_recv_error)", SizeofZerocopyErr6, 44},
		{"SO_EE_OFFENDER (in6)", SizeofSockExtendedErr, unsafe.Offsetof(kernelErrhdr6{}.offender)},
		{"sizeof sockaddr_in6", unix.SizeofSockaddrInet6, 28},
		{"sin6_family", unsafe.Offsetof(unix.RawSockaddrInet6{}.Family), 0},
		{"sin6_port", unsafe.Offsetof(unix.RawSockaddrInet6{}.Port), 2},
		{"sin6_flowinfo", unsafe.Offsetof(unix.RawSockaddrInet6{}.Flowinfo), 4},
		{"sin6_addr", unsafe.Offsetof(unix.RawSockaddrInet6{}.Addr), 8},
		{"sin6_scope_id", unsafe.Offsetof(unix.RawSockaddrInet6{}.Scope_id), 24},
		{"CMSG_LEN (in6)", CmsgLenZerocopy6, uintptr(unix.CmsgLen(SizeofZerocopyErr6))},
		{"CMSG_LEN (in6)", CmsgLenZerocopy6, 60},
		{"CMSG_SPACE (in6)", CmsgSpaceZerocopy6, uintptr(unix.CmsgSpace(SizeofZerocopyErr6))},
		{"CMSG_SPACE (in6)", CmsgSpaceZerocopy6, 64},
		{"CMSG_LEN (in)", CmsgSpaceZerocopy, uintptr(unix.CmsgLen(SizeofZerocopyErr))},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}

// TestZerocopyCmsg6RoundTrip: PutZerocopyCmsg6 writes what ipv6_recv_error
// writes for a zerocopy completion, byte for byte, libc parses it, and
// AppendZerocopyRanges reads the ranges back from a buffer mixing both
// families.
func TestZerocopyCmsg6RoundTrip(t *testing.T) {
	oob := make([]byte, 2*CmsgSpaceZerocopy6+CmsgSpaceZerocopy)
	for i := range oob {
		oob[i] = 0xee // the padding must not keep stale bytes
	}
	n, trunc := PutZerocopyCmsg6(oob, ZerocopyRange{Lo: 3, Hi: 9})
	if n != CmsgSpaceZerocopy6 || trunc {
		t.Fatalf("put: %d %v", n, trunc)
	}
	// The kernel's bytes: cmsghdr {60, SOL_IPV6, IPV6_RECVERR}, then
	// sock_extended_err {0, SO_EE_ORIGIN_ZEROCOPY, 0, 0, 0, 3, 9}, then
	// 28 zero bytes of sockaddr_in6 (AF_UNSPEC), then 4 bytes of padding.
	want := make([]byte, CmsgSpaceZerocopy6)
	binary.NativeEndian.PutUint64(want[0:], 60)
	binary.NativeEndian.PutUint32(want[8:], 41)
	binary.NativeEndian.PutUint32(want[12:], 25)
	want[16+4] = unix.SO_EE_ORIGIN_ZEROCOPY
	binary.NativeEndian.PutUint32(want[16+8:], 3)
	binary.NativeEndian.PutUint32(want[16+12:], 9)
	if !bytes.Equal(oob[:n], want) {
		t.Fatalf("IPV6_RECVERR bytes\n got %x\nwant %x", oob[:n], want)
	}
	m, _ := PutZerocopyCmsg(oob[n:], ZerocopyRange{Lo: 10, Hi: 10, Copied: true})
	k, _ := PutZerocopyCmsg6(oob[n+m:], ZerocopyRange{Lo: 11, Hi: 20})
	msgs, err := unix.ParseSocketControlMessage(oob[:n+m+k])
	if err != nil || len(msgs) != 3 {
		t.Fatalf("libc view: %+v %v", msgs, err)
	}
	for i, w := range []struct{ level, typ, size int }{
		{unix.SOL_IPV6, unix.IPV6_RECVERR, SizeofZerocopyErr6},
		{unix.SOL_IP, unix.IP_RECVERR, SizeofZerocopyErr},
		{unix.SOL_IPV6, unix.IPV6_RECVERR, SizeofZerocopyErr6},
	} {
		h := msgs[i].Header
		if int(h.Level) != w.level || int(h.Type) != w.typ || len(msgs[i].Data) != w.size {
			t.Errorf("message %d: level %d type %d, %d bytes; want %d %d %d", i, h.Level, h.Type, len(msgs[i].Data), w.level, w.typ, w.size)
		}
	}
	e6 := (*kernelErrhdr6)(unsafe.Pointer(&msgs[2].Data[0]))
	if e6.ee.Origin != unix.SO_EE_ORIGIN_ZEROCOPY || e6.ee.Info != 11 || e6.ee.Data != 20 || e6.offender != (unix.RawSockaddrInet6{}) {
		t.Fatalf("errhdr %+v", *e6)
	}
	rs, err := AppendZerocopyRanges(nil, oob[:n+m+k])
	if err != nil || len(rs) != 3 || rs[0] != (ZerocopyRange{Lo: 3, Hi: 9}) || rs[1] != (ZerocopyRange{Lo: 10, Hi: 10, Copied: true}) || rs[2] != (ZerocopyRange{Lo: 11, Hi: 20}) {
		t.Fatalf("ranges %v %v", rs, err)
	}

	// put_cmsg's truncation: cmsg_len says what fits; between CMSG_LEN
	// and CMSG_SPACE nothing is cut.
	for _, c := range []struct {
		room, n int
		trunc   bool
	}{{64, 64, false}, {62, 62, false}, {60, 60, false}, {59, 59, true}, {20, 20, true}, {15, 0, true}} {
		b := make([]byte, c.room)
		n, trunc := PutZerocopyCmsg6(b, ZerocopyRange{Lo: 1, Hi: 1})
		if n != c.n || trunc != c.trunc {
			t.Errorf("room %d: n %d truncated %v, want %d %v", c.room, n, trunc, c.n, c.trunc)
		}
		if n > 0 && binary.NativeEndian.Uint64(b) != uint64(min(c.room, CmsgLenZerocopy6)) {
			t.Errorf("room %d: cmsg_len %d", c.room, binary.NativeEndian.Uint64(b))
		}
	}
}

func TestSockExtendedErrRoundTrip(t *testing.T) {
	e := SockExtendedErr{Errno: 1, Origin: 5, Type: 2, Code: 1, Pad: 3, Info: 0xdeadbeef, Data: 7}
	var b [SizeofSockExtendedErr]byte
	e.Marshal(b[:])
	// The same bytes as the kernel's struct in memory.
	u := (*unix.SockExtendedErr)(unsafe.Pointer(&b[0]))
	if u.Errno != e.Errno || u.Origin != e.Origin || u.Type != e.Type || u.Code != e.Code || u.Info != e.Info || u.Data != e.Data {
		t.Fatalf("marshalled %+v, kernel view %+v", e, *u)
	}
	var g SockExtendedErr
	if err := g.Unmarshal(b[:]); err != nil || g != e {
		t.Fatalf("round trip %+v -> %+v (%v)", e, g, err)
	}
	if err := g.Unmarshal(b[:15]); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("short unmarshal: %v", err)
	}
}

func TestDmabufTxCmsg(t *testing.T) {
	oob := AppendDmabufTxCmsg(nil, 42)
	if len(oob) != CmsgSpaceDmabufTx {
		t.Fatalf("len %d", len(oob))
	}
	// What libc's CMSG macros would read.
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil || len(msgs) != 1 || msgs[0].Header.Level != unix.SOL_SOCKET || msgs[0].Header.Type != SCM_DEVMEM_DMABUF ||
		msgs[0].Header.Len != CmsgLenDmabufTx || binary.NativeEndian.Uint32(msgs[0].Data) != 42 {
		t.Fatalf("parsed %+v (%v)", msgs, err)
	}
	id, found, err := ParseDmabufTxCmsg(oob)
	if err != nil || !found || id != 42 {
		t.Fatalf("ParseDmabufTxCmsg = %d %v %v", id, found, err)
	}

	other := unix.UnixRights(3) // SCM_RIGHTS: ignored
	ipTTL := make([]byte, unix.CmsgSpace(4))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&ipTTL[0]))
	h.Level, h.Type = unix.SOL_IP, unix.IP_TTL
	h.SetLen(unix.CmsgLen(4))
	mark := make([]byte, unix.CmsgSpace(4))
	h = (*unix.Cmsghdr)(unsafe.Pointer(&mark[0]))
	h.Level, h.Type = unix.SOL_SOCKET, unix.SO_MARK
	h.SetLen(unix.CmsgLen(4))
	long := make([]byte, unix.CmsgSpace(8))
	h = (*unix.Cmsghdr)(unsafe.Pointer(&long[0]))
	h.Level, h.Type = unix.SOL_SOCKET, SCM_DEVMEM_DMABUF
	h.SetLen(unix.CmsgLen(8))
	bad := AppendDmabufTxCmsg(nil, 1)
	binary.NativeEndian.PutUint64(bad, 100) // runs past the buffer

	for _, tc := range []struct {
		name  string
		oob   []byte
		id    uint32
		found bool
		err   error
	}{
		{"empty", nil, 0, false, nil},
		{"other level skipped", append(append([]byte(nil), ipTTL...), oob...), 42, true, nil},
		{"SCM_RIGHTS ignored", append(append([]byte(nil), other...), oob...), 42, true, nil},
		{"last id wins", AppendDmabufTxCmsg(AppendDmabufTxCmsg(nil, 1), 2), 2, true, nil},
		{"trailing bytes shorter than a header", append(append([]byte(nil), oob...), 1, 2, 3), 42, true, nil},
		{"SO_MARK accepted", append(append([]byte(nil), mark...), oob...), 42, true, nil},
		{"wrong length", long, 0, false, syscall.EINVAL},
		{"past the buffer", bad, 0, false, syscall.EINVAL},
		{"no other level", ipTTL, 0, false, nil},
	} {
		id, found, err := ParseDmabufTxCmsg(tc.oob)
		if id != tc.id || found != tc.found || !errors.Is(err, tc.err) || (tc.err == nil && err != nil) {
			t.Errorf("%s: got %d %v %v, want %d %v %v", tc.name, id, found, err, tc.id, tc.found, tc.err)
		}
	}
}

func TestZerocopyCmsgRoundTrip(t *testing.T) {
	oob := make([]byte, 2*CmsgSpaceZerocopy)
	n, trunc := PutZerocopyCmsg(oob, ZerocopyRange{Lo: 3, Hi: 9})
	if n != CmsgSpaceZerocopy || trunc {
		t.Fatalf("put: %d %v", n, trunc)
	}
	m, _ := PutZerocopyCmsg(oob[n:], ZerocopyRange{Lo: 10, Hi: 10, Copied: true})
	msgs, err := unix.ParseSocketControlMessage(oob[:n+m])
	if err != nil || len(msgs) != 2 || msgs[0].Header.Level != unix.SOL_IP || msgs[0].Header.Type != unix.IP_RECVERR {
		t.Fatalf("libc view: %+v %v", msgs, err)
	}
	ee := (*unix.SockExtendedErr)(unsafe.Pointer(&msgs[0].Data[0]))
	if ee.Origin != unix.SO_EE_ORIGIN_ZEROCOPY || ee.Errno != 0 || ee.Info != 3 || ee.Data != 9 || len(msgs[0].Data) != SizeofZerocopyErr {
		t.Fatalf("sock_extended_err %+v (data %d bytes)", *ee, len(msgs[0].Data))
	}
	rs, err := AppendZerocopyRanges(nil, oob[:n+m])
	if err != nil || len(rs) != 2 || rs[0] != (ZerocopyRange{Lo: 3, Hi: 9}) || rs[1] != (ZerocopyRange{Lo: 10, Hi: 10, Copied: true}) {
		t.Fatalf("ranges %v %v", rs, err)
	}
	if rs[0].Count() != 7 || rs[0].String() != "[3,9]" {
		t.Fatalf("count %d string %s", rs[0].Count(), rs[0])
	}

	// Truncation as put_cmsg does it.
	small := make([]byte, 20)
	if n, trunc := PutZerocopyCmsg(small, ZerocopyRange{}); n != 20 || !trunc || binary.NativeEndian.Uint64(small) != 20 {
		t.Fatalf("truncated put: %d %v", n, trunc)
	}
	if n, trunc := PutZerocopyCmsg(small[:8], ZerocopyRange{}); n != 0 || !trunc {
		t.Fatalf("no room: %d %v", n, trunc)
	}

	// Not a zerocopy completion.
	PutZerocopyCmsg(oob, ZerocopyRange{})
	oob[cmsgHdrLen+4] = 2 // SO_EE_ORIGIN_ICMP
	if _, err := AppendZerocopyRanges(nil, oob[:CmsgSpaceZerocopy]); !errors.Is(err, syscall.EPROTO) {
		t.Fatalf("icmp origin: %v", err)
	}
	if _, err := AppendZerocopyRanges(nil, oob[:10]); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("short: %v", err)
	}
}

func TestZerocopyTracker(t *testing.T) {
	var tr ZerocopyTracker
	for _, r := range []ZerocopyRange{{Lo: 0, Hi: 2}, {Lo: 5, Hi: 5}, {Lo: 3, Hi: 4}, {Lo: 7, Hi: 9}} {
		if err := tr.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	if !tr.Covers(6) || tr.Covers(7) || tr.Completed() != 9 || !tr.IsDone(8) || tr.IsDone(6) {
		t.Fatalf("tracker %+v", tr)
	}
	for _, r := range []ZerocopyRange{{Lo: 2, Hi: 2}, {Lo: 6, Hi: 7}, {Lo: 4, Hi: 3}} {
		if err := tr.Add(r); err == nil {
			t.Errorf("Add(%v) succeeded", r)
		}
	}
	if err := tr.Add(ZerocopyRange{Lo: 6, Hi: 6}); err != nil || !tr.Covers(10) || len(tr.done) != 1 {
		t.Fatalf("merge: %v %+v", err, tr)
	}
}

// FuzzParseDmabufTxCmsg: the parser never panics, and a well-formed devmem
// message in front of any buffer changes nothing but the id.
func FuzzParseDmabufTxCmsg(f *testing.F) {
	f.Add(AppendDmabufTxCmsg(nil, 7))
	f.Add(append(unix.UnixRights(1), AppendDmabufTxCmsg(nil, 9)...))
	f.Add([]byte{1, 2, 3})
	f.Add([]byte("00000000"))
	f.Fuzz(func(t *testing.T, oob []byte) {
		id, found, err := ParseDmabufTxCmsg(oob)
		id2, found2, err2 := ParseDmabufTxCmsg(append(AppendDmabufTxCmsg(nil, 0xabc), oob...))
		if !errors.Is(err2, err) || (err == nil) != (err2 == nil) {
			t.Fatalf("errors differ: %v vs %v", err, err2)
		}
		if err != nil {
			return
		}
		if !found2 || (found && id2 != id) || (!found && id2 != 0xabc) {
			t.Fatalf("prefixed: %d %v, alone: %d %v", id2, found2, id, found)
		}
	})
}

// FuzzAppendZerocopyRanges: the parser never panics and what it returns
// re-encodes to the same ranges.
func FuzzAppendZerocopyRanges(f *testing.F) {
	oob := make([]byte, CmsgSpaceZerocopy)
	PutZerocopyCmsg(oob, ZerocopyRange{Lo: 1, Hi: 4})
	f.Add(oob)
	oob6 := make([]byte, CmsgSpaceZerocopy6)
	PutZerocopyCmsg6(oob6, ZerocopyRange{Lo: 5, Hi: 8, Copied: true})
	f.Add(oob6)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, oob []byte) {
		rs, err := AppendZerocopyRanges(nil, oob)
		if err != nil {
			return
		}
		buf := make([]byte, len(rs)*CmsgSpaceZerocopy)
		off := 0
		for _, r := range rs {
			n, _ := PutZerocopyCmsg(buf[off:], r)
			off += n
		}
		again, err := AppendZerocopyRanges(nil, buf)
		if err != nil || len(again) != len(rs) {
			t.Fatalf("re-parse: %v %v", again, err)
		}
		for i := range rs {
			if again[i] != rs[i] {
				t.Fatalf("range %d: %v != %v", i, again[i], rs[i])
			}
		}
	})
}

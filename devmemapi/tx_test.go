package devmemapi

import (
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

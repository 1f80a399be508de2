package devmemapi

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// cmsg builds one control message the way unix.UnixRights does: a
// unix.Cmsghdr at the start of a unix.CmsgSpace buffer.
func cmsg(level, typ int32, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level = level
	h.Type = typ
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

func marshal(c DmabufCmsg) []byte {
	b := make([]byte, SizeofDmabufCmsg)
	c.Marshal(b)
	return b
}

var (
	fragA = DmabufCmsg{FragOffset: 4096 * 3, FragSize: 1448, FragToken: 1, DmabufID: 7}
	fragB = DmabufCmsg{FragOffset: 4096*3 + 1448, FragSize: 2648, FragToken: 2, DmabufID: 7}
	fragC = DmabufCmsg{FragOffset: 1 << 40, FragSize: 4096, FragToken: 1<<31 - 1, DmabufID: 1<<32 - 1, Flags: 0}
	lin   = DmabufCmsg{FragSize: 100}
)

func TestPutDmabufCmsgParsesWithXSys(t *testing.T) {
	frags := []Frag{{DmabufCmsg: fragA}, {DmabufCmsg: fragB}, {DmabufCmsg: lin, Linear: true}, {DmabufCmsg: fragC}}
	oob := make([]byte, len(frags)*CmsgSpaceDmabuf)
	off := 0
	for _, f := range frags {
		typ := int32(SCM_DEVMEM_DMABUF)
		if f.Linear {
			typ = SCM_DEVMEM_LINEAR
		}
		var ok bool
		off, ok = PutDmabufCmsg(oob, off, typ, &f.DmabufCmsg)
		if !ok {
			t.Fatalf("PutDmabufCmsg at %d refused with %d bytes", off, len(oob))
		}
	}
	if off != len(oob) {
		t.Fatalf("end offset %d, want %d", off, len(oob))
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != len(frags) {
		t.Fatalf("%d messages, want %d", len(msgs), len(frags))
	}
	for i, m := range msgs {
		wantType := int32(SCM_DEVMEM_DMABUF)
		if frags[i].Linear {
			wantType = SCM_DEVMEM_LINEAR
		}
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != wantType || m.Header.Len != uint64(unix.CmsgLen(SizeofDmabufCmsg)) {
			t.Errorf("message %d: header %+v, want level SOL_SOCKET type %d len %d", i, m.Header, wantType, unix.CmsgLen(SizeofDmabufCmsg))
		}
		if len(m.Data) != SizeofDmabufCmsg || !bytes.Equal(m.Data, marshal(frags[i].DmabufCmsg)) {
			t.Errorf("message %d: data %x, want %x", i, m.Data, marshal(frags[i].DmabufCmsg))
		}
	}
	// And our own parser reads back what it wrote.
	got, err := AppendFrags(nil, oob)
	if err != nil || !reflect.DeepEqual(got, frags) {
		t.Fatalf("AppendFrags = %+v, %v; want %+v", got, err, frags)
	}
}

func TestPutDmabufCmsgRoom(t *testing.T) {
	var c DmabufCmsg
	cases := []struct {
		len, off int
		ok       bool
	}{
		{CmsgSpaceDmabuf, 0, true},
		{CmsgSpaceDmabuf - 1, 0, false},
		{0, 0, false},
		{2 * CmsgSpaceDmabuf, CmsgSpaceDmabuf, true},
		{2*CmsgSpaceDmabuf - 1, CmsgSpaceDmabuf, false},
		{CmsgSpaceDmabuf, 1, false},
		{CmsgSpaceDmabuf, -1, false},
		{CmsgSpaceDmabuf, CmsgSpaceDmabuf + 8, false}, // off past the end
	}
	for _, tc := range cases {
		oob := bytes.Repeat([]byte{0xaa}, tc.len)
		next, ok := PutDmabufCmsg(oob, tc.off, SCM_DEVMEM_DMABUF, &c)
		if ok != tc.ok {
			t.Errorf("PutDmabufCmsg(len %d, off %d) ok = %v, want %v", tc.len, tc.off, ok, tc.ok)
		}
		if !ok {
			// put_cmsg_notrunc: nothing written, offset unchanged.
			if next != tc.off || !bytes.Equal(oob, bytes.Repeat([]byte{0xaa}, tc.len)) {
				t.Errorf("refused PutDmabufCmsg(len %d, off %d) wrote or moved: next %d", tc.len, tc.off, next)
			}
		} else if next != tc.off+CmsgSpaceDmabuf {
			t.Errorf("next = %d, want %d", next, tc.off+CmsgSpaceDmabuf)
		}
	}
}

func TestAppendFragsHandBuilt(t *testing.T) {
	join := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	dmabuf := func(c DmabufCmsg) []byte { return cmsg(unix.SOL_SOCKET, SCM_DEVMEM_DMABUF, marshal(c)) }
	linear := func(c DmabufCmsg) []byte { return cmsg(unix.SOL_SOCKET, SCM_DEVMEM_LINEAR, marshal(c)) }
	ts := make([]byte, 16) // struct timeval-sized payload
	cases := []struct {
		name string
		oob  []byte
		want []Frag
		err  error
	}{
		{name: "empty", oob: nil, want: nil},
		{name: "one", oob: dmabuf(fragA), want: []Frag{{DmabufCmsg: fragA}}},
		{name: "several", oob: join(dmabuf(fragA), dmabuf(fragB), dmabuf(fragC)),
			want: []Frag{{DmabufCmsg: fragA}, {DmabufCmsg: fragB}, {DmabufCmsg: fragC}}},
		{name: "linear", oob: linear(lin), want: []Frag{{DmabufCmsg: lin, Linear: true}}},
		{name: "foreign skipped", oob: join(
			unix.UnixRights(3, 4, 5), // SOL_SOCKET/SCM_RIGHTS, 12 bytes of data, padded
			dmabuf(fragA),
			cmsg(unix.SOL_SOCKET, unix.SCM_TIMESTAMP, ts),
			cmsg(unix.IPPROTO_IP, SCM_DEVMEM_DMABUF, marshal(fragC)), // right type, wrong level
			cmsg(unix.IPPROTO_IPV6, unix.IPV6_HOPLIMIT, []byte{64, 0, 0, 0}),
			dmabuf(fragB),
			cmsg(unix.SOL_SOCKET, SO_DEVMEM_DONTNEED, marshal(fragC)), // not a cmsg type
		), want: []Frag{{DmabufCmsg: fragA}, {DmabufCmsg: fragB}}},
		{name: "empty foreign payload", oob: join(cmsg(unix.SOL_SOCKET, unix.SCM_RIGHTS, nil), dmabuf(fragA)),
			want: []Frag{{DmabufCmsg: fragA}}},
		{name: "unpadded last message", oob: unix.UnixRights(3)[:unix.CmsgLen(4)], want: nil},

		{name: "truncated header", oob: dmabuf(fragA)[:15], err: unix.EINVAL},
		{name: "trailing partial header", oob: join(dmabuf(fragA), make([]byte, 8)), want: []Frag{{DmabufCmsg: fragA}}, err: unix.EINVAL},
		{name: "truncated data", oob: dmabuf(fragA)[:unix.CmsgLen(SizeofDmabufCmsg)-1], err: unix.EINVAL},
		{name: "len below header", oob: withLen(dmabuf(fragA), 15), err: unix.EINVAL},
		{name: "len zero", oob: withLen(dmabuf(fragA), 0), err: unix.EINVAL},
		{name: "len past end", oob: withLen(dmabuf(fragA), uint64(CmsgSpaceDmabuf+1)), err: unix.EINVAL},
		{name: "len huge", oob: withLen(dmabuf(fragA), 1<<63), err: unix.EINVAL},
		{name: "short dmabuf payload", oob: cmsg(unix.SOL_SOCKET, SCM_DEVMEM_DMABUF, make([]byte, 20)), err: unix.EINVAL},
		{name: "short linear payload", oob: cmsg(unix.SOL_SOCKET, SCM_DEVMEM_LINEAR, make([]byte, 4)), err: unix.EINVAL},
		{name: "good then malformed", oob: join(dmabuf(fragA), withLen(dmabuf(fragB), 7)), want: []Frag{{DmabufCmsg: fragA}}, err: unix.EINVAL},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := AppendFrags(nil, c.oob)
			if c.err == nil && err != nil || c.err != nil && !errors.Is(err, c.err) {
				t.Fatalf("AppendFrags error = %v, want %v", err, c.err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("AppendFrags = %+v, want %+v", got, c.want)
			}
			// Where x/sys parses the buffer, both parsers see the same
			// messages (x/sys ignores a trailing partial header).
			if c.err != nil {
				return
			}
			msgs, err := unix.ParseSocketControlMessage(c.oob)
			if err != nil {
				t.Fatalf("x/sys: %v", err)
			}
			var fromXSys []Frag
			for _, m := range msgs {
				if m.Header.Level == unix.SOL_SOCKET && (m.Header.Type == SCM_DEVMEM_DMABUF || m.Header.Type == SCM_DEVMEM_LINEAR) {
					var f Frag
					if err := f.Unmarshal(m.Data); err != nil {
						t.Fatal(err)
					}
					f.Linear = m.Header.Type == SCM_DEVMEM_LINEAR
					fromXSys = append(fromXSys, f)
				}
			}
			if !reflect.DeepEqual(fromXSys, c.want) {
				t.Fatalf("x/sys sees %+v, AppendFrags %+v", fromXSys, got)
			}
		})
	}
}

// withLen overwrites the cmsg_len of the message at the start of b.
func withLen(b []byte, l uint64) []byte {
	binary.NativeEndian.PutUint64(b, l)
	return b
}

func TestAppendFragsAppends(t *testing.T) {
	oob := cmsg(unix.SOL_SOCKET, SCM_DEVMEM_DMABUF, marshal(fragB))
	dst := make([]Frag, 1, 4)
	dst[0] = Frag{DmabufCmsg: fragA}
	got, err := AppendFrags(dst, oob)
	if err != nil || len(got) != 2 || got[0].DmabufCmsg != fragA || got[1].DmabufCmsg != fragB {
		t.Fatalf("AppendFrags = %+v, %v", got, err)
	}
	if &got[0] != &dst[0] {
		t.Fatal("AppendFrags reallocated although dst had room")
	}
	if a := testing.AllocsPerRun(100, func() { got, _ = AppendFrags(got[:0], oob) }); a != 0 {
		t.Fatalf("AppendFrags allocates %v times with room in dst", a)
	}
}

func TestCheckDontNeedLen(t *testing.T) {
	cases := []struct {
		optlen int
		ok     bool
	}{
		{0, false}, // sk_setsockopt: optlen < sizeof(int)
		{4, false},
		{8, true},
		{16, true},
		{1024, true}, // 128 tokens
		{1032, false},
		{7, false},
		{9, false},
		{1023, false},
		{-8, false},
		{1 << 40, false},
	}
	for _, c := range cases {
		err := CheckDontNeedLen(c.optlen)
		if c.ok != (err == nil) || (err != nil && !errors.Is(err, unix.EINVAL)) {
			t.Errorf("CheckDontNeedLen(%d) = %v, want ok %v", c.optlen, err, c.ok)
		}
		if c.optlen < 0 || c.optlen > 4096 {
			continue
		}
		toks, err := ParseTokens(nil, make([]byte, c.optlen))
		if c.ok != (err == nil) || (err != nil && !errors.Is(err, unix.EINVAL)) {
			t.Errorf("ParseTokens(%d bytes) = %v, want ok %v", c.optlen, err, c.ok)
		}
		if c.ok && len(toks) != c.optlen/SizeofDmabufToken {
			t.Errorf("ParseTokens(%d bytes): %d tokens", c.optlen, len(toks))
		}
	}
}

func TestParseTokensRoundTrip(t *testing.T) {
	cases := [][]DmabufToken{
		nil,
		{{1, 1}},
		{{0, 0}, {1<<32 - 1, 1<<32 - 1}, {7, 3}},
		make([]DmabufToken, MaxDontNeedTokens),
	}
	for i := range cases[3] {
		cases[3][i] = DmabufToken{TokenStart: uint32(i + 1), TokenCount: 1}
	}
	for _, toks := range cases {
		opt := AppendTokens(nil, toks)
		if len(opt) != len(toks)*SizeofDmabufToken {
			t.Fatalf("AppendTokens: %d bytes for %d tokens", len(opt), len(toks))
		}
		got, err := ParseTokens(nil, opt)
		if len(toks) == 0 {
			if !errors.Is(err, unix.EINVAL) {
				t.Fatalf("ParseTokens of an empty array: %v, want EINVAL", err)
			}
			continue
		}
		if err != nil || len(got) != len(toks) || !reflect.DeepEqual(got, toks) {
			t.Fatalf("ParseTokens(AppendTokens(%v)) = %v, %v", toks, got, err)
		}
		// Appends to dst.
		got, err = ParseTokens([]DmabufToken{{9, 9}}, opt)
		if err != nil || len(got) != len(toks)+1 || got[0] != (DmabufToken{9, 9}) {
			t.Fatalf("ParseTokens with dst = %v, %v", got, err)
		}
	}
	// 129 tokens: EINVAL, dst untouched.
	opt := AppendTokens(nil, make([]DmabufToken, MaxDontNeedTokens+1))
	dst := []DmabufToken{{5, 5}}
	got, err := ParseTokens(dst, opt)
	if !errors.Is(err, unix.EINVAL) || len(got) != 1 {
		t.Fatalf("ParseTokens(129 tokens) = %d tokens, %v", len(got), err)
	}
}

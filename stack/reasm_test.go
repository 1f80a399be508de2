package stack

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"

	"github.com/xdevmem/xdevmem/devmemapi"
)

// feed splits each fragment and adds it to r; it returns the segment the
// last one completed (nil if none) and the fragments dropped.
func feed(t *testing.T, r *reassembler, now time.Time, frags ...[]byte) ([]byte, uint64) {
	t.Helper()
	var seg []byte
	var dropped uint64
	for _, f := range frags {
		var sp split
		if v := splitFrame(f, &sp, true); v != verdictFragment {
			t.Fatalf("fragment splits as %v", v)
		}
		s, d := r.add(f, nil, &sp, now)
		dropped += d
		if s != nil {
			if seg != nil {
				t.Fatal("two segments from one datagram")
			}
			seg = s
		}
	}
	return seg, dropped
}

// sameSegment checks that seg is a well-formed, unfragmented TCP segment
// carrying what orig carries.
func sameSegment(t *testing.T, seg, orig []byte) {
	t.Helper()
	var a, b split
	if v := splitFrame(seg, &a, true); v != verdictTCP {
		t.Fatalf("reassembled segment splits as %v", v)
	}
	if v := splitFrame(orig, &b, true); v != verdictTCP {
		t.Fatalf("original splits as %v", v)
	}
	if a != b || !bytes.Equal(seg[a.PayloadOff:a.FrameLen], orig[b.PayloadOff:b.FrameLen]) {
		t.Fatalf("reassembled %+v differs from the original %+v", a, b)
	}
}

// TestReassembleOrders: every arrival order, with duplicates, gives back the
// original segment, for IPv4 (with IP options) and IPv6.
func TestReassembleOrders(t *testing.T) {
	payload := make([]byte, 3000)
	for i := range payload {
		payload[i] = byte(i*13 + 1)
	}
	v4 := buildFrame([]byte{1, 1, 1, 0}, []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}, payload, 4242, tcpFlagAck)
	v6 := buildFrame6(ipProtoTCP, nil, payload, 4242)
	now := time.Unix(1000, 0)
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		name  string
		orig  []byte
		frags [][]byte
	}{
		{"ipv4 two", v4, fragment4(v4, 1, 1480)},
		{"ipv4 many", v4, fragment4(v4, 2, 8, 16, 504, 1000, 8)},
		{"ipv6 two", v6, fragment6(v6, 3, 1448)},
		{"ipv6 many", v6, fragment6(v6, 4, 512, 8, 1024)},
		{"ipv6 atomic", v6, fragment6(v6, 5)},
	} {
		for round := 0; round < 20; round++ {
			order := append([][]byte(nil), tc.frags...)
			if round > 0 && len(order) > 1 {
				rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
				order = append(order, order[rng.IntN(len(order))]) // a duplicate
				rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
			}
			var r reassembler
			var seg []byte
			for _, f := range order {
				s, dropped := feed(t, &r, now, f)
				if dropped != 0 {
					t.Fatalf("%s round %d: %d dropped", tc.name, round, dropped)
				}
				if s != nil {
					if seg != nil {
						t.Fatalf("%s round %d: completed twice", tc.name, round)
					}
					seg = s
					if r.pending() != 0 {
						t.Fatalf("%s round %d: datagram still pending after completion", tc.name, round)
					}
				}
			}
			if seg == nil {
				t.Fatalf("%s round %d: not reassembled", tc.name, round)
			}
			sameSegment(t, seg, tc.orig)
			if r.bytes < 0 {
				t.Fatalf("byte count %d", r.bytes)
			}
		}
	}
}

// TestReassembleDiscards: overlaps, inconsistent lengths, timeouts and the
// datagram limit discard what Linux discards, and unrelated datagrams are
// kept apart.
func TestReassembleDiscards(t *testing.T) {
	payload := make([]byte, 200)
	seg := buildFrame(nil, nil, payload, 1, tcpFlagAck) // 220 bytes of IP payload
	now := time.Unix(1000, 0)
	frags := fragment4(seg, 9, 64, 64) // 64 + 64 + 92

	// A partial overlap discards the datagram: the retransmitted whole
	// then reassembles afresh.
	var r reassembler
	overlap := fragment4(seg, 9, 72)[0] // [0, 72) overlaps [64, 128)
	if s, d := feed(t, &r, now, frags[1], overlap); s != nil || d != 2 {
		t.Fatalf("overlap: segment %v, dropped %d; want nil, 2", s != nil, d)
	}
	if r.pending() != 0 || r.bytes != 0 {
		t.Fatalf("overlap left %d datagrams, %d bytes", r.pending(), r.bytes)
	}
	if s, d := feed(t, &r, now, frags...); s == nil || d != 0 {
		t.Fatalf("after the overlap: segment %v, dropped %d", s != nil, d)
	}

	// A last fragment that disagrees with the length already known.
	short := fragment4(buildFrame(nil, nil, payload[:150], 1, tcpFlagAck), 9, 64, 64)[2]
	if s, d := feed(t, &r, now, frags[2], short); s != nil || d != 2 {
		t.Fatalf("two lengths: segment %v, dropped %d", s != nil, d)
	}
	// A fragment past the end the last one set.
	if s, d := feed(t, &r, now, short, frags[2]); s != nil || d != 2 {
		t.Fatalf("past the end: segment %v, dropped %d", s != nil, d)
	}

	// Different identifications and addresses do not mix.
	other := fragment4(seg, 10, 64, 64)
	if s, _ := feed(t, &r, now, frags[0], other[1], frags[2], other[0]); s != nil {
		t.Fatal("fragments of two datagrams reassembled")
	}
	if s, _ := feed(t, &r, now, frags[1]); s == nil {
		t.Fatal("first datagram not completed")
	}
	if s, _ := feed(t, &r, now, other[2]); s == nil {
		t.Fatal("second datagram not completed")
	}

	// Timeout: an incomplete datagram is dropped once 30 s passed.
	if s, _ := feed(t, &r, now, frags[0]); s != nil {
		t.Fatal("one fragment completed a datagram")
	}
	later := now.Add(reasmTimeout + time.Second)
	if s, d := feed(t, &r, later, frags[1], frags[2]); s != nil || d != 1 {
		t.Fatalf("after the timeout: segment %v, dropped %d; want nil, 1", s != nil, d)
	}
	if s, _ := feed(t, &r, later, frags[0]); s == nil {
		t.Fatal("fresh datagram after the timeout not reassembled")
	}

	// The datagram limit: the oldest gives way.
	r = reassembler{}
	for i := 0; i < reasmMaxDatagrams+5; i++ {
		f := fragment4(seg, uint16(100+i), 64)[0]
		if _, d := feed(t, &r, now.Add(time.Duration(i)*time.Millisecond), f); (i < reasmMaxDatagrams) != (d == 0) {
			t.Fatalf("datagram %d: dropped %d", i, d)
		}
	}
	if r.pending() != reasmMaxDatagrams {
		t.Fatalf("%d datagrams pending, want %d", r.pending(), reasmMaxDatagrams)
	}
}

// TestReassembleByteLimit: payload held waiting never passes reasmMaxBytes.
func TestReassembleByteLimit(t *testing.T) {
	var r reassembler
	now := time.Unix(1000, 0)
	seg := buildFrame(nil, nil, make([]byte, 60000), 1, tcpFlagAck)
	var dropped uint64
	for i := 0; i < 2*reasmMaxBytes/60000; i++ {
		// Only the last fragment: each datagram holds its whole length.
		fs := fragment4(seg, uint16(i), 1480)
		_, d := feed(t, &r, now.Add(time.Duration(i)), fs[len(fs)-1])
		dropped += d
		if r.bytes > reasmMaxBytes {
			t.Fatalf("%d bytes held", r.bytes)
		}
	}
	if dropped == 0 {
		t.Fatal("nothing dropped past the limit")
	}
}

// TestReassembleTooLong: an IPv4 datagram whose header and payload pass
// 64 KiB is dropped rather than rebuilt with a wrapped length. Each
// fragment passes the split's check with its own header: the first carries
// 40 bytes of options, the last none.
func TestReassembleTooLong(t *testing.T) {
	var r reassembler
	now := time.Unix(1000, 0)
	first := rawFrag4(make([]byte, 40), 3, 0, true, make([]byte, 8))
	last := rawFrag4(nil, 3, 8, false, make([]byte, 0xffff-20-8))
	if s, d := feed(t, &r, now, last, first); s != nil || d != 2 {
		t.Fatalf("a datagram past 64 KiB: rebuilt %v, dropped %d; want dropped 2", s != nil, d)
	}
	if r.pending() != 0 || r.bytes != 0 {
		t.Fatalf("left %d datagrams, %d bytes", r.pending(), r.bytes)
	}
}

// rawFrag4 builds one IPv4 fragment of a TCP datagram from the peer to the
// stack: IP options opts, identification id, data at offset off.
func rawFrag4(opts []byte, id uint16, off int, more bool, data []byte) []byte {
	ihl := 20 + len(opts)
	f := make([]byte, 14+ihl+len(data))
	binary.BigEndian.PutUint16(f[12:], etherTypeIPv4)
	ip := f[14:]
	ip[0] = 0x40 | byte(ihl/4)
	binary.BigEndian.PutUint16(ip[2:], uint16(ihl+len(data)))
	binary.BigEndian.PutUint16(ip[4:], id)
	fo := uint16(off / 8)
	if more {
		fo |= 0x2000
	}
	binary.BigEndian.PutUint16(ip[6:], fo)
	ip[8], ip[9] = 64, ipProtoTCP
	copy(ip[12:], []byte{10, 0, 0, 1})
	copy(ip[16:], []byte{10, 0, 0, 2})
	copy(ip[20:], opts)
	binary.BigEndian.PutUint16(ip[10:], ^checksum.Checksum(ip[:ihl], 0))
	copy(ip[ihl:], data)
	return f
}

// TestInprocFragments: a stream in which some segments arrive in IPv4
// fragments — out of order, one segment larger than a UMEM frame — is
// received exactly, in order; the reassembled segments' payload arrives as
// ordinary bytes (a readable skb in the kernel: no devmem control message),
// the rest as dmabuf fragments, and every frame comes back.
func TestInprocFragments(t *testing.T) {
	ip := newInproc(t, Config{})
	ln := ip.bindListen(t)
	c, seq := ip.connect(ln, 40003, 7000)
	var want []byte
	var linear, fragments int
	for i := 0; i < 30; i++ {
		n := 1448
		if i == 10 {
			n = 6000 // reassembled into two UMEM frames
		}
		payload := make([]byte, n)
		for j := range payload {
			payload[j] = byte(i*31 + j*7)
		}
		seg := segment(40003, 5201, seq+uint32(len(want)), 1, tcpFlagAck, nil, payload)
		want = append(want, payload...)
		if i%3 != 1 {
			ip.inject(seg)
			continue
		}
		frags := fragment4(seg, uint16(i), 512, 504, 1200)
		slices.Reverse(frags) // the last fragment first
		ip.inject(frags...)
		linear += n
		fragments += len(frags)
	}
	var got []byte
	p := make([]byte, 1<<20)
	oob := make([]byte, 256*devmemapi.CmsgSpaceDmabuf)
	c.SetReadDeadline(time.Now().Add(10 * time.Second)) // fragments dropped: a timeout, not a hang
	recvAll(t, c, len(want), p, oob, nil, nil, func(b []byte) { got = append(got, b...) })
	if !bytes.Equal(got, want) {
		t.Fatalf("stream differs (%d vs %d bytes)", len(got), len(want))
	}
	st := ip.s.Stats()
	if st.IPFragments != uint64(fragments) || st.IPReassembled != 10 || st.IPFragmentDrops != 0 {
		t.Errorf("fragments %d reassembled %d drops %d; want %d, 10, 0", st.IPFragments, st.IPReassembled, st.IPFragmentDrops, fragments)
	}
	if st.PlainBytes != uint64(linear) || st.LinearBytes != 0 || st.DmabufBytes != uint64(len(want)-linear) || st.Unmapped != 0 || st.DmabufBytesCopied != 0 {
		t.Errorf("plain %d linear %d dmabuf %d unmapped %d copied %d; want plain %d, dmabuf %d", st.PlainBytes, st.LinearBytes, st.DmabufBytes, st.Unmapped, st.DmabufBytesCopied, linear, len(want)-linear)
	}
	c.Close()
	// Every frame is back: free, or the device's (fill ring, TX).
	if a := ip.s.region.Snapshot(); a.Free+a.Posted+a.TX != a.Frames {
		t.Fatalf("after close: %v", a)
	}
}

// FuzzReassemble feeds fragments of one segment at fuzzed offsets, lengths
// and identifications, with time passing: the reassembler never panics,
// its byte count matches what it holds, and whatever it completes is a
// whole IPv4 packet carrying the original's bytes at their offsets.
func FuzzReassemble(f *testing.F) {
	f.Add([]byte{0, 8, 1, 8, 8, 1, 16, 12, 0})
	f.Add([]byte{0, 63, 1, 8, 8, 0, 4, 20, 3})
	f.Add([]byte{3, 8, 0, 0, 24, 1, 0, 24, 5})
	seg := buildFrame(nil, nil, make([]byte, 200), 1, tcpFlagAck)
	for i := range seg[14+40:] {
		seg[14+40+i] = byte(i * 7)
	}
	data := seg[14+20:]
	f.Fuzz(func(t *testing.T, ops []byte) {
		var r reassembler
		now := time.Unix(1000, 0)
		for ; len(ops) >= 3; ops = ops[3:] {
			off := int(ops[0]) % 28 * 8
			n := int(ops[1])%64 + 1
			more := ops[2]&1 != 0
			if more {
				n = (n + 7) &^ 7
			} else if off == 0 {
				continue // a whole packet, not a fragment
			}
			id := uint16(ops[2] >> 1 & 1)
			now = now.Add(time.Duration(ops[2]>>2) * time.Second)
			frag := make([]byte, n)
			if off < len(data) {
				copy(frag, data[off:])
			}
			fr := rawFrag4(nil, id, off, more, frag)
			var sp split
			if splitFrame(fr, &sp, true) != verdictFragment {
				t.Fatalf("fragment at %d+%d does not split as one", off, n)
			}
			s, _ := r.add(fr, nil, &sp, now)
			held := 0
			for _, d := range r.m {
				held += len(d.data)
			}
			if held != r.bytes || r.bytes > reasmMaxBytes {
				t.Fatalf("byte count %d, held %d", r.bytes, held)
			}
			if s == nil {
				continue
			}
			var out split
			v := splitFrame(s, &out, false)
			total := int(binary.BigEndian.Uint16(s[14+2:]))
			if v != verdictTCP && v != verdictMalformed || len(s) != 14+total || binary.BigEndian.Uint16(s[14+6:]) != 0 {
				t.Fatalf("reassembled packet of %d bytes: verdict %v, total length %d", len(s), v, total)
			}
		}
	})
}

// TestReassembleMultiBuffer: a fragment that arrived in several buffers
// (XDP multi-buffer) contributes the same bytes as one in a single buffer.
func TestReassembleMultiBuffer(t *testing.T) {
	payload := make([]byte, 9000)
	for i := range payload {
		payload[i] = byte(i*5 + 1)
	}
	seg := buildFrame(nil, nil, payload, 9, tcpFlagAck)
	frags := fragment4(seg, 4, 4000)
	for _, cuts := range [][]int{{100}, {14 + 20 + 1, 2000, 4000}} {
		var r reassembler
		now := time.Unix(1000, 0)
		var got []byte
		for _, f := range frags {
			var bufs [][]byte
			prev := 0
			for _, c := range cuts {
				if c < len(f) {
					bufs = append(bufs, f[prev:c])
					prev = c
				}
			}
			bufs = append(bufs, f[prev:])
			var sp split
			if v := splitFrames(bufs[0], bufs[1:], &sp, true); v != verdictFragment {
				t.Fatalf("cuts %v: %v", cuts, v)
			}
			if s, _ := r.add(bufs[0], bufs[1:], &sp, now); s != nil {
				got = s
			}
		}
		if got == nil {
			t.Fatalf("cuts %v: not reassembled", cuts)
		}
		sameSegment(t, got, seg)
	}
}

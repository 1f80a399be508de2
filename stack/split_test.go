package stack

import (
	"encoding/binary"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// buildFrame makes an Ethernet/IPv4/TCP frame with valid checksums.
func buildFrame(ipOpts, tcpOpts, payload []byte, seq uint32, flags uint8) []byte {
	ihl := 20 + len(ipOpts)
	doff := 20 + len(tcpOpts)
	b := make([]byte, 14+ihl+doff+len(payload))
	copy(b[0:6], []byte{2, 0, 0, 0, 0, 2})
	copy(b[6:12], []byte{2, 0, 0, 0, 0, 1})
	binary.BigEndian.PutUint16(b[12:], etherTypeIPv4)
	ip := b[14:]
	ip[0] = 0x40 | byte(ihl/4)
	binary.BigEndian.PutUint16(ip[2:], uint16(ihl+doff+len(payload)))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	ip[8] = 64
	ip[9] = ipProtoTCP
	copy(ip[12:], []byte{10, 0, 0, 1})
	copy(ip[16:], []byte{10, 0, 0, 2})
	copy(ip[20:], ipOpts)
	binary.BigEndian.PutUint16(ip[10:], ^checksum.Checksum(ip[:ihl], 0))
	tcp := ip[ihl:]
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 5201)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	tcp[12] = byte(doff/4) << 4
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	copy(tcp[20:], tcpOpts)
	copy(tcp[doff:], payload)
	var ph [12]byte
	copy(ph[:8], ip[12:20])
	ph[9] = ipProtoTCP
	binary.BigEndian.PutUint16(ph[10:], uint16(doff+len(payload)))
	binary.BigEndian.PutUint16(tcp[16:], ^checksum.Checksum(tcp[:doff+len(payload)], checksum.Checksum(ph[:], 0)))
	return b
}

func TestSplitFrame(t *testing.T) {
	payload := []byte("hello, devmem")
	ts := []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2} // NOP NOP timestamp
	ipopt := []byte{1, 1, 1, 0}                       // NOPs + EOL
	good := buildFrame(nil, ts, payload, 1000, tcpFlagAck)
	withOpts := buildFrame(ipopt, ts, payload, 7, tcpFlagAck|0x08)
	padded := append(buildFrame(nil, nil, []byte{1}, 5, tcpFlagAck), make([]byte, 20)...)

	tests := []struct {
		name    string
		frame   []byte
		mutate  func(b []byte)
		want    verdict
		payload int
		off     int
	}{
		{"plain", good, nil, verdictTCP, len(payload), 14 + 20 + 32},
		{"ip and tcp options", withOpts, nil, verdictTCP, len(payload), 14 + 24 + 32},
		{"ethernet padding excluded", padded, nil, verdictTCP, 1, 14 + 20 + 20},
		{"bad tcp checksum", good, func(b []byte) { b[len(b)-1] ^= 0xff }, verdictBadTCPChecksum, 0, 0},
		{"bad ip checksum", good, func(b []byte) { b[14+8]-- }, verdictBadIPChecksum, 0, 0},
		{"truncated ethernet", good[:10], nil, verdictMalformed, 0, 0},
		{"truncated ip", good[:20], nil, verdictMalformed, 0, 0},
		{"total length past frame", good, func(b []byte) { binary.BigEndian.PutUint16(b[16:], 2000) }, verdictMalformed, 0, 0},
		{"ihl too small", good, func(b []byte) { b[14] = 0x44 }, verdictMalformed, 0, 0},
		{"ip version 6 in ipv4 ethertype", good, func(b []byte) { b[14] = 0x65 }, verdictMalformed, 0, 0},
		{"tcp data offset too small", good, func(b []byte) { b[14+20+12] = 0x40 }, verdictMalformed, 0, 0},
		{"tcp data offset past end", good, func(b []byte) { b[14+20+12] = 0xf0 }, verdictMalformed, 0, 0},
		{"arp", good, func(b []byte) { binary.BigEndian.PutUint16(b[12:], etherTypeARP) }, verdictOther, 0, 0},
		{"ipv4 bytes under the ipv6 ethertype", good, func(b []byte) { binary.BigEndian.PutUint16(b[12:], etherTypeIPv6) }, verdictMalformed, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := append([]byte(nil), tt.frame...)
			if tt.mutate != nil {
				tt.mutate(b)
			}
			var s split
			got := splitFrame(b, &s, true)
			if got != tt.want {
				t.Fatalf("verdict %v, want %v", got, tt.want)
			}
			if got == verdictTCP {
				if s.PayloadLen != tt.payload || s.PayloadOff != tt.off {
					t.Fatalf("payload at %d len %d, want %d len %d", s.PayloadOff, s.PayloadLen, tt.off, tt.payload)
				}
				if s.SrcPort != 40000 || s.DstPort != 5201 || s.Src != [16]byte{10: 0xff, 11: 0xff, 12: 10, 15: 1} || s.Dst != [16]byte{10: 0xff, 11: 0xff, 12: 10, 15: 2} {
					t.Fatalf("bad addressing %+v", s)
				}
			}
		})
	}
}

// TestSplitFrameFragment: TCP in IP fragments is recognised as such, with
// where the fragment's data lies and where it belongs; fragments the kernel
// would refuse are malformed.
func TestSplitFrameFragment(t *testing.T) {
	payload := make([]byte, 100)
	seg := buildFrame(nil, nil, payload, 1, tcpFlagAck) // 120 bytes of IP payload
	frags := fragment4(seg, 7, 48, 32)                  // 48 + 32 + 40
	tests := []struct {
		name         string
		frame        []byte
		want         verdict
		off, n, data int
		more         bool
	}{
		{"first", frags[0], verdictFragment, 0, 48, 14 + 20, true},
		{"middle", frags[1], verdictFragment, 48, 32, 14 + 20, true},
		{"last", frags[2], verdictFragment, 80, 40, 14 + 20, false},
		{"ipv6 first", fragment6(buildFrame6(ipProtoTCP, nil, payload, 1), 9, 64)[0], verdictFragment, 0, 64, 14 + 40 + 8, true},
		{"ipv6 last", fragment6(buildFrame6(ipProtoTCP, nil, payload, 1), 9, 64)[1], verdictFragment, 64, 56, 14 + 40 + 8, false},
		{"ipv6 atomic", fragment6(buildFrame6(ipProtoTCP, nil, payload, 1), 9)[0], verdictFragment, 0, 120, 14 + 40 + 8, false},
	}
	for _, tt := range tests {
		var s split
		v := splitFrame(tt.frame, &s, true)
		if v != tt.want || s.FragOff != tt.off || s.PayloadLen != tt.n || s.PayloadOff != tt.data || s.FragMore != tt.more {
			t.Errorf("%s: verdict %v, split %+v; want %v at %d (data at %d, %d bytes, more %v)", tt.name, v, s, tt.want, tt.off, tt.data, tt.n, tt.more)
		}
		if v == verdictFragment && s.FragID != 7 && s.FragID != 9 {
			t.Errorf("%s: id %d", tt.name, s.FragID)
		}
	}
	setFrag := func(f []byte, field uint16, total int) []byte {
		f = append([]byte(nil), f...)
		binary.BigEndian.PutUint16(f[14+6:], field)
		if total > 0 {
			binary.BigEndian.PutUint16(f[14+2:], uint16(total))
			f = f[:14+total]
		}
		f[14+10], f[14+11] = 0, 0
		binary.BigEndian.PutUint16(f[14+10:], ^checksum.Checksum(f[14:34], 0))
		return f
	}
	for _, bad := range []struct {
		name  string
		frame []byte
	}{
		{"not a multiple of 8 with more to come", setFrag(frags[0], 0x2000, 20+47)},
		{"no data", setFrag(frags[0], 0x2000, 20)},
		{"past 64 KiB", setFrag(frags[2], 0x1fff, 0)},
	} {
		var s split
		if v := splitFrame(bad.frame, &s, true); v != verdictMalformed {
			t.Errorf("%s: verdict %v, want malformed", bad.name, v)
		}
	}
	// A fragment's IP header checksum is still checked.
	b := append([]byte(nil), frags[1]...)
	b[14+8]--
	var s split
	if v := splitFrame(b, &s, true); v != verdictBadIPChecksum {
		t.Errorf("bad ip checksum in a fragment: %v", v)
	}
	// Fragments of other protocols go to the stack whole (it reassembles
	// them itself).
	b = append([]byte(nil), frags[0]...)
	b[14+9] = 17
	b[14+10], b[14+11] = 0, 0
	binary.BigEndian.PutUint16(b[14+10:], ^checksum.Checksum(b[14:34], 0))
	if v := splitFrame(b, &s, true); v != verdictOther {
		t.Errorf("udp fragment: %v", v)
	}
	// IPv6 TCP fragments behind another extension header stay unsupported.
	hbh := []byte{ipv6Fragment, 0, 1, 4, 0, 0, 0, 0, ipProtoTCP, 0, 0, 1, 0, 0, 0, 9}
	if v := splitFrame(buildFrame6(ipv6HopByHop, hbh, payload, 1), &s, true); v != verdictUnsupported {
		t.Errorf("fragment header behind hop-by-hop: %v", v)
	}
}

// fragment4 cuts an IPv4 frame's payload into fragments of the given data
// sizes (the last takes the rest), each with the frame's IP header, the
// identification id and a valid header checksum.
func fragment4(frame []byte, id uint16, sizes ...int) [][]byte {
	ihl := int(frame[14]&0x0f) * 4
	hdr := frame[:14+ihl]
	data := frame[14+ihl : 14+int(binary.BigEndian.Uint16(frame[16:]))]
	var out [][]byte
	off := 0
	for i := 0; off < len(data); i++ {
		n := len(data) - off
		if i < len(sizes) && sizes[i] < n {
			n = sizes[i]
		}
		f := append(append([]byte(nil), hdr...), data[off:off+n]...)
		ip := f[14:]
		binary.BigEndian.PutUint16(ip[2:], uint16(ihl+n))
		binary.BigEndian.PutUint16(ip[4:], id)
		fo := uint16(off / 8)
		if off+n < len(data) {
			fo |= 0x2000
		}
		binary.BigEndian.PutUint16(ip[6:], fo)
		ip[10], ip[11] = 0, 0
		binary.BigEndian.PutUint16(ip[10:], ^checksum.Checksum(ip[:ihl], 0))
		out = append(out, f)
		off += n
	}
	return out
}

// fragment6 cuts an IPv6 frame without extension headers into fragments
// of the given data sizes (the last takes the rest), each with a fragment
// header carrying id.
func fragment6(frame []byte, id uint32, sizes ...int) [][]byte {
	hdr := frame[:14+40]
	data := frame[14+40 : 14+40+int(binary.BigEndian.Uint16(frame[14+4:]))]
	var out [][]byte
	off := 0
	for i := 0; off < len(data); i++ {
		n := len(data) - off
		if i < len(sizes) && sizes[i] < n {
			n = sizes[i]
		}
		f := append(append([]byte(nil), hdr...), make([]byte, 8)...)
		f = append(f, data[off:off+n]...)
		ip := f[14:]
		binary.BigEndian.PutUint16(ip[4:], uint16(8+n))
		ip[6] = ipv6Fragment
		fh := ip[40:]
		fh[0] = hdr[14+6]
		fo := uint16(off/8) << 3
		if off+n < len(data) {
			fo |= 1
		}
		binary.BigEndian.PutUint16(fh[2:], fo)
		binary.BigEndian.PutUint32(fh[4:], id)
		out = append(out, f)
		off += n
	}
	return out
}

func TestSplitFrameTrustChecksum(t *testing.T) {
	b := buildFrame(nil, nil, []byte("payload"), 1, tcpFlagAck)
	b[len(b)-1] ^= 1
	var s split
	if v := splitFrame(b, &s, false); v != verdictTCP {
		t.Fatalf("verify off: verdict %v, want tcp", v)
	}
}

func FuzzSplitFrame(f *testing.F) {
	f.Add(buildFrame(nil, nil, []byte("seed"), 1, tcpFlagAck))
	f.Add(buildFrame([]byte{1, 1, 1, 0}, []byte{2, 4, 5, 180}, make([]byte, 1448), 99, tcpFlagAck|tcpFlagFin))
	f.Add(buildFrame(nil, nil, nil, 0, tcpFlagSyn))
	f.Add(buildFrame6(ipProtoTCP, nil, []byte("v6 seed"), 3))
	for _, fr := range fragment4(buildFrame(nil, nil, make([]byte, 100), 5, tcpFlagAck), 7, 48, 32) {
		f.Add(fr)
	}
	for _, fr := range fragment6(buildFrame6(ipProtoTCP, nil, make([]byte, 100), 5), 9, 64) {
		f.Add(fr)
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var s split
		v := splitFrame(b, &s, true)
		if v == verdictFragment {
			// The fragment's data lies inside the frame, after the IP
			// header, and fits a 64 KiB datagram.
			if s.PayloadOff < ethHdrLen+20 || s.PayloadLen <= 0 || s.PayloadOff+s.PayloadLen > len(b) || s.FragOff+s.PayloadLen > 0xffff {
				t.Fatalf("fragment data [%d,+%d) at %d outside frame of %d", s.PayloadOff, s.PayloadLen, s.FragOff, len(b))
			}
			if s.FragMore && s.PayloadLen%8 != 0 {
				t.Fatalf("non-final fragment of %d bytes", s.PayloadLen)
			}
			return
		}
		if v != verdictTCP {
			return
		}
		// Invariants: the payload lies inside the frame, after the headers,
		// and re-verifying the same bytes agrees.
		if s.PayloadOff < ethHdrLen+20+tcpMinHdrLen || s.PayloadLen < 0 || s.PayloadOff+s.PayloadLen > len(b) {
			t.Fatalf("payload [%d,+%d) outside frame of %d", s.PayloadOff, s.PayloadLen, len(b))
		}
		if s.FrameLen != s.PayloadOff+s.PayloadLen {
			t.Fatalf("frame length %d != payload end %d", s.FrameLen, s.PayloadOff+s.PayloadLen)
		}
		var s2 split
		if splitFrame(b[:s.FrameLen], &s2, true) != verdictTCP || s2 != s {
			t.Fatalf("trimmed frame parses differently")
		}
	})
}

func BenchmarkSplitFrame(b *testing.B) {
	for _, size := range []int{0, 64, 1448, 3400} {
		frame := buildFrame(nil, []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}, make([]byte, size), 1, tcpFlagAck)
		for _, verify := range []bool{true, false} {
			name := "payload=" + itoa(size)
			if !verify {
				name += "/trust-checksum"
			}
			b.Run(name, func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(frame)))
				var s split
				for i := 0; i < b.N; i++ {
					if splitFrame(frame, &s, verify) != verdictTCP {
						b.Fatal("not tcp")
					}
				}
			})
		}
	}
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var d []byte
	for ; n > 0; n /= 10 {
		d = append([]byte{byte('0' + n%10)}, d...)
	}
	return string(d)
}

// buildFrame6 makes an Ethernet/IPv6/TCP frame with a valid checksum, with
// optional extension headers (already encoded, first next-header in ext[0]
// position handled by nh).
func buildFrame6(nh byte, ext, payload []byte, seq uint32) []byte {
	b := make([]byte, 14+40+len(ext)+20+len(payload))
	binary.BigEndian.PutUint16(b[12:], etherTypeIPv6)
	ip := b[14:]
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(ext)+20+len(payload)))
	ip[6] = nh
	ip[7] = 64
	src := [16]byte{0xfd, 0, 2, 0x11, 15: 1}
	dst := [16]byte{0xfd, 0, 2, 0x11, 15: 2}
	copy(ip[8:], src[:])
	copy(ip[24:], dst[:])
	copy(ip[40:], ext)
	tcp := ip[40+len(ext):]
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 5201)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	tcp[12] = 5 << 4
	tcp[13] = tcpFlagAck
	copy(tcp[20:], payload)
	var ph [40]byte
	copy(ph[:32], ip[8:40])
	binary.BigEndian.PutUint32(ph[32:], uint32(20+len(payload)))
	ph[39] = ipProtoTCP
	binary.BigEndian.PutUint16(tcp[16:], ^checksum.Checksum(tcp[:20+len(payload)], checksum.Checksum(ph[:], 0)))
	return b
}

func TestSplitFrameIPv6(t *testing.T) {
	payload := []byte("over ipv6")
	b := buildFrame6(ipProtoTCP, nil, payload, 77)
	var s split
	if v := splitFrame(b, &s, true); v != verdictTCP {
		t.Fatalf("verdict %v", v)
	}
	if s.PayloadOff != 14+40+20 || s.PayloadLen != len(payload) || s.Seq != 77 || s.Dst[15] != 2 || s.Src[0] != 0xfd {
		t.Fatalf("split %+v", s)
	}
	b[len(b)-1] ^= 1
	if v := splitFrame(b, &s, true); v != verdictBadTCPChecksum {
		t.Fatalf("corrupted: %v", v)
	}
	// TCP behind a destination-options header is not split.
	ext := []byte{ipProtoTCP, 0, 1, 4, 0, 0, 0, 0}
	if v := splitFrame(buildFrame6(ipv6DestOpts, ext, payload, 1), &s, true); v != verdictUnsupported {
		t.Fatalf("extension header: %v", v)
	}
	// ICMPv6 (neighbour discovery) goes to the stack whole.
	icmp := buildFrame6(58, nil, nil, 0)
	if v := splitFrame(icmp, &s, true); v != verdictOther {
		t.Fatalf("icmpv6: %v", v)
	}
	// Payload length past the frame.
	bad := buildFrame6(ipProtoTCP, nil, payload, 1)
	binary.BigEndian.PutUint16(bad[14+4:], 2000)
	if v := splitFrame(bad, &s, true); v != verdictMalformed {
		t.Fatalf("long payload length: %v", v)
	}
}

// TestSplitFramesMultiBuffer: a jumbo frame cut into several buffers, at odd
// and even points after the headers, splits exactly as the whole frame does,
// and corruption in any buffer is caught.
func TestSplitFramesMultiBuffer(t *testing.T) {
	payload := make([]byte, 8948)
	for i := range payload {
		payload[i] = byte(i*7 + 3)
	}
	for _, frame := range [][]byte{
		buildFrame(nil, []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}, payload, 12345, tcpFlagAck),
		buildFrame6(ipProtoTCP, nil, payload, 999),
	} {
		var whole split
		if v := splitFrame(frame, &whole, true); v != verdictTCP {
			t.Fatalf("whole frame: %v", v)
		}
		for _, cuts := range [][]int{{3840}, {3839, 7679}, {100, 101, 5000}, {whole.PayloadOff, whole.PayloadOff + 1}} {
			var bufs [][]byte
			prev := 0
			for _, c := range cuts {
				bufs = append(bufs, frame[prev:c])
				prev = c
			}
			bufs = append(bufs, frame[prev:])
			var s split
			if v := splitFrames(bufs[0], bufs[1:], &s, true); v != verdictTCP || s != whole {
				t.Fatalf("cuts %v: verdict %v, split %+v, want %+v", cuts, v, s, whole)
			}
			last := bufs[len(bufs)-1]
			last[len(last)-1] ^= 0x10
			if v := splitFrames(bufs[0], bufs[1:], &s, true); v != verdictBadTCPChecksum {
				t.Fatalf("cuts %v: corruption in the last buffer: %v", cuts, v)
			}
			last[len(last)-1] ^= 0x10
		}
		// Headers must be in the first buffer.
		var s split
		if v := splitFrames(frame[:30], [][]byte{frame[30:]}, &s, true); v != verdictMalformed {
			t.Fatalf("headers across buffers: %v", v)
		}
	}
}

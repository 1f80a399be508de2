package stack

import (
	"bytes"
	"encoding/binary"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

func TestGSOSegments(t *testing.T) {
	for _, tc := range []struct {
		tso          bool
		mss, dataLen int
		want         int
	}{
		{false, 1448, 5000, 1}, // not a GSO packet
		{true, 0, 5000, 1},     // no MSS
		{true, 1448, 0, 1},
		{true, 1448, 1448, 1},
		{true, 1448, 1449, 2},
		{true, 1448, 3 * 1448, 3},
		{true, 1448, 65535, 46},
		{true, 1, 7, 7},
	} {
		if got := gsoSegments(tc.tso, tc.mss, tc.dataLen); got != tc.want {
			t.Errorf("gsoSegments(%v, %d, %d) = %d, want %d", tc.tso, tc.mss, tc.dataLen, got, tc.want)
		}
	}
}

func TestTCPHeaders(t *testing.T) {
	v4 := buildFrame(nil, nil, []byte("x"), 1, tcpFlagAck)
	v4opts := buildFrame(make([]byte, 8), make([]byte, 12), nil, 1, tcpFlagAck)
	v6 := buildFrame6(ipProtoTCP, nil, []byte("x"), 1)
	udp := bytes.Clone(v4)
	udp[14+9] = 17
	ihl4 := bytes.Clone(v4)
	ihl4[14] = 0x44
	hop := buildFrame6(0, []byte{ipProtoTCP, 0, 0, 0, 0, 0, 0, 0}, nil, 1)
	arp := bytes.Clone(v4)
	binary.BigEndian.PutUint16(arp[12:], etherTypeARP)
	for _, tc := range []struct {
		name            string
		f               []byte
		ipLen, tcpStart int // tcpStart 0: no TCP headers
	}{
		{"ipv4", v4, 20, 34},
		{"ipv4 with ip and tcp options", v4opts, 28, 42},
		{"ipv6", v6, 40, 54},
		{"ipv4 headers only", v4[:34+20], 20, 34},
		{"tcp header cut short", v4[:34+19], 0, 0},
		{"udp", udp, 0, 0},
		{"ihl 4", ihl4, 0, 0},
		{"ipv6 behind a hop-by-hop header", hop, 0, 0},
		{"arp", arp, 0, 0},
		{"ethernet cut short", v4[:13], 0, 0},
	} {
		ip, tcp := tcpHeaders(tc.f)
		if tc.tcpStart == 0 {
			if ip != nil || tcp != nil {
				t.Errorf("%s: headers found", tc.name)
			}
			continue
		}
		if len(ip) != tc.ipLen || &ip[0] != &tc.f[14] || len(tcp) != len(tc.f)-tc.tcpStart || &tcp[0] != &tc.f[tc.tcpStart] {
			t.Errorf("%s: ip %d bytes, tcp %d bytes", tc.name, len(ip), len(tcp))
		}
	}
}

// TestFinishTCPChecksum: the checksum written over the headers, with the
// payload's sum given apart (as the engine sums it in the dmabuf), is the
// one the whole segment has, for both families and payloads of odd
// length.
func TestFinishTCPChecksum(t *testing.T) {
	for _, n := range []int{0, 1, 3, 1447, 1448, 9001} {
		payload := make([]byte, n)
		for i := range payload {
			payload[i] = byte(i*31 + n)
		}
		for _, f := range [][]byte{
			buildFrame(nil, nil, payload, 7, tcpFlagAck),
			buildFrame(make([]byte, 4), []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}, payload, 7, tcpFlagAck),
			buildFrame6(ipProtoTCP, nil, payload, 7),
		} {
			hl := len(f) - n
			ip, tcp := tcpHeaders(f[:hl])
			want := header.TCP(tcp).Checksum()
			header.TCP(tcp).SetChecksum(0x1234) // whatever was there
			finishTCPChecksum(ip, tcp, n, checksum.Checksum(payload, 0))
			if got := header.TCP(tcp).Checksum(); got != want {
				t.Errorf("%d-byte payload, %d-byte headers: checksum %#04x, want %#04x", n, hl, got, want)
			}
		}
	}
}

// TestCutSegment cuts GSO packets as the engine does — each segment's
// headers cut from a copy of the packet's, its checksum completed over its
// share of the payload — and checks every segment as a receiver would:
// valid IPv4 header and TCP checksums, sequence numbers, lengths, IPv4 ids,
// and FIN/PSH on the last segment only, CWR on the first only.
func TestCutSegment(t *testing.T) {
	const mss = 1448
	payload := make([]byte, 3*mss+100)
	for i := range payload {
		payload[i] = byte(i * 13)
	}
	flags := uint8(tcpFlagAck | tcpFlagFin | header.TCPFlagPsh | header.TCPFlagCwr)
	v4 := buildFrame(make([]byte, 4), []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}, payload, 1000, flags)
	binary.BigEndian.PutUint16(v4[14+4:], 0xfffe) // the id wraps across segments
	v6 := buildFrame6(ipProtoTCP, nil, payload, 1000)
	v6[14+40+13] = flags
	for _, full := range [][]byte{v4, v6} {
		hl := len(full) - len(payload)
		nseg := gsoSegments(true, mss, len(payload))
		if nseg != 4 {
			t.Fatalf("%d segments", nseg)
		}
		var got []byte
		for i := 0; i < nseg; i++ {
			segOff := i * mss
			segLen := min(mss, len(payload)-segOff)
			f := append(bytes.Clone(full[:hl]), payload[segOff:segOff+segLen]...)
			ip, tcp := tcpHeaders(f[:hl])
			cutSegment(ip, tcp, i, nseg, segOff, segLen)
			finishTCPChecksum(ip, tcp, segLen, checksum.Checksum(payload[segOff:segOff+segLen], 0))

			var sp split
			if v := splitFrame(f, &sp, true); v != verdictTCP {
				t.Fatalf("family %d, segment %d: %v", ip[0]>>4, i, v)
			}
			if sp.Seq != 1000+uint32(segOff) || sp.PayloadLen != segLen {
				t.Errorf("segment %d: seq %d, %d bytes", i, sp.Seq, sp.PayloadLen)
			}
			last, first := i == nseg-1, i == 0
			if fin := sp.Flags&tcpFlagFin != 0; fin != last {
				t.Errorf("segment %d: FIN %v", i, fin)
			}
			if psh := sp.Flags&uint8(header.TCPFlagPsh) != 0; psh != last {
				t.Errorf("segment %d: PSH %v", i, psh)
			}
			if cwr := sp.Flags&uint8(header.TCPFlagCwr) != 0; cwr != first {
				t.Errorf("segment %d: CWR %v", i, cwr)
			}
			if sp.Flags&tcpFlagAck == 0 {
				t.Errorf("segment %d: ACK lost", i)
			}
			if ip[0]>>4 == 4 {
				if id := header.IPv4(ip).ID(); id != uint16(0xfffe+i) {
					t.Errorf("segment %d: ip id %#x", i, id)
				}
			}
			got = append(got, f[sp.PayloadOff:sp.PayloadOff+sp.PayloadLen]...)
		}
		if !bytes.Equal(got, payload) {
			t.Errorf("family %d: segments do not join to the payload", full[14]>>4)
		}
	}
}

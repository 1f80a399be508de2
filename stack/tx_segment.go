package stack

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// The pure parts of building a TX frame, separately tested
// (tx_segment_test.go): where the headers are, how TSO cuts a GSO packet
// into segments, and the TCP checksum a NIC's TX offload completes.

// gsoSegments is how many segments TSO cuts dataLen payload bytes into:
// segments of mss bytes, the last one shorter, when the packet is a TCP
// GSO packet (tso) longer than mss; else 1. Segment i starts at payload
// offset i*mss.
func gsoSegments(tso bool, mss, dataLen int) int {
	if tso && mss > 0 && dataLen > mss {
		return (dataLen + mss - 1) / mss
	}
	return 1
}

// cutSegment turns the copied headers of a GSO packet into those of its
// segment i of nseg (segLen payload bytes at offset segOff), as TSO does:
// sequence number advanced, IP length (and IPv4 id and header checksum)
// set, FIN and PSH only on the last segment, CWR only on the first.
func cutSegment(ip, tcp []byte, i, nseg, segOff, segLen int) {
	th := header.TCP(tcp)
	th.SetSequenceNumber(th.SequenceNumber() + uint32(segOff))
	flags := th.Flags()
	if i < nseg-1 {
		flags &^= header.TCPFlagFin | header.TCPFlagPsh
	}
	if i > 0 {
		flags &^= header.TCPFlagCwr
	}
	th.SetFlags(uint8(flags))
	if ip[0]>>4 == 4 {
		h := header.IPv4(ip)
		h.SetTotalLength(uint16(len(ip) + len(tcp) + segLen))
		h.SetID(h.ID() + uint16(i))
		h.SetChecksum(0)
		h.SetChecksum(^h.CalculateChecksum())
		return
	}
	header.IPv6(ip).SetPayloadLength(uint16(len(ip) - header.IPv6MinimumSize + len(tcp) + segLen))
}

// tcpHeaders locates the IP and TCP headers of an Ethernet frame's header
// bytes; tcp is nil for anything but a TCP segment whose headers are all
// there.
func tcpHeaders(f []byte) (ip, tcp []byte) {
	if len(f) < ethHdrLen {
		return nil, nil
	}
	switch binary.BigEndian.Uint16(f[12:]) {
	case etherTypeIPv4:
		ip = f[ethHdrLen:]
		if len(ip) < header.IPv4MinimumSize || ip[9] != ipProtoTCP {
			return nil, nil
		}
		ihl := int(ip[0]&0x0f) * 4
		if ihl < header.IPv4MinimumSize || len(ip) < ihl+header.TCPMinimumSize {
			return nil, nil
		}
		return ip[:ihl], ip[ihl:]
	case etherTypeIPv6:
		ip = f[ethHdrLen:]
		if len(ip) < header.IPv6MinimumSize+header.TCPMinimumSize || ip[6] != ipProtoTCP {
			return nil, nil
		}
		return ip[:header.IPv6MinimumSize], ip[header.IPv6MinimumSize:]
	}
	return nil, nil
}

// finishTCPChecksum writes the TCP checksum: pseudo-header, the TCP header
// (all of tcp) and a payload of dl bytes whose sum is paySum.
func finishTCPChecksum(ip, tcp []byte, dl int, paySum uint16) {
	th := header.TCP(tcp)
	th.SetChecksum(0)
	sum := checksum.Checksum(tcp, tcpPseudoSum(ip, len(tcp)+dl))
	sum = checksum.Combine(sum, paySum)
	th.SetChecksum(^sum)
}

package stack

import (
	"encoding/binary"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// Reassembly limits, the kernel's defaults: a datagram not complete within
// reasmTimeout is discarded (net.ipv4.ipfrag_time), and the fragments
// waiting hold at most reasmMaxBytes (net.ipv4.ipfrag_high_thresh) in at
// most reasmMaxDatagrams datagrams; past either limit the oldest datagram
// makes room.
const (
	reasmTimeout      = 30 * time.Second
	reasmMaxBytes     = 4 << 20
	reasmMaxDatagrams = 256
)

// reasmKey identifies a datagram: RFC 791's (source, destination, protocol,
// identification), the protocol always TCP here; IPv6 has 32-bit ids.
type reasmKey struct {
	src, dst [16]byte
	id       uint32
	v6       bool
}

// span is a received byte range [lo, hi) of a datagram's payload.
type span struct{ lo, hi int }

// datagram is one datagram being reassembled.
type datagram struct {
	hdr     []byte // Ethernet and IP header of the fragment at offset 0 (IPv6: the fixed header only)
	data    []byte // the payload received so far, each byte at its offset
	have    []span // received ranges: sorted, disjoint, adjacent ones merged
	total   int    // payload length; -1 until the last fragment arrived
	frags   int    // fragments taken
	started time.Time
}

// reassembler puts TCP segments that arrived in IP fragments back together,
// as the kernel would before TCP sees them. The fragments' bytes are copied
// (a NIC's header split does not take fragments apart either), so the frames
// they arrived in go back at once; the whole segment then takes the
// ordinary receive path as one frame whose payload is delivered linear.
//
// Like Linux (and RFC 5722 for IPv6), a fragment that overlaps another
// without being a duplicate of it discards the whole datagram, as does a
// fragment inconsistent with the length the last fragment gave.
//
// Safe for concurrent use: fragments of one datagram may arrive on
// different RX queues.
type reassembler struct {
	mu        sync.Mutex
	m         map[reasmKey]*datagram
	bytes     int // payload bytes held, over every datagram
	lastSweep time.Time
}

// add takes one fragment (verdict verdictFragment; the frame is b, then
// more for a multi-buffer one) and returns the whole segment as an
// Ethernet frame once its last missing piece arrived, else nil. dropped is
// how many fragments it discarded (this one or those of a datagram it gave
// up).
func (r *reassembler) add(b []byte, more [][]byte, sp *split, now time.Time) (frame []byte, dropped uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = make(map[reasmKey]*datagram)
	}
	if now.Sub(r.lastSweep) >= time.Second {
		r.lastSweep = now
		for k, d := range r.m {
			if now.Sub(d.started) >= reasmTimeout {
				dropped += r.discard(k, d)
			}
		}
	}
	key := reasmKey{src: sp.Src, dst: sp.Dst, id: sp.FragID, v6: sp.EtherType == etherTypeIPv6}
	lo, hi := sp.FragOff, sp.FragOff+sp.PayloadLen
	d := r.m[key]
	if d == nil {
		for len(r.m) >= reasmMaxDatagrams {
			dropped += r.evictOldest()
		}
		d = &datagram{total: -1, started: now}
		r.m[key] = d
	}
	// Consistency with the length the last fragment set.
	switch {
	case d.total >= 0 && (hi > d.total || (!sp.FragMore && hi != d.total)):
		return nil, dropped + 1 + r.discard(key, d)
	case !sp.FragMore && len(d.have) > 0 && d.have[len(d.have)-1].hi > hi:
		return nil, dropped + 1 + r.discard(key, d)
	}
	// Duplicates are ignored; any other overlap discards the datagram.
	i := 0
	for ; i < len(d.have) && d.have[i].hi <= lo; i++ {
	}
	if i < len(d.have) && d.have[i].lo < hi {
		if d.have[i].lo <= lo && hi <= d.have[i].hi {
			return nil, dropped
		}
		return nil, dropped + 1 + r.discard(key, d)
	}
	if grow := hi - len(d.data); grow > 0 {
		for r.bytes+grow > reasmMaxBytes && len(r.m) > 1 {
			dropped += r.evictOldest()
			if r.m[key] == nil { // it was the oldest
				return nil, dropped + 1
			}
		}
		if r.bytes+grow > reasmMaxBytes {
			return nil, dropped + 1 + r.discard(key, d)
		}
		d.data = append(d.data, make([]byte, grow)...)
		r.bytes += grow
	}
	copyFrom(d.data[lo:hi], b, more, sp.PayloadOff)
	d.have = insertSpan(d.have, i, span{lo, hi})
	d.frags++
	if !sp.FragMore {
		d.total = hi
	}
	if lo == 0 {
		n := sp.PayloadOff
		if key.v6 {
			n = ethHdrLen + ipv6HdrLen
		}
		d.hdr = append(d.hdr[:0], b[:n]...)
	}
	if d.total < 0 || d.hdr == nil || len(d.have) != 1 || d.have[0] != (span{0, d.total}) {
		return nil, dropped
	}
	delete(r.m, key)
	r.bytes -= len(d.data)
	if !key.v6 && len(d.hdr)-ethHdrLen+d.total > 0xffff {
		return nil, dropped + uint64(d.frags)
	}
	return d.frame(key.v6), dropped
}

// frame builds the reassembled segment: the first fragment's headers, made
// those of an unfragmented packet, and the payload.
func (d *datagram) frame(v6 bool) []byte {
	f := make([]byte, len(d.hdr)+d.total)
	copy(f, d.hdr)
	copy(f[len(d.hdr):], d.data[:d.total])
	ip := f[ethHdrLen:]
	if v6 {
		binary.BigEndian.PutUint16(ip[4:], uint16(d.total))
		ip[6] = ipProtoTCP // the fragment header's next header
		return f
	}
	ihl := len(d.hdr) - ethHdrLen
	binary.BigEndian.PutUint16(ip[2:], uint16(ihl+d.total))
	binary.BigEndian.PutUint16(ip[6:], 0) // no MF, offset 0
	ip[10], ip[11] = 0, 0
	binary.BigEndian.PutUint16(ip[10:], ^checksum.Checksum(ip[:ihl], 0))
	return f
}

// discard forgets a datagram and returns how many fragments it held.
func (r *reassembler) discard(k reasmKey, d *datagram) uint64 {
	delete(r.m, k)
	r.bytes -= len(d.data)
	return uint64(d.frags)
}

// evictOldest discards the datagram that started first.
func (r *reassembler) evictOldest() uint64 {
	var ok reasmKey
	var od *datagram
	for k, d := range r.m {
		if od == nil || d.started.Before(od.started) {
			ok, od = k, d
		}
	}
	if od == nil {
		return 0
	}
	return r.discard(ok, od)
}

// pending reports how many datagrams wait for fragments.
func (r *reassembler) pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.m)
}

// insertSpan inserts s at index i of the sorted, disjoint spans, merging it
// with the neighbours it touches.
func insertSpan(have []span, i int, s span) []span {
	if i > 0 && have[i-1].hi == s.lo {
		i--
		s.lo = have[i].lo
		have = append(have[:i], have[i+1:]...)
	}
	if i < len(have) && have[i].lo == s.hi {
		s.hi = have[i].hi
		have = append(have[:i], have[i+1:]...)
	}
	have = append(have, span{})
	copy(have[i+1:], have[i:])
	have[i] = s
	return have
}

// copyFrom fills dst from the frame b, continued in more, starting at frame
// offset off.
func copyFrom(dst, b []byte, more [][]byte, off int) {
	for _, buf := range append([][]byte{b}, more...) {
		if len(dst) == 0 {
			return
		}
		if off >= len(buf) {
			off -= len(buf)
			continue
		}
		n := copy(dst, buf[off:])
		dst, off = dst[n:], 0
	}
}

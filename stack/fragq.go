package stack

import "sort"

// fragKind says how a fragment's bytes reach the application.
type fragKind uint8

const (
	// kindDmabuf payload stays in the UMEM and is delivered as a token.
	kindDmabuf fragKind = iota
	// kindLinear is the linear part of a segment that also has dmabuf
	// fragments (Config.LinearHead): copied into p and reported with
	// SCM_DEVMEM_LINEAR, ahead of the fragments in the same recvmsg.
	kindLinear
	// kindPlain is ordinary (readable) data, copied into p with no devmem
	// control message: payload that arrived while no binding covered the
	// queue, payload the device left whole in the header buffer (below
	// Config.HDSThresh, or no longer than Config.LinearHead), and
	// reassembled IP fragments.
	kindPlain
)

// frag is a run of stream bytes that sits contiguously in one UMEM frame.
// Each queued frag holds one stack reference (a pin) on its frame.
type frag struct {
	off   uint64 // stream offset of the first byte
	addr  uint64 // UMEM address of the first byte
	n     uint32 // length in bytes
	frame uint32 // frame index in the region
	kind  fragKind
	bind  *rxBinding // binding in force when the bytes arrived (kindDmabuf)
}

func (f *frag) end() uint64 { return f.off + uint64(f.n) }

// fragQueue maps a connection's byte stream to where each byte landed. It
// keeps the first arrival of every byte at or after readOff, sorted and
// non-overlapping; retransmissions and overlaps map to the first arrival,
// since TCP guarantees their bytes are the same. Not locked: the owner
// (flow) serializes access.
type fragQueue struct {
	q       []frag
	head    int
	base    uint32 // sequence number of stream offset 0 (ISN + 1)
	readOff uint64 // stream offset of the next byte to deliver
	window  uint64 // bytes beyond readOff that may be recorded
	// maxFrags bounds the queued fragments (each pins a frame) except for
	// bytes ahead of the first queued one: the segment that fills the
	// front hole is always taken, so out-of-order data can never hold the
	// frames it needs (budget.go).
	maxFrags int
}

// reset starts a new stream whose first byte has sequence number base and
// returns the frames the old stream still pinned (appended to unpin).
func (fq *fragQueue) reset(base uint32, unpin []uint32) []uint32 {
	unpin = fq.drain(unpin)
	fq.base = base
	fq.readOff = 0
	return unpin
}

// drain drops every queued fragment, appending their frames to unpin.
func (fq *fragQueue) drain(unpin []uint32) []uint32 {
	for i := fq.head; i < len(fq.q); i++ {
		unpin = append(unpin, fq.q[i].frame)
		fq.q[i] = frag{}
	}
	fq.q = fq.q[:0]
	fq.head = 0
	return unpin
}

// offOf maps a sequence number to a stream offset, taking the one nearest
// to readOff (sequence space wraps every 4 GiB).
func (fq *fragQueue) offOf(seq uint32) int64 {
	readSeq := fq.base + uint32(fq.readOff)
	return int64(fq.readOff) + int64(int32(seq-readSeq))
}

// insert records n payload bytes with sequence number seq found at UMEM
// address addr of frame. It returns how many new fragments it queued (the
// caller pins the frame that many times; 0 for a retransmission of bytes
// queued or delivered), or -1 when the bytes lie beyond the window or the
// queue holds maxFrags fragments and the bytes would add one that does not
// fill its front hole, in which case the caller must drop the segment so
// the stack never accepts bytes the queue cannot map.
func (fq *fragQueue) insert(seq uint32, n int, addr uint64, frame uint32, kind fragKind, b *rxBinding) int {
	if n <= 0 {
		return 0
	}
	start := fq.offOf(seq)
	end := start + int64(n)
	ro := int64(fq.readOff)
	if end <= ro {
		return 0 // all delivered already: a retransmission
	}
	if start < ro {
		addr += uint64(ro - start)
		start = ro
	}
	if fq.window > 0 && uint64(end) > fq.readOff+fq.window {
		return -1
	}
	nf := frag{off: uint64(start), addr: addr, n: uint32(end - start), frame: frame, kind: kind, bind: b}
	live := fq.q[fq.head:]
	if fq.maxFrags > 0 && len(live) >= fq.maxFrags && nf.off >= live[0].off {
		if covered(live, nf.off, nf.end()) {
			return 0 // a retransmission of queued bytes: nothing to pin
		}
		return -1
	}
	if len(live) == 0 || live[len(live)-1].end() <= nf.off {
		fq.push(nf)
		return 1
	}
	// Slow path: fill only the gaps that the queued fragments leave.
	i := fq.head + sort.Search(len(live), func(k int) bool { return live[k].end() > nf.off })
	cur, stop := nf.off, nf.end()
	added := 0
	for cur < stop {
		if i < len(fq.q) && fq.q[i].off <= cur {
			cur = max(cur, fq.q[i].end())
			i++
			continue
		}
		pieceEnd := stop
		if i < len(fq.q) && fq.q[i].off < pieceEnd {
			pieceEnd = fq.q[i].off
		}
		p := nf
		p.off = cur
		p.addr = nf.addr + (cur - nf.off)
		p.n = uint32(pieceEnd - cur)
		fq.q = append(fq.q, frag{})
		copy(fq.q[i+1:], fq.q[i:])
		fq.q[i] = p
		i++
		added++
		cur = pieceEnd
	}
	return added
}

// covered reports whether the sorted fragments hold every byte of
// [off, end).
func covered(live []frag, off, end uint64) bool {
	i := sort.Search(len(live), func(k int) bool { return live[k].end() > off })
	for cur := off; cur < end; i++ {
		if i >= len(live) || live[i].off > cur {
			return false
		}
		cur = live[i].end()
	}
	return true
}

func (fq *fragQueue) push(f frag) {
	if fq.head > 0 && len(fq.q) == cap(fq.q) {
		n := copy(fq.q, fq.q[fq.head:])
		clear(fq.q[n:])
		fq.q = fq.q[:n]
		fq.head = 0
	}
	fq.q = append(fq.q, f)
}

// front returns the fragment holding the next byte to deliver, or nil when
// that byte has not arrived.
func (fq *fragQueue) front() *frag {
	if fq.head == len(fq.q) || fq.q[fq.head].off != fq.readOff {
		return nil
	}
	return &fq.q[fq.head]
}

// find returns the index (from the front) of the fragment holding the byte
// at stream offset off, or -1 when that byte has not arrived.
func (fq *fragQueue) find(off uint64) int {
	live := fq.q[fq.head:]
	k := sort.Search(len(live), func(k int) bool { return live[k].end() > off })
	if k == len(live) || live[k].off > off {
		return -1
	}
	return k
}

// at returns the i-th queued fragment from the front, or nil.
func (fq *fragQueue) at(i int) *frag {
	if fq.head+i >= len(fq.q) {
		return nil
	}
	return &fq.q[fq.head+i]
}

// consume delivers k bytes of the front fragment. It reports whether the
// fragment is used up and was popped (its pin then passes to the caller).
func (fq *fragQueue) consume(k uint32) (popped bool) {
	f := &fq.q[fq.head]
	fq.readOff += uint64(k)
	if k < f.n {
		f.off += uint64(k)
		f.addr += uint64(k)
		f.n -= k
		return false
	}
	*f = frag{}
	fq.head++
	if fq.head == len(fq.q) {
		fq.q = fq.q[:0]
		fq.head = 0
	}
	return true
}

// len is the number of queued fragments.
func (fq *fragQueue) len() int { return len(fq.q) - fq.head }

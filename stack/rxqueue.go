package stack

import (
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
)

// rxQueue is one RX queue's receive path: its AF_XDP socket, its goroutine
// and that goroutine's scratch, GRO state, fault injector and flow cache.
// Everything but the counters it updates belongs to its goroutine.
type rxQueue struct {
	e   *linkEndpoint
	s   *Stack
	id  int    // the interface's RX queue
	dev Device // its socket

	gro gro.GRO
	inj *injector

	descs [rxBatch]unix.XDPDesc
	free  []uint32
	unpin []uint32

	// pkt gathers a multi-buffer packet's descriptors (XDP_PKT_CONTD on
	// all but the last), possibly across batches; more and pins are
	// handleMulti's scratch.
	pkt  []unix.XDPDesc
	more [][]byte
	pins []int

	lastKey  flowKey
	lastFlow *flow

	run          dropRun   // the current run of drops (alert.go)
	starvedSince time.Time // when the fill ring last ran dry; zero while it is not

	// burst is the run of in-order segments being coalesced (coalesce).
	burst burst

	// linear is set while a reassembled segment takes the receive path:
	// its payload is delivered as ordinary bytes, whatever its length.
	linear bool
	rdescs []unix.XDPDesc // the reassembled segment's frames
}

func newRXQueue(e *linkEndpoint, id int, dev Device) *rxQueue {
	q := &rxQueue{e: e, s: e.s, id: id, dev: dev}
	if f := e.s.cfg.Lab.Faults; f.Enabled() {
		f.Seed += uint64(id) // one reproducible stream per queue
		q.inj = newInjector(f)
	}
	q.free = make([]uint32, 0, rxBatch)
	q.unpin = make([]uint32, 0, 64)
	return q
}

// lookup finds a flow, through a one-entry cache.
func (q *rxQueue) lookup(key flowKey) *flow {
	if q.lastFlow != nil && q.lastKey == key && !q.lastFlow.dead.Load() {
		return q.lastFlow
	}
	f := q.s.flows.get(key)
	if f != nil {
		q.lastKey, q.lastFlow = key, f
	}
	return f
}

// placement decides how a segment's payload reaches the application: as
// dmabuf fragments of the binding of the logical queue fl is steered to,
// or as ordinary bytes when the queue has no binding or the device left the
// whole payload in the header buffer — below its split threshold
// (Config.HDSThresh), no longer than its linear head (Config.LinearHead), or
// a reassembled segment. A whole-linear skb is readable memory in the
// kernel: its bytes come without devmem control messages.
func (q *rxQueue) placement(fl *flow, payloadLen int) (*rxBinding, fragKind) {
	bnd := q.s.bindingFor(q.s.steer.queueOf(fl))
	switch {
	case bnd == nil, q.linear, payloadLen < q.s.cfg.HDSThresh, payloadLen <= q.s.cfg.LinearHead:
		return nil, kindPlain
	}
	return bnd, kindDmabuf
}

// insert records a segment's payload piece of n bytes with sequence number
// seq at UMEM address addr of frame in fl's fragment queue (fl.mu held). A
// dmabuf piece that starts the payload keeps its first Config.LinearHead
// bytes as the segment's linear part. It returns the fragments queued (one
// pin each) or -1 beyond the window (see fragQueue.insert).
func (q *rxQueue) insert(fl *flow, seq uint32, n int, addr uint64, frame uint32, kind fragKind, bnd *rxBinding, first bool) int {
	head := 0
	if kind == kindDmabuf && first {
		head = min(q.s.cfg.LinearHead, n)
	}
	// The tail first: its end is the segment's, so the window check is
	// the whole segment's.
	k := fl.fq.insert(seq+uint32(head), n-head, addr+uint64(head), frame, kind, bnd)
	if k >= 0 && head > 0 {
		k += fl.fq.insert(seq, head, addr, frame, kindLinear, bnd)
	}
	return k
}

// rxLoop is the receive goroutine: refill, take a batch, split, deliver.
func (q *rxQueue) rxLoop() {
	defer q.e.wg.Done()
	for !q.e.stopped.Load() {
		q.dev.Refill()
		n := q.dev.Receive(q.descs[:])
		if n == 0 && q.inj != nil && len(q.inj.held) > 0 {
			q.flushHeld() // the link went quiet: deliver what reordering held back
			continue
		}
		if n == 0 {
			timeout := 1000
			if q.dev.FillPending() == 0 {
				timeout = 10 // starved: frames come back through tokens
				if q.starvedSince.IsZero() {
					q.starvedSince = time.Now()
				}
				q.noteStarved(q.starvedSince)
			} else {
				q.starvedSince = time.Time{}
			}
			q.dev.Wait(timeout)
			continue
		}
		q.handleBatch(q.descs[:n])
	}
}

// handleBatch splits and delivers a batch of received descriptors, then
// returns the frames nobody kept.
func (q *rxQueue) handleBatch(descs []unix.XDPDesc) {
	r := q.s.region
	q.s.cnt.rxFrames.Add(uint64(len(descs)))
	if q.inj != nil {
		q.handleFaulty(descs)
	} else {
		for _, d := range descs {
			if d.Options&unix.XDP_PKT_CONTD != 0 || len(q.pkt) > 0 {
				q.gather(d)
				continue
			}
			q.handle(d)
		}
	}
	q.flushBurst()
	q.gro.Flush()
	if len(q.free) > 0 {
		r.Free(q.free...)
		q.free = q.free[:0]
	}
	if len(q.unpin) > 0 {
		r.Unpin(q.unpin...)
		q.unpin = q.unpin[:0]
	}
}

// handleFaulty is handleBatch's loop with fault injection.
func (q *rxQueue) handleFaulty(descs []unix.XDPDesc) {
	in := q.inj
	r := q.s.region
	mem := r.Bytes()
	for _, d := range descs {
		if d.Options&unix.XDP_PKT_CONTD != 0 || len(q.pkt) > 0 {
			q.gather(d) // multi-buffer packets pass the injector untouched
			continue
		}
		q.ageHeld()
		frame := r.FrameOf(d.Addr)
		if in.f.Drop > 0 && in.rng.Float64() < in.f.Drop {
			in.dropped.Add(1)
			q.free = append(q.free, frame)
			continue
		}
		if in.f.Truncate > 0 && d.Len > ethHdrLen && in.rng.Float64() < in.f.Truncate {
			d.Len = uint32(ethHdrLen + in.rng.IntN(int(d.Len)-ethHdrLen))
			in.truncated.Add(1)
		}
		if in.f.Corrupt > 0 && in.rng.Float64() < in.f.Corrupt {
			if in.corrupt(mem[d.Addr : d.Addr+uint64(d.Len)]) {
				in.corrupted.Add(1)
			}
		}
		if in.f.Dup > 0 && in.rng.Float64() < in.f.Dup {
			var f [1]uint32
			if r.Alloc(f[:]) == 1 {
				addr := r.FrameAddr(f[0]) + (d.Addr - r.FrameAddr(frame))
				copy(mem[addr:addr+uint64(d.Len)], mem[d.Addr:d.Addr+uint64(d.Len)])
				in.held = append(in.held, heldFrame{addr: addr, n: uint64(d.Len), left: 0})
				in.duplicated.Add(1)
			}
		}
		if in.f.Reorder > 0 && in.rng.Float64() < in.f.Reorder {
			in.held = append(in.held, heldFrame{addr: d.Addr, n: uint64(d.Len), left: 1 + in.rng.IntN(in.f.ReorderDepth)})
			in.reordered.Add(1)
			continue
		}
		q.handle(d)
	}
}

// ageHeld delivers held frames whose wait is over.
func (q *rxQueue) ageHeld() {
	in := q.inj
	k := 0
	for _, h := range in.held {
		if h.left <= 0 {
			q.handle(unix.XDPDesc{Addr: h.addr, Len: uint32(h.n)})
			continue
		}
		h.left--
		in.held[k] = h
		k++
	}
	in.held = in.held[:k]
}

// flushHeld delivers every held frame and returns them.
func (q *rxQueue) flushHeld() {
	for _, h := range q.inj.held {
		q.handle(unix.XDPDesc{Addr: h.addr, Len: uint32(h.n)})
	}
	q.inj.held = q.inj.held[:0]
	q.flushBurst()
	q.gro.Flush()
	if len(q.free) > 0 {
		q.s.region.Free(q.free...)
		q.free = q.free[:0]
	}
	if len(q.unpin) > 0 {
		q.s.region.Unpin(q.unpin...)
		q.unpin = q.unpin[:0]
	}
}

// handle splits one received frame and hands it to gVisor.
func (q *rxQueue) handle(d unix.XDPDesc) {
	s := q.s
	frame := s.region.FrameOf(d.Addr)
	b := s.region.Bytes()[d.Addr : d.Addr+uint64(d.Len)]
	var sp split
	v := splitFrame(b, &sp, !s.cfg.Lab.TrustChecksum)
	switch {
	case v == verdictTCP:
	case v == verdictOther:
		s.cnt.rxOther.Add(1)
		if sp.EtherType == etherTypeARP || sp.FrameLen > 0 {
			q.deliverCopy(b, sp)
		}
		q.free = append(q.free, frame)
		return
	case v == verdictFragment:
		q.free = append(q.free, frame)
		q.fragment(b, nil, sp)
		return
	default:
		s.cnt.verdicts[v].Add(1)
		q.noteDrop(alertOf(v), b)
		q.free = append(q.free, frame)
		return
	}
	s.cnt.rxTCP.Add(1)
	if !s.isOurs(sp.Dst) {
		s.cnt.dropNotOurs.Add(1)
		q.free = append(q.free, frame)
		return
	}
	key := flowKey{raddr: sp.Src, rport: sp.SrcPort, lport: sp.DstPort}
	q.noteGood(key)
	if sp.Flags&tcpFlagSyn != 0 {
		if s.neigh != nil {
			s.neigh.learn(sp.Src, b[6:12]) // the next hop back to the peer
		}
		if sp.Flags&tcpFlagAck == 0 {
			q.unpin = s.flows.syn(key, sp.Seq+1, q.unpin, &s.cnt)
		}
		q.deliverCopy(b, sp)
		q.free = append(q.free, frame)
		return
	}
	if sp.PayloadLen == 0 {
		// A handshake's ACK, while some flow waits to be accepted (the
		// flow cache makes this a comparison for any other ACK).
		if sp.Flags&tcpFlagAck != 0 && s.flows.pending.Load() > 0 {
			if fl := q.lookup(key); fl != nil && fl.ackState.Load() == ackWaiting {
				fl.mu.Lock()
				fl.noteAckLocked(b, sp)
				fl.mu.Unlock()
			}
		}
		q.deliverCopy(b, sp)
		q.free = append(q.free, frame)
		return
	}
	fl := q.lookup(key)
	if fl == nil {
		s.cnt.noFlow.Add(1)
		q.deliverCopy(b, sp)
		q.free = append(q.free, frame)
		return
	}
	if testHookLookedUp != nil {
		testHookLookedUp()
	}
	bnd, kind := q.placement(fl, sp.PayloadLen)
	fl.mu.Lock()
	if fl.ackState.Load() == ackWaiting { // the handshake's ACK may come on the first data
		fl.noteAckLocked(b, sp)
	}
	if fl.dead.Load() {
		// The connection closed after the lookup: its queue was drained
		// and nobody would drain a new entry (the frame would stay
		// pinned). gVisor answers for the closed endpoint.
		fl.mu.Unlock()
		s.cnt.noFlow.Add(1)
		q.deliverCopy(b, sp)
		q.free = append(q.free, frame)
		return
	}
	k := q.insert(fl, sp.Seq, sp.PayloadLen, d.Addr+uint64(sp.PayloadOff), frame, kind, bnd, true)
	fl.mu.Unlock()
	if k < 0 {
		s.cnt.dropOutOfWindow.Add(1)
		q.noteDrop(AlertOutOfWindow, b)
		q.free = append(q.free, frame)
		return
	}
	if k == 0 {
		s.cnt.retransmitBytes.Add(uint64(sp.PayloadLen))
		q.free = append(q.free, frame)
	}
	for i := 0; i < k; i++ {
		s.region.Pin(frame)
	}
	if k == 0 {
		q.deliverSplit(b, sp) // a retransmission: no burst
		return
	}
	q.coalesce(b, sp, fl)
}

// fragment hands an IP fragment of a TCP segment to the reassembler (which
// copies its data: the caller returns the frame) and, when it completes the
// segment, runs the segment through the receive path.
func (q *rxQueue) fragment(b []byte, more [][]byte, sp split) {
	s := q.s
	s.cnt.ipFragments.Add(1)
	if !s.isOurs(sp.Dst) {
		s.cnt.dropNotOurs.Add(1)
		return
	}
	seg, dropped := s.reasm.add(b, more, &sp, time.Now())
	if dropped > 0 {
		s.cnt.ipFragDrops.Add(dropped)
	}
	if seg != nil {
		q.deliverReassembled(seg)
	}
}

// deliverReassembled writes a reassembled segment into free UMEM frames, as
// if it had arrived that way (in several frames, like a multi-buffer jumbo
// frame, when it does not fit one), and handles it with its payload
// delivered as ordinary bytes: a NIC's header split leaves fragments
// whole, and the segment the kernel reassembles from them is readable
// memory, which recvmsg copies without devmem control messages.
func (q *rxQueue) deliverReassembled(seg []byte) {
	s := q.s
	r := s.region
	fs := int(r.FrameSize())
	n := (len(seg) + fs - 1) / fs
	var idx [(0xffff+ethHdrLen+ipv6HdrLen)/2048 + 1]uint32
	if n > len(idx) {
		s.cnt.ipFragDrops.Add(1)
		return
	}
	if got := r.Alloc(idx[:n]); got < n {
		// No free frame: dropped, as by a NIC whose fill ring is empty.
		if got > 0 {
			r.Free(idx[:got]...)
		}
		s.cnt.ipFragDrops.Add(1)
		return
	}
	mem := r.Bytes()
	q.rdescs = q.rdescs[:0]
	for i := 0; i < n; i++ {
		chunk := seg[i*fs : min((i+1)*fs, len(seg))]
		addr := r.FrameAddr(idx[i])
		copy(mem[addr:], chunk)
		q.rdescs = append(q.rdescs, unix.XDPDesc{Addr: addr, Len: uint32(len(chunk))})
	}
	s.cnt.ipReassembled.Add(1)
	q.linear = true
	if n == 1 {
		q.handle(q.rdescs[0])
	} else {
		q.handleMulti(q.rdescs)
	}
	q.linear = false
}

// deliverCopy hands a whole frame to gVisor as a copy (frames without
// payload, ARP, and segments of unknown flows).
func (q *rxQueue) deliverCopy(b []byte, sp split) {
	n := len(b)
	if sp.FrameLen > 0 && sp.FrameLen < n {
		n = sp.FrameLen // strip Ethernet padding
	}
	q.s.cnt.frameCopyBytes.Add(uint64(n))
	pkt := gstack.NewPacketBuffer(gstack.PacketBufferOptions{Payload: buffer.MakeWithData(b[:n])})
	q.dispatch(pkt, sp.EtherType, sp.TCPOff > 0 && !q.s.cfg.Lab.TrustChecksum)
}

// deliverSplit hands gVisor the headers (copied) and a placeholder payload.
func (q *rxQueue) deliverSplit(b []byte, sp split) {
	q.deliverHeaders(buffer.NewViewWithData(b[:sp.PayloadOff]), sp.EtherType, sp.PayloadLen)
}

// deliverHeaders hands gVisor a segment: its headers hdr and a placeholder
// payload of n bytes.
func (q *rxQueue) deliverHeaders(hdr *buffer.View, etherType uint16, n int) {
	q.s.cnt.headerCopyBytes.Add(uint64(hdr.Size()))
	pl := q.e.placeholder.Clone()
	pl.CapLength(n)
	buf := buffer.MakeWithView(pl)
	buf.Prepend(hdr)
	pkt := gstack.NewPacketBuffer(gstack.PacketBufferOptions{Payload: buf})
	q.dispatch(pkt, etherType, true)
}

// burst is a run of consecutive in-order segments of one flow with equal
// headers but for the IP length, ID and checksums, which the receive loop
// hands gVisor as one segment with one placeholder payload: a NIC's LRO, or
// what gVisor's GRO would do, without a PacketBuffer and a GRO pass per
// frame. The fragment queue has recorded every segment already; the reader
// maps the placeholder's bytes by sequence number, so a burst is just a
// longer segment.
type burst struct {
	segs int          // segments in the burst; 0: none
	hdr  *buffer.View // the first segment's headers, copied (its frame may be unpinned by a close meanwhile)
	sp   split        // the first segment's split
	fl   *flow
	next uint32 // the sequence number after the burst
	n    int    // payload bytes
	psh  bool   // the last segment had PSH
}

// coalesce adds a segment whose payload the fragment queue took to the
// current burst, or delivers the burst and starts a new one.
func (q *rxQueue) coalesce(b []byte, sp split, fl *flow) {
	bu := &q.burst
	if q.linear || sp.Flags&^(tcpFlagAck|tcpFlagPsh) != 0 || sp.Flags&tcpFlagAck == 0 {
		q.flushBurst()
		q.deliverSplit(b, sp)
		return
	}
	if bu.segs > 0 && bu.fl == fl && bu.next == sp.Seq && sameBurst(bu.hdr.AsSlice(), b, &bu.sp, &sp) &&
		bu.n+sp.PayloadLen <= 0xffff-(sp.PayloadOff-sp.IPOff) {
		bu.segs++
		bu.n += sp.PayloadLen
		bu.next += uint32(sp.PayloadLen)
		q.s.cnt.rxCoalesced.Add(1)
	} else {
		q.flushBurst()
		*bu = burst{segs: 1, hdr: buffer.NewViewWithData(b[:sp.PayloadOff]), sp: sp, fl: fl, next: sp.Seq + uint32(sp.PayloadLen), n: sp.PayloadLen}
	}
	if sp.Flags&tcpFlagPsh != 0 {
		bu.psh = true
		q.flushBurst() // the end of a message: hand it on
	}
}

// sameBurst reports whether segment b (split sp) may follow the burst
// whose first segment's headers are h (split first): same header layout,
// same IP TOS / traffic class, and TCP headers equal from the ACK number on
// (flags, window, options with timestamps) but for the checksum and PSH.
func sameBurst(h, b []byte, first, sp *split) bool {
	if sp.EtherType != first.EtherType || sp.IPOff != first.IPOff || sp.TCPOff != first.TCPOff || sp.PayloadOff != first.PayloadOff {
		return false
	}
	ip, t := sp.IPOff, sp.TCPOff
	if h[ip] != b[ip] || h[ip+1] != b[ip+1] { // version, IHL / TOS, traffic class
		return false
	}
	if string(h[t+8:t+13]) != string(b[t+8:t+13]) || h[t+13]&^tcpFlagPsh != b[t+13]&^tcpFlagPsh {
		return false // ACK number, data offset; flags
	}
	return string(h[t+14:t+16]) == string(b[t+14:t+16]) && string(h[t+18:sp.PayloadOff]) == string(b[t+18:sp.PayloadOff])
}

// flushBurst hands gVisor the current burst as one segment.
func (q *rxQueue) flushBurst() {
	bu := &q.burst
	if bu.segs == 0 {
		return
	}
	segs, hv := bu.segs, bu.hdr
	bu.segs, bu.fl, bu.hdr = 0, nil, nil
	sp := &bu.sp
	if segs > 1 || bu.psh {
		h := hv.AsSlice()
		if bu.psh {
			h[sp.TCPOff+13] |= tcpFlagPsh
		}
		if sp.EtherType == etherTypeIPv4 {
			ip := header.IPv4(h[sp.IPOff:])
			ip.SetTotalLength(uint16(sp.PayloadOff - sp.IPOff + bu.n))
			ip.SetChecksum(0)
			ip.SetChecksum(^ip.CalculateChecksum())
		} else {
			header.IPv6(h[sp.IPOff:]).SetPayloadLength(uint16(sp.PayloadOff - sp.IPOff - header.IPv6MinimumSize + bu.n))
		}
	}
	bu.psh = false
	q.deliverHeaders(hv, sp.EtherType, bu.n)
}

func (q *rxQueue) dispatch(pkt *gstack.PacketBuffer, etherType uint16, csumOK bool) {
	defer pkt.DecRef()
	q.flushBurst() // what came before pkt goes first
	if !q.e.ParseHeader(pkt) {
		return
	}
	proto := tcpip.NetworkProtocolNumber(etherType)
	pkt.NetworkProtocolNumber = proto
	pkt.RXChecksumValidated = csumOK
	if proto == header.IPv4ProtocolNumber || proto == header.IPv6ProtocolNumber {
		q.gro.Enqueue(pkt)
		return
	}
	q.gro.Dispatcher.DeliverNetworkPacket(proto, pkt)
}

// gather collects one descriptor of a multi-buffer packet and handles the
// packet once its last descriptor arrives.
func (q *rxQueue) gather(d unix.XDPDesc) {
	q.pkt = append(q.pkt, d)
	if d.Options&unix.XDP_PKT_CONTD != 0 {
		if len(q.pkt) > 64 { // no such packet is sane: drop it
			q.s.cnt.verdicts[verdictMalformed].Add(1)
			for _, d := range q.pkt {
				q.free = append(q.free, q.s.region.FrameOf(d.Addr))
			}
			q.pkt = q.pkt[:0]
		}
		return
	}
	if len(q.pkt) == 1 {
		q.handle(d)
	} else {
		q.handleMulti(q.pkt)
	}
	q.pkt = q.pkt[:0]
}

// handleMulti is handle for a packet that arrived in several UMEM frames
// (jumbo frames with XDP multi-buffer): the headers come from the first
// frame and the payload becomes one fragment per frame.
func (q *rxQueue) handleMulti(descs []unix.XDPDesc) {
	s := q.s
	r := s.region
	mem := r.Bytes()
	b0 := mem[descs[0].Addr : descs[0].Addr+uint64(descs[0].Len)]
	q.more = q.more[:0]
	for _, d := range descs[1:] {
		q.more = append(q.more, mem[d.Addr:d.Addr+uint64(d.Len)])
	}
	freeAll := func() {
		for _, d := range descs {
			q.free = append(q.free, r.FrameOf(d.Addr))
		}
	}
	var sp split
	v := splitFrames(b0, q.more, &sp, !s.cfg.Lab.TrustChecksum)
	switch v {
	case verdictTCP:
	case verdictOther:
		s.cnt.rxOther.Add(1)
		q.deliverCopyMulti(b0, q.more, sp)
		freeAll()
		return
	case verdictFragment:
		freeAll()
		q.fragment(b0, q.more, sp)
		return
	default:
		s.cnt.verdicts[v].Add(1)
		q.noteDrop(alertOf(v), b0)
		freeAll()
		return
	}
	s.cnt.rxTCP.Add(1)
	if !s.isOurs(sp.Dst) {
		s.cnt.dropNotOurs.Add(1)
		freeAll()
		return
	}
	key := flowKey{raddr: sp.Src, rport: sp.SrcPort, lport: sp.DstPort}
	q.noteGood(key)
	fl := (*flow)(nil)
	if sp.Flags&tcpFlagSyn == 0 && sp.PayloadLen > 0 {
		fl = q.lookup(key)
	}
	if fl == nil {
		if sp.PayloadLen > 0 && sp.Flags&tcpFlagSyn == 0 {
			s.cnt.noFlow.Add(1)
		}
		q.deliverCopyMulti(b0, q.more, sp)
		freeAll()
		return
	}
	bnd, kind := q.placement(fl, sp.PayloadLen)
	// One piece per frame: the first frame's payload after the headers,
	// then each further frame, up to the payload's end.
	q.pins = q.pins[:0]
	seq, left := sp.Seq, sp.PayloadLen
	beyond := false
	fl.mu.Lock()
	if fl.dead.Load() {
		// Closed after the lookup (see handle).
		fl.mu.Unlock()
		s.cnt.noFlow.Add(1)
		q.deliverCopyMulti(b0, q.more, sp)
		freeAll()
		return
	}
	for i, d := range descs {
		off, n := uint64(0), int(d.Len)
		if i == 0 {
			off, n = uint64(sp.PayloadOff), max(int(d.Len)-sp.PayloadOff, 0)
		}
		n = min(n, left)
		k := 0
		if n > 0 && !beyond {
			k = q.insert(fl, seq, n, d.Addr+off, r.FrameOf(d.Addr), kind, bnd, i == 0)
			if k < 0 {
				beyond, k = true, 0
			}
		}
		q.pins = append(q.pins, k)
		seq += uint32(n)
		left -= n
	}
	fl.mu.Unlock()
	pinned := 0
	for i, d := range descs {
		f := r.FrameOf(d.Addr)
		for j := 0; j < q.pins[i]; j++ {
			r.Pin(f)
		}
		if q.pins[i] == 0 {
			q.free = append(q.free, f)
		}
		pinned += q.pins[i]
	}
	if beyond {
		// Part of the payload lies past the window: gVisor must not take
		// bytes the queue could not record.
		s.cnt.dropOutOfWindow.Add(1)
		q.noteDrop(AlertOutOfWindow, b0)
		return
	}
	if pinned == 0 {
		s.cnt.retransmitBytes.Add(uint64(sp.PayloadLen))
		q.deliverSplit(b0, sp)
		return
	}
	q.coalesce(b0, sp, fl)
}

// deliverCopyMulti hands a multi-buffer frame to gVisor as one copy.
func (q *rxQueue) deliverCopyMulti(b0 []byte, more [][]byte, sp split) {
	if len(more) == 0 {
		q.deliverCopy(b0, sp)
		return
	}
	n := len(b0) + moreLen(more)
	if sp.FrameLen > 0 && sp.FrameLen < n {
		n = sp.FrameLen
	}
	v := buffer.NewView(n)
	left := n
	for _, p := range append([][]byte{b0}, more...) {
		p = p[:min(len(p), left)]
		v.Write(p)
		left -= len(p)
	}
	q.s.cnt.frameCopyBytes.Add(uint64(n))
	pkt := gstack.NewPacketBuffer(gstack.PacketBufferOptions{Payload: buffer.MakeWithView(v)})
	q.dispatch(pkt, sp.EtherType, sp.TCPOff > 0 && !q.s.cfg.Lab.TrustChecksum)
}

// testHookLookedUp, when set (tests only), runs between a segment's flow
// lookup and its queueing: where a close can slip in.
var testHookLookedUp func()

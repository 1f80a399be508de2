package stack

import (
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// txPkt is one packet of a batch, for undoing what was not queued.
type txPkt struct {
	addr       uint64 // header TX frame
	first, end int    // its descriptors
	chain      bool   // a chain record was made
	refs, refe int    // its payload descriptors' bindings in txScratch.refs
	extras     int    // its further TX frames in txScratch.extras
	extrae     int
}

type txScratch struct {
	hdr    [256]byte // a packet's headers
	avail  []uint64  // TX frames taken, not used yet
	descs  []unix.XDPDesc
	pkts   []txPkt
	pieces []txPiece
	refs   []*txBinding
	extras []uint64 // TX frames chained behind a header frame
}

// pop takes one of the TX frames take made sure of.
func (sc *txScratch) pop() uint64 {
	a := sc.avail[len(sc.avail)-1]
	sc.avail = sc.avail[:len(sc.avail)-1]
	return a
}

// writePackets transmits a batch: every frame goes through a TX frame;
// devmem segments get their payload from the span. A GSO packet (the
// engine offers host GSO, as a TSO NIC does) is cut into MSS-sized frames
// here.
func (t *txEngine) writePackets(pkts gstack.PacketBufferList) (int, tcpip.Error) {
	list := pkts.AsSlice()
	sc := t.scratch.Get().(*txScratch)
	defer t.scratch.Put(sc)
	sc.descs, sc.pkts, sc.refs, sc.extras, sc.avail = sc.descs[:0], sc.pkts[:0], sc.refs[:0], sc.extras[:0], sc.avail[:0]
	done := 0
	ok := true
	for _, pkt := range list {
		if !t.take(sc, t.framesFor(pkt)) {
			break
		}
		t.build(pkt, sc)
		done++
		if len(sc.descs) >= txFlushDescs {
			if ok = t.flush(sc); !ok {
				break
			}
		}
	}
	if ok {
		t.flush(sc)
	}
	if len(sc.avail) > 0 {
		t.dev.TXRelease(sc.avail...)
		sc.avail = sc.avail[:0]
	}
	if done == 0 && len(list) > 0 {
		return 0, &tcpip.ErrNoBufferSpace{}
	}
	return done, nil
}

// segmentsOf is the number of frames pkt becomes: its GSO segments.
func segmentsOf(pkt *gstack.PacketBuffer) int {
	g := pkt.GSOOptions
	return gsoSegments(g.Type == gstack.GSOTCPv4 || g.Type == gstack.GSOTCPv6, int(g.MSS), pkt.Data().Size())
}

// framesFor bounds the TX frames pkt needs: per segment, its headers and
// payload spread over whole frames (only jumbo frames need more than one).
func (t *txEngine) framesFor(pkt *gstack.PacketBuffer) int {
	nseg := segmentsOf(pkt)
	mss := pkt.Data().Size()
	if nseg > 1 {
		mss = int(pkt.GSOOptions.MSS)
	}
	fs := int(t.mask + 1)
	return nseg * ((pkt.HeaderSize() + mss + fs - 1) / fs)
}

// take makes sure sc holds n free TX frames.
func (t *txEngine) take(sc *txScratch, n int) bool {
	for len(sc.avail) < n {
		want := max(n-len(sc.avail), 16)
		if cap(sc.avail)-len(sc.avail) < want {
			sc.avail = append(make([]uint64, 0, len(sc.avail)+want), sc.avail...)
		}
		got := t.dev.TXAcquire(sc.avail[len(sc.avail) : len(sc.avail)+want])
		if got == 0 {
			return false
		}
		sc.avail = sc.avail[:len(sc.avail)+got]
	}
	return true
}

// flush submits what build queued and undoes what the device refused.
func (t *txEngine) flush(sc *txScratch) bool {
	if len(sc.descs) == 0 {
		return true
	}
	n, err := t.dev.TXProduce(sc.descs)
	if n > 0 {
		// The engine kicks inline: a kicker goroutine (as the link's
		// WritePackets uses) measured slower here, since with two cores
		// both busy the handoff costs more than it overlaps.
		if kerr := t.dev.TXKick(); kerr != nil && err == nil {
			err = kerr
		}
	}
	all := n == len(sc.descs) && err == nil
	if n < len(sc.descs) {
		t.undo(sc, n)
	}
	sc.descs, sc.pkts, sc.refs, sc.extras = sc.descs[:0], sc.pkts[:0], sc.refs[:0], sc.extras[:0]
	return all
}

// undo gives back what submit did not queue (descriptors from index n on,
// whole packets).
func (t *txEngine) undo(sc *txScratch, n int) {
	for i := range sc.pkts {
		p := &sc.pkts[i]
		if p.end <= n {
			continue
		}
		for _, b := range sc.refs[p.refs:p.refe] {
			b.put()
		}
		if p.chain {
			f := t.s.region.FrameOf(p.addr)
			if ch := t.chains[f]; ch.c != nil {
				t.chains[f] = txChain{}
				ch.c.chainDone(ch.start)
			}
		}
		t.dev.TXRelease(p.addr)
		t.dev.TXRelease(sc.extras[p.extras:p.extrae]...)
	}
}

// build turns one gVisor packet into frames (descriptors appended to
// sc.descs), taking its TX frames from sc.avail.
func (t *txEngine) build(pkt *gstack.PacketBuffer, sc *txScratch) {
	nseg := segmentsOf(pkt)
	hl := pkt.HeaderSize()
	dl := pkt.Data().Size()
	mss := dl
	if nseg > 1 {
		mss = int(pkt.GSOOptions.MSS)
	}
	if hl > len(sc.hdr) || (hl+mss > int(t.mask+1) && !t.chain) {
		// Headers beyond any TCP/IP, or a frame larger than a UMEM
		// frame on a kernel that cannot chain: cannot be sent.
		t.cnt.oversize.Add(1)
		return
	}
	hdr := sc.hdr[:hl]
	copyPacket(hdr, pkt, 0, hl)
	ipHdr, tcpHdr := tcpHeaders(hdr)
	var c *TXConn
	if tcpHdr != nil && t.anyConns() {
		th := header.TCP(tcpHdr)
		k := txKey{rport: th.DestinationPort(), lport: th.SourcePort()}
		if ipHdr[0]>>4 == 6 {
			copy(k.raddr[:], ipHdr[24:40])
		} else {
			k.raddr = netipFrom4(ipHdr[16:20])
		}
		if c = t.lookup(k); c != nil && th.Flags()&header.TCPFlagSyn != 0 {
			c.setISS(th.SequenceNumber())
		}
	}
	ipOff, tcpOff := 0, 0
	if tcpHdr != nil {
		ipOff, tcpOff = len(hdr)-len(ipHdr)-len(tcpHdr), len(hdr)-len(tcpHdr)
	}
	for i := 0; i < nseg; i++ {
		addr := sc.pop()
		f := t.dev.TXFrame(addr)
		copy(f, hdr)
		segOff := i * mss
		segLen := min(mss, dl-segOff)
		var ip, tcp []byte
		if tcpHdr != nil {
			ip, tcp = f[ipOff:tcpOff], f[tcpOff:hl]
			if nseg > 1 {
				cutSegment(ip, tcp, i, nseg, segOff, segLen)
			}
		}
		p := txPkt{addr: addr, first: len(sc.descs), extras: len(sc.extras)}
		t.s.cnt.txFrames.Add(1) // the stack's Stats count every frame
		t.s.cnt.txBytes.Add(uint64(hl + segLen))
		if c != nil && segLen > 0 {
			t.buildDevmem(c, pkt, segOff, addr, f, hl, segLen, ip, tcp, &p, sc)
			continue
		}
		// An ordinary frame: copy it whole, finish the TCP checksum.
		var ck checksum.Checksumer
		t.emitCopy(sc, &p, addr, f, hl, segLen, func(dst []byte, off int) {
			copyPacket(dst, pkt, hl+segOff+off, len(dst))
			ck.Add(dst)
		})
		if tcp != nil {
			finishTCPChecksum(ip, tcp, segLen, ck.Checksum())
		}
		t.cnt.plainPackets.Add(1)
		p.end, p.extrae = len(sc.descs), len(sc.extras)
		sc.pkts = append(sc.pkts, p)
	}
}

// emitCopy appends the descriptors of a frame whose hl header bytes are in
// the TX frame at addr (f) and whose n payload bytes fill writes into the
// rest of it and, for a frame larger than a UMEM frame, into more TX frames
// chained behind it (fill gets consecutive pieces, with their offset into
// the payload). The header frame's descriptor may be followed by others.
func (t *txEngine) emitCopy(sc *txScratch, p *txPkt, addr uint64, f []byte, hl, n int, fill func(dst []byte, off int)) {
	first := min(n, len(f)-hl)
	fill(f[hl:hl+first], 0)
	if first == n {
		sc.descs = append(sc.descs, unix.XDPDesc{Addr: addr, Len: uint32(hl + n)})
		return
	}
	sc.descs = append(sc.descs, unix.XDPDesc{Addr: addr, Len: uint32(len(f)), Options: unix.XDP_PKT_CONTD})
	for off := first; off < n; {
		a := sc.pop()
		g := t.dev.TXFrame(a)
		k := min(n-off, len(g))
		fill(g[:k], off)
		off += k
		d := unix.XDPDesc{Addr: a, Len: uint32(k)}
		if off < n {
			d.Options = unix.XDP_PKT_CONTD
		}
		sc.descs = append(sc.descs, d)
		sc.extras = append(sc.extras, a)
	}
}

// buildDevmem builds a data segment of a devmem TX connection: dl payload
// bytes (at segOff in pkt's data) whose headers (with the sequence number)
// are in f already. Plain bytes of the stream (TXConn.Send) come from pkt.
func (t *txEngine) buildDevmem(c *TXConn, pkt *gstack.PacketBuffer, segOff int, addr uint64, f []byte, hl, dl int, ipHdr, tcpHdr []byte, p *txPkt, sc *txScratch) {
	th := header.TCP(tcpHdr)
	pieces, start, res := c.mapSegment(th.SequenceNumber(), dl, sc.pieces[:0])
	sc.pieces = pieces[:0]
	switch res {
	case mapStale:
		t.cnt.stale.Add(1)
		t.dev.TXRelease(addr)
		return
	case mapUnmapped:
		t.cnt.unmapped.Add(1)
		t.dev.TXRelease(addr)
		return
	case mapPlain: // an ordinary frame
		var ck checksum.Checksumer
		t.emitCopy(sc, p, addr, f, hl, dl, func(dst []byte, off int) {
			copyPacket(dst, pkt, hl+segOff+off, len(dst))
			ck.Add(dst)
		})
		finishTCPChecksum(ipHdr, tcpHdr, dl, ck.Checksum())
		t.cnt.plainPackets.Add(1)
		p.end, p.extrae = len(sc.descs), len(sc.extras)
		sc.pkts = append(sc.pkts, *p)
		return
	}
	// The chain is in flight from here until its header frame completes.
	t.chains[t.s.region.FrameOf(addr)] = txChain{c: c, start: start}
	p.chain = true

	mem := t.s.region.Bytes()
	var ck checksum.Checksumer
	ndesc, plain := 0, 0
	for _, pc := range pieces {
		if pc.b == nil {
			plain += int(pc.n)
			continue
		}
		ck.Add(mem[pc.addr : pc.addr+uint64(pc.n)])
		ndesc += int((pc.addr+uint64(pc.n)-1)>>t.shift-pc.addr>>t.shift) + 1
	}
	mixed := plain > 0 // plain and dmabuf bytes: copied, summed as copied
	if !mixed {
		finishTCPChecksum(ipHdr, tcpHdr, dl, ck.Checksum())
	}
	t.cnt.segments.Add(1)
	t.cnt.dmabufBytes.Add(uint64(dl - plain))

	if t.mb && !mixed && ndesc <= txMaxPayloadDescs {
		sc.descs = append(sc.descs, unix.XDPDesc{Addr: addr, Len: uint32(hl), Options: unix.XDP_PKT_CONTD})
		p.refs = len(sc.refs)
		for _, pc := range pieces {
			a, end := pc.addr, pc.addr+uint64(pc.n)
			for a < end {
				next := min(end, (a|t.mask)+1) // descriptors stay inside a frame
				sc.descs = append(sc.descs, unix.XDPDesc{Addr: a, Len: uint32(next - a), Options: unix.XDP_PKT_CONTD})
				pc.b.get()
				sc.refs = append(sc.refs, pc.b)
				a = next
			}
		}
		sc.descs[len(sc.descs)-1].Options = 0
		p.refe = len(sc.refs)
		t.cnt.mbPackets.Add(1)
		t.cnt.descs.Add(uint64(p.refe - p.refs))
	} else {
		// Copy the pieces into the TX frame (and more, for a jumbo frame).
		var mck checksum.Checksumer
		pi, po, pstart := 0, 0, 0 // piece, offset in it, its offset in the payload
		t.emitCopy(sc, p, addr, f, hl, dl, func(dst []byte, _ int) {
			for w := 0; w < len(dst); {
				pc := pieces[pi]
				var k int
				if pc.b == nil {
					k = min(len(dst)-w, int(pc.n)-po)
					copyPacket(dst[w:w+k], pkt, hl+segOff+pstart+po, k)
				} else {
					k = copy(dst[w:], mem[pc.addr+uint64(po):pc.addr+uint64(pc.n)])
				}
				w, po = w+k, po+k
				if po == int(pc.n) {
					pi, po, pstart = pi+1, 0, pstart+int(pc.n)
				}
			}
			if mixed {
				mck.Add(dst)
			}
		})
		if mixed {
			finishTCPChecksum(ipHdr, tcpHdr, dl, mck.Checksum())
		}
		t.cnt.copyPackets.Add(1)
		t.cnt.dmabufCopied.Add(uint64(dl - plain))
	}
	p.end, p.extrae = len(sc.descs), len(sc.extras)
	sc.pkts = append(sc.pkts, *p)
}

// copyPacket copies n bytes of pkt starting at byte off into dst. It walks
// the packet's views in place (AsSlices would allocate a slice per call).
func copyPacket(dst []byte, pkt *gstack.PacketBuffer, off, n int) {
	if n == 0 {
		return
	}
	w := 0
	vl, hoff := pkt.AsViewList()
	off += hoff
	for v := vl.Front(); v != nil; v = v.Next() {
		sl := v.AsSlice()
		if off >= len(sl) {
			off -= len(sl)
			continue
		}
		sl = sl[off:]
		off = 0
		w += copy(dst[w:n], sl)
		if w == n {
			return
		}
	}
}

package stack

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/xdevmem/xdevmem/devmemapi"
)

// Devmem TX
//
// A TX binding (BindTX) is a span of UMEM frames the application writes
// payload into. TXConn.SendMsg takes (offset, length) ranges of it; gVisor
// gets a placeholder of the same length (zero-filled chunks it allocates
// itself, nothing is copied into them), and the connection records which
// stream bytes live at which UMEM address. When gVisor transmits a segment
// of such a connection, the TX engine maps the segment's sequence range
// back to UMEM addresses, writes the headers into a TX frame and points the
// following descriptors of a multi-buffer chain at the payload in the span;
// the TCP checksum is computed over the real payload, as a NIC's TX
// checksum offload would (the link advertises the offload once the engine
// runs). Where the kernel refuses chains, or a segment would need more
// descriptors than an skb has frags, the payload is copied into the TX
// frame and counted. Retransmissions map by sequence number to the same
// bytes.
//
// Completions: each send call takes the next zerocopy number; it completes
// once the peer's cumulative ACK (read off received segments as they are
// handed to gVisor) passes the call's last byte and every chain that
// carried bytes of it has come back on the completion ring.
//
// Once installed (the first BindTX or Dial), the engine carries every frame
// the stack transmits, so that it alone consumes the completion ring.

const (
	// txFlushDescs is how many descriptors writePackets queues before it
	// submits them (the TX ring holds 512).
	txFlushDescs = 256
	// txGSOMaxSize is the largest GSO packet the engine takes from gVisor.
	txGSOMaxSize = 1 << 16
	// txMaxPayloadDescs bounds the payload descriptors of one chain: copy
	// mode joins them as skb frags (MAX_SKB_FRAGS is 17) and drops longer
	// chains.
	txMaxPayloadDescs = 16
	// txProbeEtherType marks the multi-buffer probe frame (IEEE 802 local
	// experimental EtherType 1); peers drop it.
	txProbeEtherType = 0x88b5
)

// txState is the stack's TX state; the zero value is "no engine yet".
type txState struct {
	mu  sync.Mutex // serializes install and teardown
	eng atomic.Pointer[txEngine]
}

// txKey names a connection by its peer and ports; the address is in
// 16-byte form (IPv4-mapped for IPv4).
type txKey struct {
	raddr        [16]byte
	rport, lport uint16
}

// txChain records, per TX header frame in flight, which connection's
// segment it starts and where in that connection's stream.
type txChain struct {
	c     *TXConn
	start uint64
}

// txPiece is a run of payload at a UMEM address.
type txPiece struct {
	addr uint64
	n    uint32
	b    *txBinding
}

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

// txEngine is the devmem TX path of one stack.
type txEngine struct {
	s     *Stack
	dev   Device // the device that transmits (Stack.devs[0])
	mb    bool   // payload descriptors point into the span
	chain bool   // the device takes multi-buffer chains
	mask  uint64 // frame size - 1
	shift uint   // log2(frame size)

	owner  []atomic.Pointer[txBinding] // region frame → binding whose span holds it
	chains []txChain                   // region frame → chain it heads; under the device's TX lock

	connsMu sync.RWMutex
	conns   map[txKey]*TXConn
	nconns  atomic.Int32

	bmu      sync.Mutex
	bindings map[*txBinding]struct{}

	scratch sync.Pool
	cnt     txCounters
}

// txCounters are the engine's live counters; TXStats is their snapshot.
type txCounters struct {
	calls, completed, notifications     atomic.Uint64
	dmabufBytes, dmabufCopied, segments atomic.Uint64
	mbPackets, copyPackets, descs       atomic.Uint64
	stale, unmapped, plainPackets       atomic.Uint64
	oversize                            atomic.Uint64
	einval, efault, enodev              atomic.Uint64
}

// TXStats is a snapshot of the devmem TX counters.
type TXStats struct {
	// Mode is "multi-buffer" (payload descriptors point into the TX
	// dmabuf), "copy" (payload copied into TX frames) or "" (no TX yet).
	Mode string
	// Calls counts send calls that queued data; Completed the send numbers
	// completed and Notifications the ranges queued for MSG_ERRQUEUE.
	Calls, Completed, Notifications uint64
	// DmabufBytes counts payload bytes sent from TX dmabufs (retransmits
	// included); DmabufBytesCopied those the stack copied into TX frames.
	DmabufBytes, DmabufBytesCopied uint64
	// Segments counts devmem data segments; MultiBufferPackets and
	// CopiedPackets split them by path; PayloadDescs counts descriptors
	// pointing into TX dmabufs.
	Segments, MultiBufferPackets, CopiedPackets, PayloadDescs uint64
	// StaleDrops counts segments dropped because the peer had already
	// acknowledged all of them (a retransmission racing the ACK).
	StaleDrops uint64
	// Unmapped counts segments whose bytes no send recorded; anything but
	// 0 is a bug.
	Unmapped uint64
	// PlainPackets counts other frames the engine sent (ACKs, SYNs, ...).
	PlainPackets uint64
	// Oversize counts packets dropped for being larger than a UMEM frame
	// on a kernel without multi-buffer TX.
	Oversize uint64
	// EINVAL, EFAULT and ENODEV count failed send calls.
	EINVAL, EFAULT, ENODEV uint64
}

// TXStats takes a snapshot of the devmem TX counters.
func (s *Stack) TXStats() TXStats {
	t := s.tx.eng.Load()
	if t == nil {
		return TXStats{}
	}
	c := &t.cnt
	st := TXStats{
		Mode:  "copy",
		Calls: c.calls.Load(), Completed: c.completed.Load(), Notifications: c.notifications.Load(),
		DmabufBytes: c.dmabufBytes.Load(), DmabufBytesCopied: c.dmabufCopied.Load(),
		Segments: c.segments.Load(), MultiBufferPackets: c.mbPackets.Load(), CopiedPackets: c.copyPackets.Load(),
		PayloadDescs: c.descs.Load(), StaleDrops: c.stale.Load(), Unmapped: c.unmapped.Load(),
		PlainPackets: c.plainPackets.Load(), Oversize: c.oversize.Load(),
		EINVAL: c.einval.Load(), EFAULT: c.efault.Load(), ENODEV: c.enodev.Load(),
	}
	if t.mb {
		st.Mode = "multi-buffer"
	}
	return st
}

// txLink is the link endpoint gVisor's NIC sees: the receive path of
// link.go plus the TX engine, which takes over WritePackets (and claims TX
// checksum offload) once installed, and a tap on delivered packets that
// reads the ACKs of devmem TX connections.
type txLink struct {
	*linkEndpoint
	s *Stack
}

var (
	_ gstack.LinkEndpoint = (*txLink)(nil)
	_ gstack.GSOEndpoint  = (*txLink)(nil)
)

// nicEndpoint is the endpoint handed to gVisor's CreateNIC.
func (s *Stack) nicEndpoint() gstack.LinkEndpoint { return &txLink{linkEndpoint: s.link, s: s} }

// Capabilities implements gstack.LinkEndpoint: the TX engine computes every
// TCP checksum itself (it must: gVisor holds placeholders, not payload).
func (l *txLink) Capabilities() gstack.LinkEndpointCapabilities {
	c := l.linkEndpoint.Capabilities()
	if l.s.tx.eng.Load() != nil {
		c |= gstack.CapabilityTXChecksumOffload
	}
	return c
}

// WritePackets implements gstack.LinkEndpoint.
func (l *txLink) WritePackets(pkts gstack.PacketBufferList) (int, tcpip.Error) {
	if t := l.s.tx.eng.Load(); t != nil {
		return t.writePackets(pkts)
	}
	return l.linkEndpoint.WritePackets(pkts)
}

// SupportedGSO implements gstack.GSOEndpoint: with the engine running the
// link cuts GSO packets itself (TSO), so gVisor's per-segment work is done
// once per 64 KiB. Connections made before the engine keep their setting.
func (l *txLink) SupportedGSO() gstack.SupportedGSO {
	if l.s.tx.eng.Load() != nil {
		return gstack.HostGSOSupported
	}
	if g, ok := any(l.linkEndpoint).(gstack.GSOEndpoint); ok {
		return g.SupportedGSO()
	}
	return gstack.GSONotSupported
}

// GSOMaxSize implements gstack.GSOEndpoint.
func (l *txLink) GSOMaxSize() uint32 {
	if l.s.tx.eng.Load() == nil {
		if g, ok := any(l.linkEndpoint).(gstack.GSOEndpoint); ok {
			return g.GSOMaxSize()
		}
	}
	return txGSOMaxSize
}

// Attach implements gstack.LinkEndpoint, inserting the ACK tap.
func (l *txLink) Attach(d gstack.NetworkDispatcher) {
	if d != nil {
		d = &txTap{d: d, s: l.s}
	}
	l.linkEndpoint.Attach(d)
}

// txTap passes received packets to gVisor, reading on the way the ACK
// numbers of devmem TX connections.
type txTap struct {
	d gstack.NetworkDispatcher
	s *Stack
}

// DeliverNetworkPacket implements gstack.NetworkDispatcher.
func (p *txTap) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *gstack.PacketBuffer) {
	if t := p.s.tx.eng.Load(); t != nil && t.nconns.Load() > 0 {
		t.observe(proto, pkt)
	}
	p.d.DeliverNetworkPacket(proto, pkt)
}

// DeliverLinkPacket implements gstack.NetworkDispatcher.
func (p *txTap) DeliverLinkPacket(proto tcpip.NetworkProtocolNumber, pkt *gstack.PacketBuffer) {
	p.d.DeliverLinkPacket(proto, pkt)
}

// engine returns the TX engine, installing it on first use: on a socket it
// probes whether the kernel takes multi-buffer chains. Payload descriptors
// point into TX dmabufs when it does and Config.Lab.TXCopy is off; chains of TX
// frames (for frames larger than a UMEM frame) need only the former.
func (s *Stack) engine() (*txEngine, error) {
	if t := s.tx.eng.Load(); t != nil {
		return t, nil
	}
	s.tx.mu.Lock()
	defer s.tx.mu.Unlock()
	if t := s.tx.eng.Load(); t != nil {
		return t, nil
	}
	if s.closing.Load() {
		return nil, devmemapi.ErrClosed
	}
	r := s.region
	t := &txEngine{
		s:        s,
		mask:     uint64(r.FrameSize() - 1),
		shift:    uint(bits.TrailingZeros32(r.FrameSize())),
		owner:    make([]atomic.Pointer[txBinding], r.Frames()),
		chains:   make([]txChain, r.Frames()),
		conns:    map[txKey]*TXConn{},
		bindings: map[*txBinding]struct{}{},
	}
	t.scratch.New = func() any { return &txScratch{} }
	t.dev = s.devs[0]
	t.dev.SetTXClaim(t.claim)
	if b, ok := t.dev.(txBudgeter); ok {
		// Let one kick send a whole ring (the kernel's default is 32
		// descriptors); older kernels lack the option.
		_ = b.SetTXBudget(0)
	}
	ok, err := t.dev.TXProbeMultiBuffer(probeFrame(s.mac), time.Second)
	if err != nil {
		t.dev.SetTXClaim(nil)
		return nil, fmt.Errorf("tx engine: %w", err)
	}
	t.chain = ok
	t.mb = ok && !s.cfg.Lab.TXCopy
	s.tx.eng.Store(t)
	return t, nil
}

// probeFrame is the frame of the multi-buffer probe: to and from the
// stack's own MAC, a local experimental EtherType, padded to 60 bytes.
func probeFrame(mac net.HardwareAddr) []byte {
	f := make([]byte, 60)
	copy(f[0:6], mac)
	copy(f[6:12], mac)
	binary.BigEndian.PutUint16(f[12:], txProbeEtherType)
	copy(f[14:], "xdevmem multi-buffer TX probe")
	return f
}

// closeTX tears the TX side down at Stack.Close: connections are
// forgotten, pending sends are dropped and every span goes back to the
// region.
func (s *Stack) closeTX() {
	s.tx.mu.Lock()
	defer s.tx.mu.Unlock()
	t := s.tx.eng.Load()
	if t == nil {
		return
	}
	t.connsMu.Lock()
	conns := make([]*TXConn, 0, len(t.conns))
	for _, c := range t.conns {
		conns = append(conns, c)
	}
	t.connsMu.Unlock()
	for _, c := range conns {
		c.Close()
		c.abort()
		t.unregister(c)
	}
	t.bmu.Lock()
	bs := make([]*txBinding, 0, len(t.bindings))
	for b := range t.bindings {
		bs = append(bs, b)
	}
	t.bmu.Unlock()
	for _, b := range bs {
		b.Close()
		b.release()
	}
}

// register makes c's segments go through the devmem path.
func (t *txEngine) register(c *TXConn) error {
	t.connsMu.Lock()
	defer t.connsMu.Unlock()
	if _, ok := t.conns[c.key]; ok {
		return fmt.Errorf("tx: connection %v:%d from port %d exists: %w", net.IP(c.key.raddr[:]), c.key.rport, c.key.lport, unix.EADDRINUSE)
	}
	t.conns[c.key] = c
	t.nconns.Add(1)
	return nil
}

func (t *txEngine) unregister(c *TXConn) {
	t.connsMu.Lock()
	if t.conns[c.key] == c {
		delete(t.conns, c.key)
		t.nconns.Add(-1)
	}
	t.connsMu.Unlock()
}

func (t *txEngine) lookup(k txKey) *TXConn {
	t.connsMu.RLock()
	c := t.conns[k]
	t.connsMu.RUnlock()
	return c
}

// claim is the engine's umem.TXClaim: payload addresses in a span are the
// engine's; a TX frame that heads a chain tells its connection the chain
// is done. It runs with the device's TX lock held.
func (t *txEngine) claim(addr uint64) bool {
	f := t.s.region.FrameOf(addr)
	if int(f) >= len(t.owner) {
		return false
	}
	if b := t.owner[f].Load(); b != nil {
		b.put()
		return true
	}
	if ch := t.chains[f]; ch.c != nil {
		t.chains[f] = txChain{}
		ch.c.chainDone(ch.start)
	}
	return false
}

// observe reads the ACK of a received TCP segment of a devmem TX
// connection.
func (t *txEngine) observe(proto tcpip.NetworkProtocolNumber, pkt *gstack.PacketBuffer) {
	var k txKey
	var tcp []byte
	switch proto {
	case header.IPv4ProtocolNumber:
		h, ok := pkt.Data().PullUp(header.IPv4MinimumSize)
		if !ok {
			return
		}
		ip := header.IPv4(h)
		ihl := int(ip.HeaderLength())
		if ip.Protocol() != uint8(header.TCPProtocolNumber) || ip.FragmentOffset() != 0 || ip.More() || ihl < header.IPv4MinimumSize {
			return
		}
		if h, ok = pkt.Data().PullUp(ihl + header.TCPMinimumSize); !ok {
			return
		}
		k.raddr = netipFrom4(h[12:16])
		tcp = h[ihl:]
	case header.IPv6ProtocolNumber:
		h, ok := pkt.Data().PullUp(header.IPv6MinimumSize + header.TCPMinimumSize)
		if !ok || h[6] != uint8(header.TCPProtocolNumber) {
			return
		}
		copy(k.raddr[:], h[8:24])
		tcp = h[header.IPv6MinimumSize:]
	default:
		return
	}
	th := header.TCP(tcp)
	k.rport, k.lport = th.SourcePort(), th.DestinationPort()
	c := t.lookup(k)
	if c == nil {
		return
	}
	flags := th.Flags()
	switch {
	case flags&header.TCPFlagRst != 0:
		c.peerReset()
	case flags&header.TCPFlagAck != 0:
		c.onAck(th.AckNumber())
	}
}

func netipFrom4(b []byte) [16]byte {
	var a [16]byte
	a[10], a[11] = 0xff, 0xff
	copy(a[12:], b)
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
	dl := pkt.Data().Size()
	if (g.Type == gstack.GSOTCPv4 || g.Type == gstack.GSOTCPv6) && g.MSS > 0 && dl > int(g.MSS) {
		return (dl + int(g.MSS) - 1) / int(g.MSS)
	}
	return 1
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
	if tcpHdr != nil && t.nconns.Load() > 0 {
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
			t.buildDevmem(c, addr, f, hl, segLen, ip, tcp, &p, sc)
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

// buildDevmem builds a data segment of a devmem TX connection: dl payload
// bytes whose headers (with the sequence number) are in f already.
func (t *txEngine) buildDevmem(c *TXConn, addr uint64, f []byte, hl, dl int, ipHdr, tcpHdr []byte, p *txPkt, sc *txScratch) {
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
	}
	// The chain is in flight from here until its header frame completes.
	t.chains[t.s.region.FrameOf(addr)] = txChain{c: c, start: start}
	p.chain = true

	mem := t.s.region.Bytes()
	var ck checksum.Checksumer
	ndesc := 0
	for _, pc := range pieces {
		ck.Add(mem[pc.addr : pc.addr+uint64(pc.n)])
		ndesc += int((pc.addr+uint64(pc.n)-1)>>t.shift-pc.addr>>t.shift) + 1
	}
	finishTCPChecksum(ipHdr, tcpHdr, dl, ck.Checksum())
	t.cnt.segments.Add(1)
	t.cnt.dmabufBytes.Add(uint64(dl))

	if t.mb && ndesc <= txMaxPayloadDescs {
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
		pi, po := 0, 0 // piece, offset in it
		t.emitCopy(sc, p, addr, f, hl, dl, func(dst []byte, _ int) {
			for w := 0; w < len(dst); {
				pc := pieces[pi]
				k := copy(dst[w:], mem[pc.addr+uint64(po):pc.addr+uint64(pc.n)])
				w, po = w+k, po+k
				if po == int(pc.n) {
					pi, po = pi+1, 0
				}
			}
		})
		t.cnt.copyPackets.Add(1)
		t.cnt.dmabufCopied.Add(uint64(dl))
	}
	p.end, p.extrae = len(sc.descs), len(sc.extras)
	sc.pkts = append(sc.pkts, *p)
}

// copyPacket copies n bytes of pkt starting at byte off into dst.
func copyPacket(dst []byte, pkt *gstack.PacketBuffer, off, n int) {
	if n == 0 {
		return
	}
	w := 0
	for _, sl := range pkt.AsSlices() {
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

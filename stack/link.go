package stack

import (
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"

	"github.com/xdevmem/xdevmem/umem"
)

// rxBatch is how many descriptors the receive loop takes per ring pass.
const rxBatch = 64

// placeholderSize bounds one segment's payload (a 64 KiB chunk).
const placeholderSize = 1 << 16

// linkEndpoint adapts the AF_XDP socket to gVisor (gVisor's own
// pkg/tcpip/link/xdp does the same for the copying path). Its receive loop
// is the header split: payload bytes stay in the UMEM and gVisor gets the
// headers plus a placeholder payload of the right length.
type linkEndpoint struct {
	s    *Stack
	sock *umem.Socket

	mu         sync.RWMutex
	dispatcher gstack.NetworkDispatcher

	wg      sync.WaitGroup
	stopped atomic.Bool

	// placeholder is one read-only 64 KiB chunk; every dmabuf segment's
	// payload in gVisor is a clone of it, trimmed to the payload length.
	placeholder *buffer.View

	gro gro.GRO

	// kickc asks the kicker goroutine to wake the kernel's TX; kdone stops
	// it (kickc is never closed: WritePackets may still send).
	kickc, kdone chan struct{}

	// inj injects faults (nil: none); receive goroutine only.
	inj *injector

	// txHook receives transmitted frames when there is no socket
	// (in-process tests).
	txHook func(frame []byte)

	// receive-goroutine scratch
	descs [rxBatch]unix.XDPDesc
	free  []uint32
	unpin []uint32
}

var _ gstack.LinkEndpoint = (*linkEndpoint)(nil)

func newLinkEndpoint(s *Stack) *linkEndpoint {
	e := &linkEndpoint{s: s, sock: s.sock, placeholder: buffer.NewViewSize(placeholderSize)}
	if s.cfg.Faults.Enabled() {
		e.inj = newInjector(s.cfg.Faults)
	}
	e.free = make([]uint32, 0, rxBatch)
	e.unpin = make([]uint32, 0, 64)
	return e
}

// MTU implements gstack.LinkEndpoint.
func (e *linkEndpoint) MTU() uint32 { return uint32(e.s.cfg.MTU) }

// SetMTU implements gstack.LinkEndpoint; the MTU is fixed at creation.
func (e *linkEndpoint) SetMTU(uint32) {}

// MaxHeaderLength implements gstack.LinkEndpoint.
func (e *linkEndpoint) MaxHeaderLength() uint16 { return header.EthernetMinimumSize }

// LinkAddress implements gstack.LinkEndpoint.
func (e *linkEndpoint) LinkAddress() tcpip.LinkAddress { return tcpip.LinkAddress(e.s.mac) }

// SetLinkAddress implements gstack.LinkEndpoint; the address is the
// interface's.
func (e *linkEndpoint) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements gstack.LinkEndpoint. The endpoint claims RX
// checksum offload because the header split verifies every IPv4 header and
// TCP checksum itself, as a NIC's offload does (gVisor could not: the
// payload it holds is a placeholder). With Config.TrustChecksum nothing is
// verified, as documented there.
func (e *linkEndpoint) Capabilities() gstack.LinkEndpointCapabilities {
	return gstack.CapabilityResolutionRequired | gstack.CapabilityRXChecksumOffload
}

// ARPHardwareType implements gstack.LinkEndpoint.
func (e *linkEndpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareEther }

// AddHeader implements gstack.LinkEndpoint.
func (e *linkEndpoint) AddHeader(pkt *gstack.PacketBuffer) {
	eth := header.Ethernet(pkt.LinkHeader().Push(header.EthernetMinimumSize))
	eth.Encode(&header.EthernetFields{
		SrcAddr: pkt.EgressRoute.LocalLinkAddress,
		DstAddr: pkt.EgressRoute.RemoteLinkAddress,
		Type:    pkt.NetworkProtocolNumber,
	})
}

// ParseHeader implements gstack.LinkEndpoint.
func (e *linkEndpoint) ParseHeader(pkt *gstack.PacketBuffer) bool {
	_, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize)
	return ok
}

// Attach implements gstack.LinkEndpoint: it starts the receive loop.
func (e *linkEndpoint) Attach(d gstack.NetworkDispatcher) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if d == nil {
		return // NIC removal: stop() ends the loop
	}
	if e.dispatcher != nil {
		return
	}
	e.dispatcher = d
	e.gro.Init(!e.s.cfg.NoGRO)
	e.gro.Dispatcher = d
	if e.sock == nil {
		return // in-process tests feed frames with handleBatch
	}
	e.kickc = make(chan struct{}, 1)
	e.kdone = make(chan struct{})
	e.wg.Add(2)
	go e.rxLoop()
	go e.kicker()
}

// IsAttached implements gstack.LinkEndpoint.
func (e *linkEndpoint) IsAttached() bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.dispatcher != nil
}

// Wait implements gstack.LinkEndpoint.
func (e *linkEndpoint) Wait() {}

// Close implements gstack.LinkEndpoint.
func (e *linkEndpoint) Close() {}

// SetOnCloseAction implements gstack.LinkEndpoint.
func (e *linkEndpoint) SetOnCloseAction(func()) {}

// stop ends the receive loop and waits for it.
func (e *linkEndpoint) stop() {
	e.stopped.Store(true)
	if e.sock != nil {
		e.sock.Wake()
	}
	if e.kdone != nil {
		close(e.kdone)
	}
	e.wg.Wait()
	if e.inj != nil {
		for _, h := range e.inj.held {
			e.s.region.Free(e.s.region.FrameOf(h.addr))
		}
		e.inj.held = nil
	}
}

// handleFaulty is handleBatch's loop with fault injection.
func (e *linkEndpoint) handleFaulty(descs []unix.XDPDesc) {
	in := e.inj
	r := e.s.region
	mem := r.Bytes()
	for _, d := range descs {
		e.ageHeld()
		frame := r.FrameOf(d.Addr)
		if in.f.Drop > 0 && in.rng.Float64() < in.f.Drop {
			in.dropped.Add(1)
			e.free = append(e.free, frame)
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
		e.handle(d)
	}
}

// ageHeld delivers held frames whose wait is over.
func (e *linkEndpoint) ageHeld() {
	in := e.inj
	k := 0
	for _, h := range in.held {
		if h.left <= 0 {
			e.handle(unix.XDPDesc{Addr: h.addr, Len: uint32(h.n)})
			continue
		}
		h.left--
		in.held[k] = h
		k++
	}
	in.held = in.held[:k]
}

// flushHeld delivers every held frame and returns them.
func (e *linkEndpoint) flushHeld() {
	for _, h := range e.inj.held {
		e.handle(unix.XDPDesc{Addr: h.addr, Len: uint32(h.n)})
	}
	e.inj.held = e.inj.held[:0]
	e.gro.Flush()
	if len(e.free) > 0 {
		e.s.region.Free(e.free...)
		e.free = e.free[:0]
	}
	if len(e.unpin) > 0 {
		e.s.region.Unpin(e.unpin...)
		e.unpin = e.unpin[:0]
	}
}

// kicker wakes the kernel's TX for WritePackets until stop.
func (e *linkEndpoint) kicker() {
	defer e.wg.Done()
	for {
		select {
		case <-e.kickc:
			if err := e.sock.Kick(); err != nil {
				e.s.cnt.kickErrors.Add(1)
			}
		case <-e.kdone:
			return
		}
	}
}

// rxLoop is the receive goroutine: refill, take a batch, split, deliver.
func (e *linkEndpoint) rxLoop() {
	defer e.wg.Done()
	r := e.s.region
	r.SetOnFree(e.sock.Wake)
	defer r.SetOnFree(nil)
	for !e.stopped.Load() {
		e.sock.Refill()
		n := e.sock.Receive(e.descs[:])
		if n == 0 && e.inj != nil && len(e.inj.held) > 0 {
			e.flushHeld() // the link went quiet: deliver what reordering held back
			continue
		}
		if n == 0 {
			timeout := 1000
			if e.sock.Fill.Pending() == 0 {
				timeout = 10 // starved: frames come back through tokens
			}
			e.sock.Wait(timeout)
			continue
		}
		e.handleBatch(e.descs[:n])
	}
}

// handleBatch splits and delivers a batch of received descriptors, then
// returns the frames nobody kept.
func (e *linkEndpoint) handleBatch(descs []unix.XDPDesc) {
	r := e.s.region
	e.s.cnt.rxFrames.Add(uint64(len(descs)))
	if e.inj != nil {
		e.handleFaulty(descs)
	} else {
		for _, d := range descs {
			e.handle(d)
		}
	}
	e.gro.Flush()
	if len(e.free) > 0 {
		r.Free(e.free...)
		e.free = e.free[:0]
	}
	if len(e.unpin) > 0 {
		r.Unpin(e.unpin...)
		e.unpin = e.unpin[:0]
	}
}

// handle splits one received frame and hands it to gVisor.
func (e *linkEndpoint) handle(d unix.XDPDesc) {
	s := e.s
	frame := s.region.FrameOf(d.Addr)
	b := s.region.Bytes()[d.Addr : d.Addr+uint64(d.Len)]
	var sp Split
	v := SplitFrame(b, &sp, !s.cfg.TrustChecksum)
	switch {
	case v == VerdictTCP:
	case v == VerdictOther:
		s.cnt.rxOther.Add(1)
		if sp.EtherType == etherTypeARP || sp.FrameLen > 0 {
			e.deliverCopy(b, sp)
		}
		e.free = append(e.free, frame)
		return
	default:
		s.cnt.verdicts[v].Add(1)
		e.free = append(e.free, frame)
		return
	}
	s.cnt.rxTCP.Add(1)
	if !s.isOurs(sp.Dst) {
		s.cnt.dropNotOurs.Add(1)
		e.free = append(e.free, frame)
		return
	}
	key := flowKey{raddr: sp.Src, rport: sp.SrcPort, lport: sp.DstPort}
	if sp.Flags&tcpFlagSyn != 0 {
		if sp.Flags&tcpFlagAck == 0 {
			e.unpin = s.flows.syn(key, sp.Seq+1, e.unpin, &s.cnt)
		}
		e.deliverCopy(b, sp)
		e.free = append(e.free, frame)
		return
	}
	if sp.PayloadLen == 0 {
		e.deliverCopy(b, sp)
		e.free = append(e.free, frame)
		return
	}
	fl := s.flows.lookup(key)
	if fl == nil {
		s.cnt.noFlow.Add(1)
		e.deliverCopy(b, sp)
		e.free = append(e.free, frame)
		return
	}
	kind := kindPlain
	bnd := s.active.Load()
	if bnd != nil {
		kind = kindDmabuf
		if sp.PayloadLen < s.cfg.HDSThresh {
			kind = kindLinear
		}
	}
	fl.mu.Lock()
	k := fl.fq.insert(sp.Seq, sp.PayloadLen, d.Addr+uint64(sp.PayloadOff), frame, kind, bnd)
	fl.mu.Unlock()
	if k < 0 {
		s.cnt.dropOutOfWindow.Add(1)
		e.free = append(e.free, frame)
		return
	}
	if k == 0 {
		s.cnt.retransmitBytes.Add(uint64(sp.PayloadLen))
		e.free = append(e.free, frame)
	}
	for i := 0; i < k; i++ {
		s.region.Pin(frame)
	}
	e.deliverSplit(b, sp)
}

// deliverCopy hands a whole frame to gVisor as a copy (frames without
// payload, ARP, and segments of unknown flows).
func (e *linkEndpoint) deliverCopy(b []byte, sp Split) {
	n := len(b)
	if sp.FrameLen > 0 && sp.FrameLen < n {
		n = sp.FrameLen // strip Ethernet padding
	}
	e.s.cnt.frameCopyBytes.Add(uint64(n))
	pkt := gstack.NewPacketBuffer(gstack.PacketBufferOptions{Payload: buffer.MakeWithData(b[:n])})
	e.dispatch(pkt, sp.EtherType, sp.TCPOff > 0 && !e.s.cfg.TrustChecksum)
}

// deliverSplit hands gVisor the headers (copied) and a placeholder payload.
func (e *linkEndpoint) deliverSplit(b []byte, sp Split) {
	e.s.cnt.headerCopyBytes.Add(uint64(sp.PayloadOff))
	hdr := buffer.NewViewWithData(b[:sp.PayloadOff])
	pl := e.placeholder.Clone()
	pl.CapLength(sp.PayloadLen)
	buf := buffer.MakeWithView(pl)
	buf.Prepend(hdr)
	pkt := gstack.NewPacketBuffer(gstack.PacketBufferOptions{Payload: buf})
	e.dispatch(pkt, sp.EtherType, true)
}

func (e *linkEndpoint) dispatch(pkt *gstack.PacketBuffer, etherType uint16, csumOK bool) {
	defer pkt.DecRef()
	if !e.ParseHeader(pkt) {
		return
	}
	proto := tcpip.NetworkProtocolNumber(etherType)
	pkt.NetworkProtocolNumber = proto
	pkt.RXChecksumValidated = csumOK
	if proto == header.IPv4ProtocolNumber || proto == header.IPv6ProtocolNumber {
		e.gro.Enqueue(pkt)
		return
	}
	e.gro.Dispatcher.DeliverNetworkPacket(proto, pkt)
}

// WritePackets implements gstack.LinkEndpoint: each packet is copied into a
// TX frame; the batch is flushed with one kick.
func (e *linkEndpoint) WritePackets(pkts gstack.PacketBufferList) (int, tcpip.Error) {
	if e.sock == nil {
		return e.writeHook(pkts)
	}
	n := 0
	for _, pkt := range pkts.AsSlice() {
		addr, frame, ok := e.sock.TXBuffer()
		if !ok {
			break
		}
		off := 0
		for _, sl := range pkt.AsSlices() {
			off += copy(frame[off:], sl)
		}
		e.sock.TXQueue(addr, off)
		e.s.cnt.txFrames.Add(1)
		e.s.cnt.txBytes.Add(uint64(off))
		n++
	}
	if e.sock.TXPublish() {
		// The kick runs the transmit (and the peer's receive) inside the
		// syscall; a dedicated goroutine does it so that TCP processing
		// goes on meanwhile.
		select {
		case e.kickc <- struct{}{}:
		default: // a kick is pending already and will send these too
		}
	}
	if n == 0 && pkts.Len() > 0 {
		return 0, &tcpip.ErrNoBufferSpace{}
	}
	return n, nil
}

// writeHook hands transmitted frames to txHook (in-process tests).
func (e *linkEndpoint) writeHook(pkts gstack.PacketBufferList) (int, tcpip.Error) {
	var buf [4096]byte
	for _, pkt := range pkts.AsSlice() {
		off := 0
		for _, sl := range pkt.AsSlices() {
			off += copy(buf[off:], sl)
		}
		e.s.cnt.txFrames.Add(1)
		if e.txHook != nil {
			e.txHook(buf[:off])
		}
	}
	return pkts.Len(), nil
}

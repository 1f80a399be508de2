package stack

import (
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// rxBatch is how many descriptors the receive loop takes per ring pass.
const rxBatch = 64

// placeholderSize bounds one segment's payload (a 64 KiB chunk).
const placeholderSize = 1 << 16

// linkEndpoint adapts the AF_XDP sockets (Devices) to gVisor (gVisor's own
// pkg/tcpip/link/xdp does the same for the copying path). Its receive loop
// is the header split: payload bytes stay in the UMEM and gVisor gets the
// headers plus a placeholder payload of the right length.
type linkEndpoint struct {
	s   *Stack
	dev Device // the device that transmits: queue 0's

	mu         sync.RWMutex
	dispatcher gstack.NetworkDispatcher

	wg      sync.WaitGroup
	stopped atomic.Bool

	// placeholder is one read-only 64 KiB chunk; every dmabuf segment's
	// payload in gVisor is a clone of it, trimmed to the payload length.
	placeholder *buffer.View

	// queues are the receive paths, one per RX queue.
	queues []*rxQueue

	// kickc asks the kicker goroutine to wake the kernel's TX; kdone stops
	// it (kickc is never closed: WritePackets may still send).
	kickc, kdone chan struct{}
}

var _ gstack.LinkEndpoint = (*linkEndpoint)(nil)

func newLinkEndpoint(s *Stack) *linkEndpoint {
	e := &linkEndpoint{s: s, dev: s.devs[0], placeholder: buffer.NewViewSize(placeholderSize)}
	for i, dev := range s.devs {
		e.queues = append(e.queues, newRXQueue(e, i, dev))
	}
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
// payload it holds is a placeholder). With Config.Lab.TrustChecksum nothing is
// verified, as documented there.
//
// In shared-address mode it does not ask for link address resolution: ARP
// and NDP are the kernel's, and AddHeader takes the MAC from the stack's
// neighbour table (neigh.go).
func (e *linkEndpoint) Capabilities() gstack.LinkEndpointCapabilities {
	if e.s.neigh != nil {
		return gstack.CapabilityRXChecksumOffload
	}
	return gstack.CapabilityResolutionRequired | gstack.CapabilityRXChecksumOffload
}

// ARPHardwareType implements gstack.LinkEndpoint.
func (e *linkEndpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareEther }

// AddHeader implements gstack.LinkEndpoint.
func (e *linkEndpoint) AddHeader(pkt *gstack.PacketBuffer) {
	dst := pkt.EgressRoute.RemoteLinkAddress
	if e.s.neigh != nil {
		dst = e.s.neigh.destMAC(pkt.EgressRoute.NextHop, pkt.EgressRoute.RemoteAddress)
	}
	eth := header.Ethernet(pkt.LinkHeader().Push(header.EthernetMinimumSize))
	eth.Encode(&header.EthernetFields{
		SrcAddr: pkt.EgressRoute.LocalLinkAddress,
		DstAddr: dst,
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
	for _, q := range e.queues {
		q.gro.Init(!e.s.cfg.Lab.NoGRO)
		q.gro.Dispatcher = d
	}
	// Frames freed by tokens may end a fill-ring starvation on any queue.
	e.s.region.SetOnFree(func() {
		for _, q := range e.queues {
			q.dev.Wake()
		}
	})
	e.kickc = make(chan struct{}, 1)
	e.kdone = make(chan struct{})
	e.wg.Add(1 + len(e.queues))
	for _, q := range e.queues {
		go q.rxLoop()
	}
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
	for _, q := range e.queues {
		q.dev.Wake()
	}
	if e.kdone != nil {
		close(e.kdone)
	}
	e.wg.Wait()
	e.s.region.SetOnFree(nil)
	for _, q := range e.queues {
		if q.inj != nil {
			for _, h := range q.inj.held {
				e.s.region.Free(e.s.region.FrameOf(h.addr))
			}
			q.inj.held = nil
		}
	}
}

// kicker wakes the kernel's TX for WritePackets until stop.
func (e *linkEndpoint) kicker() {
	defer e.wg.Done()
	for {
		select {
		case <-e.kickc:
			if err := e.dev.TXKick(); err != nil {
				e.s.cnt.kickErrors.Add(1)
			}
		case <-e.kdone:
			return
		}
	}
}

// linkTXBatch is how many frames WritePackets takes from the socket at a
// time.
const linkTXBatch = 64

// linkTXScratch is WritePackets' scratch: arrays handed to the Device
// interface escape, so they come from a pool instead of the stack (an
// allocation per ACK otherwise).
type linkTXScratch struct {
	addrs [linkTXBatch]uint64
	descs [linkTXBatch]unix.XDPDesc
}

var linkTXScratchPool = sync.Pool{New: func() any { return new(linkTXScratch) }}

// WritePackets implements gstack.LinkEndpoint: each packet is copied into a
// TX frame; the batch is flushed with one kick.
func (e *linkEndpoint) WritePackets(pkts gstack.PacketBufferList) (int, tcpip.Error) {
	list := pkts.AsSlice()
	sc := linkTXScratchPool.Get().(*linkTXScratch)
	defer linkTXScratchPool.Put(sc)
	addrs, descs := &sc.addrs, &sc.descs
	n := 0
	for n < len(list) {
		k := e.dev.TXAcquire(addrs[:min(len(list)-n, linkTXBatch)])
		if k == 0 {
			break
		}
		for i, pkt := range list[n : n+k] {
			frame := e.dev.TXFrame(addrs[i])
			n := min(pkt.Size(), len(frame))
			copyPacket(frame, pkt, 0, n)
			descs[i] = unix.XDPDesc{Addr: addrs[i], Len: uint32(n)}
		}
		q, _ := e.dev.TXProduce(descs[:k])
		for _, d := range descs[:q] {
			e.s.cnt.txFrames.Add(1)
			e.s.cnt.txBytes.Add(uint64(d.Len))
		}
		n += q
		if q < k {
			e.dev.TXRelease(addrs[q:k]...)
			break
		}
	}
	if len(list) > 0 {
		// (Also when frames ran out: a kick drains and completes them.)
		// The kick runs the transmit (and the peer's receive) inside the
		// syscall; a dedicated goroutine does it so that TCP processing
		// goes on meanwhile.
		select {
		case e.kickc <- struct{}{}:
		default: // a kick is pending already and will send these too
		}
	}
	if n == 0 && len(list) > 0 {
		return 0, &tcpip.ErrNoBufferSpace{}
	}
	return n, nil
}

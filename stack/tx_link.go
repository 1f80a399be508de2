package stack

import (
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

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
	if t := p.s.tx.eng.Load(); t != nil && t.anyConns() {
		t.observe(proto, pkt)
	}
	p.d.DeliverNetworkPacket(proto, pkt)
}

// DeliverLinkPacket implements gstack.NetworkDispatcher.
func (p *txTap) DeliverLinkPacket(proto tcpip.NetworkProtocolNumber, pkt *gstack.PacketBuffer) {
	p.d.DeliverLinkPacket(proto, pkt)
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

package tests

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/xdevmem/xdevmem/internal/harness"
	"github.com/xdevmem/xdevmem/internal/testutil"
)

// TestIPv4Fragments: a peer sends a hand-built TCP stream in which every
// other segment is split into two or three IPv4 fragments (sometimes last
// fragment first). The connection receives exactly the bytes sent, in
// order; the reassembled segments' payload arrives as ordinary bytes
// (readable memory in the kernel: no devmem control message), the rest as
// dmabuf fragments.
func TestIPv4Fragments(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	w := newWorld(t, harness.Options{})
	peer := newRawPeer(t, w)

	data := make([]byte, 300<<10+123)
	for i := range data {
		data[i] = byte(i*7 + i>>10)
	}
	// Every other segment, but not the short last one: it would fit the
	// first fragment.
	fragmented := func(off int) bool { return (off/rawMSS)%2 == 0 && len(data)-off >= 1024 }
	var wantLinear uint64
	for off := 0; off < len(data); off += rawMSS {
		if fragmented(off) {
			wantLinear += uint64(min(rawMSS, len(data)-off))
		}
	}

	connc := acceptOne(t, w)
	if err := peer.connect(); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	conn := <-connc
	if conn == nil {
		t.FailNow()
	}
	defer conn.Close()
	type result struct {
		got []byte
		res harness.Result
		err error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		r.res, r.err = harness.Receive(conn, w.Binding, harness.ReceiveOptions{Sink: func(b []byte) error {
			r.got = append(r.got, b...)
			return nil
		}})
		done <- r
	}()
	if err := peer.send(data, fragmented); err != nil {
		t.Fatalf("send: %v", err)
	}
	if err := peer.finish(); err != nil {
		t.Fatalf("fin: %v", err)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("receiver did not reach the end of the stream")
	}
	if r.err != nil {
		t.Fatalf("receive: %v (after %d bytes)", r.err, len(r.got))
	}
	if !bytes.Equal(r.got, data) {
		t.Fatalf("received %d bytes, want %d; first difference at %d", len(r.got), len(data), firstDiff(r.got, data))
	}
	st := w.Stack.Stats()
	if r.res.PlainBytes != wantLinear || r.res.LinearBytes != 0 || r.res.DmabufBytes != uint64(len(data))-wantLinear {
		t.Errorf("plain %d linear %d dmabuf %d bytes; want plain %d (the fragmented segments), dmabuf %d", r.res.PlainBytes, r.res.LinearBytes, r.res.DmabufBytes, wantLinear, uint64(len(data))-wantLinear)
	}
	if st.IPReassembled == 0 || st.IPFragments < 2*st.IPReassembled {
		t.Errorf("fragments %d, reassembled %d", st.IPFragments, st.IPReassembled)
	}
	checkStats(t, st)
	t.Logf("%d bytes, %d fragments, %d segments reassembled, %d fragment drops, %d retransmissions by the peer",
		len(data), st.IPFragments, st.IPReassembled, st.IPFragmentDrops, peer.retransmits)
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// rawMSS is the hand-built stream's segment size.
const rawMSS = 1448

// rawPeer is a TCP sender built by hand on an AF_PACKET socket in the peer
// namespace, under an address and MAC no kernel has (so no kernel TCP
// answers the stack with resets); it answers the stack's ARP requests for
// that address itself.
type rawPeer struct {
	t            *testing.T
	fd           int
	ifindex      int
	mac, stackMA net.HardwareAddr
	addr, stack  netip.Addr
	sport, dport uint16
	isn, rcvNxt  uint32
	ipID         uint16
	acks         chan rawAck
	fin          uint32 // sequence number of the FIN, once the data is sent
	retransmits  int
}

// rawAck is what the peer learns from one segment of the stack.
type rawAck struct {
	flags  header.TCPFlags
	seq    uint32
	ack    uint32
	window uint16
}

func newRawPeer(t *testing.T, w *harness.World) *rawPeer {
	t.Helper()
	p := &rawPeer{t: t, fd: -1, ifindex: w.Pair.PeerIndex,
		mac:     net.HardwareAddr{0x02, 0x66, 0x72, 0x61, 0x67, 0x01},
		stackMA: w.Pair.EmuMAC,
		stack:   w.Pair.EmuAddr.Addr(),
		sport:   40777, dport: w.Port, isn: 0x10203040, ipID: 1,
		acks: make(chan rawAck, 1024)}
	a := w.Pair.EmuAddr.Addr().As4()
	a[3] = 200
	p.addr = netip.AddrFrom4(a)
	err := w.Pair.Peer.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		p.fd = fd
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: p.ifindex})
	})
	if err != nil {
		if p.fd >= 0 {
			unix.Close(p.fd)
		}
		t.Fatalf("packet socket: %v", err)
	}
	tv := unix.Timeval{Usec: 100000}
	unix.SetsockoptTimeval(p.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.readLoop(stop)
	}()
	t.Cleanup(func() {
		close(stop)
		wg.Wait()
		unix.Close(p.fd)
	})
	return p
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// readLoop answers ARP for the peer's address and passes the stack's TCP
// segments to p.acks.
func (p *rawPeer) readLoop(stop <-chan struct{}) {
	buf := make([]byte, 65536)
	for {
		select {
		case <-stop:
			return
		default:
		}
		n, from, err := unix.Recvfrom(p.fd, buf, 0)
		if err != nil {
			continue // the receive timeout, to look at stop
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		f := buf[:n]
		if len(f) < header.EthernetMinimumSize {
			continue
		}
		eth := header.Ethernet(f)
		switch eth.Type() {
		case header.ARPProtocolNumber:
			p.answerARP(f[header.EthernetMinimumSize:])
		case header.IPv4ProtocolNumber:
			ip := header.IPv4(f[header.EthernetMinimumSize:])
			if !ip.IsValid(len(ip)) || ip.TransportProtocol() != header.TCPProtocolNumber ||
				ip.DestinationAddress() != tcpip.AddrFrom4(p.addr.As4()) {
				continue
			}
			tcp := header.TCP(ip.Payload())
			if len(tcp) < header.TCPMinimumSize || tcp.DestinationPort() != p.sport {
				continue
			}
			a := rawAck{flags: tcp.Flags(), seq: tcp.SequenceNumber(), ack: tcp.AckNumber(), window: tcp.WindowSize()}
			select {
			case p.acks <- a:
			default:
			}
		}
	}
}

func (p *rawPeer) answerARP(b []byte) {
	arp := header.ARP(b)
	if !arp.IsValid() || arp.Op() != header.ARPRequest || !bytes.Equal(arp.ProtocolAddressTarget(), p.addr.AsSlice()) {
		return
	}
	f := make([]byte, header.EthernetMinimumSize+header.ARPSize)
	header.Ethernet(f).Encode(&header.EthernetFields{
		SrcAddr: tcpip.LinkAddress(p.mac), DstAddr: tcpip.LinkAddress(arp.HardwareAddressSender()), Type: header.ARPProtocolNumber})
	r := header.ARP(f[header.EthernetMinimumSize:])
	r.SetIPv4OverEthernet()
	r.SetOp(header.ARPReply)
	copy(r.HardwareAddressSender(), p.mac)
	copy(r.ProtocolAddressSender(), p.addr.AsSlice())
	copy(r.HardwareAddressTarget(), arp.HardwareAddressSender())
	copy(r.ProtocolAddressTarget(), arp.ProtocolAddressSender())
	p.write(f)
}

func (p *rawPeer) write(f []byte) {
	if _, err := unix.Write(p.fd, f); err != nil {
		p.t.Errorf("packet socket write: %v", err)
	}
}

// segment builds an IPv4 TCP segment (IP header and TCP) from the peer.
func (p *rawPeer) segment(flags header.TCPFlags, seq uint32, opts, payload []byte) []byte {
	tcpLen := header.TCPMinimumSize + len(opts) + len(payload)
	b := make([]byte, header.IPv4MinimumSize+tcpLen)
	src, dst := tcpip.AddrFrom4(p.addr.As4()), tcpip.AddrFrom4(p.stack.As4())
	tcp := header.TCP(b[header.IPv4MinimumSize:])
	tcp.Encode(&header.TCPFields{SrcPort: p.sport, DstPort: p.dport, SeqNum: seq, AckNum: p.rcvNxt,
		DataOffset: uint8(header.TCPMinimumSize + len(opts)), Flags: flags, WindowSize: 65535})
	copy(tcp[header.TCPMinimumSize:], opts)
	copy(tcp[header.TCPMinimumSize+len(opts):], payload)
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(tcpLen))
	tcp.SetChecksum(^checksum.Checksum(tcp, xsum))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber),
		SrcAddr: src, DstAddr: dst, Flags: header.IPv4FlagDontFragment})
	ip.SetChecksum(^ip.CalculateChecksum())
	return b
}

// transmit sends an IPv4 packet in one frame, or in fragments of the given
// data sizes (multiples of 8; the last takes the rest), last first if
// reverse.
func (p *rawPeer) transmit(pkt []byte, sizes []int, reverse bool) {
	ip := header.IPv4(pkt)
	payload := ip.Payload()
	var frames [][]byte
	frame := func(ipPkt []byte) []byte {
		f := make([]byte, header.EthernetMinimumSize+len(ipPkt))
		header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(p.mac), DstAddr: tcpip.LinkAddress(p.stackMA), Type: header.IPv4ProtocolNumber})
		copy(f[header.EthernetMinimumSize:], ipPkt)
		return f
	}
	if len(sizes) == 0 {
		frames = append(frames, frame(pkt))
	} else {
		p.ipID++
		off := 0
		for i := 0; off < len(payload); i++ {
			n := len(payload) - off
			if i < len(sizes) && sizes[i] < n {
				n = sizes[i]
			}
			var flags uint8
			if off+n < len(payload) {
				flags = header.IPv4FlagMoreFragments
			}
			fb := make([]byte, header.IPv4MinimumSize+n)
			fip := header.IPv4(fb)
			fip.Encode(&header.IPv4Fields{TotalLength: uint16(len(fb)), ID: p.ipID, Flags: flags, FragmentOffset: uint16(off),
				TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: ip.SourceAddress(), DstAddr: ip.DestinationAddress()})
			fip.SetChecksum(^fip.CalculateChecksum())
			copy(fb[header.IPv4MinimumSize:], payload[off:off+n])
			frames = append(frames, frame(fb))
			off += n
		}
	}
	if reverse {
		for i, j := 0, len(frames)-1; i < j; i, j = i+1, j-1 {
			frames[i], frames[j] = frames[j], frames[i]
		}
	}
	for _, f := range frames {
		p.write(f)
	}
}

// waitAck returns the next segment from the stack, or false after d.
func (p *rawPeer) waitAck(d time.Duration) (rawAck, bool) {
	select {
	case a := <-p.acks:
		return a, true
	case <-time.After(d):
		return rawAck{}, false
	}
}

// connect does the three-way handshake (MSS 1448, no window scaling).
func (p *rawPeer) connect() error {
	mss := []byte{2, 4, byte(rawMSS >> 8), byte(rawMSS & 0xff)}
	for try := 0; try < 20; try++ {
		p.transmit(p.segment(header.TCPFlagSyn, p.isn, mss, nil), nil, false)
		deadline := time.Now().Add(500 * time.Millisecond)
		for time.Now().Before(deadline) {
			a, ok := p.waitAck(time.Until(deadline))
			if !ok {
				break
			}
			if a.flags&(header.TCPFlagSyn|header.TCPFlagAck) == header.TCPFlagSyn|header.TCPFlagAck && a.ack == p.isn+1 {
				p.rcvNxt = a.seq + 1
				p.transmit(p.segment(header.TCPFlagAck, p.isn+1, nil, nil), nil, false)
				return nil
			}
		}
	}
	return errors.New("no SYN-ACK from the stack")
}

// send transmits data go-back-N within the stack's window, segments at
// stream offsets where fragmented says so in IPv4 fragments.
func (p *rawPeer) send(data []byte, fragmented func(off int) bool) error {
	base := p.isn + 1
	una, nxt := 0, 0
	window := 65535
	stalls := 0
	for una < len(data) {
		for nxt < len(data) && nxt-una < min(window, 32*rawMSS) {
			n := min(rawMSS-nxt%rawMSS, len(data)-nxt)
			pkt := p.segment(header.TCPFlagAck|header.TCPFlagPsh, base+uint32(nxt), nil, data[nxt:nxt+n])
			var sizes []int
			if fragmented(nxt) {
				// Two or three fragments, by segment: the TCP header and
				// some data, then the rest in one or two pieces.
				if (nxt/rawMSS)%4 == 0 {
					sizes = []int{512, 504}
				} else {
					sizes = []int{728}
				}
			}
			p.transmit(pkt, sizes, (nxt/rawMSS)%3 == 0)
			nxt += n
		}
		a, ok := p.waitAck(300 * time.Millisecond)
		if !ok {
			if stalls++; stalls > 50 {
				return fmt.Errorf("no progress at offset %d of %d", una, len(data))
			}
			p.retransmits++
			nxt = una // go back N
			continue
		}
		if a.flags&header.TCPFlagAck == 0 {
			continue
		}
		if off := int(a.ack - base); off > una && off <= len(data) {
			una, stalls = off, 0
			if nxt < una {
				nxt = una
			}
		}
		window = int(a.window)
	}
	p.fin = base + uint32(len(data))
	return nil
}

// finish sends FIN and waits until the stack acknowledged it.
func (p *rawPeer) finish() error {
	for try := 0; try < 20; try++ {
		p.transmit(p.segment(header.TCPFlagFin|header.TCPFlagAck, p.fin, nil, nil), nil, false)
		deadline := time.Now().Add(300 * time.Millisecond)
		for time.Now().Before(deadline) {
			a, ok := p.waitAck(time.Until(deadline))
			if !ok {
				break
			}
			if a.flags&header.TCPFlagAck != 0 && a.ack == p.fin+1 {
				return nil
			}
		}
	}
	return errors.New("FIN not acknowledged")
}

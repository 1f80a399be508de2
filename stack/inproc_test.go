package stack

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/umem"
	"github.com/xdevmem/xdevmem/umem/umemtest"
	"golang.org/x/sys/unix"
)

// The in-process harness runs the real stack (receive loop, split, fragment
// queue, gVisor TCP, RecvMsg, tokens, the TX paths) on a fake AF_XDP socket
// (umemtest.Device, through NewOn): frames are injected as the kernel would
// receive them, and what the stack transmits comes back through the
// device's transmit callback. No privileges, no kernel in the loop.

var (
	ipStack = [4]byte{10, 9, 0, 2}
	ipPeer  = [4]byte{10, 9, 0, 1}
	macPeer = []byte{2, 0, 0, 0, 0, 1}
	macEmu  = []byte{2, 0, 0, 0, 0, 2}
)

type inproc struct {
	t   testing.TB
	s   *Stack
	dev *umemtest.Device // queue 0's: it transmits
	ack chan []byte

	discard atomic.Bool // transmitted frames are dropped, not kept
}

// inprocRcvBuf is the in-process stacks' receive buffer unless the test
// sets one (lowered, as New lowers it, to what the UMEM's budget allows).
const inprocRcvBuf = 1 << 20

var _ Device = (*umemtest.Device)(nil)

func newInproc(t testing.TB, cfg Config) *inproc {
	t.Helper()
	if cfg.RegionSize == 0 {
		cfg.RegionSize = 16 << 20
	}
	if cfg.RcvBuf == 0 {
		cfg.RcvBuf = inprocRcvBuf
	}
	cfg.MTU = 1500
	cfg.Addr = netip.PrefixFrom(netip.AddrFrom4(ipStack), 24)
	ip := &inproc{t: t, ack: make(chan []byte, 1024)}
	s, err := NewOn(cfg, Link{MAC: macEmu, Open: func(r *umem.Region, sc umem.SocketConfig) (Device, error) {
		d, err := umemtest.New(r, sc, umemtest.Options{Transmit: ip.transmitted})
		if err == nil && ip.dev == nil {
			ip.dev = d
		}
		return d, err
	}})
	if err != nil {
		t.Fatal(err)
	}
	ip.s = s
	s.ns.AddStaticNeighbor(1, ipv4.ProtocolNumber, tcpip.AddrFrom4(ipPeer), tcpip.LinkAddress(macPeer))
	t.Cleanup(func() { s.Close() })
	return ip
}

// transmitted is the default transmit callback: frames go to ack (waitTX),
// as many as it holds.
func (ip *inproc) transmitted(f []byte) {
	if ip.discard.Load() {
		return
	}
	c := append([]byte(nil), f...)
	select {
	case ip.ack <- c:
	default:
	}
}

// segment builds a frame from the peer with valid checksums.
func segment(sport, dport uint16, seq, ack uint32, flags uint8, opts, payload []byte) []byte {
	doff := 20 + len(opts)
	b := make([]byte, 14+20+doff+len(payload))
	copy(b[0:6], macEmu)
	copy(b[6:12], macPeer)
	binary.BigEndian.PutUint16(b[12:], etherTypeIPv4)
	ip := b[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+doff+len(payload)))
	binary.BigEndian.PutUint16(ip[6:], 0x4000)
	ip[8] = 64
	ip[9] = ipProtoTCP
	copy(ip[12:], ipPeer[:])
	copy(ip[16:], ipStack[:])
	binary.BigEndian.PutUint16(ip[10:], ^checksum.Checksum(ip[:20], 0))
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], dport)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint32(tcp[8:], ack)
	tcp[12] = byte(doff/4) << 4
	tcp[13] = flags
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	copy(tcp[20:], opts)
	copy(tcp[doff:], payload)
	var ph [12]byte
	copy(ph[:8], ip[12:20])
	ph[9] = ipProtoTCP
	binary.BigEndian.PutUint16(ph[10:], uint16(doff+len(payload)))
	binary.BigEndian.PutUint16(tcp[16:], ^checksum.Checksum(tcp[:doff+len(payload)], checksum.Checksum(ph[:], 0)))
	return b
}

// inject delivers frames to the stack as the kernel would receive them
// and returns once the receive loop has handled them. A frame the device
// drops (no fill frame) fails the test.
func (ip *inproc) inject(frames ...[]byte) {
	for len(frames) > 0 {
		n := min(len(frames), rxBatch)
		if got := ip.dev.Inject(frames[:n]...); got != n {
			st, _ := ip.dev.Stats()
			ip.t.Fatalf("%d of %d frames delivered: %+v, %v", got, n, st, ip.s.region.Snapshot())
		}
		frames = frames[n:]
	}
}

// waitTX returns the next transmitted TCP frame.
func (ip *inproc) waitTX() []byte {
	select {
	case f := <-ip.ack:
		return f
	case <-time.After(5 * time.Second):
		ip.t.Fatal("no frame transmitted")
		return nil
	}
}

// bindListen binds queue 0 and listens on port 5201 of the stack.
func (ip *inproc) bindListen(t testing.TB) devmemapi.Listener {
	t.Helper()
	if _, err := ip.s.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}}); err != nil {
		t.Fatal(err)
	}
	ln, err := ip.s.Listen(netip.AddrPortFrom(netip.Addr{}, 5201))
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// connect performs the handshake from the fake peer and accepts it. It
// returns the accepted Conn and the peer's next sequence number.
func (ip *inproc) connect(ln devmemapi.Listener, sport uint16, isn uint32) (*Conn, uint32) {
	opts := []byte{2, 4, 0x05, 0xb4, 1, 3, 3, 7} // MSS 1460, NOP, WS 7
	ip.inject(segment(sport, 5201, isn, 0, tcpFlagSyn, opts, nil))
	synack := ip.waitTX()
	srvISN := binary.BigEndian.Uint32(synack[14+20+4:])
	ip.inject(segment(sport, 5201, isn+1, srvISN+1, tcpFlagAck, nil, nil))
	c, err := ln.Accept()
	if err != nil {
		ip.t.Fatal(err)
	}
	return c.(*Conn), isn + 1
}

// recvAll reads want bytes as a devmem app and returns the tokens.
func recvAll(t testing.TB, c *Conn, want int, p, oob []byte, frags []devmemapi.Frag, toks []devmemapi.DmabufToken, check func([]byte)) {
	for got := 0; got < want; {
		n, err := recvOnce(t, c, p, oob, frags, toks, check)
		if err != nil {
			t.Fatal(err)
		}
		got += n
	}
}

// recvOnce is one RecvMsg of recvAll; it returns the error of RecvMsg (a
// deadline's, say) and fails the test on others. Ordinary bytes (no
// cmsg) and linear parts come from p, in order; dmabuf fragments from the
// region.
func recvOnce(t testing.TB, c *Conn, p, oob []byte, frags []devmemapi.Frag, toks []devmemapi.DmabufToken, check func([]byte)) (int, error) {
	mem := c.s.region.Bytes()
	n, fs, err := devmemapi.RecvFrags(c, p, oob, frags, 0)
	if err != nil {
		return 0, err
	}
	toks = toks[:0]
	if len(fs) == 0 && check != nil {
		check(p[:n]) // ordinary bytes
	}
	pos := 0
	for _, f := range fs {
		if check != nil {
			if f.Linear {
				check(p[pos : pos+int(f.FragSize)])
				pos += int(f.FragSize)
			} else {
				check(mem[f.FragOffset : f.FragOffset+uint64(f.FragSize)])
			}
		}
		if !f.Linear {
			toks = append(toks, devmemapi.DmabufToken{TokenStart: f.FragToken, TokenCount: 1})
		}
	}
	for len(toks) > 0 {
		k := min(len(toks), devmemapi.MaxDontNeedTokens)
		if _, err := c.DontNeed(toks[:k]); err != nil {
			t.Fatal(err)
		}
		toks = toks[k:]
	}
	return n, nil
}

// peerLoop is a TCP peer's send loop after a hole: until the application
// has read want bytes, it sends the segment (next) holding the first byte
// not read and reads what comes, sending that segment again when nothing
// does — gVisor's segment queue refuses data while it is over its receive
// buffer, and a peer then retransmits on its timer. It fails the test when
// nothing comes for several seconds.
func (ip *inproc) peerLoop(c *Conn, want int, next func(read int) []byte, got *[]byte) {
	ip.t.Helper()
	p := make([]byte, 1<<20)
	oob := make([]byte, 256*devmemapi.CmsgSpaceDmabuf)
	defer c.SetReadDeadline(time.Time{})
	idle := time.Duration(0)
	for len(*got) < want {
		ip.inject(next(len(*got)))
		const rto = 100 * time.Millisecond
		c.SetReadDeadline(time.Now().Add(rto))
		n, err := recvOnce(ip.t, c, p, oob, nil, nil, func(b []byte) { *got = append(*got, b...) })
		switch {
		case err == nil && n > 0:
			idle = 0
		case err == nil || errors.Is(err, os.ErrDeadlineExceeded):
			if idle += rto; idle > 5*time.Second {
				ip.t.Fatalf("nothing delivered for %v after %d of %d bytes: %+v", idle, len(*got), want, ip.s.Stats())
			}
		default:
			ip.t.Fatal(err)
		}
	}
}

func TestInprocReceive(t *testing.T) {
	ip := newInproc(t, Config{})
	ln := ip.bindListen(t)
	c, seq := ip.connect(ln, 40001, 1000)
	payload := make([]byte, 1448)
	var want []byte
	var segs [][]byte
	// Out of order and duplicated: 0, 2, 1, 1, 3 ...
	for i := 0; i < 40; i++ {
		for j := range payload {
			payload[j] = byte(i*7 + j)
		}
		want = append(want, payload...)
		segs = append(segs, segment(40001, 5201, seq+uint32(i*1448), 1, tcpFlagAck, nil, payload))
	}
	order := []int{}
	for i := 0; i < 40; i += 2 {
		order = append(order, i+1, i, i)
	}
	for _, i := range order {
		ip.inject(segs[i])
	}
	var got []byte
	p := make([]byte, 1<<20)
	oob := make([]byte, 256*devmemapi.CmsgSpaceDmabuf)
	recvAll(t, c, len(want), p, oob, nil, nil, func(b []byte) { got = append(got, b...) })
	if string(got) != string(want) {
		t.Fatalf("stream differs (%d vs %d bytes)", len(got), len(want))
	}
	st := ip.s.Stats()
	if st.DmabufBytesCopied != 0 || st.Unmapped != 0 || st.RetransmitBytes != 20*1448 {
		t.Fatalf("stats: copied %d unmapped %d retransmit %d", st.DmabufBytesCopied, st.Unmapped, st.RetransmitBytes)
	}
	// Corrupted frames are dropped by the split and never delivered.
	bad := segment(40001, 5201, seq+40*1448, 1, tcpFlagAck, nil, payload)
	bad[len(bad)-5] ^= 0x40
	ip.inject(bad)
	if st := ip.s.Stats(); st.DropBadTCPChecksum != 1 {
		t.Fatalf("bad checksum drops %d", st.DropBadTCPChecksum)
	}
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, _, err := c.RecvMsg(p, oob, devmemapi.MSG_SOCK_DEVMEM); err == nil {
		t.Fatal("corrupted segment delivered")
	}
	c.Close()
	if a := ip.s.region.Snapshot(); a.Pinned != 0 || a.Held != 0 {
		t.Fatalf("after close: %v", a)
	}
}

// TestInprocCoalesce: in-order segments of one flow taken in one batch
// reach gVisor as bursts, broken where the headers differ (options) and
// after a PSH; the stream arrives whole and uncopied.
func TestInprocCoalesce(t *testing.T) {
	ip := newInproc(t, Config{})
	ln := ip.bindListen(t)
	c, seq := ip.connect(ln, 40002, 5000)
	ts := []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0}
	payload := make([]byte, 1448)
	var want []byte
	var segs [][]byte
	for i := 0; i < 40; i++ {
		for j := range payload {
			payload[j] = byte(i*13 + j)
		}
		want = append(want, payload...)
		flags, opts := uint8(tcpFlagAck), []byte(nil)
		if i == 9 {
			flags |= tcpFlagPsh
		}
		if i >= 20 {
			opts = ts
		}
		segs = append(segs, segment(40002, 5201, seq+uint32(i*1448), 1, flags, opts, payload))
	}
	before := ip.s.Stats()
	ip.inject(segs...)
	var got []byte
	p := make([]byte, 1<<20)
	oob := make([]byte, 256*devmemapi.CmsgSpaceDmabuf)
	recvAll(t, c, len(want), p, oob, nil, nil, func(b []byte) { got = append(got, b...) })
	if string(got) != string(want) {
		t.Fatalf("stream differs (%d vs %d bytes)", len(got), len(want))
	}
	st := ip.s.Stats()
	merged := st.RxCoalesced - before.RxCoalesced
	// Bursts 0–9 (PSH), 10–19, 20–39 (options differ): at most 37 merges,
	// fewer if the loop took the frames in more than one batch.
	if merged == 0 || merged > 37 {
		t.Fatalf("%d segments coalesced, want 1 to 37", merged)
	}
	if st.DmabufBytesCopied != 0 || st.Unmapped != 0 {
		t.Fatalf("stats: copied %d unmapped %d", st.DmabufBytesCopied, st.Unmapped)
	}
	c.Close()
	if a := ip.s.region.Snapshot(); a.Pinned != 0 || a.Held != 0 {
		t.Fatalf("after close: %v", a)
	}
}

// BenchmarkRXPath is the per-segment cost of the whole emulated devmem
// receive path besides the kernel: header split with checksum check,
// fragment queue, gVisor TCP (with GRO), RecvMsg with cmsgs, DontNeed.
// Allocations are per segment.
func BenchmarkRXPath(b *testing.B) {
	for _, tc := range []struct {
		name  string
		trust bool
		auto  bool
	}{{"verify/autorelease=0", false, false}, {"trust-checksum/autorelease=0", true, false}, {"verify/autorelease=1", false, true}} {
		b.Run(tc.name, func(b *testing.B) {
			ip := newInproc(b, Config{Lab: Lab{TrustChecksum: tc.trust}})
			auto := tc.auto
			if _, err := ip.s.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}, Autorelease: &auto}); err != nil {
				b.Fatal(err)
			}
			ln, err := ip.s.Listen(netip.AddrPortFrom(netip.Addr{}, 5201))
			if err != nil {
				b.Fatal(err)
			}
			c, seq := ip.connect(ln, 40002, 5000)
			const batch = 32
			payload := make([]byte, 1448)
			frames := make([][]byte, batch)
			p := make([]byte, 1<<20)
			oob := make([]byte, 256*devmemapi.CmsgSpaceDmabuf)
			frags := make([]devmemapi.Frag, 0, 256)
			toks := make([]devmemapi.DmabufToken, 0, 256)
			// Pre-build one round of frames; sequence numbers are patched.
			for i := range frames {
				frames[i] = segment(40002, 5201, 0, 1, tcpFlagAck, nil, payload)
			}
			b.SetBytes(1448)
			b.ReportAllocs()
			b.ResetTimer()
			for done := 0; done < b.N; done += batch {
				for i := range frames {
					setSeq(frames[i], seq+uint32(i*1448))
				}
				ip.inject(frames...)
				recvAll(b, c, batch*1448, p, oob, frags, toks, nil)
				seq += batch * 1448
			}
			b.StopTimer()
			if st := ip.s.Stats(); st.DmabufBytesCopied != 0 || st.Unmapped != 0 {
				b.Fatalf("copied %d unmapped %d", st.DmabufBytesCopied, st.Unmapped)
			}
			c.Close()
		})
	}
}

// setSeq rewrites a frame's sequence number and fixes the TCP checksum
// incrementally (RFC 1624).
func setSeq(f []byte, seq uint32) {
	tcp := f[14+20:]
	old := binary.BigEndian.Uint32(tcp[4:])
	binary.BigEndian.PutUint32(tcp[4:], seq)
	sum := ^binary.BigEndian.Uint16(tcp[16:])
	sum = checksum.Combine(sum, ^uint16(old>>16))
	sum = checksum.Combine(sum, ^uint16(old))
	sum = checksum.Combine(sum, uint16(seq>>16))
	sum = checksum.Combine(sum, uint16(seq))
	binary.BigEndian.PutUint16(tcp[16:], ^sum)
}

// TestLinkWritePacketsAllocs: the link's transmit (every ACK of a devmem
// RX connection) allocates nothing per call.
func TestLinkWritePacketsAllocs(t *testing.T) {
	ip := newInproc(t, Config{})
	pkt := gstack.NewPacketBuffer(gstack.PacketBufferOptions{Payload: buffer.MakeWithData(segment(1, 2, 3, 4, tcpFlagAck, nil, nil))})
	defer pkt.DecRef()
	var list gstack.PacketBufferList
	list.PushBack(pkt)
	ip.discard.Store(true)       // measure the link, not the test's capture
	ip.s.link.WritePackets(list) // warm the pool
	allocs := testing.AllocsPerRun(200, func() {
		if n, err := ip.s.link.WritePackets(list); n != 1 || err != nil {
			t.Fatalf("WritePackets: %d, %v", n, err)
		}
		ip.s.link.dev.TXKick() // complete the frame
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per WritePackets", allocs)
	}
}

// TestEmptyRecvAllocs: a non-blocking receive, or an error-queue read,
// that finds nothing (a poll loop's every call, and libxdevmem's receive before
// it sleeps) returns EAGAIN without allocating.
func TestEmptyRecvAllocs(t *testing.T) {
	ip := newInproc(t, Config{})
	c, _ := ip.connect(ip.bindListen(t), 40002, 1000)
	defer c.Close()
	p := make([]byte, 4096)
	oob := make([]byte, 16*devmemapi.CmsgSpaceDmabuf)
	var err error
	a := testing.AllocsPerRun(200, func() {
		_, _, err = c.RecvMsg(p, oob, devmemapi.MSG_SOCK_DEVMEM|unix.MSG_DONTWAIT)
	})
	if !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("RecvMsg(MSG_DONTWAIT) on an empty socket: %v, want EAGAIN", err)
	}
	if a != 0 {
		t.Fatalf("RecvMsg(MSG_DONTWAIT) on an empty socket: %v allocations", a)
	}
	// No completion to read: a program's MSG_ERRQUEUE poll loop.
	a = testing.AllocsPerRun(200, func() { _, _, err = c.RecvErrQueue(oob, 0) })
	if !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("RecvErrQueue with no completion: %v, want EAGAIN", err)
	}
	if a != 0 {
		t.Fatalf("RecvErrQueue with no completion: %v allocations", a)
	}
}

// TestHandshakeAckNoted: the RX loop takes our side's first sequence
// number after the SYN-ACK from the handshake's ACK, alone or carried by
// the first data segment (the pure ACK lost), and stops looking once the
// connection is accepted.
func TestHandshakeAckNoted(t *testing.T) {
	ip := newInproc(t, Config{})
	ln := ip.bindListen(t)
	for _, tc := range []struct {
		name    string
		port    uint16
		payload int
	}{{"pure ACK", 40701, 0}, {"ACK on the first data", 40702, 100}} {
		opts := []byte{2, 4, 0x05, 0xb4, 1, 3, 3, 7}
		ip.inject(segment(tc.port, 5201, 500, 0, tcpFlagSyn, opts, nil))
		srvISN := binary.BigEndian.Uint32(ip.waitTX()[14+20+4:])
		ip.inject(segment(tc.port, 5201, 501, srvISN+1, tcpFlagAck, nil, make([]byte, tc.payload)))
		dc, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		d := dc.(*Conn)
		if st := d.fl.ackState.Load(); st != ackSeen || d.fl.ourNext.Load() != srvISN+1 {
			t.Fatalf("%s: state %d, next %d, want %d", tc.name, st, d.fl.ourNext.Load(), srvISN+1)
		}
		// Accepted: later ACKs change nothing.
		ip.inject(segment(tc.port, 5201, 501+uint32(tc.payload), srvISN+7, tcpFlagAck, nil, nil))
		if d.fl.ourNext.Load() != srvISN+1 {
			t.Fatalf("%s: a later ACK moved it to %d", tc.name, d.fl.ourNext.Load())
		}
	}
}

package stack

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/umem"
)

// The in-process harness runs the real stack (split, fragment queue, gVisor
// TCP, RecvMsg, tokens) over a fake link: frames are written into the UMEM
// region and handed to the receive path as descriptors, and what gVisor
// transmits comes back through txHook. No privileges, no kernel in the loop.

var (
	ipStack = [4]byte{10, 9, 0, 2}
	ipPeer  = [4]byte{10, 9, 0, 1}
	macPeer = []byte{2, 0, 0, 0, 0, 1}
	macEmu  = []byte{2, 0, 0, 0, 0, 2}
)

type inproc struct {
	t    testing.TB
	s    *Stack
	mu   sync.Mutex
	sent [][]byte // frames gVisor transmitted
	ack  chan []byte
}

func newInproc(t testing.TB, cfg Config) *inproc {
	t.Helper()
	if cfg.RegionSize == 0 {
		cfg.RegionSize = 16 << 20
	}
	if cfg.RcvBuf == 0 {
		cfg.RcvBuf = DefaultRcvBuf
	}
	cfg.MTU = 1500
	cfg.Addr = netip.PrefixFrom(netip.AddrFrom4(ipStack), 24)
	r, err := umem.NewRegion(umem.RegionConfig{Size: cfg.RegionSize})
	if err != nil {
		t.Fatal(err)
	}
	s := newStackState(cfg, []netip.Prefix{cfg.Addr})
	s.mac, s.region = macEmu, r
	s.link = newLinkEndpoint(s)
	ip := &inproc{t: t, s: s, ack: make(chan []byte, 1024)}
	s.link.txHook = func(f []byte) {
		c := append([]byte(nil), f...)
		select {
		case ip.ack <- c:
		default:
		}
	}
	if err := s.initNetstack(); err != nil {
		t.Fatal(err)
	}
	s.ns.AddStaticNeighbor(1, ipv4.ProtocolNumber, tcpip.AddrFrom4(ipPeer), tcpip.LinkAddress(macPeer))
	t.Cleanup(func() { s.Close() })
	return ip
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

// inject copies frames into free UMEM frames and runs the receive path on
// them, as the RX ring would deliver them.
func (ip *inproc) inject(frames ...[]byte) {
	var idx [64]uint32
	var descs [64]unix.XDPDesc
	for len(frames) > 0 {
		n := min(len(frames), len(idx))
		got := ip.s.region.Alloc(idx[:n])
		if got < n {
			ip.t.Fatalf("region exhausted: %v", ip.s.region.Snapshot())
		}
		for i := 0; i < n; i++ {
			addr := ip.s.region.FrameAddr(idx[i]) + 256
			copy(ip.s.region.Bytes()[addr:], frames[i])
			descs[i] = unix.XDPDesc{Addr: addr, Len: uint32(len(frames[i]))}
		}
		ip.s.link.queues[0].handleBatch(descs[:n])
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
	mem := c.s.region.Bytes()
	for got := 0; got < want; {
		n, fs, err := devmemapi.RecvFrags(c, p, oob, frags, 0)
		if err != nil {
			t.Fatal(err)
		}
		got += n
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
	}
}

func TestInprocReceive(t *testing.T) {
	ip := newInproc(t, Config{})
	if _, err := ip.s.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}}); err != nil {
		t.Fatal(err)
	}
	ln, err := ip.s.Listen(netip.AddrPortFrom(netip.Addr{}, 5201))
	if err != nil {
		t.Fatal(err)
	}
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
			ip := newInproc(b, Config{TrustChecksum: tc.trust})
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

var _ = errors.Is

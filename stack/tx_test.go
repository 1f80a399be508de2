package stack

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
	"github.com/xdevmem/xdevmem/internal/pattern"
)

// The in-process TX tests run the real TX engine (placeholders in gVisor,
// the stream map, multi-buffer chains or copies, checksums, completions)
// against a small fake TCP receiver: the fake device joins each chain into
// one frame as the kernel would and hands it to the peer, which checks the
// checksums, keeps the in-order bytes and ACKs.

const peerPort = 9000

// fakePeer is a minimal TCP receiver on the far side of the in-process
// link.
type fakePeer struct {
	t        testing.TB
	ip       *inproc
	frames   chan []byte
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once

	// drop, if set, is asked about every data segment (by sequence
	// number) and drops it when it returns true.
	drop func(seq uint32, n int) bool

	mu       sync.Mutex
	discard  bool // count received bytes, keep none
	count    int
	data     []byte
	segs     int
	badSum   int
	rcvNxt   uint32
	seq      uint32
	fin      bool
	rst      bool // the stack reset the connection
	overflow atomic.Int64
}

func newFakePeer(t testing.TB, ip *inproc) *fakePeer {
	p := &fakePeer{t: t, ip: ip, frames: make(chan []byte, 1<<16), stop: make(chan struct{}), done: make(chan struct{}), seq: 777000}
	ip.dev.SetTransmit(func(f []byte) {
		select {
		case p.frames <- append([]byte(nil), f...):
		default:
			p.overflow.Add(1) // a lost frame; TCP recovers
		}
	})
	go p.run()
	t.Cleanup(p.close)
	return p
}

// close stops the peer; call it before closing the stack by hand.
func (p *fakePeer) close() {
	p.stopOnce.Do(func() {
		close(p.stop)
		<-p.done
	})
}

func (p *fakePeer) run() {
	defer close(p.done)
	for {
		select {
		case f := <-p.frames:
			if r := p.handle(f); r != nil {
				// As on a wire: the peer goes on without waiting for
				// the stack's receive loop (a reply the device drops is
				// a lost segment; TCP recovers).
				p.ip.dev.Enqueue(r)
			}
		case <-p.stop:
			return
		}
	}
}

// handle processes one frame from the stack and returns the reply.
func (p *fakePeer) handle(f []byte) []byte {
	var sp split
	if splitFrame(f, &sp, true) != verdictTCP {
		if splitFrame(f, &sp, false) == verdictTCP {
			p.mu.Lock()
			p.badSum++
			p.mu.Unlock()
		}
		return nil
	}
	if sp.DstPort != peerPort {
		return nil
	}
	tcp := f[sp.TCPOff:]
	sport := binary.BigEndian.Uint16(tcp[0:])
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case sp.Flags&tcpFlagRst != 0:
		p.rst = true
		return nil
	case sp.Flags&tcpFlagSyn != 0:
		p.rcvNxt = sp.Seq + 1
		opts := []byte{2, 4, 0x05, 0xb4, 1, 3, 3, 7} // MSS 1460, NOP, WS 7
		r := segment(peerPort, sport, p.seq, p.rcvNxt, tcpFlagSyn|tcpFlagAck, opts, nil)
		p.seq++
		return r
	case sp.PayloadLen > 0:
		if p.drop != nil && p.drop(sp.Seq, sp.PayloadLen) {
			return nil
		}
		p.segs++
		if sp.Seq == p.rcvNxt {
			if !p.discard {
				p.data = append(p.data, f[sp.PayloadOff:sp.PayloadOff+sp.PayloadLen]...)
			}
			p.count += sp.PayloadLen
			p.rcvNxt += uint32(sp.PayloadLen)
		}
	}
	if sp.Flags&tcpFlagFin != 0 && sp.Seq+uint32(sp.PayloadLen) == p.rcvNxt && !p.fin {
		p.fin = true
		p.rcvNxt++
		r := segment(peerPort, sport, p.seq, p.rcvNxt, tcpFlagFin|tcpFlagAck, nil, nil)
		p.seq++
		return r
	}
	if sp.PayloadLen == 0 && sp.Flags&tcpFlagFin == 0 {
		return nil // pure ACKs need no answer
	}
	return segment(peerPort, sport, p.seq, p.rcvNxt, tcpFlagAck, nil, nil)
}

func (p *fakePeer) received() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]byte(nil), p.data...)
}

func (p *fakePeer) waitBytes(t testing.TB, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		p.mu.Lock()
		got := p.count
		p.mu.Unlock()
		if got >= n {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("peer received %d of %d bytes", p.count, n)
}

// txSetup builds an in-process stack with a TX binding filled with the
// period-7 pattern, the fake peer and a connected, zerocopy-enabled TXConn.
func txSetup(t testing.TB, cfg Config, size uint64) (*inproc, *fakePeer, *txBinding, *TXConn) {
	t.Helper()
	return txSetupTo(t, cfg, size, netip.AddrFrom4(ipPeer))
}

// txSetupTo is txSetup dialing the peer as dst (its IPv4 address, or that
// address v4-mapped for an AF_INET6 socket).
func txSetupTo(t testing.TB, cfg Config, size uint64, dst netip.Addr) (*inproc, *fakePeer, *txBinding, *TXConn) {
	t.Helper()
	ip := newInproc(t, cfg)
	peer := newFakePeer(t, ip)
	tb, err := ip.s.BindTX(devmemapi.BindTXConfig{Size: size})
	if err != nil {
		t.Fatal(err)
	}
	b := tb.(*txBinding)
	pattern.Fill(7, 0, b.Bytes())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tc, err := ip.s.Dial(ctx, netip.AddrPortFrom(dst, peerPort))
	if err != nil {
		t.Fatal(err)
	}
	c := tc.(*TXConn)
	if err := c.SetZeroCopy(true); err != nil {
		t.Fatal(err)
	}
	return ip, peer, b, c
}

// waitCompletions reads notifications until sends 0..n-1 are all covered,
// failing on a send completed twice. Callers that stop sending check
// tr.Completed() against the sends they made.
func waitCompletions(t testing.TB, c devmemapi.Sender, tr *devmemapi.ZerocopyTracker, n uint64) []devmemapi.ZerocopyRange {
	t.Helper()
	var all []devmemapi.ZerocopyRange
	deadline := time.Now().Add(20 * time.Second)
	for !tr.Covers(n) {
		if time.Now().After(deadline) {
			t.Fatalf("completions cover %d of %d sends (%v)", tr.Completed(), n, all)
		}
		if _, err := c.PollErrQueue(100 * time.Millisecond); err != nil {
			t.Fatal(err)
		}
		rs, err := devmemapi.RecvCompletions(c, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			if err := tr.Add(r); err != nil {
				t.Fatal(err)
			}
		}
		all = append(all, rs...)
	}
	return all
}

// txModes are the two ways TX frames reach the device: chained frames
// (multi-buffer) and frames copied whole (Lab.TXCopy).
var txModes = []struct {
	name string
	copy bool
}{{"multi-buffer", false}, {"copy", true}}

func TestInprocTXSend(t *testing.T) {
	for _, mode := range txModes {
		t.Run(mode.name, func(t *testing.T) {
			ip, peer, b, c := txSetup(t, Config{Lab: Lab{TXCopy: mode.copy}}, 1<<20)
			before := append([]byte(nil), b.Bytes()...)
			// Sends of assorted sizes and offsets, all within the
			// pattern's period so the stream stays the pattern.
			var want []byte
			var tr devmemapi.ZerocopyTracker
			stream := uint64(0)
			sends := uint64(0)
			for _, n := range []uint64{1, 2, 3, 1447, 1448, 1449, 4096, 4097, 65536, 100000, 7, 300000} {
				off := stream % 7 // dmabuf offset with the stream's pattern phase
				k, err := devmemapi.SendDmabuf(c, b.ID(), []devmemapi.Iovec{{Base: off, Len: n}}, 0)
				if err != nil || uint64(k) != n {
					t.Fatalf("send %d: %d %v", n, k, err)
				}
				want = append(want, b.Bytes()[off:off+n]...)
				stream += n
				sends++
			}
			peer.waitBytes(t, len(want))
			waitCompletions(t, c, &tr, sends)
			if got := peer.received(); !bytes.Equal(got, want) {
				t.Fatalf("peer got %d bytes, differing from the %d sent", len(got), len(want))
			}
			if !bytes.Equal(before, b.Bytes()) {
				t.Fatal("the stack changed the TX dmabuf")
			}
			st := ip.s.TXStats()
			if peer.badSum != 0 || st.Unmapped != 0 {
				t.Fatalf("bad checksums %d, unmapped %d", peer.badSum, st.Unmapped)
			}
			if mode.copy {
				if st.Mode != "copy" || st.DmabufBytesCopied != st.DmabufBytes || st.MultiBufferPackets != 0 {
					t.Fatalf("copy mode stats %+v", st)
				}
			} else if st.Mode != "multi-buffer" || st.DmabufBytesCopied != 0 || st.MultiBufferPackets != st.Segments {
				t.Fatalf("multi-buffer stats %+v", st)
			}
			if st.Completed != sends || st.Calls != sends {
				t.Fatalf("stats %+v for %d sends", st, sends)
			}
			t.Logf("%s: %+v", mode.name, st)
		})
	}
}

// TestInprocTXChunks3 sends with iovecs of at most 3 bytes, as ncdevmem -z 3
// builds them (at most 1024 per call), and with send calls of at most 3
// bytes each. Consecutive
// dmabuf bytes join into one extent and go out as multi-buffer segments;
// scattered tiny sends need more descriptors than an skb has frags and are
// copied (counted).
func TestInprocTXChunks3(t *testing.T) {
	ip, peer, b, c := txSetup(t, Config{}, 1<<20)
	const line = 70000 // several segments from one call
	var iov []devmemapi.Iovec
	for off := uint64(0); off < line; off += 3 {
		iov = append(iov, devmemapi.Iovec{Base: off, Len: min(3, line-off)})
	}
	// At most UIO_MAXIOV iovecs per call, as ncdevmem's do_client.
	sends := uint64(0)
	for rest := iov; len(rest) > 0; sends++ {
		part := rest[:min(len(rest), devmemapi.UIO_MAXIOV)]
		rest = rest[len(part):]
		if n, err := devmemapi.SendDmabuf(c, b.ID(), part, 0); err != nil || n != 3*len(part) && len(rest) > 0 {
			t.Fatalf("chunked send: %d %v", n, err)
		}
	}
	want := append([]byte(nil), b.Bytes()[:line]...)
	// Then 2000 calls of 1 to 3 bytes from consecutive offsets.
	stream := uint64(line)
	tiny := func(off func(stream uint64) uint64) {
		for i := 0; i < 2000; i++ {
			n := uint64(i%3 + 1)
			o := off(stream)
			if k, err := devmemapi.SendDmabuf(c, b.ID(), []devmemapi.Iovec{{Base: o, Len: n}}, 0); err != nil || uint64(k) != n {
				t.Fatalf("tiny send %d: %d %v", i, k, err)
			}
			want = append(want, b.Bytes()[o:o+n]...)
			stream += n
			sends++
		}
	}
	tiny(func(s uint64) uint64 { return s })
	peer.waitBytes(t, len(want))
	var tr devmemapi.ZerocopyTracker
	rs := waitCompletions(t, c, &tr, sends)
	if !bytes.Equal(peer.received(), want) {
		t.Fatal("stream differs")
	}
	if st := ip.s.TXStats(); st.DmabufBytesCopied != 0 || st.Unmapped != 0 {
		t.Fatalf("stats %+v", st)
	}
	t.Logf("%d sends completed in %d notifications", sends, len(rs))

	// Scattered: every call from the start of the pattern's phase.
	tiny(func(s uint64) uint64 { return s % 7 })
	peer.waitBytes(t, len(want))
	waitCompletions(t, c, &tr, sends)
	if !bytes.Equal(peer.received(), want) {
		t.Fatal("stream differs")
	}
	st := ip.s.TXStats()
	if st.Unmapped != 0 || st.Completed != sends || tr.Completed() != sends {
		t.Fatalf("scattered sends: %+v", st)
	}
	// How much is copied depends on how gVisor coalesced the sends.
	t.Logf("scattered tiny sends: %d of %d payload bytes copied", st.DmabufBytesCopied, st.DmabufBytes)
}

// TestInprocTXRetransmit drops data segments on their first arrival; the
// retransmissions map by sequence number to the same dmabuf bytes.
func TestInprocTXRetransmit(t *testing.T) {
	ip, peer, b, c := txSetup(t, Config{}, 1<<20)
	seen := map[uint32]bool{}
	var dropped int
	peer.mu.Lock()
	peer.drop = func(seq uint32, n int) bool {
		if seen[seq] {
			return false
		}
		seen[seq] = true
		if len(seen)%5 == 2 {
			dropped++
			return true
		}
		return false
	}
	peer.mu.Unlock()
	const size = 400000
	if n, err := devmemapi.SendDmabuf(c, b.ID(), []devmemapi.Iovec{{Base: 0, Len: size}}, 0); err != nil || n != size {
		t.Fatalf("send: %d %v", n, err)
	}
	peer.waitBytes(t, size)
	var tr devmemapi.ZerocopyTracker
	waitCompletions(t, c, &tr, 1)
	if !bytes.Equal(peer.received(), b.Bytes()[:size]) {
		t.Fatal("stream differs after retransmissions")
	}
	st := ip.s.TXStats()
	if st.DmabufBytes <= size || st.Unmapped != 0 || dropped == 0 {
		t.Fatalf("dropped %d segments, stats %+v", dropped, st)
	}
	t.Logf("dropped %d segments; %d payload bytes sent for %d", dropped, st.DmabufBytes, size)
}

// TestInprocTXErrors checks the kernel's errnos, and that a failed call
// sends nothing and takes no send number.
func TestInprocTXErrors(t *testing.T) {
	ip, peer, b, c := txSetup(t, Config{}, 64<<10)
	rx, err := ip.s.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}})
	if err != nil {
		t.Fatal(err)
	}
	other := newInproc(t, Config{})
	ob, err := other.s.BindTX(devmemapi.BindTXConfig{Size: 4096})
	if err != nil {
		t.Fatal(err)
	}
	closedB, err := ip.s.BindTX(devmemapi.BindTXConfig{Size: 4096})
	if err != nil {
		t.Fatal(err)
	}
	closedB.Close()
	one := []devmemapi.Iovec{{Base: 0, Len: 10}}
	cm := func(id uint32) []byte { return devmemapi.AppendDmabufTxCmsg(nil, id) }
	badLen := devmemapi.AppendDmabufTxCmsg(nil, b.ID())
	binary.NativeEndian.PutUint64(badLen, 24)
	ts := func(flags uint32) []byte {
		b := make([]byte, 24)
		binary.NativeEndian.PutUint64(b, 20)
		binary.NativeEndian.PutUint32(b[8:], uint32(unix.SOL_SOCKET))
		binary.NativeEndian.PutUint32(b[12:], unix.SO_TIMESTAMPING_NEW)
		binary.NativeEndian.PutUint32(b[16:], flags)
		return b
	}
	for _, tc := range []struct {
		name  string
		iov   []devmemapi.Iovec
		oob   []byte
		flags int
		zc    bool
		want  error
		row   devmemerr.Case
	}{
		{"unknown dmabuf id", one, cm(999999), devmemapi.MSG_ZEROCOPY, true, unix.EINVAL, devmemerr.SendMsgUnknownBinding},
		{"rx binding id", one, cm(rx.ID()), devmemapi.MSG_ZEROCOPY, true, unix.EINVAL, devmemerr.SendMsgUnknownBinding},
		{"unbound id", one, cm(closedB.ID()), devmemapi.MSG_ZEROCOPY, true, unix.EINVAL, devmemerr.SendMsgUnknownBinding},
		{"another device's binding", one, cm(ob.ID()), devmemapi.MSG_ZEROCOPY, true, unix.ENODEV, devmemerr.SendMsgOtherDevice},
		{"no MSG_ZEROCOPY", one, cm(b.ID()), 0, true, unix.EINVAL, devmemerr.SendMsgNoZerocopy},
		{"no MSG_ZEROCOPY, empty", nil, cm(b.ID()), 0, true, unix.EINVAL, devmemerr.SendMsgNoZerocopy},
		{"no SO_ZEROCOPY", one, cm(b.ID()), devmemapi.MSG_ZEROCOPY, false, unix.EINVAL, devmemerr.SendMsgNoZerocopy},
		{"offset past the end", []devmemapi.Iovec{{Base: 64 << 10, Len: 1}}, cm(b.ID()), devmemapi.MSG_ZEROCOPY, true, unix.EFAULT, devmemerr.SendMsgOutsideDmabuf},
		{"length past the end", []devmemapi.Iovec{{Base: 0, Len: 10}, {Base: 60 << 10, Len: 5000}}, cm(b.ID()), devmemapi.MSG_ZEROCOPY, true, unix.EFAULT, devmemerr.SendMsgOutsideDmabuf},
		{"huge length", []devmemapi.Iovec{{Base: 1, Len: 1<<64 - 1}}, cm(b.ID()), devmemapi.MSG_ZEROCOPY, true, unix.EINVAL, devmemerr.Case{}},
		{"bad cmsg length", one, badLen, devmemapi.MSG_ZEROCOPY, true, unix.EINVAL, devmemerr.SendMsgBadCmsg},
		{"SO_TIMESTAMPING RX flag", one, append(ts(unix.SOF_TIMESTAMPING_RX_SOFTWARE), cm(b.ID())...), devmemapi.MSG_ZEROCOPY, true, unix.EINVAL, devmemerr.SendMsgBadCmsg},
		{"no dmabuf cmsg", one, nil, devmemapi.MSG_ZEROCOPY, true, unix.EFAULT, devmemerr.Case{}},
		{"1025 iovecs", make([]devmemapi.Iovec, devmemapi.UIO_MAXIOV+1), cm(b.ID()), devmemapi.MSG_ZEROCOPY, true, unix.EMSGSIZE, devmemerr.SendMsgTooManyIovecs},
		{"1025 iovecs, bad id", make([]devmemapi.Iovec, devmemapi.UIO_MAXIOV+1), cm(999999), devmemapi.MSG_ZEROCOPY, true, unix.EMSGSIZE, devmemerr.SendMsgTooManyIovecs},
	} {
		c.SetZeroCopy(tc.zc)
		n, err := c.SendMsg(tc.iov, tc.oob, tc.flags)
		if n != 0 || !errors.Is(err, tc.want) || (tc.row.Name != "" && !devmemerr.Match(err, tc.row)) {
			t.Errorf("%s: %d, %v; want %v (%s)", tc.name, n, err, tc.want, tc.row.Name)
		}
	}
	c.SetZeroCopy(true)
	// A zero-length devmem send is fine and takes no number.
	if n, err := c.SendMsg(nil, cm(b.ID()), devmemapi.MSG_ZEROCOPY); n != 0 || err != nil {
		t.Fatalf("empty send: %d %v", n, err)
	}
	time.Sleep(50 * time.Millisecond)
	if got := len(peer.received()); got != 0 {
		t.Fatalf("failed sends put %d bytes on the wire", got)
	}
	if st := c.Stats(); st.Sends != 0 || st.Queued != 0 {
		t.Fatalf("failed sends left %+v", st)
	}
	// The first good send is number 0. SO_MARK, SO_PRIORITY and TX
	// SO_TIMESTAMPING control messages are accepted with it (the tests
	// run privileged), 1024 iovecs too.
	mark := make([]byte, 24)
	binary.NativeEndian.PutUint64(mark, 20)
	binary.NativeEndian.PutUint32(mark[8:], uint32(unix.SOL_SOCKET))
	binary.NativeEndian.PutUint32(mark[12:], unix.SO_MARK)
	prio := slices.Clone(mark)
	binary.NativeEndian.PutUint32(prio[12:], unix.SO_PRIORITY)
	oob := slices.Concat(mark, prio, ts(unix.SOF_TIMESTAMPING_TX_SOFTWARE), cm(b.ID()))
	if n, err := c.SendMsg(one, oob, devmemapi.MSG_ZEROCOPY); n != 10 || err != nil {
		t.Fatalf("good send with SO_MARK, SO_PRIORITY, SO_TIMESTAMPING: %d %v", n, err)
	}
	many := make([]devmemapi.Iovec, devmemapi.UIO_MAXIOV)
	for i := range many {
		many[i] = devmemapi.Iovec{Base: uint64(i), Len: 1}
	}
	if n, err := devmemapi.SendDmabuf(c, b.ID(), many, 0); n != devmemapi.UIO_MAXIOV || err != nil {
		t.Fatalf("send of 1024 iovecs: %d %v", n, err)
	}
	var tr devmemapi.ZerocopyTracker
	rs := waitCompletions(t, c, &tr, 2)
	if tr.Completed() != 2 || !tr.Covers(2) {
		t.Fatalf("completions %v", rs)
	}
	if _, _, err := c.RecvErrQueue(make([]byte, 64), 0); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("empty error queue: %v", err)
	}
	if st := ip.s.TXStats(); st.EINVAL == 0 || st.EFAULT == 0 || st.ENODEV != 1 {
		t.Fatalf("error counters %+v", st)
	}
}

// TestInprocTXErrQueueFamily: a completion comes as the socket's family
// has it (inet_recv_error): SOL_IP / IP_RECVERR with a sockaddr_in on an
// AF_INET connection; SOL_IPV6 / IPV6_RECVERR with a zeroed sockaddr_in6
// on an AF_INET6 connection to a v4-mapped address, as ncdevmem's client
// socket has it. The v4-mapped socket's addresses are v4-mapped too.
func TestInprocTXErrQueueFamily(t *testing.T) {
	for _, tc := range []struct {
		name         string
		dst          netip.Addr
		level, typ   int32
		cmsgLen      uint64
		oobn         int
		localAddr    string
		remoteMapped bool
	}{
		{"AF_INET", netip.AddrFrom4(ipPeer), unix.SOL_IP, unix.IP_RECVERR, devmemapi.CmsgSpaceZerocopy, devmemapi.CmsgSpaceZerocopy, "10.9.0.2", false},
		{"AF_INET6 v4-mapped", netip.AddrFrom16(netip.AddrFrom4(ipPeer).As16()), unix.SOL_IPV6, unix.IPV6_RECVERR, devmemapi.CmsgLenZerocopy6, devmemapi.CmsgSpaceZerocopy6, "::ffff:10.9.0.2", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, peer, b, c := txSetupTo(t, Config{}, 64<<10, tc.dst)
			if n, err := devmemapi.SendDmabuf(c, b.ID(), []devmemapi.Iovec{{Base: 0, Len: 7}}, 0); n != 7 || err != nil {
				t.Fatalf("send: %d %v", n, err)
			}
			peer.waitBytes(t, 7)
			oob := make([]byte, 128)
			var oobn, flags int
			for deadline := time.Now().Add(10 * time.Second); ; {
				if _, err := c.PollErrQueue(100 * time.Millisecond); err != nil {
					t.Fatal(err)
				}
				var err error
				if oobn, flags, err = c.RecvErrQueue(oob, 0); err == nil {
					break
				} else if !errors.Is(err, unix.EAGAIN) || time.Now().After(deadline) {
					t.Fatalf("recv errqueue: %v", err)
				}
			}
			h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
			if oobn != tc.oobn || flags != devmemapi.MSG_ERRQUEUE || h.Level != tc.level || h.Type != tc.typ || h.Len != tc.cmsgLen {
				t.Fatalf("oobn %d flags %#x cmsg {len %d level %d type %d}; want oobn %d, {%d %d %d}", oobn, flags, h.Len, h.Level, h.Type, tc.oobn, tc.cmsgLen, tc.level, tc.typ)
			}
			var ee devmemapi.SockExtendedErr
			ee.Unmarshal(oob[unix.SizeofCmsghdr:])
			if ee.Origin != devmemapi.SO_EE_ORIGIN_ZEROCOPY || ee.Info != 0 || ee.Data != 0 {
				t.Fatalf("sock_extended_err %+v", ee)
			}
			if off := oob[unix.SizeofCmsghdr+devmemapi.SizeofSockExtendedErr : h.Len]; !bytes.Equal(off, make([]byte, len(off))) {
				t.Fatalf("offender not zeroed: %x", off)
			}
			la := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr()
			ra := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr()
			if la.String() != tc.localAddr || ra.Is4In6() != tc.remoteMapped || ra.Unmap() != netip.AddrFrom4(ipPeer) {
				t.Fatalf("local %v remote %v", la, ra)
			}
		})
	}
}

// TestInprocTXCloseReleases: closing the binding with a send pending keeps
// the span until the send completes; closing the stack frees everything.
func TestInprocTXCloseReleases(t *testing.T) {
	ip, peer, b, c := txSetup(t, Config{}, 256<<10)
	txBefore := ip.s.region.Snapshot().TX
	if n, err := devmemapi.SendDmabuf(c, b.ID(), []devmemapi.Iovec{{Base: 0, Len: 200000}}, 0); n != 200000 || err != nil {
		t.Fatalf("send: %d %v", n, err)
	}
	b.Close()
	if n, err := devmemapi.SendDmabuf(c, b.ID(), []devmemapi.Iovec{{Base: 0, Len: 1}}, 0); n != 0 || !errors.Is(err, unix.EINVAL) {
		t.Fatalf("send on an unbound id: %d %v", n, err)
	}
	peer.waitBytes(t, 200000)
	var tr devmemapi.ZerocopyTracker
	waitCompletions(t, c, &tr, 1)
	if !b.released.Load() {
		t.Fatal("span not released after the last completion")
	}
	if got := ip.s.region.Snapshot().TX; got != txBefore-64 {
		t.Fatalf("TX frames %d, want %d", got, txBefore-64)
	}
	c.Close()
	peer.close()
	ip.s.Close()
	if a := ip.s.region.Snapshot(); a.TX != 0 || a.Pinned != 0 || a.Held != 0 {
		t.Fatalf("after close: %v", a)
	}
}

// BenchmarkTXPath is the per-byte cost of the emulated devmem send path
// besides the kernel: SendMsg, gVisor TCP over placeholders, the stream
// map, checksums over the dmabuf, chains (or copies), ACK processing and
// completions. The fake device's join of each chain into a frame stands in
// for the kernel's copy.
func BenchmarkTXPath(b *testing.B) {
	for _, mode := range txModes {
		b.Run(mode.name, func(b *testing.B) {
			const chunk = 256 << 10
			ip, peer, tb, c := txSetup(b, Config{Lab: Lab{TXCopy: mode.copy}}, 4*chunk)
			peer.mu.Lock()
			peer.discard = true
			peer.mu.Unlock()
			var tr devmemapi.ZerocopyTracker
			b.SetBytes(chunk)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				off := uint64(i%4) * chunk
				if i >= 4 {
					waitCompletions(b, c, &tr, uint64(i-3))
				}
				if n, err := devmemapi.SendDmabuf(c, tb.ID(), []devmemapi.Iovec{{Base: off, Len: chunk}}, 0); n != chunk || err != nil {
					b.Fatalf("send: %d %v", n, err)
				}
			}
			waitCompletions(b, c, &tr, uint64(b.N))
			b.StopTimer()
			peer.waitBytes(b, b.N*chunk)
			st := ip.s.TXStats()
			b.ReportMetric(float64(st.DmabufBytesCopied)/float64(st.DmabufBytes), "copied/B")
		})
	}
}

// TestTXSegmentGSO: a GSO packet of an ordinary connection is cut into
// MSS-sized frames as TSO would cut it: sequence numbers, IP lengths, ids
// and checksums per frame, FIN and PSH on the last frame only.
func TestTXSegmentGSO(t *testing.T) {
	ip := newInproc(t, Config{})
	var frames [][]byte
	var mu sync.Mutex
	ip.dev.SetTransmit(func(f []byte) {
		mu.Lock()
		frames = append(frames, append([]byte(nil), f...))
		mu.Unlock()
	})
	eng, err := ip.s.engine()
	if err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 5000)
	for i := range payload {
		payload[i] = byte(i * 13)
	}
	full := segment(40000, 80, 1000, 1, tcpFlagAck|0x08|tcpFlagFin, []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2}, payload)
	hl := len(full) - len(payload)
	pkt := gstack.NewPacketBuffer(gstack.PacketBufferOptions{ReserveHeaderBytes: hl, Payload: buffer.MakeWithData(payload)})
	copy(pkt.LinkHeader().Push(hl), full[:hl])
	pkt.GSOOptions = gstack.GSO{Type: gstack.GSOTCPv4, NeedsCsum: true, CsumOffset: 16, MSS: 1448, L3HdrLen: 20}
	var list gstack.PacketBufferList
	list.PushBack(pkt)
	if n, terr := eng.writePackets(list); n != 1 || terr != nil {
		t.Fatalf("writePackets: %d %v", n, terr)
	}
	pkt.DecRef()
	if len(frames) != 4 {
		t.Fatalf("%d frames, want 4", len(frames))
	}
	var got []byte
	for i, f := range frames {
		var sp split
		if v := splitFrame(f, &sp, true); v != verdictTCP {
			t.Fatalf("frame %d: %v", i, v)
		}
		if want := uint32(1000 + 1448*i); sp.Seq != want {
			t.Errorf("frame %d: seq %d, want %d", i, sp.Seq, want)
		}
		last := i == len(frames)-1
		if (sp.Flags&(tcpFlagFin|0x08) != 0) != last {
			t.Errorf("frame %d: flags %#x", i, sp.Flags)
		}
		if id := binary.BigEndian.Uint16(f[14+4:]); id != uint16(i) {
			t.Errorf("frame %d: ip id %d", i, id)
		}
		got = append(got, f[sp.PayloadOff:sp.PayloadOff+sp.PayloadLen]...)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("segments do not join to the payload")
	}
}

// nopDevice is a Device whose completions are always empty (stream-map
// tests); its other methods are not called.
type nopDevice struct{ Device }

func (nopDevice) TXReclaim() int { return 0 }

// FuzzTXStreamMap checks the stream map against a model (one address per
// stream byte): recorded sends with arbitrary iovecs, ACKs that trim it,
// and segment lookups at arbitrary sequence numbers, across the 32-bit
// sequence wrap.
func FuzzTXStreamMap(f *testing.F) {
	f.Add(uint32(0xfffff000), []byte{1, 200, 3, 7, 9, 1, 2, 3, 250, 4, 4, 4, 4})
	f.Add(uint32(12345), []byte{0, 0, 0, 255, 255, 255, 17, 31, 77})
	f.Fuzz(func(t *testing.T, iss uint32, ops []byte) {
		b := &txBinding{id: 1, base: 1 << 20, size: 4096}
		c := &TXConn{eng: &txEngine{dev: nopDevice{}}, errCh: make(chan struct{}, 1)}
		c.setISS(iss)
		var model []uint64 // stream offset → UMEM address
		next := func() byte {
			if len(ops) == 0 {
				return 0
			}
			v := ops[0]
			ops = ops[1:]
			return v
		}
		for len(ops) > 0 {
			switch next() % 4 {
			case 0, 1: // a send of up to 4 iovecs
				var iov []devmemapi.Iovec
				for k := int(next() % 4); k >= 0; k-- {
					off, n := uint64(next())*16, uint64(next()%64)
					iov = append(iov, devmemapi.Iovec{Base: off, Len: n})
					for i := uint64(0); i < n; i++ {
						model = append(model, b.base+off+i)
					}
				}
				c.mu.Lock()
				c.recordLocked(c.recEnd, iov, b)
				c.mu.Unlock()
			case 2: // a segment lookup
				c.mu.Lock()
				recEnd, acked := c.recEnd, c.acked
				c.mu.Unlock()
				if recEnd == acked {
					continue
				}
				off := acked + uint64(next())%(recEnd-acked)
				n := 1 + int(uint64(next())%(recEnd-off))
				pieces, start, res := c.mapSegment(iss+1+uint32(off), n, nil)
				if res != mapOK || start != off {
					t.Fatalf("map [%d,+%d) of [%d,%d): %v start %d", off, n, acked, recEnd, res, start)
				}
				pos := off
				for _, p := range pieces {
					for i := uint64(0); i < uint64(p.n); i++ {
						if p.addr+i != model[pos] {
							t.Fatalf("stream byte %d at %#x, want %#x", pos, p.addr+i, model[pos])
						}
						pos++
					}
				}
				if pos != off+uint64(n) {
					t.Fatalf("pieces cover %d of %d bytes", pos-off, n)
				}
				c.chainDone(start)
			case 3: // an ACK
				c.mu.Lock()
				c.sndMax = c.recEnd
				adv := uint64(next()) * 8
				if c.acked+adv <= c.recEnd {
					c.acked += adv
					c.trimLocked()
				}
				c.mu.Unlock()
			}
		}
		// Below the history kept, lookups are stale, never wrong.
		c.mu.Lock()
		acked := c.acked
		c.mu.Unlock()
		if acked > 0 {
			if _, _, res := c.mapSegment(iss+1+uint32(acked-1), 1, nil); res != mapStale {
				t.Fatalf("acknowledged byte maps: %v", res)
			}
		}
	})
}

// TestTXBindErrnoTable: BindTX's errors are rows of the shared table.
func TestTXBindErrnoTable(t *testing.T) {
	ip := newInproc(t, Config{})
	_, err := ip.s.BindTX(devmemapi.BindTXConfig{Ifindex: 12345})
	if !devmemerr.Match(err, devmemerr.BindTXNoDevice) || !errors.Is(err, unix.ENODEV) {
		t.Fatalf("bind tx on another ifindex: %v", err)
	}
	if _, err := ip.s.BindTX(devmemapi.BindTXConfig{Size: 1 << 40}); !errors.Is(err, unix.ENOMEM) {
		t.Fatalf("bind tx larger than the UMEM: %v", err)
	}
}

// TestInprocTXPlainSends interleaves plain sends (TXConn.Send: a header
// before each payload, as a transport frames its messages) with dmabuf
// sends on one connection: the peer gets the stream byte-exact and in call
// order, segments that hold both kinds of bytes included; only the dmabuf
// sends and the plain ones made with MSG_ZEROCOPY take send numbers, the
// latter completing as copied (SO_EE_CODE_ZEROCOPY_COPIED).
func TestInprocTXPlainSends(t *testing.T) {
	for _, mode := range txModes {
		t.Run(mode.name, func(t *testing.T) {
			ip, peer, b, c := txSetup(t, Config{Lab: Lab{TXCopy: mode.copy}}, 1<<20)
			var want []byte
			var tr devmemapi.ZerocopyTracker
			sends, copiedIDs := uint64(0), map[uint32]bool{}
			for i, n := range []uint64{1, 1448, 3000, 65536, 7, 200000, 1449} {
				hdr := []byte(fmt.Sprintf("header %d: %d bytes follow\n", i, n))
				flags := 0
				if i%2 == 1 {
					flags = devmemapi.MSG_ZEROCOPY
					copiedIDs[uint32(sends)] = true
					sends++
				}
				if k, err := c.Send(hdr, flags); err != nil || k != len(hdr) {
					t.Fatalf("plain send %d: %d %v", i, k, err)
				}
				want = append(want, hdr...)
				off := uint64(i) % 7
				k, err := devmemapi.SendDmabuf(c, b.ID(), []devmemapi.Iovec{{Base: off, Len: n}}, 0)
				if err != nil || uint64(k) != n {
					t.Fatalf("dmabuf send %d: %d %v", i, k, err)
				}
				want = append(want, b.Bytes()[off:off+n]...)
				sends++
			}
			if k, err := c.Write([]byte("trailer")); err != nil || k != 7 {
				t.Fatalf("write: %d %v", k, err)
			}
			want = append(want, "trailer"...)
			peer.waitBytes(t, len(want))
			rs := waitCompletions(t, c, &tr, sends)
			if got := peer.received(); !bytes.Equal(got, want) {
				i := 0
				for i < len(got) && i < len(want) && got[i] == want[i] {
					i++
				}
				t.Fatalf("peer got %d bytes, want %d; first difference at %d", len(got), len(want), i)
			}
			for _, r := range rs {
				if r.Copied && !copiedIDs[r.Lo] {
					t.Errorf("completion %+v says copied; it starts at a dmabuf send", r)
				}
				if !r.Copied && copiedIDs[r.Lo] {
					t.Errorf("completion %+v starts at a copied plain send but does not say so", r)
				}
			}
			st := ip.s.TXStats()
			if peer.badSum != 0 || st.Unmapped != 0 || st.Completed != sends || st.Calls != sends {
				t.Fatalf("bad checksums %d, stats %+v for %d sends", peer.badSum, st, sends)
			}
			if c.Stats().InFlight != 0 {
				t.Fatalf("chains in flight after every completion: %+v", c.Stats())
			}
		})
	}
}

// BenchmarkTXLookup is the per-packet lookup of the TX connection a
// received ACK or a sent segment belongs to (txTap.observe, build), from
// every core at once, with 16 connections registered.
func BenchmarkTXLookup(b *testing.B) {
	ip := newInproc(b, Config{})
	t, err := ip.s.engine()
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < 16; i++ {
		c := &TXConn{key: txKey{rport: uint16(1000 + i), lport: 80}}
		if err := t.register(c); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { t.unregister(c) }) // before the stack closes its connections
	}
	k := txKey{rport: 1007, lport: 80}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if t.lookup(k) == nil {
				b.Error("not found")
			}
		}
	})
}

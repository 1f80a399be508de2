package tests

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/internal/harness"
	"github.com/xdevmem/xdevmem/internal/netns"
	"github.com/xdevmem/xdevmem/internal/pattern"
	"github.com/xdevmem/xdevmem/internal/testutil"
	"github.com/xdevmem/xdevmem/stack"
)

// The devmem TX tests: the emulated stack sends from a TX dmabuf (a span of
// its UMEM) to the kernel's TCP in the peer namespace.

// peerSink listens in the peer namespace and reads one connection to the
// end, validating the period-n pattern (n = 0: keep the bytes instead).
type peerSink struct {
	ln   net.Listener
	port int
	res  chan sinkResult
}

type sinkResult struct {
	bytes uint64
	data  []byte
	err   error
}

func newPeerSink(t *testing.T, w *harness.World, period int) *peerSink {
	t.Helper()
	s := &peerSink{res: make(chan sinkResult, 1)}
	err := w.Pair.Peer.Do(func() error {
		var err error
		s.ln, err = net.Listen("tcp", netip.AddrPortFrom(w.Pair.PeerAddr.Addr(), 0).String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.ln.Close() })
	s.port = s.ln.Addr().(*net.TCPAddr).Port
	go func() {
		c, err := s.ln.Accept()
		if err != nil {
			s.res <- sinkResult{err: err}
			return
		}
		defer c.Close()
		var r sinkResult
		var v *pattern.Validator
		if period > 0 {
			v = pattern.NewValidator(period)
		}
		buf := make([]byte, 1<<20)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				r.bytes += uint64(n)
				if v != nil {
					if verr := v.Check(buf[:n]); verr != nil && r.err == nil {
						r.err = verr
					}
				} else {
					r.data = append(r.data, buf[:n]...)
				}
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				r.err = err
				break
			}
		}
		s.res <- r
	}()
	return s
}

func (s *peerSink) wait(t *testing.T, d time.Duration) sinkResult {
	t.Helper()
	select {
	case r := <-s.res:
		return r
	case <-time.After(d):
		t.Fatalf("peer sink: no end of stream within %v", d)
		return sinkResult{}
	}
}

// txWorld builds a world whose stack has room for a TX binding of txSize
// bytes next to its RX frames, binds it and dials the peer sink.
func txWorld(t *testing.T, cfg stack.Config, txSize uint64, period int) (*harness.World, devmemapi.TXBinding, devmemapi.TXConn, *peerSink) {
	t.Helper()
	return txWorldOpts(t, harness.Options{Stack: cfg}, txSize, period)
}

// txWorldOpts is txWorld with the world's options.
func txWorldOpts(t *testing.T, opts harness.Options, txSize uint64, period int) (*harness.World, devmemapi.TXBinding, devmemapi.TXConn, *peerSink) {
	t.Helper()
	if opts.Stack.RegionSize == 0 {
		opts.Stack.RegionSize = 16<<20 + txSize
	}
	opts.NoBind = true
	w := newWorld(t, opts)
	sink := newPeerSink(t, w, period)
	b, err := w.Stack.BindTX(devmemapi.BindTXConfig{Ifindex: w.Pair.EmuIndex, Size: txSize})
	if err != nil {
		t.Fatalf("bind tx: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := w.Stack.Dial(ctx, netip.AddrPortFrom(w.Pair.PeerAddr.Addr(), uint16(sink.port)))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.SetZeroCopy(true); err != nil {
		t.Fatal(err)
	}
	return w, b, c, sink
}

// drainCompletions reads every queued notification into tr.
func drainCompletions(t *testing.T, c devmemapi.Sender, tr *devmemapi.ZerocopyTracker) {
	t.Helper()
	rs, err := devmemapi.RecvCompletions(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if err := tr.Add(r); err != nil {
			t.Fatal(err)
		}
	}
}

// awaitCompleted waits until sends 0..n-1 have completed.
func awaitCompleted(t *testing.T, c devmemapi.Sender, tr *devmemapi.ZerocopyTracker, n uint64, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !tr.Covers(n) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d sends completed after %v", tr.Completed(), n, d)
		}
		if _, err := c.PollErrQueue(50 * time.Millisecond); err != nil {
			t.Fatal(err)
		}
		drainCompletions(t, c, tr)
	}
}

// TestTX1GiB: the emulated client sends 1 GiB from a 7 MiB TX dmabuf,
// reusing each 1 MiB slot only after its send completed, to the kernel's
// TCP in the peer namespace: byte-exact, every send completed exactly once,
// the dmabuf unchanged, and (multi-buffer) no payload byte copied by the
// stack.
func TestTX1GiB(t *testing.T) {
	testutil.Watchdog(t, 3*time.Minute)
	const (
		size  = 1 << 30
		chunk = 1 << 20
		slots = 7 // 7 MiB: a whole number of pattern periods
	)
	w, b, c, sink := txWorld(t, stack.Config{}, slots*chunk, 7)
	mem := b.(interface{ Bytes() []byte }).Bytes()
	pattern.Fill(7, 0, mem)
	before := sha256.Sum256(mem)

	var tr devmemapi.ZerocopyTracker
	start := time.Now()
	var sends uint64
	for off := uint64(0); off < size; off += chunk {
		if sends >= slots {
			awaitCompleted(t, c, &tr, sends-slots+1, 30*time.Second) // the slot is free again
		}
		slot := (sends % slots) * chunk
		n, err := devmemapi.SendDmabuf(c, b.ID(), []devmemapi.Iovec{{Base: slot, Len: chunk}}, 0)
		if err != nil || n != chunk {
			t.Fatalf("send %d: %d %v", sends, n, err)
		}
		sends++
		drainCompletions(t, c, &tr)
	}
	awaitCompleted(t, c, &tr, sends, 30*time.Second)
	elapsed := time.Since(start)
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	r := sink.wait(t, 30*time.Second)
	if r.err != nil || r.bytes != size {
		t.Fatalf("peer received %d of %d bytes: %v", r.bytes, size, r.err)
	}
	if tr.Completed() != sends {
		t.Fatalf("%d completions for %d sends", tr.Completed(), sends)
	}
	if after := sha256.Sum256(mem); after != before {
		t.Fatal("the TX dmabuf changed while sending")
	}
	st := w.Stack.TXStats()
	if st.Unmapped != 0 {
		t.Fatalf("%d segments could not be mapped", st.Unmapped)
	}
	if st.Mode == "multi-buffer" && st.DmabufBytesCopied != 0 {
		t.Fatalf("multi-buffer mode copied %d payload bytes", st.DmabufBytesCopied)
	}
	t.Logf("1 GiB in %v: %.0f MB/s, mode %s, %d sends in %d notifications, %.3f bytes copied per byte sent, %d segments, %d retransmitted bytes, %d stale drops",
		elapsed, float64(size)/1e6/elapsed.Seconds(), st.Mode, sends, st.Notifications,
		float64(st.DmabufBytesCopied)/float64(st.DmabufBytes), st.Segments, st.DmabufBytes-size, st.StaleDrops)
}

// TestTXCopyMode: the same path with Config.TXCopy: byte-exact, and every
// payload byte counted as copied.
func TestTXCopyMode(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	const size, chunk = 64 << 20, 1 << 20
	w, b, c, sink := txWorld(t, stack.Config{Lab: stack.Lab{TXCopy: true}}, 7*chunk, 7)
	sendRing(t, b, c, sink, size, chunk)
	st := w.Stack.TXStats()
	if st.Mode != "copy" || st.DmabufBytesCopied != st.DmabufBytes || st.MultiBufferPackets != 0 {
		t.Fatalf("copy mode stats %+v", st)
	}
}

// TestTXJumbo: at MTU 9000 a segment spans several UMEM frames: its
// payload descriptors (multi-buffer), or the TX frames its copy spills
// into (copy mode), are chained behind the header frame.
func TestTXJumbo(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	for _, copyMode := range []bool{false, true} {
		t.Run(fmt.Sprintf("copy=%v", copyMode), func(t *testing.T) {
			const size, chunk = 128 << 20, 1 << 20
			w, b, c, sink := txWorldOpts(t, harness.Options{MTU: 9000, Stack: stack.Config{Lab: stack.Lab{TXCopy: copyMode}}}, 7*chunk, 7)
			sendRing(t, b, c, sink, size, chunk)
			st := w.Stack.TXStats()
			if st.Unmapped != 0 || st.Oversize != 0 || st.Segments == 0 || size/st.Segments < 4096 {
				t.Fatalf("stats %+v", st)
			}
			if copyMode != (st.DmabufBytesCopied == st.DmabufBytes) || (!copyMode && st.DmabufBytesCopied != 0) {
				t.Fatalf("copy mode %v, stats %+v", copyMode, st)
			}
			t.Logf("MTU 9000: %d segments of %d bytes on average, %s", st.Segments, st.DmabufBytes/st.Segments, st.Mode)
		})
	}
}

// TestTXErrors: bad id, out-of-range offset, missing MSG_ZEROCOPY and
// SO_ZEROCOPY fail with the kernel's errnos, and nothing reaches the peer.
func TestTXErrors(t *testing.T) {
	testutil.Watchdog(t, time.Minute)
	w, b, c, sink := txWorld(t, stack.Config{}, 1<<20, 0)
	rx, err := w.Stack.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}})
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	size := b.Size()
	one := []devmemapi.Iovec{{Base: 0, Len: 100}}
	for _, tc := range []struct {
		name  string
		id    uint32
		iov   []devmemapi.Iovec
		flags int
		zc    bool
		want  unix.Errno
	}{
		{"unknown dmabuf id", b.ID() + 1000, one, devmemapi.MSG_ZEROCOPY, true, unix.EINVAL},
		{"rx dmabuf id", rx.ID(), one, devmemapi.MSG_ZEROCOPY, true, unix.EINVAL},
		{"offset out of range", b.ID(), []devmemapi.Iovec{{Base: size, Len: 1}}, devmemapi.MSG_ZEROCOPY, true, unix.EFAULT},
		{"length out of range", b.ID(), []devmemapi.Iovec{{Base: size - 10, Len: 11}}, devmemapi.MSG_ZEROCOPY, true, unix.EFAULT},
		{"second iovec out of range", b.ID(), []devmemapi.Iovec{{Base: 0, Len: 10}, {Base: size + 5, Len: 10}}, devmemapi.MSG_ZEROCOPY, true, unix.EFAULT},
		{"no MSG_ZEROCOPY", b.ID(), one, 0, true, unix.EINVAL},
		{"no SO_ZEROCOPY", b.ID(), one, devmemapi.MSG_ZEROCOPY, false, unix.EINVAL},
	} {
		c.SetZeroCopy(tc.zc)
		n, err := c.SendMsg(tc.iov, devmemapi.AppendDmabufTxCmsg(nil, tc.id), tc.flags)
		var errno unix.Errno
		if n != 0 || !errors.As(err, &errno) || errno != tc.want {
			t.Errorf("%s: sendmsg = %d, %v; want %v", tc.name, n, err, tc.want)
		}
	}
	c.SetZeroCopy(true)
	time.Sleep(100 * time.Millisecond)
	if _, _, err := c.RecvErrQueue(make([]byte, devmemapi.CmsgSpaceZerocopy), 0); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("a failed send queued a completion: %v", err)
	}
	// Nothing was sent: the first good send is number 0 and the peer
	// sees only its bytes.
	mem := b.(interface{ Bytes() []byte }).Bytes()
	copy(mem, "hello devmem tx")
	if n, err := devmemapi.SendDmabuf(c, b.ID(), []devmemapi.Iovec{{Base: 0, Len: 15}}, 0); n != 15 || err != nil {
		t.Fatalf("good send: %d %v", n, err)
	}
	var tr devmemapi.ZerocopyTracker
	awaitCompleted(t, c, &tr, 1, 10*time.Second)
	c.CloseWrite()
	r := sink.wait(t, 10*time.Second)
	if r.err != nil || string(r.data) != "hello devmem tx" {
		t.Fatalf("peer received %q (%v)", r.data, r.err)
	}
}

// clientSummary is the JSON the client command prints.
type clientSummary struct {
	OK            bool    `json:"ok"`
	Bytes         uint64  `json:"bytes"`
	Sends         uint64  `json:"sends"`
	Completed     uint64  `json:"completed"`
	Notifications uint64  `json:"notifications"`
	CoverOnce     bool    `json:"completions_cover_every_send_once"`
	Mode          string  `json:"tx_mode"`
	CopiedPerByte float64 `json:"bytes_copied_per_byte_sent"`
	MBps          float64 `json:"mb_per_s"`
	ErrQueueCmsg  string  `json:"errqueue_cmsg"`
	Error         string  `json:"error"`
}

// runClient runs `xdevmem client` in the emulated namespace against a
// socat server in the peer namespace and returns what socat wrote and the
// client's summary.
func runClient(t *testing.T, p *netns.Pair, stdin []byte, args ...string) ([]byte, clientSummary) {
	t.Helper()
	testutil.RequireTools(t, "socat")
	bin := xdevmemBinary(t)
	out := filepath.Join(t.TempDir(), "received.bin")
	port := "5400"
	listen, bind, table := "TCP-LISTEN:", p.PeerAddr.Addr().String(), "/proc/thread-self/net/tcp"
	if p.PeerAddr.Addr().Is6() {
		listen, bind, table = "TCP6-LISTEN:", "["+bind+"]", table+"6"
	}
	srv := p.Peer.Command("socat", "-u", listen+port+",bind="+bind+",reuseaddr", "CREATE:"+out)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	// Wait for socat to listen (its socket in the peer namespace's
	// /proc/net/tcp or tcp6, state 0A).
	listening := regexp.MustCompile(fmt.Sprintf(":%04X 0+:0000 0A", 5400))
	for deadline := time.Now().Add(5 * time.Second); ; {
		var tab []byte
		p.Peer.Do(func() (err error) { tab, err = os.ReadFile(table); return err })
		if listening.Match(tab) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("socat does not listen on %s", port)
		}
		time.Sleep(10 * time.Millisecond)
	}
	full := append([]string{"client", "-f", p.EmuIf, "-s", p.PeerAddr.Addr().String(), "-c", p.EmuAddr.Addr().String(),
		"-p", port, "--json"}, args...)
	cmd := p.Emu.Command(bin, full...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	t.Logf("client stderr:\n%s", lastLines(stderr.String(), 15))
	var sum clientSummary
	if jerr := json.Unmarshal(stdout.Bytes(), &sum); jerr != nil {
		t.Fatalf("client %v: output %q: %v", err, stdout.String(), jerr)
	}
	if err != nil {
		t.Fatalf("client: %v (%s)", err, sum.Error)
	}
	werr := make(chan error, 1)
	go func() { werr <- srv.Wait() }()
	select {
	case err := <-werr:
		if err != nil {
			t.Fatalf("socat: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("socat did not finish")
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return got, sum
}

func lastLines(s string, n int) string {
	lines := bytes.Split([]byte(s), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// TestClientChunks3 is devmem.py's check_tx_chunks: `xdevmem client -z 3`
// (iovecs of at most 3 bytes) against socat: byte-exact, and the
// completions cover every send exactly once.
func TestClientChunks3(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	p := testutil.NewPair(t, netns.Options{Prefix: "xdt"})
	const size = 3 << 20
	got, sum := runClient(t, p, nil, "-z", "3", "--size", strconv.Itoa(size), "-v", "7", "--send-size", "65536", "--tx-size", "256KiB")
	if uint64(len(got)) != size {
		t.Fatalf("socat wrote %d bytes, want %d", len(got), size)
	}
	v := pattern.NewValidator(7)
	if err := v.Check(got); err != nil {
		t.Fatal(err)
	}
	if !sum.OK || !sum.CoverOnce || sum.Completed != sum.Sends || sum.Sends == 0 {
		t.Fatalf("summary %+v", sum)
	}
	t.Logf("-z 3: %d sends, %d notifications, mode %s, %.3f copied/B, %.0f MB/s", sum.Sends, sum.Notifications, sum.Mode, sum.CopiedPerByte, sum.MBps)
}

// TestClientStdinSHA256: `xdevmem client` sends a random file from stdin;
// socat writes exactly the same bytes.
func TestClientStdinSHA256(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	p := testutil.NewPair(t, netns.Options{Prefix: "xdt"})
	data := make([]byte, 40<<20+4321)
	rand.Read(data)
	got, sum := runClient(t, p, data)
	if sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("socat wrote %d bytes that differ from the %d sent", len(got), len(data))
	}
	if !sum.OK || !sum.CoverOnce || sum.Bytes != uint64(len(data)) {
		t.Fatalf("summary %+v", sum)
	}
	t.Logf("stdin: %s", fmt.Sprintf("%d bytes, %d sends, %.0f MB/s, mode %s, %.3f copied/B", sum.Bytes, sum.Sends, sum.MBps, sum.Mode, sum.CopiedPerByte))
}

// sendRing fills a 7-chunk TX dmabuf with the period-7 pattern (7 chunks
// of a multiple of 7 bytes keep it continuous across wraps) and sends size
// bytes from it chunk by chunk, reusing a chunk only once its send has
// completed, then closes the write side and checks the peer got size bytes.
func sendRing(t *testing.T, b devmemapi.TXBinding, c devmemapi.TXConn, sink *peerSink, size, chunk uint64) {
	t.Helper()
	pattern.Fill(7, 0, b.(interface{ Bytes() []byte }).Bytes())
	var tr devmemapi.ZerocopyTracker
	var sends uint64
	for off := uint64(0); off < size; off += chunk {
		if sends >= 7 {
			awaitCompleted(t, c, &tr, sends-6, 30*time.Second)
		}
		if n, err := devmemapi.SendDmabuf(c, b.ID(), []devmemapi.Iovec{{Base: (sends % 7) * chunk, Len: chunk}}, 0); err != nil || uint64(n) != chunk {
			t.Fatalf("send: %d %v", n, err)
		}
		sends++
	}
	awaitCompleted(t, c, &tr, sends, 30*time.Second)
	c.CloseWrite()
	if r := sink.wait(t, 30*time.Second); r.err != nil || r.bytes != size {
		t.Fatalf("peer received %d of %d: %v", r.bytes, size, r.err)
	}
}

// TestTXOnAcceptedConn: an accepted connection sends from a TX dmabuf, as
// a kernel socket may (sendmsg with SCM_DEVMEM_DMABUF and MSG_ZEROCOPY on
// any SO_ZEROCOPY TCP socket). The stream mixes plain sends made before
// the first dmabuf send, plain sends between dmabuf sends (one of them
// with MSG_ZEROCOPY, completing as copied) and 64 MiB of dmabuf sends from
// a 4 MiB dmabuf whose slots are reused only after their sends complete.
// The peer (the kernel's TCP) receives it byte-exact; every send number
// completes exactly once.
func TestTXOnAcceptedConn(t *testing.T) {
	const txSize = 4 << 20
	w := newWorld(t, harness.Options{NoBind: true, Stack: stack.Config{RegionSize: 16<<20 + txSize}})
	b, err := w.Stack.BindTX(devmemapi.BindTXConfig{Ifindex: w.Pair.EmuIndex, Size: txSize})
	if err != nil {
		t.Fatalf("bind tx: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	mem := make([]byte, txSize)
	pattern.Fill(251, 0, mem)
	if _, err := b.WriteAt(mem, 0); err != nil {
		t.Fatal(err)
	}
	accepted := acceptOne(t, w)
	got := make(chan []byte, 1)
	go func() {
		c, err := w.DialPeer()
		if err != nil {
			t.Errorf("dial: %v", err)
			got <- nil
			return
		}
		defer c.Close()
		all, _ := io.ReadAll(c)
		got <- all
	}()
	dc, ok := <-accepted
	if !ok {
		t.Fatal("no connection")
	}
	c := dc.(*stack.Conn)
	defer c.Close()
	var want []byte
	plain := func(s string, flags int) {
		t.Helper()
		if n, err := c.Send([]byte(s), flags); err != nil || n != len(s) {
			t.Fatalf("plain send %q: %d %v", s, n, err)
		}
		want = append(want, s...)
	}
	plain("before the view: plain bytes the kernel socket sent first\n", 0)
	if _, err := devmemapi.SendDmabuf(c, b.ID(), []devmemapi.Iovec{{Base: 0, Len: 10}}, 0); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("dmabuf send without SO_ZEROCOPY: %v, want EINVAL", err)
	}
	c.SetZeroCopy(true)
	var tr devmemapi.ZerocopyTracker
	sends := uint64(0)
	const slot, total = 1 << 20, 64 << 20
	for off := uint64(0); off < total; off += slot {
		if off >= txSize { // the slot's previous send must be done
			awaitCompleted(t, c.TXView(), &tr, sends-txSize/slot+1, 20*time.Second)
		}
		base := off % txSize
		n, err := devmemapi.SendDmabuf(c, b.ID(), []devmemapi.Iovec{{Base: base, Len: slot}}, 0)
		if err != nil || n != slot {
			t.Fatalf("dmabuf send at %d: %d %v", off, n, err)
		}
		want = append(want, mem[base:base+slot]...)
		sends++
		if off == 8*slot {
			plain("a plain header between dmabuf sends\n", 0)
			plain("and one with MSG_ZEROCOPY\n", devmemapi.MSG_ZEROCOPY)
			sends++
		}
	}
	plain("the end\n", 0)
	awaitCompleted(t, c.TXView(), &tr, sends, 30*time.Second)
	if err := c.Shutdown(unix.SHUT_WR); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-got:
		if !bytes.Equal(b, want) {
			t.Fatalf("peer received %d bytes, want %d; first difference at %d", len(b), len(want), firstDiff(b, want))
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the peer saw no end of stream")
	}
	if tr.Completed() != sends {
		t.Fatalf("%d sends completed, made %d", tr.Completed(), sends)
	}
	st := w.Stack.TXStats()
	if st.Unmapped != 0 { // (stale drops: retransmissions of acknowledged bytes, as in TestTX1GiB)
		t.Fatalf("tx stats %+v", st)
	}
	t.Logf("%d MiB from the dmabuf and plain bytes on an accepted connection; %+v", total>>20, st)
}

// TestTXConnReadFlags: a devmem sending connection reads what the peer
// sends with recv(2)'s flags as tcp_recvmsg_locked does: MSG_PEEK leaves
// the bytes, MSG_TRUNC discards without copying, MSG_WAITALL waits for the
// whole buffer across the peer's two writes, MSG_DONTWAIT fails EAGAIN.
func TestTXConnReadFlags(t *testing.T) {
	w := newWorld(t, harness.Options{NoBind: true, Stack: stack.Config{RegionSize: 17 << 20}})
	b, err := w.Stack.BindTX(devmemapi.BindTXConfig{Ifindex: w.Pair.EmuIndex, Size: 1 << 20})
	if err != nil {
		t.Fatalf("bind tx: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	data := bytes.Repeat([]byte("0123456789"), 100)
	var ln net.Listener
	if err := w.Pair.Peer.Do(func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(w.Pair.PeerAddr.Addr().String(), "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	defer close(done)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write(data[:500])
		time.Sleep(200 * time.Millisecond) // MSG_WAITALL waits for the rest
		c.Write(data[500:])
		<-done
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tc, err := w.Stack.Dial(ctx, netip.AddrPortFrom(w.Pair.PeerAddr.Addr(), uint16(ln.Addr().(*net.TCPAddr).Port)))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer tc.Close()
	c := tc.(*stack.TXConn)
	buf := make([]byte, 1000)
	for i := 0; i < 2; i++ { // the same 10 bytes twice
		if n, err := c.ReadFlags(buf[:10], unix.MSG_PEEK); err != nil || n != 10 || string(buf[:10]) != "0123456789" {
			t.Fatalf("peek %d: %d %v %q", i, n, err, buf[:n])
		}
	}
	copy(buf, "xxxxx")
	if n, err := c.ReadFlags(buf[:5], unix.MSG_TRUNC); err != nil || n != 5 || string(buf[:5]) != "xxxxx" {
		t.Fatalf("trunc: %d %v %q (the buffer must stay as it was)", n, err, buf[:5])
	}
	if n, err := c.ReadFlags(buf[:995], unix.MSG_WAITALL); err != nil || n != 995 || !bytes.Equal(buf[:995], data[5:]) {
		t.Fatalf("waitall: %d %v", n, err)
	}
	if _, err := c.ReadFlags(buf, unix.MSG_DONTWAIT); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("dontwait on an empty socket: %v, want EAGAIN", err)
	}
}

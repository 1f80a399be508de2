package tests

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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

// TestRX1GiB: 1 GiB from a kernel TCP client arrives byte-exact through
// dmabuf frags with a 16 MiB UMEM, so every frame is recycled many times.
func TestRX1GiB(t *testing.T) {
	testutil.Watchdog(t, 5*time.Minute)
	w := newWorld(t, harness.Options{Stack: stack.Config{RegionSize: 16 << 20}})
	const size = 1 << 30
	res := transfer(t, w, 7, size)
	st := w.Stack.Stats()
	if res.DmabufBytes != size || res.LinearBytes != 0 || res.Plain != 0 {
		t.Fatalf("dmabuf %d linear %d plain calls %d: want all %d bytes as dmabuf frags", res.DmabufBytes, res.LinearBytes, res.Plain, size)
	}
	if res.Freed != res.Frags {
		t.Fatalf("freed %d tokens of %d frags", res.Freed, res.Frags)
	}
	if min := 10 * uint64(st.Frames.Frames); st.Frames.Recycled < min {
		t.Fatalf("frames recycled %d times, want >= %d (every frame many times)", st.Frames.Recycled, min)
	}
	checkStats(t, st)
	t.Logf("1 GiB in %v (%.0f MB/s), %d frags, %d recvmsg calls, frames recycled %d times, %d fill-empty drops",
		res.Elapsed, float64(size)/1e6/res.Elapsed.Seconds(), res.Frags, res.Calls, st.Frames.Recycled, st.XSK.RxFillRingEmpty)
}

// TestServerSocatSHA256: an unmodified socat client sends a random file;
// `xdevmem server -o` writes exactly the same bytes.
func TestServerSocatSHA256(t *testing.T) {
	testutil.Watchdog(t, 3*time.Minute)
	testutil.RequireTools(t, "socat")
	bin := xdevmemBinary(t)
	p := testutil.NewPair(t, netns.Options{Prefix: "xdt"})
	dir := t.TempDir()
	in := filepath.Join(dir, "random.bin")
	data := make([]byte, 48<<20+12345)
	rand.Read(data)
	if err := os.WriteFile(in, data, 0o600); err != nil {
		t.Fatal(err)
	}
	outPath := filepath.Join(dir, "received.bin")
	srv := p.Emu.Command(bin, "server", "-l", "-f", p.EmuIf, "-s", p.EmuAddr.Addr().String(),
		"-c", p.PeerAddr.Addr().String(), "-p", "5300", "-o", outPath, "--json")
	stderr, _ := srv.StderrPipe()
	var stdout bytes.Buffer
	srv.Stdout = &stdout
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Process.Kill()
	waitLine(t, stderr, "listening on", 30*time.Second)
	cli := p.Peer.Command("socat", "-u", "OPEN:"+in, "TCP:"+p.EmuAddr.Addr().String()+":5300")
	if out, err := cli.CombinedOutput(); err != nil {
		t.Fatalf("socat: %v: %s", err, out)
	}
	if err := waitCmd(srv, time.Minute); err != nil {
		t.Fatalf("server: %v; stdout: %s", err, stdout.String())
	}
	got, err := os.ReadFile(outPath)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("sha256 differs: got %d bytes, sent %d", len(got), len(data))
	}
	var sum struct {
		OK           bool   `json:"ok"`
		Frags        uint64 `json:"frags"`
		DmabufBytes  uint64 `json:"dmabuf_bytes"`
		FramesFree   uint32 `json:"frames_free_after_close"`
		Frames       uint32 `json:"frames"`
		DmabufCopied uint64 `json:"dmabuf_bytes_copied"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &sum); err != nil {
		t.Fatalf("summary: %v: %s", err, stdout.String())
	}
	if !sum.OK || sum.DmabufBytes != uint64(len(data)) || sum.FramesFree != sum.Frames || sum.DmabufCopied != 0 {
		t.Fatalf("summary %+v", sum)
	}
}

func waitCmd(c *exec.Cmd, d time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		c.Process.Kill()
		return fmt.Errorf("still running after %v", d)
	}
}

// TestHeaderSplitSizes: payloads of every size from 1 to 8192 bytes arrive
// entirely as dmabuf frags with the threshold at 0; entirely as ordinary
// bytes (no devmem control message: the kernel's readable skb) when the
// threshold is above every segment's payload; and, from a device that
// leaves the first 100 payload bytes of each split segment in the header
// buffer (Config.LinearHead), as SCM_DEVMEM_LINEAR parts followed by their
// fragments, in stream order.
func TestHeaderSplitSizes(t *testing.T) {
	testutil.Watchdog(t, 3*time.Minute)
	for _, tc := range []struct {
		name   string
		cfg    stack.Config
		plain  bool
		linear bool
	}{
		{"thresh=0", stack.Config{}, false, false},
		{"thresh=9000", stack.Config{HDSThresh: 9000}, true, false},
		{"linear-head=100", stack.Config{LinearHead: 100}, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, harness.Options{Stack: tc.cfg})
			connc := acceptOne(t, w)
			var total uint64
			for n := 1; n <= 8192; n++ {
				total += uint64(n)
			}
			errc := make(chan error, 1)
			go func() {
				c, err := w.DialPeer()
				if err != nil {
					errc <- err
					return
				}
				defer c.Close()
				buf := make([]byte, 8192)
				var off uint64
				for n := 1; n <= 8192; n++ {
					pattern.Fill(11, off, buf[:n])
					if _, err := c.Write(buf[:n]); err != nil {
						errc <- err
						return
					}
					off += uint64(n)
				}
				errc <- nil
			}()
			conn := <-connc
			if conn == nil {
				t.FailNow()
			}
			defer conn.Close()
			res := receiveValidated(t, w, conn, 11, total)
			waitErr(t, errc, "send")
			switch {
			case tc.plain:
				if res.PlainBytes != total || res.Frags != 0 || res.Linear != 0 {
					t.Fatalf("plain %d bytes, %d frags, %d linear msgs: want all %d as ordinary bytes", res.PlainBytes, res.Frags, res.Linear, total)
				}
			case tc.linear:
				if res.Linear == 0 || res.Frags == 0 || res.LinearBytes+res.DmabufBytes+res.PlainBytes != total || res.LinearBytes > 100*res.Linear {
					t.Fatalf("linear %d bytes in %d msgs, dmabuf %d in %d frags, plain %d: want linear heads of at most 100 bytes before fragments", res.LinearBytes, res.Linear, res.DmabufBytes, res.Frags, res.PlainBytes)
				}
			default:
				if res.DmabufBytes != total || res.Linear != 0 || res.Plain != 0 {
					t.Fatalf("dmabuf %d bytes, %d linear msgs: want all %d in the dmabuf", res.DmabufBytes, res.Linear, total)
				}
			}
			checkStats(t, w.Stack.Stats())
		})
	}
}

// TestHeaderSplitSegments sends one segment per connection for sizes around
// the interesting edges (as devmem.py's check_rx_hds does) and checks each
// arrives whole in the dmabuf.
func TestHeaderSplitSegments(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	w := newWorld(t, harness.Options{})
	for _, n := range []int{1, 2, 7, 8, 63, 64, 65, 512, 1000, 1447, 1448, 1449, 2048, 4096, 8192} {
		connc := acceptOne(t, w)
		errc := sendPattern(w, 5, uint64(n))
		conn := <-connc
		if conn == nil {
			t.FailNow()
		}
		res := receiveValidated(t, w, conn, 5, uint64(n))
		conn.Close()
		waitErr(t, errc, "send")
		if res.DmabufBytes != uint64(n) || res.Linear != 0 {
			t.Fatalf("size %d: dmabuf %d, linear msgs %d", n, res.DmabufBytes, res.Linear)
		}
	}
	checkStats(t, w.Stack.Stats())
}

// TestConcurrentConnections: 16 connections at once, each with its own
// pattern period, each byte-exact.
func TestConcurrentConnections(t *testing.T) {
	testutil.Watchdog(t, 3*time.Minute)
	w := newWorld(t, harness.Options{Stack: stack.Config{RegionSize: 64 << 20}})
	runConns(t, w, 16, 8<<20)
	checkStats(t, w.Stack.Stats())
}

// TestRecvErrors: the kernel's errors for misuse.
func TestRecvErrors(t *testing.T) {
	testutil.Watchdog(t, time.Minute)
	w := newWorld(t, harness.Options{})
	connc := acceptOne(t, w)
	errc := sendPattern(w, 7, 64<<10)
	conn := <-connc
	if conn == nil {
		t.FailNow()
	}
	defer conn.Close()
	waitErr(t, errc, "send")
	p := make([]byte, 1<<20)
	oob := make([]byte, 64*devmemapi.CmsgSpaceDmabuf)

	// A plain read of dmabuf data fails with EFAULT and loses nothing.
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := conn.RecvMsg(p, oob, 0); !errors.Is(err, unix.EFAULT) {
		t.Fatalf("plain recvmsg: %v, want EFAULT", err)
	}
	// A control buffer too small for one dmabuf_cmsg: ETOOSMALL, nothing lost.
	if _, _, err := conn.RecvMsg(p, oob[:devmemapi.CmsgSpaceDmabuf-1], devmemapi.MSG_SOCK_DEVMEM); !errors.Is(err, devmemapi.ETOOSMALL) {
		t.Fatalf("tiny oob: %v, want ETOOSMALL", err)
	}
	n, frags, err := devmemapi.RecvFrags(conn, p, oob, nil, 0)
	if err != nil || n == 0 || len(frags) == 0 {
		t.Fatalf("devmem recvmsg after errors: n=%d frags=%d err=%v", n, len(frags), err)
	}
	if frags[0].FragToken == 0 {
		t.Fatalf("token 0 delivered")
	}
	// DONTNEED with 129 tokens: EINVAL, nothing freed.
	many := make([]devmemapi.DmabufToken, 129)
	for i := range many {
		many[i] = devmemapi.DmabufToken{TokenStart: frags[0].FragToken, TokenCount: 1}
	}
	if _, err := conn.DontNeed(many); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("dontneed 129 tokens: %v, want EINVAL", err)
	}
	// An unknown token frees nothing and returns 0.
	if got, err := conn.DontNeed([]devmemapi.DmabufToken{{TokenStart: 1 << 30, TokenCount: 1}}); err != nil || got != 0 {
		t.Fatalf("unknown token: freed %d, %v; want 0, nil", got, err)
	}
	// Every real token frees exactly once; a second free returns 0.
	var toks []devmemapi.DmabufToken
	for _, f := range frags {
		toks = append(toks, devmemapi.DmabufToken{TokenStart: f.FragToken, TokenCount: 1})
	}
	if got, err := conn.DontNeed(toks); err != nil || got != len(toks) {
		t.Fatalf("dontneed: freed %d of %d, %v", got, len(toks), err)
	}
	if got, _ := conn.DontNeed(toks); got != 0 {
		t.Fatalf("double free freed %d", got)
	}
	// The rest of the stream still arrives and validates.
	v := pattern.NewValidator(7)
	mem := w.Binding.(interface{ Bytes() []byte }).Bytes()
	for _, f := range frags {
		v.Check(mem[f.FragOffset : f.FragOffset+uint64(f.FragSize)])
	}
	res, err := harness.Receive(conn, w.Binding, harness.ReceiveOptions{Sink: v.Check})
	if err != nil || v.Offset() != 64<<10 || v.Err() != nil {
		t.Fatalf("rest of stream: %d bytes, validated %d: %v %v", res.Bytes, v.Offset(), err, v.Err())
	}
}

// TestDemoCommand runs `xdevmem demo` as a user would.
func TestDemoCommand(t *testing.T) {
	testutil.Watchdog(t, 3*time.Minute)
	testutil.RequirePrivileged(t)
	bin := xdevmemBinary(t)
	out, err := exec.Command(bin, "demo", "--size", "64MiB", "--json").Output()
	if err != nil {
		t.Fatalf("demo: %v: %s", err, out)
	}
	var sum struct {
		OK         bool   `json:"ok"`
		Bytes      uint64 `json:"bytes"`
		Frags      uint64 `json:"frags"`
		TokensOut  int    `json:"tokens_outstanding"`
		FramesFree uint32 `json:"frames_free_after_close"`
		Frames     uint32 `json:"frames"`
		Copied     uint64 `json:"dmabuf_bytes_copied"`
		ValErrs    int    `json:"validation_errors"`
		PeerNS     string `json:"peer_namespace"`
		StackNS    string `json:"stack_namespace"`
	}
	if err := json.Unmarshal(out, &sum); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if !sum.OK || sum.Bytes != 64<<20 || sum.Frags == 0 || sum.TokensOut != 0 || sum.FramesFree != sum.Frames || sum.Copied != 0 || sum.ValErrs != 0 {
		t.Fatalf("demo summary: %+v", sum)
	}
	// Its own namespaces are gone (other demos may run at the same time).
	left, err := netns.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range left {
		if n == sum.PeerNS || n == sum.StackNS {
			t.Fatalf("demo left namespace %s", n)
		}
	}
	if sum.PeerNS == "" || sum.StackNS == "" {
		t.Fatalf("summary names no namespaces: %s", out)
	}
}

var _ = strconv.Itoa

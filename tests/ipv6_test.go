package tests

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/internal/harness"
	"github.com/xdevmem/xdevmem/internal/netns"
	"github.com/xdevmem/xdevmem/internal/pattern"
	"github.com/xdevmem/xdevmem/internal/testutil"
)

// TestRXIPv6: the receive path over IPv6, with neighbour discovery between
// the kernel peer and the stack: byte-exact, all payload as dmabuf frags.
func TestRXIPv6(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	w := newWorld(t, harness.Options{IPv6: true})
	if !w.Pair.EmuAddr.Addr().Is6() {
		t.Fatalf("stack address %v is not IPv6", w.Pair.EmuAddr)
	}
	const size = 128 << 20
	res := transfer(t, w, 7, size)
	if res.DmabufBytes != size || res.LinearBytes != 0 {
		t.Fatalf("dmabuf %d, linear %d", res.DmabufBytes, res.LinearBytes)
	}
	t.Logf("IPv6 to [%v]: %d bytes in %v, %d frags", w.Pair.EmuAddr.Addr(), res.Bytes, res.Elapsed, res.Frags)
	checkStats(t, w.Stack.Stats())
}

// ipv6Pair is a veth pair over IPv6, the stack's address configured nowhere
// (dedicated address).
func ipv6Pair(t *testing.T) *netns.Pair {
	t.Helper()
	peer, emu := harness.IPv6Addrs()
	return testutil.NewPair(t, netns.Options{Prefix: "xdt", PeerAddr: peer, EmuAddr: emu})
}

// TestServer1GiBIPv6: `xdevmem server -s <IPv6>` receives 1 GiB from the
// kernel's TCP over IPv6, byte-exact (-v 7), all of it as dmabuf frags
// (-L), and gives every frame back.
func TestServer1GiBIPv6(t *testing.T) {
	for _, mode := range []string{"dedicated", "shared"} {
		t.Run(mode, func(t *testing.T) { server1GiBIPv6(t, mode) })
	}
}

func server1GiBIPv6(t *testing.T, mode string) {
	testutil.Watchdog(t, 2*time.Minute)
	p := ipv6Pair(t)
	if mode == "shared" {
		if err := p.Emu.AddAddr(p.EmuIf, p.EmuAddr); err != nil {
			t.Fatal(err)
		}
	}
	srv := startServer(t, p, "-p", "5330", "-v", "7", "-L", "--quiet", "--address-mode", mode)
	want := "listening on " + netip.AddrPortFrom(p.EmuAddr.Addr(), 5330).String()
	if !strings.Contains(srv.stderr.String(), want) {
		t.Fatalf("no %q in %s", want, srv.stderr.String())
	}
	const size = 1 << 30
	if err := peerSend(p, 5330, size); err != nil {
		t.Fatal(err)
	}
	sum, code := srv.wait(t, time.Minute)
	if code != 0 || !sum.OK || !sum.Validated || sum.Bytes != size || sum.DmabufBytes != size || sum.PlainCalls != 0 {
		t.Fatalf("exit %d, summary %+v\nstderr: %s", code, sum, srv.stderr.String())
	}
	if sum.FramesFree != sum.Frames {
		t.Fatalf("frames free %d of %d after close", sum.FramesFree, sum.Frames)
	}
	if ap, err := netip.ParseAddrPort(sum.PerConn[0].Peer); err != nil || ap.Addr() != p.PeerAddr.Addr() {
		t.Fatalf("peer %q, want %v (%v)", sum.PerConn[0].Peer, p.PeerAddr.Addr(), err)
	}
	t.Logf("server over IPv6: %d bytes in %.2f s (%.0f MB/s), %d frags", sum.Bytes, sum.Seconds, float64(sum.Bytes)/1e6/sum.Seconds, sum.Frags)
}

// TestNcdevmemIPv6: xdevmem run as ncdevmem in devmem.py's environment
// with addr_ipver 6: check_rx, 1 GiB through ncdevmem -l (every byte
// validated, a 5-tuple rule on the IPv6 flow), check_tx and
// check_tx_chunks (-z 3), whose completions come as SOL_IPV6 /
// IPV6_RECVERR, and -z 3 with 1 MiB of random bytes.
func TestNcdevmemIPv6(t *testing.T) {
	testutil.Watchdog(t, 3*time.Minute)
	e := newNcEnvFamily(t, true)
	local, remote := e.p.Emu, e.p.Peer

	t.Run("check_rx", func(t *testing.T) {
		port := e.randPort()
		b := ncStart(t, local, "sh", e.ncdevmemRx(port, true, false, true, 0))
		waitPortListen(t, local, port, b)
		ncCmd(t, remote, "bash", rxPipe("1K", e.socatSend(port, 0)))
		ncExpectOK(t, b, "check_rx")
		se := b.stderr.String()
		if totalReceived(se) != 1024 || !strings.Contains(b.stdout.String(), "Validated buffer") ||
			!strings.Contains(se, "Got connection from "+e.remote+":") {
			t.Fatalf("stdout:\n%s\nstderr:\n%s", b.stdout.String(), se)
		}
	})

	// 1 GiB through ncdevmem -l, with the address on the interface as in
	// devmem.py's environment (shared mode), then configured nowhere
	// (dedicated mode).
	rx1GiB := func(t *testing.T, mode string) {
		const size = 1 << 30
		port := e.randPort()
		// One line per fragment on stderr: keep the tail only.
		b := ncStartLimit(t, local, "sh", e.ncdevmemRx(port, true, false, true, 0), 64<<10)
		waitPortListen(t, local, port, b)
		if head := b.stderr.String(); !strings.Contains(head, "xdevmem: "+mode+" address") {
			t.Fatalf("not in %s address mode:\n%s", mode, head)
		}
		ss := ncCmd(t, local, "sh", fmt.Sprintf("ss -Hltn 'sport = :%d'", port))
		if !strings.Contains(ss, fmt.Sprintf("[%s]:%d", e.addr, port)) {
			t.Fatalf("ss -ltn does not show [%s]:%d: %q", e.addr, port, ss)
		}
		start := time.Now()
		err := remote.Do(func() error {
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(e.remote), Port: port}}
			c, err := d.Dial("tcp", net.JoinHostPort(e.addr, strconv.Itoa(port)))
			if err != nil {
				return err
			}
			if _, err := io.Copy(c, pattern.NewReader(7, size)); err != nil {
				return err
			}
			return c.Close()
		})
		if err != nil {
			t.Fatal(err)
		}
		if ret := b.wait(t, 90*time.Second); ret != 0 {
			t.Fatalf("ncdevmem exited %d\nstderr:\n%s", ret, lastLines(b.stderr.String(), 25))
		}
		se := b.stderr.String()
		if got := totalReceived(se); got != size || !strings.Contains(se, "ncdevmem: ok") {
			t.Fatalf("total_received=%d, want %d:\n%s", got, size, lastLines(se, 25))
		}
		t.Logf("ncdevmem -l over IPv6, %s address: %d bytes validated in %v", mode, size, time.Since(start).Round(time.Millisecond))
	}
	t.Run("rx_1GiB_shared", func(t *testing.T) { rx1GiB(t, "shared") })

	for _, tc := range []struct {
		name  string
		chunk int
	}{{"check_tx", 0}, {"check_tx_chunks", 3}} {
		t.Run(tc.name, func(t *testing.T) {
			port := e.randPort()
			socat := ncStart(t, remote, "sh", e.socatListen(port))
			waitPortListen(t, remote, port, nil)
			tx := e.ncdevmemTx(port, tc.chunk)
			out, err := local.Command("sh", "-c", `bash -c 'echo -e "hello\\nworld" | `+tx+`'`).CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v\n%s", tx, err, out)
			}
			if ret := socat.wait(t, 10*time.Second); ret != 0 {
				t.Fatalf("socat exited %d", ret)
			}
			if got := strings.TrimSpace(socat.stdout.String()); got != "hello\nworld" {
				t.Fatalf("socat received %q\nncdevmem:\n%s", got, out)
			}
			if !strings.Contains(string(out), "(SOL_IPV6/IPV6_RECVERR)") || !strings.Contains(string(out), "tx complete") {
				t.Fatalf("completions not read as IPV6_RECVERR:\n%s", out)
			}
		})
	}

	t.Run("tx_chunks_1MiB", func(t *testing.T) {
		data := make([]byte, 1<<20)
		rand.Read(data)
		port := e.randPort()
		socat := ncStart(t, remote, "sh", e.socatListen(port))
		waitPortListen(t, remote, port, nil)
		cmd := local.Command("sh", "-c", e.ncdevmemTx(port, 3))
		cmd.Stdin = bytes.NewReader(data)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("ncdevmem -z 3: %v\n%s", err, lastLines(string(out), 20))
		}
		if ret := socat.wait(t, 10*time.Second); ret != 0 {
			t.Fatalf("socat exited %d", ret)
		}
		if got := socat.stdout.String(); got != string(data) {
			t.Fatalf("socat received %d bytes that differ from the %d sent", len(got), len(data))
		}
	})

	t.Run("rx_1GiB_dedicated", func(t *testing.T) {
		if err := local.DelAddr(e.ifname, e.p.EmuAddr); err != nil {
			t.Fatal(err)
		}
		rx1GiB(t, "dedicated")
	})
}

// TestClientFamilies: `xdevmem client -z 3` over IPv6, over IPv4 from an
// AF_INET6 socket (-s ::ffff:a.b.c.d, as ncdevmem's client socket) and
// over plain IPv4: byte-exact each time, and the completions come in the
// socket family's layout (inet_recv_error: ipv6_recv_error on AF_INET6,
// ip_recv_error on AF_INET).
func TestClientFamilies(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	for _, tc := range []struct {
		name   string
		ipv6   bool
		mapped bool
		want   string
	}{
		{"ipv6", true, false, "SOL_IPV6/IPV6_RECVERR"},
		{"v4-mapped", false, true, "SOL_IPV6/IPV6_RECVERR"},
		{"ipv4", false, false, "SOL_IP/IP_RECVERR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var p *netns.Pair
			if tc.ipv6 {
				p = ipv6Pair(t)
			} else {
				p = testutil.NewPair(t, netns.Options{Prefix: "xdt"})
			}
			const size = 1 << 20
			args := []string{"-z", "3", "--size", strconv.Itoa(size), "-v", "7", "--send-size", "65536", "--tx-size", "256KiB"}
			if tc.mapped {
				args = append(args, "-s", netip.AddrFrom16(p.PeerAddr.Addr().As16()).String())
			}
			got, sum := runClient(t, p, nil, args...)
			if uint64(len(got)) != size {
				t.Fatalf("socat wrote %d bytes, want %d", len(got), size)
			}
			if err := pattern.NewValidator(7).Check(got); err != nil {
				t.Fatal(err)
			}
			if !sum.OK || !sum.CoverOnce || sum.Sends == 0 || sum.ErrQueueCmsg != tc.want {
				t.Fatalf("summary %+v, want completions as %s", sum, tc.want)
			}
		})
	}
}

// TestTXIPv6ErrQueue: the emulated TX path over IPv6 to the kernel's TCP:
// 56 MiB from a 7-slot TX dmabuf, each slot reused after its completion,
// byte-exact at the peer; every notification read from the error queue is
// the 64-byte SOL_IPV6 / IPV6_RECVERR message ipv6_recv_error writes
// (cmsg_len 60, zerocopy sock_extended_err, zeroed sockaddr_in6).
func TestTXIPv6ErrQueue(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	const chunk, sends = 7 * 128 << 10, 64
	w, b, c, sink := txWorldOpts(t, harness.Options{IPv6: true}, 7*chunk, 7)
	if la := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr(); la != w.Pair.EmuAddr.Addr() {
		t.Fatalf("local address %v, want %v", la, w.Pair.EmuAddr.Addr())
	}
	pattern.Fill(7, 0, b.(interface{ Bytes() []byte }).Bytes())
	var tr devmemapi.ZerocopyTracker
	oob := make([]byte, devmemapi.CmsgSpaceZerocopy6)
	notes := 0
	recv := func() {
		for {
			n, flags, err := c.RecvErrQueue(oob, 0)
			if errors.Is(err, unix.EAGAIN) {
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
			if n != 64 || flags != devmemapi.MSG_ERRQUEUE || h.Level != unix.SOL_IPV6 || h.Type != unix.IPV6_RECVERR || h.Len != 60 {
				t.Fatalf("notification %d: oobn %d flags %#x cmsg {len %d level %d type %d}", notes, n, flags, h.Len, h.Level, h.Type)
			}
			if off := oob[16+16 : 60]; !bytes.Equal(off, make([]byte, 28)) {
				t.Fatalf("offender not a zeroed sockaddr_in6: %x", off)
			}
			rs, err := devmemapi.AppendZerocopyRanges(nil, oob[:n])
			if err != nil || len(rs) != 1 {
				t.Fatalf("ranges %v %v", rs, err)
			}
			if err := tr.Add(rs[0]); err != nil {
				t.Fatal(err)
			}
			notes++
		}
	}
	await := func(n uint64) {
		for deadline := time.Now().Add(30 * time.Second); !tr.Covers(n); {
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d sends completed", tr.Completed(), n)
			}
			if _, err := c.PollErrQueue(50 * time.Millisecond); err != nil {
				t.Fatal(err)
			}
			recv()
		}
	}
	for i := uint64(0); i < sends; i++ {
		if i >= 7 {
			await(i - 6)
		}
		if n, err := devmemapi.SendDmabuf(c, b.ID(), []devmemapi.Iovec{{Base: (i % 7) * chunk, Len: chunk}}, 0); err != nil || n != chunk {
			t.Fatalf("send %d: %d %v", i, n, err)
		}
	}
	await(sends)
	c.CloseWrite()
	if r := sink.wait(t, 30*time.Second); r.err != nil || r.bytes != sends*chunk {
		t.Fatalf("peer received %d of %d: %v", r.bytes, sends*chunk, r.err)
	}
	t.Logf("%d sends over IPv6 completed in %d IPV6_RECVERR notifications", sends, notes)
}

// TestSoakIPv6: `xdevmem soak --ipv6` runs its connections over IPv6.
func TestSoakIPv6(t *testing.T) {
	testutil.Watchdog(t, time.Minute)
	testutil.RequirePrivileged(t)
	bin := xdevmemBinary(t)
	out, err := exec.Command(bin, "soak", "--ipv6", "--duration", "3s", "--interval", "500ms", "--conn-size", "128MiB", "--max-heap-growth", "64MiB", "--json").Output()
	var sum struct {
		OK    bool   `json:"ok"`
		Error string `json:"error"`
		Stack string `json:"stack_address"`
		Bytes uint64 `json:"bytes"`
		Conns int    `json:"connections"`
	}
	if jerr := json.Unmarshal(out, &sum); jerr != nil {
		t.Fatalf("soak: %v / %v: %s", err, jerr, out)
	}
	ap, perr := netip.ParseAddrPort(sum.Stack)
	if err != nil || !sum.OK || perr != nil || !ap.Addr().Is6() || sum.Conns < 2 {
		t.Fatalf("soak --ipv6: %v, summary %+v", err, sum)
	}
	t.Logf("soak --ipv6: %d bytes over %d connections to %s", sum.Bytes, sum.Conns, sum.Stack)
}

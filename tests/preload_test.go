package tests

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/xdevmem/xdevmem/internal/netns"
	"github.com/xdevmem/xdevmem/internal/testutil"
)

// libxdevmem.so under unmodified C programs: the kernel's own ncdevmem
// from Linux 6.12 (built from Debian's linux-source-6.12 by
// testdata/build-ncdevmem.sh), the C example of examples/c, and
// testdata/preload_check.c (bad input, leaked tokens, the cost of a call).
// The interface has its address configured, as in the selftests'
// environment, so the stack runs in shared-address mode.

var (
	buildMu  sync.Mutex
	builtLib string
	builtC   = map[string]string{}
	builtNc  = map[string]string{} // ncdevmem builds by patch ("": unmodified)
)

// libxdevmem builds the library once per test process.
func libxdevmem(t testing.TB) string {
	t.Helper()
	testutil.RequireTools(t, "gcc")
	buildMu.Lock()
	defer buildMu.Unlock()
	if builtLib == "" {
		dir, err := buildDir()
		if err != nil {
			t.Fatal(err)
		}
		so := filepath.Join(dir, "libxdevmem.so")
		out, err := exec.Command("go", "build", "-buildmode=c-shared", "-o", so, "../cmd/libxdevmem").CombinedOutput()
		if err != nil {
			t.Fatalf("build libxdevmem.so: %v\n%s", err, out)
		}
		builtLib = so
	}
	return builtLib
}

// cProgram compiles a C program of the repository once per test process.
func cProgram(t testing.TB, src string) string {
	t.Helper()
	testutil.RequireTools(t, "gcc")
	buildMu.Lock()
	defer buildMu.Unlock()
	if bin := builtC[src]; bin != "" {
		return bin
	}
	dir, err := buildDir()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, strings.TrimSuffix(filepath.Base(src), ".c"))
	out, err := exec.Command("gcc", "-O2", "-Wall", "-Wno-nonnull", "-Werror", "-o", bin, src).CombinedOutput()
	if err != nil {
		t.Fatalf("gcc %s: %v\n%s", src, err, out)
	}
	builtC[src] = bin
	return bin
}

// ncdevmem612 is the kernel's ncdevmem of Linux 6.12, built by
// testdata/build-ncdevmem.sh (which installs what it needs) once and kept
// in the user's cache directory; XDEVMEM_NCDEVMEM names a prebuilt one.
func ncdevmem612(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("XDEVMEM_NCDEVMEM"); p != "" {
		return p
	}
	return buildNcdevmem(t, "")
}

// ncdevmem612Bare is ncdevmem612 with testdata/ncdevmem-bare.patch applied:
// the benchmark's diagnostic variant without the per-fragment print and
// validation, which no test runs.
func ncdevmem612Bare(t testing.TB) string {
	t.Helper()
	return buildNcdevmem(t, "testdata/ncdevmem-bare.patch")
}

// buildNcdevmem builds ncdevmem with patch applied (none if empty), once
// per script and patch content.
func buildNcdevmem(t testing.TB, patch string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if bin := builtNc[patch]; bin != "" {
		return bin
	}
	script, err := filepath.Abs("testdata/build-ncdevmem.sh")
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	args := []string{script}
	for _, f := range []string{script, patch} {
		if f == "" {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		h.Write(b)
	}
	name := "ncdevmem-6.12-"
	if patch != "" {
		name += strings.TrimSuffix(filepath.Base(patch), ".patch") + "-"
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	bin := filepath.Join(cache, "xdevmem", name+hex.EncodeToString(h.Sum(nil)[:6]))
	if _, err := os.Stat(bin); err != nil {
		if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
			t.Fatal(err)
		}
		args = append(args, bin+".tmp")
		if patch != "" {
			args = append(args, patch)
		}
		cmd := exec.Command("bash", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", name+"*", err, out)
		}
		if err := os.Rename(bin+".tmp", bin); err != nil {
			t.Fatal(err)
		}
	}
	builtNc[patch] = bin
	return bin
}

// preloadWorld is a veth pair with the emulated end's IPv4 address
// configured in the kernel (shared-address mode), IPv6 addresses on both
// ends, and three RX queues on the emulated end.
type preloadWorld struct {
	p            *netns.Pair
	ifname       string
	addr4, peer4 string
	addr6, peer6 string
	lib          string
}

func newPreloadWorld(t testing.TB) *preloadWorld { return newPreloadWorldMTU(t, 0) }

// newPreloadWorldMTU is newPreloadWorld on a link of the given MTU (0: the
// default, 1500).
func newPreloadWorldMTU(t testing.TB, mtu int) *preloadWorld {
	t.Helper()
	testutil.RequirePrivileged(t)
	lib := libxdevmem(t)
	p := testutil.NewPair(t, netns.Options{Prefix: "xdpl", SharedAddr: true, RxQueues: 3, TxQueues: 3, MTU: mtu})
	var r [2]byte
	rand.Read(r[:])
	net6 := [16]byte{0xfd, 0x00, 0x0d, 0xe7, r[0], r[1]}
	emu6, peer6 := net6, net6
	emu6[15], peer6[15] = 2, 1
	e6, p6 := netip.PrefixFrom(netip.AddrFrom16(emu6), 64), netip.PrefixFrom(netip.AddrFrom16(peer6), 64)
	if err := p.Emu.AddAddr(p.EmuIf, e6); err != nil {
		t.Fatal(err)
	}
	if err := p.Peer.AddAddr(p.PeerIf, p6); err != nil {
		t.Fatal(err)
	}
	return &preloadWorld{p: p, ifname: p.EmuIf, lib: lib,
		addr4: p.EmuAddr.Addr().String(), peer4: p.PeerAddr.Addr().String(),
		addr6: e6.Addr().String(), peer6: p6.Addr().String()}
}

// command runs bin in the emulated namespace, under the library unless
// lib is empty, with extra environment variables.
func (w *preloadWorld) command(lib string, env []string, bin string, args ...string) *exec.Cmd {
	pre := []string{}
	if lib != "" {
		pre = append(pre, "LD_PRELOAD="+lib)
	}
	return w.p.Emu.Command("env", append(append(append(pre, env...), bin), args...)...)
}

// watcher is a command's output stream: it counts lines holding the
// words it watches, keeps the last 64 KiB, and closes a channel when a
// line holds the ready word. Output of any size passes through it.
type watcher struct {
	mu      sync.Mutex
	words   []string
	counts  map[string]int
	partial []byte
	tail    []byte
	all     bytes.Buffer
	keepAll bool
	ready   string
	readyCh chan struct{}
}

func newWatcher(ready string, keepAll bool, words ...string) *watcher {
	return &watcher{words: words, counts: map[string]int{}, ready: ready, readyCh: make(chan struct{}), keepAll: keepAll}
}

func (w *watcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.keepAll {
		w.all.Write(p)
	}
	w.tail = append(w.tail, p...)
	if len(w.tail) > 128<<10 {
		w.tail = append(w.tail[:0], w.tail[len(w.tail)-64<<10:]...)
	}
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		line := string(w.partial[:i])
		w.partial = w.partial[i+1:]
		for _, word := range w.words {
			if strings.Contains(line, word) {
				w.counts[word]++
			}
		}
		if w.ready != "" && strings.Contains(line, w.ready) {
			close(w.readyCh)
			w.ready = ""
		}
	}
	if len(w.partial) > 1<<20 {
		w.partial = w.partial[:0]
	}
	return len(p), nil
}

func (w *watcher) count(word string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.counts[word]
}

func (w *watcher) lastLines(n int) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return lastLines(string(w.tail), n)
}

func (w *watcher) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.keepAll {
		return w.all.String()
	}
	return string(w.tail)
}

// bg is a background command with its output watched.
type bg struct {
	cmd            *exec.Cmd
	stdout, stderr *watcher
	done           chan error
}

func startBG(t testing.TB, cmd *exec.Cmd, stdout, stderr *watcher) *bg {
	t.Helper()
	b := &bg{cmd: cmd, stdout: stdout, stderr: stderr, done: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { b.done <- cmd.Wait() }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-b.done
		b.done <- nil
	})
	return b
}

// wait returns the exit status, failing the test after d.
func (b *bg) wait(t testing.TB, d time.Duration) int {
	t.Helper()
	return waitExit(t, b.done, d, func() string { return b.stderr.lastLines(30) })
}

func (b *bg) waitReady(t testing.TB, w *watcher, d time.Duration) {
	t.Helper()
	select {
	case <-w.readyCh:
	case err := <-b.done:
		b.done <- err
		t.Fatalf("exited (%v) before %q; stderr:\n%s", err, w.ready, b.stderr.lastLines(30))
	case <-time.After(d):
		t.Fatalf("no %q within %v; stderr:\n%s", w.ready, d, b.stderr.lastLines(30))
	}
}

// peerSh runs a shell pipeline in the peer namespace.
func (w *preloadWorld) peerSh(t *testing.T, script string) {
	t.Helper()
	out, err := w.p.Peer.Command("bash", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
}

// TestPreloadNcdevmem: the kernel's ncdevmem of Linux 6.12, unmodified,
// without the library (it fails: no udmabuf) and under it: its probe
// sequence passes, and it receives 1 GiB of the -v 7 pattern from socat,
// validated, over IPv4 and IPv6. Killed with SIGKILL it leaves no XDP
// program behind.
func TestPreloadNcdevmem(t *testing.T) {
	testutil.Watchdog(t, 5*time.Minute)
	testutil.RequireTools(t, "socat", "bash", "yes", "tr", "head")
	nc := ncdevmem612(t)
	w := newPreloadWorld(t)

	t.Run("without-library", func(t *testing.T) {
		out, err := w.command("", nil, nc, "-f", w.ifname, "-t", "1", "-q", "2").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "no-udmabuf") {
			t.Fatalf("ncdevmem without the library: %v\n%s", err, out)
		}
		t.Logf("without the library: %v: %s", err, strings.TrimSpace(string(out)))
		// XDEVMEM_BACKEND=kernel: the library leaves the program to the
		// kernel, which has no devmem here.
		out2, err2 := w.command(w.lib, []string{"XDEVMEM_BACKEND=kernel"}, nc, "-f", w.ifname, "-t", "1", "-q", "2").CombinedOutput()
		if err2 == nil || string(out2) != string(out) {
			t.Fatalf("under the library with XDEVMEM_BACKEND=kernel: %v\n%s", err2, out2)
		}
	})

	// run_devmem_tests, then main() returns 1 (6.12's ncdevmem only
	// exits 0 as a server). Every failure of the sequence would be an
	// error(1, ...) line naming it.
	t.Run("probe", func(t *testing.T) {
		out, err := w.command(w.lib, nil, nc, "-f", w.ifname, "-t", "1", "-q", "2").CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 1 {
			t.Fatalf("probe: %v\n%s", err, out)
		}
		s := string(out)
		pos := 0
		for _, want := range []string{
			"Running: sudo ethtool -X " + w.ifname + " equal 1",
			"YNL failed: Kernel error: missing attribute: .queues.id", // empty queue list
			"YNL failed: Kernel error: 'tcp-data-split is disabled'",  // header split off
			"got dmabuf id=", // bind
			"Running: sudo ethtool -L " + w.ifname + " rx 2 tx 1",
			"netlink error: requested channel counts are too low for existing memory provider setting (3)", // shrink
		} {
			i := strings.Index(s[pos:], want)
			if i < 0 {
				t.Fatalf("probe output lacks %q after byte %d:\n%s", want, pos, s)
			}
			pos += i + len(want)
		}
		for _, bad := range []string{"should have failed", "should be illegal", "Failed to", "error\n"} {
			if strings.Contains(s, bad) {
				t.Fatalf("probe failed (%q):\n%s", bad, s)
			}
		}
	})

	for _, v := range []struct{ name, addr, peer, tcp string }{
		{"rx-ipv4", w.addr4, w.peer4, "TCP4:" + w.addr4},
		{"rx-ipv6", w.addr6, w.peer6, "TCP6:[" + w.addr6 + "]"},
	} {
		t.Run(v.name, func(t *testing.T) {
			port := 5300 + len(v.name)*7 + int(time.Now().UnixNano()%100)
			stdout := newWatcher("", false, "Validated buffer")
			stderr := newWatcher("Waiting or connection on", false, "Failed validation", "client exited")
			b := startBG(t, w.command(w.lib, nil, nc, "-l", "-f", w.ifname, "-s", v.addr, "-c", v.peer,
				"-p", strconv.Itoa(port), "-v", "7", "-t", "1", "-q", "2"), stdout, stderr)
			b.waitReady(t, stderr, 30*time.Second)
			bind := v.peer
			if strings.Contains(bind, ":") {
				bind = "[" + bind + "]"
			}
			start := time.Now()
			w.peerSh(t, fmt.Sprintf(`yes $(echo -e \\x01\\x02\\x03\\x04\\x05\\x06) | tr \\n \\0 | head -c 1G | socat -u - %s:%d,bind=%s:%d`,
				v.tcp, port, bind, port))
			if code := b.wait(t, 2*time.Minute); code != 0 {
				t.Fatalf("ncdevmem exited %d:\n%s", code, stderr.lastLines(30))
			}
			el := time.Since(start)
			if n := stdout.count("Validated buffer"); n == 0 || stderr.count("Failed validation") != 0 || stderr.count("client exited") != 1 {
				t.Fatalf("%d Validated buffer lines, %d Failed validation, %d client exited:\n%s",
					n, stderr.count("Failed validation"), stderr.count("client exited"), stderr.lastLines(30))
			}
			if !strings.Contains(stderr.lastLines(5), "total_received=1073741824") {
				t.Fatalf("not 1 GiB:\n%s", stderr.lastLines(10))
			}
			t.Logf("1 GiB validated by ncdevmem under libxdevmem in %v (%.0f MB/s), %d fragments",
				el.Round(time.Millisecond), 1<<30/el.Seconds()/1e6, stdout.count("Validated buffer"))
		})
	}

	t.Run("sigkill", func(t *testing.T) {
		stderr := newWatcher("Waiting or connection on", false)
		b := startBG(t, w.command(w.lib, nil, nc, "-l", "-f", w.ifname, "-s", w.addr4, "-p", "5399", "-t", "1", "-q", "2"),
			newWatcher("", false), stderr)
		b.waitReady(t, stderr, 30*time.Second)
		if !xdpAttached(t, w) {
			t.Fatal("no XDP program attached while ncdevmem runs under the library")
		}
		syscall.Kill(-b.cmd.Process.Pid, syscall.SIGKILL)
		b.wait(t, 10*time.Second)
		for deadline := time.Now().Add(5 * time.Second); xdpAttached(t, w); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("an XDP program is still attached after SIGKILL")
			}
		}
	})
}

// xdpAttached reports whether the emulated interface has an XDP program.
func xdpAttached(t *testing.T, w *preloadWorld) bool {
	t.Helper()
	var attached bool
	if err := w.p.Emu.Do(func() error {
		l, err := netlink.LinkByName(w.ifname)
		if err != nil {
			return err
		}
		attached = l.Attrs().Xdp != nil && l.Attrs().Xdp.Attached
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return attached
}

// TestPreloadExample: examples/c/devmem_example.c under the library in
// both directions, blocking and non-blocking with poll and with epoll,
// byte for byte against a kernel peer.
func TestPreloadExample(t *testing.T) {
	testutil.Watchdog(t, 3*time.Minute)
	ex := cProgram(t, "../examples/c/devmem_example.c")
	w := newPreloadWorld(t)
	data := make([]byte, 16<<20+12345)
	rand.Read(data)
	port := 6000
	for _, mode := range []struct {
		name string
		args []string
	}{{"blocking", nil}, {"poll", []string{"-n", "-w", "poll"}}, {"epoll", []string{"-n", "-w", "epoll"}}} {
		for _, fam := range []struct{ name, addr, peer string }{{"ipv4", w.addr4, w.peer4}, {"ipv6", w.addr6, w.peer6}} {
			t.Run("rx/"+mode.name+"/"+fam.name, func(t *testing.T) {
				port++
				stdout := newWatcher("", true)
				stderr := newWatcher("rx: listening on", false, "dmabuf frags")
				args := append([]string{"rx", "-f", w.ifname, "-s", fam.addr, "-p", strconv.Itoa(port)}, mode.args...)
				b := startBG(t, w.command(w.lib, nil, ex, args...), stdout, stderr)
				b.waitReady(t, stderr, 30*time.Second)
				err := w.p.Peer.Do(func() error {
					c, err := net.DialTimeout("tcp", net.JoinHostPort(fam.addr, strconv.Itoa(port)), 10*time.Second)
					if err != nil {
						return err
					}
					defer c.Close()
					_, err = c.Write(data)
					return err
				})
				if err != nil {
					t.Fatal(err)
				}
				if code := b.wait(t, time.Minute); code != 0 {
					t.Fatalf("example rx exited %d:\n%s", code, stderr.lastLines(20))
				}
				if got := stdout.String(); got != string(data) {
					t.Fatalf("received %d bytes, sent %d: not the same\n%s", len(got), len(data), stderr.lastLines(10))
				}
				t.Logf("%s", lastLines(strings.TrimSpace(stderr.String()), 1))
			})
			t.Run("tx/"+mode.name+"/"+fam.name, func(t *testing.T) {
				port++
				var ln net.Listener
				err := w.p.Peer.Do(func() (err error) {
					ln, err = net.Listen("tcp", net.JoinHostPort(fam.peer, strconv.Itoa(port)))
					return err
				})
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				got := make(chan []byte, 1)
				go func() {
					c, err := ln.Accept()
					if err != nil {
						got <- nil
						return
					}
					defer c.Close()
					b, _ := io.ReadAll(c)
					got <- b
				}()
				stderr := newWatcher("", false)
				// -H: a plain send(2) of a header line before the
				// dmabuf sends, on the same socket.
				cmd := w.command(w.lib, nil, ex, append([]string{"tx", "-f", w.ifname, "-s", fam.peer, "-p", strconv.Itoa(port), "-z", "7000", "-H"}, mode.args...)...)
				cmd.Stdin = bytes.NewReader(data)
				want := append([]byte(fmt.Sprintf("devmem_example %d\n", len(data))), data...)
				b := startBG(t, cmd, newWatcher("", false), stderr)
				if code := b.wait(t, time.Minute); code != 0 {
					t.Fatalf("example tx exited %d:\n%s", code, stderr.lastLines(20))
				}
				select {
				case b := <-got:
					if !bytes.Equal(b, want) {
						t.Fatalf("peer received %d bytes, sent %d (a header line and the data): not the same", len(b), len(want))
					}
				case <-time.After(30 * time.Second):
					t.Fatal("the peer did not see the end of the stream")
				}
				t.Logf("%s", lastLines(strings.TrimSpace(stderr.String()), 1))
			})
		}
	}
}

// preloadCheck starts testdata/preload_check CMD on the world and
// connects a peer that sends size bytes once it is ready; the peer closes
// then for "leak", which reads to the end, and at the end of the test for
// the others.
func preloadCheck(t testing.TB, w *preloadWorld, env []string, size int, args ...string) (*bg, *watcher, *watcher) {
	t.Helper()
	b, stdout, stderr, _ := preloadCheckConn(t, w, env, size, args...)
	return b, stdout, stderr
}

// preloadCheckConn is preloadCheck that also returns the peer's connection.
func preloadCheckConn(t testing.TB, w *preloadWorld, env []string, size int, args ...string) (*bg, *watcher, *watcher, net.Conn) {
	t.Helper()
	var conn net.Conn
	bin := cProgram(t, "testdata/preload_check.c")
	port := 7000 + int(time.Now().UnixNano()%1000)
	stdout := newWatcher("ready", true)
	stderr := newWatcher("", true)
	b := startBG(t, w.command(w.lib, env, bin, append([]string{args[0], w.ifname, w.addr4, strconv.Itoa(port)}, args[1:]...)...), stdout, stderr)
	b.waitReady(t, stdout, 30*time.Second)
	err := w.p.Peer.Do(func() error {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(w.addr4, strconv.Itoa(port)), 10*time.Second)
		if err != nil {
			return err
		}
		t.Cleanup(func() { c.Close() })
		conn = c
		go func() {
			c.Write(make([]byte, size))
			if args[0] == "leak" || args[0] == "threads" {
				c.Close()
			}
		}()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b, stdout, stderr, conn
}

// Kernel results of the calls only an emulated devmem socket can make
// here, from the kernel's code (Linux 6.12 to 6.18), as "ret/errno".
var emuOnlyRows = map[string]string{
	"recvmsg/dmabuf-without-flag": "-1/14",  // tcp_recvmsg_locked: unreadable frags without MSG_SOCK_DEVMEM: EFAULT
	"recvmsg/no-control-room":     "-1/524", // tcp_recvmsg_dmabuf: put_cmsg truncated: ETOOSMALL
	"recvmsg/short-control":       "-1/524",
	"recvmsg/bad-control":         "-1/14",  // put_cmsg: copy_to_user failed
	"recvmsg/dmabuf-unmapped-iov": "4096/0", // tcp_recvmsg_dmabuf copies only linear bytes into the iovec
	"read/dmabuf":                 "-1/14",
	"ppoll/bad-timeout":           "-1/14", // do_ppoll: get_timespec64 (glibc copies it first and crashes)
	"select/bad-timeout":          "-1/14", // kern_select: copy_from_user of the timeval
	"pselect/bad-timeout":         "-1/14", // do_pselect: get_timespec64
	"sync/null":                   "-1/14", // dma_buf_ioctl: copy_from_user
	"sync/no-direction":           "-1/22", // neither DMA_BUF_SYNC_READ nor WRITE
	"sync/unknown-flag":           "-1/22", // flags beyond DMA_BUF_SYNC_VALID_FLAGS_MASK
	"sync/ok":                     "0/0",
	"sync/heap-ok":                "0/0",
	"sync/heap-no-direction":      "-1/22",
	"sync/unmapped":               "-1/14",
	"sync/straddles-unmapped":     "-1/14",
	"sync/thread-stack-ok":        "0/0",
	"sync/altstack-ok":            "0/0",
	"dmabuf/unknown-ioctl":        "-1/25",      // ENOTTY
	"dmabuf/seek-end":             "67108864/0", // dma_buf_llseek: the size
	"dmabuf/seek-cur":             "-1/22",      // only SEEK_SET and SEEK_END
	"dmabuf/mmap-past-end":        "-1/22",      // dma_buf_mmap_internal: beyond the buffer
	"dmabuf/mmap-private":         "-1/22",      // mmap_udmabuf: not VM_SHARED
	"udmabuf/null":                "-1/14",      // udmabuf_ioctl_create: copy_from_user
	"udmabuf/unknown-ioctl":       "-1/25",      // udmabuf_ioctl: ENOTTY
	"udmabuf/ok":                  "0/0",
	"udmabuf/size-0":              "-1/22", // udmabuf_create: no pages
	"udmabuf/unaligned":           "-1/22", // !PAGE_ALIGNED(offset)
	"udmabuf/past-end":            "-1/22", // memfd_pin_folios past i_size
	"udmabuf/over-limit":          "-1/22", // above size_limit_mb (64)
	"udmabuf/not-sealed":          "-1/22", // check_memfd_seals: F_SEAL_SHRINK missing
	"udmabuf/bad-fd":              "-1/77", // fget failed: EBADFD
	// Not the kernel's: a fork child cannot use the parent's emulated
	// socket (documented), but its plain fds work.
	"fork/child-plain-fd":     "0/0",
	"fork/child-recv":         "-95/0", // -EOPNOTSUPP
	"fork/child-dontneed":     "-95/0",
	"fork/child-close":        "0/0",
	"fork/parent-still-works": "1/0", // SO_TYPE: SOCK_STREAM
}

// TestPreloadBadInput runs a table of calls with bad pointers, short and
// negative lengths, wrong levels and wrong states on an emulated devmem
// socket and on a kernel TCP socket in the same state: each must give the
// kernel's result. Calls the kernel can only make on a devmem NIC are
// checked against the kernel's code (emuOnlyRows).
func TestPreloadBadInput(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	w := newPreloadWorld(t)
	b, stdout, stderr := preloadCheck(t, w, nil, 64<<10, "badinput")
	if code := b.wait(t, time.Minute); code != 0 {
		t.Fatalf("preload_check exited %d:\n%s%s", code, stdout, stderr)
	}
	re := regexp.MustCompile(`^row (\S+) emu=(\S+)(?: kernel=(\S+))?$`)
	seen := map[string]bool{}
	rows := 0
	for _, line := range strings.Split(stdout.String(), "\n") {
		m := re.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		rows++
		name, emu, kernel := m[1], m[2], m[3]
		seen[name] = true
		switch {
		case kernel != "":
			if emu != kernel {
				t.Errorf("%s: emulated %s, kernel %s", name, emu, kernel)
			}
		case emuOnlyRows[name] != "":
			if emu != emuOnlyRows[name] {
				t.Errorf("%s: emulated %s, the kernel's code gives %s", name, emu, emuOnlyRows[name])
			}
		default:
			t.Errorf("%s: no expectation (emulated %s)", name, emu)
		}
	}
	for name := range emuOnlyRows {
		if !seen[name] {
			t.Errorf("row %s missing", name)
		}
	}
	if rows < 70 {
		t.Fatalf("%d rows:\n%s\n%s", rows, stdout, stderr)
	}
	// The receive flags succeed (errors alike would pass the comparison).
	for _, want := range []string{
		"row recvmsg/peek-then-read emu=1/0 kernel=1/0",
		"row recvmsg/trunc-100 emu=100/0 kernel=100/0",
		"row recvmsg/waitall-4096 emu=4096/0 kernel=4096/0",
		"row recvmsg/oob emu=-1/22 kernel=-1/22",
		"row rcvtimeo/get emu=1236000/0 kernel=1236000/0",
		"row dontneed/bad-pointer-own-segv-handler emu=-1/14 kernel=-1/14",
		"row rcvtimeo/usec-range emu=-1/33 kernel=-1/33",
		"row rcvtimeo/longest emu=1/0 kernel=1/0",
		"row linger/on-5 emu=10000000005/0 kernel=10000000005/0",
		"row linger/onoff-7 emu=10000000009/0 kernel=10000000009/0",
		"row linger/off-keeps-time emu=9/0 kernel=9/0",
		"row linger/int-max emu=12147483647/0 kernel=12147483647/0",
		"row linger/get-short emu=104/0 kernel=104/0",
		"row linger/off emu=2147483647/0 kernel=2147483647/0",
	} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("want %q", want)
		}
	}
	t.Logf("%d calls, each with the kernel's result", rows)
}

// TestPreloadEpollOneshot: an EPOLLONESHOT registration for an event that
// has not happened yet (EPOLLRDHUP) on a socket that has data survives the
// data's arrival and reports the event when it comes, on the emulated
// socket as on a kernel one. (The library watches its socketpair for
// POLLIN too; a wake-up the program did not ask for must not use up the
// one shot.)
func TestPreloadEpollOneshot(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	w := newPreloadWorld(t)
	b, stdout, stderr, conn := preloadCheckConn(t, w, nil, 4096, "oneshot")
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(stdout.String(), "waiting"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no \"waiting\":\n%s%s", stdout, stderr)
		}
	}
	conn.Close()
	if code := b.wait(t, time.Minute); code != 0 {
		t.Fatalf("preload_check oneshot exited %d:\n%s%s", code, stdout, stderr)
	}
	for _, want := range []string{
		"row epoll/oneshot-nothing-yet emu=0/0 kernel=0/0",
		"row epoll/oneshot-rdhup-later emu=1/0 kernel=1/0",
	} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("want %q:\n%s", want, stdout)
		}
	}
}

// TestPreloadAcceptedTX: a C program that binds a TX dmabuf sends from it
// on an accepted socket (sendmsg with SCM_DEVMEM_DMABUF and MSG_ZEROCOPY,
// as the kernel allows on any SO_ZEROCOPY TCP socket) after a plain
// header, and reads its completions from MSG_ERRQUEUE: the peer receives
// the header and the dmabuf's bytes, exactly.
func TestPreloadAcceptedTX(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	w := newPreloadWorld(t)
	b, stdout, stderr, conn := preloadCheckConn(t, w, nil, 0, "accepttx")
	conn.SetReadDeadline(time.Now().Add(time.Minute))
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("peer read: %v (%d bytes)\n%s%s", err, len(got), stdout, stderr)
	}
	conn.Close()
	if code := b.wait(t, time.Minute); code != 0 {
		t.Fatalf("preload_check accepttx exited %d:\n%s%s", code, stdout, stderr)
	}
	want := []byte("accepttx 1048576\n")
	for i := 0; i < 1<<20; i++ {
		want = append(want, byte(i%251))
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("peer received %d bytes, want %d (a header and 1 MiB of the dmabuf)", len(got), len(want))
	}
	if !strings.Contains(stdout.String(), "accepttx: 16 sends, all completed") {
		t.Fatalf("stdout: %s", stdout)
	}
}

// TestPreloadLinger: SO_LINGER on an emulated accepted socket acts as on a
// kernel socket. With no time, close resets the connection: the peer's
// read ends in ECONNRESET. With a time, close returns only once the peer
// has taken the data and acknowledged the FIN: the peer reads nothing for
// 600 ms, so the 768 KiB do not fit its window, and close takes about that
// long; the peer then gets every byte and a clean end of stream. A signal
// handler (SA_RESTART) run on the closing thread ends the wait, and the
// connection goes on closing in the background.
func TestPreloadLinger(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	w := newPreloadWorld(t)
	closed := regexp.MustCompile(`linger -?\d+: close (-?\d+) after (\d+) ms`)
	run := func(t *testing.T, secs string, wait time.Duration, more ...string) (got int, readErr error, closeMS int) {
		b, stdout, stderr, conn := preloadCheckConn(t, w, nil, 0, append([]string{"linger", secs}, more...)...)
		time.Sleep(wait)
		conn.SetReadDeadline(time.Now().Add(time.Minute))
		all, err := io.ReadAll(conn)
		if code := b.wait(t, time.Minute); code != 0 {
			t.Fatalf("preload_check linger exited %d:\n%s%s", code, stdout, stderr)
		}
		m := closed.FindStringSubmatch(stdout.String())
		if m == nil || m[1] != "0" {
			t.Fatalf("close did not return 0: %s", stdout)
		}
		ms, _ := strconv.Atoi(m[2])
		return len(all), err, ms
	}
	t.Run("zero", func(t *testing.T) {
		n, err, ms := run(t, "0", 0)
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("peer read %d bytes and then %v; want ECONNRESET", n, err)
		}
		t.Logf("reset after %d bytes; close took %d ms", n, ms)
	})
	t.Run("time", func(t *testing.T) {
		const wait = 600 * time.Millisecond
		n, err, ms := run(t, "10", wait)
		if err != nil || n != 768<<10 {
			t.Fatalf("peer read %d of %d bytes, then %v", n, 768<<10, err)
		}
		if ms < 400 {
			t.Fatalf("close took %d ms while the peer read nothing for %v", ms, wait)
		}
		t.Logf("close took %d ms", ms)
	})
	t.Run("none-then-exit", func(t *testing.T) {
		// No SO_LINGER: close returns at once and the program exits
		// while most of the data waits for the peer's window; the stack
		// sends it before it goes, as a kernel sends an orphan's.
		n, err, ms := run(t, "-1", 600*time.Millisecond)
		if err != nil || n != 768<<10 {
			t.Fatalf("peer read %d of %d bytes, then %v", n, 768<<10, err)
		}
		if ms > 100 {
			t.Fatalf("close without SO_LINGER took %d ms", ms)
		}
	})
	t.Run("signal", func(t *testing.T) {
		const wait = 1500 * time.Millisecond
		n, err, ms := run(t, "10", wait, "300")
		if err != nil || n != 768<<10 {
			t.Fatalf("peer read %d of %d bytes, then %v", n, 768<<10, err)
		}
		if ms < 250 || ms > 1200 {
			t.Fatalf("close took %d ms: the signal 300 ms in should end it, the peer read nothing for %v", ms, wait)
		}
		t.Logf("close took %d ms", ms)
	})
}

// TestPreloadRXTXOneInterface: a C devmem echo server binds an RX dmabuf
// and a TX dmabuf to one interface, receives with MSG_SOCK_DEVMEM and
// sends every byte back from the TX dmabuf on the accepted socket: the
// peer gets back exactly the 8 MiB it sent, and the RX binding kept the id
// the program was given when the TX bind remade the stack with both
// dmabufs in its UMEM.
func TestPreloadRXTXOneInterface(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	w := newPreloadWorld(t)
	sent := make([]byte, 8<<20)
	rand.Read(sent)
	b, stdout, stderr, conn := preloadCheckConn(t, w, nil, 0, "rxtx")
	got := make(chan []byte, 1)
	go func() {
		all, _ := io.ReadAll(conn)
		got <- all
	}()
	if _, err := conn.Write(sent); err != nil {
		t.Fatalf("peer write: %v", err)
	}
	conn.(*net.TCPConn).CloseWrite()
	select {
	case back := <-got:
		if !bytes.Equal(back, sent) {
			t.Fatalf("echo: %d bytes back of %d sent, not the same\n%s%s", len(back), len(sent), stdout, stderr.lastLines(20))
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("no end of the echo\n%s%s", stdout, stderr.lastLines(20))
	}
	if code := b.wait(t, time.Minute); code != 0 {
		t.Fatalf("preload_check rxtx exited %d:\n%s%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout.String(), "rxtx: echoed 8388608 bytes") {
		t.Fatalf("stdout: %s", stdout)
	}
	t.Logf("%s", lastLines(strings.TrimSpace(stdout.String()), 1))
}

// TestPreloadTokenLeak: a program that receives with MSG_SOCK_DEVMEM,
// returns no token and exits leaves the emulated stack with every frame
// accounted for: none held by the application, none pinned.
func TestPreloadTokenLeak(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	w := newPreloadWorld(t)
	b, stdout, stderr := preloadCheck(t, w, []string{"XDEVMEM_DEBUG=1"}, 8<<20, "leak")
	if code := b.wait(t, time.Minute); code != 0 {
		t.Fatalf("preload_check leak exited %d:\n%s%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout.String(), "leaked the tokens of 8388608 bytes") {
		t.Fatalf("stdout: %s", stdout)
	}
	m := regexp.MustCompile(`emulated stack down \(frames=(\d+) free=(\d+) posted=(\d+) pinned=(\d+) held=(\d+) tx=(\d+) inflight=(-?\d+)\)`).
		FindStringSubmatch(stderr.String())
	if m == nil {
		t.Fatalf("no accounting at exit:\n%s", stderr.lastLines(20))
	}
	n := make([]int, 8)
	for i := 1; i < 8; i++ {
		n[i], _ = strconv.Atoi(m[i])
	}
	frames, free, posted, pinned, held, tx, inflight := n[1], n[2], n[3], n[4], n[5], n[6], n[7]
	if held != 0 || pinned != 0 || inflight != 0 || free+posted+tx != frames {
		t.Fatalf("accounting at exit: %s", m[0])
	}
	t.Logf("after leaking 8 MiB of tokens and exiting: %s", m[0])
}

// TestPreloadThreads: one thread receives with MSG_SOCK_DEVMEM, another
// returns the tokens, a third polls the socket, all at once.
func TestPreloadThreads(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	w := newPreloadWorld(t)
	b, stdout, stderr := preloadCheck(t, w, nil, 32<<20, "threads")
	if code := b.wait(t, time.Minute); code != 0 {
		t.Fatalf("preload_check threads exited %d:\n%s%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout.String(), "threads: 33554432 bytes") {
		t.Fatalf("stdout: %s", stdout)
	}
	t.Logf("%s", lastLines(strings.TrimSpace(stdout.String()), 1))
}

// TestPreloadGOMAXPROCS: the library's Go runtime keeps a P for the
// program's own threads (their calls are cgo callbacks) on top of the
// default, and leaves a GOMAXPROCS from the environment alone.
func TestPreloadGOMAXPROCS(t *testing.T) {
	lib := libxdevmem(t)
	env := []string{"PATH=" + os.Getenv("PATH"), "LD_PRELOAD=" + lib, "XDEVMEM_DEBUG=1"}
	for _, c := range []struct {
		env  string
		want string
	}{
		{"", fmt.Sprintf("GOMAXPROCS=%d (CPUs + 1", runtime.GOMAXPROCS(0)+1)},
		{"GOMAXPROCS=1", "GOMAXPROCS=1 (from the environment)"},
	} {
		cmd := exec.Command("true")
		cmd.Env = env
		if c.env != "" {
			cmd.Env = append(cmd.Env, c.env)
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("true under the library (%q): %v\n%s", c.env, err, out)
		}
		if !strings.Contains(string(out), c.want) {
			t.Errorf("environment %q: want %q in the debug log:\n%s", c.env, c.want, out)
		}
	}
}

// TestPreloadRecvmsgCost reports the cost of a recvmsg(MSG_SOCK_DEVMEM)
// through the library against the kernel's on the same machine (an empty
// socket: the call's overhead, not the data's), and of the two calls a
// devmem program makes per fragment. It asserts nothing about the
// figures; it does check that a receive blocked on the empty socket sleeps
// through a signal and wakes for a shutdown from another thread, as the
// kernel's does.
func TestPreloadRecvmsgCost(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	c := preloadCallCosts(t, newPreloadWorld(t), 200000)
	t.Logf("recvmsg(MSG_SOCK_DEVMEM|MSG_DONTWAIT) on an empty socket: %d ns under libxdevmem, %d ns on a kernel socket", c.recvEmu, c.recvKernel)
	t.Logf("per fragment: DMA_BUF_IOCTL_SYNC %d ns, SO_DEVMEM_DONTNEED (one token) %d ns under libxdevmem", c.sync, c.dontNeed)
	stdout := c.stdout
	for _, want := range []string{"row timeo/recv-100ms emu=1/0 kernel=1/0", "row timeo/recv-negative emu=1/0 kernel=1/0",
		"row wake/signal-no-restart emu=-1/4 kernel=-1/4", "row wake/signal-rcvtimeo-restart emu=-1/4 kernel=-1/4"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("want %q:\n%s", want, stdout)
		}
	}
	if !strings.Contains(stdout, "row wake/signal-then-shutdown emu=0/0 kernel=0/0") {
		t.Fatalf("a blocked receive, a signal, then shutdown(SHUT_RD): want 0 from both sockets:\n%s", stdout)
	}
}

// callCosts is what testdata/preload_check's "bench" measures: ns per
// call, and its whole output (its other rows).
type callCosts struct {
	recvEmu, recvKernel int // recvmsg(MSG_SOCK_DEVMEM|MSG_DONTWAIT) on an empty socket
	sync, dontNeed      int // DMA_BUF_IOCTL_SYNC; SO_DEVMEM_DONTNEED of one token, under the library
	stdout              string
}

// preloadCallCosts runs preload_check's "bench" with n calls of each kind.
func preloadCallCosts(t testing.TB, w *preloadWorld, n int) callCosts {
	t.Helper()
	b, stdout, stderr := preloadCheck(t, w, nil, 64<<10, "bench", strconv.Itoa(n))
	if code := b.wait(t, time.Minute); code != 0 {
		t.Fatalf("preload_check bench exited %d:\n%s%s", code, stdout, stderr)
	}
	c := callCosts{stdout: stdout.String()}
	for _, f := range []struct {
		re   string
		dst1 *int
		dst2 *int
	}{
		{`bench recvmsg_ns emu=(\d+) kernel=(\d+)`, &c.recvEmu, &c.recvKernel},
		{`bench call_ns sync=(\d+) dontneed=(\d+)`, &c.sync, &c.dontNeed},
	} {
		m := regexp.MustCompile(f.re).FindStringSubmatch(c.stdout)
		if m == nil {
			t.Fatalf("no %q in:\n%s", f.re, c.stdout)
		}
		*f.dst1, _ = strconv.Atoi(m[1])
		*f.dst2, _ = strconv.Atoi(m[2])
	}
	return c
}

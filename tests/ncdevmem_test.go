package tests

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xdevmem/xdevmem/compat/netdev"
	"github.com/xdevmem/xdevmem/internal/harness"
	"github.com/xdevmem/xdevmem/internal/netns"
	"github.com/xdevmem/xdevmem/internal/pattern"
	"github.com/xdevmem/xdevmem/internal/testutil"
)

// The kernel's devmem selftest (tools/testing/selftests/drivers/net/hw/
// devmem.py with devmem_lib.py, and the autorelease series' devmem.py)
// replayed against xdevmem invoked as "ncdevmem": the command lines below
// are the ones devmem_lib.py builds, character for character, with
// devmem.py's NetDrvEpEnv roles: the local interface (the emulated end,
// cfg.ifname, with cfg.addr configured in the kernel as NetDrvEpEnv does)
// and the remote (the peer namespace, cfg.remote_addr). Python's
// "\x01...\x06" become the same raw bytes here.
//
// devmem_lib.py runs its pipelines with shell=True, i.e. /bin/sh, and relies
// on "echo -e" (bash's /bin/sh on the distributions the selftests run on);
// where /bin/sh is dash, echo prints "-e", so the pipelines run under bash.

// ncEnv is devmem.py's cfg for one veth pair.
type ncEnv struct {
	p       *netns.Pair
	bin     string // cfg.bin_local: a link named ncdevmem
	ifname  string // cfg.ifname
	addr    string // cfg.addr
	baddr   string // cfg.baddr: cfg.addr, in brackets if IPv6
	remote  string // cfg.remote_addr
	rbaddr  string // cfg.remote_baddr
	ipver   string // cfg.addr_ipver
	usedPts map[int]bool
}

// newNcEnv builds the link and the pair, and configures cfg.addr on the
// local interface as devmem.py's environment has it.
func newNcEnv(t *testing.T) *ncEnv {
	t.Helper()
	return newNcEnvFamily(t, false)
}

// newNcEnvFamily is newNcEnv over IPv6 (devmem.py's environment with
// addr_ipver 6) when ipv6 is set.
func newNcEnvFamily(t *testing.T, ipv6 bool) *ncEnv {
	t.Helper()
	testutil.RequirePrivileged(t)
	testutil.RequireTools(t, "socat", "bash", "ss", "dd", "yes", "head")
	bin := xdevmemBinary(t)
	link := filepath.Join(t.TempDir(), "ncdevmem")
	if err := os.Symlink(bin, link); err != nil {
		t.Fatal(err)
	}
	// Two RX queues: ncdevmem binds the last and spreads RSS over the
	// others, and refuses a device with fewer (the emulated NIC has the
	// interface's queues).
	opts := netns.Options{Prefix: "xdt", RxQueues: 2, TxQueues: 2}
	if ipv6 {
		opts.PeerAddr, opts.EmuAddr = harness.IPv6Addrs()
	}
	p := testutil.NewPair(t, opts)
	add := []string{"-n", p.Emu.Name, "addr", "add", p.EmuAddr.String(), "dev", p.EmuIf}
	if ipv6 {
		add = append(add, "nodad")
	}
	if out, err := exec.Command("ip", add...).CombinedOutput(); err != nil {
		t.Fatalf("ip addr add: %v: %s", err, out)
	}
	e := &ncEnv{p: p, bin: link, ifname: p.EmuIf, addr: p.EmuAddr.Addr().String(),
		remote: p.PeerAddr.Addr().String(), ipver: "4", usedPts: map[int]bool{}}
	e.baddr, e.rbaddr = e.addr, e.remote
	if ipv6 {
		e.ipver, e.baddr, e.rbaddr = "6", "["+e.addr+"]", "["+e.remote+"]"
	}
	return e
}

// randPort is lib.py's rand_port (10000 to 65535), never twice: the peer
// binds its source port to the same number, and a closed connection leaves
// it in TIME_WAIT.
func (e *ncEnv) randPort() int {
	for {
		p := 10000 + rand.IntN(55536)
		if !e.usedPts[p] {
			e.usedPts[p] = true
			return p
		}
	}
}

// ncdevmemRx is devmem_lib.ncdevmem_rx for the non-netkit environment.
func (e *ncEnv) ncdevmemRx(port int, verify, failOnLinear, flowSteer bool, rxBufSize int) string {
	var extras []string
	if flowSteer {
		extras = append(extras, "-c "+e.remote)
	}
	if verify {
		extras = append(extras, "-v 7")
	}
	if failOnLinear {
		extras = append(extras, "-L")
	}
	if rxBufSize > 0 {
		extras = append(extras, fmt.Sprintf("-b %d", rxBufSize))
	}
	parts := append([]string{e.bin, "-l", "-f " + e.ifname, "-s " + e.addr, fmt.Sprintf("-p %d", port)}, extras...)
	return strings.Join(parts, " ")
}

// ncdevmemTx is devmem_lib.ncdevmem_tx.
func (e *ncEnv) ncdevmemTx(port, chunk int) string {
	var extras []string
	if chunk != 0 {
		extras = append(extras, fmt.Sprintf("-z %d", chunk))
	}
	parts := append([]string{e.bin, "-f " + e.ifname, "-s " + e.remote, fmt.Sprintf("-p %d", port)}, extras...)
	return strings.Join(parts, " ")
}

// socatSend is devmem_lib.socat_send (note the two spaces without -b).
func (e *ncEnv) socatSend(port, bufSize int) string {
	suffix := fmt.Sprintf(",bind=%s:%d", e.rbaddr, port)
	buf := ""
	if bufSize != 0 {
		buf = fmt.Sprintf("-b %d", bufSize)
		suffix += ",nodelay"
	}
	return fmt.Sprintf("socat %s -u - TCP%s:%s:%d%s", buf, e.ipver, e.baddr, port, suffix)
}

// socatListen is devmem_lib.socat_listen.
func (e *ncEnv) socatListen(port int) string {
	return fmt.Sprintf("socat -U - TCP%s-LISTEN:%d", e.ipver, port)
}

// ncBkg is lib.py's bkg(..., exit_wait=True): a background shell command
// whose exit status and output are collected at the end.
type ncBkg struct {
	cmd            *exec.Cmd
	stdout, stderr *watchWriter
	done           chan error
}

func ncStart(t *testing.T, ns *netns.NS, shell, cmdline string) *ncBkg {
	t.Helper()
	return ncStartLimit(t, ns, shell, cmdline, 0)
}

// ncStartLimit is ncStart keeping only about the last limit bytes of each
// output (0: all), for runs that print a line per fragment of a gigabyte.
func ncStartLimit(t *testing.T, ns *netns.NS, shell, cmdline string, limit int) *ncBkg {
	t.Helper()
	b := &ncBkg{cmd: ns.Command(shell, "-c", cmdline), stdout: newWatchWriter("Validated buffer"),
		stderr: newWatchWriter("xdevmem ncdevmem: listening on"), done: make(chan error, 1)}
	b.stdout.limit, b.stderr.limit = limit, limit
	b.cmd.Stdout, b.cmd.Stderr = b.stdout, b.stderr
	// The shell may fork the command: signal the whole process group, and
	// do not wait for ever on output pipes a straggler holds.
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	b.cmd.WaitDelay = 2 * time.Second
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { b.done <- b.cmd.Wait() }()
	t.Cleanup(func() {
		pgid := b.cmd.Process.Pid
		syscall.Kill(-pgid, syscall.SIGTERM) // ncdevmem unbinds and detaches XDP
		select {
		case err := <-b.done:
			b.done <- err
			return
		case <-time.After(3 * time.Second):
		}
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-b.done
	})
	return b
}

// wait is the end of the with-block: the command's exit status (ret).
func (b *ncBkg) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	return waitExit(t, b.done, d, func() string { return lastLines(b.stderr.String(), 20) })
}

// waitExit waits up to d for a background command's result on done (and
// puts it back for later waits), returning its exit status; it fails the
// test on an error other than an exit status, or after d, showing tail().
func waitExit(t testing.TB, done chan error, d time.Duration, tail func() string) int {
	t.Helper()
	select {
	case err := <-done:
		done <- err
		if err == nil {
			return 0
		}
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		t.Fatalf("%v", err)
	case <-time.After(d):
		t.Fatalf("still running after %v; stderr:\n%s", d, tail())
	}
	return -1
}

// ncCmd is lib.py's cmd(..., shell=True): run and fail on a non-zero exit.
func ncCmd(t *testing.T, ns *netns.NS, shell, cmdline string) string {
	t.Helper()
	out, err := ns.Command(shell, "-c", cmdline).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmdline, err, out)
	}
	return string(out)
}

// waitPortListen is lib.py's wait_port_listen: cat /proc/net/tcp* in the
// namespace until a row has ":PORT" and state 0A (LISTEN), 5 s at most.
func waitPortListen(t *testing.T, ns *netns.NS, port int, bg *ncBkg) {
	t.Helper()
	re := regexp.MustCompile(fmt.Sprintf(":%04X .* 0A", port))
	end := time.Now().Add(5 * time.Second)
	for {
		out, _ := ns.Command("sh", "-c", "cat /proc/net/tcp*").Output()
		for _, row := range strings.Split(string(out), "\n") {
			if re.MatchString(row) {
				return
			}
		}
		if time.Now().After(end) {
			msg := ""
			if bg != nil {
				msg = lastLines(bg.stderr.String(), 20)
			}
			t.Fatalf("Waiting for port listen timed out (port %d)\n%s", port, msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ncExpectOK fails unless the ncdevmem run exited 0 (ksft_eq(ret, 0)).
func ncExpectOK(t *testing.T, b *ncBkg, what string) {
	t.Helper()
	if ret := b.wait(t, 30*time.Second); ret != 0 {
		t.Fatalf("%s: ncdevmem exited %d\nstderr:\n%s", what, ret, lastLines(b.stderr.String(), 25))
	}
}

// totalReceived is the last total_received=N that ncdevmem printed.
func totalReceived(stderr string) int {
	m := regexp.MustCompile(`total_received=(\d+)\n`).FindAllStringSubmatch(stderr, -1)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[len(m)-1][1])
	return n
}

// rxPipe is devmem_lib's data_pipe for run_rx / run_rx_large_niov.
func rxPipe(size, socat string) string {
	return "yes $(echo -e \x01\x02\x03\x04\x05\x06) | head -c " + size + " | " + socat
}

// TestNcdevmemDevmemPy replays devmem.py's cases (check_rx, check_tx,
// check_tx_chunks, check_rx_hds, check_rx_large_niov), the autorelease
// series' cases, and ncdevmem's probe, with the command lines devmem_lib.py
// builds and socat peers, against xdevmem run through a link named
// ncdevmem.
func TestNcdevmemDevmemPy(t *testing.T) {
	testutil.Watchdog(t, 3*time.Minute)
	e := newNcEnv(t)
	local, remote := e.p.Emu, e.p.Peer

	// require_devmem: "{bin} -f {ifname}" must exit 0, and the probe must
	// refuse lo, where neither the kernel nor the emulation can work.
	t.Run("probe", func(t *testing.T) {
		out, err := local.Command("sh", "-c", e.bin+" -f "+e.ifname).CombinedOutput()
		if err != nil {
			t.Fatalf("probe on %s: %v\n%s", e.ifname, err, out)
		}
		for _, want := range []string{"YNL failed: bind rx: no queues", "tcp-data-split is disabled", "got dmabuf id=", "queue 1 has a memory provider"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("probe output lacks %q:\n%s", want, out)
			}
		}
		out, err = local.Command("sh", "-c", e.bin+" -f lo").CombinedOutput()
		if err == nil {
			t.Fatalf("probe on lo succeeded:\n%s", out)
		}
		for _, want := range []string{"not an Ethernet device", "EOPNOTSUPP"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("probe on lo: no reason %q:\n%s", want, out)
			}
		}
	})

	// The emulated NIC has the interface's RX queues (here 2): a queue
	// beyond them fails as on a real NIC, at RSS set-up (ethtool -X equal
	// 7: EINVAL) or, with -n, at bind-rx (EINVAL); XDEVMEM_CHANNELS sets
	// another count, which ncdevmem reports.
	t.Run("queues", func(t *testing.T) {
		port := e.randPort()
		base := fmt.Sprintf("%s -l -f %s -s %s -p %d", e.bin, e.ifname, e.addr, port)
		for _, tc := range []struct {
			args string
			want []string
		}{
			{"-t 7 -q 1", []string{"2 RX channels (the active RX queues of " + e.ifname, "Cannot set RX flow hash configuration", "invalid argument", "ncdevmem: Failed to configure rss"}},
			{"-n -t 7 -q 1", []string{"netdev_bind_rx: invalid argument", "ncdevmem: Failed to bind"}},
			{"-t 1 -q 2", []string{"netdev_bind_rx: invalid argument", "ncdevmem: Failed to bind"}},
		} {
			start := time.Now()
			out, err := local.Command("sh", "-c", base+" "+tc.args).CombinedOutput()
			if err == nil {
				t.Errorf("%s: succeeded on a 2-queue NIC:\n%s", tc.args, out)
				continue
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("%s: output lacks %q:\n%s", tc.args, w, out)
				}
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("%s: took %v to fail", tc.args, d)
			}
		}
		listen := "XDEVMEM_CHANNELS=8 " + base + " -t 7 -q 1 -c " + e.remote + " -v 7"
		b := ncStart(t, local, "sh", listen)
		waitPortListen(t, local, port, b)
		ncCmd(t, remote, "bash", rxPipe("1K", e.socatSend(port, 0)))
		ncExpectOK(t, b, "XDEVMEM_CHANNELS=8 -t 7")
		if se := b.stderr.String(); !strings.Contains(se, "8 RX channels (XDEVMEM_CHANNELS=8)") || totalReceived(se) != 1024 {
			t.Fatalf("stderr:\n%s", lastLines(se, 20))
		}
	})

	t.Run("check_rx", func(t *testing.T) {
		port := e.randPort()
		socat := e.socatSend(port, 0)
		listen := e.ncdevmemRx(port, true, false, true, 0)
		b := ncStart(t, local, "sh", listen)
		waitPortListen(t, local, port, b)
		ncCmd(t, remote, "bash", rxPipe("1K", socat))
		ncExpectOK(t, b, "check_rx")
		se, so := b.stderr.String(), b.stdout.String()
		if !strings.Contains(so, "Validated buffer") || !strings.Contains(se, "received frag_page=") ||
			!strings.Contains(se, "ncdevmem: ok") || totalReceived(se) != 1024 {
			t.Fatalf("stdout:\n%s\nstderr:\n%s", so, se)
		}
		// Without -a the token mode is the host kernel's default, and
		// ncdevmem says which and why.
		host := netdev.HostAutorelease()
		want := fmt.Sprintf("xdevmem: token mode autorelease=%d (the host kernel's default: %s)", b2i(host.On), host.Reason)
		if !strings.Contains(se, want) {
			t.Fatalf("stderr lacks %q:\n%s", want, se)
		}
	})

	// The stack's listener is in userspace; a kernel socket holds the port
	// for ss and /proc/net/tcp. It must never see the stack's traffic: the
	// kernel's TCP counters in the namespace stay still while a connection
	// is served, and the socket's accept queue stays empty.
	t.Run("readiness", func(t *testing.T) {
		port := e.randPort()
		b := ncStart(t, local, "sh", e.ncdevmemRx(port, true, false, true, 0))
		waitPortListen(t, local, port, b)
		select {
		case <-b.stderr.seen:
		case <-time.After(5 * time.Second):
			t.Fatalf("no ready line on stderr: %q", b.stderr.String())
		}
		ss := ncCmd(t, local, "sh", fmt.Sprintf("ss -Hltn 'sport = :%d'", port))
		if !strings.Contains(ss, fmt.Sprintf("%s:%d", e.addr, port)) {
			t.Fatalf("ss -ltn does not show %s:%d: %q", e.addr, port, ss)
		}
		before := kernelTCP(t, local)
		var c net.Conn
		err := remote.Do(func() (err error) {
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(e.remote), Port: port}}
			c, err = d.Dial("tcp", net.JoinHostPort(e.addr, strconv.Itoa(port)))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(c, pattern.NewReader(7, 64<<10)); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(10 * time.Second); totalReceived(b.stderr.String()) < 64<<10; {
			if time.Now().After(deadline) {
				t.Fatalf("stack received %d of %d bytes", totalReceived(b.stderr.String()), 64<<10)
			}
			time.Sleep(10 * time.Millisecond)
		}
		after := kernelTCP(t, local)
		ss = ncCmd(t, local, "sh", fmt.Sprintf("ss -Hltn 'sport = :%d'", port))
		c.Close()
		ncExpectOK(t, b, "readiness")
		for _, k := range []string{"InSegs", "PassiveOpens", "OutRsts"} {
			if before[k] != after[k] {
				t.Errorf("kernel TCP %s went %d -> %d while the stack served the connection", k, before[k], after[k])
			}
		}
		t.Logf("kernel TCP in %s while the stack served 64 KiB: InSegs %d -> %d, PassiveOpens %d -> %d; listener: %s",
			local.Name, before["InSegs"], after["InSegs"], before["PassiveOpens"], after["PassiveOpens"], strings.TrimSpace(ss))
		if f := strings.Fields(ss); len(f) < 2 || f[0] != "LISTEN" || f[1] != "0" {
			t.Errorf("kernel socket's accept queue (Recv-Q) not empty: %q", ss)
		}
	})

	for _, tc := range []struct {
		name  string
		chunk int
	}{{"check_tx", 0}, {"check_tx_chunks", 3}} {
		t.Run(tc.name, func(t *testing.T) {
			port := e.randPort()
			tx := e.ncdevmemTx(port, tc.chunk)
			socat := ncStart(t, remote, "sh", e.socatListen(port))
			waitPortListen(t, remote, port, nil)
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
			// ncdevmem's socket is AF_INET6, here v4-mapped: its
			// completions come from ipv6_recv_error.
			if !strings.Contains(string(out), "(SOL_IPV6/IPV6_RECVERR)") {
				t.Fatalf("completions not read as IPV6_RECVERR on the v4-mapped socket:\n%s", out)
			}
		})
	}

	t.Run("check_rx_hds", func(t *testing.T) {
		for _, size := range []int{1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192} {
			port := e.randPort()
			listen := e.ncdevmemRx(port, false, true, false, 0)
			socat := e.socatSend(port, size)
			b := ncStart(t, local, "sh", listen)
			waitPortListen(t, local, port, b)
			ncCmd(t, remote, "bash", fmt.Sprintf("dd if=/dev/zero bs=%d count=1 2>/dev/null | %s", size, socat))
			ncExpectOK(t, b, fmt.Sprintf("HDS failed for payload size %d", size))
			// -L passed, so every byte came as dmabuf frags; without -v
			// ncdevmem prints them (zeros), and only them, on stdout.
			data := b.stdout.String()
			if got := totalReceived(b.stderr.String()); got != size || data != strings.Repeat("\x00", size) {
				t.Fatalf("size %d: total_received=%d, %d bytes on stdout", size, got, len(data))
			}
		}
	})

	t.Run("check_rx_large_niov", func(t *testing.T) {
		// require_devmem(cfg, rx_buf_size=16384)
		if out, err := local.Command("sh", "-c", e.bin+" -f "+e.ifname+" -b 16384").CombinedOutput(); err != nil {
			t.Fatalf("probe with -b 16384: %v\n%s", err, out)
		}
		for _, size := range []int{1024, 4096, 8192, 16384, 32768, 65536} {
			port := e.randPort()
			socat := e.socatSend(port, 0)
			listen := e.ncdevmemRx(port, true, false, true, 16384)
			b := ncStart(t, local, "sh", listen)
			waitPortListen(t, local, port, b)
			ncCmd(t, remote, "bash", rxPipe(strconv.Itoa(size), socat))
			ncExpectOK(t, b, fmt.Sprintf("large-niov failed for payload size %d", size))
			if got := totalReceived(b.stderr.String()); got != size {
				t.Fatalf("size %d: total_received=%d", size, got)
			}
		}
	})

	// The autorelease series' devmem.py: its listen_cmd and pipeline strings
	// keep the spaces of their Python line continuations.
	for _, tc := range []struct{ name, extra string }{
		{"check_rx", "-a 0"},
		{"check_rx_autorelease", "-a 1"},
		{"check_unbind_before_recv", "-a 0 -U 1"},
		{"check_unbind_before_recv_autorelease", "-a 1 -U 1"},
		{"check_unbind_after_recv", "-a 0 -U 2"},
		{"check_unbind_after_recv_autorelease", "-a 1 -U 2"},
	} {
		t.Run("autorelease/"+tc.name, func(t *testing.T) {
			port := e.randPort()
			socat := fmt.Sprintf("socat -u - TCP%s:%s:%d,bind=%s:%d", e.ipver, e.addr, port, e.remote, port)
			listen := fmt.Sprintf("%s -l -f %s -s %s -p %d                   -c %s -v 7 %s", e.bin, e.ifname, e.addr, port, e.remote, tc.extra)
			b := ncStart(t, local, "sh", listen)
			waitPortListen(t, local, port, b)
			ncCmd(t, remote, "bash", "yes $(echo -e \x01\x02\x03\x04\x05\x06) |             head -c 1K | "+socat)
			ncExpectOK(t, b, tc.name)
			se := b.stderr.String()
			// Series v10: unbinding before the first recvmsg leaves a
			// binding without users, so only an autorelease-off socket
			// (not tied yet) gets ENODEV; autorelease-on sockets never
			// do, and receive what was queued.
			if tc.extra == "-a 0 -U 1" {
				if !strings.Contains(se, "no such device") || strings.Contains(se, "received frag_page=") {
					t.Fatalf("-a 0 -U 1: recvmsg did not fail with ENODEV before any fragment:\n%s", lastLines(se, 15))
				}
			} else if totalReceived(se) != 1024 || !strings.Contains(b.stdout.String(), "Validated buffer") || strings.Contains(se, "no such device") {
				t.Fatalf("received %d bytes:\n%s", totalReceived(se), lastLines(se, 15))
			}
		})
	}
}

// kernelTCP reads the Tcp counters of /proc/net/snmp in ns.
func kernelTCP(t *testing.T, ns *netns.NS) map[string]int64 {
	t.Helper()
	out, err := ns.Command("cat", "/proc/net/snmp").Output()
	if err != nil {
		t.Fatal(err)
	}
	var names, vals []string
	for _, l := range strings.Split(string(out), "\n") {
		if f, ok := strings.CutPrefix(l, "Tcp: "); ok {
			if names == nil {
				names = strings.Fields(f)
			} else {
				vals = strings.Fields(f)
			}
		}
	}
	m := map[string]int64{}
	for i := range min(len(names), len(vals)) {
		m[names[i]], _ = strconv.ParseInt(vals[i], 10, 64)
	}
	if len(m) == 0 {
		t.Fatalf("no Tcp counters in /proc/net/snmp: %s", out)
	}
	return m
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

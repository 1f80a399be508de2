package tests

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/internal/netns"
	"github.com/xdevmem/xdevmem/internal/testutil"
	"github.com/xdevmem/xdevmem/stack"
)

// sweepSummary is the part of demo --json the sweep checks.
type sweepSummary struct {
	OK          bool   `json:"ok"`
	Error       string `json:"error"`
	Bytes       uint64 `json:"bytes"`
	ValErrs     int    `json:"validation_errors"`
	TokensOut   int    `json:"tokens_outstanding"`
	FramesFree  uint32 `json:"frames_free_after_close"`
	Frames      uint32 `json:"frames"`
	UMEMBytes   uint64 `json:"umem_bytes"`
	MTU         int    `json:"mtu"`
	PeerNS      string `json:"peer_namespace"`
	StackNS     string `json:"stack_namespace"`
	DmabufCopy  uint64 `json:"dmabuf_bytes_copied"`
	DmabufBytes uint64 `json:"dmabuf_bytes"`
}

// demoNSRE finds the demo's namespace names in its output.
var demoNSRE = regexp.MustCompile(`\bxdm-[0-9a-f]{6}-(?:peer|emu)\b`)

// sweepRun runs the demo binary with args, bounded in time: past the limit
// it gets SIGINT (so it still cleans up) and the row fails. It returns the
// exit code, stdout and stderr.
func sweepRun(t *testing.T, bin string, limit time.Duration, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"demo"}, args...)...)
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("demo %v did not finish within %v\nstdout:\n%s\nstderr:\n%s", args, limit, stdout.String(), stderr.String())
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("demo %v: %v", args, err)
	}
	requireNoNamespaces(t, stdout.String()+stderr.String())
	return code, stdout.String(), stderr.String()
}

// requireNoNamespaces fails if a namespace the demo named in out still
// exists.
func requireNoNamespaces(t *testing.T, out string) {
	t.Helper()
	for _, name := range demoNSRE.FindAllString(out, -1) {
		if _, err := os.Stat(filepath.Join(netns.RunDir, name)); err == nil {
			t.Errorf("namespace %s is left behind", name)
		}
	}
}

// TestDemoSweep runs the demo binary through the sizes, UMEM sizes and MTUs
// it accepts (each must finish and validate), the values it must refuse at
// start (with the reason, before building anything), and SIGINT and SIGTERM
// in the middle of a transfer (exit 130, a summary, no namespace and no XDP
// program left). The demo used to hang on --size 0 (always) and 100
// (often), on --umem 2MiB --size 64MiB and on --mtu 68, and left both
// namespaces behind after a signal.
func TestDemoSweep(t *testing.T) {
	testutil.Watchdog(t, 3*time.Minute)
	testutil.RequirePrivileged(t)
	testutil.RequireTools(t, "ip", "ss")
	bin := xdevmemBinary(t)
	const limit = 30 * time.Second

	ok := func(t *testing.T, size uint64, args ...string) sweepSummary {
		t.Helper()
		args = append([]string{"--json", "--size", strconv.FormatUint(size, 10)}, args...)
		code, stdout, stderr := sweepRun(t, bin, limit, args...)
		var sum sweepSummary
		if err := json.Unmarshal([]byte(stdout), &sum); err != nil {
			t.Fatalf("demo %v: exit %d, %v\nstdout:\n%s\nstderr:\n%s", args, code, err, stdout, stderr)
		}
		if code != 0 || !sum.OK || sum.Bytes != size || sum.ValErrs != 0 || sum.TokensOut != 0 ||
			sum.FramesFree != sum.Frames || sum.DmabufCopy != 0 || sum.DmabufBytes != size {
			t.Fatalf("demo %v: exit %d, summary %+v\nstderr:\n%s", args, code, sum, stderr)
		}
		return sum
	}

	t.Run("sizes", func(t *testing.T) {
		for _, size := range []uint64{0, 1, 100, 4096, 1 << 20} {
			ok(t, size)
		}
	})

	minUMEM := stack.MinRegionSize(1500, 1)
	t.Run("umem", func(t *testing.T) {
		for _, umem := range []uint64{minUMEM, minUMEM + 256<<10, 2 << 20, 3 << 20, 8 << 20} {
			sum := ok(t, 16<<20, "--umem", strconv.FormatUint(umem, 10))
			if sum.UMEMBytes != umem {
				t.Fatalf("--umem %d: summary says %d", umem, sum.UMEMBytes)
			}
		}
	})

	t.Run("mtu", func(t *testing.T) {
		for _, tc := range []struct {
			mtu  int
			umem uint64
		}{
			{stack.MinMTU, 0}, {stack.MinMTU, stack.MinRegionSize(stack.MinMTU, 1)},
			{1500, 0}, {9000, 0}, {9000, stack.MinRegionSize(9000, 1)},
		} {
			args := []string{"--mtu", strconv.Itoa(tc.mtu)}
			if tc.umem != 0 {
				args = append(args, "--umem", strconv.FormatUint(tc.umem, 10))
			}
			if sum := ok(t, 1<<20, args...); sum.MTU != tc.mtu {
				t.Fatalf("--mtu %d: summary says %d", tc.mtu, sum.MTU)
			}
		}
	})

	t.Run("refused", func(t *testing.T) {
		type row struct {
			args []string
			want string
		}
		rows := []row{
			{[]string{"--umem", "0"}, "--umem 0"},
			{[]string{"--umem", strconv.FormatUint(minUMEM-4096, 10)}, "too small"},
			{[]string{"--umem", "256KiB"}, "too small"},
			{[]string{"--mtu", "68"}, "too small for TCP"},
			{[]string{"--mtu", strconv.Itoa(stack.MinMTU - 1)}, "too small for TCP"},
			{[]string{"--mtu", "9500"}, "too large"},
			{[]string{"--ipv6", "--mtu", "1000"}, "IPv6"},
			{[]string{"--mtu", "9000", "--umem", strconv.FormatUint(stack.MinRegionSize(9000, 1)-256<<10, 10)}, "too small"},
		}
		if avail, err := stack.MemAvailable(); err == nil {
			over := (avail/2 + 1<<30) &^ (1<<30 - 1)
			if over/4096 <= stack.MaxRegionFrames {
				rows = append(rows, row{[]string{"--umem", strconv.FormatUint(over, 10)}, "available memory"})
			}
		}
		for _, r := range rows {
			start := time.Now()
			code, stdout, stderr := sweepRun(t, bin, limit, append(r.args, "--size", "1MiB")...)
			if (code != 1 && code != 2) || !strings.Contains(stderr, r.want) {
				t.Errorf("demo %v: exit %d, want 1 or 2 and %q\nstdout:\n%s\nstderr:\n%s", r.args, code, r.want, stdout, stderr)
			}
			if demoNSRE.MatchString(stdout+stderr) || time.Since(start) > 5*time.Second {
				t.Errorf("demo %v: refused only after building its namespaces (%v)\n%s", r.args, time.Since(start), stderr)
			}
		}
	})

	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			sweepSignal(t, bin, sig)
		})
	}
}

// sweepSignal starts a long demo, signals it once the data flows, and
// checks that it exits 130 with a summary and removes its namespaces and
// XDP program. SIGINT runs with the text summary, SIGTERM with --json.
func sweepSignal(t *testing.T, bin string, sig syscall.Signal) {
	args := []string{"demo", "--size", "1TiB"}
	jsonOut := sig == syscall.SIGTERM
	if jsonOut {
		args = append(args, "--json")
	}
	cmd := exec.Command(bin, args...)
	var stdout strings.Builder
	stderr := newWatchWriter(" bytes to ") // the start line, which names the namespaces
	cmd.Stdout, cmd.Stderr = &stdout, stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Signal(syscall.SIGINT)
			<-exited
		}
	})
	select {
	case <-stderr.seen:
	case err := <-exited:
		t.Fatalf("demo exited early: %v\n%s\n%s", err, stdout.String(), stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("no start line within 30s:\n%s", stderr.String())
	}
	names := demoNSRE.FindAllString(stderr.String(), -1)
	if len(names) != 2 {
		t.Fatalf("namespaces named at start: %v\n%s", names, stderr.String())
	}
	peer := names[0]
	if !strings.HasSuffix(peer, "-peer") {
		peer = names[1]
	}
	// Mid-transfer: the kernel client has 1 MiB acknowledged.
	acked := regexp.MustCompile(`bytes_acked:([0-9]+)`)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		out, _ := exec.Command("ip", "netns", "exec", peer, "ss", "-tinH", "state", "established").Output()
		if m := acked.FindSubmatch(out); m != nil {
			if n, _ := strconv.ParseUint(string(m[1]), 10, 64); n >= 1<<20 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no data acknowledged within 30s:\n%s", stderr.String())
		}
	}
	prog := sweepXDPProg(t, names)
	if err := cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	var err error
	select {
	case err = <-exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("demo still running 30s after %v:\n%s", sig, stderr.String())
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Errorf("after %v: %v, want exit status 130\n%s", sig, err, stderr.String())
	}
	out := stdout.String()
	if jsonOut {
		var sum sweepSummary
		if err := json.Unmarshal([]byte(out), &sum); err != nil {
			t.Fatalf("summary: %v\n%s", err, out)
		}
		if sum.OK || sum.Bytes == 0 || sum.Bytes != sum.DmabufBytes || sum.ValErrs != 0 || sum.FramesFree != sum.Frames ||
			!strings.Contains(sum.Error, "interrupted by "+unix.SignalName(sig)) {
			t.Errorf("summary after %v: %+v", sig, sum)
		}
	} else if !strings.Contains(out, "xdevmem demo: interrupted") || !regexp.MustCompile(`received +[1-9][0-9]* bytes`).MatchString(out) {
		t.Errorf("no summary after %v:\n%s", sig, out)
	}
	for _, name := range names {
		if _, err := os.Stat(filepath.Join(netns.RunDir, name)); err == nil {
			t.Errorf("namespace %s left behind after %v", name, sig)
		}
	}
	if p, err := ebpf.NewProgramFromID(prog); err == nil {
		p.Close()
		t.Errorf("XDP program %d still loaded after %v", prog, sig)
	} else if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("look up XDP program %d: %v", prog, err)
	}
}

// sweepXDPProg returns the id of the XDP program attached in the demo's
// stack namespace.
func sweepXDPProg(t *testing.T, names []string) ebpf.ProgramID {
	t.Helper()
	for _, name := range names {
		if !strings.HasSuffix(name, "-emu") {
			continue
		}
		out, err := exec.Command("ip", "-n", name, "-j", "-d", "link", "show").Output()
		if err != nil {
			t.Fatalf("ip -n %s link show: %v", name, err)
		}
		var links []struct {
			XDP *struct {
				Prog struct {
					ID uint32 `json:"id"`
				} `json:"prog"`
			} `json:"xdp"`
		}
		if err := json.Unmarshal(out, &links); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		for _, l := range links {
			if l.XDP != nil && l.XDP.Prog.ID != 0 {
				return ebpf.ProgramID(l.XDP.Prog.ID)
			}
		}
		t.Fatalf("no XDP program in %s: %s", name, out)
	}
	t.Fatalf("no stack namespace among %v", names)
	return 0
}

// TestServerUMEMRefused: the server refuses, before it listens, the UMEM
// sizes the demo refuses: 0 (it used to mean 64 MiB silently), below the
// minimum for the interface's MTU, and more than the host can pin.
func TestServerUMEMRefused(t *testing.T) {
	testutil.Watchdog(t, time.Minute)
	testutil.RequirePrivileged(t)
	bin := xdevmemBinary(t)
	p := testutil.NewPair(t, netns.Options{Prefix: "xdt", MTU: 9000})
	rows := []struct{ umem, want string }{
		{"0", "--umem 0"},
		{strconv.FormatUint(stack.MinRegionSize(9000, 1)-4096, 10), "too small"},
	}
	if avail, err := stack.MemAvailable(); err == nil {
		if over := (avail/2 + 1<<30) &^ (1<<30 - 1); over/4096 <= stack.MaxRegionFrames {
			rows = append(rows, struct{ umem, want string }{strconv.FormatUint(over, 10), "available memory"})
		}
	}
	for _, r := range rows {
		cmd := p.Emu.Command(bin, "server", "--backend", "emulated", "-f", p.EmuIf, "-s", p.EmuAddr.Addr().String(), "--umem", r.umem)
		var buf strings.Builder
		cmd.Stdout, cmd.Stderr = &buf, &buf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		err := waitCmd(cmd, 20*time.Second) // a server that wrongly starts is killed
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(buf.String(), r.want) || strings.Contains(buf.String(), "listening") {
			t.Errorf("server --umem %s: %v, want exit status 1 and %q before listening:\n%s", r.umem, err, r.want, buf.String())
		}
	}
}

package tests

import (
	"fmt"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xdevmem/xdevmem/internal/bench"
)

// BenchmarkPreloadNcdevmem receives 1 GiB of the -v 7 pattern from socat on
// one veth, in the same run: into the kernel's ncdevmem (6.12, unmodified)
// under libxdevmem, into "xdevmem server" (the Go program on the same
// stack) and into "xdevmem ncdevmem" (the Go port of ncdevmem, which prints
// the same lines as the C one), alternately, at MTU 1500 and at MTU 3500
// (the largest single-buffer XDP frame on veth, nearest to the 4 KiB
// payloads devmem NICs are run with). Every receiver validates every byte
// and discards its output: ncdevmem's stdout and stderr go to /dev/null,
// as the server's progress does with --quiet. ncdevmem still makes its
// unbuffered stderr writes (two per fragment) and its byte-at-a-time
// validation, as it would on the kernel's devmem; that it receives every
// byte correctly under the library is TestPreloadNcdevmem's job.
//
// A fourth receiver, "kernel" (socat into /dev/null on a kernel socket, no
// XDP program on the link), shows what the sender pipeline alone allows.
// A fifth, "ncdevmem-bare", is a diagnostic: ncdevmem built with
// testdata/ncdevmem-bare.patch, which takes out its per-fragment print and
// validation and nothing else. It makes every devmem call the unmodified
// one makes, so its goodput against the server's is the library's own
// share of the gap, and the rest of the gap is ncdevmem's own work.
//
// Reported per MTU: each receiver's MB/s, its CPU seconds per GiB
// (getrusage of the receiving process), the machine's idle share during
// its runs, ratio = ncdevmem MB/s / server MB/s and bare-ratio =
// ncdevmem-bare MB/s / server MB/s. On two cores the sender (yes | tr |
// head | socat and the kernel's TCP) and the receiver share the CPUs, so a
// receiver's goodput falls with its CPU per GiB.
//
//	go test -run '^$' -bench BenchmarkPreloadNcdevmem -benchtime 3x ./tests
func BenchmarkPreloadNcdevmem(b *testing.B) {
	ncBin, bareBin := ncdevmem612(b), ncdevmem612Bare(b)
	srv := xdevmemBinary(b)
	for _, mtu := range []int{1500, 3500} {
		b.Run(fmt.Sprintf("mtu=%d", mtu), func(b *testing.B) {
			benchPreloadNcdevmem(b, newPreloadWorldMTU(b, mtu), ncBin, bareBin, srv)
		})
	}
}

// BenchmarkPreloadCalls reports what the library's interposed calls cost
// on the devmem receive path, against the same call on a kernel socket
// where there is one: recvmsg(MSG_SOCK_DEVMEM|MSG_DONTWAIT) on an empty
// socket, DMA_BUF_IOCTL_SYNC and SO_DEVMEM_DONTNEED of one token (the two
// calls ncdevmem makes per fragment besides its prints). Each iteration
// is 200,000 calls of each kind in testdata/preload_check.c.
func BenchmarkPreloadCalls(b *testing.B) {
	w := newPreloadWorld(b)
	var sum callCosts
	for i := 0; i < b.N; i++ {
		c := preloadCallCosts(b, w, 200000)
		sum.recvEmu += c.recvEmu
		sum.recvKernel += c.recvKernel
		sum.sync += c.sync
		sum.dontNeed += c.dontNeed
	}
	n := float64(b.N)
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(sum.recvEmu)/n, "recvmsg-ns")
	b.ReportMetric(float64(sum.recvKernel)/n, "kernel-recvmsg-ns")
	b.ReportMetric(float64(sum.sync)/n, "dmabuf-sync-ns")
	b.ReportMetric(float64(sum.dontNeed)/n, "dontneed-ns")
}

// preloadRun is one receiver's runs.
type preloadRun struct {
	wall, cpu time.Duration // receiver's wall time and CPU time
	idle      float64       // the machine's idle share, averaged over runs
}

func benchPreloadNcdevmem(b *testing.B, w *preloadWorld, ncBin, bareBin, srv string) {
	port := 8100
	// run starts the receiver, waits for its listener, sends 1 GiB through
	// pattern (the sender's pipeline stage) and waits for it to exit.
	run := func(cmd *exec.Cmd, pattern string) preloadRun {
		// nil Stdout and Stderr are /dev/null.
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		defer func() {
			cmd.Process.Kill()
			<-done
		}()
		re := regexp.MustCompile(fmt.Sprintf(":%04X .* 0A", port))
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			out, _ := w.p.Emu.Command("sh", "-c", "cat /proc/net/tcp").Output()
			if re.Match(out) {
				break
			}
			select {
			case err := <-done:
				b.Fatalf("%s exited before listening: %v", strings.Join(cmd.Args, " "), err)
			default:
			}
			if time.Now().After(deadline) {
				b.Fatalf("%s: not listening on %d", strings.Join(cmd.Args, " "), port)
			}
		}
		start := time.Now()
		busy0 := machineBusy(b)
		out, err := w.p.Peer.Command("bash", "-c", fmt.Sprintf(
			`yes $(echo -e \\x01\\x02\\x03\\x04\\x05\\x06) | %s head -c 1G | socat -u - TCP4:%s:%d,bind=%s:%d`,
			pattern, w.addr4, port, w.peer4, port)).CombinedOutput()
		if err != nil {
			b.Fatalf("socat into %s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
		}
		select {
		case err := <-done:
			done <- err
			if err != nil {
				b.Fatalf("%s: %v", strings.Join(cmd.Args, " "), err)
			}
		case <-time.After(2 * time.Minute):
			b.Fatalf("%s still running", strings.Join(cmd.Args, " "))
		}
		wall := time.Since(start)
		idle := 1 - (machineBusy(b)-busy0)/(wall.Seconds()*float64(runtime.NumCPU()))
		return preloadRun{wall: wall, cpu: cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(),
			idle: idle / float64(b.N)}
	}
	// pattern is the -v 7 stream each program validates: 6.12's ncdevmem
	// takes 0 for the seventh byte (the "tr \\n \\0"), the server
	// '\n', as devmem.py's ncdevmem does. The receivers that validate the
	// '\n' stream get a tr that changes nothing, so that every sender
	// pipeline costs the peer the same on this 2-core machine.
	const sameSender = `tr \\n \\n |`
	args := func(extra ...string) []string {
		port++
		return append([]string{"-f", w.ifname, "-s", w.addr4, "-c", w.peer4,
			"-p", strconv.Itoa(port), "-v", "7", "-t", "1", "-q", "2"}, extra...)
	}
	receivers := []struct {
		name string
		cmd  func() *exec.Cmd
		pat  string
		sum  preloadRun
	}{
		{name: "ncdevmem", pat: `tr \\n \\0 |`, cmd: func() *exec.Cmd {
			return w.command(w.lib, nil, ncBin, append([]string{"-l"}, args()...)...)
		}},
		{name: "server", pat: sameSender, cmd: func() *exec.Cmd {
			return w.command("", nil, srv, append([]string{"server"}, args("--quiet")...)...)
		}},
		{name: "ncdevmem-bare", pat: `tr \\n \\0 |`, cmd: func() *exec.Cmd {
			return w.command(w.lib, nil, bareBin, append([]string{"-l"}, args()...)...)
		}},
		{name: "kernel", pat: sameSender, cmd: func() *exec.Cmd {
			port++
			return w.p.Emu.Command("socat", "-u", fmt.Sprintf("TCP-LISTEN:%d,reuseaddr", port), "OPEN:/dev/null")
		}},
		{name: "go-ncdevmem", pat: sameSender, cmd: func() *exec.Cmd {
			return w.command("", nil, srv, append([]string{"ncdevmem", "-l"}, args()...)...)
		}},
	}
	for i := 0; i < b.N; i++ {
		for j := range receivers {
			r := &receivers[j]
			got := run(r.cmd(), r.pat)
			r.sum.wall += got.wall
			r.sum.cpu += got.cpu
			r.sum.idle += got.idle
		}
	}
	gib := float64(b.N)
	b.ReportMetric(0, "ns/op")
	for _, r := range receivers {
		b.ReportMetric(gib*(1<<30)/1e6/r.sum.wall.Seconds(), r.name+"-MB/s")
		b.ReportMetric(r.sum.cpu.Seconds()/gib, r.name+"-cpu-s/GiB")
		b.ReportMetric(100*r.sum.idle, r.name+"-idle-%")
	}
	b.ReportMetric(receivers[1].sum.wall.Seconds()/receivers[0].sum.wall.Seconds(), "ratio")      // ncdevmem MB/s / server MB/s
	b.ReportMetric(receivers[1].sum.wall.Seconds()/receivers[2].sum.wall.Seconds(), "bare-ratio") // ncdevmem-bare MB/s / server MB/s
}

// machineBusy is bench.MachineBusy, failing the benchmark on an error.
func machineBusy(tb testing.TB) float64 {
	v, err := bench.MachineBusy()
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

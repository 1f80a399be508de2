package tests

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkPreloadNcdevmem receives 1 GiB of the -v 7 pattern from socat on
// one veth, in the same run: into the kernel's ncdevmem (6.12, unmodified)
// under libxdevmem, and into "xdevmem server" (the Go program on the same
// stack), alternately. Both validate every byte. ncdevmem's output goes to
// /dev/null, as the server's progress does with --quiet; ncdevmem still
// makes its unbuffered stderr writes (three per fragment), which it would
// make on the kernel's devmem too. For reference, "xdevmem ncdevmem" (the
// Go port of ncdevmem, which prints the same lines) runs too. Reported:
// MB/s of each and the ratio ncdevmem/server.
//
//	go test -run '^$' -bench BenchmarkPreloadNcdevmem -benchtime 3x ./tests
func BenchmarkPreloadNcdevmem(b *testing.B) {
	nc := ncdevmem612(b)
	srv := xdevmemBinary(b)
	w := newPreloadWorld(b)
	port := 8100
	// pattern is the -v 7 stream each program validates: 6.12's ncdevmem
	// takes 0 for the seventh byte (the "tr \\n \\0"), the server
	// '\n', as devmem.py's ncdevmem does.
	run := func(cmd *exec.Cmd, pattern string) time.Duration {
		// stderr goes to a file: a pipe into this process would cost
		// ncdevmem more than its writes to a file do.
		f, err := os.CreateTemp(b.TempDir(), "stderr")
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		cmd.Stderr = f
		tail := func() string {
			out, _ := exec.Command("tail", "-n", "20", f.Name()).Output()
			return string(out)
		}
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
		out, err := w.p.Peer.Command("bash", "-c", fmt.Sprintf(
			`yes $(echo -e \\x01\\x02\\x03\\x04\\x05\\x06) | %s head -c 1G | socat -u - TCP4:%s:%d,bind=%s:%d`,
			pattern, w.addr4, port, w.peer4, port)).CombinedOutput()
		if err != nil {
			b.Fatalf("socat into %s: %v\n%s\n%s", strings.Join(cmd.Args, " "), err, out, tail())
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
		return time.Since(start)
	}
	// The receivers that validate the '\n' stream get a tr that changes
	// nothing, so that every sender pipeline costs the peer the same on
	// this 2-core machine.
	const sameSender = `tr \\n \\n |`
	var tNc, tSrv, tGo time.Duration
	for i := 0; i < b.N; i++ {
		port++
		tNc += run(w.command(w.lib, nil, nc, "-l", "-f", w.ifname, "-s", w.addr4, "-c", w.peer4,
			"-p", strconv.Itoa(port), "-v", "7", "-t", "1", "-q", "2"), `tr \\n \\0 |`)
		port++
		tSrv += run(w.command("", nil, srv, "server", "-f", w.ifname, "-s", w.addr4, "-c", w.peer4,
			"-p", strconv.Itoa(port), "-v", "7", "-t", "1", "-q", "2", "--quiet"), sameSender)
		port++
		tGo += run(w.command("", nil, srv, "ncdevmem", "-l", "-f", w.ifname, "-s", w.addr4, "-c", w.peer4,
			"-p", strconv.Itoa(port), "-v", "7", "-t", "1", "-q", "2"), sameSender)
	}
	mb := float64(b.N) * (1 << 30) / 1e6
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(mb/tNc.Seconds(), "ncdevmem-MB/s")
	b.ReportMetric(mb/tSrv.Seconds(), "server-MB/s")
	b.ReportMetric(mb/tGo.Seconds(), "go-ncdevmem-MB/s")
	b.ReportMetric(tSrv.Seconds()/tNc.Seconds(), "ratio")
}

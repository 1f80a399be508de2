package tests

import (
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/xdevmem/xdevmem/internal/netns"
	"github.com/xdevmem/xdevmem/internal/testutil"
)

// TestServerForcedKernelBackend: the server (written against devmemapi
// through compat.Open) refuses the kernel backend on a veth with the
// probe's reason, and exits non-zero without leaving anything behind.
func TestServerForcedKernelBackend(t *testing.T) {
	testutil.Watchdog(t, time.Minute)
	bin := xdevmemBinary(t)
	p := testutil.NewPair(t, netns.Options{Prefix: "xdt"})
	cmd := p.Emu.Command(bin, "server", "--backend", "kernel", "-f", p.EmuIf, "-s", p.EmuAddr.Addr().String(), "-p", "5302")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("want exit status 1, got %v: %s", err, out)
	}
	for _, want := range []string{"backend kernel", "queue management", "not supported"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// auto on the same interface picks the emulation and says why.
	cmd = p.Emu.Command(bin, "server", "-f", p.EmuIf, "-s", p.EmuAddr.Addr().String(), "-p", "5302")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	waitLine(t, stderr, "listening on", 30*time.Second)
	cmd.Process.Kill()
	cmd.Wait()
}

// TestProbeCommand: `xdevmem probe` exits non-zero with the reason on a
// veth and on lo, where neither can do kernel devmem.
func TestProbeCommand(t *testing.T) {
	testutil.Watchdog(t, time.Minute)
	bin := xdevmemBinary(t)
	p := testutil.NewPair(t, netns.Options{Prefix: "xdt"})
	for _, ifname := range []string{p.EmuIf, "lo"} {
		out, err := p.Emu.Command(bin, "probe", "-f", ifname, "--json").Output()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Fatalf("probe %s: want exit 1, got %v: %s", ifname, err, out)
		}
		var r struct {
			Supported bool   `json:"supported"`
			Reason    string `json:"reason"`
		}
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("probe %s json: %v: %s", ifname, err, out)
		}
		if r.Supported || r.Reason == "" {
			t.Fatalf("probe %s: %+v", ifname, r)
		}
		t.Logf("probe %s: %s", ifname, r.Reason)
	}
	out, _ := p.Emu.Command(bin, "probe", "-f", p.EmuIf).CombinedOutput()
	if !strings.Contains(string(out), "queue") {
		t.Fatalf("table output lacks the queue-management check:\n%s", out)
	}
}

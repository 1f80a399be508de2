package tests

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xdevmem/xdevmem/internal/bench"
	"github.com/xdevmem/xdevmem/internal/netns"
	"github.com/xdevmem/xdevmem/internal/testutil"
)

// TestBenchQuick runs "xdevmem bench --quick --json --plot FILE", as CI
// does, with an empty PATH, and checks only that every row produced
// figures, that the plot was written and that the bench left no namespace
// behind. The figures
// themselves are not judged: CI machines vary.
func TestBenchQuick(t *testing.T) {
	testutil.RequirePrivileged(t)
	testutil.Watchdog(t, 2*time.Minute)
	bin := xdevmemBinary(t)
	png := filepath.Join(t.TempDir(), "bench.png")
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "bench", "--quick", "--json", "--plot", png)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// Nothing in PATH: every row sets up with Go alone (no ip, no ethtool).
	cmd.Env = []string{"PATH=" + t.TempDir()}
	start := time.Now()
	err := cmd.Run()
	t.Logf("bench --quick took %v\n%s", time.Since(start).Round(time.Millisecond), stderr.String())
	if err != nil {
		t.Fatalf("xdevmem bench --quick: %v", err)
	}
	if d := time.Since(start); d > time.Minute {
		t.Errorf("--quick took %v, more than a minute", d)
	}
	var rep bench.Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("parse --json output: %v\n%s", err, stdout.String())
	}
	want := map[string]bool{}
	for _, id := range bench.DefaultRows {
		want[id] = true
	}
	for _, r := range rep.Rows {
		delete(want, r.ID)
		f := r.Figures
		for name, fig := range map[string]bench.Figure{
			"goodput MB/s": f.MBps, "Gbit/s": f.Gbps, "Mpps": f.Mpps,
			"recv CPU/GB": f.LocalCPUPerGB, "send CPU/GB": f.PeerCPUPerGB, "machine CPU/GB": f.MachineCPUPerGB,
			"copied B/B": f.CopiedPerByte, "allocs/pkt": f.AllocsPerPacket, "drops": f.Drops,
		} {
			if !fig.Valid() {
				t.Errorf("row %s: no %s figure", r.ID, name)
			}
		}
		if f.MBps.Median <= 0 || f.LocalCPUPerGB.Median <= 0 {
			t.Errorf("row %s: goodput %v MB/s, receiver CPU %v s/GB", r.ID, f.MBps.Median, f.LocalCPUPerGB.Median)
		}
		if r.Kind == bench.KindDevmem && (!f.TokensPerSec.Valid() || f.TokensPerSec.Median <= 0) {
			t.Errorf("row %s: no token rate", r.ID)
		}
		for _, m := range r.Runs {
			if m.Error != "" {
				t.Errorf("row %s: %s", r.ID, m.Error)
			}
		}
	}
	if len(want) > 0 {
		t.Errorf("rows missing from the report: %v", want)
	}
	// One short run per row: the goals' verdicts are only indicative.
	if !rep.Quick || len(rep.Goals) == 0 {
		t.Errorf("report quick %v, %d goals", rep.Quick, len(rep.Goals))
	}
	for _, g := range rep.Goals {
		if !g.Indicative {
			t.Errorf("goal %q not marked indicative", g.Name)
		}
	}
	if b, err := os.ReadFile(png); err != nil || !bytes.HasPrefix(b, []byte("\x89PNG")) {
		t.Errorf("plot %s: %v (%d bytes)", png, err, len(b))
	}
	names, err := netns.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if strings.HasPrefix(n, bench.DefaultPrefix+"-") {
			t.Errorf("namespace %s left behind", n)
		}
	}
}

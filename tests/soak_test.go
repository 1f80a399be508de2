package tests

import (
	"encoding/json"
	"os/exec"
	"testing"
	"time"

	"github.com/xdevmem/xdevmem/internal/testutil"
)

// TestSoak30s: 30 seconds at full rate, connections back to back; the heap
// in use must not grow beyond a small bound and every byte validates.
func TestSoak30s(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	testutil.RequirePrivileged(t)
	bin := xdevmemBinary(t)
	out, err := exec.Command(bin, "soak", "--duration", "30s", "--conn-size", "256MiB", "--max-heap-growth", "8MiB", "--json").Output()
	var sum struct {
		OK         bool   `json:"ok"`
		Error      string `json:"error"`
		Bytes      uint64 `json:"bytes"`
		Conns      int    `json:"connections"`
		HeapStart  uint64 `json:"heap_inuse_start"`
		HeapEnd    uint64 `json:"heap_inuse_end"`
		HeapGrowth int64  `json:"heap_growth"`
		Samples    []struct {
			FramesFree uint32 `json:"frames_free"`
		} `json:"samples"`
	}
	if jerr := json.Unmarshal(out, &sum); jerr != nil {
		t.Fatalf("soak: %v / %v: %s", err, jerr, out)
	}
	t.Logf("soak: %d bytes over %d connections; heap in use %d -> %d (%+d bytes), %d samples", sum.Bytes, sum.Conns, sum.HeapStart, sum.HeapEnd, sum.HeapGrowth, len(sum.Samples))
	if err != nil || !sum.OK {
		t.Fatalf("soak failed: %v %s", err, sum.Error)
	}
	if len(sum.Samples) < 20 || sum.Conns < 2 {
		t.Fatalf("soak too short: %d samples, %d connections", len(sum.Samples), sum.Conns)
	}
}

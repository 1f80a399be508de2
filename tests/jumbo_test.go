package tests

import (
	"testing"
	"time"

	"github.com/xdevmem/xdevmem/internal/harness"
	"github.com/xdevmem/xdevmem/internal/testutil"
)

// TestJumbo1GiB: 1 GiB at MTU 9000 through XDP multi-buffer frames, every
// segment split over several UMEM frames, byte-exact.
func TestJumbo1GiB(t *testing.T) {
	testutil.Watchdog(t, 3*time.Minute)
	w := newWorld(t, harness.Options{MTU: 9000})
	if w.Stack.XDPMode() != "native" {
		t.Fatalf("XDP mode %q: multi-buffer should keep native mode", w.Stack.XDPMode())
	}
	const size = 1 << 30
	res := transfer(t, w, 7, size)
	st := w.Stack.Stats()
	if res.DmabufBytes != size {
		t.Fatalf("dmabuf %d of %d", res.DmabufBytes, size)
	}
	// Segments of ~8948 bytes need three 4 KiB frames each: many more
	// fragments than segments.
	if float64(res.Frags) < 2.5*float64(size)/8948 {
		t.Fatalf("%d frags for %d bytes: not split per frame", res.Frags, size)
	}
	t.Logf("MTU 9000: 1 GiB in %v (%.0f MB/s), %d frags", res.Elapsed, float64(size)/1e6/res.Elapsed.Seconds(), res.Frags)
	checkStats(t, st)
}

package tests

import (
	"testing"
	"time"

	"github.com/xdevmem/xdevmem/internal/harness"
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

package testutil

import (
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/xdevmem/xdevmem/internal/netns"
)

// Watchdog crashes the test binary if the test is still running after d:
// it prints every goroutine's stack, removes the namespaces this process
// created (a crash skips t.Cleanup, and namespaces outlive the process), and
// panics. It stops when the test's cleanups run. Pick d well below the
// go test -timeout, whose own panic cannot clean up.
func Watchdog(t testing.TB, d time.Duration) {
	t.Helper()
	name := t.Name()
	timer := time.AfterFunc(d, func() {
		fmt.Fprintf(os.Stderr, "watchdog: %s still running after %v; goroutines:\n%s\n", name, d, allStacks())
		if err := netns.CloseAll(); err != nil {
			fmt.Fprintf(os.Stderr, "watchdog: remove namespaces: %v\n", err)
		}
		panic(fmt.Sprintf("watchdog: %s still running after %v", name, d))
	})
	t.Cleanup(func() { timer.Stop() })
}

func allStacks() []byte {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return buf[:n]
		}
		buf = make([]byte, 2*len(buf))
	}
}

package compat_test

import (
	"fmt"
	"net"
	"os"
	"testing"

	"github.com/xdevmem/xdevmem/internal/testutil"
)

// TestMain fails the run if the tests leave namespaces, veths or XDP
// programs behind (testutil.CheckLeaks), or file descriptors open
// (netlink sockets, dmabuf dups, listeners).
func TestMain(m *testing.M) {
	// Let the runtime open its poller fds before counting.
	if l, err := net.Listen("tcp", "127.0.0.1:0"); err == nil {
		l.Close()
	}
	before := countFDs()
	code := testutil.CheckLeaks(m)
	if after := countFDs(); code == 0 && after > before {
		fmt.Fprintf(os.Stderr, "leak: %d file descriptors open after the tests, %d before\n", after, before)
		code = 1
	}
	os.Exit(code)
}

func countFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(ents)
}

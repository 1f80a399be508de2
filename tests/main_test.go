// Package tests holds xdevmem's end-to-end tests: each builds two network
// namespaces joined by a veth pair, runs the emulated devmem stack on one end
// and the kernel's TCP (Go's net, socat, the xdevmem binary) on the other,
// and removes everything it made, also on failure.
package tests

import (
	"os"
	"testing"

	"github.com/xdevmem/xdevmem/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(testutil.CheckLeaks(m)) }

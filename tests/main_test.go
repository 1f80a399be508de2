// Package tests holds xdevmem's end-to-end tests: each builds two network
// namespaces joined by a veth pair, runs the emulated devmem stack on one end
// and the kernel's TCP (Go's net, socat, the xdevmem binary) on the other,
// and removes everything it made, also on failure.
package tests

import (
	"os"
	"sync"
	"testing"

	"github.com/xdevmem/xdevmem/internal/testutil"
)

func TestMain(m *testing.M) {
	code := testutil.CheckLeaks(m)
	if buildDirPath != "" {
		os.RemoveAll(buildDirPath)
	}
	os.Exit(code)
}

var (
	buildDirOnce sync.Once
	buildDirPath string
	buildDirErr  error
)

// buildDir is where the test process puts what it builds (the xdevmem
// binary, libxdevmem.so, C programs): one directory, removed when the
// process ends.
func buildDir() (string, error) {
	buildDirOnce.Do(func() { buildDirPath, buildDirErr = os.MkdirTemp("", "xdevmem-tests-") })
	return buildDirPath, buildDirErr
}

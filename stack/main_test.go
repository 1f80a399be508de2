package stack

import (
	"os"
	"testing"

	"github.com/xdevmem/xdevmem/internal/testutil"
)

// TestMain checks that the package's tests leave no file descriptor,
// goroutine, namespace or XDP program behind.
func TestMain(m *testing.M) { os.Exit(testutil.CheckLeaks(m)) }

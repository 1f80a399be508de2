package umem

import (
	"os"
	"testing"

	"github.com/xdevmem/xdevmem/internal/testutil"
)

func TestMain(m *testing.M) { os.Exit(testutil.CheckLeaks(m)) }

package tests

import (
	"bufio"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// xdevmemBinary builds cmd/xdevmem once per test process.
func xdevmemBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := buildDir()
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "xdevmem")
		args := []string{"build", "-o", binPath}
		if raceBuild {
			args = append(args, "-race") // the binary's races are the test's
		}
		out, err := exec.Command("go", append(args, "../cmd/xdevmem")...).CombinedOutput()
		if err != nil {
			buildErr = err
			binPath = string(out)
		}
	})
	if buildErr != nil {
		t.Fatalf("build xdevmem: %v\n%s", buildErr, binPath)
	}
	return binPath
}

// waitLine reads r until a line containing want appears, copying
// everything it reads to the test log, and keeps draining afterwards.
func waitLine(t *testing.T, r io.Reader, want string, timeout time.Duration) {
	t.Helper()
	found := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(r)
		signalled := false
		for sc.Scan() {
			line := sc.Text()
			if !signalled && strings.Contains(line, want) {
				close(found)
				signalled = true
			}
		}
		if !signalled {
			close(found)
		}
	}()
	select {
	case <-found:
	case <-time.After(timeout):
		t.Fatalf("no %q line within %v", want, timeout)
	}
}

// watchWriter collects a command's output (set as its Stdout or Stderr,
// so that exec copies everything before Wait returns) and closes seen once
// the output contains want. With a limit it keeps only about the last
// limit bytes, for commands that print hundreds of megabytes.
type watchWriter struct {
	mu    sync.Mutex
	buf   []byte
	want  string
	limit int
	found bool
	seen  chan struct{}
}

func newWatchWriter(want string) *watchWriter {
	return &watchWriter{want: want, seen: make(chan struct{})}
}

// Write implements io.Writer. Only the new bytes (and the few before them
// that could start a match) are searched.
func (w *watchWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	from := max(0, len(w.buf)-len(w.want)+1)
	w.buf = append(w.buf, p...)
	if !w.found && strings.Contains(string(w.buf[from:]), w.want) {
		w.found = true
		close(w.seen)
	}
	if w.limit > 0 && len(w.buf) > 2*w.limit {
		w.buf = append(w.buf[:0], w.buf[len(w.buf)-w.limit:]...)
	}
	return len(p), nil
}

// String returns everything written so far (with a limit, the last part).
func (w *watchWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return string(w.buf)
}

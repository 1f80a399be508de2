package tests

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/internal/harness"
	"github.com/xdevmem/xdevmem/internal/pattern"
	"github.com/xdevmem/xdevmem/internal/testutil"
	"github.com/xdevmem/xdevmem/stack"
)

// newWorld builds a harness.World for t and removes it on cleanup, checking
// on the way out that every UMEM frame came back.
func newWorld(t *testing.T, opts harness.Options) *harness.World {
	t.Helper()
	testutil.RequirePrivileged(t)
	if opts.Prefix == "" {
		opts.Prefix = "xdt"
	}
	w, err := harness.New(opts)
	if err != nil {
		t.Fatalf("build world: %v", err)
	}
	t.Cleanup(func() {
		st := w.Stack
		if err := w.Close(); err != nil {
			t.Errorf("close world: %v", err)
		}
		if a := st.Accounting(); a.Free != a.Frames {
			t.Errorf("after close not every frame is free: %v", a)
		}
	})
	return w
}

// acceptOne accepts one connection in the background.
func acceptOne(t *testing.T, w *harness.World) <-chan devmemapi.Conn {
	t.Helper()
	ch := make(chan devmemapi.Conn, 1)
	go func() {
		c, err := w.Listener.Accept()
		if err != nil {
			t.Errorf("accept: %v", err)
			close(ch)
			return
		}
		ch <- c
	}()
	return ch
}

// sendPattern dials from the peer namespace and writes size bytes of the
// period-n pattern, then closes. Errors go to the returned channel.
func sendPattern(w *harness.World, n int, size uint64) <-chan error {
	errc := make(chan error, 1)
	go func() {
		c, err := w.DialPeer()
		if err != nil {
			errc <- err
			return
		}
		_, err = io.Copy(c, pattern.NewReader(n, size))
		if cerr := c.Close(); err == nil {
			err = cerr
		}
		errc <- err
	}()
	return errc
}

// receiveValidated receives one connection as a devmem app and validates
// the pattern.
func receiveValidated(t *testing.T, w *harness.World, conn devmemapi.Conn, n int, size uint64) harness.Result {
	t.Helper()
	v := pattern.NewValidator(n)
	res, err := harness.Receive(conn, w.Binding, harness.ReceiveOptions{Sink: func(b []byte) error { return v.Check(b) }})
	if err != nil {
		t.Fatalf("receive: %v (after %d bytes)", err, res.Bytes)
	}
	if v.Offset() != size || res.Bytes != size {
		t.Fatalf("received %d bytes (validated %d), want %d", res.Bytes, v.Offset(), size)
	}
	return res
}

func waitErr(t *testing.T, errc <-chan error, what string) {
	t.Helper()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("%s: timed out", what)
	}
}

func checkStats(t *testing.T, st stack.Stats) {
	t.Helper()
	if st.DmabufBytesCopied != 0 {
		t.Errorf("dmabuf path copied %d payload bytes", st.DmabufBytesCopied)
	}
	if st.Unmapped != 0 {
		t.Errorf("%d stream bytes could not be mapped to fragments", st.Unmapped)
	}
}

var _ = net.Dial

func netDial(addr string) (net.Conn, error) { return net.DialTimeout("tcp", addr, 10*time.Second) }

// transfer runs one connection: the peer sends size bytes of the period-n
// pattern, the stack's side receives and validates them as a devmem app.
func transfer(t *testing.T, w *harness.World, n int, size uint64) harness.Result {
	t.Helper()
	connc := acceptOne(t, w)
	errc := sendPattern(w, n, size)
	conn := <-connc
	if conn == nil {
		t.FailNow()
	}
	defer conn.Close()
	res := receiveValidated(t, w, conn, n, size)
	waitErr(t, errc, "send")
	return res
}

package tests

import (
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/internal/harness"
	"github.com/xdevmem/xdevmem/internal/netns"
	"github.com/xdevmem/xdevmem/internal/pattern"
	"github.com/xdevmem/xdevmem/internal/testutil"
	"github.com/xdevmem/xdevmem/stack"
)

func modeName(on bool) string {
	if on {
		return "autorelease=1"
	}
	return "autorelease=0"
}

// TestRXBothModes: the receive path in both token modes, byte-exact, and the
// connection's tokens follow the binding's mode.
func TestRXBothModes(t *testing.T) {
	testutil.Watchdog(t, 3*time.Minute)
	for _, auto := range []bool{false, true} {
		t.Run(modeName(auto), func(t *testing.T) {
			w := newWorld(t, harness.Options{Autorelease: &auto})
			connc := acceptOne(t, w)
			const size = 256 << 20
			errc := sendPattern(w, 7, size)
			conn := <-connc
			if conn == nil {
				t.FailNow()
			}
			defer conn.Close()
			res := receiveValidated(t, w, conn, 7, size)
			waitErr(t, errc, "send")
			if got := conn.(*stack.Conn).Autorelease(); got != auto {
				t.Fatalf("socket mode %v, binding mode %v", got, auto)
			}
			if res.Freed != res.Frags {
				t.Fatalf("freed %d of %d", res.Freed, res.Frags)
			}
			checkStats(t, w.Stack.Stats())
		})
	}
}

// TestModeLifetimes: outstanding tokens are freed on close in mode 1 and
// survive close until unbind in mode 0.
func TestModeLifetimes(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	for _, auto := range []bool{false, true} {
		t.Run(modeName(auto), func(t *testing.T) {
			w := newWorld(t, harness.Options{Autorelease: &auto})
			connc := acceptOne(t, w)
			errc := sendPattern(w, 7, 1<<20)
			conn := <-connc
			if conn == nil {
				t.FailNow()
			}
			waitErr(t, errc, "send")
			// Receive everything and keep every token.
			p := make([]byte, 1<<20)
			oob := make([]byte, 1024*devmemapi.CmsgSpaceDmabuf)
			var got int
			for got < 1<<20 {
				n, _, err := devmemapi.RecvFrags(conn, p, oob, nil, 0)
				if err != nil {
					t.Fatal(err)
				}
				got += n
			}
			held := w.Stack.Accounting().Held
			if held == 0 {
				t.Fatal("no frames held by outstanding tokens")
			}
			conn.Close()
			after := w.Stack.Accounting()
			if auto && after.Held != 0 {
				t.Fatalf("mode 1: %d frames still held after close", after.Held)
			}
			if !auto && after.Held != held {
				t.Fatalf("mode 0: held %d before close, %d after (urefs must survive close)", held, after.Held)
			}
			w.Binding.Close()
			if a := w.Stack.Accounting(); a.Held != 0 {
				t.Fatalf("after unbind %d frames still held", a.Held)
			}
		})
	}
}

// TestModeConflict: the v7+ mode is system-wide (per process here): binding
// with the other mode while an RX binding exists fails with EBUSY and the
// kernel's message; once no binding remains the mode may change.
func TestModeConflict(t *testing.T) {
	testutil.Watchdog(t, time.Minute)
	off, on := false, true
	a := newWorld(t, harness.Options{Autorelease: &off})
	b := newWorld(t, harness.Options{NoBind: true})
	_, err := b.Stack.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}, Autorelease: &on})
	if !errors.Is(err, unix.EBUSY) || !strings.Contains(err.Error(), "System already configured with autorelease=0") {
		t.Fatalf("bind with the other mode: %v", err)
	}
	a.Binding.Close()
	bb, err := b.Stack.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}, Autorelease: &on})
	if err != nil {
		t.Fatalf("bind after the other mode's binding went away: %v", err)
	}
	bb.Close()
}

// TestNcdevmemAutoreleaseCases replays the autorelease series' selftest
// cases with the server binary: check_rx_autorelease (-a 1),
// check_unbind_before_recv[_autorelease] (-U 1: recvmsg fails with ENODEV
// in autorelease-off mode only) and check_unbind_after_recv[_autorelease]
// (-U 2: clean exit).
func TestNcdevmemAutoreleaseCases(t *testing.T) {
	testutil.Watchdog(t, 3*time.Minute)
	bin := xdevmemBinary(t)
	p := testutil.NewPair(t, netns.Options{Prefix: "xdt"})
	addr := p.EmuAddr.Addr().String()
	run := func(t *testing.T, args ...string) (string, error) {
		t.Helper()
		srv := p.Emu.Command(bin, append([]string{"server", "--backend", "emulated", "-l", "-f", p.EmuIf, "-s", addr, "-p", "5320", "-v", "7", "--quiet"}, args...)...)
		out := newWatchWriter("listening on")
		srv.Stderr = out
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		defer srv.Process.Kill()
		select {
		case <-out.seen:
		case <-time.After(30 * time.Second):
			t.Fatalf("server did not start: %s", out.String())
		}
		err := p.Peer.Do(func() error {
			c, err := netDial(addr + ":5320")
			if err != nil {
				return err
			}
			io.Copy(c, pattern.NewReader(7, 1<<20))
			return c.Close()
		})
		if err != nil {
			t.Fatalf("client: %v", err)
		}
		werr := waitCmd(srv, 30*time.Second)
		return out.String(), werr
	}
	for _, mode := range []string{"0", "1"} {
		t.Run("check_rx/-a "+mode, func(t *testing.T) {
			out, err := run(t, "-a", mode)
			if err != nil || !strings.Contains(out, "Validated buffer") || !strings.Contains(out, "ncdevmem: ok") {
				t.Fatalf("%v: %s", err, out)
			}
		})
		t.Run("check_unbind_before_recv/-a "+mode, func(t *testing.T) {
			out, err := run(t, "-a", mode, "-U", "1")
			var ee *exec.ExitError
			if mode == "0" {
				// Series v10: the socket is not tied yet and the
				// binding has no users left.
				if !errors.As(err, &ee) || !strings.Contains(out, "no such device") {
					t.Fatalf("want a failure with ENODEV, got %v: %s", err, out)
				}
				return
			}
			// Autorelease on never answers ENODEV: what was queued
			// before the unbind is delivered; what arrives after it
			// lands on an unbound queue as plain bytes, which the
			// server counts as a flow steering error.
			if strings.Contains(out, "no such device") || (err != nil && !strings.Contains(out, "flow steering error")) {
				t.Fatalf("-a 1 -U 1: %v: %s", err, out)
			}
		})
		t.Run("check_unbind_after_recv/-a "+mode, func(t *testing.T) {
			out, err := run(t, "-a", mode, "-U", "2")
			if err != nil || !strings.Contains(out, "ncdevmem: ok") {
				t.Fatalf("%v: %s", err, out)
			}
		})
	}
}

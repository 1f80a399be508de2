package tests

import (
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/xdevmem/xdevmem/internal/harness"
	"github.com/xdevmem/xdevmem/internal/pattern"
	"github.com/xdevmem/xdevmem/internal/testutil"
	"github.com/xdevmem/xdevmem/stack"
)

// runConns sends size bytes on each of conns connections at once, each with
// its own pattern period (sent as the first byte), and checks every stream.
func runConns(t *testing.T, w *harness.World, conns int, size uint64) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, 2*conns)
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := w.Listener.Accept()
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			var v *pattern.Validator
			var got uint64
			_, err = harness.Receive(c, w.Binding, harness.ReceiveOptions{Sink: func(b []byte) error {
				if v == nil {
					v = pattern.NewValidator(int(b[0]))
					b = b[1:]
					got++
				}
				got += uint64(len(b))
				return v.Check(b)
			}})
			if err == nil && got != size+1 {
				err = fmt.Errorf("got %d bytes, want %d", got, size+1)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := w.DialPeer()
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			period := 2 + i%250
			if _, err := c.Write([]byte{byte(period)}); err != nil {
				errs <- err
				return
			}
			if _, err := io.Copy(c, pattern.NewReader(period, size)); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestFaults1GiB64Conns: 1 GiB over 64 concurrent connections through a
// lossy, reordering, duplicating, corrupting link arrives byte-exact;
// corrupted frames are counted as checksum drops and never delivered.
func TestFaults1GiB64Conns(t *testing.T) {
	testutil.Watchdog(t, 6*time.Minute)
	faults, err := stack.ParseFaults("drop=0.05,reorder=0.1,dup=0.02,corrupt=0.01", 1)
	if err != nil {
		t.Fatal(err)
	}
	w := newWorld(t, harness.Options{Stack: stack.Config{RegionSize: 64 << 20, RcvBuf: 256 << 10, Lab: stack.Lab{Faults: faults}}})
	start := time.Now()
	runConns(t, w, 64, 16<<20)
	st := w.Stack.Stats()
	t.Logf("1 GiB over 64 connections with %v in %v: faults %+v, checksum drops ip %d tcp %d, malformed %d, retransmitted bytes %d, fill-empty %d",
		faults, time.Since(start).Round(time.Millisecond), st.Faults, st.DropBadIPChecksum, st.DropBadTCPChecksum, st.DropMalformed, st.RetransmitBytes, st.XSK.RxFillRingEmpty)
	if st.Faults.Dropped == 0 || st.Faults.Duplicated == 0 || st.Faults.Reordered == 0 || st.Faults.Corrupted == 0 {
		t.Fatalf("faults not injected: %+v", st.Faults)
	}
	// Every corrupted frame was rejected by a checksum (or as malformed
	// when the flip hit a length field), none delivered.
	rejected := st.DropBadIPChecksum + st.DropBadTCPChecksum + st.DropMalformed
	if rejected < st.Faults.Corrupted {
		t.Fatalf("%d frames corrupted but only %d rejected", st.Faults.Corrupted, rejected)
	}
	checkStats(t, st)
}

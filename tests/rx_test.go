package tests

import (
	"testing"
	"time"

	"github.com/xdevmem/xdevmem/internal/harness"
	"github.com/xdevmem/xdevmem/internal/testutil"
)

func TestRXSmoke(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	w := newWorld(t, harness.Options{})
	connc := acceptOne(t, w)
	const size = 32 << 20
	errc := sendPattern(w, 7, size)
	conn := <-connc
	if conn == nil {
		t.FailNow()
	}
	defer conn.Close()
	res := receiveValidated(t, w, conn, 7, size)
	waitErr(t, errc, "send")
	st := w.Stack.Stats()
	t.Logf("result %+v", res)
	t.Logf("stats %+v", st)
	if res.DmabufBytes != size || res.LinearBytes != 0 {
		t.Fatalf("dmabuf %d linear %d, want all %d as dmabuf", res.DmabufBytes, res.LinearBytes, size)
	}
	checkStats(t, st)
}

package stack

import (
	"os"
	"sync/atomic"
	"time"
)

// waitEvent blocks until ev fires, the deadline (unix nanoseconds, 0 for
// none) passes, or closed is closed; it reports which. An expired deadline
// is os.ErrDeadlineExceeded.
func waitEvent(deadline int64, ev, closed <-chan struct{}) (isClosed bool, err error) {
	var timeout <-chan time.Time
	if deadline != 0 {
		left := time.Until(time.Unix(0, deadline))
		if left <= 0 {
			return false, os.ErrDeadlineExceeded
		}
		t := time.NewTimer(left)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-ev:
	case <-timeout:
	case <-closed:
		return true, nil
	}
	return false, nil
}

// setDeadline stores t in d as unix nanoseconds, 0 for none, and wakes a
// call blocked on ch so that it sees the new deadline.
func setDeadline(d *atomic.Int64, t time.Time, ch chan struct{}) error {
	if t.IsZero() {
		d.Store(0)
	} else {
		d.Store(t.UnixNano())
	}
	select {
	case ch <- struct{}{}:
	default:
	}
	return nil
}

package stack

import (
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// SO_LINGER on the stack's connections. Off (the default), Close returns at
// once and the connection finishes in the background. On with no time,
// Close resets the connection: an RST, and unsent data dropped (tcp_close's
// zero-linger disconnect; gVisor's Close does it). On with a time, Close
// waits until the peer has acknowledged everything up to the FIN, the time
// passes, or the stack closes (sk_stream_wait_close); it returns nil in
// every case, as close(2) returns 0.

// setLinger sets ep's SO_LINGER; d is ignored when off.
func setLinger(ep tcpip.Endpoint, on bool, d time.Duration) {
	if !on || d < 0 {
		d = 0
	}
	ep.SocketOptions().SetLinger(tcpip.LingerOption{Enabled: on, Timeout: d})
}

// sendFinished reports whether ep can send no more: its FIN acknowledged,
// or the connection closed or reset.
func sendFinished(ep tcpip.Endpoint) bool {
	switch tcp.EndpointState(ep.State()) {
	case tcp.StateFinWait2, tcp.StateTimeWait, tcp.StateClose, tcp.StateError:
		return true
	}
	return false
}

// lingerWait is the wait of Close on a closed endpoint whose SO_LINGER is
// on with a time: until sendFinished, the time passes or closing is set.
func lingerWait(ep tcpip.Endpoint, closing *atomic.Bool) {
	if l := ep.SocketOptions().GetLinger(); l.Enabled && l.Timeout > 0 {
		pollUntil(func() bool { return sendFinished(ep) }, closing, l.Timeout)
	}
}

// awaitOrphan waits, behind a closed connection, until ep can send no more
// (sendFinished); past txLinger it resets ep. It reports false when the
// stack closed first (Close then tears everything down).
func awaitOrphan(ep tcpip.Endpoint, closing *atomic.Bool) bool {
	if pollUntil(func() bool { return sendFinished(ep) }, closing, txLinger) {
		return true
	}
	if closing.Load() {
		return false
	}
	ep.Abort()
	return true
}

// pollUntil calls done, pausing between calls (100 µs, doubling up to
// 10 ms), until it holds, d passes or closing is set, and reports whether
// it held.
func pollUntil(done func() bool, closing *atomic.Bool, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for p := 100 * time.Microsecond; !done(); p = min(2*p, 10*time.Millisecond) {
		left := time.Until(deadline)
		if left <= 0 || closing.Load() {
			return false
		}
		time.Sleep(min(p, left))
	}
	return true
}

// Drain waits, at most timeout, until no TCP connection of the stack has
// data or a FIN its peer has not acknowledged, and returns how many still
// have. Closed sockets leave such connections behind, which a kernel would
// go on sending as orphans; Close resets them, so a caller whose sockets
// are closed drains before it closes the stack. Connections still open
// keep it waiting the whole timeout.
func (s *Stack) Drain(timeout time.Duration) int {
	var n int
	pollUntil(func() bool { n = s.sending(); return n == 0 }, &s.closing, timeout)
	return n
}

// sending counts the stack's TCP endpoints whose peer has not acknowledged
// everything they sent: established, or closing with their FIN not yet
// acknowledged.
func (s *Stack) sending() int {
	n := 0
	for _, e := range s.ns.RegisteredEndpoints() {
		ep, ok := e.(interface{ State() uint32 })
		if !ok {
			continue
		}
		switch tcp.EndpointState(ep.State()) {
		case tcp.StateEstablished, tcp.StateCloseWait, tcp.StateFinWait1, tcp.StateClosing, tcp.StateLastAck:
			n++
		}
	}
	return n
}

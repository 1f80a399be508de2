package stack

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"
)

// A transfer that loses every frame to one drop reason hangs with nothing to
// show why: the peer retransmits, the stack drops again. The receive path
// therefore watches for runs of drops and raises an Alert, once per reason
// for the stack's lifetime, through Config.OnAlert. The watching costs
// nothing on the good path but one comparison while a run is open.

// AlertReason is why an Alert was raised.
type AlertReason uint8

// Alert reasons.
const (
	// AlertBadChecksum: a flow's frames keep failing checksum
	// verification, almost always a peer that leaves TX checksum offload
	// on (veth's default), so its frames carry unfinished checksums.
	AlertBadChecksum AlertReason = iota
	// AlertOutOfWindow: a flow keeps sending beyond the fragment queue's
	// window.
	AlertOutOfWindow
	// AlertUnsupported: a flow keeps sending TCP the header split does not
	// take apart.
	AlertUnsupported
	// AlertMalformed: frames keep arriving truncated or inconsistent.
	AlertMalformed
	// AlertDmabufExhausted: the receive path has had no free frame to
	// give the kernel for a while: the application holds them all
	// (tokens not returned), and the interface drops packets meanwhile.
	AlertDmabufExhausted
	numAlertReasons
)

var alertNames = [numAlertReasons]string{"bad-checksum", "out-of-window", "unsupported", "malformed", "dmabuf-exhausted"}

// String names the reason.
func (r AlertReason) String() string {
	if r < numAlertReasons {
		return alertNames[r]
	}
	return fmt.Sprintf("alert(%d)", uint8(r))
}

// alertRun is how many drops in a row from one flow raise an alert.
const alertRun = 3

// alertStarved is how long the fill ring may stay empty before
// AlertDmabufExhausted.
const alertStarved = 2 * time.Second

// Alert reports a run of drops that probably stalls a flow.
type Alert struct {
	// Reason is the drop reason.
	Reason AlertReason
	// Peer is the sending end of the flow, when the frame showed it;
	// LocalPort is the stack's port (0 when unknown).
	Peer      netip.AddrPort
	LocalPort uint16
	// Count is the number of drops in a row (0 for AlertDmabufExhausted).
	Count int
	// Held, Pinned and Frames are the UMEM's frames held by the
	// application (tokens out), holding data not read yet, and in all
	// (AlertDmabufExhausted only).
	Held, Pinned, Frames uint32
}

// String says what happened and what to do about it, in one line.
func (a Alert) String() string {
	from := ""
	if a.Peer.IsValid() {
		from = " from " + a.Peer.String()
		if a.LocalPort != 0 {
			from += fmt.Sprintf(" to port %d", a.LocalPort)
		}
	}
	switch a.Reason {
	case AlertBadChecksum:
		return fmt.Sprintf("%d frames in a row%s dropped for bad checksums: the sender probably leaves TX checksum offload on "+
			"(veth does by default) and sends unfinished checksums; turn it off on the sending interface: ethtool -K PEER-IFACE tx off", a.Count, from)
	case AlertOutOfWindow:
		return fmt.Sprintf("%d segments in a row%s dropped beyond the receive window: the sender ignores the advertised window", a.Count, from)
	case AlertUnsupported:
		return fmt.Sprintf("%d segments in a row%s dropped: TCP behind IPv6 extension headers (or otherwise not taken apart by the header split) "+
			"is not supported", a.Count, from)
	case AlertMalformed:
		return fmt.Sprintf("%d malformed frames in a row%s dropped (truncated or inconsistent headers)", a.Count, from)
	case AlertDmabufExhausted:
		return fmt.Sprintf("the dmabuf is exhausted: of %d frames, %d are held by the application (tokens not returned with SO_DEVMEM_DONTNEED) "+
			"and %d hold data not read yet; the interface drops packets until frames come back", a.Frames, a.Held, a.Pinned)
	}
	return a.Reason.String()
}

// alerter remembers which reasons were raised; one per stack.
type alerter struct {
	raised [numAlertReasons]atomic.Bool
}

// raise calls fn with a, unless a's reason was raised before. fn runs on
// its own goroutine so that a slow callback cannot stall the receive path.
func (al *alerter) raise(fn func(Alert), a Alert) {
	if fn == nil || !al.raised[a.Reason].CompareAndSwap(false, true) {
		return
	}
	go fn(a)
}

// alertOf maps a drop verdict of the header split to its alert reason.
func alertOf(v verdict) AlertReason {
	switch v {
	case verdictBadIPChecksum, verdictBadTCPChecksum:
		return AlertBadChecksum
	case verdictUnsupported:
		return AlertUnsupported
	}
	return AlertMalformed
}

// dropRun tracks one receive queue's current run of drops.
type dropRun struct {
	reason AlertReason
	peer   netip.AddrPort
	lport  uint16
	n      int
}

// noteDrop counts a dropped frame b into the queue's run and raises an
// alert when the run is long enough. Cold path: drops only.
func (q *rxQueue) noteDrop(reason AlertReason, b []byte) {
	s := q.s
	if s.cfg.OnAlert == nil || s.alerts.raised[reason].Load() {
		return
	}
	peer, lport := peekFlow(b)
	r := &q.run
	if r.n > 0 && r.reason == reason && r.peer == peer && r.lport == lport {
		r.n++
	} else {
		*r = dropRun{reason: reason, peer: peer, lport: lport, n: 1}
	}
	if r.n >= alertRun {
		s.alerts.raise(s.cfg.OnAlert, Alert{Reason: reason, Peer: peer, LocalPort: lport, Count: r.n})
		r.n = 0
	}
}

// noteGood ends the queue's run of drops when a good segment of the same
// flow arrives.
func (q *rxQueue) noteGood(key flowKey) {
	if q.run.n > 0 && q.run.lport == key.lport && q.run.peer.Port() == key.rport {
		q.run.n = 0
	}
}

// noteStarved is called by the receive loop while the fill ring is empty;
// since is when it became so.
func (q *rxQueue) noteStarved(since time.Time) {
	s := q.s
	if s.cfg.OnAlert == nil || s.alerts.raised[AlertDmabufExhausted].Load() || time.Since(since) < alertStarved {
		return
	}
	acct := s.region.Snapshot()
	s.alerts.raise(s.cfg.OnAlert, Alert{Reason: AlertDmabufExhausted, Held: acct.Held, Pinned: acct.Pinned, Frames: acct.Frames})
}

// peekFlow reads the source address and ports of an Ethernet frame holding
// IPv4 or IPv6 TCP, best effort: a zero AddrPort when it cannot tell.
func peekFlow(b []byte) (peer netip.AddrPort, lport uint16) {
	if len(b) < ethHdrLen {
		return netip.AddrPort{}, 0
	}
	ip := b[ethHdrLen:]
	var src netip.Addr
	var tcp []byte
	switch binary.BigEndian.Uint16(b[12:14]) {
	case etherTypeIPv4:
		if len(ip) < 20 {
			return netip.AddrPort{}, 0
		}
		src = netip.AddrFrom4([4]byte(ip[12:16]))
		if ihl := int(ip[0]&0x0f) * 4; ip[9] == ipProtoTCP && ihl >= 20 && len(ip) >= ihl+4 {
			tcp = ip[ihl:]
		}
	case etherTypeIPv6:
		if len(ip) < ipv6HdrLen {
			return netip.AddrPort{}, 0
		}
		src = netip.AddrFrom16([16]byte(ip[8:24]))
		if ip[6] == ipProtoTCP && len(ip) >= ipv6HdrLen+4 {
			tcp = ip[ipv6HdrLen:]
		}
	default:
		return netip.AddrPort{}, 0
	}
	if tcp == nil {
		return netip.AddrPortFrom(src, 0), 0
	}
	return netip.AddrPortFrom(src, binary.BigEndian.Uint16(tcp[0:])), binary.BigEndian.Uint16(tcp[2:])
}

package stack

import (
	"sync"
	"sync/atomic"
)

// Devmem TX
//
// A TX binding (BindTX) is a span of UMEM frames the application writes
// payload into. TXConn.SendMsg takes (offset, length) ranges of it; gVisor
// gets a placeholder of the same length (zero-filled chunks it allocates
// itself, nothing is copied into them), and the connection records which
// stream bytes live at which UMEM address. When gVisor transmits a segment
// of such a connection, the TX engine maps the segment's sequence range
// back to UMEM addresses, writes the headers into a TX frame and points the
// following descriptors of a multi-buffer chain at the payload in the span;
// the TCP checksum is computed over the real payload, as a NIC's TX
// checksum offload would (the link advertises the offload once the engine
// runs). Where the kernel refuses chains, or a segment would need more
// descriptors than an skb has frags, the payload is copied into the TX
// frame and counted. Retransmissions map by sequence number to the same
// bytes.
//
// Completions: each send call takes the next zerocopy number; it completes
// once the peer's cumulative ACK (read off received segments as they are
// handed to gVisor) passes the call's last byte and every chain that
// carried bytes of it has come back on the completion ring.
//
// Once installed (the first BindTX or Dial), the engine carries every frame
// the stack transmits, so that it alone consumes the completion ring.
//
// The files, by job: tx_binding.go (BindTX and the spans), tx_conn.go (the
// connections: SendMsg, the stream map, completions), tx_link.go (the link
// endpoint gVisor sees: the engine's takeover of WritePackets, GSO, and
// the tap that reads ACKs), tx_engine.go (the engine: install, connections,
// completed addresses), tx_build.go (gVisor's packets into frames and
// chains on the device) and tx_segment.go (the pure parts: header location,
// TSO segmentation, TCP checksum completion).

const (
	// txFlushDescs is how many descriptors writePackets queues before it
	// submits them (the TX ring holds 512).
	txFlushDescs = 256
	// txGSOMaxSize is the largest GSO packet the engine takes from gVisor.
	txGSOMaxSize = 1 << 16
	// txMaxPayloadDescs bounds the payload descriptors of one chain: copy
	// mode joins them as skb frags (MAX_SKB_FRAGS is 17) and drops longer
	// chains.
	txMaxPayloadDescs = 16
	// txProbeEtherType marks the multi-buffer probe frame (IEEE 802 local
	// experimental EtherType 1); peers drop it.
	txProbeEtherType = 0x88b5
)

// txState is the stack's TX state; the zero value is "no engine yet".
type txState struct {
	mu  sync.Mutex // serializes install and teardown
	eng atomic.Pointer[txEngine]
}

// txCounters are the engine's live counters; TXStats is their snapshot.
type txCounters struct {
	calls, completed, notifications     atomic.Uint64
	dmabufBytes, dmabufCopied, segments atomic.Uint64
	mbPackets, copyPackets, descs       atomic.Uint64
	stale, unmapped, plainPackets       atomic.Uint64
	oversize                            atomic.Uint64
	einval, efault, enodev              atomic.Uint64
}

// TXStats is a snapshot of the devmem TX counters.
type TXStats struct {
	// Mode is "multi-buffer" (payload descriptors point into the TX
	// dmabuf), "copy" (payload copied into TX frames) or "" (no TX yet).
	Mode string
	// Calls counts send calls that queued data; Completed the send numbers
	// completed and Notifications the ranges queued for MSG_ERRQUEUE.
	Calls, Completed, Notifications uint64
	// DmabufBytes counts payload bytes sent from TX dmabufs (retransmits
	// included); DmabufBytesCopied those the stack copied into TX frames.
	DmabufBytes, DmabufBytesCopied uint64
	// Segments counts devmem data segments; MultiBufferPackets and
	// CopiedPackets split them by path; PayloadDescs counts descriptors
	// pointing into TX dmabufs.
	Segments, MultiBufferPackets, CopiedPackets, PayloadDescs uint64
	// StaleDrops counts segments dropped because the peer had already
	// acknowledged all of them (a retransmission racing the ACK).
	StaleDrops uint64
	// Unmapped counts segments whose bytes no send recorded; anything but
	// 0 is a bug.
	Unmapped uint64
	// PlainPackets counts other frames the engine sent (ACKs, SYNs, ...).
	PlainPackets uint64
	// Oversize counts packets dropped for being larger than a UMEM frame
	// on a kernel without multi-buffer TX.
	Oversize uint64
	// EINVAL, EFAULT and ENODEV count failed send calls.
	EINVAL, EFAULT, ENODEV uint64
}

// TXStats takes a snapshot of the devmem TX counters.
func (s *Stack) TXStats() TXStats {
	t := s.tx.eng.Load()
	if t == nil {
		return TXStats{}
	}
	c := &t.cnt
	st := TXStats{
		Mode:  "copy",
		Calls: c.calls.Load(), Completed: c.completed.Load(), Notifications: c.notifications.Load(),
		DmabufBytes: c.dmabufBytes.Load(), DmabufBytesCopied: c.dmabufCopied.Load(),
		Segments: c.segments.Load(), MultiBufferPackets: c.mbPackets.Load(), CopiedPackets: c.copyPackets.Load(),
		PayloadDescs: c.descs.Load(), StaleDrops: c.stale.Load(), Unmapped: c.unmapped.Load(),
		PlainPackets: c.plainPackets.Load(), Oversize: c.oversize.Load(),
		EINVAL: c.einval.Load(), EFAULT: c.efault.Load(), ENODEV: c.enodev.Load(),
	}
	if t.mb {
		st.Mode = "multi-buffer"
	}
	return st
}

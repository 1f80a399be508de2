package stack

import (
	"fmt"
	"sync/atomic"

	"github.com/xdevmem/xdevmem/umem"
)

// counters are the stack's live counters; Stats is their snapshot.
type counters struct {
	// Updated by the receive goroutines, per packet or batch.
	rxFrames, rxTCP, rxOther             atomic.Uint64
	verdicts                             [numVerdicts]atomic.Uint64
	dropOutOfWindow, dropNotOurs, noFlow atomic.Uint64
	retransmitBytes                      atomic.Uint64
	rxCoalesced                          atomic.Uint64 // segments merged into the burst before them (rxqueue.go coalesce)
	frameCopyBytes                       atomic.Uint64 // whole frames copied into the stack (ARP, SYN, ACK, ...)
	headerCopyBytes                      atomic.Uint64
	ipFragments, ipReassembled           atomic.Uint64
	ipFragDrops                          atomic.Uint64

	// The two groups sit on separate cache lines: the receive goroutine
	// and the reading application run on different cores, and sharing a
	// line would make every packet's counter update bounce it.
	_ [64]byte

	// Updated by the application's goroutines, per RecvMsg call.
	delivered                            [3]atomic.Uint64 // by fragKind
	copied                               [3]atomic.Uint64 // payload bytes copied, by fragKind
	frags, tokensOut                     atomic.Uint64
	unmapped                             atomic.Uint64
	recvCalls, etoosmall, efault, enodev atomic.Uint64

	_ [64]byte

	// Transmit, flows: per ACK or per connection.
	txFrames, txBytes                       atomic.Uint64
	kickErrors                              atomic.Uint64
	flowsCreated, flowsClosed, flowsRefused atomic.Uint64
	flowsEvicted                            atomic.Uint64
}

// Stats is a snapshot of the stack's counters.
type Stats struct {
	// RxFrames counts frames taken from the RX ring.
	RxFrames uint64
	// RxTCP counts well-formed TCP segments; RxOther frames handed whole to
	// the stack (ARP, ICMP, ...).
	RxTCP, RxOther uint64
	// DropMalformed, DropBadIPChecksum and DropBadTCPChecksum count frames
	// the header split rejected; they never reach TCP.
	DropMalformed, DropBadIPChecksum, DropBadTCPChecksum uint64
	// DropUnsupported counts TCP segments the split does not take apart
	// (behind IPv6 extension headers).
	DropUnsupported uint64
	// DropOutOfWindow counts segments beyond the fragment queue's window.
	DropOutOfWindow uint64
	// DropNotOurs counts frames not addressed to the stack.
	DropNotOurs uint64
	// NoFlow counts payload segments of unknown connections (copied).
	NoFlow uint64
	// IPFragments counts IPv4 and IPv6 fragments of TCP segments received;
	// IPReassembled the segments put back together from them (their
	// payload is delivered linear); IPFragmentDrops the fragments
	// discarded: overlapping or inconsistent ones, those of a datagram not
	// complete within 30 s or pushed out by the 4 MiB limit, and segments
	// that found no free UMEM frame.
	IPFragments, IPReassembled, IPFragmentDrops uint64
	// RetransmitBytes counts payload bytes that arrived again (already
	// queued or delivered); they map to the first arrival.
	RetransmitBytes uint64
	// DmabufBytes, LinearBytes and PlainBytes count payload delivered to
	// the application by kind.
	DmabufBytes, LinearBytes, PlainBytes uint64
	// DmabufBytesCopied counts dmabuf payload bytes the stack copied. The
	// design keeps it at 0: the payload stays where it landed.
	DmabufBytesCopied uint64
	// LinearBytesCopied and PlainBytesCopied count copied payload.
	LinearBytesCopied, PlainBytesCopied uint64
	// HeaderBytesCopied counts header bytes copied into the stack by the
	// split; FrameBytesCopied whole non-payload frames.
	HeaderBytesCopied, FrameBytesCopied uint64
	// TCPSegments counts segments gVisor's TCP processed after GRO; with
	// RxTCP it shows how much coalescing saved.
	TCPSegments uint64
	// RxCoalesced counts segments the receive loop merged into the
	// segment before them (a burst of one flow, handed to gVisor as one).
	RxCoalesced uint64
	// Frags counts dmabuf fragments delivered (one token each).
	Frags uint64
	// Unmapped counts stream bytes the stack delivered that the fragment
	// queue could not map; anything but 0 is a bug.
	Unmapped uint64
	// TxFrames and TxBytes count transmitted frames; TxDrops frames dropped
	// for lack of TX room.
	TxFrames, TxBytes, TxDrops uint64
	// TxKickStalls counts TX kicks that gave up with frames still unsent,
	// TxKickErrors kicks the kernel refused (0 expected for both).
	TxKickStalls, TxKickErrors uint64
	// RecvCalls counts RecvMsg calls; ETooSmall, EFault and ENoDev count
	// their errors.
	RecvCalls, ETooSmall, EFault, ENoDev uint64
	// FlowsCreated and FlowsClosed count fragment queues; FlowsEvicted
	// those dropped unaccepted because too many were pending (SYN flood).
	FlowsCreated, FlowsClosed, FlowsEvicted uint64
	// XSK are the AF_XDP socket's kernel counters (RxFillRingEmpty counts
	// the drops of an exhausted dmabuf).
	XSK umem.Stats
	// Frames is the UMEM accounting.
	Frames umem.Accounting
	// Faults counts injected faults (Config.Lab.Faults).
	Faults FaultStats
}

// Drops gathers every reason the receive path dropped a frame, for the
// commands' summaries (text and JSON).
type Drops struct {
	// Malformed, BadIPChecksum, BadTCPChecksum and Unsupported are the
	// header split's rejections.
	Malformed      uint64 `json:"malformed"`
	BadIPChecksum  uint64 `json:"bad_ip_checksum"`
	BadTCPChecksum uint64 `json:"bad_tcp_checksum"`
	Unsupported    uint64 `json:"unsupported"`
	// OutOfWindow counts segments beyond a fragment queue's window;
	// NotOurs frames for another address; FlowsEvicted half-open flows
	// dropped under a SYN flood.
	OutOfWindow  uint64 `json:"out_of_window"`
	NotOurs      uint64 `json:"not_ours"`
	FlowsEvicted uint64 `json:"flows_evicted"`
	// FillRingEmpty, RxRingFull and KernelDropped are the AF_XDP sockets'
	// kernel counters: packets dropped with the dmabuf exhausted, with
	// the RX ring full, and for other reasons.
	FillRingEmpty uint64 `json:"fill_ring_empty"`
	RxRingFull    uint64 `json:"rx_ring_full"`
	KernelDropped uint64 `json:"kernel_dropped"`
	// Fragments counts IP fragments of TCP segments received, Reassembled
	// the segments rebuilt from them (delivered linear), FragmentDrops the
	// fragments dropped (timed out, overlapping, over the limits).
	Fragments     uint64 `json:"fragments"`
	Reassembled   uint64 `json:"reassembled"`
	FragmentDrops uint64 `json:"fragment_drops"`
	// Faults are the injected faults (all 0 without --faults).
	Faults FaultStats `json:"faults"`
}

// Drops returns the snapshot's drop counters.
func (st Stats) Drops() Drops {
	return Drops{
		Malformed: st.DropMalformed, BadIPChecksum: st.DropBadIPChecksum, BadTCPChecksum: st.DropBadTCPChecksum,
		Unsupported: st.DropUnsupported, OutOfWindow: st.DropOutOfWindow, NotOurs: st.DropNotOurs,
		FlowsEvicted: st.FlowsEvicted, FillRingEmpty: st.XSK.RxFillRingEmpty, RxRingFull: st.XSK.RxRingFull,
		KernelDropped: st.XSK.RxDropped, Fragments: st.IPFragments, Reassembled: st.IPReassembled,
		FragmentDrops: st.IPFragmentDrops, Faults: st.Faults,
	}
}

// String lists the drop counters in one line, faults only when injected.
func (d Drops) String() string {
	s := fmt.Sprintf("%d malformed, %d bad IP checksum, %d bad TCP checksum, %d unsupported, %d out of window, %d not ours, "+
		"%d evicted flows, %d fill-ring-empty, %d rx-ring-full, %d kernel; %d IP fragments (%d segments reassembled, %d fragments dropped)",
		d.Malformed, d.BadIPChecksum, d.BadTCPChecksum, d.Unsupported, d.OutOfWindow, d.NotOurs,
		d.FlowsEvicted, d.FillRingEmpty, d.RxRingFull, d.KernelDropped, d.Fragments, d.Reassembled, d.FragmentDrops)
	if f := d.Faults; f != (FaultStats{}) {
		s += fmt.Sprintf("; injected: %d dropped, %d duplicated, %d reordered, %d corrupted, %d truncated",
			f.Dropped, f.Duplicated, f.Reordered, f.Corrupted, f.Truncated)
	}
	return s
}

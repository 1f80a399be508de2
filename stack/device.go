package stack

import (
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/umem"
)

// Device is what the stack needs of one RX queue's AF_XDP socket:
// *umem.Socket implements it for New, and umemtest.Device is a fake of it
// for NewOn in tests without privileges. The methods are the socket's (see
// package umem for their contracts).
//
// The receive side belongs to the queue's receive goroutine and is called
// once per batch or idle pass, never per packet. Only the device of queue
// 0 transmits; its transmit side is safe for concurrent use and called per
// batch, except TXFrame (one call per frame built).
type Device interface {
	// Refill posts free UMEM frames on the fill ring.
	Refill() int
	// Receive takes up to len(dst) received descriptors; their frames are
	// then the stack's to Pin or Free.
	Receive(dst []unix.XDPDesc) int
	// FillPending is how many frames wait on the fill ring; at 0 arriving
	// packets are dropped.
	FillPending() int
	// Wait blocks until descriptors arrive, Wake is called, or timeout
	// milliseconds pass.
	Wait(timeout int) error
	// Wake ends a Wait from another goroutine.
	Wake()

	// SetTXClaim sets who owns completed addresses that are not TX frames
	// (payload descriptors in TX dmabufs).
	SetTXClaim(claim umem.TXClaim)
	// TXAcquire takes up to len(dst) free TX frames.
	TXAcquire(dst []uint64) int
	// TXFrame is the TX frame at addr.
	TXFrame(addr uint64) []byte
	// TXRelease gives TX frames back unsent.
	TXRelease(addrs ...uint64)
	// TXProduce queues whole packets (single descriptors or chains) and
	// returns how many descriptors it queued.
	TXProduce(descs []unix.XDPDesc) (int, error)
	// TXKick sends what is queued and reclaims completions.
	TXKick() error
	// TXReclaim takes completions without sending.
	TXReclaim() int
	// TXProbeMultiBuffer reports whether the device takes chains.
	TXProbeMultiBuffer(frame []byte, timeout time.Duration) (bool, error)

	// Stats reads the device's counters.
	Stats() (umem.Stats, error)
	// Close releases the device and gives its frames back to the region;
	// the receive goroutine has stopped.
	Close() error
}

// txBudgeter is an optional Device feature: letting one kick send a whole
// TX ring (umem.Socket.SetTXBudget).
type txBudgeter interface {
	SetTXBudget(n int) error
}

var (
	_ Device     = (*umem.Socket)(nil)
	_ txBudgeter = (*umem.Socket)(nil)
)

package umem

import (
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// ring is the producer/consumer bookkeeping shared by the four AF_XDP rings.
// The producer and consumer indices live in memory shared with the kernel;
// the cached copies avoid an atomic load per descriptor. One goroutine
// produces and one consumes; the struct itself is not locked.
type ring struct {
	producer *atomic.Uint32
	consumer *atomic.Uint32
	flags    *atomic.Uint32
	mask     uint32
	size     uint32

	cachedProd uint32
	cachedCons uint32
}

// needWakeup reports whether the kernel asked to be woken for this ring.
func (r *ring) needWakeup() bool { return r.flags.Load()&unix.XDP_RING_NEED_WAKEUP != 0 }

// prodFree returns how many entries a producer may add (refreshing the
// consumer index only when the cached view has fewer than want).
func (r *ring) prodFree(want uint32) uint32 {
	free := r.size - (r.cachedProd - r.cachedCons)
	if free >= want {
		return free
	}
	r.cachedCons = r.consumer.Load()
	return r.size - (r.cachedProd - r.cachedCons)
}

// consAvail returns how many entries a consumer may take, refreshing the
// producer index when the cached view has fewer than want.
func (r *ring) consAvail(want uint32) uint32 {
	n := r.cachedProd - r.cachedCons
	if n < want {
		r.cachedProd = r.producer.Load()
		n = r.cachedProd - r.cachedCons
	}
	return n
}

// FillRing is the ring on which userspace posts empty frames for the kernel
// to fill.
type FillRing struct {
	ring
	descs []uint64
}

// Produce posts up to len(addrs) frame addresses and returns how many it
// posted. The kernel sees them after Publish.
func (f *FillRing) Produce(addrs []uint64) int {
	n := min(uint32(len(addrs)), f.prodFree(uint32(len(addrs))))
	for i := uint32(0); i < n; i++ {
		f.descs[(f.cachedProd+i)&f.mask] = addrs[i]
	}
	f.cachedProd += n
	return int(n)
}

// Free is how many more addresses the ring can take now.
func (f *FillRing) Free() int { return int(f.prodFree(f.size)) }

// Publish makes produced entries visible to the kernel.
func (f *FillRing) Publish() { f.producer.Store(f.cachedProd) }

// Pending is how many posted addresses the kernel has not consumed yet.
func (f *FillRing) Pending() int { return int(f.cachedProd - f.consumer.Load()) }

// RXRing is the ring on which the kernel returns filled frames.
type RXRing struct {
	ring
	descs []unix.XDPDesc
}

// Consume copies up to len(dst) received descriptors into dst, releases
// their ring slots to the kernel and returns how many it copied.
func (r *RXRing) Consume(dst []unix.XDPDesc) int {
	n := min(uint32(len(dst)), r.consAvail(uint32(len(dst))))
	for i := uint32(0); i < n; i++ {
		dst[i] = r.descs[(r.cachedCons+i)&r.mask]
	}
	r.cachedCons += n
	if n > 0 {
		r.consumer.Store(r.cachedCons)
	}
	return int(n)
}

// TXRing is the ring on which userspace queues frames to send.
type TXRing struct {
	ring
	descs []unix.XDPDesc
}

// Produce queues up to len(descs) descriptors and returns how many it
// queued. The kernel sees them after Publish.
func (t *TXRing) Produce(descs []unix.XDPDesc) int {
	n := min(uint32(len(descs)), t.prodFree(uint32(len(descs))))
	for i := uint32(0); i < n; i++ {
		t.descs[(t.cachedProd+i)&t.mask] = descs[i]
	}
	t.cachedProd += n
	return int(n)
}

// Publish makes queued descriptors visible to the kernel.
func (t *TXRing) Publish() { t.producer.Store(t.cachedProd) }

// CompletionRing is the ring on which the kernel returns sent frames.
type CompletionRing struct {
	ring
	descs []uint64
}

// Consume copies up to len(dst) completed frame addresses into dst, releases
// the slots and returns how many it copied.
func (c *CompletionRing) Consume(dst []uint64) int {
	n := min(uint32(len(dst)), c.consAvail(uint32(len(dst))))
	for i := uint32(0); i < n; i++ {
		dst[i] = c.descs[(c.cachedCons+i)&c.mask]
	}
	c.cachedCons += n
	if n > 0 {
		c.consumer.Store(c.cachedCons)
	}
	return int(n)
}

package tokens

import (
	"fmt"
	"sync/atomic"
)

// Frames is what token tables need from the memory behind a binding (the
// stack's UMEM region). It stands in for the page pool's reference count on
// a net_iov.
//
// The package never calls Frames methods with one of its own locks held, so
// an implementation may take its own locks. It must not call back into this
// package's Socket or Binding methods from them.
type Frames interface {
	// Hold takes one application reference on frame. It is called from any
	// goroutine, possibly concurrently with Hold and Release on the same
	// frame, and must be atomic.
	Hold(frame uint32)
	// Release drops one application reference on each listed frame (a
	// frame listed k times loses k references) and frees those that reach
	// zero. frames is only valid during the call: the implementation must
	// not retain it (the package reuses the backing array).
	Release(frames []uint32)
}

// maxFrames bounds a binding's frame count: autorelease-off tokens are frame
// indices and must fit in a uint32.
const maxFrames = 1 << 32

// Binding is the token state of one dmabuf binding (one bind-rx): the
// frame reference source and the per-frame user reference counts (urefs)
// that autorelease-off sockets use, like the kernel's binding->vec array
// and net_iov.uref.
//
// All methods are safe for concurrent use.
type Binding struct {
	id          uint32
	frames      Frames
	autorelease bool
	unbound     atomic.Bool
	// users counts what keeps the urefs alive, as the series' (v10)
	// binding->users: 1 for the RX queues until Unbind, plus one per
	// autorelease-off socket tied to the binding until it closes. When it
	// reaches 0 the urefs are drained and no socket can tie any more.
	users atomic.Int32
	// drained is set, once users reached 0, before the urefs are dropped.
	drained atomic.Bool
	// urefs[i] counts the autorelease-off tokens outstanding on frame i;
	// each unit holds one Frames reference.
	urefs []atomic.Uint32
}

// NewBinding returns the token state of binding id over nframes frames of
// frames. autorelease records the mode the binding was created with (the
// bind-rx attribute): a socket that has neither received nor been given a
// mode with SetAutorelease adopts it at its first delivery. The uref array
// exists in both modes, because a socket set to autorelease off with the
// socket option (v6 form) may receive on any binding.
//
// It panics if frames is nil or nframes is negative or above 1<<32.
func NewBinding(id uint32, frames Frames, nframes int, autorelease bool) *Binding {
	if frames == nil {
		panic("tokens: NewBinding with nil Frames")
	}
	if nframes < 0 || uint64(nframes) > maxFrames {
		panic(fmt.Sprintf("tokens: NewBinding with %d frames", nframes))
	}
	b := &Binding{
		id:          id,
		frames:      frames,
		autorelease: autorelease,
		urefs:       make([]atomic.Uint32, nframes),
	}
	b.users.Store(1) // the RX queues
	return b
}

// ID returns the binding's dmabuf id (DmabufCmsg.DmabufID).
func (b *Binding) ID() uint32 { return b.id }

// Autorelease reports the mode the binding was created with.
func (b *Binding) Autorelease() bool { return b.autorelease }

// FrameCount returns the number of frames in the binding; autorelease-off
// tokens are in [0, FrameCount()).
func (b *Binding) FrameCount() int { return len(b.urefs) }

// Unbound reports whether Unbind has been called.
func (b *Binding) Unbound() bool { return b.unbound.Load() }

// Drained reports whether the binding has no users left: it was unbound
// and no autorelease-off socket is tied to it any more. Its urefs are
// then gone and no socket can tie to it.
func (b *Binding) Drained() bool { return b.drained.Load() }

// Users returns the binding's users: 1 for its RX queues until Unbind,
// plus one per autorelease-off socket tied to it and not yet closed.
func (b *Binding) Users() int { return int(b.users.Load()) }

// Unbind tears the binding's queues down, as closing the netlink socket
// does, and drops their user (v10 net_devmem_unbind_dmabuf). If no
// autorelease-off socket is tied to the binding that was the last user:
// every outstanding uref is dropped now (one frame reference each) and
// Unbind returns how many. Otherwise the tied sockets keep the binding
// alive: their deliveries and DONTNEEDs go on working, and the urefs are
// dropped when the last of them closes (Socket.Close returns that count
// then). Autorelease-on tokens are never touched: they belong to their
// sockets and are freed by DONTNEED or close.
//
// Unbind is idempotent: calls after the first return 0. It is safe
// concurrently with Deliver, DontNeed and Socket.Close: every uref is
// dropped exactly once, by the drain, by DONTNEED, or by a delivery that
// lost the race and undoes itself.
func (b *Binding) Unbind() (freed int) {
	if !b.unbound.CompareAndSwap(false, true) {
		return 0
	}
	return b.userPut()
}

// userGet takes a user unless none is left (atomic_inc_not_zero).
func (b *Binding) userGet() bool {
	for {
		n := b.users.Load()
		if n <= 0 {
			return false
		}
		if b.users.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// userPut drops a user; the last one drains the urefs and returns how many
// it dropped.
func (b *Binding) userPut() int {
	if b.users.Add(-1) != 0 {
		return 0
	}
	return b.drain()
}

// drain is net_devmem_dmabuf_binding_put_urefs: it drops every outstanding
// uref, releasing one frame reference per uref.
func (b *Binding) drain() (freed int) {
	b.drained.Store(true)
	// Deliver increments a uref and then loads drained; we stored drained
	// and now read every uref. With sequentially consistent atomics one of
	// the two sees the other, so no uref survives unnoticed.
	var buf []uint32
	for i := range b.urefs {
		if b.urefs[i].Load() == 0 {
			continue
		}
		n := b.urefs[i].Swap(0)
		freed += int(n)
		for ; n > 0; n-- {
			if buf == nil {
				buf = make([]uint32, 0, batchLen)
			}
			buf = append(buf, uint32(i))
			if len(buf) == cap(buf) {
				b.frames.Release(buf)
				buf = buf[:0]
			}
		}
	}
	if len(buf) > 0 {
		b.frames.Release(buf)
	}
	return freed
}

// Outstanding returns the number of autorelease-off user references
// outstanding on the binding, summed over its frames (O(frames)).
func (b *Binding) Outstanding() int {
	n := 0
	for i := range b.urefs {
		n += int(b.urefs[i].Load())
	}
	return n
}

// decIfPositive is atomic_dec_if_positive: it decrements *u unless it is 0
// and reports whether it did.
func decIfPositive(u *atomic.Uint32) bool {
	for {
		v := u.Load()
		if v == 0 {
			return false
		}
		if u.CompareAndSwap(v, v-1) {
			return true
		}
	}
}

// releaseOne drops one frame reference; for rare paths only (it allocates).
func (b *Binding) releaseOne(frame uint32) {
	b.frames.Release([]uint32{frame})
}

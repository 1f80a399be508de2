package tokens

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
)

// batchLen is the number of frames DONTNEED and close collect before one
// Frames.Release call: the kernel's netmem_ref netmems[16].
const batchLen = 16

// Bits of Socket.mode.
const (
	// modeAuto: autorelease on.
	modeAuto = 1 << 0
	// modeFixed: the mode was chosen, by SetAutorelease or by adopting the
	// binding's mode at the first delivery; it no longer follows bindings.
	modeFixed = 1 << 1
)

var errClosed = fmt.Errorf("socket closed: %w", unix.EBADF)

// Socket is the devmem token state of one TCP socket: the emulation of the
// kernel's sk->sk_devmem_info (the autorelease-on token xarray and the
// autorelease-off binding tie).
//
// All methods are safe for concurrent use. The stack calls Deliver from
// its receive path while the application calls DontNeed, SetAutorelease and
// Close from other goroutines. Autorelease-on state is guarded by one mutex
// per socket (the kernel's xa_lock); the autorelease-off path takes no lock
// on delivery and only the socket's release-batch mutex on DONTNEED. No
// Frames method is ever called with the table mutex held.
type Socket struct {
	// mode holds modeAuto and modeFixed. It changes only under mu and only
	// ever holds a committed mode.
	mode atomic.Uint32
	// switching is set while SetAutorelease checks for outstanding
	// tokens; an autorelease-off delivery that sees it backs off.
	switching atomic.Bool
	closed    atomic.Bool // set once, under relMu and mu

	// mu guards tab and serializes mode changes (the kernel's xa_lock and
	// socket lock).
	mu  sync.Mutex
	tab table

	// binding is the autorelease-off tie: the first binding the socket
	// received from in that mode. The tie holds one of the binding's users
	// until the socket closes (put tells whether it was dropped).
	binding atomic.Pointer[Binding]
	put     atomic.Bool

	// relMu guards rel, the release batch of DONTNEED and close. Lock
	// order: relMu before mu.
	relMu sync.Mutex
	rel   relBatch
}

// relBatch collects frames of one binding for one Frames.Release call. It
// lives in the Socket because a slice passed to an interface method
// escapes: a stack array would cost an allocation per call.
type relBatch struct {
	b *Binding
	n int
	f [batchLen]uint32
}

// add appends frame of b, flushing first if the batch holds another
// binding's frames. It reports whether the batch is now full.
func (r *relBatch) add(b *Binding, frame uint32) (full bool) {
	if r.n > 0 && r.b != b {
		r.flush()
	}
	r.b = b
	r.f[r.n] = frame
	r.n++
	return r.n == batchLen
}

func (r *relBatch) flush() {
	if r.n > 0 {
		r.b.frames.Release(r.f[:r.n])
		r.n = 0
	}
}

// NewSocket returns the token state of a new socket in the given mode. The
// stack passes the system mode, Default().Mode(). Until the socket first
// receives or SetAutorelease is called, the mode follows the binding: the
// first Deliver adopts that binding's mode (see the package documentation,
// "How the two forms relate").
func NewSocket(autorelease bool) *Socket {
	s := &Socket{}
	if autorelease {
		s.mode.Store(modeAuto)
	}
	return s
}

// Autorelease reports the socket's current mode (getsockopt
// SO_DEVMEM_AUTORELEASE).
func (s *Socket) Autorelease() bool { return s.mode.Load()&modeAuto != 0 }

// Binding returns the binding an autorelease-off socket is tied to (the
// first binding it received from in that mode), or nil. The tie outlives
// Close and Unbind.
func (s *Socket) Binding() *Binding { return s.binding.Load() }

// Deliver hands one received fragment on frame of b to the application: it
// takes one frame reference (b's Frames.Hold) and returns the fragment's
// token.
//
// Autorelease on: the token is the lowest free one in the socket's table,
// starting at 1 (xa_alloc with XA_FLAGS_ALLOC1 and xa_limit_31b); the table
// records (b, frame). A full table (MaxToken tokens) fails with EBUSY.
//
// Autorelease off: the token is frame, and the frame's uref in b is
// incremented. The socket is tied to the first binding it receives from
// and becomes one of its users (v10 tcp_recvmsg_dmabuf): a fragment of
// another binding fails with EFAULT, and tying to a binding without users
// left (unbound, no socket tied) fails with ENODEV. A tied socket keeps
// its binding alive after Unbind: its deliveries go on.
//
// Autorelease on there is no such check: fragments queued before an unbind
// are delivered, as the kernel's page-pool references keep their memory.
//
// A closed socket fails with EBADF and a frame outside b with EINVAL; on
// failure no reference is left behind.
func (s *Socket) Deliver(b *Binding, frame uint32) (token uint32, err error) {
	// Fast path: autorelease off, already tied to b. The checks are those
	// of deliverManual, which handles everything else.
	if m := s.mode.Load(); m == modeFixed && s.binding.Load() == b && uint64(frame) < uint64(len(b.urefs)) &&
		!s.closed.Load() && !b.drained.Load() {
		b.frames.Hold(frame)
		u := &b.urefs[frame]
		u.Add(1)
		if !b.drained.Load() && !s.closed.Load() && !s.switching.Load() && s.mode.Load() == m {
			return frame, nil
		}
		// Lost a race with Close, the drain or SetAutorelease: undo, then
		// take the slow path (see deliverManual).
		if decIfPositive(u) {
			b.releaseOne(frame)
		}
	}
	return s.deliverSlow(b, frame)
}

// deliverSlow is Deliver: every mode, every check.
func (s *Socket) deliverSlow(b *Binding, frame uint32) (token uint32, err error) {
	if s.closed.Load() {
		return 0, errClosed
	}
	if uint64(frame) >= uint64(len(b.urefs)) {
		return 0, frameRangeError(b, frame)
	}
	for {
		m := s.mode.Load()
		if m&modeFixed == 0 {
			m = s.adopt(b)
		}
		var retry bool
		if m&modeAuto != 0 {
			token, retry, err = s.deliverAuto(b, frame, m)
		} else {
			token, retry, err = s.deliverManual(b, frame, m)
		}
		if !retry {
			return token, err
		}
	}
}

// adopt fixes the socket's mode to b's if it was not fixed yet and returns
// the mode word.
func (s *Socket) adopt(b *Binding) uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.mode.Load()
	if m&modeFixed == 0 {
		m = modeFixed
		if b.autorelease {
			m |= modeAuto
		}
		s.mode.Store(m)
	}
	return m
}

// deliverAuto is Deliver with autorelease on; m is the mode word Deliver
// dispatched on. retry is true if the mode changed meanwhile.
func (s *Socket) deliverAuto(b *Binding, frame uint32, m uint32) (token uint32, retry bool, err error) {
	// The reference is taken before the token becomes visible, so a
	// concurrent DONTNEED that frees it releases a held frame.
	b.frames.Hold(frame)
	s.mu.Lock()
	if s.closed.Load() || s.mode.Load() != m {
		closed := s.closed.Load()
		s.mu.Unlock()
		b.releaseOne(frame)
		if closed {
			return 0, false, errClosed
		}
		return 0, true, nil
	}
	token, ok := s.tab.alloc(entry{b: b, frame: frame})
	if !ok {
		limit := s.tab.maxEntries()
		s.mu.Unlock()
		b.releaseOne(frame)
		return 0, false, fmt.Errorf("deliver: all %d tokens outstanding: %w", limit, unix.EBUSY)
	}
	s.mu.Unlock()
	return token, false, nil
}

// deliverManual is Deliver with autorelease off; m is the mode word Deliver
// dispatched on. retry is true if the mode changed meanwhile.
func (s *Socket) deliverManual(b *Binding, frame uint32, m uint32) (token uint32, retry bool, err error) {
	if tied := s.binding.Load(); tied != b {
		if tied != nil {
			return 0, false, tiedError(tied, b)
		}
		if err := s.tie(b); err != nil {
			return 0, false, err
		}
	}
	if b.drained.Load() {
		return 0, false, unboundError(b)
	}
	b.frames.Hold(frame)
	u := &b.urefs[frame]
	u.Add(1)
	// Dekker-style handshakes, all with sequentially consistent atomics:
	// the drain stores drained then reads every uref; Close stores closed
	// then drops the tie's user (possibly draining); SetAutorelease stores
	// switching, reads every uref, stores the new mode and clears
	// switching. We incremented the uref and now load drained, closed,
	// switching and the mode. Either we see their store here or they see
	// our increment.
	if b.drained.Load() || s.closed.Load() || s.switching.Load() || s.mode.Load() != m {
		// Undo. If the drain already took our uref it also released the
		// frame reference; otherwise we give both back.
		if decIfPositive(u) {
			b.releaseOne(frame)
		}
		if s.closed.Load() {
			return 0, false, errClosed
		}
		if b.drained.Load() {
			return 0, false, unboundError(b)
		}
		runtime.Gosched() // let SetAutorelease finish
		return 0, true, nil
	}
	return frame, false, nil
}

// tie makes b the socket's binding and the socket one of b's users, or
// fails: ENODEV when b has no users left, EFAULT when the socket got tied
// to another binding meanwhile, EBADF when it closed meanwhile.
func (s *Socket) tie(b *Binding) error {
	if !b.userGet() {
		return unboundError(b)
	}
	if !s.binding.CompareAndSwap(nil, b) {
		// Tied meanwhile (to b: it holds a user already, so this put
		// cannot be b's last).
		b.userPut()
		if tied := s.binding.Load(); tied != b {
			return tiedError(tied, b)
		}
		return nil
	}
	// Close stores closed and then loads the tie; we stored the tie and
	// now load closed. Whoever sees the other drops the user, once.
	if s.closed.Load() {
		s.putTie()
		return errClosed
	}
	return nil
}

// putTie drops the tie's user on the binding, once; it returns the urefs
// the drain dropped if that was the binding's last user.
func (s *Socket) putTie() int {
	b := s.binding.Load()
	if b == nil || !s.put.CompareAndSwap(false, true) {
		return 0
	}
	return b.userPut()
}

// CanDeliver reports, without taking anything, whether Deliver could hand
// this socket a fragment of b: EBADF when the socket is closed; in
// autorelease-off mode (or before the mode is fixed, for a binding in that
// mode) EFAULT when the socket is tied to another binding and ENODEV when
// it is not tied and b has no users left. Autorelease-on sockets can
// always receive. The stack uses it to end a recvmsg before a fragment
// that cannot be delivered, as the kernel's tcp_recvmsg_dmabuf stops there.
func (s *Socket) CanDeliver(b *Binding) error {
	if s.closed.Load() {
		return errClosed
	}
	m := s.mode.Load()
	if m&modeFixed == 0 && b.autorelease || m&modeFixed != 0 && m&modeAuto != 0 {
		return nil
	}
	switch tied := s.binding.Load(); {
	case tied == b:
		if b.drained.Load() {
			return unboundError(b)
		}
		return nil
	case tied != nil:
		return tiedError(tied, b)
	case b.users.Load() <= 0:
		return unboundError(b)
	}
	return nil
}

// DontNeed returns tokens, as setsockopt(SO_DEVMEM_DONTNEED) does
// (sock_devmem_dontneed), and returns the number of fragments freed.
//
// More than devmemapi.MaxDontNeedTokens entries fail with EINVAL. Each entry
// covers tokens TokenStart+j for j < TokenCount, computed in 64 bits: a
// range never wraps past 1<<32-1 (see the package documentation). Every
// token tried counts toward devmemapi.MaxDontNeedFrags; once more than that
// many were tried the call stops and returns what it freed so far.
//
// Autorelease on: each token found in the socket's table is removed and
// its frame reference released; unknown tokens (0, never handed out,
// already freed) are skipped but counted.
//
// Autorelease off: a token is a frame index of the tied binding; without a
// tie the call fails with EINVAL. A token at or beyond the binding's frame
// count ends its entry (not counted, as in the kernel). Otherwise the
// frame's uref is decremented if positive and, if it was, one frame
// reference is released. The tie keeps the binding's urefs alive after
// Unbind, so DONTNEED goes on freeing (v10 binding->users).
//
// On a closed socket it fails with EBADF. It is safe concurrently with
// Deliver, Close, Unbind and other DontNeed calls, and does not allocate.
// Frames are released in batches of 16 without the table lock held, as the
// kernel drops xa_lock around napi_pp_put_page.
func (s *Socket) DontNeed(toks []devmemapi.DmabufToken) (int, error) {
	if s.closed.Load() {
		return 0, errClosed
	}
	if len(toks) == 0 {
		// The kernel's sk_setsockopt refuses an optlen below an int.
		return 0, fmt.Errorf("dontneed: no tokens: %w", devmemerr.DontNeedShortOptlen.Err())
	}
	if len(toks) > devmemapi.MaxDontNeedTokens {
		return 0, fmt.Errorf("dontneed: %d tokens: %w", len(toks), devmemerr.DontNeedTooManyTokens.Err())
	}
	return s.dontNeed(toks)
}

// DontNeedOpt is DontNeed on the raw option value of
// setsockopt(SO_DEVMEM_DONTNEED): an array of struct dmabuf_token in native
// byte order. A length that devmemapi.CheckDontNeedLen rejects fails with
// EINVAL. It does not allocate.
func (s *Socket) DontNeedOpt(optval []byte) (int, error) {
	if s.closed.Load() {
		return 0, errClosed
	}
	if err := devmemapi.CheckDontNeedLen(len(optval)); err != nil {
		c := devmemerr.DontNeedBadOptlen
		switch {
		case len(optval) < 4:
			c = devmemerr.DontNeedShortOptlen
		case len(optval) > devmemapi.SizeofDmabufToken*devmemapi.MaxDontNeedTokens && len(optval)%devmemapi.SizeofDmabufToken == 0:
			c = devmemerr.DontNeedTooManyTokens
		}
		return 0, fmt.Errorf("dontneed: optlen %d: %w", len(optval), c.Err())
	}
	// Decode on the stack (1 KiB at most), as the kernel copies optval in.
	var buf [devmemapi.MaxDontNeedTokens]devmemapi.DmabufToken
	n := len(optval) / devmemapi.SizeofDmabufToken
	for i := range n {
		p := optval[i*devmemapi.SizeofDmabufToken:]
		buf[i] = devmemapi.DmabufToken{
			TokenStart: binary.NativeEndian.Uint32(p),
			TokenCount: binary.NativeEndian.Uint32(p[4:]),
		}
	}
	return s.dontNeed(buf[:n])
}

func (s *Socket) dontNeed(toks []devmemapi.DmabufToken) (int, error) {
	if s.mode.Load()&modeAuto != 0 {
		return s.dontNeedAuto(toks)
	}
	return s.dontNeedManual(toks)
}

// dontNeedAuto is sock_devmem_dontneed_autorelease.
func (s *Socket) dontNeedAuto(toks []devmemapi.DmabufToken) (int, error) {
	const maxFrags = devmemapi.MaxDontNeedFrags
	freed, frags := 0, 0
	s.relMu.Lock()
	defer s.relMu.Unlock()
	r := &s.rel
	s.mu.Lock()
	if s.closed.Load() {
		s.mu.Unlock()
		return 0, errClosed
	}
outer:
	for _, t := range toks {
		for tok, end := uint64(t.TokenStart), uint64(t.TokenStart)+uint64(t.TokenCount); tok < end; tok++ {
			if frags++; frags > maxFrags {
				break outer
			}
			if tok >= s.tab.size() {
				// The rest of the entry is beyond the table: all
				// unknown. Count their attempts at once.
				frags += int(min(end-tok-1, maxFrags))
				if frags > maxFrags {
					break outer
				}
				break
			}
			e, ok := s.tab.erase(tok)
			if !ok {
				continue
			}
			freed++
			if r.n > 0 && r.b != e.b {
				s.mu.Unlock()
				r.flush()
				s.mu.Lock()
			}
			if r.add(e.b, e.frame) {
				s.mu.Unlock()
				r.flush()
				s.mu.Lock()
			}
		}
	}
	s.mu.Unlock()
	r.flush()
	return freed, nil
}

// dontNeedManual is sock_devmem_dontneed_manual_release.
func (s *Socket) dontNeedManual(toks []devmemapi.DmabufToken) (int, error) {
	b := s.binding.Load()
	if b == nil {
		return 0, fmt.Errorf("dontneed: no binding: %w", devmemerr.DontNeedNoBinding.Err())
	}
	nframes := uint64(len(b.urefs))
	urefs := b.urefs
	freed, frags := 0, 0
	s.relMu.Lock()
	r := &s.rel
	r.b = b
outer:
	for _, t := range toks {
		for tok, end := uint64(t.TokenStart), uint64(t.TokenStart)+uint64(t.TokenCount); tok < end; tok++ {
			if tok >= nframes {
				break
			}
			if frags++; frags > devmemapi.MaxDontNeedFrags {
				break outer
			}
			if decIfPositive(&urefs[tok]) {
				freed++
				r.f[r.n] = uint32(tok) // r.b is b: set above
				if r.n++; r.n == batchLen {
					r.flush()
				}
			}
		}
	}
	r.flush()
	s.relMu.Unlock()
	return freed, nil
}

// Close releases the socket's token state, as the kernel's
// tcp_v4_destroy_sock does, and returns the number of tokens it freed.
// Autorelease on: every outstanding token is freed and its frame reference
// released. Autorelease off: the socket stops being a user of the binding
// it is tied to; if that was the binding's last user (it was unbound and
// no other tied socket is open), the binding's urefs are drained and
// counted in the result. Otherwise nothing is freed: the urefs stay with
// the binding until DONTNEED through another socket or the drain.
//
// Afterwards Deliver, DontNeed and SetAutorelease fail with EBADF and
// Outstanding returns 0. Close is idempotent (later calls return 0).
func (s *Socket) Close() (freed int) {
	s.relMu.Lock()
	defer s.relMu.Unlock()
	s.mu.Lock()
	if s.closed.Load() {
		s.mu.Unlock()
		return 0
	}
	s.closed.Store(true)
	tab := s.tab
	s.tab = table{limit: tab.limit}
	s.mu.Unlock()
	r := &s.rel
	tab.each(func(_ uint32, e entry) {
		freed++
		if r.add(e.b, e.frame) {
			r.flush()
		}
	})
	r.flush()
	return freed + s.putTie()
}

// Outstanding returns the number of tokens the socket can return in its
// current mode. Autorelease on: the tokens in its table. Autorelease off:
// the urefs outstanding on its tied binding (Binding.Outstanding,
// O(frames)), 0 without a tie or once the binding drained. In that mode a token is a
// frame index in a namespace shared by every socket tied to the binding:
// any of them may return it, as in the kernel, so the tokens a socket can
// return are the binding's.
func (s *Socket) Outstanding() int {
	if s.closed.Load() {
		return 0
	}
	s.mu.Lock()
	n := s.tab.n
	s.mu.Unlock()
	return n + s.manualOutstanding()
}

// manualOutstanding is the autorelease-off part of Outstanding: the tied
// binding's urefs while the socket is in that mode.
func (s *Socket) manualOutstanding() int {
	if s.mode.Load()&modeAuto != 0 {
		return 0
	}
	b := s.binding.Load()
	if b == nil || b.drained.Load() {
		return 0
	}
	return b.Outstanding()
}

// SetAutorelease sets the socket's mode, as setsockopt(SO_DEVMEM_AUTORELEASE)
// does in v6 of the autorelease series. While the socket holds tokens
// (Outstanding > 0) it fails with EBUSY, even if the mode would not
// change, as the series does; in autorelease-off mode that means while its
// binding has urefs outstanding (see Outstanding; v6 counted per socket).
// Once set, the mode no longer follows the bindings the socket receives
// from. On a closed socket it fails with EBADF.
func (s *Socket) SetAutorelease(on bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return errClosed
	}
	m := uint32(modeFixed)
	if on {
		m |= modeAuto
	}
	// Announce, then check: see deliverManual. Autorelease-on deliveries
	// insert under mu, so tab.n is stable here.
	s.switching.Store(true)
	defer s.switching.Store(false)
	if n := s.tab.n + s.manualOutstanding(); n > 0 {
		return fmt.Errorf("set autorelease: %d tokens outstanding: %w", n, unix.EBUSY)
	}
	s.mode.Store(m)
	return nil
}

// SetAutoreleaseOpt is SetAutorelease on the raw option value, with the
// series' checks: fewer than 4 bytes or a value other than 0 or 1 (a
// native-endian int) fail with EINVAL.
func (s *Socket) SetAutoreleaseOpt(optval []byte) error {
	if s.closed.Load() {
		return errClosed
	}
	if len(optval) < 4 {
		return fmt.Errorf("set autorelease: optlen %d: %w", len(optval), unix.EINVAL)
	}
	v := int32(binary.NativeEndian.Uint32(optval))
	if v != 0 && v != 1 {
		return fmt.Errorf("set autorelease: value %d: %w", v, unix.EINVAL)
	}
	return s.SetAutorelease(v == 1)
}

func frameRangeError(b *Binding, frame uint32) error {
	return fmt.Errorf("deliver: frame %d outside binding %d (%d frames): %w", frame, b.id, len(b.urefs), unix.EINVAL)
}

func unboundError(b *Binding) error {
	return fmt.Errorf("deliver: binding %d unbound: %w", b.id, unix.ENODEV)
}

func tiedError(tied, b *Binding) error {
	return fmt.Errorf("deliver: socket tied to binding %d, fragment of binding %d: %w", tied.id, b.id, unix.EFAULT)
}

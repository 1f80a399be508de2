package tokens

import (
	"encoding/binary"
	"math"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
)

// world is one binding over fake frames and a socket in a fixed mode.
type world struct {
	f *fakeFrames
	b *Binding
	s *Socket
}

func newWorld(t *testing.T, autorelease bool, nframes int) *world {
	t.Helper()
	f := newFakeFrames(nframes)
	b := NewBinding(7, f, nframes, autorelease)
	s := NewSocket(autorelease)
	if err := s.SetAutorelease(autorelease); err != nil {
		t.Fatal(err)
	}
	return &world{f: f, b: b, s: s}
}

func modeName(autorelease bool) string {
	if autorelease {
		return "autorelease=1"
	}
	return "autorelease=0"
}

func TestAutoreleaseTokensStartAtOneLowestFree(t *testing.T) {
	w := newWorld(t, true, 64)
	for i := range uint32(6) {
		if tok := mustDeliver(t, w.s, w.b, 10+i); tok != i+1 {
			t.Fatalf("delivery %d: token %d, want %d", i, tok, i+1)
		}
	}
	mustDontNeed(t, w.s, 1, tk(4, 1))
	mustDontNeed(t, w.s, 1, tk(2, 1))
	// Lowest free first, as xa_alloc does: 2, then 4, then 7.
	for _, want := range []uint32{2, 4, 7} {
		if tok := mustDeliver(t, w.s, w.b, 3); tok != want {
			t.Fatalf("token %d, want %d", tok, want)
		}
	}
	if got := w.s.Outstanding(); got != 7 {
		t.Fatalf("Outstanding = %d, want 7", got)
	}
}

func TestAutoreleaseTokensLowestFreeAcrossWords(t *testing.T) {
	w := newWorld(t, true, 1)
	const n = 1000
	for i := range uint32(n) {
		if tok := mustDeliver(t, w.s, w.b, 0); tok != i+1 {
			t.Fatalf("token %d, want %d", tok, i+1)
		}
	}
	// Free a scattered set, then check they come back in ascending order.
	freed := []uint32{999, 64, 65, 1, 640, 128, 700, 1000, 2}
	for _, tok := range freed {
		mustDontNeed(t, w.s, 1, tk(tok, 1))
	}
	for _, want := range []uint32{1, 2, 64, 65, 128, 640, 700, 999, 1000, 1001} {
		if tok := mustDeliver(t, w.s, w.b, 0); tok != want {
			t.Fatalf("token %d, want %d", tok, want)
		}
	}
	if got, want := w.f.ref(0), int64(n+1); got != want {
		t.Fatalf("frame refs = %d, want %d", got, want)
	}
	if got := w.s.Close(); got != n+1 {
		t.Fatalf("Close freed %d, want %d", got, n+1)
	}
	w.f.checkZero(t)
}

func TestAutoreleaseTableFull(t *testing.T) {
	for _, limit := range []int{1, 3, 64, 70, 130} {
		f := newFakeFrames(4)
		b := NewBinding(1, f, 4, true)
		s := NewSocket(true)
		s.tab.limit = limit
		for i := range limit {
			if tok := mustDeliver(t, s, b, 1); tok != uint32(i+1) {
				t.Fatalf("limit %d: token %d, want %d", limit, tok, i+1)
			}
		}
		_, err := s.Deliver(b, 1)
		wantErrno(t, "Deliver to a full table", err, unix.EBUSY)
		if got := f.ref(1); got != int64(limit) {
			t.Fatalf("limit %d: failed delivery left a reference: %d refs", limit, got)
		}
		mustDontNeed(t, s, 1, tk(uint32(limit), 1))
		if tok := mustDeliver(t, s, b, 1); tok != uint32(limit) {
			t.Fatalf("limit %d: token %d after a free, want %d", limit, tok, limit)
		}
		if got := s.Close(); got != limit {
			t.Fatalf("Close freed %d, want %d", got, limit)
		}
		f.checkZero(t)
	}
}

func TestAutoreleaseStoresBindingAndFrame(t *testing.T) {
	f1, f2 := newFakeFrames(8), newFakeFrames(8)
	b1, b2 := NewBinding(1, f1, 8, true), NewBinding(2, f2, 8, true)
	s := NewSocket(true)
	t1 := mustDeliver(t, s, b1, 5)
	t2 := mustDeliver(t, s, b2, 5) // one socket, several bindings: fine in mode 1
	t3 := mustDeliver(t, s, b1, 6)
	if t1 != 1 || t2 != 2 || t3 != 3 {
		t.Fatalf("tokens %d %d %d, want 1 2 3", t1, t2, t3)
	}
	mustDontNeed(t, s, 1, tk(t2, 1))
	if f2.ref(5) != 0 || f1.ref(5) != 1 {
		t.Fatalf("token %d freed the wrong frame: b1 %d, b2 %d", t2, f1.ref(5), f2.ref(5))
	}
	// One call whose batch spans both bindings.
	t4 := mustDeliver(t, s, b2, 7)
	mustDontNeed(t, s, 3, tk(1, 4))
	f1.checkZero(t)
	f2.checkZero(t)
	if t4 != 2 {
		t.Fatalf("token %d, want 2", t4)
	}
	if s.Binding() != nil {
		t.Fatal("autorelease-on socket got tied to a binding")
	}
}

func TestDontNeedTable(t *testing.T) {
	// Each case: a fresh world in both modes with frames 0..N-1 delivered
	// once each in order (mode 1: token i+1 is frame i; mode 0: token i is
	// frame i), then one DontNeed.
	type tc struct {
		name      string
		delivered int // frames delivered (nframes = 2048)
		toks      []devmemapi.DmabufToken
		want0     int // freed in autorelease=0
		want1     int // freed in autorelease=1
		err       unix.Errno
	}
	many := func(n int, tok devmemapi.DmabufToken) []devmemapi.DmabufToken {
		s := make([]devmemapi.DmabufToken, n)
		for i := range s {
			s[i] = tok
			s[i].TokenStart += uint32(i)
		}
		return s
	}
	cases := []tc{
		{name: "empty (optlen 0)", delivered: 4, toks: nil, err: unix.EINVAL},
		{name: "one", delivered: 4, toks: []devmemapi.DmabufToken{tk(2, 1)}, want0: 1, want1: 1},
		{name: "range", delivered: 8, toks: []devmemapi.DmabufToken{tk(2, 4)}, want0: 4, want1: 4},
		{name: "count 0", delivered: 4, toks: []devmemapi.DmabufToken{tk(1, 0)}, want0: 0, want1: 0},
		{name: "repeated token", delivered: 4, toks: []devmemapi.DmabufToken{tk(2, 1), tk(2, 1), tk(2, 2)}, want0: 2, want1: 2},
		{name: "unknown skipped", delivered: 4, toks: []devmemapi.DmabufToken{tk(100, 5), tk(1, 1)}, want0: 1, want1: 1},
		// Token 0: frame 0 in mode 0, never a token in mode 1.
		{name: "token 0", delivered: 4, toks: []devmemapi.DmabufToken{tk(0, 1)}, want0: 1, want1: 0},
		{name: "128 entries", delivered: 256, toks: many(128, tk(1, 1)), want0: 128, want1: 128},
		{name: "129 entries", delivered: 256, toks: many(129, tk(1, 1)), err: unix.EINVAL},
		{name: "1024 frags", delivered: 2048, toks: []devmemapi.DmabufToken{tk(1, 1024)}, want0: 1024, want1: 1024},
		{name: "1025 frags stop at 1024", delivered: 2048, toks: []devmemapi.DmabufToken{tk(1, 1025)}, want0: 1024, want1: 1024},
		{name: "limit across entries", delivered: 2048, toks: []devmemapi.DmabufToken{tk(1, 1000), tk(1001, 100)}, want0: 1024, want1: 1024},
		// Mode 1 counts unknown tokens: 1000 unknown + 24 known. Mode 0:
		// 3000.. is beyond the 2048 frames, ends the entry uncounted.
		{name: "unknown tokens count", delivered: 2048, toks: []devmemapi.DmabufToken{tk(3000, 1000), tk(1, 100)}, want0: 100, want1: 24},
		// Mode 1: a huge unknown range exhausts the budget; nothing after
		// it is tried. Mode 0: out of range, uncounted.
		{name: "huge unknown range", delivered: 16, toks: []devmemapi.DmabufToken{tk(100000, math.MaxUint32), tk(1, 10)}, want0: 10, want1: 0},
		// Mode 0: 2040..2047 counted (8), 2048.. ends the entry
		// uncounted, then 1016 of the second entry.
		{name: "out of range not counted (mode 0)", delivered: 2048, toks: []devmemapi.DmabufToken{tk(2040, 100), tk(0, 2000)}, want0: 1024, want1: 9 + 923},
		// 64-bit ranges: the kernel's u32 sum would wrap to 0, 1, ...
		{name: "no wrap past 1<<32", delivered: 8, toks: []devmemapi.DmabufToken{tk(math.MaxUint32, 5)}, want0: 0, want1: 0},
		{name: "no wrap max count", delivered: 8, toks: []devmemapi.DmabufToken{tk(math.MaxUint32-1, math.MaxUint32), tk(1, 2)}, want0: 2, want1: 0},
		{name: "start 1<<31", delivered: 8, toks: []devmemapi.DmabufToken{tk(1<<31, 1<<31), tk(2, 1)}, want0: 1, want1: 0},
	}
	for _, c := range cases {
		for _, auto := range []bool{false, true} {
			t.Run(c.name+"/"+modeName(auto), func(t *testing.T) {
				w := newWorld(t, auto, 2048)
				for i := range c.delivered {
					tok := mustDeliver(t, w.s, w.b, uint32(i))
					want := uint32(i)
					if auto {
						want++
					}
					if tok != want {
						t.Fatalf("token %d, want %d", tok, want)
					}
				}
				before := w.f.total()
				n, err := w.s.DontNeed(c.toks)
				if c.err != 0 {
					wantErrno(t, "DontNeed", err, c.err)
					if n != 0 || w.f.total() != before {
						t.Fatalf("failed DontNeed freed %d (refs %d -> %d)", n, before, w.f.total())
					}
					return
				}
				want := c.want0
				if auto {
					want = c.want1
				}
				if err != nil || n != want {
					t.Fatalf("DontNeed = %d, %v; want %d", n, err, want)
				}
				if got := before - w.f.total(); got != int64(n) {
					t.Fatalf("freed %d but %d frame references dropped", n, got)
				}
				if got := w.s.Outstanding(); got != c.delivered-n {
					t.Fatalf("Outstanding = %d, want %d", got, c.delivered-n)
				}
				// The raw optval form must agree.
				w2 := newWorld(t, auto, 2048)
				for i := range c.delivered {
					mustDeliver(t, w2.s, w2.b, uint32(i))
				}
				n2, err2 := w2.s.DontNeedOpt(devmemapi.AppendTokens(nil, c.toks))
				if n2 != n || err2 != nil {
					t.Fatalf("DontNeedOpt = %d, %v; DontNeed = %d", n2, err2, n)
				}
			})
		}
	}
}

func TestDontNeedFreesOnlyWhatItNames(t *testing.T) {
	// Every frame delivered; free each token in turn and check that only
	// its frame lost a reference.
	for _, auto := range []bool{false, true} {
		t.Run(modeName(auto), func(t *testing.T) {
			const n = 40
			w := newWorld(t, auto, n)
			toks := make([]uint32, n)
			for i := range toks {
				toks[i] = mustDeliver(t, w.s, w.b, uint32(i))
			}
			for i, tok := range toks {
				mustDontNeed(t, w.s, 1, tk(tok, 1))
				for fr := range n {
					want := int64(1)
					if fr <= i {
						want = 0
					}
					if got := w.f.ref(uint32(fr)); got != want {
						t.Fatalf("after token %d: frame %d has %d refs, want %d", tok, fr, got, want)
					}
				}
				// Repeating the token frees nothing more.
				mustDontNeed(t, w.s, 0, tk(tok, 1))
			}
		})
	}
}

func TestDontNeedOptLength(t *testing.T) {
	for _, auto := range []bool{false, true} {
		w := newWorld(t, auto, 8)
		mustDeliver(t, w.s, w.b, 1)
		for _, l := range []int{0, 4, 7, 9, 1, 1032, 2048} {
			_, err := w.s.DontNeedOpt(make([]byte, l))
			wantErrno(t, "DontNeedOpt len "+strconv.Itoa(l), err, unix.EINVAL)
		}
		for _, l := range []int{8, 1024} {
			if _, err := w.s.DontNeedOpt(make([]byte, l)); err != nil {
				t.Fatalf("%s: DontNeedOpt len %d: %v", modeName(auto), l, err)
			}
		}
		// A token encoded in native order is honoured (token 1 is frame
		// 1 in mode 0 and the first token in mode 1).
		opt := binary.NativeEndian.AppendUint32(nil, 1)
		opt = binary.NativeEndian.AppendUint32(opt, 1)
		if n, err := w.s.DontNeedOpt(opt); n != 1 || err != nil {
			t.Fatalf("%s: DontNeedOpt = %d, %v", modeName(auto), n, err)
		}
		w.f.checkZero(t)
	}
}

func TestManualTokenIsFrameIndex(t *testing.T) {
	w := newWorld(t, false, 16)
	for _, fr := range []uint32{3, 3, 15, 0, 3} {
		if tok := mustDeliver(t, w.s, w.b, fr); tok != fr {
			t.Fatalf("token %d, want frame %d", tok, fr)
		}
	}
	if got := w.b.urefs[3].Load(); got != 3 {
		t.Fatalf("uref[3] = %d, want 3", got)
	}
	if w.b.Outstanding() != 5 || w.s.Outstanding() != 5 || w.f.ref(3) != 3 {
		t.Fatalf("binding %d, socket %d, frame 3 refs %d; want 5, 5, 3", w.b.Outstanding(), w.s.Outstanding(), w.f.ref(3))
	}
	if w.s.Binding() != w.b {
		t.Fatal("socket not tied to its first binding")
	}
	mustDontNeed(t, w.s, 2, tk(3, 1), tk(3, 1))
	mustDontNeed(t, w.s, 1, tk(3, 1))
	// atomic_dec_if_positive: a fourth return frees nothing.
	mustDontNeed(t, w.s, 0, tk(3, 1))
	if w.f.ref(3) != 0 || w.b.urefs[3].Load() != 0 {
		t.Fatalf("frame 3: %d refs, uref %d", w.f.ref(3), w.b.urefs[3].Load())
	}
	// Out of range: 14, 15 freed (15 held), 16.. ends the entry.
	mustDontNeed(t, w.s, 1, tk(14, math.MaxUint32))
	if got := w.s.Outstanding(); got != 1 {
		t.Fatalf("Outstanding = %d, want 1", got)
	}
}

func TestManualTie(t *testing.T) {
	f1, f2 := newFakeFrames(4), newFakeFrames(4)
	b1, b2 := NewBinding(1, f1, 4, false), NewBinding(2, f2, 4, false)
	s := NewSocket(false)

	if _, err := s.DontNeed(one(1)); err == nil {
		t.Fatal("DontNeed before any delivery succeeded")
	} else {
		wantErrno(t, "DontNeed without binding", err, unix.EINVAL)
	}
	_, err := s.DontNeed(nil)
	wantErrno(t, "empty DontNeed without binding", err, unix.EINVAL)
	_, err = s.DontNeedOpt(nil)
	wantErrno(t, "empty DontNeedOpt without binding", err, unix.EINVAL)

	mustDeliver(t, s, b1, 2)
	_, err = s.Deliver(b2, 2)
	wantErrno(t, "Deliver from a second binding", err, unix.EFAULT)
	if f2.ref(2) != 0 || b2.Outstanding() != 0 {
		t.Fatal("failed delivery left a reference")
	}
	if s.Binding() != b1 {
		t.Fatal("tie changed")
	}
	// b2 unbound and the socket tied elsewhere: EFAULT first, as the
	// kernel checks the tie before the binding.
	b2.Unbind()
	_, err = s.Deliver(b2, 1)
	wantErrno(t, "Deliver from an unbound foreign binding", err, unix.EFAULT)

	// Unbinding the tied binding (series v10): the socket is one of its
	// users and keeps it alive. Its token survives, deliveries go on, and
	// DONTNEED frees.
	if b1.Users() != 2 {
		t.Fatalf("users %d, want 2 (queues and the tied socket)", b1.Users())
	}
	if got := b1.Unbind(); got != 0 {
		t.Fatalf("Unbind freed %d with a socket tied, want 0", got)
	}
	if b1.Drained() || b1.Outstanding() != 1 || f1.ref(2) != 1 {
		t.Fatalf("after unbind: drained %v, outstanding %d, frame 2 refs %d", b1.Drained(), b1.Outstanding(), f1.ref(2))
	}
	mustDeliver(t, s, b1, 3)
	mustDontNeed(t, s, 2, tk(2, 2))
	f1.checkZero(t)
	mustDeliver(t, s, b1, 1)
	// The socket's close drops the last user: the drain frees what is
	// left, and nobody can tie to the binding any more.
	if got := s.Close(); got != 1 {
		t.Fatalf("Close freed %d, want the 1 outstanding uref", got)
	}
	if !b1.Drained() || b1.Users() != 0 {
		t.Fatalf("after close: drained %v, users %d", b1.Drained(), b1.Users())
	}
	f1.checkZero(t)
	s2 := NewSocket(false)
	_, err = s2.Deliver(b1, 2)
	wantErrno(t, "Deliver on a fresh socket from the drained binding", err, unix.ENODEV)
	f1.checkZero(t)
}

// TestManualUnbindSharedBinding: an unbound binding with a tied socket
// still has users, so another socket may tie to it (atomic_inc_not_zero),
// and the urefs survive until the last tied socket closes.
func TestManualUnbindSharedBinding(t *testing.T) {
	f := newFakeFrames(4)
	b := NewBinding(1, f, 4, false)
	s1, s2 := NewSocket(false), NewSocket(false)
	mustDeliver(t, s1, b, 0)
	b.Unbind()
	if err := s2.CanDeliver(b); err != nil {
		t.Fatalf("CanDeliver on a binding s1 keeps alive: %v", err)
	}
	mustDeliver(t, s2, b, 1)
	if s1.Close() != 0 || b.Drained() {
		t.Fatal("first close drained a binding s2 still uses")
	}
	// Tokens are the binding's: s2 returns the one s1 received.
	mustDontNeed(t, s2, 1, tk(0, 1))
	if got := s2.Close(); got != 1 || !b.Drained() {
		t.Fatalf("last close freed %d, drained %v; want 1, true", got, b.Drained())
	}
	f.checkZero(t)
	wantErrno(t, "CanDeliver after the drain", NewSocket(false).CanDeliver(b), unix.ENODEV)
	wantErrno(t, "CanDeliver on a closed socket", s2.CanDeliver(b), unix.EBADF)
	other := NewBinding(2, newFakeFrames(4), 4, false)
	s3 := NewSocket(false)
	mustDeliver(t, s3, other, 0)
	wantErrno(t, "CanDeliver from a second binding", s3.CanDeliver(b), unix.EFAULT)
	// A socket set to autorelease on (v6 option) receives from any
	// binding; one that has not chosen follows the binding's mode.
	s4 := NewSocket(true)
	wantErrno(t, "CanDeliver, mode not chosen, drained manual binding", s4.CanDeliver(b), unix.ENODEV)
	if err := s4.SetAutorelease(true); err != nil {
		t.Fatal(err)
	}
	if err := s4.CanDeliver(b); err != nil {
		t.Fatalf("autorelease-on socket, drained binding: %v", err)
	}
}

func TestManualUnboundBeforeFirstReceive(t *testing.T) {
	f := newFakeFrames(4)
	b := NewBinding(1, f, 4, false)
	b.Unbind()
	s := NewSocket(false)
	_, err := s.Deliver(b, 0)
	wantErrno(t, "Deliver from an unbound binding", err, unix.ENODEV)
	if s.Binding() != nil {
		t.Fatal("socket tied to an unbound binding")
	}
	f.checkZero(t)
}

func TestAutoreleaseUnbound(t *testing.T) {
	w := newWorld(t, true, 4)
	tok := mustDeliver(t, w.s, w.b, 1)
	// Unbind leaves autorelease-on tokens to their socket.
	if got := w.b.Unbind(); got != 0 {
		t.Fatalf("Unbind freed %d autorelease-on tokens", got)
	}
	if w.f.ref(1) != 1 || w.s.Outstanding() != 1 {
		t.Fatal("Unbind touched an autorelease-on token")
	}
	// Fragments queued before the unbind are still delivered: the
	// kernel's autorelease-on path has no ENODEV (the page pool's
	// references keep the memory).
	tok2 := mustDeliver(t, w.s, w.b, 2)
	if err := w.s.CanDeliver(w.b); err != nil {
		t.Fatalf("CanDeliver after unbind: %v", err)
	}
	mustDontNeed(t, w.s, 2, tk(tok, 1), tk(tok2, 1))
	w.f.checkZero(t)
}

func TestFrameOutOfRange(t *testing.T) {
	for _, auto := range []bool{false, true} {
		w := newWorld(t, auto, 4)
		_, err := w.s.Deliver(w.b, 4)
		wantErrno(t, "Deliver frame 4 of 4", err, unix.EINVAL)
		w.f.checkZero(t)
		if w.s.Binding() != nil {
			t.Fatal("tie made by a failed delivery")
		}
	}
}

func TestClose(t *testing.T) {
	for _, auto := range []bool{false, true} {
		t.Run(modeName(auto), func(t *testing.T) {
			w := newWorld(t, auto, 8)
			for i := range uint32(5) {
				mustDeliver(t, w.s, w.b, i%3)
			}
			freed := w.s.Close()
			if auto {
				if freed != 5 {
					t.Fatalf("Close freed %d, want 5", freed)
				}
				w.f.checkZero(t)
			} else {
				if freed != 0 || w.b.Outstanding() != 5 || w.f.total() != 5 {
					t.Fatalf("Close freed %d (binding %d outstanding, %d refs); want 0, 5, 5", freed, w.b.Outstanding(), w.f.total())
				}
			}
			if w.s.Close() != 0 {
				t.Fatal("second Close freed something")
			}
			if w.s.Outstanding() != 0 {
				t.Fatal("Outstanding after Close")
			}
			_, err := w.s.Deliver(w.b, 0)
			wantErrno(t, "Deliver after Close", err, unix.EBADF)
			_, err = w.s.DontNeed(one(1))
			wantErrno(t, "DontNeed after Close", err, unix.EBADF)
			_, err = w.s.DontNeedOpt(nil)
			wantErrno(t, "DontNeedOpt after Close", err, unix.EBADF)
			wantErrno(t, "SetAutorelease after Close", w.s.SetAutorelease(auto), unix.EBADF)
			wantErrno(t, "SetAutoreleaseOpt after Close", w.s.SetAutoreleaseOpt([]byte{0, 0, 0, 0}), unix.EBADF)
			// Unbind frees the rest in mode 0, nothing in mode 1.
			want := 5
			if auto {
				want = 0
			}
			if got := w.b.Unbind(); got != want {
				t.Fatalf("Unbind freed %d, want %d", got, want)
			}
			if w.b.Unbind() != 0 {
				t.Fatal("second Unbind freed something")
			}
			w.f.checkZero(t)
		})
	}
}

func TestUnbindBatches(t *testing.T) {
	f := newFakeFrames(300)
	b := NewBinding(3, f, 300, false)
	s := NewSocket(false)
	for i := range 1000 {
		mustDeliver(t, s, b, uint32(i%300))
	}
	s.Close()
	if got := b.Unbind(); got != 1000 {
		t.Fatalf("Unbind freed %d, want 1000", got)
	}
	f.checkZero(t)
	if !b.Unbound() || b.Outstanding() != 0 {
		t.Fatal("binding state after Unbind")
	}
}

func TestReleaseBatching(t *testing.T) {
	for _, auto := range []bool{false, true} {
		w := newWorld(t, auto, 100)
		for i := range 100 {
			mustDeliver(t, w.s, w.b, uint32(i))
		}
		start := uint32(0)
		if auto {
			start = 1
		}
		mustDontNeed(t, w.s, 100, tk(start, 100))
		// 100 frames in batches of 16: 7 calls.
		if got := w.f.calls.Load(); got != 7 {
			t.Fatalf("%s: %d Release calls, want 7", modeName(auto), got)
		}
	}
}

func TestCrossSocketManual(t *testing.T) {
	// Tokens of one binding are frame indices shared by every socket tied
	// to it: one socket may return another's, as in the kernel.
	f := newFakeFrames(4)
	b := NewBinding(1, f, 4, false)
	s1, s2 := NewSocket(false), NewSocket(false)
	mustDeliver(t, s1, b, 2)
	mustDeliver(t, s2, b, 3)
	mustDontNeed(t, s2, 1, tk(2, 1))
	if f.ref(2) != 0 {
		t.Fatal("frame 2 still referenced")
	}
	// The tokens a mode-0 socket can return are its binding's.
	if s1.Outstanding() != 1 || s2.Outstanding() != 1 || b.Outstanding() != 1 {
		t.Fatalf("Outstanding s1 %d s2 %d binding %d; want 1 1 1", s1.Outstanding(), s2.Outstanding(), b.Outstanding())
	}
	// So neither may switch modes while the other holds a token.
	wantErrno(t, "SetAutorelease", s1.SetAutorelease(true), unix.EBUSY)
	mustDontNeed(t, s2, 1, tk(3, 1))
	f.checkZero(t)

	// s1 switches to autorelease on (it holds nothing now) but keeps its
	// tie; s2's later tokens on the binding are not s1's to count.
	if err := s1.SetAutorelease(true); err != nil {
		t.Fatal(err)
	}
	mustDeliver(t, s2, b, 1)
	if s1.Outstanding() != 0 || s2.Outstanding() != 1 {
		t.Fatalf("Outstanding s1 %d s2 %d; want 0 1", s1.Outstanding(), s2.Outstanding())
	}
}

func TestAllocsPerToken(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	for _, auto := range []bool{false, true} {
		b := NewBinding(1, nopFrames{}, 256, auto)
		s := NewSocket(auto)
		toks := make([]devmemapi.DmabufToken, 64)
		opt := make([]byte, 0, 64*8)
		round := func() {
			for i := range toks {
				tok, err := s.Deliver(b, uint32(i))
				if err != nil {
					t.Fatal(err)
				}
				toks[i] = tk(tok, 1)
			}
			if n, err := s.DontNeed(toks); n != len(toks) || err != nil {
				t.Fatalf("DontNeed = %d, %v", n, err)
			}
			for i := range toks {
				tok, _ := s.Deliver(b, uint32(i))
				toks[i] = tk(tok, 1)
			}
			opt = devmemapi.AppendTokens(opt[:0], toks)
			if n, err := s.DontNeedOpt(opt); n != len(toks) || err != nil {
				t.Fatalf("DontNeedOpt = %d, %v", n, err)
			}
		}
		round() // grow the table once
		if a := testing.AllocsPerRun(100, round); a != 0 {
			t.Errorf("%s: %v allocations per round of 128 tokens, want 0", modeName(auto), a)
		}
	}
}

package tokens

import (
	"encoding/binary"
	"errors"
	"math"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
)

// The reference model: plain maps and ints, no concurrency, written from
// the kernel code and the package documentation rather than from the
// implementation.

// fuzzLimit is the autorelease-on table size in the fuzz test: small
// enough to reach (EBUSY), above MaxDontNeedFrags.
const fuzzLimit = 1100

type mTok struct {
	b     *mBinding
	frame uint32
}

type mBinding struct {
	real    *Binding
	f       *fakeFrames
	auto    bool
	unbound bool
	users   int // the queues (until unbind) and the tied open sockets
	drained bool
	urefs   []int
}

type mSocket struct {
	real   *Socket
	closed bool
	auto   bool
	fixed  bool
	tie    *mBinding
	toks   map[uint32]mTok
	// minFree is at most the lowest free token (a scan hint).
	minFree uint32
}

// manualOut is what an autorelease-off socket can return: its binding's
// urefs (the token namespace is the binding's).
func (ms *mSocket) manualOut() int {
	if ms.auto || ms.tie == nil || ms.tie.drained {
		return 0
	}
	n := 0
	for _, u := range ms.tie.urefs {
		n += u
	}
	return n
}

func (ms *mSocket) outstanding() int {
	if ms.closed {
		return 0
	}
	return len(ms.toks) + ms.manualOut()
}

func (ms *mSocket) deliver(mb *mBinding, frame uint32) (uint32, unix.Errno) {
	if ms.closed {
		return 0, unix.EBADF
	}
	if int(frame) >= len(mb.urefs) {
		return 0, unix.EINVAL
	}
	if !ms.fixed {
		ms.auto, ms.fixed = mb.auto, true
	}
	if ms.auto {
		// No unbound check: queued fragments outlive the binding.
		if len(ms.toks) >= fuzzLimit {
			return 0, unix.EBUSY
		}
		tok := max(ms.minFree, 1)
		for {
			if _, ok := ms.toks[tok]; !ok {
				break
			}
			tok++
		}
		ms.toks[tok] = mTok{mb, frame}
		ms.minFree = tok + 1
		return tok, 0
	}
	if ms.tie != nil && ms.tie != mb {
		return 0, unix.EFAULT
	}
	if ms.tie == nil {
		if mb.users == 0 {
			return 0, unix.ENODEV
		}
		mb.users++
		ms.tie = mb
	}
	if mb.drained {
		return 0, unix.ENODEV
	}
	mb.urefs[frame]++
	return frame, 0
}

func (ms *mSocket) dontNeed(toks []devmemapi.DmabufToken) (int, unix.Errno) {
	if ms.closed {
		return 0, unix.EBADF
	}
	if len(toks) == 0 || len(toks) > 128 { // optlen 0 fails in sk_setsockopt
		return 0, unix.EINVAL
	}
	freed, frags := 0, 0
	if ms.auto {
		for _, t := range toks {
			for j := uint64(0); j < uint64(t.TokenCount); j++ {
				frags++
				if frags > 1024 {
					return freed, 0
				}
				tok := uint64(t.TokenStart) + j
				if tok > math.MaxUint32 {
					continue
				}
				if _, ok := ms.toks[uint32(tok)]; ok {
					delete(ms.toks, uint32(tok))
					ms.minFree = min(ms.minFree, uint32(tok))
					freed++
				}
			}
		}
		return freed, 0
	}
	if ms.tie == nil {
		return 0, unix.EINVAL
	}
	for _, t := range toks {
		for j := uint64(0); j < uint64(t.TokenCount); j++ {
			tok := uint64(t.TokenStart) + j
			if tok >= uint64(len(ms.tie.urefs)) {
				break
			}
			frags++
			if frags > 1024 {
				return freed, 0
			}
			if ms.tie.urefs[tok] > 0 {
				ms.tie.urefs[tok]--
				freed++
			}
		}
	}
	return freed, 0
}

func (ms *mSocket) close() int {
	if ms.closed {
		return 0
	}
	ms.closed = true
	n := len(ms.toks)
	ms.toks = map[uint32]mTok{}
	if ms.tie != nil {
		n += ms.tie.put()
	}
	return n
}

func (ms *mSocket) setAutorelease(on bool) unix.Errno {
	if ms.closed {
		return unix.EBADF
	}
	if ms.outstanding() > 0 {
		return unix.EBUSY
	}
	ms.auto, ms.fixed = on, true
	return 0
}

func (mb *mBinding) unbind() int {
	if mb.unbound {
		return 0
	}
	mb.unbound = true
	return mb.put()
}

// put drops a user; the last one drains the urefs (v10
// net_devmem_dmabuf_binding_user_put).
func (mb *mBinding) put() int {
	mb.users--
	if mb.users > 0 {
		return 0
	}
	mb.drained = true
	n := 0
	for i := range mb.urefs {
		n += mb.urefs[i]
		mb.urefs[i] = 0
	}
	return n
}

// fuzzWorld holds the real objects next to their models.
type fuzzWorld struct {
	t        *testing.T
	nframes  int
	nextID   uint32
	slots    [2]*mBinding
	bindings []*mBinding // every binding ever made
	socks    [3]*mSocket
	all      []*mSocket
}

func (w *fuzzWorld) newBinding(auto bool) *mBinding {
	w.nextID++
	f := newFakeFrames(w.nframes)
	mb := &mBinding{real: NewBinding(w.nextID, f, w.nframes, auto), f: f, auto: auto, users: 1, urefs: make([]int, w.nframes)}
	w.bindings = append(w.bindings, mb)
	return mb
}

func (w *fuzzWorld) newSocket(auto bool) *mSocket {
	s := NewSocket(auto)
	s.tab.limit = fuzzLimit
	ms := &mSocket{real: s, auto: auto, toks: map[uint32]mTok{}}
	w.all = append(w.all, ms)
	return ms
}

func errnoOf(err error) unix.Errno {
	if err == nil {
		return 0
	}
	var e unix.Errno
	if !errors.As(err, &e) {
		return math.MaxUint32 // not an errno: never matches the model
	}
	return e
}

func (w *fuzzWorld) deliver(ms *mSocket, mb *mBinding, frame uint32) {
	tok, err := ms.real.Deliver(mb.real, frame)
	wtok, werr := ms.deliver(mb, frame)
	if errnoOf(err) != werr || (werr == 0 && tok != wtok) {
		w.t.Fatalf("Deliver(binding %d, frame %d) = %d, %v; model %d, %v", mb.real.ID(), frame, tok, err, wtok, werr)
	}
}

func (w *fuzzWorld) dontNeed(ms *mSocket, toks []devmemapi.DmabufToken, raw bool) {
	var n int
	var err error
	if raw {
		n, err = ms.real.DontNeedOpt(devmemapi.AppendTokens(nil, toks))
	} else {
		n, err = ms.real.DontNeed(toks)
	}
	wn, werr := ms.dontNeed(toks)
	if errnoOf(err) != werr || n != wn {
		w.t.Fatalf("DontNeed(%v) = %d, %v; model %d, %v", toks, n, err, wn, werr)
	}
}

// check compares every observable with the model.
func (w *fuzzWorld) check() {
	t := w.t
	t.Helper()
	want := map[*mBinding][]int64{}
	for _, mb := range w.bindings {
		refs := make([]int64, w.nframes)
		for i, u := range mb.urefs {
			refs[i] = int64(u)
		}
		want[mb] = refs
	}
	for i, ms := range w.all {
		for _, e := range ms.toks {
			want[e.b][e.frame]++
		}
		if got, wantN := ms.real.Outstanding(), ms.outstanding(); got != wantN {
			t.Fatalf("socket %d: Outstanding = %d, model %d", i, got, wantN)
		}
		if ms.real.Autorelease() != ms.auto {
			t.Fatalf("socket %d: Autorelease = %v, model %v", i, ms.real.Autorelease(), ms.auto)
		}
		var tie *Binding
		if ms.tie != nil {
			tie = ms.tie.real
		}
		if ms.real.Binding() != tie {
			t.Fatalf("socket %d: tie differs from the model", i)
		}
	}
	for _, mb := range w.bindings {
		sum := 0
		for _, u := range mb.urefs {
			sum += u
		}
		if got := mb.real.Outstanding(); got != sum {
			t.Fatalf("binding %d: Outstanding = %d, model %d", mb.real.ID(), got, sum)
		}
		if mb.real.Unbound() != mb.unbound || mb.real.Drained() != mb.drained || mb.real.Users() != mb.users {
			t.Fatalf("binding %d: Unbound %v, Drained %v, Users %d; model %v, %v, %d",
				mb.real.ID(), mb.real.Unbound(), mb.real.Drained(), mb.real.Users(), mb.unbound, mb.drained, mb.users)
		}
		for fr, n := range want[mb] {
			if got := mb.f.ref(uint32(fr)); got != n {
				t.Fatalf("binding %d frame %d: %d references, model %d", mb.real.ID(), fr, got, n)
			}
		}
	}
}

// finish closes and unbinds everything; then no frame may hold a reference.
func (w *fuzzWorld) finish() {
	for _, ms := range w.all {
		if got, want := ms.real.Close(), ms.close(); got != want {
			w.t.Fatalf("Close freed %d, model %d", got, want)
		}
	}
	for _, mb := range w.bindings {
		if got, want := mb.real.Unbind(), mb.unbind(); got != want {
			w.t.Fatalf("Unbind freed %d, model %d", got, want)
		}
	}
	w.check()
	for _, mb := range w.bindings {
		mb.f.checkZero(w.t)
	}
}

type byteReader struct{ b []byte }

func (r *byteReader) more() bool { return len(r.b) > 0 }

func (r *byteReader) next() byte {
	if len(r.b) == 0 {
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *byteReader) u16() uint32 { return uint32(r.next())<<8 | uint32(r.next()) }

// token draws one DONTNEED entry, biased toward tokens that exist.
func (r *byteReader) token() devmemapi.DmabufToken {
	switch r.next() % 5 {
	case 0, 1:
		return tk(uint32(r.next()%24), uint32(r.next()%6))
	case 2:
		return tk(uint32(r.next()%24), math.MaxUint32-uint32(r.next()))
	case 3:
		return tk(math.MaxUint32-uint32(r.next()%8), uint32(r.next()%16))
	default:
		return tk(r.u16(), r.u16())
	}
}

// Operations of FuzzTokens; the first byte of each step picks one.
const (
	opDeliver = iota
	opBurst
	opDontNeed
	opDontNeedRaw
	opDontNeedBig
	opDontNeedMany
	opClose
	opUnbind
	opSetAutorelease
	opSetAutoreleaseOpt
	numOps
)

func FuzzTokens(f *testing.F) {
	// Seeds: byte strings in the step encoding below; more live in
	// testdata/fuzz/FuzzTokens.
	f.Add([]byte{8, opDeliver, 0, 0, 3, opDeliver, 0, 0, 3, opDontNeed, 0, 1, 0, 3, 1})
	f.Add([]byte{4, opSetAutorelease, 1, 1, opBurst, 1, 0, 200, 2, opBurst, 1, 0, 200, 3, opDontNeedBig, 1, 0})
	f.Add([]byte{16, opDeliver, 2, 1, 5, opUnbind, 1, 0, opDeliver, 2, 1, 5, opDontNeed, 2, 1, 0, 5, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := &byteReader{data}
		w := &fuzzWorld{t: t, nframes: 1 + int(r.next()%16)}
		for i := range w.slots {
			w.slots[i] = w.newBinding(i == 1)
		}
		for i := range w.socks {
			w.socks[i] = w.newSocket(i == 2)
		}
		for steps := 0; r.more() && steps < 300; steps++ {
			ms := func() *mSocket { return w.socks[int(r.next())%len(w.socks)] }
			mb := func() *mBinding { return w.slots[int(r.next())%len(w.slots)] }
			frame := func() uint32 { return uint32(int(r.next()) % (w.nframes + 1)) } // one past the end too
			switch op := r.next() % numOps; op {
			case opDeliver:
				s, b := ms(), mb()
				w.deliver(s, b, frame())
			case opBurst:
				s, b := ms(), mb()
				n, fr := int(r.next())+1, frame()
				for i := range n {
					w.deliver(s, b, uint32((int(fr)+i)%w.nframes))
				}
			case opDontNeed, opDontNeedRaw:
				raw := op == opDontNeedRaw
				s := ms()
				toks := make([]devmemapi.DmabufToken, r.next()%5)
				for i := range toks {
					toks[i] = r.token()
				}
				w.dontNeed(s, toks, raw)
			case opDontNeedBig:
				// Enough to hit MaxDontNeedFrags.
				s := ms()
				w.dontNeed(s, []devmemapi.DmabufToken{tk(uint32(r.next()%3), 700), tk(0, 2000), tk(1, 1)}, false)
			case opDontNeedMany:
				s := ms()
				n := 120 + int(r.next()%16) // around MaxDontNeedTokens
				toks := make([]devmemapi.DmabufToken, n)
				for i := range toks {
					toks[i] = tk(uint32(i), 1)
				}
				w.dontNeed(s, toks, r.next()&1 == 1)
			case opClose:
				i := int(r.next()) % len(w.socks)
				s := w.socks[i]
				if got, want := s.real.Close(), s.close(); got != want {
					t.Fatalf("Close freed %d, model %d", got, want)
				}
				if r.next()&1 == 1 {
					w.socks[i] = w.newSocket(r.next()&1 == 1)
				}
			case opUnbind:
				i := int(r.next()) % len(w.slots)
				b := w.slots[i]
				if got, want := b.real.Unbind(), b.unbind(); got != want {
					t.Fatalf("Unbind freed %d, model %d", got, want)
				}
				if r.next()&1 == 1 {
					w.slots[i] = w.newBinding(r.next()&1 == 1)
				}
			case opSetAutorelease:
				s := ms()
				on := r.next()&1 == 1
				err := s.real.SetAutorelease(on)
				if werr := s.setAutorelease(on); errnoOf(err) != werr {
					t.Fatalf("SetAutorelease(%v) = %v, model %v", on, err, werr)
				}
			case opSetAutoreleaseOpt:
				s := ms()
				opt := make([]byte, r.next()%6)
				v := int32(r.next()%4) - 1 // -1 ... 2
				if len(opt) >= 4 {
					binary.NativeEndian.PutUint32(opt, uint32(v))
				}
				err := s.real.SetAutoreleaseOpt(opt)
				var werr unix.Errno
				switch {
				case s.closed:
					werr = unix.EBADF
				case len(opt) < 4 || (v != 0 && v != 1):
					werr = unix.EINVAL
				default:
					werr = s.setAutorelease(v == 1)
				}
				if errnoOf(err) != werr {
					t.Fatalf("SetAutoreleaseOpt(%x) = %v, model %v", opt, err, werr)
				}
			}
			w.check()
		}
		w.finish()
	})
}

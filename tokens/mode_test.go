package tokens

import (
	"encoding/binary"
	"errors"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

func ptr(b bool) *bool { return &b }

func TestRegistry(t *testing.T) {
	type step struct {
		op   string // "acquire" or "release"
		arg  *bool  // acquire's attribute
		mode bool   // acquire's returned mode; Mode() after release
		err  string // "" or the conflict text
	}
	const conflict0 = "System already configured with autorelease=0"
	const conflict1 = "System already configured with autorelease=1"
	cases := []struct {
		name  string
		steps []step
	}{
		{"default is off", []step{{op: "acquire", arg: nil, mode: false}}},
		{"explicit on", []step{{op: "acquire", arg: ptr(true), mode: true}}},
		{"same mode twice", []step{
			{op: "acquire", arg: ptr(true), mode: true},
			{op: "acquire", arg: ptr(true), mode: true},
		}},
		{"default then on conflicts", []step{
			{op: "acquire", arg: nil, mode: false},
			{op: "acquire", arg: ptr(true), mode: false, err: conflict0},
			{op: "acquire", arg: ptr(false), mode: false},
		}},
		{"on then default conflicts", []step{
			{op: "acquire", arg: ptr(true), mode: true},
			{op: "acquire", arg: nil, mode: true, err: conflict1},
			{op: "acquire", arg: ptr(false), mode: true, err: conflict1},
		}},
		{"mode changes once none remain", []step{
			{op: "acquire", arg: ptr(true), mode: true},
			{op: "acquire", arg: ptr(true), mode: true},
			{op: "release", mode: true},
			{op: "acquire", arg: ptr(false), mode: true, err: conflict1},
			{op: "release", mode: false}, // none left: back to the default
			{op: "acquire", arg: ptr(false), mode: false},
			{op: "release", mode: false},
			{op: "acquire", arg: ptr(true), mode: true},
		}},
		{"failed acquire registers nothing", []step{
			{op: "acquire", arg: nil, mode: false},
			{op: "acquire", arg: ptr(true), mode: false, err: conflict0},
			{op: "release", mode: false},
			{op: "acquire", arg: ptr(true), mode: true},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var r Registry
			for i, st := range c.steps {
				switch st.op {
				case "acquire":
					mode, err := r.Acquire(st.arg)
					if mode != st.mode {
						t.Fatalf("step %d: mode %v, want %v", i, mode, st.mode)
					}
					if st.err == "" {
						if err != nil {
							t.Fatalf("step %d: %v", i, err)
						}
						continue
					}
					if err == nil || !strings.Contains(err.Error(), st.err) {
						t.Fatalf("step %d: error %v, want %q", i, err, st.err)
					}
					if !errors.Is(err, unix.EBUSY) {
						t.Fatalf("step %d: %v does not wrap EBUSY", i, err)
					}
					var mc *ModeConflictError
					if !errors.As(err, &mc) || mc.Current != st.mode {
						t.Fatalf("step %d: %v is not a ModeConflictError{%v}", i, err, st.mode)
					}
				case "release":
					r.Release()
					if r.Mode() != st.mode {
						t.Fatalf("step %d: Mode() = %v after release, want %v", i, r.Mode(), st.mode)
					}
				}
			}
		})
	}
}

func TestRegistryErrorText(t *testing.T) {
	for _, cur := range []bool{false, true} {
		err := error(&ModeConflictError{Current: cur})
		want := "System already configured with autorelease=0"
		if cur {
			want = "System already configured with autorelease=1"
		}
		if err.Error() != want {
			t.Errorf("Error() = %q, want %q", err.Error(), want)
		}
	}
}

func TestRegistryReleaseWithoutAcquirePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("no panic")
		}
	}()
	var r Registry
	r.Release()
}

func TestRegistryConcurrent(t *testing.T) {
	// Goroutines bind and unbind with random modes; at every moment the
	// live bindings must share one mode.
	var r Registry
	var mu sync.Mutex
	live := map[bool]int{}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				want := (i+g)%3 == 0
				mode, err := r.Acquire(&want)
				if err != nil {
					if !errors.Is(err, unix.EBUSY) || mode == want {
						t.Errorf("Acquire(%v) = %v, %v", want, mode, err)
					}
					continue
				}
				mu.Lock()
				live[mode]++
				if live[!mode] != 0 {
					t.Errorf("bindings with both modes live: %v", live)
				}
				mu.Unlock()
				mu.Lock()
				live[mode]--
				mu.Unlock()
				r.Release()
			}
		}()
	}
	wg.Wait()
	if r.Bindings() != 0 || r.Mode() {
		t.Fatalf("after all released: %d bindings, mode %v", r.Bindings(), r.Mode())
	}
}

func TestDefaultRegistry(t *testing.T) {
	// Default is a usable zero Registry; leave it as found.
	if Default().Bindings() != 0 || Default().Mode() {
		// No other test of this package uses Default: anything here leaked.
		t.Fatalf("Default in use at start: %d bindings, mode %v", Default().Bindings(), Default().Mode())
	}
	if mode, err := Default().Acquire(nil); err != nil || mode {
		t.Fatalf("Default().Acquire(nil) = %v, %v", mode, err)
	}
	Default().Release()
}

// TestModeSelection drives both uAPI forms together: the v7+ attribute
// through a Registry and bindings, the v6 socket option through
// SetAutorelease, and checks the mode each socket ends up using.
func TestModeSelection(t *testing.T) {
	type tc struct {
		name       string
		attr       *bool // bind-rx attribute of the binding
		early      bool  // socket created before the bind-rx
		setopt     *bool // SO_DEVMEM_AUTORELEASE before receiving
		wantMode   bool  // mode the socket receives in
		wantBefore bool  // Autorelease() before the first delivery
	}
	cases := []tc{
		{name: "v7 default", attr: nil, wantMode: false},
		{name: "v7 off", attr: ptr(false), wantMode: false},
		{name: "v7 on", attr: ptr(true), wantMode: true, wantBefore: true},
		// A socket created before the first bind-rx starts in the
		// default and follows the binding at its first delivery, as on a
		// v7+ kernel where the mode is one global switch.
		{name: "v7 on, socket first", attr: ptr(true), early: true, wantMode: true, wantBefore: false},
		{name: "v6 on over v7 default", attr: nil, setopt: ptr(true), wantMode: true, wantBefore: true},
		{name: "v6 off over v7 on", attr: ptr(true), setopt: ptr(false), wantMode: false, wantBefore: false},
		{name: "v6 same as v7", attr: ptr(true), setopt: ptr(true), wantMode: true, wantBefore: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var r Registry
			var s *Socket
			if c.early {
				s = NewSocket(r.Mode())
			}
			mode, err := r.Acquire(c.attr)
			if err != nil {
				t.Fatal(err)
			}
			f := newFakeFrames(8)
			b := NewBinding(9, f, 8, mode)
			if !c.early {
				s = NewSocket(r.Mode())
			}
			if c.setopt != nil {
				if err := s.SetAutorelease(*c.setopt); err != nil {
					t.Fatal(err)
				}
			}
			if got := s.Autorelease(); got != c.wantBefore {
				t.Fatalf("Autorelease() before receiving = %v, want %v", got, c.wantBefore)
			}
			tok := mustDeliver(t, s, b, 5)
			if s.Autorelease() != c.wantMode {
				t.Fatalf("Autorelease() = %v, want %v", s.Autorelease(), c.wantMode)
			}
			wantTok := uint32(5) // frame index
			if c.wantMode {
				wantTok = 1
			}
			if tok != wantTok {
				t.Fatalf("token %d, want %d", tok, wantTok)
			}
			// Close frees in mode 1; unbind in mode 0.
			freed := s.Close()
			if c.wantMode != (freed == 1) {
				t.Fatalf("Close freed %d in mode %v", freed, c.wantMode)
			}
			b.Unbind()
			r.Release()
			f.checkZero(t)
		})
	}
}

func TestModeFixedAfterFirstDelivery(t *testing.T) {
	// Once a socket has received, its mode is its own: a later binding of
	// the other mode (possible with the v6 form) does not change it.
	f1, f2 := newFakeFrames(4), newFakeFrames(4)
	b1, b2 := NewBinding(1, f1, 4, true), NewBinding(2, f2, 4, false)
	s := NewSocket(false)
	if tok := mustDeliver(t, s, b1, 3); tok != 1 || !s.Autorelease() {
		t.Fatalf("token %d, autorelease %v; want 1, true", tok, s.Autorelease())
	}
	mustDontNeed(t, s, 1, tk(1, 1))
	if tok := mustDeliver(t, s, b2, 3); tok != 1 {
		t.Fatalf("token %d from an autorelease=0 binding, want 1 (socket stays in mode 1)", tok)
	}
	s.Close()
	f1.checkZero(t)
	f2.checkZero(t)
}

func TestSetAutoreleaseBusy(t *testing.T) {
	for _, auto := range []bool{false, true} {
		t.Run(modeName(auto), func(t *testing.T) {
			w := newWorld(t, auto, 8)
			tok := mustDeliver(t, w.s, w.b, 2)
			// EBUSY while a token is outstanding, whatever the value.
			for _, v := range []bool{false, true} {
				err := w.s.SetAutorelease(v)
				wantErrno(t, "SetAutorelease with a token out", err, unix.EBUSY)
				if w.s.Autorelease() != auto {
					t.Fatal("failed SetAutorelease changed the mode")
				}
			}
			mustDontNeed(t, w.s, 1, tk(tok, 1))
			if err := w.s.SetAutorelease(!auto); err != nil {
				t.Fatalf("SetAutorelease with no tokens: %v", err)
			}
			if w.s.Autorelease() == auto {
				t.Fatal("mode did not change")
			}
			// The new mode is used.
			tok = mustDeliver(t, w.s, w.b, 2)
			want := uint32(2)
			if !auto {
				want = 1 // now mode 1
			}
			if tok != want {
				t.Fatalf("token %d in the new mode, want %d", tok, want)
			}
			mustDontNeed(t, w.s, 1, tk(tok, 1))
			w.f.checkZero(t)
		})
	}
}

func TestSetAutoreleaseAfterUnbind(t *testing.T) {
	// A tied socket keeps its binding's urefs past the unbind (v10
	// binding->users): it still holds its token and may switch only once
	// it returned it. Its close then drains the binding.
	w := newWorld(t, false, 4)
	mustDeliver(t, w.s, w.b, 1)
	wantErrno(t, "SetAutorelease", w.s.SetAutorelease(true), unix.EBUSY)
	w.b.Unbind()
	wantErrno(t, "SetAutorelease after unbind", w.s.SetAutorelease(true), unix.EBUSY)
	mustDontNeed(t, w.s, 1, tk(1, 1))
	if err := w.s.SetAutorelease(true); err != nil {
		t.Fatal(err)
	}
	w.s.Close()
	if !w.b.Drained() {
		t.Fatal("the tied socket's close left the unbound binding undrained")
	}
	w.f.checkZero(t)
}

func TestSetAutoreleaseOpt(t *testing.T) {
	opt := func(v int32) []byte { return binary.NativeEndian.AppendUint32(nil, uint32(v)) }
	cases := []struct {
		optval []byte
		err    error
		mode   bool
	}{
		{nil, unix.EINVAL, false},
		{[]byte{1, 0, 0}, unix.EINVAL, false},
		{opt(2), unix.EINVAL, false},
		{opt(-1), unix.EINVAL, false},
		{opt(1), nil, true},
		{opt(0), nil, false},
		{append(opt(1), 0xff, 0xff, 0xff, 0xff), nil, true}, // longer optlen: first int used
	}
	s := NewSocket(false)
	for i, c := range cases {
		err := s.SetAutoreleaseOpt(c.optval)
		wantErrno(t, "case "+string(rune('0'+i)), err, c.err)
		if c.err == nil && s.Autorelease() != c.mode {
			t.Fatalf("case %d: Autorelease() = %v, want %v", i, s.Autorelease(), c.mode)
		}
	}
}

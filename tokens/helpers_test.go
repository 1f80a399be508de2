package tokens

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/xdevmem/xdevmem/devmemapi"
)

// fakeFrames counts references per frame and panics when a frame is
// released below zero or a batch is larger than the kernel's 16.
type fakeFrames struct {
	refs     []atomic.Int64
	holds    atomic.Int64
	releases atomic.Int64
	calls    atomic.Int64
	maxBatch int // 0: no limit checked
}

func newFakeFrames(n int) *fakeFrames {
	return &fakeFrames{refs: make([]atomic.Int64, n), maxBatch: batchLen}
}

func (f *fakeFrames) Hold(frame uint32) {
	f.refs[frame].Add(1)
	f.holds.Add(1)
}

func (f *fakeFrames) Release(frames []uint32) {
	f.calls.Add(1)
	if len(frames) == 0 {
		panic("fakeFrames: empty Release")
	}
	if f.maxBatch > 0 && len(frames) > f.maxBatch {
		panic(fmt.Sprintf("fakeFrames: Release of %d frames, more than %d", len(frames), f.maxBatch))
	}
	for _, fr := range frames {
		if f.refs[fr].Add(-1) < 0 {
			panic(fmt.Sprintf("fakeFrames: frame %d released below zero", fr))
		}
	}
	f.releases.Add(int64(len(frames)))
}

// ref returns frame's reference count.
func (f *fakeFrames) ref(frame uint32) int64 { return f.refs[frame].Load() }

// total returns the sum of all reference counts.
func (f *fakeFrames) total() int64 {
	var n int64
	for i := range f.refs {
		n += f.refs[i].Load()
	}
	return n
}

// checkZero fails unless every frame's count is 0.
func (f *fakeFrames) checkZero(tb testing.TB) {
	tb.Helper()
	for i := range f.refs {
		if n := f.refs[i].Load(); n != 0 {
			tb.Errorf("frame %d: %d references left", i, n)
		}
	}
}

// nopFrames is a Frames that does nothing (benchmarks of the package's
// own cost).
type nopFrames struct{}

func (nopFrames) Hold(uint32)      {}
func (nopFrames) Release([]uint32) {}

func tk(start, count uint32) devmemapi.DmabufToken {
	return devmemapi.DmabufToken{TokenStart: start, TokenCount: count}
}

func one(tok uint32) []devmemapi.DmabufToken { return []devmemapi.DmabufToken{tk(tok, 1)} }

// mustDeliver delivers or fails the test.
func mustDeliver(tb testing.TB, s *Socket, b *Binding, frame uint32) uint32 {
	tb.Helper()
	tok, err := s.Deliver(b, frame)
	if err != nil {
		tb.Fatalf("Deliver(binding %d, frame %d): %v", b.ID(), frame, err)
	}
	return tok
}

// mustDontNeed returns tokens and fails the test on error or a count other
// than want.
func mustDontNeed(tb testing.TB, s *Socket, want int, toks ...devmemapi.DmabufToken) {
	tb.Helper()
	n, err := s.DontNeed(toks)
	if err != nil || n != want {
		tb.Fatalf("DontNeed(%v) = %d, %v; want %d, nil", toks, n, err, want)
	}
}

// wantErrno fails unless err wraps errno (nil errno: err must be nil).
func wantErrno(tb testing.TB, what string, err, errno error) {
	tb.Helper()
	if errno == nil {
		if err != nil {
			tb.Fatalf("%s: unexpected error %v", what, err)
		}
		return
	}
	if !errors.Is(err, errno) {
		tb.Fatalf("%s: error %v, want %v", what, err, errno)
	}
}

package umem

import (
	"sync"
	"testing"
)

func newTestRegion(t *testing.T, frames int) *Region {
	t.Helper()
	r, err := NewRegion(RegionConfig{Size: uint64(frames) * DefaultFrameSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestRegionRefcounts(t *testing.T) {
	r := newTestRegion(t, 64)
	var got [4]uint32
	if n := r.alloc(got[:]); n != 4 || got[0] != 0 || got[3] != 3 {
		t.Fatalf("alloc: %d %v", n, got)
	}
	r.Pin(1)
	r.Pin(1)
	r.Hold(1)
	a := r.Snapshot()
	if a.Held != 1 || a.Free != 60 || a.InFlight != 3 {
		t.Fatalf("snapshot %v", a)
	}
	r.Unpin(1, 1)
	if s, ap := r.Refs(1); s != 0 || ap != 1 {
		t.Fatalf("refs %d/%d", s, ap)
	}
	r.Release([]uint32{1})
	if a := r.Snapshot(); a.Free != 61 || a.Held != 0 {
		t.Fatalf("after last release: %v", a)
	}
	r.Free(0, 2, 3)
	if a := r.Snapshot(); a.Free != 64 || a.InFlight != 0 || a.Recycled != 4 {
		t.Fatalf("all free: %v", a)
	}
}

func TestRegionUnderflowPanics(t *testing.T) {
	r := newTestRegion(t, 64)
	for _, tc := range []struct {
		name string
		fn   func()
	}{
		{"release without hold", func() { r.Release([]uint32{5}) }},
		{"unpin without pin", func() { r.Unpin(6) }},
		{"free with references", func() { r.Pin(7); r.Free(7) }},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", tc.name)
				}
			}()
			tc.fn()
		}()
	}
}

func TestRegionConcurrentRelease(t *testing.T) {
	r := newTestRegion(t, 1024)
	frames := make([]uint32, 1024)
	r.alloc(frames)
	for _, f := range frames {
		for i := 0; i < 8; i++ {
			r.Hold(f)
		}
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.Release(frames)
		}()
	}
	wg.Wait()
	if a := r.Snapshot(); a.Free != 1024 || a.Held != 0 {
		t.Fatalf("after concurrent release: %v", a)
	}
}

func TestRegionConfigErrors(t *testing.T) {
	if _, err := NewRegion(RegionConfig{Size: 1 << 20, FrameSize: 1000}); err == nil {
		t.Fatal("frame size 1000 accepted")
	}
	if _, err := NewRegion(RegionConfig{Size: 4096}); err == nil {
		t.Fatal("one-frame region accepted")
	}
}

func BenchmarkRegionHoldRelease(b *testing.B) {
	r, _ := NewRegion(RegionConfig{Size: 16 << 20})
	defer r.Close()
	fs := make([]uint32, 16)
	r.alloc(fs)
	for _, f := range fs {
		r.Pin(f)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		f := fs[i&15]
		r.Hold(f)
		r.Release(fs[i&15 : i&15+1])
	}
}

package tokens

import (
	"errors"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
)

// TestConcurrentDontNeedWhileDeliver: the stack delivers on one goroutine
// while the application returns tokens on another, and a third sends
// tokens that name nothing. Every delivered token is freed exactly once.
func TestConcurrentDontNeedWhileDeliver(t *testing.T) {
	for _, auto := range []bool{false, true} {
		t.Run(modeName(auto), func(t *testing.T) {
			const nframes, n = 64, 20000
			w := newWorld(t, auto, nframes)
			ch := make(chan uint32, 256)
			var wg sync.WaitGroup
			var freed atomic.Int64
			stop := make(chan struct{})
			wg.Add(3)
			go func() { // the stack
				defer wg.Done()
				defer close(ch)
				for i := range n {
					tok, err := w.s.Deliver(w.b, uint32(i%nframes))
					if err != nil {
						t.Error(err)
						return
					}
					ch <- tok
				}
			}()
			go func() { // the application
				defer wg.Done()
				batch := make([]devmemapi.DmabufToken, 0, devmemapi.MaxDontNeedTokens)
				flush := func() {
					got, err := w.s.DontNeed(batch)
					if err != nil || got != len(batch) {
						t.Errorf("DontNeed(%d tokens) = %d, %v", len(batch), got, err)
					}
					freed.Add(int64(got))
					batch = batch[:0]
				}
				for tok := range ch {
					batch = append(batch, tk(tok, 1))
					if len(batch) == cap(batch) || len(ch) == 0 {
						flush()
					}
				}
				if len(batch) > 0 {
					flush()
				}
			}()
			go func() { // noise: tokens that exist in neither mode
				defer wg.Done()
				bogus := []devmemapi.DmabufToken{tk(math.MaxUint32, math.MaxUint32)}
				if auto {
					bogus = append(bogus, tk(0, 1), tk(1<<30, 1000))
				} else {
					bogus = append(bogus, tk(nframes, 100))
					for w.s.Binding() == nil { // no tie yet: EINVAL
						runtime.Gosched()
					}
				}
				for {
					select {
					case <-stop:
						return
					default:
					}
					if got, err := w.s.DontNeed(bogus); got != 0 || err != nil {
						t.Errorf("bogus DontNeed = %d, %v", got, err)
						return
					}
					_ = w.s.Outstanding()
					runtime.Gosched()
				}
			}()
			// Wait for the stack and the application, then stop the noise.
			for freed.Load() < n && !t.Failed() {
				runtime.Gosched()
			}
			close(stop)
			wg.Wait()
			if got := freed.Load(); got != n {
				t.Fatalf("freed %d, want %d", got, n)
			}
			if w.s.Outstanding() != 0 || w.b.Outstanding() != 0 {
				t.Fatalf("Outstanding: socket %d, binding %d", w.s.Outstanding(), w.b.Outstanding())
			}
			w.f.checkZero(t)
		})
	}
}

// TestConcurrentUnbind races Unbind with deliveries and returns on several
// sockets tied to the binding, then the sockets' closes with each other:
// the tied sockets keep the binding alive (deliveries never fail), the
// last close drains it, and every reference is dropped exactly once.
func TestConcurrentUnbind(t *testing.T) {
	for range 20 {
		const nframes = 32
		f := newFakeFrames(nframes)
		b := NewBinding(1, f, nframes, false)
		var wg sync.WaitGroup
		var delivered, returned, drained atomic.Int64
		started := make(chan struct{}, 4)
		stop := make(chan struct{})
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s := NewSocket(false)
				defer func() { drained.Add(int64(s.Close())) }()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					fr := uint32((g*7 + i) % nframes)
					if _, err := s.Deliver(b, fr); err != nil {
						t.Error(err)
						return
					}
					delivered.Add(1)
					if i == 10 {
						started <- struct{}{}
					}
					if i%3 != 0 { // leave every third token outstanding
						got, err := s.DontNeed(one(fr))
						if err != nil {
							t.Error(err)
							return
						}
						returned.Add(int64(got))
					}
				}
			}()
		}
		for range 4 {
			<-started
		}
		unbound := b.Unbind()
		time.Sleep(time.Millisecond)
		close(stop)
		wg.Wait()
		f.checkZero(t)
		if !b.Drained() || unbound != 0 {
			t.Fatalf("drained %v, Unbind freed %d with sockets tied", b.Drained(), unbound)
		}
		if got := returned.Load() + drained.Load(); got != delivered.Load() {
			t.Fatalf("returned %d + drained %d, delivered %d", returned.Load(), drained.Load(), delivered.Load())
		}
		if t.Failed() {
			return
		}
	}
}

// TestConcurrentSetAutorelease races the v6 socket option with deliveries
// and returns: the mode may only change while the socket holds nothing,
// and no reference leaks or underflows whichever side wins.
func TestConcurrentSetAutorelease(t *testing.T) {
	const nframes = 16
	f := newFakeFrames(nframes)
	b := NewBinding(1, f, nframes, false)
	s := NewSocket(false)
	var wg sync.WaitGroup
	var switched, busy atomic.Int64
	done := make(chan struct{})
	wg.Add(2)
	go func() {
		defer wg.Done()
		defer close(done)
		for i := range 20000 {
			fr := uint32(i % nframes)
			tok, err := s.Deliver(b, fr)
			if err != nil {
				t.Error(err)
				return
			}
			// While we hold the token the mode cannot change.
			auto := s.Autorelease()
			if !auto && tok != fr {
				t.Errorf("mode 0 token %d for frame %d", tok, fr)
				return
			}
			if got, err := s.DontNeed(one(tok)); got != 1 || err != nil {
				t.Errorf("DontNeed(%d) in mode %v = %d, %v", tok, auto, got, err)
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			switch err := s.SetAutorelease(i%2 == 0); {
			case err == nil:
				switched.Add(1)
			case errors.Is(err, unix.EBUSY):
				busy.Add(1)
			default:
				t.Error(err)
				return
			}
		}
	}()
	wg.Wait()
	t.Logf("%d switches, %d EBUSY", switched.Load(), busy.Load())
	if s.Outstanding() != 0 || b.Outstanding() != 0 {
		t.Fatalf("Outstanding: socket %d, binding %d", s.Outstanding(), b.Outstanding())
	}
	s.Close()
	b.Unbind()
	f.checkZero(t)
}

// TestConcurrentDontNeedSameSocket: two goroutines return overlapping
// ranges on one socket; each token is freed once.
func TestConcurrentDontNeedSameSocket(t *testing.T) {
	for _, auto := range []bool{false, true} {
		t.Run(modeName(auto), func(t *testing.T) {
			const n = 1000
			for range 20 {
				w := newWorld(t, auto, n)
				for i := range n {
					mustDeliver(t, w.s, w.b, uint32(i))
				}
				var wg sync.WaitGroup
				var freed atomic.Int64
				for g := range 3 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for start := uint32(g); start < n+1; start += 50 {
							got, err := w.s.DontNeed([]devmemapi.DmabufToken{tk(start, 60)})
							if err != nil {
								t.Error(err)
								return
							}
							freed.Add(int64(got))
						}
					}()
				}
				wg.Wait()
				if got := freed.Load(); got != n {
					t.Fatalf("freed %d, want %d", got, n)
				}
				w.f.checkZero(t)
			}
		})
	}
}

// TestConcurrentCloseWhileDeliver: deliveries racing Close either land
// before it (and Close frees them) or fail with EBADF leaving nothing.
func TestConcurrentCloseWhileDeliver(t *testing.T) {
	for range 50 {
		f := newFakeFrames(8)
		b := NewBinding(1, f, 8, true)
		s := NewSocket(true)
		var wg sync.WaitGroup
		started := make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				if _, err := s.Deliver(b, uint32(i%8)); err != nil {
					if !errors.Is(err, unix.EBADF) {
						t.Error(err)
					}
					if i == 0 {
						close(started)
					}
					return
				}
				if i == 0 {
					close(started)
				}
			}
		}()
		<-started
		s.Close()
		wg.Wait()
		f.checkZero(t)
		if t.Failed() {
			return
		}
	}
}

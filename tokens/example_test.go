package tokens_test

import (
	"errors"
	"fmt"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/tokens"
)

// umem stands in for the stack's UMEM region: one reference count per
// frame; a frame is free again when its count drops to zero.
type umem struct{ refs []atomic.Int32 }

func newUMEM(frames int) *umem { return &umem{refs: make([]atomic.Int32, frames)} }

func (u *umem) Hold(frame uint32) { u.refs[frame].Add(1) }

func (u *umem) Release(frames []uint32) {
	for _, f := range frames {
		u.refs[f].Add(-1)
	}
}

// pinned counts the frames the application still holds.
func (u *umem) pinned() int {
	n := 0
	for i := range u.refs {
		if u.refs[i].Load() > 0 {
			n++
		}
	}
	return n
}

// Autorelease on: tokens come from a per-socket table starting at 1, the
// lowest free one first; closing the socket frees what is left.
func Example_autoreleaseOn() {
	var system tokens.Registry // the stack uses tokens.Default
	on := true
	mode, err := system.Acquire(&on) // bind-rx with autorelease=1
	if err != nil {
		panic(err)
	}
	mem := newUMEM(16)
	b := tokens.NewBinding(1, mem, 16, mode)
	s := tokens.NewSocket(system.Mode())

	// recvmsg(MSG_SOCK_DEVMEM) hands out three fragments, two on frame 5.
	t1, _ := s.Deliver(b, 5)
	t2, _ := s.Deliver(b, 5)
	t3, _ := s.Deliver(b, 9)
	fmt.Println("tokens:", t1, t2, t3)

	// SO_DEVMEM_DONTNEED returns the first two; the lowest free token, 1,
	// is handed out next.
	n, _ := s.DontNeed([]devmemapi.DmabufToken{{TokenStart: t1, TokenCount: 2}})
	t4, _ := s.Deliver(b, 3)
	fmt.Println("freed:", n, "next token:", t4, "outstanding:", s.Outstanding())

	// close(2) frees the leftovers; unbind finds no urefs to drop.
	fmt.Println("close freed:", s.Close(), "unbind freed:", b.Unbind())
	system.Release()
	fmt.Println("pinned frames:", mem.pinned())
	// Output:
	// tokens: 1 2 3
	// freed: 2 next token: 1 outstanding: 2
	// close freed: 2 unbind freed: 0
	// pinned frames: 0
}

// Autorelease off (the default): a token is the frame's index in its
// binding, counted by a per-frame uref; closing the socket frees nothing,
// unbinding frees every leftover.
func Example_autoreleaseOff() {
	var system tokens.Registry
	mode, _ := system.Acquire(nil) // bind-rx without the attribute: 0
	mem := newUMEM(16)
	b := tokens.NewBinding(1, mem, 16, mode)
	s := tokens.NewSocket(system.Mode())

	t1, _ := s.Deliver(b, 5)
	t2, _ := s.Deliver(b, 5)
	t3, _ := s.Deliver(b, 9)
	fmt.Println("tokens:", t1, t2, t3, "tied to binding", s.Binding().ID())

	// Token 5 twice frees both references on frame 5; a third is a no-op.
	n, _ := s.DontNeed([]devmemapi.DmabufToken{{TokenStart: 5, TokenCount: 1}, {TokenStart: 5, TokenCount: 1}, {TokenStart: 5, TokenCount: 1}})
	fmt.Println("freed:", n, "outstanding:", s.Outstanding())

	// A fragment of another binding cannot be expressed as a frame index.
	other := tokens.NewBinding(2, newUMEM(4), 4, mode)
	_, err := s.Deliver(other, 0)
	fmt.Println("other binding:", errors.Is(err, unix.EFAULT))

	fmt.Println("close freed:", s.Close(), "pinned frames:", mem.pinned())
	fmt.Println("unbind freed:", b.Unbind(), "pinned frames:", mem.pinned())
	_, err = tokens.NewSocket(false).Deliver(b, 1)
	fmt.Println("after unbind:", errors.Is(err, unix.ENODEV))
	system.Release()
	// Output:
	// tokens: 5 5 9 tied to binding 1
	// freed: 2 outstanding: 1
	// other binding: true
	// close freed: 0 pinned frames: 1
	// unbind freed: 1 pinned frames: 0
	// after unbind: true
}

// The v7+ form: the first RX binding sets the system-wide mode.
func ExampleRegistry_Acquire() {
	var system tokens.Registry
	on, off := true, false
	system.Acquire(&off)
	_, err := system.Acquire(&on)
	fmt.Println(err)
	fmt.Println(errors.Is(err, unix.EBUSY))
	system.Release() // the last RX binding goes away
	mode, err := system.Acquire(&on)
	fmt.Println(mode, err)
	// Output:
	// System already configured with autorelease=0
	// true
	// true <nil>
}

// The v6 form: SO_DEVMEM_AUTORELEASE per socket, refused while the socket
// holds tokens.
func ExampleSocket_SetAutorelease() {
	mem := newUMEM(4)
	b := tokens.NewBinding(1, mem, 4, false)
	s := tokens.NewSocket(false)
	if err := s.SetAutorelease(true); err != nil {
		panic(err)
	}
	tok, _ := s.Deliver(b, 2)
	fmt.Println("token:", tok, "autorelease:", s.Autorelease())
	err := s.SetAutorelease(false)
	fmt.Println(errors.Is(err, unix.EBUSY))
	s.DontNeed([]devmemapi.DmabufToken{{TokenStart: tok, TokenCount: 1}})
	fmt.Println(s.SetAutorelease(false), s.Autorelease())
	// Output:
	// token: 1 autorelease: true
	// true
	// <nil> false
}

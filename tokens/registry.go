package tokens

import (
	"fmt"
	"sync"

	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
)

// Registry is the system-wide autorelease mode of the v7+ form of the
// series: the mode is an attribute of bind-rx, the first RX binding sets
// it, and every further RX binding must ask for the same mode until none
// remain (the kernel's tcp_devmem_ar_key static branch). In xdevmem the
// "system" is the process: Default is the registry the stack uses, and
// tests make their own.
//
// The zero Registry is ready to use: no bindings, mode 0 (autorelease
// off). Its methods are safe for concurrent use.
type Registry struct {
	mu       sync.Mutex
	bindings int
	mode     bool
}

// defaultRegistry is the process-wide registry; Default returns it.
var defaultRegistry Registry

// Default is the process-wide registry the stack's bindings share: the
// "system" whose mode the autorelease series fixes while any binding is
// live. It cannot be replaced, only used.
func Default() *Registry { return &defaultRegistry }

// ModeConflictError is the error of a bind-rx that asks for the other mode
// while RX bindings exist. It unwraps to unix.EBUSY, and its text is the
// kernel's extack message.
type ModeConflictError struct {
	// Current is the mode the system is configured with.
	Current bool
}

// Error returns "System already configured with autorelease=N".
func (e *ModeConflictError) Error() string {
	return fmt.Sprintf("System already configured with autorelease=%d", b2i(e.Current))
}

// Unwrap returns the error table's bind-rx/autorelease-mismatch row (EBUSY,
// the same message), so errors.Is(err, unix.EBUSY) and devmemerr.Match hold.
func (e *ModeConflictError) Unwrap() error {
	return devmemerr.BindRXAutoreleaseMismatch.Err(b2i(e.Current))
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Acquire registers a new RX binding that asks for autorelease (nil: the
// attribute is absent, the default 0) and returns the binding's mode. If RX
// bindings exist with the other mode it fails with a *ModeConflictError
// (EBUSY) and returns the current mode; nothing is registered then. Each
// successful Acquire must be paired with one Release.
func (r *Registry) Acquire(autorelease *bool) (mode bool, err error) {
	want := false
	if autorelease != nil {
		want = *autorelease
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.bindings > 0 && r.mode != want {
		return r.mode, &ModeConflictError{Current: r.mode}
	}
	r.mode = want
	r.bindings++
	return want, nil
}

// Release unregisters an RX binding (at unbind). When none remain the mode
// returns to the default 0 and the next Acquire may choose either. Sockets
// and bindings keep their own mode, so releasing at unbind is safe even
// while sockets still hold tokens of that binding. It panics without a
// matching Acquire.
func (r *Registry) Release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.bindings == 0 {
		panic("tokens: Registry.Release without Acquire")
	}
	r.bindings--
	if r.bindings == 0 {
		r.mode = false
	}
}

// Mode returns the system mode: that of the existing RX bindings, or the
// default 0 (false) when there are none. NewSocket takes it.
func (r *Registry) Mode() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mode
}

// Bindings returns the number of registered RX bindings.
func (r *Registry) Bindings() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.bindings
}

package stack

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
	"github.com/xdevmem/xdevmem/tokens"
)

// nextBindingID is the process-wide dmabuf id space (ids start at 1, as the
// kernel's xa_alloc_cyclic for bindings does).
var nextBindingID atomic.Uint32

// rxBinding is the emulation's NETDEV_CMD_BIND_RX result: the stack's UMEM
// region bound to its RX queue. While it is active, TCP payload at or above
// the header-split threshold is delivered as dmabuf fragments.
type rxBinding struct {
	s      *Stack
	id     uint32
	queues []uint32
	tb     *tokens.Binding
	closed atomic.Bool
	once   sync.Once
}

var _ devmemapi.Binding = (*rxBinding)(nil)

// BindRX implements devmemapi.Provider: it binds the stack's UMEM region (the
// emulated dmabuf) to logical RX queues. The kernel's errors apply, in the
// kernel's order (Linux 6.18 netdev_nl_bind_rx_doit): an empty queue list is
// EINVAL, another interface ENODEV, a queue at or beyond the channel count
// EINVAL (checked while the list is read, before anything else), an
// autorelease mode other than the one in force while RX bindings exist
// EBUSY, header split off or a non-zero hds-thresh EINVAL, and a queue
// already bound EEXIST. A queue named twice is bound once.
func (s *Stack) BindRX(cfg devmemapi.BindRXConfig) (devmemapi.Binding, error) {
	return s.bindRX(cfg, 0)
}

// BindRXAs is BindRX keeping dmabuf id id, one a binding of a stack this one
// replaces was given (a program that binds an RX and a TX dmabuf to one
// interface gets, at its second bind, a stack with both in its UMEM; its
// first binding moves over under the id the program knows).
func (s *Stack) BindRXAs(cfg devmemapi.BindRXConfig, id uint32) (devmemapi.Binding, error) {
	if id == 0 {
		return nil, fmt.Errorf("bind rx: id 0: %w", unix.EINVAL)
	}
	return s.bindRX(cfg, id)
}

func (s *Stack) bindRX(cfg devmemapi.BindRXConfig, id uint32) (devmemapi.Binding, error) {
	if s.closing.Load() {
		return nil, fmt.Errorf("bind rx: %w", devmemapi.ErrClosed)
	}
	if len(cfg.Queues) == 0 {
		return nil, fmt.Errorf("bind rx: no queues: %w", devmemerr.BindRXMissingAttr.Err())
	}
	if cfg.Ifindex != 0 && cfg.Ifindex != s.ifindex {
		return nil, fmt.Errorf("bind rx: ifindex %d: this stack runs on ifindex %d: %w", cfg.Ifindex, s.ifindex, devmemerr.BindRXNoDevice.Err())
	}
	s.steer.mu.Lock()
	channels := s.steer.channels
	defer s.steer.mu.Unlock()
	var queues []uint32
	for _, q := range cfg.Queues {
		if int(q) >= channels {
			return nil, fmt.Errorf("bind rx queue %d (%d channels): %w", q, channels, devmemerr.BindRXQueueRange.Err())
		}
		if !slices.Contains(queues, q) {
			queues = append(queues, q)
		}
	}
	slices.Sort(queues)
	s.mu.Lock()
	defer s.mu.Unlock()
	mode, err := tokens.Default().Acquire(s.bindMode(cfg.Autorelease))
	if err != nil {
		return nil, fmt.Errorf("bind rx: %w", err)
	}
	if err := s.checkBindRings(); err != nil {
		tokens.Default().Release()
		return nil, err
	}
	for _, q := range queues {
		if cur := s.bound[q].Load(); cur != nil {
			tokens.Default().Release()
			return nil, fmt.Errorf("bind rx queue %d (bound to dmabuf %d): %w", q, cur.id, devmemerr.BindRXQueueBound.Err())
		}
	}
	if id == 0 {
		id = nextBindingID.Add(1)
	}
	b := &rxBinding{s: s, id: id, queues: queues}
	b.tb = tokens.NewBinding(b.id, s.region, int(s.region.Frames()), mode)
	for _, q := range queues {
		s.bound[q].Store(b)
	}
	s.bindings[b] = struct{}{}
	return b, nil
}

// BoundTo reports the id of the dmabuf bound to logical RX queue q, if any
// (netdev queue-get's dmabuf attribute).
func (s *Stack) BoundTo(q int) (uint32, bool) {
	if b := s.bindingFor(q); b != nil {
		return b.id, true
	}
	return 0, false
}

// ID implements devmemapi.Binding.
func (b *rxBinding) ID() uint32 { return b.id }

// Size implements devmemapi.Binding.
func (b *rxBinding) Size() uint64 { return b.s.region.Size() }

// Autorelease reports the binding's token release mode.
func (b *rxBinding) Autorelease() bool { return b.tb.Autorelease() }

// ReadAt implements devmemapi.Binding: it reads the UMEM, where fragments
// point.
func (b *rxBinding) ReadAt(p []byte, off int64) (int, error) {
	return b.s.region.ReadAt(p, off)
}

// Bytes returns the dmabuf's memory for zero-copy reads (the emulation's
// equivalent of mmap on a dmabuf fd). It is valid until the stack closes.
func (b *rxBinding) Bytes() []byte { return b.s.region.Bytes() }

// Close implements devmemapi.Binding: the queues are unbound (later payload
// is delivered as ordinary bytes) and the binding's queue user is dropped,
// as in the series' v10. Fragments already queued stay deliverable to
// autorelease-on sockets and to autorelease-off sockets tied to the binding,
// which keep it alive; a socket not tied yet gets ENODEV once no tied
// socket is left, and then every outstanding uref is freed.
func (b *rxBinding) Close() error {
	b.once.Do(func() {
		b.closed.Store(true)
		for _, q := range b.queues {
			b.s.bound[q].CompareAndSwap(b, nil)
		}
		b.tb.Unbind()
		tokens.Default().Release()
		b.s.mu.Lock()
		delete(b.s.bindings, b)
		b.s.mu.Unlock()
	})
	return nil
}

// bindMode is the token release mode a bind-rx asks for: the request's
// attribute, or the stack's default (DefaultAutorelease).
func (s *Stack) bindMode(req *bool) *bool {
	if req != nil {
		return req
	}
	on := s.autorelease
	return &on
}

package stack

import (
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
)

// DefaultTXSize is the size of a TX binding whose config names none.
const DefaultTXSize = 4 << 20

// txBindings is the process-wide table of TX bindings by dmabuf id (the
// kernel's net_devmem_dmabuf_bindings xarray, which RX and TX bindings
// share; ids come from the same counter as BindRX's).
var txBindings sync.Map // uint32 → *txBinding

// txBinding is the emulation's NETDEV_CMD_BIND_TX result: a span of
// contiguous UMEM frames the application writes payload into. The stack
// only ever reads it.
type txBinding struct {
	s     *Stack
	id    uint32
	first uint32 // first frame
	n     uint32 // frames
	base  uint64 // UMEM address of dmabuf offset 0
	size  uint64
	keep  bool // the span stays reserved after release (BindTXReserved)

	// refs counts what still needs the span: pending send calls and
	// payload descriptors in flight. The span goes back to the region
	// when the binding is closed and refs is 0.
	refs     atomic.Int64
	closed   atomic.Bool
	once     sync.Once
	released atomic.Bool
}

var _ devmemapi.TXBinding = (*txBinding)(nil)

// BindTX implements devmemapi.TXProvider: it carves Size bytes (rounded up
// to whole frames; 0 means DefaultTXSize) of contiguous frames out of the
// UMEM and returns them as a TX dmabuf. An ifindex other than the stack's
// is ENODEV (the kernel's netdev lookup); no run of free frames that long
// is ENOMEM. The first BindTX (or Dial) switches the stack's transmit path
// to the TX engine, which probes for multi-buffer support.
func (s *Stack) BindTX(cfg devmemapi.BindTXConfig) (devmemapi.TXBinding, error) {
	if s.closing.Load() {
		return nil, fmt.Errorf("bind tx: %w", devmemapi.ErrClosed)
	}
	if cfg.Ifindex != 0 && cfg.Ifindex != s.ifindex {
		return nil, fmt.Errorf("bind tx: ifindex %d: this stack runs on ifindex %d: %w", cfg.Ifindex, s.ifindex, devmemerr.BindTXNoDevice.Err())
	}
	size := cfg.Size
	if size == 0 {
		size = DefaultTXSize
	}
	fs := uint64(s.region.FrameSize())
	n := (size + fs - 1) / fs
	if n == 0 || n > uint64(s.region.Frames()) {
		return nil, fmt.Errorf("bind tx: %d bytes do not fit the %d-byte UMEM: %w", size, s.region.Size(), unix.ENOMEM)
	}
	t, err := s.engine()
	if err != nil {
		return nil, fmt.Errorf("bind tx: %w", err)
	}
	first, err := s.region.ReserveSpan(uint32(n))
	if err != nil {
		return nil, fmt.Errorf("bind tx: %w", err)
	}
	b := &txBinding{s: s, id: nextBindingID.Add(1), first: first, n: uint32(n), base: s.region.FrameAddr(first), size: size}
	t.add(b)
	return b, nil
}

// add makes b's frames the engine's and its id a live TX binding.
func (t *txEngine) add(b *txBinding) {
	for f := b.first; f < b.first+b.n; f++ {
		t.owner[f].Store(b)
	}
	t.bmu.Lock()
	t.bindings[b] = struct{}{}
	t.bmu.Unlock()
	txBindings.Store(b.id, b)
}

// BindTXReserved binds, as BindTX does, frames first to first+n-1 that the
// caller reserved itself before New (umem.Region.ReserveSpanAt on
// Config.Region): libxdevmem's TX dmabuf is the application's memfd, which
// is a known span of the UMEM. size is the dmabuf's size (at most n
// frames). When the binding is released the span stays reserved, so the
// stack never receives into memory the application owns.
func (s *Stack) BindTXReserved(ifindex int, first, n uint32, size uint64) (devmemapi.TXBinding, error) {
	return s.bindTXReserved(ifindex, first, n, size, 0)
}

// BindTXReservedAs is BindTXReserved keeping dmabuf id id (see BindRXAs).
func (s *Stack) BindTXReservedAs(ifindex int, first, n uint32, size uint64, id uint32) (devmemapi.TXBinding, error) {
	if id == 0 {
		return nil, fmt.Errorf("bind tx: id 0: %w", unix.EINVAL)
	}
	return s.bindTXReserved(ifindex, first, n, size, id)
}

func (s *Stack) bindTXReserved(ifindex int, first, n uint32, size uint64, id uint32) (devmemapi.TXBinding, error) {
	if s.closing.Load() {
		return nil, fmt.Errorf("bind tx: %w", devmemapi.ErrClosed)
	}
	if ifindex != 0 && ifindex != s.ifindex {
		return nil, fmt.Errorf("bind tx: ifindex %d: this stack runs on ifindex %d: %w", ifindex, s.ifindex, devmemerr.BindTXNoDevice.Err())
	}
	fs := uint64(s.region.FrameSize())
	if n == 0 || first >= s.region.Frames() || n > s.region.Frames()-first || size == 0 || size > uint64(n)*fs {
		return nil, fmt.Errorf("bind tx: span of %d frames at %d for %d bytes in a UMEM of %d frames: %w", n, first, size, s.region.Frames(), unix.EINVAL)
	}
	t, err := s.engine()
	if err != nil {
		return nil, fmt.Errorf("bind tx: %w", err)
	}
	for f := first; f < first+n; f++ {
		if t.owner[f].Load() != nil {
			return nil, fmt.Errorf("bind tx: frame %d belongs to another TX binding: %w", f, unix.EBUSY)
		}
	}
	if id == 0 {
		id = nextBindingID.Add(1)
	}
	b := &txBinding{s: s, id: id, first: first, n: n, base: s.region.FrameAddr(first), size: size, keep: true}
	s.keptFrames.Add(n)
	t.add(b)
	return b, nil
}

// lookupTXBinding is net_devmem_get_binding: an id that names no live TX
// binding (unknown, unbound, or an RX binding, which has no TX vector) is
// EINVAL; a binding of another device (another stack) is ENODEV.
func (s *Stack) lookupTXBinding(id uint32) (*txBinding, error) {
	v, ok := txBindings.Load(id)
	if !ok {
		return nil, fmt.Errorf("dmabuf id %d names no TX binding: %w", id, unix.EINVAL)
	}
	b := v.(*txBinding)
	if b.closed.Load() {
		return nil, fmt.Errorf("dmabuf id %d is unbound: %w", id, unix.EINVAL)
	}
	if b.s != s {
		return nil, fmt.Errorf("dmabuf id %d is bound to ifindex %d, the socket routes via ifindex %d: %w", id, b.s.ifindex, s.ifindex, unix.ENODEV)
	}
	return b, nil
}

// ID implements devmemapi.TXBinding.
func (b *txBinding) ID() uint32 { return b.id }

// Size implements devmemapi.TXBinding.
func (b *txBinding) Size() uint64 { return b.size }

// Bytes is the dmabuf's memory (the emulation's mmap of the dmabuf): the
// application fills it in place. Valid until the binding is closed.
func (b *txBinding) Bytes() []byte {
	return b.s.region.Bytes()[b.base : b.base+b.size : b.base+b.size]
}

// WriteAt implements devmemapi.TXBinding; writes past the end fail with
// EFAULT.
func (b *txBinding) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || uint64(off) > b.size {
		return 0, fmt.Errorf("tx dmabuf %d: write at %d: %w", b.id, off, unix.EFAULT)
	}
	n := copy(b.Bytes()[off:], p)
	if n < len(p) {
		return n, fmt.Errorf("tx dmabuf %d: write of %d bytes at %d: %w", b.id, len(p), off, unix.EFAULT)
	}
	return n, nil
}

// ReadAt implements devmemapi.TXBinding.
func (b *txBinding) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || uint64(off) > b.size {
		return 0, fmt.Errorf("tx dmabuf %d: read at %d: %w", b.id, off, unix.EFAULT)
	}
	n := copy(p, b.Bytes()[off:])
	if n < len(p) {
		return n, fmt.Errorf("tx dmabuf %d: read of %d bytes at %d: %w", b.id, len(p), off, unix.EFAULT)
	}
	return n, nil
}

// Close implements devmemapi.TXBinding: the id stops working for new sends
// (EINVAL); data already queued is still sent, and the span returns to the
// UMEM once the last send from it has completed.
func (b *txBinding) Close() error {
	if b.closed.CompareAndSwap(false, true) {
		txBindings.CompareAndDelete(b.id, b)
		if b.refs.Load() == 0 {
			b.release()
		}
	}
	return nil
}

func (b *txBinding) get() { b.refs.Add(1) }

func (b *txBinding) put() {
	if b.refs.Add(-1) == 0 && b.closed.Load() {
		b.release()
	}
}

// release gives the span back to the region, once.
func (b *txBinding) release() {
	b.once.Do(func() {
		t := b.s.tx.eng.Load()
		for f := b.first; f < b.first+b.n; f++ {
			t.owner[f].Store(nil)
		}
		t.bmu.Lock()
		delete(t.bindings, b)
		t.bmu.Unlock()
		b.released.Store(true)
		if !b.keep {
			b.s.region.ReleaseSpan(b.first, b.n)
		}
	})
}

// netPrivileged reports whether the process has CAP_NET_ADMIN or
// CAP_NET_RAW in its effective set: the privilege a socket's SO_MARK and
// high SO_PRIORITY control messages need (ns_capable in __sock_cmsg_send).
func netPrivileged() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	has := func(c uint) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
	return has(unix.CAP_NET_ADMIN) || has(unix.CAP_NET_RAW)
}

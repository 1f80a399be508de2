package umem

import (
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// DefaultFrameSize is the frame size of a Region unless configured: one
// page, like one net_iov of a dmabuf.
const DefaultFrameSize = 4096

// Reference-count layout of a frame: application references in the high 32
// bits, stack references in the low 32 bits.
const (
	stackRef = uint64(1)
	appRef   = uint64(1) << 32
	refMask  = uint64(1)<<32 - 1
)

// RegionConfig sizes a Region.
type RegionConfig struct {
	// Size is the region size in bytes, rounded down to whole frames; 0
	// means the files' bytes.
	Size uint64
	// FrameSize is 2048 or 4096 (AF_XDP aligned mode); 0 means 4096.
	FrameSize uint32
	// Files, if any, back the region's first bytes, one after another (a
	// memfd an application also maps: its dmabuf; an interface's RX
	// dmabuf, then its TX dmabuf) instead of anonymous memory; the rest of
	// the region, if any, is anonymous.
	Files []FileBacking
}

// FileBacking is the file part of a Region: Size bytes of the file open as
// FD, from Offset, mapped shared, so that what the kernel writes into those
// frames is what every other mapping of the file reads. The region keeps
// its own mapping: the caller may close FD once NewRegion returns.
type FileBacking struct {
	// FD is an open file (a memfd, or a file on tmpfs or hugetlbfs).
	FD int
	// Offset is where the region starts in the file; a multiple of the
	// page size.
	Offset int64
	// Size is how many bytes of the file the region maps: whole frames,
	// all within the file (else EINVAL: touching a page past the end of
	// a file is SIGBUS).
	Size uint64
}

// Region is the UMEM memory: the emulation's dmabuf. It owns the frames, their
// reference counts and the free list. All methods are safe for concurrent use.
type Region struct {
	mem       []byte
	frameSize uint32
	shift     uint
	nframes   uint32

	refs []atomic.Uint64

	mu   sync.Mutex
	free []uint32 // stack of free frame indices; guarded by mu

	posted   atomic.Int64 // frames on the fill ring or in the kernel
	tx       atomic.Int64 // frames reserved for TX by sockets
	onFree   atomic.Pointer[func()]
	closed   atomic.Bool
	freedCnt atomic.Uint64

	// unmap keeps Close from unmapping mem under a ReadAt (read-locked by
	// ReadAt, write-locked by Close).
	unmap sync.RWMutex
}

// NewRegion maps a Region.
func NewRegion(cfg RegionConfig) (*Region, error) {
	fs := cfg.FrameSize
	if fs == 0 {
		fs = DefaultFrameSize
	}
	if fs != 2048 && fs != 4096 {
		return nil, fmt.Errorf("umem region: frame size %d: must be 2048 or 4096: %w", fs, unix.EINVAL)
	}
	size := cfg.Size
	files := cfg.Files
	var fileBytes uint64
	for _, f := range files {
		fileBytes += f.Size
	}
	if size == 0 {
		size = fileBytes
	}
	n := size / uint64(fs)
	if n < 64 || n > 1<<24 {
		return nil, fmt.Errorf("umem region: %d bytes gives %d frames of %d bytes (need 64 to 16M frames): %w", size, n, fs, unix.EINVAL)
	}
	if fileBytes > n*uint64(fs) {
		return nil, fmt.Errorf("umem region: %d bytes of files in a %d-byte region: %w", fileBytes, n*uint64(fs), unix.EINVAL)
	}
	for _, f := range files {
		if f.Size == 0 || f.Size%uint64(fs) != 0 || f.Offset < 0 || f.Offset%int64(unix.Getpagesize()) != 0 {
			return nil, fmt.Errorf("umem region: file part of %d bytes at offset %d in a %d-byte region of %d-byte frames: %w",
				f.Size, f.Offset, n*uint64(fs), fs, unix.EINVAL)
		}
	}
	mem, err := mmapFiles(files, int(n)*int(fs))
	if err != nil {
		return nil, fmt.Errorf("umem region: map %d bytes (%d files): %w", n*uint64(fs), len(files), err)
	}
	r := &Region{
		mem:       mem,
		frameSize: fs,
		nframes:   uint32(n),
		refs:      make([]atomic.Uint64, n),
		free:      make([]uint32, n),
	}
	for fs>>r.shift != 1 {
		r.shift++
	}
	for i := range r.free {
		r.free[i] = uint32(n) - 1 - uint32(i) // pop order 0, 1, 2, ...
	}
	return r, nil
}

// Bytes is the whole region. Callers read payload through it (as an
// application reads a mapped dmabuf); only the kernel and the TX path write.
func (r *Region) Bytes() []byte { return r.mem }

// Size is the region size in bytes.
func (r *Region) Size() uint64 { return uint64(len(r.mem)) }

// FrameSize is the size of one frame.
func (r *Region) FrameSize() uint32 { return r.frameSize }

// Frames is the number of frames.
func (r *Region) Frames() uint32 { return r.nframes }

// FrameOf returns the frame that holds the UMEM address addr.
func (r *Region) FrameOf(addr uint64) uint32 { return uint32(addr >> r.shift) }

// FrameAddr returns the UMEM address where frame f starts.
func (r *Region) FrameAddr(f uint32) uint64 { return uint64(f) << r.shift }

// ReadAt copies region bytes at off into p; it implements io.ReaderAt, as
// the kernel backend's dmabuf does: a negative offset is EINVAL, a read that
// reaches the end returns what there is and io.EOF, and a read after Close
// fails with net.ErrClosed (it never touches the unmapped memory).
func (r *Region) ReadAt(p []byte, off int64) (int, error) {
	r.unmap.RLock()
	defer r.unmap.RUnlock()
	switch {
	case r.closed.Load():
		return 0, fmt.Errorf("umem region: read: %w", net.ErrClosed)
	case off < 0:
		return 0, fmt.Errorf("umem region: read at %d: %w", off, unix.EINVAL)
	case off >= int64(len(r.mem)):
		return 0, io.EOF
	}
	n := copy(p, r.mem[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// SetOnFree registers fn to run (without locks held) whenever frames return
// to an empty or nearly empty free list, so a receive loop starved of fill
// frames can wake up. nil clears it.
func (r *Region) SetOnFree(fn func()) {
	if fn == nil {
		r.onFree.Store(nil)
		return
	}
	r.onFree.Store(&fn)
}

// alloc pops up to len(dst) free frames into dst and returns how many.
func (r *Region) alloc(dst []uint32) int {
	r.mu.Lock()
	n := min(len(dst), len(r.free))
	top := len(r.free)
	for i := 0; i < n; i++ {
		dst[i] = r.free[top-1-i]
	}
	r.free = r.free[:top-n]
	r.mu.Unlock()
	return n
}

// Alloc takes up to len(dst) frames off the free list for a caller that
// fills them itself (in-process tests, custom receive loops) and returns how
// many it took. Give them back with Free, or Pin them.
func (r *Region) Alloc(dst []uint32) int { return r.alloc(dst) }

// Post takes up to len(dst) free frames for a device's fill ring and
// returns how many it took. Snapshot counts them as Posted until the device
// hands them back (Unpost): received into, and then the caller's to Pin or
// Free, or given back unused (to Free).
func (r *Region) Post(dst []uint32) int {
	n := r.alloc(dst)
	r.posted.Add(int64(n))
	return n
}

// Unpost ends the Posted state of n frames taken with Post.
func (r *Region) Unpost(n int) { r.posted.Add(-int64(n)) }

// putFree pushes frames whose references all dropped.
func (r *Region) putFree(fs []uint32) {
	if len(fs) == 0 {
		return
	}
	r.mu.Lock()
	wasLow := len(r.free) < 64
	r.free = append(r.free, fs...)
	r.mu.Unlock()
	r.freedCnt.Add(uint64(len(fs)))
	if wasLow {
		if fn := r.onFree.Load(); fn != nil {
			(*fn)()
		}
	}
}

// Free returns frames that hold no references (a received frame whose
// payload was not kept, or a TX frame) to the free list.
func (r *Region) Free(fs ...uint32) {
	for _, f := range fs {
		if v := r.refs[f].Load(); v != 0 {
			panic(fmt.Sprintf("umem: free of frame %d with references (stack %d, app %d)", f, v&refMask, v>>32))
		}
	}
	r.putFree(fs)
}

// Pin takes one stack reference on frame f (a fragment queue keeps payload
// in it).
func (r *Region) Pin(f uint32) { r.refs[f].Add(stackRef) }

// Unpin drops one stack reference on each frame in fs; frames left with no
// reference return to the free list.
func (r *Region) Unpin(fs ...uint32) { r.drop(fs, stackRef) }

// Hold takes one application reference on frame f (a token or uref). It
// implements tokens.Frames.
func (r *Region) Hold(f uint32) { r.refs[f].Add(appRef) }

// Release drops one application reference on each frame in fs. It
// implements tokens.Frames.
func (r *Region) Release(fs []uint32) { r.drop(fs, appRef) }

func (r *Region) drop(fs []uint32, unit uint64) {
	var zero [32]uint32
	nz := 0
	for _, f := range fs {
		v := r.refs[f].Add(-unit)
		if (unit == stackRef && v&refMask == refMask) || (unit == appRef && v>>32 == refMask) {
			panic(fmt.Sprintf("umem: reference underflow on frame %d", f))
		}
		if v == 0 {
			zero[nz] = f
			nz++
			if nz == len(zero) {
				r.putFree(zero[:nz])
				nz = 0
			}
		}
	}
	r.putFree(zero[:nz])
}

// Refs reports frame f's stack and application reference counts.
func (r *Region) Refs(f uint32) (stack, app uint32) {
	v := r.refs[f].Load()
	return uint32(v & refMask), uint32(v >> 32)
}

// Accounting is a snapshot of where a Region's frames are. At rest the
// fields sum to Frames.
type Accounting struct {
	// Frames is the region's frame count.
	Frames uint32
	// Free frames are on the free list.
	Free uint32
	// Posted frames are on the fill ring or inside the kernel.
	Posted uint32
	// Pinned frames are held only by the stack (undelivered payload).
	Pinned uint32
	// Held frames are held by the application (outstanding tokens).
	Held uint32
	// TX frames are reserved by sockets for transmission.
	TX uint32
	// InFlight frames are between states (being parsed); 0 at rest.
	InFlight int64
	// Recycled counts frames returned to the free list since creation.
	Recycled uint64
}

// Snapshot takes an accounting snapshot. It is exact when the region is
// quiescent and approximate while packets flow.
func (r *Region) Snapshot() Accounting {
	a := Accounting{Frames: r.nframes}
	r.mu.Lock()
	a.Free = uint32(len(r.free))
	r.mu.Unlock()
	a.Posted = uint32(r.posted.Load())
	a.TX = uint32(r.tx.Load())
	for i := range r.refs {
		v := r.refs[i].Load()
		switch {
		case v>>32 != 0:
			a.Held++
		case v != 0:
			a.Pinned++
		}
	}
	a.InFlight = int64(a.Frames) - int64(a.Free) - int64(a.Posted) - int64(a.Pinned) - int64(a.Held) - int64(a.TX)
	a.Recycled = r.freedCnt.Load()
	return a
}

// String formats the snapshot for logs.
func (a Accounting) String() string {
	return fmt.Sprintf("frames=%d free=%d posted=%d pinned=%d held=%d tx=%d inflight=%d",
		a.Frames, a.Free, a.Posted, a.Pinned, a.Held, a.TX, a.InFlight)
}

// Close unmaps the region, after any ReadAt under way. Sockets using it
// must be closed first; slices from Bytes are invalid afterwards, as a
// dmabuf mapping is after munmap.
func (r *Region) Close() error {
	r.unmap.Lock()
	defer r.unmap.Unlock()
	if !r.closed.CompareAndSwap(false, true) {
		return nil
	}
	return munmap(r.mem)
}

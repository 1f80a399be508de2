// Package umemtest is a fake AF_XDP socket for tests that run without
// privileges or a kernel in the loop, as gVisor's link/channel endpoint is
// for its netstack and wireguard-go's conn/bindtest for its Bind.
//
// A Device has the receive and transmit methods of *umem.Socket over a real
// umem.Region, and the test plays the kernel:
//
//   - Inject is the wire: it copies frames into frames the device posted on
//     its fill ring (Refill), at the headroom copy mode leaves, and puts
//     their descriptors on the RX ring for Receive — in several descriptors
//     flagged XDP_PKT_CONTD when a frame is larger than a UMEM frame and the
//     device was made with SocketConfig.SG. A frame that finds the fill ring
//     empty or the RX ring full is dropped and counted, as the kernel does.
//   - Every packet the device sends (TXProduce, then TXKick) is handed to
//     the transmit callback, a chain of descriptors joined into one frame
//     as the kernel joins it; its addresses then complete at once and go
//     through the device's TXClaim as a socket's would.
//
// Region accounting is the socket's: posted frames count as Posted, the TX
// frames (a span, ReserveSpan) as TX, and Close gives every frame back.
package umemtest

import (
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/umem"
)

// Headroom is where a received frame starts in its UMEM frame: the
// kernel's XDP_PACKET_HEADROOM, which AF_XDP copy mode leaves in front.
const Headroom = 256

// Options are the fake's own settings (the socket's come in a
// umem.SocketConfig).
type Options struct {
	// Transmit, if set, receives each frame the device sends; see
	// SetTransmit.
	Transmit func(frame []byte)
	// NoChains makes the device refuse multi-buffer TX, as a kernel before
	// Linux 6.6 does: TXProbeMultiBuffer reports false and a chain is
	// dropped as invalid (Stats.TxInvalidDescs), its addresses completed.
	NoChains bool
}

// Device is a fake AF_XDP socket (see the package comment). Refill,
// Receive, FillPending and Wait belong to one receive goroutine, as on a
// socket; the rest is safe for concurrent use.
type Device struct {
	region   *umem.Region
	fs       uint64 // frame size
	ring     int    // fill and RX ring entries
	txRing   int    // TX ring entries
	sg       bool
	noChains bool
	transmit atomic.Pointer[func([]byte)]
	notify   chan struct{} // wakes Wait
	timer    *time.Timer   // Wait's; receive goroutine only

	mu       sync.Mutex // guards the receive side below
	cond     *sync.Cond // handled moved, or closed
	fill     []uint64   // posted frame addresses, oldest first
	rx       []unix.XDPDesc
	injected uint64 // descriptors put on the RX ring, ever
	consumed uint64 // descriptors taken by Receive, ever
	handled  uint64 // consumed when the receive goroutine came back for more
	closed   bool
	stats    umem.Stats
	fillIdx  []uint32

	txMu    sync.Mutex // guards the transmit side below
	txFirst uint32     // the TX frames: a span
	txN     uint32
	txFree  []uint64
	txQueue []unix.XDPDesc // produced, not yet sent
	txSpare []unix.XDPDesc // the other queue buffer, while send holds one
	comp    []uint64       // sent, not yet reclaimed
	claim   umem.TXClaim
	txDrops uint64
	txDone  bool // closed

	kickMu sync.Mutex // one kick sends at a time, in order
	buf    []byte     // a chain joined; under kickMu
}

// New makes a fake socket over region, sized as cfg says (RingSize,
// TXRingSize, TXFrames and SG, with umem.NewSocket's defaults; the other
// fields mean nothing here), and posts its fill ring.
func New(region *umem.Region, cfg umem.SocketConfig, opt Options) (*Device, error) {
	if cfg.RingSize == 0 {
		cfg.RingSize = min(2048, uint32(1)<<(31-bits.LeadingZeros32(max(region.Frames()/2, 1))))
	}
	if cfg.TXRingSize == 0 {
		cfg.TXRingSize = 512
	}
	if cfg.TXFrames == 0 {
		cfg.TXFrames = 256
	}
	if bits.OnesCount32(cfg.RingSize) != 1 || bits.OnesCount32(cfg.TXRingSize) != 1 {
		return nil, fmt.Errorf("umemtest: ring sizes %d/%d must be powers of two: %w", cfg.RingSize, cfg.TXRingSize, unix.EINVAL)
	}
	if cfg.TXFrames < 0 || uint64(cfg.TXFrames)+uint64(cfg.RingSize) > uint64(region.Frames()) {
		return nil, fmt.Errorf("umemtest: umem of %d frames is too small for a %d-entry fill ring and %d TX frames: %w",
			region.Frames(), cfg.RingSize, cfg.TXFrames, unix.EINVAL)
	}
	d := &Device{
		region:   region,
		fs:       uint64(region.FrameSize()),
		ring:     int(cfg.RingSize),
		txRing:   int(cfg.TXRingSize),
		sg:       cfg.SG,
		noChains: opt.NoChains,
		notify:   make(chan struct{}, 1),
		fillIdx:  make([]uint32, cfg.RingSize),
		txN:      uint32(cfg.TXFrames),
		buf:      make([]byte, 0, 1<<16),
	}
	d.cond = sync.NewCond(&d.mu)
	if opt.Transmit != nil {
		d.SetTransmit(opt.Transmit)
	}
	if d.txN > 0 {
		first, err := region.ReserveSpan(d.txN)
		if err != nil {
			return nil, fmt.Errorf("umemtest: %d TX frames: %w", d.txN, err)
		}
		d.txFirst = first
		for f := first; f < first+d.txN; f++ {
			d.txFree = append(d.txFree, region.FrameAddr(f))
		}
	}
	d.Refill()
	return d, nil
}

// SetTransmit sets the callback that receives each frame the device sends
// (nil: frames are dropped after completing). It runs on the goroutine
// that kicks, one frame at a time and in order; frame is valid only during
// the call. It must not block, and in particular must not Inject (which
// waits for the receive goroutine, which may be the one kicking): hand the
// frame to another goroutine instead.
func (d *Device) SetTransmit(fn func(frame []byte)) {
	if fn == nil {
		d.transmit.Store(nil)
		return
	}
	d.transmit.Store(&fn)
}

// Inject delivers frames as the kernel delivers received packets: each is
// copied into frames from the fill ring and its descriptors go on the RX
// ring. It returns how many frames it delivered (the rest were dropped and
// counted in Stats) once the receive goroutine has handled them — taken
// them with Receive and come back for more — or the device is closed, so
// that a test can look at the outcome at once (with no frames, it waits for
// what Enqueue put there). Inject must not be called from the receive
// goroutine, nor from the transmit callback.
func (d *Device) Inject(frames ...[]byte) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	taken := d.enqueueLocked(frames)
	target := d.injected
	for d.handled < target && !d.closed {
		d.cond.Wait()
	}
	return taken
}

// Enqueue is Inject without the wait: it returns as soon as the frames are
// on the RX ring, as a peer on a wire goes on sending. It never blocks, so
// a transmit callback may answer with it. Inject with no frames then waits
// until the receive goroutine has handled everything enqueued.
func (d *Device) Enqueue(frames ...[]byte) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.enqueueLocked(frames)
}

// enqueueLocked puts frames on the RX ring and wakes the receive
// goroutine (d.mu held).
func (d *Device) enqueueLocked(frames [][]byte) int {
	if d.closed {
		return 0
	}
	room := d.fs - Headroom
	mem := d.region.Bytes()
	taken := 0
	for _, f := range frames {
		need := 1
		if uint64(len(f)) > room {
			if !d.sg {
				d.stats.RxDropped++ // too long for one frame without multi-buffer
				continue
			}
			need = int((uint64(len(f)) + room - 1) / room)
		}
		switch {
		case len(d.fill) < need:
			d.stats.RxFillRingEmpty++
			continue
		case len(d.rx)+need > d.ring:
			d.stats.RxRingFull++
			continue
		}
		for i := 0; i < need; i++ {
			addr := d.fill[i] + Headroom
			piece := f[min(uint64(i)*room, uint64(len(f))):min(uint64(i+1)*room, uint64(len(f)))]
			copy(mem[addr:], piece)
			desc := unix.XDPDesc{Addr: addr, Len: uint32(len(piece))}
			if i < need-1 {
				desc.Options = unix.XDP_PKT_CONTD
			}
			d.rx = append(d.rx, desc)
		}
		d.fill = d.fill[need:]
		d.injected += uint64(need)
		taken++
	}
	select {
	case d.notify <- struct{}{}:
	default:
	}
	return taken
}

// cameBack records that the receive goroutine finished what it took
// before (d.mu held).
func (d *Device) cameBack() {
	if d.handled != d.consumed {
		d.handled = d.consumed
		d.cond.Broadcast()
	}
}

// Refill posts free frames on the fill ring, as many as fit, and returns
// how many it posted.
func (d *Device) Refill() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cameBack()
	if d.closed {
		return 0
	}
	want := d.ring - len(d.fill)
	if want <= 0 {
		return 0
	}
	n := d.region.Post(d.fillIdx[:want])
	for _, f := range d.fillIdx[:n] {
		d.fill = append(d.fill, d.region.FrameAddr(f))
	}
	return n
}

// Receive takes up to len(dst) received descriptors; each frame is then
// the caller's, to Pin or Free through the region.
func (d *Device) Receive(dst []unix.XDPDesc) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cameBack()
	n := copy(dst, d.rx)
	d.rx = append(d.rx[:0], d.rx[n:]...)
	d.consumed += uint64(n)
	d.region.Unpost(n)
	return n
}

// FillPending is how many frames wait on the fill ring.
func (d *Device) FillPending() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.fill)
}

// Wait blocks until the RX ring has descriptors, Wake is called, or
// timeout (milliseconds, -1 for none) passes.
func (d *Device) Wait(timeout int) error {
	d.mu.Lock()
	d.cameBack()
	ready := len(d.rx) > 0 || d.closed
	d.mu.Unlock()
	if ready {
		return nil
	}
	if timeout < 0 {
		<-d.notify
		return nil
	}
	if d.timer == nil {
		d.timer = time.NewTimer(time.Duration(timeout) * time.Millisecond)
	} else {
		d.timer.Reset(time.Duration(timeout) * time.Millisecond)
	}
	select {
	case <-d.notify:
		d.timer.Stop()
	case <-d.timer.C:
	}
	return nil
}

// Wake interrupts Wait from another goroutine.
func (d *Device) Wake() {
	select {
	case d.notify <- struct{}{}:
	default:
	}
}

// SetTXClaim sets the claim completed addresses go through (nil: every
// address is a TX frame).
func (d *Device) SetTXClaim(claim umem.TXClaim) {
	d.txMu.Lock()
	d.claim = claim
	d.txMu.Unlock()
}

// TXAcquire takes up to len(dst) free TX frames and returns how many.
func (d *Device) TXAcquire(dst []uint64) int {
	d.txMu.Lock()
	defer d.txMu.Unlock()
	if len(d.txFree) < len(dst) {
		d.reclaimLocked()
	}
	n := min(len(dst), len(d.txFree))
	if n == 0 {
		d.txDrops++
		return 0
	}
	copy(dst, d.txFree[len(d.txFree)-n:])
	d.txFree = d.txFree[:len(d.txFree)-n]
	return n
}

// TXFrame returns the bytes of the TX frame at addr.
func (d *Device) TXFrame(addr uint64) []byte { return d.region.Bytes()[addr : addr+d.fs] }

// TXRelease gives TX frames back unsent.
func (d *Device) TXRelease(addrs ...uint64) {
	d.txMu.Lock()
	for _, a := range addrs {
		d.txFree = append(d.txFree, a&^(d.fs-1))
	}
	d.txMu.Unlock()
}

// TXReclaim takes the completed addresses, passing each to the claim
// first, and returns how many it took.
func (d *Device) TXReclaim() int {
	d.txMu.Lock()
	defer d.txMu.Unlock()
	return d.reclaimLocked()
}

func (d *Device) reclaimLocked() int {
	n := len(d.comp)
	for _, a := range d.comp {
		if d.claim != nil && d.claim(a) {
			continue
		}
		d.txFree = append(d.txFree, a&^(d.fs-1))
	}
	d.comp = d.comp[:0]
	return n
}

// TXProduce queues whole packets of descs on the TX ring, sending what the
// ring holds (as a kick would) when it lacks room, and returns how many
// descriptors it queued, as umem.Socket.TXProduce does.
func (d *Device) TXProduce(descs []unix.XDPDesc) (int, error) {
	if len(descs) > 0 && descs[len(descs)-1].Options&unix.XDP_PKT_CONTD != 0 {
		return 0, fmt.Errorf("umemtest tx: the last descriptor continues a packet: %w", unix.EINVAL)
	}
	done := 0
	for done < len(descs) {
		d.txMu.Lock()
		room := d.txRing - len(d.txQueue)
		k := wholePackets(descs[done:], room)
		if k > 0 {
			d.txQueue = append(d.txQueue, descs[done:done+k]...)
			done += k
			d.txMu.Unlock()
			continue
		}
		d.txMu.Unlock()
		if room == d.txRing {
			return done, fmt.Errorf("umemtest tx: a packet of more than %d descriptors: %w", room, unix.EMSGSIZE)
		}
		d.send()
	}
	return done, nil
}

// TXKick sends what the TX ring holds and reclaims the completions.
func (d *Device) TXKick() error {
	d.send()
	d.TXReclaim()
	return nil
}

// send hands every queued packet to the transmit callback and completes
// its addresses.
func (d *Device) send() {
	d.kickMu.Lock()
	defer d.kickMu.Unlock()
	d.txMu.Lock()
	q := d.txQueue
	d.txQueue, d.txSpare = d.txSpare[:0], nil
	d.txMu.Unlock()
	defer func() {
		d.txMu.Lock()
		d.txSpare = q[:0]
		d.txMu.Unlock()
	}()
	if len(q) == 0 {
		return
	}
	mem := d.region.Bytes()
	invalid := uint64(0)
	start := 0
	for i, desc := range q {
		if desc.Options&unix.XDP_PKT_CONTD != 0 {
			continue
		}
		pkt := q[start : i+1]
		start = i + 1
		if len(pkt) > 1 && d.noChains {
			invalid += uint64(len(pkt))
			continue
		}
		d.buf = d.buf[:0]
		for _, p := range pkt {
			d.buf = append(d.buf, mem[p.Addr:p.Addr+uint64(p.Len)]...)
		}
		if fn := d.transmit.Load(); fn != nil {
			(*fn)(d.buf)
		}
	}
	d.txMu.Lock()
	for _, desc := range q {
		d.comp = append(d.comp, desc.Addr)
	}
	d.txMu.Unlock()
	if invalid > 0 {
		d.mu.Lock()
		d.stats.TxInvalidDescs += invalid
		d.mu.Unlock()
	}
}

// SetTXBudget does nothing: every kick sends everything.
func (d *Device) SetTXBudget(int) error { return nil }

// TXProbeMultiBuffer reports whether the device takes chains (see
// Options.NoChains); it sends nothing. frame is checked as the socket
// checks it.
func (d *Device) TXProbeMultiBuffer(frame []byte, _ time.Duration) (bool, error) {
	if half := int(d.fs / 2); len(frame) < 60 || len(frame) > half {
		return false, fmt.Errorf("umemtest tx probe: frame of %d bytes (want 60 to %d): %w", len(frame), half, unix.EINVAL)
	}
	return !d.noChains, nil
}

// Stats returns the fake's counters: drops of injected frames, invalid TX
// chains, TX drops.
func (d *Device) Stats() (umem.Stats, error) {
	d.mu.Lock()
	st := d.stats
	d.mu.Unlock()
	d.txMu.Lock()
	st.TxDrops = d.txDrops
	d.txMu.Unlock()
	return st, nil
}

// Close gives every frame the device holds back to the region — posted,
// received but not taken, and its TX frames — and ends any Inject or Wait
// under way. The receive goroutine must have stopped.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	back := make([]uint32, 0, len(d.fill)+len(d.rx))
	for _, a := range d.fill {
		back = append(back, d.region.FrameOf(a))
	}
	for _, desc := range d.rx {
		back = append(back, d.region.FrameOf(desc.Addr))
	}
	d.fill, d.rx = nil, nil
	d.region.Unpost(len(back))
	d.region.Free(back...)
	d.cond.Broadcast()
	d.mu.Unlock()
	d.Wake()

	d.txMu.Lock()
	defer d.txMu.Unlock()
	if !d.txDone && d.txN > 0 {
		d.region.ReleaseSpan(d.txFirst, d.txN)
	}
	d.txDone = true
	return nil
}

// wholePackets returns how many of descs, at most room and ending on a
// packet boundary, may be queued.
func wholePackets(descs []unix.XDPDesc, room int) int {
	k := 0
	for i := 0; i < len(descs) && i < room; i++ {
		if descs[i].Options&unix.XDP_PKT_CONTD == 0 {
			k = i + 1
		}
	}
	return k
}

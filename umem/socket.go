package umem

import (
	"errors"
	"fmt"
	"math/bits"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// SocketConfig configures one AF_XDP socket.
type SocketConfig struct {
	// Queue is the interface RX queue to bind.
	Queue int
	// Shared, if set, is a socket already bound on the same interface whose
	// UMEM registration this socket shares (XDP_SHARED_UMEM): one region,
	// one frame space, and each socket with its own fill and completion
	// rings, as for one socket per RX queue.
	Shared *Socket
	// RingSize is the number of fill and RX descriptors (power of two);
	// 0 means 2048 or half the frame count, whichever is smaller.
	RingSize uint32
	// TXRingSize is the number of TX and completion descriptors (power of
	// two); 0 means 512.
	TXRingSize uint32
	// TXFrames is how many frames the socket reserves for sending; 0 means
	// 256.
	TXFrames int
	// ZeroCopy requests zero-copy mode; the default is copy mode, which
	// every driver supports (veth rejects zero-copy with EOPNOTSUPP).
	ZeroCopy bool
	// NoNeedWakeup turns off XDP_USE_NEED_WAKEUP.
	NoNeedWakeup bool
	// SG binds with XDP_USE_SG: a packet larger than a frame arrives as
	// several descriptors, all but the last flagged XDP_PKT_CONTD (jumbo
	// frames; the XDP program must be multi-buffer capable).
	SG bool
	// BindRetry is how long a bind that fails with EBUSY (a previous socket
	// on the queue is still being torn down) is retried; 0 means 2s. When
	// another process holds the interface's XDP program the bind fails at
	// once with an *InUseError naming it.
	BindRetry time.Duration
}

// Stats are a socket's kernel counters (struct xdp_statistics) and its two
// userspace TX counters.
type Stats struct {
	// RxDropped counts packets the kernel dropped for this socket.
	RxDropped uint64
	// RxInvalidDescs counts invalid RX descriptors.
	RxInvalidDescs uint64
	// TxInvalidDescs counts invalid TX descriptors.
	TxInvalidDescs uint64
	// RxRingFull counts packets dropped because the RX ring was full.
	RxRingFull uint64
	// RxFillRingEmpty counts packets that found the fill ring empty: the
	// dmabuf-exhausted drops.
	RxFillRingEmpty uint64
	// TxRingEmpty counts TX wakeups that found the TX ring empty.
	TxRingEmpty uint64

	// TxDrops (counted in userspace, not by the kernel) counts TX
	// descriptors not queued for lack of a free TX frame or ring slot.
	TxDrops uint64
	// KickStalls (userspace) counts TXKick calls that gave up with
	// descriptors the kernel had not taken.
	KickStalls uint64
}

// Socket is one AF_XDP socket bound to one queue, with the region registered
// as its UMEM. Refill, Receive, FillPending and Wait belong to one receive
// goroutine; the TX methods (tx.go) are safe for concurrent use.
type Socket struct {
	fd      int
	efd     int
	region  *Region
	ifindex int
	queue   int

	maps [4][]byte

	Fill FillRing
	RX   RXRing
	tx   TXRing
	comp CompletionRing

	posted    []bool // frame → on the fill ring or in the kernel; receive goroutine only
	fillAddrs []uint64
	fillIdx   []uint32

	txMu    sync.Mutex
	txFree  []uint64 // guarded by txMu, as are tx, comp, compBuf and claim
	txAll   []uint32
	compBuf []uint64
	claim   TXClaim
	txDrops atomic.Uint64

	noNeedWakeup bool
	kickStalls   atomic.Uint64 // TXKick gave up with descriptors left

	closeOnce sync.Once
}

// NewSocket creates an AF_XDP socket, registers region as its UMEM, maps the
// rings and binds it to (ifindex, cfg.Queue). The calling thread's network
// namespace is the one the interface is looked up in.
func NewSocket(region *Region, ifindex int, cfg SocketConfig) (_ *Socket, err error) {
	if cfg.RingSize == 0 {
		// At most half the frames wait on the fill ring; the rest carry
		// undelivered payload, outstanding tokens and TX.
		cfg.RingSize = min(2048, uint32(1)<<(31-bits.LeadingZeros32(region.nframes/2)))
	}
	if cfg.TXRingSize == 0 {
		cfg.TXRingSize = 512
	}
	if cfg.TXFrames == 0 {
		cfg.TXFrames = 256
	}
	if cfg.BindRetry == 0 {
		cfg.BindRetry = 2 * time.Second
	}
	if bits.OnesCount32(cfg.RingSize) != 1 || bits.OnesCount32(cfg.TXRingSize) != 1 {
		return nil, fmt.Errorf("xsk: ring sizes %d/%d must be powers of two: %w", cfg.RingSize, cfg.TXRingSize, unix.EINVAL)
	}
	if uint64(cfg.TXFrames)+uint64(cfg.RingSize) > uint64(region.nframes) {
		return nil, fmt.Errorf("xsk: umem of %d frames is too small for a %d-entry fill ring and %d TX frames: %w",
			region.nframes, cfg.RingSize, cfg.TXFrames, unix.EINVAL)
	}
	s := &Socket{region: region, ifindex: ifindex, queue: cfg.Queue, fd: -1, efd: -1}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if s.fd, err = unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0); err != nil {
		return nil, fmt.Errorf("xsk: socket(AF_XDP): %w", err)
	}
	if s.efd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return nil, fmt.Errorf("xsk: eventfd: %w", err)
	}
	if cfg.Shared != nil {
		if cfg.Shared.region != region {
			return nil, fmt.Errorf("xsk: shared umem of another region: %w", unix.EINVAL)
		}
	} else if err = registerUMEM(s.fd, region.mem, region.frameSize, 0); err != nil {
		return nil, fmt.Errorf("xsk: register umem (%d bytes): %w", len(region.mem), err)
	}
	for _, o := range []struct {
		opt int
		n   uint32
	}{
		{unix.XDP_UMEM_FILL_RING, cfg.RingSize},
		{unix.XDP_UMEM_COMPLETION_RING, cfg.TXRingSize},
		{unix.XDP_RX_RING, cfg.RingSize},
		{unix.XDP_TX_RING, cfg.TXRingSize},
	} {
		if err = unix.SetsockoptInt(s.fd, unix.SOL_XDP, o.opt, int(o.n)); err != nil {
			return nil, fmt.Errorf("xsk: set ring size %d (option %d): %w", o.n, o.opt, err)
		}
	}
	off, err := mmapOffsets(s.fd)
	if err != nil {
		return nil, fmt.Errorf("xsk: mmap offsets: %w", err)
	}
	mapRing := func(i int, pgoff int64, ro unix.XDPRingOffset, n uint32, descSize int) ([]byte, error) {
		m, err := unix.Mmap(s.fd, pgoff, int(ro.Desc)+int(n)*descSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
		if err != nil {
			return nil, fmt.Errorf("xsk: mmap ring at page offset %#x: %w", pgoff, err)
		}
		s.maps[i] = m
		return m, nil
	}
	m, err := mapRing(0, unix.XDP_UMEM_PGOFF_FILL_RING, off.Fr, cfg.RingSize, sizeofAddrDesc)
	if err != nil {
		return nil, err
	}
	s.Fill = FillRing{ring: ringView(m, off.Fr, cfg.RingSize), descs: addrDescs(m, off.Fr, cfg.RingSize)}
	if m, err = mapRing(1, unix.XDP_PGOFF_RX_RING, off.Rx, cfg.RingSize, sizeofXDPDesc); err != nil {
		return nil, err
	}
	s.RX = RXRing{ring: ringView(m, off.Rx, cfg.RingSize), descs: xdpDescs(m, off.Rx, cfg.RingSize)}
	if m, err = mapRing(2, unix.XDP_PGOFF_TX_RING, off.Tx, cfg.TXRingSize, sizeofXDPDesc); err != nil {
		return nil, err
	}
	s.tx = TXRing{ring: ringView(m, off.Tx, cfg.TXRingSize), descs: xdpDescs(m, off.Tx, cfg.TXRingSize)}
	if m, err = mapRing(3, unix.XDP_UMEM_PGOFF_COMPLETION_RING, off.Cr, cfg.TXRingSize, sizeofAddrDesc); err != nil {
		return nil, err
	}
	s.comp = CompletionRing{ring: ringView(m, off.Cr, cfg.TXRingSize), descs: addrDescs(m, off.Cr, cfg.TXRingSize)}

	// Reserve TX frames.
	s.txAll = make([]uint32, cfg.TXFrames)
	if got := region.alloc(s.txAll); got != cfg.TXFrames {
		s.txAll = s.txAll[:got]
		return nil, fmt.Errorf("xsk: only %d free frames for %d TX frames: %w", got, cfg.TXFrames, unix.ENOMEM)
	}
	region.tx.Add(int64(cfg.TXFrames))
	s.txFree = make([]uint64, 0, cfg.TXFrames)
	for _, f := range s.txAll {
		s.txFree = append(s.txFree, region.FrameAddr(f))
	}
	s.compBuf = make([]uint64, cfg.TXRingSize)
	s.posted = make([]bool, region.nframes)
	s.fillAddrs = make([]uint64, cfg.RingSize)
	s.fillIdx = make([]uint32, cfg.RingSize)

	// Post the fill ring before binding so the first packets find frames.
	s.Refill()

	flags := uint16(unix.XDP_COPY)
	if cfg.ZeroCopy {
		flags = unix.XDP_ZEROCOPY
	}
	if !cfg.NoNeedWakeup {
		flags |= unix.XDP_USE_NEED_WAKEUP
	}
	if cfg.SG {
		flags |= unix.XDP_USE_SG
	}
	s.noNeedWakeup = cfg.NoNeedWakeup
	sa := &unix.SockaddrXDP{Flags: flags, Ifindex: uint32(ifindex), QueueID: uint32(cfg.Queue)}
	if cfg.Shared != nil {
		// Mode flags are inherited from the socket that registered the
		// UMEM; only the sharing flag may be given.
		sa.Flags = unix.XDP_SHARED_UMEM
		sa.SharedUmemFD = uint32(cfg.Shared.fd)
	}
	// EBUSY: another AF_XDP socket has the queue. Right after a socket on
	// it closed, that can be the closed one, which the kernel releases a
	// little later, so retry for a while — unless another process holds
	// the interface's XDP program: then the queue is its, and the error
	// says whose at once.
	deadline := time.Now().Add(cfg.BindRetry)
	for first := true; ; first = false {
		err = unix.Bind(s.fd, sa)
		if !errors.Is(err, unix.EBUSY) {
			break
		}
		if first {
			if h, herr := FindHolder(ifindex); herr == nil && h.PID != 0 && h.PID != os.Getpid() {
				err = &InUseError{Holder: h, Err: err}
				break
			}
		}
		if time.Now().After(deadline) {
			err = inUse(ifindex, err)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return nil, fmt.Errorf("xsk: bind ifindex %d queue %d: %w", ifindex, cfg.Queue, err)
	}
	return s, nil
}

// FD is the socket's file descriptor (for the XDP program's XSKMAP).
func (s *Socket) FD() int { return s.fd }

// Queue is the bound queue id.
func (s *Socket) Queue() int { return s.queue }

// Region is the socket's UMEM.
func (s *Socket) Region() *Region { return s.region }

// Refill posts free frames on the fill ring, as many as fit, and returns how
// many it posted. Receive goroutine only.
func (s *Socket) Refill() int {
	want := s.Fill.Free()
	if want == 0 {
		return 0
	}
	n := s.region.Post(s.fillIdx[:min(want, len(s.fillIdx))])
	if n == 0 {
		return 0
	}
	for i := 0; i < n; i++ {
		f := s.fillIdx[i]
		s.posted[f] = true
		s.fillAddrs[i] = s.region.FrameAddr(f)
	}
	s.Fill.Produce(s.fillAddrs[:n])
	s.Fill.Publish()
	return n
}

// Receive takes up to len(dst) received descriptors. Each descriptor's frame
// is then owned by the caller, which must Pin it or Free it (through the
// region). Receive goroutine only.
func (s *Socket) Receive(dst []unix.XDPDesc) int {
	n := s.RX.Consume(dst)
	for i := 0; i < n; i++ {
		s.posted[s.region.FrameOf(dst[i].Addr)] = false
	}
	if n > 0 {
		s.region.Unpost(n)
	}
	return n
}

// Packet returns the bytes a descriptor points at (inside the region).
func (s *Socket) Packet(d unix.XDPDesc) []byte {
	return s.region.mem[d.Addr : d.Addr+uint64(d.Len)]
}

// Wait blocks until the RX ring has descriptors, Wake is called, or timeout
// (milliseconds, -1 for none) passes. With need-wakeup it also kicks the
// kernel when the fill ring asks for it.
func (s *Socket) Wait(timeout int) error {
	fds := [2]unix.PollFd{{Fd: int32(s.fd), Events: unix.POLLIN}, {Fd: int32(s.efd), Events: unix.POLLIN}}
	_, err := unix.Poll(fds[:], timeout)
	if err != nil && !errors.Is(err, unix.EINTR) {
		return fmt.Errorf("xsk: poll: %w", err)
	}
	if fds[1].Revents&unix.POLLIN != 0 {
		var b [8]byte
		unix.Read(s.efd, b[:])
	}
	return nil
}

// FillPending is how many frames the fill ring holds that the kernel has
// not taken yet; 0 means an arriving packet finds no frame and is dropped
// (Stats.RxFillRingEmpty). Receive goroutine only.
func (s *Socket) FillPending() int { return s.Fill.Pending() }

// Wake interrupts Wait from another goroutine.
func (s *Socket) Wake() {
	b := [8]byte{1}
	unix.Write(s.efd, b[:])
}

// Stats reads the kernel's counters for the socket. The userspace counters
// are filled in even when the kernel's cannot be read (a closed socket).
func (s *Socket) Stats() (Stats, error) {
	own := Stats{TxDrops: s.txDrops.Load(), KickStalls: s.kickStalls.Load()}
	st, err := getStatistics(s.fd)
	if err != nil {
		return own, fmt.Errorf("xsk: statistics: %w", err)
	}
	return Stats{
		RxDropped: st.RxDropped, RxInvalidDescs: st.RxInvalidDescs, TxInvalidDescs: st.TxInvalidDescs,
		RxRingFull: st.RxRingFull, RxFillRingEmpty: st.RxFillRingEmptyDescs, TxRingEmpty: st.TxRingEmptyDescs,
		TxDrops: own.TxDrops, KickStalls: own.KickStalls,
	}, nil
}

// Close unmaps the rings, closes the socket and returns its posted and TX
// frames to the region. The receive goroutine must have stopped.
func (s *Socket) Close() error {
	var err error
	s.closeOnce.Do(func() {
		for i, m := range s.maps {
			if m != nil {
				unix.Munmap(m)
				s.maps[i] = nil
			}
		}
		if s.fd >= 0 {
			err = unix.Close(s.fd)
			s.fd = -1
		}
		if s.efd >= 0 {
			unix.Close(s.efd)
			s.efd = -1
		}
		var back []uint32
		for f, p := range s.posted {
			if p {
				back = append(back, uint32(f))
				s.posted[f] = false
			}
		}
		s.region.Unpost(len(back))
		if len(s.txAll) > 0 {
			s.region.tx.Add(-int64(len(s.txAll)))
			back = append(back, s.txAll...)
			s.txAll = nil
		}
		s.region.putFree(back)
	})
	return err
}

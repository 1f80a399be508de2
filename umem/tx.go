package umem

import (
	"errors"
	"fmt"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// This file holds the socket's transmit API and the contiguous spans that
// back emulated TX dmabufs.
//
// # Transmit
//
// One API serves single frames and chains alike:
//
//   - TXAcquire takes free TX frames (UMEM addresses of frames the socket
//     reserved), TXFrame gives a frame's bytes and TXRelease gives frames
//     back unsent;
//   - TXProduce queues descriptors on the TX ring, whole packets only, and
//     publishes them; it wakes the kernel only when the ring lacks room;
//   - TXKick wakes the kernel until it has taken everything queued, then
//     reclaims completions; TXReclaim takes completions without a kick.
//
// A packet may be a chain of descriptors: every descriptor but the last
// carries XDP_PKT_CONTD, and the kernel joins them into one frame (Linux
// 6.6+; TXProbeMultiBuffer tells). A stack can put the headers in a TX
// frame and point the following descriptors at payload in a span, so no
// payload byte is copied in user space (in copy mode the kernel still
// copies each descriptor into the skb, as it copies single-buffer frames).
// Each descriptor's address comes back on the completion ring; addresses
// that are not TX frames belong to the caller, which says so through the
// socket's TXClaim (SetTXClaim). Without one, every completed address is
// taken for a TX frame.
//
// # Spans
//
// A devmem TX binding is a span of contiguous frames taken off the free
// list (ReserveSpan): the application writes payload there and the stack
// sends it by UMEM address, so the span must be part of the UMEM the socket
// registered. Spans count as TX frames in Snapshot until ReleaseSpan.

// TXClaim is called, with the socket's TX lock held, for every address that
// comes back on the completion ring. It returns true when the address is
// the caller's (a payload descriptor in a span); otherwise the address is a
// TX frame and goes back to the socket's free TX frames. It must not call
// the socket's TX methods.
type TXClaim func(addr uint64) bool

// maxKicks bounds the sendto calls one TXKick makes while the kernel
// drains the ring (copy mode sends at most max_tx_budget, 32 by default,
// descriptors per call).
const maxKicks = 4096

// maxIdleKicks bounds the kicks in a row that see the kernel take nothing,
// completions reclaimed in between, before a kick gives up (counted in
// Stats.KickStalls).
const maxIdleKicks = 8

// ReserveSpan takes n contiguous frames off the free list and returns the
// first. It prefers the highest-numbered run (the frames a fresh socket's
// fill ring did not take). ENOMEM means no run of n free frames exists.
func (r *Region) ReserveSpan(n uint32) (first uint32, err error) {
	if n == 0 || n > r.nframes {
		return 0, fmt.Errorf("umem span of %d frames (region has %d): %w", n, r.nframes, unix.EINVAL)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	free := make([]bool, r.nframes)
	for _, f := range r.free {
		free[f] = true
	}
	found := false
	run := uint32(0)
	for f := int64(r.nframes) - 1; f >= 0; f-- {
		if !free[f] {
			run = 0
			continue
		}
		if run++; run == n {
			first, found = uint32(f), true
			break
		}
	}
	if !found {
		return 0, fmt.Errorf("umem span: no %d contiguous free frames (%d free of %d): %w", n, len(r.free), r.nframes, unix.ENOMEM)
	}
	kept := r.free[:0]
	for _, f := range r.free {
		if f < first || f >= first+n {
			kept = append(kept, f)
		}
	}
	r.free = kept
	r.tx.Add(int64(n))
	return first, nil
}

// ReserveSpanAt takes frames first to first+n-1 off the free list, as
// ReserveSpan does, for a caller that needs the span at a known place (a
// file part of the region: FileBacking). A frame that is not free is EBUSY
// and nothing is reserved; call it before sockets post frames.
func (r *Region) ReserveSpanAt(first, n uint32) error {
	if n == 0 || first >= r.nframes || n > r.nframes-first {
		return fmt.Errorf("umem span of %d frames at %d (region has %d): %w", n, first, r.nframes, unix.EINVAL)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	kept := make([]uint32, 0, len(r.free))
	for _, f := range r.free {
		if f < first || f >= first+n {
			kept = append(kept, f)
		}
	}
	if len(r.free)-len(kept) != int(n) {
		return fmt.Errorf("umem span: %d of frames %d to %d are not free: %w", int(n)-(len(r.free)-len(kept)), first, first+n-1, unix.EBUSY)
	}
	r.free = kept
	r.tx.Add(int64(n))
	return nil
}

// ReleaseSpan returns a span from ReserveSpan to the free list. Nothing may
// still be queued for sending from it.
func (r *Region) ReleaseSpan(first, n uint32) {
	fs := make([]uint32, n)
	for i := range fs {
		fs[i] = first + uint32(i)
	}
	r.tx.Add(-int64(n))
	r.putFree(fs)
}

// SetTXBudget sets how many descriptors one kick may send
// (XDP_MAX_TX_SKB_BUDGET, Linux 6.17+; the default is 32); 0 means the TX
// ring's size.
func (s *Socket) SetTXBudget(n int) error {
	if n == 0 {
		n = int(s.tx.size)
	}
	if err := unix.SetsockoptInt(s.fd, unix.SOL_XDP, unix.XDP_MAX_TX_SKB_BUDGET, n); err != nil {
		return fmt.Errorf("xsk: tx budget %d: %w", n, err)
	}
	return nil
}

// SetTXClaim sets the claim completed addresses go through (nil: every
// address is a TX frame). Completions reclaimed from then on use it.
func (s *Socket) SetTXClaim(claim TXClaim) {
	s.txMu.Lock()
	s.claim = claim
	s.txMu.Unlock()
}

// TXAcquire takes up to len(dst) free TX frames (their UMEM addresses),
// reclaiming completions first when fewer are free, and returns how many
// it took (none is counted in Stats.TxDrops). Each must be queued with
// TXProduce or given back with TXRelease.
func (s *Socket) TXAcquire(dst []uint64) int {
	s.txMu.Lock()
	defer s.txMu.Unlock()
	if len(s.txFree) < len(dst) {
		s.reclaimLocked()
	}
	n := min(len(dst), len(s.txFree))
	if n == 0 {
		s.txDrops.Add(1)
		return 0
	}
	copy(dst, s.txFree[len(s.txFree)-n:])
	s.txFree = s.txFree[:len(s.txFree)-n]
	return n
}

// TXFrame returns the bytes of the TX frame at addr.
func (s *Socket) TXFrame(addr uint64) []byte {
	return s.region.mem[addr : addr+uint64(s.region.frameSize)]
}

// TXRelease gives TX frames from TXAcquire back unsent.
func (s *Socket) TXRelease(addrs ...uint64) {
	s.txMu.Lock()
	for _, a := range addrs {
		s.txFree = append(s.txFree, a&^uint64(s.region.frameSize-1))
	}
	s.txMu.Unlock()
}

// TXReclaim takes what the completion ring holds, passing each address to
// the claim first, and returns how many addresses it took.
func (s *Socket) TXReclaim() int {
	s.txMu.Lock()
	defer s.txMu.Unlock()
	return s.reclaimLocked()
}

func (s *Socket) reclaimLocked() int {
	total := 0
	for {
		n := s.comp.Consume(s.compBuf)
		for _, a := range s.compBuf[:n] {
			if s.claim != nil && s.claim(a) {
				continue
			}
			s.txFree = append(s.txFree, a&^uint64(s.region.frameSize-1))
		}
		total += n
		if n < len(s.compBuf) {
			return total
		}
	}
}

// TXProduce queues descs, whole packets only (a packet ends at a
// descriptor without XDP_PKT_CONTD), and publishes them without waking the
// kernel, unless the ring lacks room: then it kicks to make some. It
// returns how many descriptors it queued: fewer than len(descs) when the
// ring stayed full (the rest counted in Stats.TxDrops), and always a whole
// number of packets. The caller owns what was not queued and must TXKick
// for the rest to go out. A packet with more descriptors than the ring
// holds, or descs ending inside a packet, fails with EMSGSIZE / EINVAL.
func (s *Socket) TXProduce(descs []unix.XDPDesc) (int, error) {
	if len(descs) > 0 && descs[len(descs)-1].Options&unix.XDP_PKT_CONTD != 0 {
		return 0, fmt.Errorf("xsk tx: the last descriptor continues a packet: %w", unix.EINVAL)
	}
	s.txMu.Lock()
	defer s.txMu.Unlock()
	done := 0
	stuck := 0
	var err error
	for done < len(descs) && stuck < 3 {
		room := int(s.tx.prodFree(uint32(len(descs) - done)))
		k := wholePackets(descs[done:], room)
		if k == 0 {
			if room == int(s.tx.size) {
				return done, fmt.Errorf("xsk tx: a packet of more than %d descriptors: %w", room, unix.EMSGSIZE)
			}
			if kerr := s.kickDrainLocked(); kerr != nil {
				err = fmt.Errorf("xsk tx: kick: %w", kerr)
				break
			}
			if int(s.tx.prodFree(s.tx.size)) == room {
				stuck++
			}
			continue
		}
		stuck = 0
		s.tx.Produce(descs[done : done+k])
		s.tx.Publish()
		done += k
	}
	if done < len(descs) {
		s.txDrops.Add(uint64(len(descs) - done))
	}
	return done, err
}

// TXKick wakes the kernel until it has taken everything queued so far,
// then reclaims completions: in copy mode one sendto sends a bounded batch
// (and answers EAGAIN with descriptors left), so a single kick could
// strand an ACK or a FIN until some later kick that may never come. When
// the kernel takes nothing, completions are reclaimed (it stops on a full
// completion ring) and the kick retries a few times before it gives up
// (counted in Stats.KickStalls). In copy mode the kick runs the transmit
// (and on veth the peer's receive) inside the syscall; it takes no lock
// meanwhile, so others may queue more. Safe from any goroutine.
func (s *Socket) TXKick() error {
	s.txMu.Lock()
	target := s.tx.cachedProd
	s.txMu.Unlock()
	var err error
	idle := 0
	for i := 0; i < maxKicks && idle < maxIdleKicks; i++ {
		before := s.tx.consumer.Load()
		if int32(target-before) <= 0 {
			break
		}
		if !s.noNeedWakeup && !s.tx.needWakeup() {
			break // the driver consumes on its own (zero-copy)
		}
		if err = kickTX(s.fd); err != nil {
			err = fmt.Errorf("xsk tx: kick: %w", err)
			break
		}
		if s.tx.consumer.Load() == before {
			// No progress: the completion ring may be full. Reclaim,
			// then give the kernel a moment.
			s.TXReclaim()
			idle++
			runtime.Gosched()
		} else {
			idle = 0
		}
	}
	if err == nil && idle >= maxIdleKicks {
		s.kickStalls.Add(1)
	}
	s.TXReclaim()
	return err
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

// kickDrainLocked kicks until the kernel has consumed every queued
// descriptor or stops making progress, reclaiming completions in between
// (the kernel stops when the completion ring is full).
func (s *Socket) kickDrainLocked() error {
	idle := 0
	for i := 0; i < maxKicks && idle < 2; i++ {
		before := s.tx.consumer.Load()
		if before == s.tx.cachedProd {
			return nil
		}
		if err := kickTX(s.fd); err != nil {
			return err
		}
		s.reclaimLocked()
		if s.tx.consumer.Load() == before {
			idle++ // the completion ring may have been full: retry once
		} else {
			idle = 0
		}
	}
	return nil
}

// TXProbeMultiBuffer sends frame (a complete Ethernet frame of at least 60
// bytes) as a two-descriptor chain in one TX frame and reports whether the
// kernel accepted the chain: both addresses completed and no descriptor was
// counted invalid. It is meant for one call before a caller starts sending
// chains; completions of earlier single-buffer frames are reclaimed on the
// way. A kernel without multi-buffer TX drops the chain as invalid.
func (s *Socket) TXProbeMultiBuffer(frame []byte, timeout time.Duration) (bool, error) {
	half := s.region.frameSize / 2
	if len(frame) < 60 || len(frame) > int(half) {
		return false, fmt.Errorf("xsk tx probe: frame of %d bytes (want 60 to %d): %w", len(frame), half, unix.EINVAL)
	}
	before, err := s.Stats()
	if err != nil {
		return false, err
	}
	var addr [1]uint64
	if s.TXAcquire(addr[:]) == 0 {
		return false, fmt.Errorf("xsk tx probe: no free TX frame: %w", unix.ENOBUFS)
	}
	a := addr[0]
	mem := s.TXFrame(a)
	// Header part at the frame start, the rest in the second half.
	copy(mem, frame[:14])
	copy(mem[half:], frame[14:])
	chain := []unix.XDPDesc{
		{Addr: a, Len: 14, Options: unix.XDP_PKT_CONTD},
		{Addr: a + uint64(half), Len: uint32(len(frame) - 14)},
	}
	s.txMu.Lock()
	defer s.txMu.Unlock()
	s.reclaimLocked()
	if s.tx.prodFree(2) < 2 {
		s.txFree = append(s.txFree, a)
		return false, fmt.Errorf("xsk tx probe: ring full: %w", unix.ENOBUFS)
	}
	s.tx.Produce(chain)
	s.tx.Publish()
	seen := 0
	owner := s.claim
	claim := func(c uint64) bool {
		if c == a || c == a+uint64(half) {
			seen++
			return true
		}
		return owner != nil && owner(c)
	}
	s.claim = claim
	defer func() { s.claim = owner }()
	deadline := time.Now().Add(timeout)
	for {
		if err := kickTX(s.fd); err != nil {
			return false, fmt.Errorf("xsk tx probe: kick: %w", err)
		}
		s.reclaimLocked()
		if seen == 2 {
			s.txFree = append(s.txFree, a)
			after, err := s.Stats()
			if err != nil {
				return false, err
			}
			return after.TxInvalidDescs == before.TxInvalidDescs, nil
		}
		after, err := s.Stats()
		if err != nil {
			return false, err
		}
		if after.TxInvalidDescs > before.TxInvalidDescs && s.tx.consumer.Load() == s.tx.cachedProd {
			// Rejected: the kernel released the descriptors without
			// completing them, so the frame is ours again.
			if seen == 0 {
				s.txFree = append(s.txFree, a)
			}
			return false, nil
		}
		if time.Now().After(deadline) {
			// Unknown: leave the frame out of the pool rather than
			// reuse memory the kernel may still read.
			return false, errors.New("xsk tx probe: no completion")
		}
		time.Sleep(time.Millisecond)
	}
}

package stack

import (
	"fmt"
	"hash/maphash"
	"net/netip"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// The emulation's RX queues are logical. An XSKMAP redirect can only reach
// the AF_XDP socket of the queue a packet arrived on, and on veth the
// sender's hash picks that queue, so steering cannot move packets between
// sockets. Instead every received TCP segment is assigned a logical queue
// in userspace — by the flow rules (ethtool -N ... action Q), else by the
// RSS spread (ethtool -X ... equal N) — and it is the logical queue whose
// binding decides whether the payload becomes dmabuf fragments or ordinary
// bytes. The interface's real queues (one socket and receive goroutine
// each) only spread the work. With one real queue per logical queue and a
// sender that hashes as the rules say, the two coincide.

// FlowRule steers a TCP flow to a logical RX queue, like an ethtool ntuple
// rule. Zero fields match anything.
type FlowRule struct {
	// Src is the peer's address.
	Src netip.Addr
	// SrcPort is the peer's port, DstPort the stack's.
	SrcPort, DstPort uint16
	// Queue is the logical RX queue the flow goes to.
	Queue int
}

func (r FlowRule) matches(key flowKey) bool {
	if r.Src.IsValid() && r.Src.As16() != key.raddr {
		return false
	}
	return (r.SrcPort == 0 || r.SrcPort == key.rport) && (r.DstPort == 0 || r.DstPort == key.lport)
}

// steering is the stack's flow-to-queue table.
type steering struct {
	mu       sync.Mutex
	rules    map[int]FlowRule // by rule id; guarded by mu
	order    []int            // rule ids, oldest first
	nextID   int
	channels int // logical RX queues
	rss      int // unsteered flows spread over queues [0, rss)
	gen      atomic.Uint64
	snap     atomic.Pointer[steerSnap]
	seed     maphash.Seed
}

type steerSnap struct {
	rules []FlowRule
	rss   int
}

func (st *steering) init(channels int) {
	st.rules = map[int]FlowRule{}
	st.channels = channels
	st.rss = channels
	st.seed = maphash.MakeSeed()
	st.publish()
}

func (st *steering) publish() {
	sn := &steerSnap{rss: st.rss}
	for _, id := range st.order {
		sn.rules = append(sn.rules, st.rules[id])
	}
	st.snap.Store(sn)
	st.gen.Add(1)
}

// queueOf returns the logical queue of fl, cached in the flow until the
// table changes.
func (st *steering) queueOf(fl *flow) int {
	g := st.gen.Load()
	if fl.steerGen.Load() == g {
		return int(fl.steered.Load())
	}
	sn := st.snap.Load()
	q := -1
	for _, r := range sn.rules {
		if r.matches(fl.key) {
			q = r.Queue
			break
		}
	}
	if q < 0 {
		var h maphash.Hash
		h.SetSeed(st.seed)
		h.Write(fl.key.raddr[:])
		h.WriteByte(byte(fl.key.rport))
		h.WriteByte(byte(fl.key.rport >> 8))
		h.WriteByte(byte(fl.key.lport))
		h.WriteByte(byte(fl.key.lport >> 8))
		q = int(h.Sum64() % uint64(max(sn.rss, 1)))
	}
	fl.steered.Store(int32(q))
	fl.steerGen.Store(g)
	return q
}

// Channels is the number of logical RX queues.
func (nic *NIC) Channels() int {
	s := nic.s
	s.steer.mu.Lock()
	defer s.steer.mu.Unlock()
	return s.steer.channels
}

// SetChannels changes the number of logical RX queues (ethtool -L), 1 to
// 64. It fails with EINVAL when a queue it would remove is bound to a
// dmabuf or targeted by a rule, as the kernel refuses to shrink channels
// under a memory provider.
func (nic *NIC) SetChannels(n int) error {
	s := nic.s
	if n < 1 || n > MaxChannels {
		return fmt.Errorf("set channels %d: want 1 to %d: %w", n, MaxChannels, unix.EINVAL)
	}
	s.steer.mu.Lock()
	defer s.steer.mu.Unlock()
	for q := n; q < s.steer.channels; q++ {
		if s.bound[q].Load() != nil {
			return fmt.Errorf("set channels %d: queue %d has a memory provider (dmabuf %d): %w", n, q, s.bound[q].Load().id, unix.EINVAL)
		}
	}
	for _, r := range s.steer.rules {
		if r.Queue >= n {
			return fmt.Errorf("set channels %d: a flow rule steers to queue %d: %w", n, r.Queue, unix.EINVAL)
		}
	}
	s.steer.channels = n
	s.steer.rss = min(s.steer.rss, n)
	s.steer.publish()
	return nil
}

// SetRSS spreads flows that no rule matches over logical queues [0, n)
// (ethtool -X IFACE equal N), keeping them off the queues at and above n.
// n beyond the channel count is EINVAL, as the kernel refuses an
// indirection table naming a missing queue.
func (nic *NIC) SetRSS(n int) error {
	s := nic.s
	s.steer.mu.Lock()
	defer s.steer.mu.Unlock()
	if n < 1 || n > s.steer.channels {
		return fmt.Errorf("set rss equal %d: %d channels: %w", n, s.steer.channels, unix.EINVAL)
	}
	s.steer.rss = n
	s.steer.publish()
	return nil
}

// AddFlowRule installs a rule and returns its id; rules match in the order
// they were added. A queue at or beyond the channel count is EINVAL, as a
// driver refuses an ntuple rule's ring (ethtool: "Cannot insert RX class
// rule: Invalid argument").
func (nic *NIC) AddFlowRule(r FlowRule) (int, error) {
	s := nic.s
	s.steer.mu.Lock()
	defer s.steer.mu.Unlock()
	if r.Queue < 0 || r.Queue >= s.steer.channels {
		return 0, fmt.Errorf("flow rule: queue %d out of %d: %w", r.Queue, s.steer.channels, unix.EINVAL)
	}
	id := s.steer.nextID
	s.steer.nextID++
	s.steer.rules[id] = r
	s.steer.order = append(s.steer.order, id)
	s.steer.publish()
	return id, nil
}

// DeleteFlowRule removes a rule; an unknown id is ENOENT.
func (nic *NIC) DeleteFlowRule(id int) error {
	s := nic.s
	s.steer.mu.Lock()
	defer s.steer.mu.Unlock()
	if _, ok := s.steer.rules[id]; !ok {
		return fmt.Errorf("flow rule %d: %w", id, unix.ENOENT)
	}
	delete(s.steer.rules, id)
	for i, x := range s.steer.order {
		if x == id {
			s.steer.order = append(s.steer.order[:i], s.steer.order[i+1:]...)
			break
		}
	}
	s.steer.publish()
	return nil
}

// bindingFor is the binding of logical queue q, or nil.
func (s *Stack) bindingFor(q int) *rxBinding {
	if q < 0 || q >= len(s.bound) {
		return nil
	}
	return s.bound[q].Load()
}

package stack

import (
	"encoding/binary"
	"sync"
	"sync/atomic"

	"github.com/xdevmem/xdevmem/umem"
)

// flowKey names a connection to the stack's single address.
type flowKey struct {
	raddr        [16]byte // IPv4 in IPv4-mapped form
	rport, lport uint16
}

// flow is one connection's fragment queue. The receive goroutine inserts,
// the reading goroutine consumes; mu serializes them.
type flow struct {
	key      flowKey
	mu       sync.Mutex
	fq       fragQueue
	attached bool        // accepted by a Conn
	dead     atomic.Bool // removed from the table
	// ourNext is our side's first sequence number after the SYN-ACK
	// (ISS+1), from the handshake's ACK (noteAckLocked); valid in state
	// ackSeen. The state is read without mu, and written under it.
	ourNext  atomic.Uint32
	ackState atomic.Uint32

	// steered caches the logical queue the flow is steered to, valid while
	// steerGen matches the steering table's generation.
	steered  atomic.Int32
	steerGen atomic.Uint64
}

// flowTable maps connections to their fragment queues. Entries are made when
// a SYN arrives (its sequence number fixes the stream's offsets) and removed
// when the connection closes.
type flowTable struct {
	mu       sync.RWMutex
	m        map[flowKey]*flow
	window   uint64
	maxFrags int
	// pending counts flows not accepted yet; written under mu, read
	// without it by the RX loop.
	pending atomic.Int32
}

// maxPendingFlows bounds flows that saw a SYN but were not accepted (a SYN
// flood must not grow the table without bound); past it the oldest-looking
// empty pending flows are evicted.
const maxPendingFlows = 4096

func (t *flowTable) init() { t.m = map[flowKey]*flow{} }

// syn records a connection attempt whose first payload byte has sequence
// number base. A fresh or not yet accepted flow restarts at base; an
// accepted one is left alone (the stack answers a stray SYN itself).
func (t *flowTable) syn(key flowKey, base uint32, unpin []uint32, c *counters) []uint32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.m[key]
	if f == nil {
		if t.pending.Load() >= maxPendingFlows {
			unpin = t.evictPendingLocked(unpin, c)
		}
		f = &flow{key: key}
		f.fq.window, f.fq.maxFrags = t.window, t.maxFrags
		f.fq.base = base
		t.m[key] = f
		t.pending.Add(1)
		c.flowsCreated.Add(1)
		return unpin
	}
	f.mu.Lock()
	if !f.attached && f.fq.base != base {
		unpin = f.fq.reset(base, unpin)
	}
	f.mu.Unlock()
	return unpin
}

// get finds a flow.
func (t *flowTable) get(key flowKey) *flow {
	t.mu.RLock()
	f := t.m[key]
	t.mu.RUnlock()
	return f
}

// attach marks the flow of an accepted connection; nil if no SYN was seen.
func (t *flowTable) attach(key flowKey) *flow {
	t.mu.Lock()
	defer t.mu.Unlock()
	f := t.m[key]
	if f == nil || f.attached {
		return nil
	}
	f.mu.Lock()
	f.attached = true
	f.mu.Unlock()
	t.pending.Add(-1)
	return f
}

// evictPendingLocked drops up to 64 pending flows, preferring ones that
// hold no payload (t.mu held).
func (t *flowTable) evictPendingLocked(unpin []uint32, c *counters) []uint32 {
	n := 0
	for k, f := range t.m { // map order: arbitrary, which is all we need
		if n == 64 {
			break
		}
		f.mu.Lock()
		if !f.attached && (f.fq.len() == 0 || int(t.pending.Load())-n > maxPendingFlows) {
			unpin = f.fq.drain(unpin)
			f.dead.Store(true)
			delete(t.m, k)
			n++
			c.flowsEvicted.Add(1)
		}
		f.mu.Unlock()
	}
	t.pending.Add(int32(-n))
	return unpin
}

// remove deletes f and returns the frames its queue still pinned.
func (t *flowTable) remove(f *flow, unpin []uint32) []uint32 {
	t.mu.Lock()
	if t.m[f.key] == f {
		delete(t.m, f.key)
		if !f.attached {
			t.pending.Add(-1)
		}
	}
	t.mu.Unlock()
	f.dead.Store(true)
	f.mu.Lock()
	unpin = f.fq.drain(unpin)
	f.mu.Unlock()
	return unpin
}

// removeUnaccepted deletes the flows of port lport that no Conn accepted.
func (t *flowTable) removeUnaccepted(lport uint16, r *umem.Region) {
	var unpin []uint32
	t.mu.Lock()
	var gone []*flow
	for k, f := range t.m {
		if k.lport == lport && !f.attached {
			delete(t.m, k)
			t.pending.Add(-1)
			gone = append(gone, f)
		}
	}
	t.mu.Unlock()
	for _, f := range gone {
		f.dead.Store(true)
		f.mu.Lock()
		unpin = f.fq.drain(unpin)
		f.mu.Unlock()
	}
	if len(unpin) > 0 {
		r.Unpin(unpin...)
	}
}

// drainAll removes every flow.
func (t *flowTable) drainAll(r *umem.Region) {
	t.mu.Lock()
	all := t.m
	t.m = map[flowKey]*flow{}
	t.pending.Store(0)
	t.mu.Unlock()
	var unpin []uint32
	for _, f := range all {
		f.dead.Store(true)
		f.mu.Lock()
		unpin = f.fq.drain(unpin)
		f.mu.Unlock()
	}
	if len(unpin) > 0 && r != nil {
		r.Unpin(unpin...)
	}
}

// count is the number of flows.
func (t *flowTable) count() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.m)
}

// ackState values: the RX loop looks for the handshake's ACK until it has
// it, or until the connection is accepted without it.
const (
	ackWaiting uint32 = iota
	ackSeen
	ackMissed
)

// noteAckLocked takes the ACK number of a segment of a flow not accepted
// yet as our side's first sequence number after the SYN-ACK: the first
// ACK a flow gets from its peer is the handshake's (alone or on the first
// data). An accepted connection that later sends from a TX dmabuf maps its
// stream from it (conn_tx.go). f.mu must be held.
func (f *flow) noteAckLocked(b []byte, sp split) {
	switch {
	case f.ackState.Load() != ackWaiting || sp.Flags&tcpFlagAck == 0 || sp.TCPOff+12 > len(b):
	case f.attached:
		f.ackState.Store(ackMissed)
	default:
		f.ourNext.Store(binary.BigEndian.Uint32(b[sp.TCPOff+8:]))
		f.ackState.Store(ackSeen)
	}
}

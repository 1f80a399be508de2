package stack

import (
	"encoding/binary"
	"fmt"
	"maps"
	"math/bits"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
)

// txKey names a connection by its peer and ports; the address is in
// 16-byte form (IPv4-mapped for IPv4).
type txKey struct {
	raddr        [16]byte
	rport, lport uint16
}

// txChain records, per TX header frame in flight, which connection's
// segment it starts and where in that connection's stream.
type txChain struct {
	c     *TXConn
	start uint64
}

// txPiece is a run of payload at a UMEM address.
type txPiece struct {
	addr uint64
	n    uint32
	b    *txBinding
}

// txEngine is the devmem TX path of one stack.
type txEngine struct {
	s     *Stack
	dev   Device // the device that transmits (Stack.devs[0])
	mb    bool   // payload descriptors point into the span
	chain bool   // the device takes multi-buffer chains
	mask  uint64 // frame size - 1
	shift uint   // log2(frame size)

	owner  []atomic.Pointer[txBinding] // region frame → binding whose span holds it
	chains []txChain                   // region frame → chain it heads; under the device's TX lock

	// conns maps connections to the TX connections sending from dmabufs.
	// Every received and sent packet looks it up while it is not empty, so
	// it is copied on write (register, unregister: connsMu) and read with
	// one atomic load.
	connsMu sync.Mutex
	conns   atomic.Pointer[map[txKey]*TXConn]

	bmu      sync.Mutex
	bindings map[*txBinding]struct{}

	scratch sync.Pool
	cnt     txCounters
}

// engine returns the TX engine, installing it on first use: on a socket it
// probes whether the kernel takes multi-buffer chains. Payload descriptors
// point into TX dmabufs when it does and Config.Lab.TXCopy is off; chains of TX
// frames (for frames larger than a UMEM frame) need only the former.
func (s *Stack) engine() (*txEngine, error) {
	if t := s.tx.eng.Load(); t != nil {
		return t, nil
	}
	s.tx.mu.Lock()
	defer s.tx.mu.Unlock()
	if t := s.tx.eng.Load(); t != nil {
		return t, nil
	}
	if s.closing.Load() {
		return nil, devmemapi.ErrClosed
	}
	r := s.region
	t := &txEngine{
		s:        s,
		mask:     uint64(r.FrameSize() - 1),
		shift:    uint(bits.TrailingZeros32(r.FrameSize())),
		owner:    make([]atomic.Pointer[txBinding], r.Frames()),
		chains:   make([]txChain, r.Frames()),
		bindings: map[*txBinding]struct{}{},
	}
	t.conns.Store(&map[txKey]*TXConn{})
	t.scratch.New = func() any { return &txScratch{} }
	t.dev = s.devs[0]
	t.dev.SetTXClaim(t.claim)
	if b, ok := t.dev.(txBudgeter); ok {
		// Let one kick send a whole ring (the kernel's default is 32
		// descriptors); older kernels lack the option.
		_ = b.SetTXBudget(0)
	}
	ok, err := t.dev.TXProbeMultiBuffer(probeFrame(s.mac), time.Second)
	if err != nil {
		t.dev.SetTXClaim(nil)
		return nil, fmt.Errorf("tx engine: %w", err)
	}
	t.chain = ok
	t.mb = ok && !s.cfg.Lab.TXCopy
	s.tx.eng.Store(t)
	return t, nil
}

// probeFrame is the frame of the multi-buffer probe: to and from the
// stack's own MAC, a local experimental EtherType, padded to 60 bytes.
func probeFrame(mac net.HardwareAddr) []byte {
	f := make([]byte, 60)
	copy(f[0:6], mac)
	copy(f[6:12], mac)
	binary.BigEndian.PutUint16(f[12:], txProbeEtherType)
	copy(f[14:], "xdevmem multi-buffer TX probe")
	return f
}

// closeTX tears the TX side down at Stack.Close: connections are
// forgotten, pending sends are dropped and every span goes back to the
// region.
func (s *Stack) closeTX() {
	s.tx.mu.Lock()
	defer s.tx.mu.Unlock()
	t := s.tx.eng.Load()
	if t == nil {
		return
	}
	for _, c := range *t.conns.Load() {
		c.Close()
		c.abort()
		t.unregister(c)
	}
	t.bmu.Lock()
	bs := make([]*txBinding, 0, len(t.bindings))
	for b := range t.bindings {
		bs = append(bs, b)
	}
	t.bmu.Unlock()
	for _, b := range bs {
		b.Close()
		b.release()
	}
}

// register makes c's segments go through the devmem path.
func (t *txEngine) register(c *TXConn) error {
	t.connsMu.Lock()
	defer t.connsMu.Unlock()
	old := *t.conns.Load()
	if _, ok := old[c.key]; ok {
		return fmt.Errorf("tx: connection %v:%d from port %d exists: %w", net.IP(c.key.raddr[:]), c.key.rport, c.key.lport, unix.EADDRINUSE)
	}
	m := maps.Clone(old)
	m[c.key] = c
	t.conns.Store(&m)
	return nil
}

func (t *txEngine) unregister(c *TXConn) {
	t.connsMu.Lock()
	defer t.connsMu.Unlock()
	old := *t.conns.Load()
	if old[c.key] != c {
		return
	}
	m := maps.Clone(old)
	delete(m, c.key)
	t.conns.Store(&m)
}

// lookup finds the TX connection of k (nil if none).
func (t *txEngine) lookup(k txKey) *TXConn { return (*t.conns.Load())[k] }

// anyConns reports whether any TX connection is registered: while none is,
// packets are not looked up at all.
func (t *txEngine) anyConns() bool { return len(*t.conns.Load()) > 0 }

// claim is the engine's umem.TXClaim: payload addresses in a span are the
// engine's; a TX frame that heads a chain tells its connection the chain
// is done. It runs with the device's TX lock held.
func (t *txEngine) claim(addr uint64) bool {
	f := t.s.region.FrameOf(addr)
	if int(f) >= len(t.owner) {
		return false
	}
	if b := t.owner[f].Load(); b != nil {
		b.put()
		return true
	}
	if ch := t.chains[f]; ch.c != nil {
		t.chains[f] = txChain{}
		ch.c.chainDone(ch.start)
	}
	return false
}

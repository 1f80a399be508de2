package stack

import (
	"errors"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
)

// TestProbeModeSequence is ncdevmem's probe-mode sequence on the emulated
// settings: an empty queue list fails, header split off fails, a normal bind
// succeeds, shrinking the channels over the bound queue fails.
func TestProbeModeSequence(t *testing.T) {
	ip := newInproc(t, Config{Channels: 4})
	s := ip.s
	if _, err := s.BindRX(devmemapi.BindRXConfig{}); !devmemerr.Match(err, devmemerr.BindRXMissingAttr) {
		t.Fatalf("empty queue list: %v", err)
	}
	s.NIC().SetRings(Rings{TCPDataSplit: false})
	if _, err := s.BindRX(devmemapi.BindRXConfig{Queues: []uint32{3}}); !devmemerr.Match(err, devmemerr.BindRXHDSDisabled) {
		t.Fatalf("header split off: %v", err)
	}
	s.NIC().SetRings(Rings{TCPDataSplit: true})
	b, err := s.BindRX(devmemapi.BindRXConfig{Queues: []uint32{2, 3}})
	if err != nil {
		t.Fatalf("normal bind: %v", err)
	}
	if err := s.NIC().SetChannels(2); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("shrink channels over bound queues: %v", err)
	}
	if _, err := s.BindRX(devmemapi.BindRXConfig{Queues: []uint32{4}}); !devmemerr.Match(err, devmemerr.BindRXQueueRange) {
		t.Fatalf("queue beyond channels: %v", err)
	}
	b.Close()
	if err := s.NIC().SetChannels(2); err != nil {
		t.Fatalf("shrink after unbind: %v", err)
	}
	if _, err := s.BindRX(devmemapi.BindRXConfig{Queues: []uint32{3}}); !devmemerr.Match(err, devmemerr.BindRXQueueRange) {
		t.Fatalf("bind a removed queue: %v", err)
	}
}

// TestSteering: rules win over the RSS spread, rules match in order, and
// the cached choice follows table changes.
func TestSteering(t *testing.T) {
	ip := newInproc(t, Config{Channels: 4})
	s := ip.s
	fl := &flow{key: flowKey{raddr: netip.MustParseAddr("10.9.0.1").As16(), rport: 40000, lport: 5201}}
	if err := s.NIC().SetRSS(1); err != nil {
		t.Fatal(err)
	}
	if q := s.steer.queueOf(fl); q != 0 {
		t.Fatalf("rss equal 1: queue %d", q)
	}
	id, err := s.NIC().AddFlowRule(FlowRule{DstPort: 5201, Queue: 3})
	if err != nil {
		t.Fatal(err)
	}
	if q := s.steer.queueOf(fl); q != 3 {
		t.Fatalf("rule: queue %d", q)
	}
	if _, err := s.NIC().AddFlowRule(FlowRule{Src: netip.MustParseAddr("10.9.0.1"), Queue: 2}); err != nil {
		t.Fatal(err)
	}
	if q := s.steer.queueOf(fl); q != 3 {
		t.Fatalf("first rule must win: queue %d", q)
	}
	if err := s.NIC().DeleteFlowRule(id); err != nil {
		t.Fatal(err)
	}
	if q := s.steer.queueOf(fl); q != 2 {
		t.Fatalf("after delete: queue %d", q)
	}
	if _, err := s.NIC().AddFlowRule(FlowRule{Queue: 9}); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("rule to a missing queue: %v", err)
	}
	if err := s.NIC().DeleteFlowRule(99); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("delete unknown rule: %v", err)
	}
	if err := s.NIC().SetChannels(2); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("shrink under a rule's queue: %v", err)
	}
	// With RSS over all four queues, flows spread.
	s.steer.mu.Lock()
	s.steer.rules, s.steer.order = map[int]FlowRule{}, nil
	s.steer.mu.Unlock()
	if err := s.NIC().SetRSS(4); err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for p := uint16(1); p < 200; p++ {
		seen[s.steer.queueOf(&flow{key: flowKey{rport: p, lport: 5201}})] = true
	}
	if len(seen) != 4 {
		t.Fatalf("rss equal 4 used queues %v", seen)
	}
}

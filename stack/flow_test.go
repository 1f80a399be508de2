package stack

import "testing"

// TestSYNFloodBounded: SYNs that are never accepted cannot grow the flow
// table past its bound; the excess is evicted and counted.
func TestSYNFloodBounded(t *testing.T) {
	ip := newInproc(t, Config{})
	const syns = maxPendingFlows + 1000
	frames := make([][]byte, 0, 256)
	for i := 0; i < syns; i++ {
		frames = append(frames, segment(uint16(1024+i), 5201, uint32(i)*1000, 0, tcpFlagSyn, nil, nil))
		if len(frames) == cap(frames) || i == syns-1 {
			ip.inject(frames...)
			frames = frames[:0]
		}
	}
	if n := ip.s.flows.count(); n > maxPendingFlows {
		t.Fatalf("%d flows after %d SYNs, bound %d", n, syns, maxPendingFlows)
	}
	if st := ip.s.Stats(); st.FlowsEvicted == 0 || st.FlowsCreated != syns {
		t.Fatalf("created %d, evicted %d", st.FlowsCreated, st.FlowsEvicted)
	}
}

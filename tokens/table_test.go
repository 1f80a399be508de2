package tokens

import (
	"math/rand/v2"
	"testing"
)

// TestTableAgainstNaive checks the bitmap table against a boolean slice
// over tables large enough for several summary words (4096 tokens each).
func TestTableAgainstNaive(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var tab table
	used := []bool{false} // used[tok]; token 0 never used
	b := &Binding{}
	lo := 1 // every token below lo is in use
	lowestFree := func() uint32 {
		for lo < len(used) && used[lo] {
			lo++
		}
		return uint32(lo)
	}
	n := 0
	for step := range 80000 {
		// Drift: fill up to ~9000 (three summary words), then drain,
		// then fill again.
		phase := step / 15000 % 2
		if rng.IntN(100) < 60+20*(1-2*phase) || n == 0 {
			want := lowestFree()
			got, ok := tab.alloc(entry{b: b, frame: want})
			if !ok || got != want {
				t.Fatalf("step %d: alloc = %d, %v; want %d", step, got, ok, want)
			}
			if int(want) == len(used) {
				used = append(used, true)
			} else {
				used[want] = true
			}
			n++
		} else {
			tok := uint64(rng.IntN(len(used) + 10))
			e, ok := tab.erase(tok)
			wantOK := tok < uint64(len(used)) && used[tok]
			if ok != wantOK || (ok && e.frame != uint32(tok)) {
				t.Fatalf("step %d: erase(%d) = %v, %v; want ok %v", step, tok, e, ok, wantOK)
			}
			if ok {
				used[tok] = false
				lo = min(lo, int(tok))
				n--
			}
		}
		if tab.n != n {
			t.Fatalf("step %d: n = %d, want %d", step, tab.n, n)
		}
	}
	seen := 0
	tab.each(func(tok uint32, e entry) {
		if !used[tok] || e.frame != tok {
			t.Fatalf("each: token %d not in use", tok)
		}
		seen++
	})
	if seen != n {
		t.Fatalf("each saw %d tokens, want %d", seen, n)
	}
}

func TestTableEraseOutOfRange(t *testing.T) {
	var tab table
	for _, tok := range []uint64{0, 1, 64, 1 << 31, 1 << 32, 1<<64 - 1} {
		if _, ok := tab.erase(tok); ok {
			t.Fatalf("erase(%d) on an empty table succeeded", tok)
		}
	}
	tok, _ := tab.alloc(entry{frame: 1})
	if _, ok := tab.erase(uint64(tok) + 1<<32); ok {
		t.Fatal("erase(token + 1<<32) succeeded: token arithmetic wrapped")
	}
	if _, ok := tab.erase(uint64(tok)); !ok {
		t.Fatal("erase(token) failed")
	}
}

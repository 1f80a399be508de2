package stack

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Faults configures fault injection on received frames, applied after the
// RX ring and before the header split, as a lossy link would (this kernel
// has no netem). Rates are probabilities per frame in [0, 1]. The zero value
// injects nothing. Injection is seeded, so a run can be repeated.
type Faults struct {
	// Drop discards the frame.
	Drop float64
	// Dup delivers the frame twice (the copy in another UMEM frame).
	Dup float64
	// Reorder holds the frame back and delivers it after up to
	// ReorderDepth later frames.
	Reorder float64
	// Corrupt flips one random byte of the IPv4 packet (header or
	// payload); the checksum check must catch it.
	Corrupt float64
	// Truncate cuts the frame short at a random length; the split must
	// reject it.
	Truncate float64
	// ReorderDepth bounds how many frames a held frame waits for
	// (default 8).
	ReorderDepth int
	// Seed seeds the generator.
	Seed uint64
}

// Enabled reports whether any fault has a non-zero rate.
func (f Faults) Enabled() bool {
	return f.Drop > 0 || f.Dup > 0 || f.Reorder > 0 || f.Corrupt > 0 || f.Truncate > 0
}

// String formats f in the syntax ParseFaults reads.
func (f Faults) String() string {
	var parts []string
	add := func(name string, v float64) {
		if v > 0 {
			parts = append(parts, name+"="+strconv.FormatFloat(v, 'g', -1, 64))
		}
	}
	add("drop", f.Drop)
	add("dup", f.Dup)
	add("reorder", f.Reorder)
	add("corrupt", f.Corrupt)
	add("truncate", f.Truncate)
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ",")
}

// ParseFaults reads "drop=0.05,reorder=0.1,dup=0.02,corrupt=0.01,truncate=0"
// (any subset, any order; "" or "none" is no faults).
func ParseFaults(s string, seed uint64) (Faults, error) {
	f := Faults{Seed: seed}
	s = strings.TrimSpace(s)
	if s == "" || s == "none" {
		return f, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok {
			return f, fmt.Errorf("faults %q: %q is not name=rate: %w", s, kv, unix.EINVAL)
		}
		if k == "depth" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 1024 {
				return f, fmt.Errorf("faults %q: reorder depth %q: want 1..1024: %w", s, v, unix.EINVAL)
			}
			f.ReorderDepth = n
			continue
		}
		r, err := strconv.ParseFloat(v, 64)
		if err != nil || r < 0 || r > 1 {
			return f, fmt.Errorf("faults %q: rate %q for %s: want a number from 0 to 1: %w", s, v, k, unix.EINVAL)
		}
		switch k {
		case "drop":
			f.Drop = r
		case "dup", "duplicate":
			f.Dup = r
		case "reorder":
			f.Reorder = r
		case "corrupt":
			f.Corrupt = r
		case "truncate":
			f.Truncate = r
		default:
			return f, fmt.Errorf("faults %q: unknown fault %q (drop, dup, reorder, corrupt, truncate, depth): %w", s, k, unix.EINVAL)
		}
	}
	return f, nil
}

// FaultStats counts injected faults.
type FaultStats struct {
	// Dropped, Duplicated, Reordered, Corrupted and Truncated count frames
	// the injector affected.
	Dropped    uint64 `json:"dropped"`
	Duplicated uint64 `json:"duplicated"`
	Reordered  uint64 `json:"reordered"`
	Corrupted  uint64 `json:"corrupted"`
	Truncated  uint64 `json:"truncated"`
}

// injector applies Faults; receive goroutine only, except the counters.
type injector struct {
	f    Faults
	rng  *rand.Rand
	held []heldFrame

	dropped, duplicated, reordered, corrupted, truncated atomic.Uint64
}

type heldFrame struct {
	addr, n uint64
	left    int
}

func newInjector(f Faults) *injector {
	if f.ReorderDepth == 0 {
		f.ReorderDepth = 8
	}
	return &injector{f: f, rng: rand.New(rand.NewPCG(f.Seed, f.Seed^0x9e3779b97f4a7c15))}
}

func (in *injector) stats() FaultStats {
	return FaultStats{in.dropped.Load(), in.duplicated.Load(), in.reordered.Load(), in.corrupted.Load(), in.truncated.Load()}
}

// corrupt flips one byte of the IPv4 packet in b (not the Ethernet header,
// which a real NIC's FCS protects, and not padding past the IP length).
func (in *injector) corrupt(b []byte) bool {
	if len(b) < ethHdrLen+20 || b[12] != 0x08 || b[13] != 0x00 {
		return false
	}
	end := ethHdrLen + int(b[ethHdrLen+2])<<8 | int(b[ethHdrLen+3])
	if end > len(b) || end <= ethHdrLen {
		end = len(b)
	}
	i := ethHdrLen + in.rng.IntN(end-ethHdrLen)
	b[i] ^= byte(1 + in.rng.IntN(255))
	return true
}

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/xdevmem/xdevmem/stack"
)

// parseSize parses "1GiB", "16MiB", "64k", "1G" or a plain byte count.
func parseSize(s string) (uint64, error) {
	t := strings.TrimSpace(strings.ToLower(s))
	mult := uint64(1)
	for _, u := range []struct {
		suffix string
		m      uint64
	}{
		{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
		{"kb", 1000}, {"mb", 1e6}, {"gb", 1e9},
		{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"t", 1 << 40}, {"b", 1},
	} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSuffix(t, u.suffix), u.m
			break
		}
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(t), 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("bad size %q (want e.g. 1GiB, 16MiB, 4096)", s)
	}
	return uint64(v * float64(mult)), nil
}

// sizeValue is a flag.Value for sizes.
type sizeValue struct{ v *uint64 }

func (s sizeValue) String() string {
	if s.v == nil {
		return "0"
	}
	return humanBytes(*s.v)
}

func (s sizeValue) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	*s.v = n
	return nil
}

func humanBytes(n uint64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// boolFlag01 parses ncdevmem's 0/1 integer options.
func boolFlag01(v int, name string) (*bool, error) {
	switch v {
	case -1:
		return nil, nil
	case 0, 1:
		b := v == 1
		return &b, nil
	}
	return nil, fmt.Errorf("-%s takes 0 or 1, not %d", name, v)
}

// receiveFlags turns the receive commands' shared flags (-a mode, --faults,
// --seed) into their typed values.
func receiveFlags(auto int, faultSpec string, seed uint64) (*bool, stack.Faults, error) {
	autoP, err := boolFlag01(auto, "a")
	if err != nil {
		return nil, stack.Faults{}, err
	}
	faults, err := stack.ParseFaults(faultSpec, seed)
	return autoP, faults, err
}

// checkUMEMFlag validates a --umem value at start, before anything is
// built: 0 is refused (it is not "the default"), and the size must pass
// stack.CheckRegionSize for the MTU and queue count (mtu 0 when the
// interface's MTU is not known yet: the stack checks the minimum then).
func checkUMEMFlag(size uint64, mtu, queues int) error {
	if size == 0 {
		min := stack.MinRegionSize(max(mtu, stack.DefaultMTU), queues)
		return fmt.Errorf("--umem 0: the UMEM needs at least %s at MTU %d (leave --umem out for the default %s)",
			humanBytes(min), max(mtu, stack.DefaultMTU), humanBytes(stack.DefaultRegionSize))
	}
	if err := stack.CheckRegionSize(size, mtu, queues); err != nil {
		return fmt.Errorf("--umem %s: %w", humanBytes(size), err)
	}
	return nil
}

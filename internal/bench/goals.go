package bench

import (
	"fmt"
	"math"
)

// Goal is one of issue 7's targets, checked against the medians of the rows
// it needs. Goals whose rows were not run are left out.
type Goal struct {
	// Name says what is compared.
	Name string `json:"name"`
	// Value is the measured ratio or amount; Target the bar it must clear.
	Value  float64 `json:"value"`
	Target string  `json:"target"`
	// Met reports whether Value clears Target.
	Met bool `json:"met"`
	// Detail gives the medians the value is computed from.
	Detail string `json:"detail"`
	// Indicative is set when the figures are too few to hold the verdict
	// to (see Report.Indicative): Met says which way they point, no more.
	Indicative bool `json:"indicative"`
}

// minRunsForVerdict is how many runs per row a verdict needs to be more
// than indicative: a median of fewer is one noisy sample.
const minRunsForVerdict = 3

// Indicative says why the goals' verdicts are only indicative ("--quick",
// "1 run per row"), or "" when they are not.
func (rep *Report) Indicative() string {
	switch {
	case rep.Quick:
		return "--quick"
	case rep.Runs < minRunsForVerdict:
		return fmt.Sprintf("%d run(s) per row", rep.Runs)
	}
	return ""
}

// allocsPerPacketTarget is the bar for "0 allocs/packet" measured over a
// whole process: less than one allocation per hundred packets, i.e. nothing
// on the per-packet path (timers and the receive loop's rare growth
// remain).
const allocsPerPacketTarget = 0.01

func checkGoals(rep *Report) []Goal {
	row := func(id string) *RowReport {
		for i := range rep.Rows {
			if rep.Rows[i].ID == id && rep.Rows[i].Figures.MBps.Valid() {
				return &rep.Rows[i]
			}
		}
		return nil
	}
	var goals []Goal
	a0, a1 := row("devmem-a0"), row("devmem-a1")
	if a0 != nil {
		if k := row("kernel-off"); k != nil {
			v := a0.Figures.MBps.Median / k.Figures.MBps.Median
			goals = append(goals, Goal{
				Name: "devmem RX goodput / kernel TCP (MTU 1500, offloads off)", Value: v, Target: ">= 1.0", Met: v >= 1.0,
				Detail: fmt.Sprintf("%.1f / %.1f MB/s", a0.Figures.MBps.Median, k.Figures.MBps.Median),
			})
		}
		if sh := row("devmem-a0-shared"); sh != nil {
			v := sh.Figures.MBps.Median / a0.Figures.MBps.Median
			goals = append(goals, Goal{
				Name: "devmem RX goodput, shared address / dedicated", Value: v, Target: ">= 0.97", Met: v >= 0.97,
				Detail: fmt.Sprintf("%.1f / %.1f MB/s", sh.Figures.MBps.Median, a0.Figures.MBps.Median),
			})
		}
		if g := row("gvisor-xdp"); g != nil {
			v := a0.Figures.MBps.Median / g.Figures.MBps.Median
			goals = append(goals, Goal{
				Name: "devmem RX goodput / gVisor stock AF_XDP", Value: v, Target: ">= 2.0", Met: v >= 2.0,
				Detail: fmt.Sprintf("%.1f / %.1f MB/s", a0.Figures.MBps.Median, g.Figures.MBps.Median),
			})
		}
		var copied float64
		for _, r := range rep.Rows {
			if r.Kind == KindDevmem && r.Figures.CopiedPerByte.Valid() {
				copied = math.Max(copied, r.Figures.CopiedPerByte.Max)
			}
		}
		goals = append(goals, Goal{
			Name: "payload bytes copied after the UMEM per byte (devmem rows, max)", Value: copied, Target: "== 0", Met: copied == 0,
			Detail: "stack.Stats DmabufBytesCopied + LinearBytesCopied + PlainBytesCopied",
		})
		ap := a0.Figures.AllocsPerPacket
		if ap.Valid() {
			goals = append(goals, Goal{
				Name: "Go heap allocations per packet (devmem-a0, whole process)", Value: ap.Median,
				Target: fmt.Sprintf("< %g", allocsPerPacketTarget), Met: ap.Median < allocsPerPacketTarget,
				Detail: fmt.Sprintf("min %.4f, max %.4f; the in-process BenchmarkRXPath reports allocs/op per segment", ap.Min, ap.Max),
			})
		}
	}
	if a0 != nil && a1 != nil {
		c0, c1 := a0.Figures.LocalCPUPerGB.Median, a1.Figures.LocalCPUPerGB.Median
		v := (c1 - c0) / c1
		goals = append(goals, Goal{
			Name: "autorelease 0 CPU/GB saving over autorelease 1 (receiver)", Value: v, Target: ">= 0.10", Met: v >= 0.10,
			Detail: fmt.Sprintf("%.3f vs %.3f s/GB", c0, c1),
		})
	}
	if rep.Indicative() != "" {
		for i := range goals {
			goals[i].Indicative = true
		}
	}
	return goals
}

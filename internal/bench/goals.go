package bench

import (
	"fmt"
	"math"
)

// Goal is one of the targets of issues 7 and 16, checked against the
// medians of the rows it needs. Goals whose rows were not run are left out.
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
// whole process (issue 16): less than one allocation per thousand packets,
// i.e. nothing on the per-packet path (timers and the receive loop's rare
// growth remain).
const allocsPerPacketTarget = 0.001

// ratioGoal compares two rows' median goodput.
func ratioGoal(name string, num, den *RowReport, target float64) Goal {
	v := num.Figures.MBps.Median / den.Figures.MBps.Median
	return Goal{
		Name: name, Value: v, Target: fmt.Sprintf(">= %g", target), Met: v >= target,
		Detail: fmt.Sprintf("%.1f / %.1f MB/s", num.Figures.MBps.Median, den.Figures.MBps.Median),
	}
}

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
	if a0 != nil {
		if k := row("kernel-off"); k != nil && a0.Figures.MachineCPUPerGB.Valid() && k.Figures.MachineCPUPerGB.Valid() {
			d, kc := a0.Figures.MachineCPUPerGB.Median, k.Figures.MachineCPUPerGB.Median
			goals = append(goals, Goal{
				Name: "machine CPU per GB, devmem RX / kernel TCP RX (MTU 1500)", Value: d / kc, Target: "<= 1.0", Met: d <= kc,
				Detail: fmt.Sprintf("%.3f / %.3f s/GB", d, kc),
			})
		}
	}
	if d, k := row("devmem-a0-9000"), row("kernel-off-9000"); d != nil && k != nil {
		goals = append(goals, ratioGoal("devmem RX goodput / kernel TCP (MTU 9000, offloads off)", d, k, 0.8))
	}
	if d, k := row("devmem-tx"), row("kernel-tx-off"); d != nil && k != nil {
		goals = append(goals, ratioGoal("devmem TX goodput / kernel TCP TX (MTU 1500, offloads off)", d, k, 0.8))
	}
	if bare := row("afxdp-bare"); bare != nil {
		// A ceiling is above every RX row at its MTU with offloads off, in
		// packets (with TSO on, kernel-default's segments cross the link
		// 44 to a packet).
		var top *RowReport
		for i := range rep.Rows {
			r := &rep.Rows[i]
			if !r.Kind.TX() && !r.DefaultOffloads && r.ID != bare.ID && r.MTU == bare.MTU && r.Figures.Mpps.Valid() && (top == nil || r.Figures.Mpps.Median > top.Figures.Mpps.Median) {
				top = r
			}
		}
		if top != nil {
			v := bare.Figures.Mpps.Median / top.Figures.Mpps.Median
			goals = append(goals, Goal{
				Name: "afxdp-bare ceiling / fastest RX row at its MTU (packets/s)", Value: v, Target: ">= 1.0", Met: v >= 1.0,
				Detail: fmt.Sprintf("%.3f / %.3f Mpps (%s)", bare.Figures.Mpps.Median, top.Figures.Mpps.Median, top.ID),
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

package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
)

// WriteJSON writes the report as indented JSON. NaN figures (a row without
// a successful run) are written as null.
func (rep *Report) WriteJSON(w io.Writer) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// ReadReport reads a report written by WriteJSON.
func ReadReport(r io.Reader) (*Report, error) {
	var rep Report
	if err := json.NewDecoder(r).Decode(&rep); err != nil {
		return nil, err
	}
	return &rep, nil
}

// MarshalJSON writes NaN as null, which encoding/json refuses to encode.
func (f Figure) MarshalJSON() ([]byte, error) {
	num := func(v float64) any {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return nil
		}
		return v
	}
	return json.Marshal(struct {
		Median any `json:"median"`
		Min    any `json:"min"`
		Max    any `json:"max"`
		N      int `json:"n"`
	}{num(f.Median), num(f.Min), num(f.Max), f.N})
}

// UnmarshalJSON reads what MarshalJSON writes (null becomes NaN).
func (f *Figure) UnmarshalJSON(b []byte) error {
	var v struct {
		Median, Min, Max *float64
		N                int
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	get := func(p *float64) float64 {
		if p == nil {
			return math.NaN()
		}
		return *p
	}
	*f = Figure{Median: get(v.Median), Min: get(v.Min), Max: get(v.Max), N: v.N}
	return nil
}

// cell formats a figure as "median (min–max)" with prec decimals.
func cell(f Figure, prec int) string {
	if !f.Valid() {
		return "-"
	}
	if f.N == 1 || (f.Min == f.Max) {
		return fmt.Sprintf("%.*f", prec, f.Median)
	}
	return fmt.Sprintf("%.*f (%.*f–%.*f)", prec, f.Median, prec, f.Min, prec, f.Max)
}

// WriteTable writes the human-readable report: a header that says how the
// figures are measured, a throughput-and-CPU table, a table of copies,
// tokens, allocations and losses, and the goals.
func (rep *Report) WriteTable(w io.Writer) error {
	var b strings.Builder
	m := rep.Machine
	fmt.Fprintf(&b, "xdevmem bench: %d run(s) per row, rows alternating (A B C … A B C …); %s per TCP transfer, %.1f s UDP flood\n",
		rep.Runs, humanBytes(rep.Size), rep.UDPSeconds)
	fmt.Fprintf(&b, "machine: Linux %s, %d CPUs (%s), %s, GOMAXPROCS %d; load average %.2f before, %.2f after\n",
		m.Kernel, m.CPUs, m.CPU, m.GoVersion, m.GOMAXPROCS, rep.LoadStart, rep.LoadEnd)
	var bgs []float64
	for _, r := range rep.Rows {
		for _, m := range r.Runs {
			bgs = append(bgs, m.Background)
		}
	}
	if bg := figureOf(bgs); bg.Valid() {
		fmt.Fprintf(&b, "background: %s CPUs busy just before the runs (median (min–max)); machine CPU includes it\n", cell(bg, 2))
	}
	fmt.Fprintf(&b, "figures: median (min–max). local CPU: getrusage(RUSAGE_SELF) of this process, the measured side (the receiver of\n")
	fmt.Fprintf(&b, "  RX rows, the sender of TX rows; user+sys, all threads); peer CPU: the kernel peer's own process (getrusage);\n")
	fmt.Fprintf(&b, "  machine CPU: /proc/stat busy time of all CPUs, softirq included.\n\n")

	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "row\tdir\tMTU\tgoodput MB/s\tGbit/s\tMpps\tlocal CPU s/GB\tpeer CPU s/GB\tmachine CPU s/GB\tsoftirq s/GB\t")
	for _, r := range rep.Rows {
		f := r.Figures
		dir := "rx"
		if r.Kind.TX() {
			dir = "tx"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.ID, dir, r.MTU,
			cell(f.MBps, 1), cell(f.Gbps, 2), cell(f.Mpps, 3),
			cell(f.LocalCPUPerGB, 3), cell(f.PeerCPUPerGB, 3), cell(f.MachineCPUPerGB, 3), cell(f.SoftirqPerGB, 3))
	}
	tw.Flush()
	b.WriteString("\n")
	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "row\tpayload copied B/B\ttokens/s\tallocs/pkt\tretrans\tdrops\truns ok\t")
	for _, r := range rep.Rows {
		f := r.Figures
		src := ""
		if f.CopiedPerByte.Valid() {
			src = " (by construction)"
			if len(r.Runs) > 0 && r.Runs[0].CopiedMeasured {
				src = " (counted)"
			}
		}
		tok := "-"
		if r.Kind == KindDevmem || r.Kind == KindDevmemTX {
			tok = cell(f.TokensPerSec, 0)
		}
		fmt.Fprintf(tw, "%s\t%s%s\t%s\t%s\t%s\t%s\t%d/%d\t\n", r.ID, cell(f.CopiedPerByte, 2), src, tok,
			cell(f.AllocsPerPacket, 4), cell(f.Retrans, 0), cell(f.Drops, 0), f.MBps.N, len(r.Runs))
	}
	tw.Flush()
	b.WriteString("payload copied B/B: payload bytes copied per byte after it reached the receiver's memory (RX: UMEM or skb)\n" +
		"  or on its way from the sender's buffer to the wire (TX); counted = xdevmem's counters, by construction = the code path.\n" +
		"tokens/s: RX tokens returned with SO_DEVMEM_DONTNEED; TX sends completed through MSG_ERRQUEUE.\n")
	for _, r := range rep.Rows {
		for _, m := range r.Runs {
			if m.Error != "" {
				fmt.Fprintf(&b, "  %s round %d failed: %s\n", r.ID, m.Round+1, m.Error)
			}
		}
	}
	if len(rep.Goals) > 0 {
		b.WriteString("\ngoals (medians):\n")
		if why := rep.Indicative(); why != "" {
			fmt.Fprintf(&b, "  (%s: too few runs for verdicts, these only say which way the figures point; run without --quick, --runs %d or more)\n", why, minRunsForVerdict)
		}
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		for _, g := range rep.Goals {
			status := "MET"
			if !g.Met {
				status = "NOT MET"
			}
			if g.Indicative {
				status += " (indicative: " + rep.Indicative() + ")"
			}
			fmt.Fprintf(tw, "  %s\t%.3f\t%s\t%s\t%s\t\n", g.Name, g.Value, g.Target, status, g.Detail)
		}
		tw.Flush()
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Failed lists rows without a single successful run.
func (rep *Report) Failed() []string {
	var ids []string
	for _, r := range rep.Rows {
		if !r.Figures.MBps.Valid() {
			ids = append(ids, r.ID)
		}
	}
	return ids
}

func humanBytes(n uint64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d B", n)
}

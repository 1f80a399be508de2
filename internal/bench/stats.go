package bench

import (
	"math"
	"slices"
)

// Measurement is one run of one row: what the measured side (this process)
// and its peer saw over the transfer window: from accept to the end of the
// stream (RX), from the first send to the last completion or the peer's
// close (TX), or from the first to the last datagram (UDP).
type Measurement struct {
	// Round is the index of the round (A B C … A B C …) the run belongs to.
	Round int `json:"round"`
	// Error is set when the run failed; its figures are then not used.
	Error string `json:"error,omitempty"`
	// Background is how many CPUs were busy (from /proc/stat) in a short
	// sample just before the run: other work on the machine, which the
	// machine-CPU figures then include.
	Background float64 `json:"background_cpus"`

	// Bytes is the payload that arrived; Seconds the window.
	Bytes   uint64  `json:"bytes"`
	Seconds float64 `json:"seconds"`
	// Packets counts data segments: the kernel sender's tcpi_data_segs_out
	// (retransmissions included), the devmem TX engine's segments, or, for
	// UDP, the datagrams received.
	Packets uint64 `json:"packets"`

	// LocalUser and LocalSys are getrusage(RUSAGE_SELF) deltas of the bench
	// process over the window: every thread of the measured side (the
	// receiver of an RX row, the sender of a TX row), nothing of the peer.
	LocalUser float64 `json:"local_user_s"`
	LocalSys  float64 `json:"local_sys_s"`
	// PeerUser and PeerSys are the peer process's own getrusage over its
	// transfer (the kernel TCP sender of an RX row, the receiver of a TX
	// row). The kernel's softirq work on veth (delivery, XDP, the copy into
	// the UMEM, TCP input) runs on whatever CPU and task raised it and,
	// with tick-based accounting, is charged to that task: mostly the peer
	// for RX rows.
	PeerUser float64 `json:"peer_user_s"`
	PeerSys  float64 `json:"peer_sys_s"`
	// MachineBusy and MachineSoftirq are whole-machine CPU seconds from
	// /proc/stat over the window (all CPUs, all processes).
	MachineBusy    float64 `json:"machine_busy_s"`
	MachineSoftirq float64 `json:"machine_softirq_s"`

	// Copied is the payload bytes the receiver copied after the data
	// reached its memory (UMEM or skb); CopiedMeasured says whether it was
	// counted (xdevmem's counters) or follows from the code path.
	Copied         uint64 `json:"copied_bytes"`
	CopiedMeasured bool   `json:"copied_measured"`
	// Tokens is the number of devmem tokens returned with DONTNEED (RX) or
	// of sends completed through MSG_ERRQUEUE (TX).
	Tokens uint64 `json:"tokens"`
	// Allocs is Go heap allocations of the bench process in the window.
	Allocs uint64 `json:"allocs"`
	// Retrans is the kernel sender's tcpi_total_retrans, or for devmem TX
	// the payload bytes sent more than once divided by the MSS.
	Retrans uint64 `json:"retrans"`
	// Drops counts packets lost on the receive side: AF_XDP socket drops
	// (rx_dropped + rx_ring_full + rx_fill_ring_empty_descs) and stack
	// drops where there is a stack, datagrams sent but not received for
	// UDP.
	Drops uint64 `json:"drops"`
}

// per1e9 scales a total to "per GB received".
func (m Measurement) perGB(v float64) float64 {
	if m.Bytes == 0 {
		return math.NaN()
	}
	return v / (float64(m.Bytes) / 1e9)
}

func (m Measurement) ok() bool { return m.Error == "" && m.Bytes > 0 && m.Seconds > 0 }

// Figure is one figure over a row's successful runs.
type Figure struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	// N is the number of runs the figure is taken over.
	N int `json:"n"`
}

// Valid reports whether the figure has at least one value.
func (f Figure) Valid() bool { return f.N > 0 && !math.IsNaN(f.Median) }

// figureOf summarizes vs; NaN values are skipped.
func figureOf(vs []float64) Figure {
	var xs []float64
	for _, v := range vs {
		if !math.IsNaN(v) && !math.IsInf(v, 0) {
			xs = append(xs, v)
		}
	}
	if len(xs) == 0 {
		return Figure{Median: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	}
	slices.Sort(xs)
	med := xs[len(xs)/2]
	if len(xs)%2 == 0 {
		med = (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
	}
	return Figure{Median: med, Min: xs[0], Max: xs[len(xs)-1], N: len(xs)}
}

// Figures are a row's summarized figures.
type Figures struct {
	// MBps and Gbps are goodput: payload bytes the receiver got per second
	// of the window (MB = 10^6 bytes).
	MBps Figure `json:"mb_per_s"`
	Gbps Figure `json:"gbit_per_s"`
	// Mpps is packets per second (millions).
	Mpps Figure `json:"mpps"`
	// LocalCPUPerGB is the measured side's user+sys CPU seconds per GB
	// (getrusage RUSAGE_SELF of the bench process); LocalUserPerGB and
	// LocalSysPerGB its parts.
	LocalCPUPerGB  Figure `json:"local_cpu_s_per_gb"`
	LocalUserPerGB Figure `json:"local_user_s_per_gb"`
	LocalSysPerGB  Figure `json:"local_sys_s_per_gb"`
	// PeerCPUPerGB is the peer process's user+sys per GB.
	PeerCPUPerGB Figure `json:"peer_cpu_s_per_gb"`
	// MachineCPUPerGB and SoftirqPerGB are whole-machine CPU seconds per GB
	// from /proc/stat.
	MachineCPUPerGB Figure `json:"machine_cpu_s_per_gb"`
	SoftirqPerGB    Figure `json:"softirq_s_per_gb"`
	// CopiedPerByte is payload bytes copied per byte received after the
	// data reached the receiver's memory.
	CopiedPerByte Figure `json:"copied_per_byte"`
	// TokensPerSec is devmem tokens returned (RX) or sends completed (TX)
	// per second.
	TokensPerSec Figure `json:"tokens_per_s"`
	// AllocsPerPacket is Go heap allocations of the bench process per
	// packet.
	AllocsPerPacket Figure `json:"allocs_per_packet"`
	// Retrans and Drops are per-run counts.
	Retrans Figure `json:"retrans"`
	Drops   Figure `json:"drops"`
}

func summarize(ms []Measurement) Figures {
	var good []Measurement
	for _, m := range ms {
		if m.ok() {
			good = append(good, m)
		}
	}
	col := func(f func(m Measurement) float64) Figure {
		vs := make([]float64, len(good))
		for i, m := range good {
			vs[i] = f(m)
		}
		return figureOf(vs)
	}
	return Figures{
		MBps:            col(func(m Measurement) float64 { return float64(m.Bytes) / 1e6 / m.Seconds }),
		Gbps:            col(func(m Measurement) float64 { return float64(m.Bytes) * 8 / 1e9 / m.Seconds }),
		Mpps:            col(func(m Measurement) float64 { return float64(m.Packets) / 1e6 / m.Seconds }),
		LocalCPUPerGB:   col(func(m Measurement) float64 { return m.perGB(m.LocalUser + m.LocalSys) }),
		LocalUserPerGB:  col(func(m Measurement) float64 { return m.perGB(m.LocalUser) }),
		LocalSysPerGB:   col(func(m Measurement) float64 { return m.perGB(m.LocalSys) }),
		PeerCPUPerGB:    col(func(m Measurement) float64 { return m.perGB(m.PeerUser + m.PeerSys) }),
		MachineCPUPerGB: col(func(m Measurement) float64 { return m.perGB(m.MachineBusy) }),
		SoftirqPerGB:    col(func(m Measurement) float64 { return m.perGB(m.MachineSoftirq) }),
		CopiedPerByte:   col(func(m Measurement) float64 { return float64(m.Copied) / float64(m.Bytes) }),
		TokensPerSec:    col(func(m Measurement) float64 { return float64(m.Tokens) / m.Seconds }),
		AllocsPerPacket: col(func(m Measurement) float64 {
			if m.Packets == 0 {
				return math.NaN()
			}
			return float64(m.Allocs) / float64(m.Packets)
		}),
		Retrans: col(func(m Measurement) float64 { return float64(m.Retrans) }),
		Drops:   col(func(m Measurement) float64 { return float64(m.Drops) }),
	}
}

package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"runtime/metrics"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// clockTicks is USER_HZ, the unit of /proc/stat (100 on every Linux
// architecture Go supports).
const clockTicks = 100

// sample is the receiver's view of the machine at one instant.
type sample struct {
	t time.Time
	// user and sys are getrusage(RUSAGE_SELF): every thread of this
	// process, which holds only the receiving side.
	user, sys float64
	// busy and softirq are /proc/stat's whole-machine CPU seconds (all
	// CPUs; busy = everything but idle and iowait).
	busy, softirq float64
	// allocs is runtime/metrics /gc/heap/allocs:objects.
	allocs uint64
}

var allocMetric = []metrics.Sample{{Name: "/gc/heap/allocs:objects"}}

// takeSample reads the clocks and counters. It allocates nothing on the
// receive path's behalf except what the reads themselves need, and is called
// only at the edges of a measurement window.
func takeSample() sample {
	var s sample
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	s.user, s.sys = tvSeconds(ru.Utime), tvSeconds(ru.Stime)
	s.busy, s.softirq, _ = readProcStat()
	metrics.Read(allocMetric)
	if allocMetric[0].Value.Kind() == metrics.KindUint64 {
		s.allocs = allocMetric[0].Value.Uint64()
	}
	s.t = time.Now()
	return s
}

// window is what happened between two samples.
type window struct {
	seconds        float64
	user, sys      float64
	busy, softirq  float64
	allocs         uint64
	start, stopped time.Time
}

func between(a, b sample) window {
	return window{
		seconds: b.t.Sub(a.t).Seconds(),
		user:    b.user - a.user, sys: b.sys - a.sys,
		busy: b.busy - a.busy, softirq: b.softirq - a.softirq,
		allocs: b.allocs - a.allocs,
		start:  a.t, stopped: b.t,
	}
}

// MachineBusy returns the CPU seconds the machine has been busy since boot
// (every CPU; /proc/stat's aggregate line less idle and iowait).
func MachineBusy() (float64, error) {
	busy, _, err := readProcStat()
	return busy, err
}

// readProcStat returns the machine's busy and softirq CPU seconds since boot
// from the aggregate "cpu" line of /proc/stat.
func readProcStat() (busy, softirq float64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	return parseProcStat(b)
}

// parseProcStat parses the aggregate "cpu" line: user nice system idle
// iowait irq softirq steal guest guest_nice, in USER_HZ. Busy is the sum of
// everything but idle and iowait (guest time is already inside user).
func parseProcStat(b []byte) (busy, softirq float64, err error) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) < 8 || string(f[0]) != "cpu" {
			continue
		}
		var v [8]uint64
		for i := range v {
			if v[i], err = strconv.ParseUint(string(f[i+1]), 10, 64); err != nil {
				return 0, 0, fmt.Errorf("/proc/stat: %w", err)
			}
		}
		user, nice, system, irq, soft, steal := v[0], v[1], v[2], v[5], v[6], v[7]
		busy = float64(user+nice+system+irq+soft+steal) / clockTicks
		return busy, float64(soft) / clockTicks, nil
	}
	return 0, 0, fmt.Errorf("/proc/stat: no aggregate cpu line")
}

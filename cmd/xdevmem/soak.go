package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"time"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/internal/harness"
	"github.com/xdevmem/xdevmem/internal/netns"
	"github.com/xdevmem/xdevmem/internal/pattern"
	"github.com/xdevmem/xdevmem/stack"
)

type soakSample struct {
	T          float64 `json:"t_s"`
	Bytes      uint64  `json:"bytes"`
	MBps       float64 `json:"mb_per_s"`
	HeapInuse  uint64  `json:"heap_inuse"`
	HeapAlloc  uint64  `json:"heap_alloc"`
	Goroutines int     `json:"goroutines"`
	FramesFree uint32  `json:"frames_free"`
	Frames     string  `json:"frames"`
	Conns      int     `json:"connections"`
	FillEmpty  uint64  `json:"fill_ring_empty_drops"`
	OutOfWin   uint64  `json:"out_of_window_drops"`
	Retrans    uint64  `json:"retransmitted_bytes"`
}

type soakSummary struct {
	OK          bool         `json:"ok"`
	Error       string       `json:"error,omitempty"`
	Duration    float64      `json:"duration_s"`
	Bytes       uint64       `json:"bytes"`
	Connections int          `json:"connections"`
	Stack       string       `json:"stack_address"`
	HeapStart   uint64       `json:"heap_inuse_start"`
	HeapEnd     uint64       `json:"heap_inuse_end"`
	HeapGrowth  int64        `json:"heap_growth"`
	MaxGrowth   uint64       `json:"max_heap_growth"`
	Samples     []soakSample `json:"samples"`
}

func runSoak(args []string) error {
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	dur := fs.Duration("duration", time.Minute, "how long to run")
	interval := fs.Duration("interval", time.Second, "sampling interval")
	connSize := uint64(256 << 20)
	fs.Var(sizeValue{&connSize}, "conn-size", "bytes per connection (connections run back to back)")
	maxGrowth := uint64(16 << 20)
	fs.Var(sizeValue{&maxGrowth}, "max-heap-growth", "fail if the in-use heap grows more than this from the first samples to the end")
	labf := addLabFlags(fs, false)
	jsonOut := fs.Bool("json", false, "print the summary as JSON")
	ipv6 := fs.Bool("ipv6", false, "use IPv6 addresses (neighbour discovery instead of ARP)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: xdevmem soak [--duration 1m] [flags]\n\nReceives at full rate through the emulated devmem path for the duration (connections back\nto back, every byte validated, every token returned) and reports memory over time. Exit\nstatus 1 if the heap grows beyond --max-heap-growth or anything fails.\n\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	lab, _, err := labf.lab()
	if err != nil {
		return err
	}
	if err := requireRoot("soak"); err != nil {
		return err
	}
	netns.Cleanup(demoPrefix)
	w, err := harness.New(harness.Options{Prefix: demoPrefix, IPv6: *ipv6, Stack: stack.Config{Lab: lab}})
	if err != nil {
		return fmt.Errorf("set up: %w", err)
	}
	defer w.Close()
	stopSig := w.Pair.CloseOnSignal()
	defer stopSig()

	sum := soakSummary{MaxGrowth: maxGrowth, Stack: w.StackAddr()}
	var total uint64
	conns := 0
	start := time.Now()
	deadline := start.Add(*dur)
	sample := func() soakSample {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		el := time.Since(start).Seconds()
		st := w.Stack.Stats()
		return soakSample{T: el, Bytes: total, MBps: float64(total) / 1e6 / el, HeapInuse: ms.HeapInuse, HeapAlloc: ms.HeapAlloc,
			Goroutines: runtime.NumGoroutine(), FramesFree: st.Frames.Free, Frames: st.Frames.String(), Conns: conns,
			FillEmpty: st.XSK.RxFillRingEmpty, OutOfWin: st.DropOutOfWindow, Retrans: st.RetransmitBytes}
	}
	ticker := time.NewTicker(*interval)
	defer ticker.Stop()
	var runErr error
	for time.Now().Before(deadline) && runErr == nil {
		type acc struct {
			c   devmemapi.Conn
			err error
		}
		ac := make(chan acc, 1)
		go func() { c, err := w.Listener.Accept(); ac <- acc{c, err} }()
		sendErr := make(chan error, 1)
		go func() {
			c, err := w.DialPeer()
			if err != nil {
				sendErr <- err
				return
			}
			_, err = io.Copy(c, pattern.NewReader(7, connSize))
			c.Close()
			sendErr <- err
		}()
		a := <-ac
		if a.err != nil {
			runErr = a.err
			break
		}
		v := pattern.NewValidator(7)
		done := make(chan struct{})
		go func() {
			for {
				select {
				case <-ticker.C:
					s := sample()
					sum.Samples = append(sum.Samples, s)
					if !*jsonOut {
						fmt.Printf("  t=%5.1fs  %7.1f MB/s  heap in use %6.1f MiB  goroutines %3d  connections %d  drops: fill-empty %d out-of-window %d  %s\n",
							s.T, s.MBps, float64(s.HeapInuse)/(1<<20), s.Goroutines, s.Conns, s.FillEmpty, s.OutOfWin, s.Frames)
					}
				case <-done:
					return
				}
			}
		}()
		_, err := harness.Receive(a.c, w.Binding, harness.ReceiveOptions{Sink: func(b []byte) error {
			total += uint64(len(b))
			return v.Check(b)
		}})
		close(done)
		a.c.Close()
		if err == nil {
			err = <-sendErr
		}
		if err == nil && v.Offset() != connSize {
			err = fmt.Errorf("connection %d: %d of %d bytes", conns, v.Offset(), connSize)
		}
		runErr = err
		conns++
	}
	sum.Duration = time.Since(start).Seconds()
	sum.Bytes, sum.Connections = total, conns
	if len(sum.Samples) >= 2 {
		// Baseline: the largest heap of the first fifth (after warm-up).
		k := max(1, len(sum.Samples)/5)
		for _, s := range sum.Samples[:k] {
			sum.HeapStart = max(sum.HeapStart, s.HeapInuse)
		}
		sum.HeapEnd = sum.Samples[len(sum.Samples)-1].HeapInuse
		sum.HeapGrowth = int64(sum.HeapEnd) - int64(sum.HeapStart)
		if runErr == nil && sum.HeapGrowth > int64(maxGrowth) {
			runErr = fmt.Errorf("heap in use grew %d bytes (from %d to %d), more than %d", sum.HeapGrowth, sum.HeapStart, sum.HeapEnd, maxGrowth)
		}
	} else if runErr == nil {
		runErr = fmt.Errorf("too few samples (%d): run longer than two intervals", len(sum.Samples))
	}
	sum.OK = runErr == nil
	if runErr != nil {
		sum.Error = runErr.Error()
	}
	if *jsonOut {
		writeJSON(os.Stdout, sum)
	} else {
		fmt.Printf("xdevmem soak: %d bytes to %s over %d connections in %.1f s (%.1f MB/s); heap in use %.1f -> %.1f MiB (%+.1f MiB, limit %.1f)\n",
			total, sum.Stack, conns, sum.Duration, float64(total)/1e6/sum.Duration, float64(sum.HeapStart)/(1<<20), float64(sum.HeapEnd)/(1<<20),
			float64(sum.HeapGrowth)/(1<<20), float64(maxGrowth)/(1<<20))
	}
	if runErr != nil {
		fmt.Fprintf(os.Stderr, "xdevmem soak: FAILED: %v\n", runErr)
		return exitError{1}
	}
	return nil
}

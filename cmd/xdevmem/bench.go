package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/xdevmem/xdevmem/internal/bench"
	"github.com/xdevmem/xdevmem/internal/netns"
)

// The sender side of a bench run is a hidden subcommand: the bench re-runs
// this binary in the peer namespace so its CPU time stays out of the
// receiver's getrusage.
func init() {
	commands[bench.PeerCommand] = func(args []string) error { return bench.PeerMain(args, os.Stdout) }
}

func runBench(args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	runs := fs.Int("runs", 5, "runs per row (rows alternate: A B C … A B C …)")
	size := uint64(1 << 30)
	fs.Var(sizeValue{&size}, "size", "payload of each TCP transfer")
	udp := fs.Duration("udp-duration", 2*time.Second, "length of the UDP flood of the bare AF_XDP row")
	rows := fs.String("rows", "", "comma-separated rows to run, or all (default: "+strings.Join(bench.DefaultRows, ",")+"; known: "+strings.Join(bench.RowIDs(), ",")+")")
	quick := fs.Bool("quick", false, "one run per row, 32 MiB transfers, 0.3 s flood: checks every row works (under a minute)")
	jsonOut := fs.Bool("json", false, "print the report as JSON instead of tables")
	plotFile := fs.String("plot", "", "write a bar chart of goodput and CPU/GB per row to this PNG file")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the whole bench process (the receiving side) to FILE; use with --rows to profile one row")
	memprofile := fs.String("memprofile", "", "write an allocation profile of the whole bench process to FILE at the end (go tool pprof -sample_index=alloc_objects FILE)")
	udpSocket := fs.Bool("udp-socket", false, "flood the bare AF_XDP row from a UDP socket without GSO (sendmmsg of single datagrams) instead of UDP_SEGMENT sends")
	xskFlood := fs.Bool("xsk-flood", false, "flood the bare AF_XDP row from an AF_XDP socket on the peer's veth end instead of UDP_SEGMENT sends")
	idle := fs.Duration("idle-wait", 0, "before each run, wait up to this long for the machine to be idle (other jobs skew the figures)")
	from := fs.String("from", "", "render a report saved with --json from FILE (table, --json, --plot) instead of measuring")
	quiet := fs.Bool("q", false, "no per-run progress on stderr")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: xdevmem bench [flags]\n\nMeasures kernel TCP, gVisor's stock AF_XDP path, xdevmem's devmem RX and a bare AF_XDP loop on\nfresh veth pairs, each row --runs times, alternating rows. The sender runs as a separate process\nin the peer namespace; receiver CPU is this process's getrusage.\n\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	cfg := bench.Config{Runs: *runs, Size: size, UDPDuration: *udp, Prefix: bench.DefaultPrefix, IdleWait: *idle, UDPSocket: *udpSocket, XSKFlood: *xskFlood, Quick: *quick}
	if *quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["runs"] {
			cfg.Runs = 1
		}
		if !set["size"] {
			cfg.Size = 32 << 20
		}
		if !set["udp-duration"] {
			cfg.UDPDuration = 300 * time.Millisecond
		}
		cfg.RunTimeout = 45 * time.Second
	}
	if *from != "" {
		f, err := os.Open(*from)
		if err != nil {
			return err
		}
		rep, err := bench.ReadReport(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", *from, err)
		}
		return writeBenchReport(rep, *jsonOut, *plotFile, *quiet)
	}
	var ids []string
	if *rows != "" {
		ids = strings.Split(*rows, ",")
	}
	var err error
	if cfg.Rows, err = bench.LookupRows(ids); err != nil {
		return err
	}
	if err := requireRoot("bench"); err != nil {
		return err
	}
	if !*quiet {
		cfg.Log = os.Stderr
	}

	// Ctrl-C: remove the namespaces of the run in progress (their veth and
	// XDP program go with them; the sender dies with us) and exit.
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigc)
	finished := make(chan struct{})
	defer close(finished)
	go func() {
		select {
		case s := <-sigc:
			fmt.Fprintf(os.Stderr, "\nxdevmem bench: %v: removing namespaces\n", s)
			netns.CloseAll()
			os.Exit(130)
		case <-finished:
		}
	}()

	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	rep, err := bench.Run(cfg)
	if err != nil {
		return err
	}
	if *memprofile != "" {
		f, err := os.Create(*memprofile)
		if err != nil {
			return err
		}
		err = pprof.Lookup("allocs").WriteTo(f, 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("memprofile: %w", err)
		}
	}
	return writeBenchReport(rep, *jsonOut, *plotFile, *quiet)
}

// writeBenchReport prints the report (tables or JSON), writes the plot and
// fails when a row has no successful run.
func writeBenchReport(rep *bench.Report, jsonOut bool, plotFile string, quiet bool) error {
	var out io.Writer = os.Stdout
	var err error
	if jsonOut {
		err = rep.WriteJSON(out)
	} else {
		err = rep.WriteTable(out)
	}
	if err != nil {
		return err
	}
	if plotFile != "" {
		if err := rep.WritePlot(plotFile); err != nil {
			return fmt.Errorf("plot: %w", err)
		}
		if !quiet {
			fmt.Fprintf(os.Stderr, "xdevmem bench: wrote %s\n", plotFile)
		}
	}
	if failed := rep.Failed(); len(failed) > 0 {
		fmt.Fprintf(os.Stderr, "xdevmem bench: no successful run for %s\n", strings.Join(failed, ", "))
		return exitError{1}
	}
	return nil
}

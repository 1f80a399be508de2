package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/xdevmem/xdevmem/compat"
)

func runProbe(args []string) error {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	ifname := fs.String("f", "", "interface to probe (default: every interface but loopback)")
	jsonOut := fs.Bool("json", false, "print the result as JSON (an array of results without -f)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: xdevmem probe [-f IFACE] [--json]\n\nReports, check by check, whether IFACE can do real (kernel) devmem TCP and, if not, why;\nwithout -f, every interface of this network namespace but loopback. Exit status 0 when it\n(or, without -f, any of them) can.\n\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *ifname == "" {
		return probeAll(os.Stdout, *jsonOut)
	}
	ok, err := compat.RunProbe(os.Stdout, *ifname, *jsonOut)
	if err != nil {
		return err
	}
	if !ok {
		return exitError{1}
	}
	return nil
}

// probeAll probes every interface of the namespace but loopback and
// prints the results: tables one after another, or one JSON array.
func probeAll(w io.Writer, asJSON bool) error {
	ifs, err := net.Interfaces()
	if err != nil {
		return fmt.Errorf("list interfaces: %w", err)
	}
	results := []*compat.ProbeResult{}
	for _, ifi := range ifs {
		if ifi.Flags&net.FlagLoopback != 0 {
			continue
		}
		r, err := compat.Probe(ifi.Name)
		if err != nil {
			return err
		}
		results = append(results, r)
	}
	if asJSON {
		err = writeJSON(w, results)
	} else {
		if len(results) == 0 {
			_, err = fmt.Fprintln(w, "xdevmem probe: no interface besides loopback in this network namespace")
		}
		for i, r := range results {
			if i > 0 {
				fmt.Fprintln(w)
			}
			if err = r.WriteTable(w); err != nil {
				break
			}
		}
	}
	if err != nil {
		return fmt.Errorf("probe: write: %w", err)
	}
	for _, r := range results {
		if r.Supported() {
			return nil
		}
	}
	return exitError{1}
}

package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/xdevmem/xdevmem/compat"
)

func runProbe(args []string) error {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	ifname := fs.String("f", "", "interface to probe")
	jsonOut := fs.Bool("json", false, "print the result as JSON")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: xdevmem probe -f IFACE [--json]\n\nReports, check by check, whether IFACE can do real (kernel) devmem TCP and, if not, why.\nExit status 0 when it can.\n\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *ifname == "" {
		fs.Usage()
		return fmt.Errorf("-f IFACE is required")
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

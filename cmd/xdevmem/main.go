// Command xdevmem runs Linux devmem TCP's receive path on any Linux host:
// an AF_XDP UMEM stands in for the dmabuf, an XDP program steers the flows,
// gVisor's netstack runs TCP and the payload reaches the application as
// devmem tokens.
//
// Usage:
//
//	xdevmem demo   [--size 1GiB] [--json]        build a namespace pair, send, receive, validate
//	xdevmem server -f IFACE -s ADDR [-p PORT] [-v N] [-L] [-o FILE] [--json]
//	xdevmem probe  [-f IFACE] [--json]            can this interface (each one) do real devmem?
//	xdevmem client -f IFACE -s SERVER -c CLIENT [-p PORT] [-z N] [--size N -v N]   send from a TX dmabuf
//	xdevmem soak   [--duration 1m] [--json]       full-rate receive, memory over time
//
// The server takes ncdevmem's flags (-l -s -c -p -f -v -L -t -q -a).
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// exitError carries a process exit status.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// ExitCode is the status; it marks the error as reported already.
func (e exitError) ExitCode() int { return e.code }

var commands = map[string]func(args []string) error{
	"demo":   runDemo,
	"server": runServer,
	"probe":  runProbe,
	"soak":   runSoak,
	"bench":  runBench,
	"client": runClient, // client.go: devmem TX, like ncdevmem's client mode
	// ncdevmem.go: the selftest's command line, unchanged; also run when
	// invoked through a link named ncdevmem.
	"ncdevmem": runNcdevmem,
}

func usage(w io.Writer) {
	fmt.Fprint(w, `xdevmem: devmem TCP emulated on AF_XDP

Commands:
  demo     build two namespaces and a veth pair, send the ncdevmem -v 7 pattern from a
           kernel TCP client, receive it through the emulated devmem path, validate it
  server   receive one connection on an interface, like ncdevmem -l
  probe    report whether an interface can do real (kernel) devmem, check by check
  client   send stdin (or a pattern) from a TX dmabuf, like ncdevmem's client mode
  soak     receive at full rate for a duration and report memory over time
  bench    compare kernel TCP, gVisor's AF_XDP path and devmem RX/TX side by side
  ncdevmem the kernel selftest's ncdevmem, flags unchanged (also as a link named ncdevmem)

Run 'xdevmem COMMAND -h' for a command's flags.
`)
}

func main() {
	args := os.Args[1:]
	name := filepath.Base(os.Args[0])
	if name == "ncdevmem" {
		args = append([]string{"ncdevmem"}, args...)
	}
	if len(args) == 0 {
		usage(os.Stderr)
		os.Exit(2)
	}
	cmd, ok := commands[args[0]]
	if !ok {
		if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
			usage(os.Stdout)
			return
		}
		fmt.Fprintf(os.Stderr, "%s: unknown command %q\n", name, args[0])
		usage(os.Stderr)
		os.Exit(2)
	}
	if err := cmd(args[1:]); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		fmt.Fprintf(os.Stderr, "xdevmem %s: %v\n", args[0], err)
		os.Exit(1)
	}
}

package main

import "github.com/xdevmem/xdevmem/internal/ncdevmem"

// runNcdevmem is the "ncdevmem" command (internal/ncdevmem): the kernel
// selftest's command line, its client mode run by runClient.
func runNcdevmem(args []string) error {
	if code := ncdevmem.Run(args, ncdevmem.Options{Client: runClient}); code != 0 {
		return exitError{code}
	}
	return nil
}

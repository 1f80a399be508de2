package compat_test

import (
	"fmt"
	"log"
	"net/netip"
	"os"

	"github.com/xdevmem/xdevmem/compat"
	"github.com/xdevmem/xdevmem/devmemapi"
)

// Probe an interface and print the table a person acts on (needs
// CAP_NET_ADMIN for the bind-rx check).
func ExampleProbe() {
	r, err := compat.Probe("eth0")
	if err != nil {
		log.Fatal(err)
	}
	r.WriteTable(os.Stdout)
	if !r.Supported() {
		fmt.Println("kernel devmem unavailable:", r.Reason())
	}
}

// Open the best backend for an interface and say which and why. The
// emulated constructor comes from package stack.
func ExampleOpen() {
	var newEmulated func() (devmemapi.Provider, error) // stack's constructor
	p, choice, err := compat.Open(compat.Options{Backend: compat.BackendAuto, Ifname: "eth0", Emulated: newEmulated})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	fmt.Printf("backend %s: %s\n", choice.Backend, choice.Reason)

	b, err := p.BindRX(devmemapi.BindRXConfig{Queues: []uint32{1}})
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	l, err := p.Listen(netip.MustParseAddrPort("0.0.0.0:5201"))
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
}

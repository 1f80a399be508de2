package stack

// NIC is the emulated NIC's control plane, the settings ethtool changes on
// a devmem NIC: rings (ethtool -G: tcp-data-split, hds-thresh; rings.go),
// channels (-L), the RSS spread (-X) and ntuple flow rules (-N; steer.go).
// The kernel's checks apply with its errnos: a setting that would take a
// bound queue away, or turn header split off under a binding, fails.
// Get it with Stack.NIC; it is safe for concurrent use.
type NIC struct {
	// s holds the settings: BindRX checks them under the same locks.
	s *Stack
}

// NIC returns the stack's emulated NIC.
func (s *Stack) NIC() *NIC { return &s.nic }

package compat

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
)

// Backend names a backend, as the commands' --backend flag and
// XDEVMEM_BACKEND spell it.
type Backend string

// Backends.
const (
	// BackendAuto picks the kernel where the probe passes, else the
	// emulation.
	BackendAuto Backend = "auto"
	// BackendKernel is the kernel's own devmem TCP.
	BackendKernel Backend = "kernel"
	// BackendEmulated is the AF_XDP + gVisor emulation.
	BackendEmulated Backend = "emulated"
)

// ParseBackend reads a backend name; "" is BackendAuto.
func ParseBackend(s string) (Backend, error) {
	switch b := Backend(s); b {
	case "", BackendAuto:
		return BackendAuto, nil
	case BackendKernel, BackendEmulated:
		return b, nil
	}
	return "", fmt.Errorf("backend %q: want auto, kernel or emulated: %w", s, unix.EINVAL)
}

// Options says which backend Open should return.
type Options struct {
	// Backend is BackendAuto (also ""), BackendKernel or BackendEmulated.
	Backend Backend
	// Ifname is the interface devmem runs on. The kernel backend needs it;
	// with auto and no name Open picks the emulation.
	Ifname string
	// Emulated constructs the emulated backend (package stack). compat
	// does not import it; the command wires it in.
	Emulated func() (devmemapi.Provider, error)
	// Env reaches the kernel for the probe and the kernel backend; the
	// zero value is the real kernel in the calling thread's namespace.
	Env Env
}

// Choice is the backend Open chose and why, in words a person can act on.
type Choice struct {
	// Backend is BackendKernel or BackendEmulated.
	Backend Backend `json:"backend"`
	// Reason says why.
	Reason string `json:"reason"`
	// Probe is the probe's result, nil when Open did not probe.
	Probe *ProbeResult `json:"probe,omitempty"`
}

// Open returns the backend opts asks for. With BackendAuto it probes
// opts.Ifname and returns the kernel backend when every check passes, the
// emulation otherwise, and says why in the Choice; where the emulation
// cannot run either (not an Ethernet device) it fails with the probe's
// *UnsupportedError and no Choice. A forced kernel backend
// on an interface that fails the probe fails with the probe's
// *UnsupportedError (matching devmemapi.ErrNotSupported and the kernel's
// errno, such as unix.EOPNOTSUPP); the Choice is returned with it.
func Open(opts Options) (devmemapi.Provider, *Choice, error) {
	switch opts.Backend {
	case BackendEmulated:
		ch := &Choice{Backend: BackendEmulated, Reason: "the emulated backend was asked for"}
		p, err := openEmulated(opts)
		return p, ch, err

	case BackendKernel:
		ch := &Choice{Backend: BackendKernel, Reason: "the kernel backend was asked for"}
		if opts.Ifname == "" {
			return nil, ch, fmt.Errorf("open kernel backend: no interface given: %w", unix.EINVAL)
		}
		r, err := opts.Env.Probe(opts.Ifname)
		if err != nil {
			return nil, ch, fmt.Errorf("open kernel backend: %w", err)
		}
		ch.Probe = r
		if !r.Supported() {
			ch.Reason += "; " + r.Reason()
			return nil, ch, fmt.Errorf("open kernel backend: %w", r.Err())
		}
		ch.Reason += "; " + r.Reason()
		p, err := NewKernelProvider(KernelOptions{Ifname: opts.Ifname, Env: opts.Env})
		return providerOrNil(p, err), ch, err

	case BackendAuto, "":
		if opts.Ifname == "" {
			ch := &Choice{Backend: BackendEmulated, Reason: "no interface given to probe, so the kernel backend cannot be checked"}
			p, err := openEmulated(opts)
			return p, ch, err
		}
		r, err := opts.Env.Probe(opts.Ifname)
		if err != nil {
			return nil, nil, fmt.Errorf("open: %w", err)
		}
		if r.Supported() {
			ch := &Choice{Backend: BackendKernel, Reason: r.Reason(), Probe: r}
			p, err := NewKernelProvider(KernelOptions{Ifname: opts.Ifname, Env: opts.Env})
			return providerOrNil(p, err), ch, err
		}
		if em := r.Emulation; em != nil && !em.Possible {
			return nil, nil, fmt.Errorf("open: no backend can run on %s: %w; and %s", opts.Ifname, r.Err(), em.Detail)
		}
		ch := &Choice{Backend: BackendEmulated, Probe: r,
			Reason: fmt.Sprintf("kernel devmem unavailable on %s (%s); using the emulation", opts.Ifname, r.Reason())}
		p, err := openEmulated(opts)
		if err != nil {
			return nil, ch, fmt.Errorf("%w (and %w)", err, r.Err())
		}
		return p, ch, nil
	}
	return nil, nil, fmt.Errorf("open: unknown backend %q (want auto, kernel or emulated): %w", opts.Backend, unix.EINVAL)
}

func openEmulated(opts Options) (devmemapi.Provider, error) {
	if opts.Emulated == nil {
		return nil, fmt.Errorf("open emulated backend: not wired into this program: %w", devmemapi.ErrNotSupported)
	}
	p, err := opts.Emulated()
	if err != nil {
		return nil, fmt.Errorf("open emulated backend: %w", err)
	}
	return p, nil
}

// providerOrNil keeps a nil *KernelProvider from becoming a non-nil
// interface.
func providerOrNil(p *KernelProvider, err error) devmemapi.Provider {
	if err != nil {
		return nil
	}
	return p
}

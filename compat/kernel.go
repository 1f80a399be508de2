package compat

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat/netdev"
	"github.com/xdevmem/xdevmem/devmemapi"
)

// KernelOptions configures the kernel backend.
type KernelOptions struct {
	// Ifname is the interface BindRX binds on when BindRXConfig.Ifindex
	// is 0; it may be empty when every BindRX names an ifindex.
	Ifname string
	// Env reaches the kernel; the zero value is the real kernel in the
	// calling thread's network namespace.
	Env Env
}

// KernelProvider is the kernel backend: bindings through netdev genetlink,
// dmabufs from the caller or /dev/udmabuf, connections over kernel TCP
// sockets. It does not configure the NIC (header split, ntuple rules
// steering flows to the bound queues); Probe says what is missing.
//
// Its methods may be called concurrently.
type KernelProvider struct {
	env     Env
	ifname  string
	ifindex int

	mu     sync.Mutex
	open   map[io.Closer]struct{}
	closed bool
}

var _ devmemapi.Provider = (*KernelProvider)(nil)

// NewKernelProvider returns the kernel backend. It resolves opts.Ifname
// now, in the calling thread's namespace (or through opts.Env).
func NewKernelProvider(opts KernelOptions) (*KernelProvider, error) {
	p := &KernelProvider{env: opts.Env, ifname: opts.Ifname, open: make(map[io.Closer]struct{})}
	if opts.Ifname != "" {
		idx, _, err := opts.Env.lookup(opts.Ifname)
		if err != nil {
			return nil, fmt.Errorf("kernel backend: %w", err)
		}
		p.ifindex = idx
	}
	return p, nil
}

// Name is "kernel".
func (p *KernelProvider) Name() string { return "kernel" }

func (p *KernelProvider) track(c io.Closer) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return devmemapi.ErrClosed
	}
	p.open[c] = struct{}{}
	return nil
}

func (p *KernelProvider) untrack(c io.Closer) {
	p.mu.Lock()
	delete(p.open, c)
	p.mu.Unlock()
}

// BindRX binds a dmabuf to RX queues with NETDEV_CMD_BIND_RX over a netlink
// connection of its own, which the Binding keeps: closing the Binding
// closes it and the kernel unbinds. The dmabuf is cfg.DmabufFD (duplicated;
// the caller keeps its fd) when positive, else a new udmabuf of cfg.Size
// bytes (DefaultDmabufSize when 0); without /dev/udmabuf that fails with an
// error matching devmemapi.ErrNotSupported. cfg.Autorelease is sent as
// NETDEV_A_DMABUF_AUTORELEASE, which only kernels with the autorelease
// series accept (Linux 6.18 refuses it: EINVAL "Unknown attribute type");
// leave it nil elsewhere. The kernel's refusals match their errno and
// devmemerr case.
func (p *KernelProvider) BindRX(cfg devmemapi.BindRXConfig) (devmemapi.Binding, error) {
	ifindex, name, d, err := p.bindDmabuf("bind rx", cfg.Ifindex, cfg.DmabufFD, cfg.Size)
	if err != nil {
		return nil, err
	}
	c, err := p.env.netdev()
	if err != nil {
		d.close()
		return nil, fmt.Errorf("bind rx %s: %w", name, err)
	}
	id, err := c.BindRX(netdev.BindRXRequest{
		Ifindex:     ifindex,
		FD:          d.fd,
		Queues:      netdev.RXQueues(cfg.Queues...),
		Autorelease: cfg.Autorelease,
	})
	if err != nil {
		c.Close()
		d.close()
		return nil, fmt.Errorf("bind rx %s queues %v: %w", name, cfg.Queues, err)
	}
	b := &kernelBinding{p: p, c: c, id: id, d: d}
	if err := p.track(b); err != nil {
		b.close()
		return nil, fmt.Errorf("bind rx: %w", err)
	}
	return b, nil
}

// Listen listens for TCP on addr with a kernel socket in the calling
// thread's namespace.
func (p *KernelProvider) Listen(addr netip.AddrPort) (devmemapi.Listener, error) {
	kl, err := listenTCP(addr)
	if err != nil {
		return nil, err
	}
	if err := p.track(kl); err != nil {
		kl.l.Close()
		return nil, fmt.Errorf("listen: %w", err)
	}
	kl.onClose = func() { p.untrack(kl) }
	return &providerListener{kl, p}, nil
}

// providerListener tracks accepted connections so Provider.Close closes
// them.
type providerListener struct {
	*kernelListener
	p *KernelProvider
}

func (l *providerListener) Accept() (devmemapi.Conn, error) {
	kc, err := l.accept()
	if err != nil {
		return nil, err
	}
	if err := l.p.track(kc); err != nil {
		kc.c.Close()
		return nil, fmt.Errorf("accept: %w", err)
	}
	kc.onClose = func() { l.p.untrack(kc) }
	return kc, nil
}

// Close closes every binding, listener and connection the provider still
// holds. Later calls fail with devmemapi.ErrClosed.
func (p *KernelProvider) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	open := p.open
	p.open = nil
	p.mu.Unlock()
	var errs []error
	for c := range open {
		if err := c.Close(); err != nil && !errors.Is(err, devmemapi.ErrClosed) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close kernel backend: %w", err)
	}
	return nil
}

// kernelBinding is a bind-rx binding: its netlink connection and dmabuf.
type kernelBinding struct {
	p  *KernelProvider
	c  *netdev.Conn
	id uint32
	d  *dmabuf

	once sync.Once
	err  error
}

var _ devmemapi.Binding = (*kernelBinding)(nil)

func (b *kernelBinding) ID() uint32   { return b.id }
func (b *kernelBinding) Size() uint64 { return b.d.size }

func (b *kernelBinding) ReadAt(p []byte, off int64) (int, error) { return b.d.ReadAt(p, off) }

// Close closes the netlink connection (the kernel unbinds) and the dmabuf.
func (b *kernelBinding) Close() error {
	b.p.untrack(b)
	return b.close()
}

func (b *kernelBinding) close() error {
	b.once.Do(func() {
		err := b.c.Close()
		if derr := b.d.close(); err == nil {
			err = derr
		}
		if err != nil {
			b.err = fmt.Errorf("unbind dmabuf %d: %w", b.id, err)
		}
	})
	return b.err
}

// bindDmabuf is the start of a bind (op "bind rx" or "bind tx"): the
// provider is open, the interface is known (ifindex 0: the provider's), and
// the dmabuf is the caller's fd (duplicated) when positive, else a new
// udmabuf of size bytes. It returns the interface, its name for errors,
// and the dmabuf.
func (p *KernelProvider) bindDmabuf(op string, ifindex, fd int, size uint64) (int, string, *dmabuf, error) {
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return 0, "", nil, fmt.Errorf("%s: %w", op, devmemapi.ErrClosed)
	}
	name := p.ifname
	if ifindex != 0 && ifindex != p.ifindex {
		name = fmt.Sprintf("ifindex %d", ifindex)
	} else {
		ifindex = p.ifindex
	}
	if ifindex == 0 {
		return 0, "", nil, fmt.Errorf("%s: no interface: %w", op, unix.EINVAL)
	}
	var d *dmabuf
	var err error
	if fd > 0 {
		d, err = adoptDmabuf(fd)
	} else {
		d, err = newUdmabuf(p.env.UdmabufPath, size)
	}
	if err != nil {
		return 0, "", nil, fmt.Errorf("%s %s: %w", op, name, err)
	}
	return ifindex, name, d, nil
}

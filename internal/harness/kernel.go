package harness

import (
	"errors"
	"fmt"
	"golang.org/x/sys/unix"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/xdevmem/xdevmem/internal/netns"
	"github.com/xdevmem/xdevmem/internal/pattern"
)

// KernelResult is one kernel-TCP baseline transfer.
type KernelResult struct {
	// Bytes received and Elapsed from the first byte to the end.
	Bytes   uint64
	Elapsed time.Duration
}

// KernelBaseline measures the kernel's own TCP receive over the same veth
// pair: it configures the emulated side's address in the kernel (no XDP
// program may be attached then), receives size bytes of the period-n
// pattern from the peer into a buffer with plain reads, validates them, and
// removes the address again.
func KernelBaseline(p *netns.Pair, size uint64, period int) (KernelResult, error) {
	// The address may be the kernel's already (a shared-address world);
	// otherwise it is lent to the kernel for the run.
	switch err := p.Emu.AddAddr(p.EmuIf, p.EmuAddr); {
	case errors.Is(err, unix.EEXIST):
	case err != nil:
		return KernelResult{}, fmt.Errorf("kernel baseline: %w", err)
	default:
		defer p.Emu.DelAddr(p.EmuIf, p.EmuAddr)
	}
	var ln net.Listener
	if err := p.Emu.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(p.EmuAddr.Addr(), 0).String())
		return err
	}); err != nil {
		return KernelResult{}, fmt.Errorf("kernel baseline: listen: %w", err)
	}
	defer ln.Close()
	errc := make(chan error, 1)
	go func() {
		var c net.Conn
		err := p.Peer.Do(func() error {
			var err error
			c, err = net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
			return err
		})
		if err != nil {
			errc <- err
			return
		}
		_, err = io.Copy(c, pattern.NewReader(period, size))
		c.Close()
		errc <- err
	}()
	c, err := ln.Accept()
	if err != nil {
		return KernelResult{}, fmt.Errorf("kernel baseline: accept: %w", err)
	}
	defer c.Close()
	buf := make([]byte, 819200)
	v := pattern.NewValidator(period)
	var r KernelResult
	var start time.Time
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if r.Bytes == 0 {
				start = time.Now()
			}
			r.Bytes += uint64(n)
			v.Check(buf[:n])
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return r, fmt.Errorf("kernel baseline: read: %w", err)
		}
	}
	r.Elapsed = time.Since(start)
	if err := <-errc; err != nil {
		return r, fmt.Errorf("kernel baseline: send: %w", err)
	}
	if v.Err() != nil || r.Bytes != size {
		return r, fmt.Errorf("kernel baseline: received %d of %d bytes: %v", r.Bytes, size, v.Err())
	}
	return r, nil
}

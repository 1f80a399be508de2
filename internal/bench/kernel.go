package bench

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"
)

// readBufSize is the receive buffer of the copying rows: ncdevmem's 819200,
// as harness.Receive uses for the devmem rows.
const readBufSize = 819200

// acceptTimeout bounds the wait for the sender's connection.
const acceptTimeout = 30 * time.Second

// runKernel measures the kernel's TCP receive: the emulated side's address
// configured in the kernel (no XDP program), a listening socket, plain reads
// into a buffer.
func (r *runner) runKernel(row Row, m *Measurement, ab *aborter) error {
	p, err := r.newPair(row)
	if err != nil {
		return err
	}
	defer p.Close()
	if err := p.Emu.AddAddr(p.EmuIf, p.EmuAddr); err != nil {
		return err
	}
	addr := netip.AddrPortFrom(p.EmuAddr.Addr(), benchPort)
	var ln *net.TCPListener
	if err := p.Emu.Do(func() error {
		l, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(addr))
		ln = l
		return err
	}); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()
	snd, err := r.startPeer(p, peerArgs("tcp", addr.String(), r.cfg.Size, 0))
	if err != nil {
		return err
	}
	defer snd.kill()
	ab.onAbort(func() { snd.kill(); ln.Close() })
	ln.SetDeadline(time.Now().Add(acceptTimeout))
	c, err := ln.Accept()
	if err != nil {
		return fmt.Errorf("accept: %w (sender: %s)", err, strings.TrimSpace(snd.err.String()))
	}
	defer c.Close()
	ab.onAbort(func() { c.Close() })
	if r.buf == nil {
		r.buf = make([]byte, readBufSize)
	}
	s0 := takeSample()
	got, err := readToEOF(c, r.buf)
	if err != nil {
		return err
	}
	s1 := takeSample()
	c.Close()
	m.Bytes = got
	m.addWindow(between(s0, s1))
	// recvmsg copies every payload byte once, from the skb into the buffer.
	m.Copied, m.CopiedMeasured = got, false
	rep, err := snd.wait(30 * time.Second)
	if err != nil {
		return err
	}
	m.addPeer(rep)
	if d, err := vethDrops(p); err == nil {
		m.Drops += d
	}
	if got != r.cfg.Size {
		return fmt.Errorf("received %d of %d bytes", got, r.cfg.Size)
	}
	return nil
}

// readToEOF reads r into buf until the end of the stream, discarding the
// bytes (the receiver under test is the one that copied them), and returns
// how many it read.
func readToEOF(r io.Reader, buf []byte) (uint64, error) {
	var got uint64
	for {
		n, err := r.Read(buf)
		got += uint64(n)
		if errors.Is(err, io.EOF) {
			return got, nil
		}
		if err != nil {
			return got, fmt.Errorf("read after %d bytes: %w", got, err)
		}
	}
}

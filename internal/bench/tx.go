package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/internal/harness"
	"github.com/xdevmem/xdevmem/internal/netns"
	"github.com/xdevmem/xdevmem/internal/pattern"
	"github.com/xdevmem/xdevmem/stack"
)

// TX geometry: the TX dmabuf is cut into slots of txSendSize bytes, one
// send call each, used in turn; a slot is reused only after its send
// completed (as ncdevmem's client does).
const (
	txDmabufSize = 8 << 20
	txSendSize   = 1 << 20
)

// dialTimeout bounds the connect to the peer, retried while it starts.
const dialTimeout = 10 * time.Second

// runDevmemTX measures xdevmem's emulated devmem TX: a TX binding over the
// UMEM, filled once (the producer of a real dmabuf is a device, not the
// CPU), sendmsg(SCM_DEVMEM_DMABUF, MSG_ZEROCOPY) of 1 MiB slots and their
// MSG_ERRQUEUE completions, to a kernel TCP receiver in the peer namespace.
func (r *runner) runDevmemTX(row Row, m *Measurement, ab *aborter) error {
	w, err := harness.New(harness.Options{
		Prefix: r.cfg.Prefix, MTU: row.MTU, NoBind: true, Port: benchPort,
		Stack: stack.Config{},
	})
	if err != nil {
		return err
	}
	defer w.Close()
	ab.onAbort(func() { w.Close() })
	if !row.DefaultOffloads {
		if err := offloadsOff(w.Pair); err != nil {
			return err
		}
	}
	peerAddr := netip.AddrPortFrom(w.Pair.PeerAddr.Addr(), benchPort)
	peer, err := r.startPeer(w.Pair, peerArgs("tcp-recv", peerAddr.String(), 0, 0))
	if err != nil {
		return err
	}
	defer peer.kill()
	ab.onAbort(peer.kill)
	b, err := w.Stack.BindTX(devmemapi.BindTXConfig{Ifindex: w.Pair.EmuIndex, Size: txDmabufSize})
	if err != nil {
		return err
	}
	defer b.Close()
	mem := b.(interface{ Bytes() []byte }).Bytes()
	pattern.Fill(7, 0, mem[:b.Size()])
	var conn devmemapi.TXConn
	deadline := time.Now().Add(dialTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err = w.Stack.Dial(ctx, peerAddr)
		cancel()
		if err == nil || time.Now().After(deadline) {
			break
		}
		select {
		case <-peer.exited():
			return fmt.Errorf("peer exited: %v: %s", peer.waitErr, strings.TrimSpace(peer.err.String()))
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err != nil {
		return fmt.Errorf("dial %v: %w", peerAddr, err)
	}
	defer conn.Close()
	ab.onAbort(func() { conn.Close() })
	if err := conn.SetZeroCopy(true); err != nil {
		return err
	}
	before := w.Stack.TXStats()
	var tr devmemapi.ZerocopyTracker
	var ranges []devmemapi.ZerocopyRange
	drain := func() error {
		var err error
		if ranges, err = devmemapi.RecvCompletions(conn, ranges[:0]); err != nil {
			return err
		}
		for _, rg := range ranges {
			if err := tr.Add(rg); err != nil {
				return err
			}
		}
		return nil
	}
	waitFor := func(id uint64) error {
		for !tr.IsDone(uint32(id)) {
			if err := ab.err(); err != nil {
				return err
			}
			if _, err := conn.PollErrQueue(100 * time.Millisecond); err != nil {
				return err
			}
			if err := drain(); err != nil {
				return err
			}
		}
		return nil
	}
	slots := uint64(txDmabufSize / txSendSize)
	iov := make([]devmemapi.Iovec, 1)
	var sends, sent uint64
	s0 := takeSample()
	for sent < r.cfg.Size {
		if sends >= slots {
			if err := waitFor(sends - slots); err != nil {
				return fmt.Errorf("completion of send %d: %w", sends-slots, err)
			}
		}
		n := min(uint64(txSendSize), r.cfg.Size-sent)
		iov[0] = devmemapi.Iovec{Base: (sends % slots) * txSendSize, Len: n}
		k, err := devmemapi.SendDmabuf(conn, b.ID(), iov, 0)
		if err != nil {
			return fmt.Errorf("sendmsg after %d bytes: %w", sent, err)
		}
		if uint64(k) != n {
			return fmt.Errorf("sendmsg sent %d of %d bytes", k, n)
		}
		sends++
		sent += n
		if err := drain(); err != nil {
			return err
		}
	}
	for id := uint64(0); id < sends; id++ {
		if err := waitFor(id); err != nil {
			return fmt.Errorf("completion of send %d: %w", id, err)
		}
	}
	s1 := takeSample()
	if err := conn.CloseWrite(); err != nil {
		return err
	}
	rep, err := peer.wait(30 * time.Second)
	if err != nil {
		return err
	}
	after := w.Stack.TXStats()
	m.Bytes = rep.Bytes
	m.addWindow(between(s0, s1))
	m.addPeer(rep)
	m.Tokens = tr.Completed()
	m.Packets = after.Segments - before.Segments
	m.Copied = after.DmabufBytesCopied - before.DmabufBytesCopied
	m.CopiedMeasured = true
	if again := after.DmabufBytes - before.DmabufBytes; again > sent {
		m.Retrans = (again - sent) / uint64(row.MTU-52)
	}
	m.Drops = stackDrops(w.Stack.Stats())
	if d, err := vethDrops(w.Pair); err == nil {
		m.Drops += d
	}
	if rep.Bytes != r.cfg.Size {
		return fmt.Errorf("peer received %d of %d bytes", rep.Bytes, r.cfg.Size)
	}
	if after.Unmapped != before.Unmapped {
		return fmt.Errorf("%d segments could not be mapped to the dmabuf", after.Unmapped-before.Unmapped)
	}
	return nil
}

// runKernelTX measures the kernel's TCP send: the emulated side's address
// configured in the kernel, a plain socket writing from a buffer to the
// kernel receiver in the peer namespace.
func (r *runner) runKernelTX(row Row, m *Measurement, ab *aborter) error {
	p, err := r.newPair(row)
	if err != nil {
		return err
	}
	defer p.Close()
	if err := p.Emu.AddAddr(p.EmuIf, p.EmuAddr); err != nil {
		return err
	}
	peerAddr := netip.AddrPortFrom(p.PeerAddr.Addr(), benchPort)
	peer, err := r.startPeer(p, peerArgs("tcp-recv", peerAddr.String(), 0, 0))
	if err != nil {
		return err
	}
	defer peer.kill()
	ab.onAbort(peer.kill)
	c, err := dialKernel(p, peerAddr, peer)
	if err != nil {
		return err
	}
	defer c.Close()
	ab.onAbort(func() { c.Close() })
	buf := make([]byte, 1<<20)
	pattern.Fill(7, 0, buf)
	s0 := takeSample()
	var sent uint64
	for sent < r.cfg.Size {
		n := min(uint64(len(buf)), r.cfg.Size-sent)
		k, err := c.Write(buf[:n])
		sent += uint64(k)
		if err != nil {
			return fmt.Errorf("write after %d bytes: %w", sent, err)
		}
	}
	if err := c.CloseWrite(); err != nil {
		return err
	}
	// The peer closes once it has read everything.
	var sink [64]byte
	if _, err := c.Read(sink[:]); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("wait for the peer to close: %w", err)
	}
	s1 := takeSample()
	rep, err := peer.wait(30 * time.Second)
	if err != nil {
		return err
	}
	m.Bytes = rep.Bytes
	m.addWindow(between(s0, s1))
	m.addPeer(rep)
	// write copies every payload byte once, from the buffer into skbs.
	m.Copied, m.CopiedMeasured = sent, false
	if info, err := tcpInfo(c); err == nil {
		m.Packets, m.Retrans = uint64(info.Data_segs_out), uint64(info.Total_retrans)
	}
	if d, err := vethDrops(p); err == nil {
		m.Drops += d
	}
	if rep.Bytes != r.cfg.Size {
		return fmt.Errorf("peer received %d of %d bytes", rep.Bytes, r.cfg.Size)
	}
	return nil
}

// dialKernel connects from the emulated side's namespace to the peer,
// retrying while the peer starts listening.
func dialKernel(p *netns.Pair, addr netip.AddrPort, peer *peerProc) (*net.TCPConn, error) {
	deadline := time.Now().Add(dialTimeout)
	for {
		var c net.Conn
		err := p.Emu.Do(func() error {
			var err error
			c, err = net.DialTimeout("tcp4", addr.String(), 2*time.Second)
			return err
		})
		if err == nil {
			return c.(*net.TCPConn), nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("dial %v: %w", addr, err)
		}
		select {
		case <-peer.exited():
			return nil, fmt.Errorf("peer exited: %v: %s", peer.waitErr, strings.TrimSpace(peer.err.String()))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// tcpInfo reads TCP_INFO of a kernel socket.
func tcpInfo(c *net.TCPConn) (*unix.TCPInfo, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var info *unix.TCPInfo
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		return nil, err
	}
	return info, ierr
}

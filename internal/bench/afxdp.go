package bench

import (
	"errors"
	"net/netip"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/umem"
)

// udpOverhead is Ethernet + IPv4 + UDP headers: a frame's length minus its
// datagram payload.
const udpOverhead = 14 + 20 + 8

// afxdpDrain is how long the loop keeps reading after the sender exited.
const afxdpDrain = 100 * time.Millisecond

// runAFXDP measures the ceiling: a bare AF_XDP receive loop (refill, take a
// batch of descriptors, count, free the frames) on the same link, fed by a
// UDP flood from the peer namespace. Nothing answers ARP on the emulated
// side, so the peer gets a static neighbour entry.
func (r *runner) runAFXDP(row Row, m *Measurement, ab *aborter) error {
	p, err := r.newPair(row)
	if err != nil {
		return err
	}
	defer p.Close()
	region, err := umem.NewRegion(umem.RegionConfig{Size: 16 << 20})
	if err != nil {
		return err
	}
	defer region.Close()
	var sock *umem.Socket
	var prog *umem.Program
	defer func() {
		if prog != nil {
			prog.Close()
		}
		if sock != nil {
			sock.Close()
		}
	}()
	err = p.Emu.Do(func() error {
		var err error
		if sock, err = umem.NewSocket(region, p.EmuIndex, umem.SocketConfig{Queue: 0}); err != nil {
			return err
		}
		if prog, err = umem.LoadProgram(umem.ProgramConfig{IPv4: []netip.Addr{p.EmuAddr.Addr()}}); err != nil {
			return err
		}
		if err = prog.SetSocket(0, sock.FD()); err != nil {
			return err
		}
		return prog.Attach(p.EmuIndex)
	})
	if err != nil {
		return err
	}
	if err := p.Peer.SetNeigh(p.PeerIf, p.EmuAddr.Addr(), p.EmuMAC); err != nil {
		return err
	}

	var stop atomic.Bool
	type loopResult struct {
		pkts, bytes   uint64
		first, last   time.Time
		s0, s1        sample
		sawAny, ended bool
	}
	done := make(chan loopResult, 1)
	go func() {
		var res loopResult
		var descs [64]unix.XDPDesc
		var frames [64]uint32
		for {
			sock.Refill()
			n := sock.Receive(descs[:])
			if n == 0 {
				if stop.Load() && (!res.sawAny || time.Since(res.last) > afxdpDrain) {
					break
				}
				sock.Wait(10)
				continue
			}
			if !res.sawAny {
				res.s0 = takeSample()
				res.first = res.s0.t
				res.sawAny = true
			}
			for i, d := range descs[:n] {
				if d.Len > udpOverhead {
					res.bytes += uint64(d.Len) - udpOverhead
				}
				frames[i] = region.FrameOf(d.Addr)
			}
			res.pkts += uint64(n)
			region.Free(frames[:n]...)
			res.last = time.Now()
		}
		res.s1 = takeSample()
		done <- res
	}()
	stopLoop := func() loopResult {
		stop.Store(true)
		sock.Wake()
		return <-done
	}
	addr := netip.AddrPortFrom(p.EmuAddr.Addr(), 9) // discard
	args := peerArgs("udp-gso", addr.String(), 0, r.cfg.UDPDuration)
	switch {
	case r.cfg.XSKFlood:
		args = peerArgs("xsk", p.PeerIf+","+p.EmuMAC.String()+","+addr.String(), 0, r.cfg.UDPDuration)
	case r.cfg.UDPSocket:
		args = peerArgs("udp", addr.String(), 0, r.cfg.UDPDuration)
	}
	snd, err := r.startPeer(p, args)
	if err != nil {
		stopLoop()
		return err
	}
	defer snd.kill()
	ab.onAbort(func() { snd.kill(); stop.Store(true); sock.Wake() })
	rep, serr := snd.wait(r.cfg.UDPDuration + time.Minute)
	res := stopLoop()
	if serr != nil {
		return serr
	}
	if !res.sawAny {
		return errors.New("no datagram reached the AF_XDP socket")
	}
	w := between(res.s0, res.s1)
	w.seconds = res.last.Sub(res.first).Seconds()
	m.addWindow(w)
	m.Bytes, m.Packets = res.bytes, res.pkts
	m.addPeer(rep)
	m.Packets = res.pkts
	m.CopiedMeasured = true // the loop reads descriptors only
	if rep.Packets > res.pkts {
		m.Drops = rep.Packets - res.pkts
	}
	return nil
}

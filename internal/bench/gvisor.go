package bench

import (
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/link/qdisc/fifo"
	"gvisor.dev/gvisor/pkg/tcpip/link/xdp"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	gstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/xdevmem/xdevmem/umem"
)

// gvisorRcvBuf is the gVisor row's TCP receive buffer: the window
// xdevmem's stack gives a connection with its default 64 MiB UMEM
// (stack.Config.RcvBuf), so that both rows advertise the same window.
const gvisorRcvBuf = 8 << 20

// runGVisor measures gVisor's own AF_XDP path: pkg/tcpip/link/xdp's
// endpoint (which copies every frame out of its UMEM into a new view) under
// a fifo qdisc as runsc configures it, steered by xdevmem's XDP program, and
// reads through gonet (which copies the payload into the reader's buffer).
// TCP options match xdevmem's stack (SACK, the same fixed receive buffer,
// no auto-tuning) so the rows differ in the receive path only.
//
// The endpoint offers no way to unmap its UMEM and rings; each run leaves
// about 2 MiB mapped in this process until it exits (the socket itself is
// unbound when the veth is deleted).
func (r *runner) runGVisor(row Row, m *Measurement, ab *aborter) error {
	p, err := r.newPair(row)
	if err != nil {
		return err
	}
	defer p.Close()
	fd := -1
	var ep gstack.LinkEndpoint
	var prog *umem.Program
	defer func() {
		if prog != nil {
			prog.Close()
		}
	}()
	err = p.Emu.Do(func() error {
		var err error
		if fd, err = unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0); err != nil {
			return fmt.Errorf("socket(AF_XDP): %w", err)
		}
		if ep, err = xdp.New(&xdp.Options{
			FD:             fd,
			Address:        tcpip.LinkAddress(p.EmuMAC),
			InterfaceIndex: p.EmuIndex,
			Bind:           true,
			QueueID:        0,
		}); err != nil {
			return fmt.Errorf("gvisor xdp endpoint: %w", err)
		}
		if prog, err = umem.LoadProgram(umem.ProgramConfig{IPv4: []netip.Addr{p.EmuAddr.Addr()}}); err != nil {
			return err
		}
		if err = prog.SetSocket(0, fd); err != nil {
			return err
		}
		return prog.Attach(p.EmuIndex)
	})
	if err != nil {
		if fd >= 0 {
			unix.Close(fd) // no stack owns the endpoint yet
		}
		return err
	}
	sep := &stockEndpoint{LinkEndpoint: ep, fd: fd}
	s := gstack.New(gstack.Options{
		NetworkProtocols:   []gstack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []gstack.TransportProtocolFactory{tcp.NewProtocol},
	})
	defer func() {
		s.Close()
		s.Wait() // removes the NIC, which stops the endpoint
		sep.stop()
		unix.Close(fd)
	}()
	sack := tcpip.TCPSACKEnabled(true)
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack)
	rb := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4096, Default: gvisorRcvBuf, Max: gvisorRcvBuf}
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &rb)
	mod := tcpip.TCPModerateReceiveBufferOption(false)
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &mod)
	qd := fifo.New(ep, runtime.GOMAXPROCS(0), 1000)
	if terr := s.CreateNICWithOptions(1, sep, gstack.NICOptions{QDisc: qd}); terr != nil {
		return fmt.Errorf("create NIC: %s", terr)
	}
	pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: tcpip.AddrFrom4(p.EmuAddr.Addr().As4()).WithPrefix()}
	pa.AddressWithPrefix.PrefixLen = p.EmuAddr.Bits()
	if terr := s.AddProtocolAddress(1, pa, gstack.AddressProperties{}); terr != nil {
		return fmt.Errorf("add address: %s", terr)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: pa.AddressWithPrefix.Subnet(), NIC: 1}})
	ln, err := gonet.ListenTCP(s, tcpip.FullAddress{NIC: 1, Addr: pa.AddressWithPrefix.Address, Port: benchPort}, ipv4.ProtocolNumber)
	if err != nil {
		return fmt.Errorf("gonet listen: %w", err)
	}
	defer ln.Close()
	addr := netip.AddrPortFrom(p.EmuAddr.Addr(), benchPort)
	snd, err := r.startPeer(p, peerArgs("tcp", addr.String(), r.cfg.Size, 0))
	if err != nil {
		return err
	}
	defer snd.kill()
	ab.onAbort(func() { snd.kill(); ln.Close() })
	c, err := acceptNet(ln, snd)
	if err != nil {
		return err
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
	// Two copies per payload byte by construction: the endpoint's
	// UMEM-to-view copy of every frame and gonet's copy into the buffer.
	m.Copied, m.CopiedMeasured = 2*got, false
	if st, err := xskStatistics(fd); err == nil {
		m.Drops = st.RxDropped + st.RxRingFull + st.RxFillRingEmptyDescs
	}
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

// acceptNet is acceptDevmem for a net.Listener.
func acceptNet(ln net.Listener, snd *peerProc) (net.Conn, error) {
	return acceptFrom(ln.Accept, ln.Close, snd)
}

// stockEndpoint passes everything to gVisor's stock AF_XDP endpoint except
// its detach (Attach(nil)), which would deadlock: it calls IsAttached, which
// read-locks the mutex Attach holds. Even undeadlocked, its dispatch loop
// treats a stop as "continue" and would spin on the signalled stop
// eventfd. No per-packet work goes through the wrapper: the endpoint hands
// received packets to the NIC directly, and the qdisc writes to the
// endpoint itself.
type stockEndpoint struct {
	gstack.LinkEndpoint
	fd   int
	once sync.Once
}

// Attach implements gstack.LinkEndpoint.
func (e *stockEndpoint) Attach(d gstack.NetworkDispatcher) {
	if d == nil {
		e.stop()
		return
	}
	e.LinkEndpoint.Attach(d)
}

// stop ends the endpoint's dispatch goroutine: the socket's descriptor is
// replaced by a pipe whose writer is closed (poll then reports POLLHUP, which
// the loop treats as an error and returns on), and the stop eventfd wakes a
// poll already blocked on the socket.
func (e *stockEndpoint) stop() {
	e.once.Do(func() {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err == nil {
			unix.Close(p[1])
			unix.Dup3(p[0], e.fd, unix.O_CLOEXEC)
			unix.Close(p[0])
		}
		efd := -1
		if v := reflect.ValueOf(e.LinkEndpoint); v.Kind() == reflect.Pointer {
			if f := v.Elem().FieldByName("stopFD"); f.IsValid() {
				if g := f.FieldByName("EFD"); g.IsValid() && g.CanInt() {
					efd = int(g.Int())
				}
			}
		}
		if efd >= 0 {
			unix.Write(efd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		}
		done := make(chan struct{})
		go func() {
			e.LinkEndpoint.Wait()
			close(done)
		}()
		select {
		case <-done:
			if efd >= 0 {
				unix.Close(efd) // the endpoint never closes it
			}
		case <-time.After(5 * time.Second):
		}
	})
}

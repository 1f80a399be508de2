package tests

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xdevmem/xdevmem/internal/harness"
	"github.com/xdevmem/xdevmem/internal/pattern"
	"github.com/xdevmem/xdevmem/internal/testutil"
	"github.com/xdevmem/xdevmem/stack"
)

// kernelService is a kernel TCP listener in the stack's namespace, on the
// stack's own address: it reads each connection to the end and validates
// the period-7 pattern.
type kernelService struct {
	ln  net.Listener
	got chan error
}

func newKernelService(t *testing.T, w *harness.World, port int) (*kernelService, error) {
	t.Helper()
	ks := &kernelService{got: make(chan error, 1)}
	err := w.Pair.Emu.Do(func() (err error) {
		ks.ln, err = net.Listen("tcp", net.JoinHostPort(w.Pair.EmuAddr.Addr().String(), fmt.Sprint(port)))
		return err
	})
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { ks.ln.Close() })
	go func() {
		c, err := ks.ln.Accept()
		if err != nil {
			ks.got <- err
			return
		}
		defer c.Close()
		v := pattern.NewValidator(7)
		n, err := io.Copy(writerFunc(v.Check), c)
		if err == nil && v.Err() != nil {
			err = v.Err()
		}
		if err == nil {
			err = fmt.Errorf("%d bytes", n) // reported as the count
		}
		ks.got <- err
	}()
	return ks, nil
}

type writerFunc func([]byte) error

func (f writerFunc) Write(p []byte) (int, error) { return len(p), f(p) }

// TestSharedAddress: the stack's address is the kernel's too. A kernel TCP
// service on the same address and another port moves 64 MiB byte-exact
// while the stack receives on its own port through devmem; ARP and NDP stay
// with the kernel (no frame but the stack's TCP reaches the stack); the
// kernel cannot take the stack's port (EADDRINUSE) nor the stack the
// kernel's; after the stack closes, the kernel serves the stack's former
// port at once. IPv4 with 1 GiB, IPv6 with 64 MiB.
func TestSharedAddress(t *testing.T) {
	for _, tc := range []struct {
		name string
		ipv6 bool
		size uint64
	}{{"ipv4", false, 1 << 30}, {"ipv6", true, 64 << 20}} {
		t.Run(tc.name, func(t *testing.T) {
			testutil.Watchdog(t, 3*time.Minute)
			w := newWorld(t, harness.Options{Shared: true, IPv6: tc.ipv6})
			if mode, why := w.Stack.AddressMode(); mode != stack.AddressShared || !strings.Contains(why, w.Pair.EmuIf) {
				t.Fatalf("address mode %v (%s), want shared", mode, why)
			}
			// The kernel's port is not the stack's to take, and the
			// stack's is not the kernel's.
			ks, err := newKernelService(t, w, 8000)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Stack.Listen(netip.AddrPortFrom(w.Pair.EmuAddr.Addr(), 8000)); !errors.Is(err, syscall.EADDRINUSE) {
				t.Fatalf("stack listen on the kernel's port: %v, want EADDRINUSE", err)
			}
			if err := w.Pair.Emu.Do(func() error {
				l, err := net.Listen("tcp", net.JoinHostPort(w.Pair.EmuAddr.Addr().String(), fmt.Sprint(w.Port)))
				if err == nil {
					l.Close()
				}
				return err
			}); !errors.Is(err, syscall.EADDRINUSE) {
				t.Fatalf("kernel listen on the stack's port: %v, want EADDRINUSE", err)
			}

			// Both transfers at once.
			kernelSent := make(chan error, 1)
			go func() {
				kernelSent <- w.Pair.Peer.Do(func() error {
					c, err := netDial(net.JoinHostPort(w.Pair.EmuAddr.Addr().String(), "8000"))
					if err != nil {
						return err
					}
					_, err = io.Copy(c, pattern.NewReader(7, 64<<20))
					if cerr := c.Close(); err == nil {
						err = cerr
					}
					return err
				})
			}()
			res := transfer(t, w, 7, tc.size)
			if res.Frags == 0 || res.DmabufBytes != tc.size {
				t.Fatalf("devmem: %d frags, %d dmabuf bytes of %d", res.Frags, res.DmabufBytes, tc.size)
			}
			waitErr(t, kernelSent, "kernel service sender")
			select {
			case err := <-ks.got:
				if err == nil || err.Error() != fmt.Sprintf("%d bytes", 64<<20) {
					t.Fatalf("kernel service: %v, want 67108864 bytes byte-exact", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("kernel service: no end of stream")
			}
			st := w.Stack.Stats()
			checkStats(t, st)
			// ARP/NDP, and the kernel service's segments, never reached
			// the stack: the program took only its port's TCP.
			if st.RxOther != 0 || st.DropNotOurs != 0 {
				t.Fatalf("the stack saw %d non-TCP frames and %d not ours: the program took more than its port", st.RxOther, st.DropNotOurs)
			}
			out, err := w.Pair.Peer.Command("ip", "neigh", "show", w.Pair.EmuAddr.Addr().String()).CombinedOutput()
			if err != nil || !strings.Contains(string(out), w.Pair.EmuMAC.String()) {
				t.Fatalf("the peer has no neighbour entry for the stack's address (answered by the kernel): %v: %s", err, out)
			}

			// After the stack closes, the kernel serves its former port
			// at once.
			w.Stack.Close()
			ks2, err := newKernelService(t, w, int(w.Port))
			if err != nil {
				t.Fatalf("kernel listen on the stack's former port: %v", err)
			}
			if err := w.Pair.Peer.Do(func() error {
				c, err := netDial(net.JoinHostPort(w.Pair.EmuAddr.Addr().String(), fmt.Sprint(w.Port)))
				if err != nil {
					return err
				}
				_, err = io.Copy(c, pattern.NewReader(7, 1<<20))
				c.Close()
				return err
			}); err != nil {
				t.Fatalf("kernel service on the former port: %v", err)
			}
			if err := <-ks2.got; err == nil || err.Error() != fmt.Sprintf("%d bytes", 1<<20) {
				t.Fatalf("kernel service on the former port: %v", err)
			}
		})
	}
}

// TestSharedAddressTX: in shared mode the stack dials out: the next hop's
// MAC comes from the kernel's neighbour table (the kernel resolves it), the
// local port is one the kernel gave and holds, and the devmem send arrives
// byte-exact.
func TestSharedAddressTX(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	const size, chunk = 64 << 20, 1 << 20
	w, b, c, sink := txWorldOpts(t, harness.Options{Shared: true}, 7*chunk, 7)
	sendRing(t, b, c, sink, size, chunk)
	local := c.LocalAddr().(*net.TCPAddr)
	if ap := local.AddrPort(); ap.Addr().Unmap() != w.Pair.EmuAddr.Addr() {
		t.Fatalf("local address %v", ap)
	}
	// The kernel holds the stack's local port: it cannot give it away.
	err := w.Pair.Emu.Do(func() error {
		l, err := net.Listen("tcp", local.String())
		if err == nil {
			l.Close()
		}
		return err
	})
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("kernel listen on the stack's local port %v: %v, want EADDRINUSE", local, err)
	}
}

// TestAddressModeErrors: the stack refuses address set-ups it cannot
// serve, saying why.
func TestAddressModeErrors(t *testing.T) {
	testutil.Watchdog(t, time.Minute)
	w := newWorld(t, harness.Options{Shared: true})
	p := w.Pair
	try := func(cfg stack.Config) error {
		cfg.Ifname = p.EmuIf
		return p.Emu.Do(func() error {
			st, err := stack.New(cfg)
			if err == nil {
				st.Close()
			}
			return err
		})
	}
	other := netip.PrefixFrom(netip.MustParseAddr("10.254.254.9"), 24)
	err := try(stack.Config{Addr: other, AddressMode: stack.AddressShared})
	if !errors.Is(err, syscall.EADDRNOTAVAIL) || !strings.Contains(err.Error(), p.EmuAddr.String()) {
		t.Errorf("shared mode on an address the interface lacks: %v (want EADDRNOTAVAIL naming %v)", err, p.EmuAddr)
	}
	if err := try(stack.Config{Addr: p.EmuAddr, AddressMode: stack.AddressDedicated}); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("dedicated mode on the kernel's address: %v, want EADDRINUSE", err)
	}
	lo := netip.PrefixFrom(netip.MustParseAddr("127.0.0.1"), 8)
	if err := try(stack.Config{Addr: lo}); !errors.Is(err, syscall.EADDRNOTAVAIL) || !strings.Contains(err.Error(), "lo") {
		t.Errorf("an address of another interface: %v", err)
	}
}

// TestSharedServerSIGKILL: a server in shared mode killed with SIGKILL in
// the middle of a transfer leaves no program (and so no port map) that
// steals traffic and no held port: a kernel service on its port works at
// once.
func TestSharedServerSIGKILL(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	w := newWorld(t, harness.Options{Shared: true, NoBind: true})
	p := w.Pair
	w.Stack.Close() // the binary's server takes the interface
	srv := startServer(t, p, "-p", "5330", "-v", "7", "--quiet")
	if !strings.Contains(srv.stderr.String(), "shared address") {
		t.Fatalf("server did not run in shared mode:\n%s", srv.stderr.String())
	}
	sent := make(chan error, 1)
	go func() { sent <- peerSend(p, 5330, 64<<30) }()
	time.Sleep(700 * time.Millisecond)
	if err := srv.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	srv.cmd.Wait()
	if err := <-sent; err == nil {
		t.Fatal("the transfer survived the server")
	}
	out, err := p.Emu.Command("ip", "-d", "link", "show", "dev", p.EmuIf).CombinedOutput()
	if err != nil || strings.Contains(string(out), "xdp") {
		t.Fatalf("XDP program left after SIGKILL (%v):\n%s", err, out)
	}
	ks, err := newKernelService(t, w, 5330)
	if err != nil {
		t.Fatalf("kernel listen on the killed server's port: %v", err)
	}
	if err := peerSend(p, 5330, 4<<20); err != nil {
		t.Fatalf("kernel service on the killed server's port: %v", err)
	}
	if err := <-ks.got; err == nil || err.Error() != fmt.Sprintf("%d bytes", 4<<20) {
		t.Fatalf("kernel service: %v", err)
	}
}

package tests

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/internal/harness"
	"github.com/xdevmem/xdevmem/internal/netns"
	"github.com/xdevmem/xdevmem/internal/pattern"
	"github.com/xdevmem/xdevmem/internal/testutil"
	"github.com/xdevmem/xdevmem/stack"
	"github.com/xdevmem/xdevmem/umem"
)

// TestTokenExhaustion: an application that withholds every token for
// several seconds exhausts the dmabuf; the kernel drops (counted), and once
// the tokens come back the transfer completes byte-exact with every frame
// free at the end. While the dmabuf is exhausted the stack raises one
// AlertDmabufExhausted saying the application holds the frames.
func TestTokenExhaustion(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	alerts := make(chan stack.Alert, 8)
	w := newWorld(t, harness.Options{Stack: stack.Config{RegionSize: 8 << 20, OnAlert: func(a stack.Alert) { alerts <- a }}})
	connc := acceptOne(t, w)
	const size = 32 << 20
	errc := sendPattern(w, 7, size)
	conn := <-connc
	if conn == nil {
		t.FailNow()
	}
	defer conn.Close()
	mem := w.Binding.(interface{ Bytes() []byte }).Bytes()
	v := pattern.NewValidator(7)
	p := make([]byte, 1<<20)
	oob := make([]byte, 256*devmemapi.CmsgSpaceDmabuf)
	var held []devmemapi.DmabufToken
	holdUntil := time.Now().Add(3 * time.Second)
	release := func() {
		for len(held) > 0 {
			k := min(len(held), devmemapi.MaxDontNeedTokens)
			if n, err := conn.DontNeed(held[:k]); err != nil || n != k {
				t.Fatalf("dontneed: %d of %d: %v", n, k, err)
			}
			held = held[k:]
		}
	}
	var maxHeld int
	for v.Offset() < size {
		if !holdUntil.IsZero() {
			conn.SetReadDeadline(holdUntil)
		}
		n, frags, err := devmemapi.RecvFrags(conn, p, oob, nil, 0)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			st := w.Stack.Stats()
			t.Logf("holding %d tokens: %v, fill-ring-empty drops so far %d", len(held), st.Frames, st.XSK.RxFillRingEmpty)
			maxHeld = len(held)
			release()
			holdUntil = time.Time{}
			conn.SetReadDeadline(time.Time{})
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		for _, f := range frags {
			v.Check(mem[f.FragOffset : f.FragOffset+uint64(f.FragSize)])
			held = append(held, devmemapi.DmabufToken{TokenStart: f.FragToken, TokenCount: 1})
		}
		if holdUntil.IsZero() {
			release()
		}
	}
	release()
	waitErr(t, errc, "send")
	if v.Offset() != size || v.Err() != nil {
		t.Fatalf("validated %d of %d bytes: %v", v.Offset(), size, v.Err())
	}
	st := w.Stack.Stats()
	if st.XSK.RxFillRingEmpty == 0 {
		t.Fatalf("no fill-ring-empty drops while %d tokens were withheld", maxHeld)
	}
	t.Logf("withheld %d tokens; %d packets dropped on an empty fill ring; completed", maxHeld, st.XSK.RxFillRingEmpty)
	checkStats(t, st)
	select {
	case a := <-alerts:
		if a.Reason != stack.AlertDmabufExhausted || a.Held == 0 || !strings.Contains(a.String(), "SO_DEVMEM_DONTNEED") {
			t.Fatalf("alert %v (%+v), want the dmabuf exhausted by held tokens", a, a)
		}
		t.Logf("alert: %v", a)
	default:
		t.Fatal("no alert while the dmabuf was exhausted")
	}
	if len(alerts) > 0 {
		t.Fatalf("more than one alert: %v", <-alerts)
	}
}

// TestServerSIGKILL: killing a server mid-transfer leaves no XDP program
// on the interface, and a new server can start on it at once.
func TestServerSIGKILL(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	bin := xdevmemBinary(t)
	p := testutil.NewPair(t, netns.Options{Prefix: "xdt"})
	addr := p.EmuAddr.Addr().String()
	start := func() *exec.Cmd {
		srv := p.Emu.Command(bin, "server", "--backend", "emulated", "-f", p.EmuIf, "-s", addr, "-p", "5310", "-v", "7", "--quiet")
		stderr, _ := srv.StderrPipe()
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		waitLine(t, stderr, "listening on", 30*time.Second)
		return srv
	}
	srv := start()
	// A long transfer in the background; it is cut when the server dies.
	var c net.Conn
	if err := p.Peer.Do(func() error {
		var err error
		c, err = netDial(addr + ":5310")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	copied := make(chan struct{})
	go func() {
		io.Copy(c, pattern.NewReader(7, 8<<30))
		close(copied)
	}()
	time.Sleep(700 * time.Millisecond)
	if err := srv.Process.Signal(unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	srv.Wait()
	c.Close() // nothing answers any more: do not wait for TCP to give up
	<-copied
	out, err := p.Emu.Command("ip", "-d", "link", "show", "dev", p.EmuIf).CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "xdp") {
		t.Fatalf("XDP program still attached after SIGKILL:\n%s", out)
	}
	// A new server starts at once and serves a full transfer.
	srv2 := start()
	defer srv2.Process.Kill()
	err = p.Peer.Do(func() error {
		c, err := netDial(addr + ":5310")
		if err != nil {
			return err
		}
		_, err = io.Copy(c, pattern.NewReader(7, 4<<20))
		if cerr := c.Close(); err == nil {
			err = cerr
		}
		return err
	})
	if err != nil {
		t.Fatalf("second transfer: %v", err)
	}
	if err := waitCmd(srv2, 30*time.Second); err != nil {
		t.Fatalf("second server: %v", err)
	}
}

// TestBadSetup: each bad set-up gets a clear message.
func TestBadSetup(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	bin := xdevmemBinary(t)
	p := testutil.NewPair(t, netns.Options{Prefix: "xdt", MTU: 3506})
	addr := p.EmuAddr.Addr().String()
	run := func(args ...string) string {
		t.Helper()
		cmd := p.Emu.Command(bin, args...)
		var buf strings.Builder
		cmd.Stdout, cmd.Stderr = &buf, &buf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		err := waitCmd(cmd, 20*time.Second) // a server that wrongly starts is killed
		out := buf.String()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() == 0 {
			t.Fatalf("%v: want a failure, got %v: %s", args, err, out)
		}
		return string(out)
	}
	expect := func(out string, wants ...string) {
		t.Helper()
		for _, w := range wants {
			if !strings.Contains(out, w) {
				t.Errorf("output lacks %q:\n%s", w, out)
			}
		}
	}
	expect(run("server", "--backend", "emulated", "-f", "nosuch0", "-s", addr), "-f nosuch0", "no such interface", p.EmuIf)
	expect(run("server", "--backend", "emulated", "-f", p.EmuIf, "-s", addr, "--umem", "256KiB"), "too small", "frames")
	expect(run("server", "--backend", "emulated", "-f", p.EmuIf, "-s", "not-an-ip"), "not an IPv4 or IPv6 address")
	expect(run("server", "--backend", "emulated", "-f", p.EmuIf, "-s", addr, "--faults", "drop=2"), "want a number from 0 to 1")
	// An interface the emulation cannot serve: a TUN device carries IP
	// packets, not Ethernet frames.
	if out, err := p.Emu.Command("ip", "tuntap", "add", "dev", "xdtun0", "mode", "tun").CombinedOutput(); err != nil {
		t.Fatalf("ip tuntap add: %v: %s", err, out)
	}
	expect(run("server", "--backend", "emulated", "-f", "xdtun0", "-s", addr), "xdtun0", "not an Ethernet device", "XDP and AF_XDP")

	// Someone else's XDP program on the interface.
	var other *umem.Program
	err := p.Emu.Do(func() error {
		var err error
		if other, err = umem.LoadProgram(umem.ProgramConfig{IPv4: []netip.Addr{netip.MustParseAddr("10.99.99.99")}}); err != nil {
			return err
		}
		return other.Attach(p.EmuIndex)
	})
	if err != nil {
		t.Fatal(err)
	}
	expect(run("server", "--backend", "emulated", "-f", p.EmuIf, "-s", addr), "already has an XDP program")
	other.Close()

	// MTU too large for a frame.
	if out, err := p.Emu.Command("ip", "link", "set", "dev", p.EmuIf, "mtu", "9500").CombinedOutput(); err != nil {
		t.Fatalf("set mtu: %v: %s", err, out)
	}
	expect(run("server", "--backend", "emulated", "-f", p.EmuIf, "-s", addr), "MTU 9500", "too large")

	// Not root: the demo names the capabilities.
	if _, err := exec.LookPath("setpriv"); err == nil {
		out, err := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", bin, "demo").CombinedOutput()
		if err == nil {
			t.Fatalf("demo as nobody succeeded: %s", out)
		}
		expect(string(out), "needs root", "CAP_NET_ADMIN", "CAP_BPF")
	} else {
		testutil.SkipOrFail(t, "setpriv not installed")
	}
}

// TestAddressInUse: a second listener on a port gets EADDRINUSE.
func TestAddressInUse(t *testing.T) {
	w := newWorld(t, harness.Options{})
	_, err := w.Stack.Listen(netip.AddrPortFrom(netip.Addr{}, w.Port))
	if !errors.Is(err, unix.EADDRINUSE) {
		t.Fatalf("second listen: %v, want EADDRINUSE", err)
	}
	if !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("message: %v", err)
	}
}

package stack

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat/netdev"
	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
	"github.com/xdevmem/xdevmem/tokens"
)

// TestBindRXErrors: bind-rx fails with the kernel's errno and message for
// each bad request, in the order ncdevmem's probe mode exercises them.
func TestBindRXErrors(t *testing.T) {
	ip := newInproc(t, Config{})
	s := ip.s
	cases := []struct {
		name  string
		setup func()
		cfg   devmemapi.BindRXConfig
		errno unix.Errno
		msg   string
	}{
		{"empty queue list", nil, devmemapi.BindRXConfig{}, unix.EINVAL, "no queues"},
		{"queue out of range", nil, devmemapi.BindRXConfig{Queues: []uint32{3}}, unix.EINVAL, "bind rx queue 3 (1 channels)"},
		{"other interface", nil, devmemapi.BindRXConfig{Ifindex: 999, Queues: []uint32{0}}, unix.ENODEV, "ifindex 999"},
		{"header split off", func() { s.NIC().SetRings(Rings{TCPDataSplit: false}) }, devmemapi.BindRXConfig{Queues: []uint32{0}}, unix.EINVAL, "tcp-data-split is disabled"},
		{"hds-thresh not zero", func() { s.NIC().SetRings(Rings{TCPDataSplit: true, HDSThresh: 256}) }, devmemapi.BindRXConfig{Queues: []uint32{0}}, unix.EINVAL, "hds-thresh is not zero"},
	}
	for _, c := range cases {
		if c.setup != nil {
			c.setup()
		}
		_, err := s.BindRX(c.cfg)
		if !errors.Is(err, c.errno) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: got %v, want %v containing %q", c.name, err, c.errno, c.msg)
		}
	}
	if err := s.NIC().SetRings(Rings{TCPDataSplit: true}); err != nil {
		t.Fatal(err)
	}
	b, err := s.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}})
	if err != nil {
		t.Fatalf("normal bind: %v", err)
	}
	if _, err := s.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}}); !errors.Is(err, unix.EEXIST) {
		t.Fatalf("second bind: %v, want EEXIST", err)
	}
	// While bound, the settings bind-rx depends on cannot change.
	if err := s.NIC().SetRings(Rings{TCPDataSplit: false}); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("disable split while bound: %v", err)
	}
	if err := s.NIC().SetRings(Rings{TCPDataSplit: true, HDSThresh: 1}); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("hds-thresh while bound: %v", err)
	}
	b.Close()
	if err := s.NIC().SetRings(Rings{TCPDataSplit: false}); err != nil {
		t.Fatalf("after unbind: %v", err)
	}
	if _, err := s.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}}); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("bind with split off after unbind: %v", err)
	}
}

// TestBindRXCheckOrder pins Linux 6.18's order of bind-rx checks: the queue
// list is read first (a queue beyond the channels is EINVAL with no
// message, netdev_nl_read_rxq_bitmap), then the autorelease mode (in
// net_devmem_bind_dmabuf), and only then each queue's own checks (header
// split, memory provider already there, in __net_mp_open_rxq). A queue
// named twice is bound once.
func TestBindRXCheckOrder(t *testing.T) {
	ip := newInproc(t, Config{Channels: 4})
	s := ip.s
	s.NIC().SetRings(Rings{TCPDataSplit: false})
	_, err := s.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0, 9}})
	if !errors.Is(err, unix.EINVAL) || !devmemerr.Match(err, devmemerr.BindRXQueueRange) {
		t.Fatalf("queue 9 of 4 with header split off: %v, want the queue-range row (EINVAL, no message)", err)
	}
	var de *devmemerr.Error
	if !errors.As(err, &de) || de.Message != "" {
		t.Fatalf("queue range carries a message: %#v", err)
	}

	other := newInproc(t, Config{})
	on, off := true, false
	ob, err := other.s.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}, Autorelease: &on})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}, Autorelease: &off})
	ob.Close()
	if !devmemerr.Match(err, devmemerr.BindRXAutoreleaseMismatch) {
		t.Fatalf("other mode with header split off: %v, want the autorelease mismatch before the header-split check", err)
	}
	if _, err := s.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}}); !devmemerr.Match(err, devmemerr.BindRXHDSDisabled) {
		t.Fatalf("header split off: %v", err)
	}
	if n := tokens.Default().Bindings(); n != 0 {
		t.Fatalf("refused binds left %d registered bindings", n)
	}

	s.NIC().SetRings(Rings{TCPDataSplit: true})
	b, err := s.BindRX(devmemapi.BindRXConfig{Queues: []uint32{3, 1, 3}})
	if err != nil {
		t.Fatalf("queue named twice: %v", err)
	}
	defer b.Close()
	if got := b.(*rxBinding).queues; !slices.Equal(got, []uint32{1, 3}) {
		t.Fatalf("bound queues %v, want [1 3]", got)
	}
}

// TestUnbindWithSocketsOpen pins the autorelease series' v10 rules for an
// unbind while sockets still have data queued (binding->users): an
// autorelease-off socket that already received is tied to the binding and
// keeps it alive, so what was queued before the unbind is still delivered
// and DONTNEED still frees; an autorelease-on socket never sees ENODEV; a
// socket that never received gets ENODEV once no tied socket is left.
func TestUnbindWithSocketsOpen(t *testing.T) {
	payload := func(n int) []byte {
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(i)
		}
		return p
	}
	p := make([]byte, 64<<10)
	oob := make([]byte, 64*devmemapi.CmsgSpaceDmabuf)
	recv := func(t *testing.T, c *Conn) (int, []devmemapi.Frag, error) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		return devmemapi.RecvFrags(c, p, oob, nil, 0)
	}
	waitQueued := func(t *testing.T, c *Conn, n int) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); c.Queued() < n; {
			if time.Now().After(deadline) {
				t.Fatalf("%d bytes queued, want %d", c.Queued(), n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	for _, tc := range []struct {
		name      string
		auto      bool
		recvFirst bool // receive once before the unbind
		wantErr   bool // the first recvmsg after the unbind fails ENODEV
	}{
		{"autorelease off, tied", false, true, false},
		{"autorelease off, not tied", false, false, true},
		{"autorelease on, received", true, true, false},
		{"autorelease on, never received", true, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ip := newInproc(t, Config{})
			auto := tc.auto
			b, err := ip.s.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}, Autorelease: &auto})
			if err != nil {
				t.Fatal(err)
			}
			ln, err := ip.s.Listen(netip.AddrPortFrom(netip.Addr{}, 5201))
			if err != nil {
				t.Fatal(err)
			}
			c, seq := ip.connect(ln, 40200, 300)
			var toks []devmemapi.DmabufToken
			if tc.recvFirst {
				ip.inject(segment(40200, 5201, seq, 1, tcpFlagAck, nil, payload(1000)))
				seq += 1000
				n, fs, err := recv(t, c)
				if err != nil || n != 1000 || len(fs) != 1 {
					t.Fatalf("first recvmsg: %d bytes, %d frags, %v", n, len(fs), err)
				}
				toks = append(toks, devmemapi.DmabufToken{TokenStart: fs[0].FragToken, TokenCount: 1})
			}
			ip.inject(segment(40200, 5201, seq, 1, tcpFlagAck, nil, payload(1200)))
			waitQueued(t, c, 1200)
			b.Close()

			n, fs, err := recv(t, c)
			if tc.wantErr {
				if !devmemerr.Match(err, devmemerr.RecvMsgUnbound) {
					t.Fatalf("recvmsg after unbind: %d, %v; want ENODEV", n, err)
				}
			} else {
				if err != nil || n != 1200 || len(fs) != 1 || fs[0].Linear {
					t.Fatalf("recvmsg after unbind: %d bytes, %+v, %v; want the queued 1200 bytes as one fragment", n, fs, err)
				}
				if got := ip.s.region.Bytes()[fs[0].FragOffset : fs[0].FragOffset+uint64(fs[0].FragSize)]; string(got) != string(payload(1200)) {
					t.Fatal("fragment bytes differ")
				}
				toks = append(toks, devmemapi.DmabufToken{TokenStart: fs[0].FragToken, TokenCount: 1})
				freed, err := c.DontNeed(toks)
				if err != nil || freed != len(toks) {
					t.Fatalf("DONTNEED after unbind = %d, %v; want %d", freed, err, len(toks))
				}
			}
			c.Close()
			if a := ip.s.Accounting(); a.Held != 0 || a.Pinned != 0 {
				t.Fatalf("after close: %+v", a)
			}
		})
	}
}

// TestDefaultAutorelease: a bind-rx without the autorelease attribute gets
// the host kernel's mode, so a program behaves the same when the auto
// backend picks the kernel: autorelease on where the kernel's bind-rx has
// no NETDEV_A_DMABUF_AUTORELEASE (upstream, 6.18 included), the series'
// default 0 where it has it. Config.Autorelease and the request override.
func TestDefaultAutorelease(t *testing.T) {
	defer func(f func() netdev.AutoreleaseDefault) { hostAutorelease = f }(hostAutorelease)
	on, off := true, false
	for _, tc := range []struct {
		name string
		host netdev.AutoreleaseDefault
		cfg  *bool
		req  *bool
		want bool
	}{
		{"upstream kernel", netdev.AutoreleaseDefault{On: true, Reason: "upstream"}, nil, nil, true},
		{"series kernel", netdev.AutoreleaseDefault{Series: true, Reason: "series"}, nil, nil, false},
		{"configured off on upstream", netdev.AutoreleaseDefault{On: true}, &off, nil, false},
		{"request on over the series", netdev.AutoreleaseDefault{Series: true}, nil, &on, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hostAutorelease = func() netdev.AutoreleaseDefault { return tc.host }
			ip := newInproc(t, Config{Autorelease: tc.cfg})
			b, err := ip.s.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}, Autorelease: tc.req})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if got := b.(*rxBinding).Autorelease(); got != tc.want {
				t.Fatalf("binding mode autorelease=%v, want %v", got, tc.want)
			}
			def, why := ip.s.DefaultAutorelease()
			if tc.cfg == nil && (def != tc.host.On || !strings.Contains(why, "host kernel") || !strings.Contains(why, tc.host.Reason)) {
				t.Fatalf("DefaultAutorelease = %v, %q", def, why)
			}
		})
	}
}

// TestCloseRacesReceive: a segment whose flow was looked up just before
// its connection closed must not be queued on the drained flow, where no
// one would unpin its frame (a frame leaked at each such race).
func TestCloseRacesReceive(t *testing.T) {
	ip := newInproc(t, Config{})
	ln := ip.bindListen(t)
	c, seq := ip.connect(ln, 40400, 77)
	ip.inject(segment(40400, 5201, seq, 1, tcpFlagAck, nil, make([]byte, 500))) // the flow is cached now
	testHookLookedUp = func() { testHookLookedUp = nil; c.Close() }
	defer func() { testHookLookedUp = nil }()
	ip.inject(segment(40400, 5201, seq+500, 1, tcpFlagAck, nil, make([]byte, 700)))
	if a := ip.s.Accounting(); a.Pinned != 0 || a.Held != 0 {
		t.Fatalf("after the close that raced a receive: %+v", a)
	}
}

// TestBindRXAsKeepsID: a binding remade on a stack that replaced its own
// keeps the id the program knows; id 0 is not one.
func TestBindRXAsKeepsID(t *testing.T) {
	ip := newInproc(t, Config{})
	if _, err := ip.s.BindRXAs(devmemapi.BindRXConfig{Queues: []uint32{0}}, 0); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("id 0: %v, want EINVAL", err)
	}
	b, err := ip.s.BindRXAs(devmemapi.BindRXConfig{Queues: []uint32{0}}, 4242)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.ID() != 4242 {
		t.Fatalf("id %d, want 4242", b.ID())
	}
	if id, ok := ip.s.BoundTo(0); !ok || id != 4242 {
		t.Fatalf("queue 0 bound to %d (%v)", id, ok)
	}
}

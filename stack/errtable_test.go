package stack

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
)

// TestErrnoTable drives the emulation into every error of the shared devmem
// error table (devmemapi/devmemerr) that it can produce and checks that the
// error is that row: same operation, errno and kernel message. compat's
// tests hold the kernel backend to the same rows, so an application sees
// one set of errors on both backends.
func TestErrnoTable(t *testing.T) {
	ip := newInproc(t, Config{})
	s := ip.s
	off, on := false, true
	bindErr := func(cfg devmemapi.BindRXConfig) error { _, err := s.BindRX(cfg); return err }

	// A second stack holding a binding in the other mode, for the mode row.
	other := newInproc(t, Config{})
	ob, err := other.s.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}, Autorelease: &on})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]error{
		devmemerr.BindRXAutoreleaseMismatch.Name: bindErr(devmemapi.BindRXConfig{Queues: []uint32{0}, Autorelease: &off}),
	}
	ob.Close()
	got[devmemerr.BindRXMissingAttr.Name] = bindErr(devmemapi.BindRXConfig{})
	got[devmemerr.BindRXNoDevice.Name] = bindErr(devmemapi.BindRXConfig{Ifindex: 12345, Queues: []uint32{0}})
	got[devmemerr.BindRXQueueRange.Name] = bindErr(devmemapi.BindRXConfig{Queues: []uint32{7}})
	s.NIC().SetRings(Rings{TCPDataSplit: false})
	got[devmemerr.BindRXHDSDisabled.Name] = bindErr(devmemapi.BindRXConfig{Queues: []uint32{0}})
	s.NIC().SetRings(Rings{TCPDataSplit: true, HDSThresh: 64})
	got[devmemerr.BindRXHDSThresh.Name] = bindErr(devmemapi.BindRXConfig{Queues: []uint32{0}})
	s.NIC().SetRings(Rings{TCPDataSplit: true})
	b, err := s.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}, Autorelease: &off})
	if err != nil {
		t.Fatal(err)
	}
	got[devmemerr.BindRXQueueBound.Name] = bindErr(devmemapi.BindRXConfig{Queues: []uint32{0}, Autorelease: &off})

	ln, err := s.Listen(netip.AddrPortFrom(netip.Addr{}, 5201))
	if err != nil {
		t.Fatal(err)
	}
	c, seq := ip.connect(ln, 40100, 100)
	// DONTNEED before the socket has a binding (mode 0).
	_, got[devmemerr.DontNeedNoBinding.Name] = c.DontNeed([]devmemapi.DmabufToken{{TokenStart: 1, TokenCount: 1}})
	_, got[devmemerr.DontNeedShortOptlen.Name] = c.DontNeedOpt(nil)
	_, got[devmemerr.DontNeedBadOptlen.Name] = c.DontNeedOpt(make([]byte, 12))
	_, got[devmemerr.DontNeedTooManyTokens.Name] = c.DontNeed(make([]devmemapi.DmabufToken, 129))

	ip.inject(segment(40100, 5201, seq, 1, tcpFlagAck, nil, make([]byte, 1000)))
	p := make([]byte, 4096)
	oob := make([]byte, 4*devmemapi.CmsgSpaceDmabuf)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	// Wait until the data is readable, then misuse the socket.
	for c.Queued() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	_, _, got[devmemerr.RecvMsgNoDevmemFlag.Name] = c.RecvMsg(p, oob, 0)
	_, _, got[devmemerr.RecvMsgCmsgSpace.Name] = c.RecvMsg(p, oob[:10], devmemapi.MSG_SOCK_DEVMEM)
	b.Close()
	_, _, got[devmemerr.RecvMsgUnbound.Name] = c.RecvMsg(p, oob, devmemapi.MSG_SOCK_DEVMEM)

	for _, row := range devmemerr.Cases {
		err, ok := got[row.Name]
		if !ok {
			continue
		}
		if !devmemerr.Match(err, row) || !errors.Is(err, row.Errno) {
			t.Errorf("%s: emulation returned %v; want %s %q", row.Name, err, devmemerr.ErrnoName(row.Errno), row.Message)
		}
		// Rows the kernel does not tell apart (same errno, no message)
		// classify as the first of them; the others must classify exactly.
		if c, ok := devmemerr.Classify(err); row.Message != "" && (!ok || c.Name != row.Name) {
			t.Errorf("%s: classified as %q", row.Name, c.Name)
		}
		delete(got, row.Name)
	}
	for name := range got {
		t.Errorf("%s is not a row of the table", name)
	}
}

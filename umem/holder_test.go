package umem

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/internal/netns"
	"github.com/xdevmem/xdevmem/internal/testutil"
)

func TestXDPAttrProgID(t *testing.T) {
	attr := func(typ uint16, v uint32) []byte {
		b := binary.NativeEndian.AppendUint16(nil, 8)
		b = binary.NativeEndian.AppendUint16(b, typ)
		return binary.NativeEndian.AppendUint32(b, v)
	}
	cat := func(bs ...[]byte) []byte {
		var out []byte
		for _, b := range bs {
			out = append(out, b...)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		b    []byte
		want uint32
	}{
		{"prog id", cat(attr(2, 1), attr(iflaXDPProgID, 77)), 77},
		{"generic mode only", cat(attr(2, 2), attr(iflaXDPSKBProgID, 12)), 12},
		{"nothing attached", attr(2, 0), 0},
		{"truncated", attr(iflaXDPProgID, 77)[:6], 0},
		{"bad length", []byte{2, 0, 4, 0}, 0},
	} {
		if got := xdpAttrProgID(tc.b); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
}

func TestHolderString(t *testing.T) {
	for _, tc := range []struct {
		h    Holder
		want string
	}{
		{Holder{Ifname: "eth1", ProgID: 77, LinkID: 12, PID: 1234, Comm: "xdevmem"}, "interface eth1 is in use by xdevmem pid 1234 (XDP link id 12, program id 77)"},
		{Holder{Ifname: "eth1", ProgID: 77, PID: 99, Comm: "bpftool"}, "interface eth1 is in use by bpftool pid 99 (XDP program id 77)"},
		{Holder{Ifindex: 5, ProgID: 77}, "interface ifindex 5 is in use by XDP program id 77, which no process holds open"},
		{Holder{Ifname: "eth1"}, "no XDP program attached"},
	} {
		if got := tc.h.String(); !strings.Contains(got, tc.want) {
			t.Errorf("%+v: %q, want %q", tc.h, got, tc.want)
		}
	}
	err := error(&InUseError{Holder: Holder{Ifname: "eth1"}, Err: unix.EBUSY})
	if !errors.Is(err, unix.EBUSY) || !strings.HasSuffix(err.Error(), ": device or resource busy") {
		t.Errorf("InUseError: %v", err)
	}
}

// TestFindHolder: the holder of an interface's XDP link is found by program
// and link id, here this very process; and attaching over it names it.
func TestFindHolder(t *testing.T) {
	pair := testutil.NewPair(t, netns.Options{})
	cfg := ProgramConfig{IPv4: []netip.Addr{pair.EmuAddr.Addr()}}
	p := progLoadTest(t, cfg)
	var h Holder
	err := pair.Emu.Do(func() error {
		var err error
		if h, err = FindHolder(pair.EmuIndex); err != nil || h.ProgID != 0 {
			t.Errorf("nothing attached: %+v, %v", h, err)
		}
		if err := p.Attach(pair.EmuIndex); err != nil {
			return err
		}
		h, err = FindHolder(pair.EmuIndex)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if h.Ifname != pair.EmuIf || h.ProgID != progID(t, p) || h.LinkID == 0 || h.PID != os.Getpid() || h.Comm == "" {
		t.Fatalf("holder %+v, want program %d held through a link by pid %d", h, progID(t, p), os.Getpid())
	}
	other := progLoadTest(t, cfg)
	err = progAttach(other, pair.Emu, pair.EmuIndex)
	var iu *InUseError
	if !errors.Is(err, ErrXDPAttached) || !errors.As(err, &iu) || iu.Holder.LinkID != h.LinkID {
		t.Fatalf("attach over it: %v", err)
	}
}

package ethnl_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat/ethnl"
	"github.com/xdevmem/xdevmem/compat/netdevtest"
)

func dial(t *testing.T, k *netdevtest.Kernel) *ethnl.Conn {
	t.Helper()
	gc, _ := k.Dial()
	c, err := ethnl.NewConn(gc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestRings proves rings-get's request (header nest with the ifindex) and
// that tcp-data-split and hds-thresh decode; a driver without ring
// parameters answers EOPNOTSUPP and an unknown device ENODEV with the
// kernel's text.
func TestRings(t *testing.T) {
	k := netdevtest.New()
	k.AddDevice(netdevtest.Device{Ifindex: 3, Name: "eth0", TCPDataSplit: ethnl.TCPDataSplitEnabled, HDSThresh: 0, HDSThreshMax: 1024})
	k.AddDevice(netdevtest.Device{Ifindex: 4, Name: "eth1", TCPDataSplit: ethnl.TCPDataSplitDisabled})
	k.AddDevice(netdevtest.Device{Ifindex: 5, Name: "veth0", NoRings: true})
	c := dial(t, k)

	r, err := c.Rings(3)
	if err != nil {
		t.Fatal(err)
	}
	want := &ethnl.Rings{RX: 1024, RXMax: 4096, TX: 1024, TXMax: 4096, TCPDataSplit: ethnl.TCPDataSplitEnabled, HDSThreshMax: 1024}
	if diff := cmp.Diff(want, r); diff != "" {
		t.Errorf("rings (-want +got):\n%s", diff)
	}
	req := k.Requests()[len(k.Requests())-1]
	if req.Family != "ethtool" || req.Command != unix.ETHTOOL_MSG_RINGS_GET {
		t.Errorf("request %+v", req)
	}
	if r, err := c.Rings(4); err != nil || r.TCPDataSplit != ethnl.TCPDataSplitDisabled || r.HDSThreshMax != 0 {
		t.Errorf("eth1: %+v, %v", r, err)
	}
	if _, err := c.Rings(5); !errors.Is(err, unix.EOPNOTSUPP) {
		t.Errorf("no rings: %v", err)
	}
	_, err = c.Rings(9)
	if !errors.Is(err, unix.ENODEV) || !strings.Contains(err.Error(), "no device matches ifindex") {
		t.Errorf("unknown device: %v", err)
	}
	for s, want := range map[ethnl.TCPDataSplit]string{0: "unknown", 1: "off", 2: "on", 7: "tcp-data-split(7)"} {
		if s.String() != want {
			t.Errorf("%d.String() = %q", s, s.String())
		}
	}
}

// TestFeatures proves the verbose bitsets decode by name.
func TestFeatures(t *testing.T) {
	k := netdevtest.New()
	k.AddDevice(netdevtest.Device{Ifindex: 3, Name: "eth0",
		HWFeatures: []string{ethnl.NtupleFeature, "rx-gro-hw"}, Features: []string{"rx-gro-hw"}})
	f, err := dial(t, k).Features(3)
	if err != nil {
		t.Fatal(err)
	}
	if !f.Hardware[ethnl.NtupleFeature] || f.Active[ethnl.NtupleFeature] || !f.Active["rx-gro-hw"] || !f.Wanted["rx-gro-hw"] || len(f.NoChange) != 0 {
		t.Errorf("features %+v", f)
	}
}

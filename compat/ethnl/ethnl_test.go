package ethnl_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/netlink"
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

// TestSetFeatures proves features-set's request (a masked verbose bitset of
// the named bits only), the expansion of ethtool's short names against the
// device's features, and that a bit the device cannot change is an error
// naming it.
func TestSetFeatures(t *testing.T) {
	k := netdevtest.New()
	k.AddDevice(netdevtest.Device{Ifindex: 3, Name: "veth0",
		HWFeatures: []string{"tx-checksum-ip-generic", "tx-checksum-sctp", "tx-tcp-segmentation", "rx-gro"},
		Features:   []string{"tx-checksum-ip-generic", "tx-checksum-sctp", "tx-tcp-segmentation", "tx-checksum-ipv4-fixed", "rx-gro"}})
	c := dial(t, k)

	if err := c.SetFeatures(3, map[string]bool{"tx": false}); err == nil ||
		!errors.Is(err, unix.EOPNOTSUPP) || !strings.Contains(err.Error(), "tx-checksum-ipv4-fixed off") {
		t.Errorf("tx off with a fixed tx-checksum feature: %v", err)
	}
	// The request named exactly the tx-checksum-* features, all off.
	req := k.Requests()[len(k.Requests())-1]
	if req.Command != unix.ETHTOOL_MSG_FEATURES_SET {
		t.Fatalf("last request %+v", req)
	}
	ad, err := netlink.NewAttributeDecoder(req.Attrs)
	if err != nil {
		t.Fatal(err)
	}
	var sent map[string]bool
	for ad.Next() {
		if ad.Type() == unix.ETHTOOL_A_FEATURES_WANTED {
			var list bool
			list, sent, err = ethnl.DecodeBits(ad.Bytes())
			if err != nil || list {
				t.Errorf("wanted bitset: list %v, %v", list, err)
			}
		}
	}
	want := map[string]bool{"tx-checksum-ip-generic": false, "tx-checksum-sctp": false, "tx-checksum-ipv4-fixed": false}
	if diff := cmp.Diff(want, sent); diff != "" {
		t.Errorf("requested bits (-want +got):\n%s", diff)
	}
	f, err := c.Features(3)
	if err != nil {
		t.Fatal(err)
	}
	if f.Active["tx-checksum-ip-generic"] || f.Active["tx-checksum-sctp"] || !f.Active["tx-tcp-segmentation"] || !f.Active["rx-gro"] {
		t.Errorf("after tx off: %v", f.Active)
	}

	// Names and short names mix; on again; nothing to do is no request.
	if err := c.SetFeatures(3, map[string]bool{"tx-checksum-sctp": true, "gro": false}); err != nil {
		t.Fatal(err)
	}
	if f, _ := c.Features(3); !f.Active["tx-checksum-sctp"] || f.Active["rx-gro"] {
		t.Errorf("after sctp on, gro off: %v", f.Active)
	}
	n := len(k.Requests())
	if err := c.SetFeatures(3, map[string]bool{"lro": false}); err != nil || len(k.Requests()) != n+1 {
		t.Errorf("short name matching nothing: %v, %d requests (want only the features-get)", err, len(k.Requests())-n)
	}
	if err := c.SetFeatures(3, map[string]bool{"no-such-feature": false}); !errors.Is(err, unix.EOPNOTSUPP) || !strings.Contains(err.Error(), "bit name not found") {
		t.Errorf("unknown feature: %v", err)
	}
	if err := c.SetFeatures(9, map[string]bool{"tx-checksum-sctp": false}); !errors.Is(err, unix.ENODEV) {
		t.Errorf("unknown device: %v", err)
	}
}

// TestChannels proves channels-get decodes, and a driver without channel
// parameters answers EOPNOTSUPP.
func TestChannels(t *testing.T) {
	k := netdevtest.New()
	k.AddDevice(netdevtest.Device{Ifindex: 3, Name: "veth0", RXQueues: 3, TXQueues: 2})
	k.AddDevice(netdevtest.Device{Ifindex: 4, Name: "dummy0"})
	c := dial(t, k)
	ch, err := c.Channels(3)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(&ethnl.Channels{RX: 3, TX: 2, RXMax: 3, TXMax: 2}, ch); diff != "" {
		t.Errorf("channels (-want +got):\n%s", diff)
	}
	if _, err := c.Channels(4); !errors.Is(err, unix.EOPNOTSUPP) {
		t.Errorf("no channels: %v", err)
	}
}

// TestBitsRoundTrip: EncodeBits and DecodeBits are inverses.
func TestBitsRoundTrip(t *testing.T) {
	in := map[string]bool{"a": true, "b": false, "tx-checksum-ip-generic": true}
	ae := netlink.NewAttributeEncoder()
	ethnl.EncodeBits(ae, 1, in)
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil || !ad.Next() {
		t.Fatal(err)
	}
	list, out, err := ethnl.DecodeBits(ad.Bytes())
	if err != nil || list {
		t.Fatalf("list %v, %v", list, err)
	}
	if diff := cmp.Diff(in, out); diff != "" {
		t.Errorf("(-in +out):\n%s", diff)
	}
}

package ethnl_test

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat/ethnl"
	"github.com/xdevmem/xdevmem/internal/netns"
	"github.com/xdevmem/xdevmem/internal/testutil"
)

// TestMain fails the run if the kernel tests leave namespaces, veths or
// file descriptors behind.
func TestMain(m *testing.M) { os.Exit(testutil.CheckLeaks(m)) }

// dialIn opens an ethtool connection inside ns.
func dialIn(t *testing.T, ns *netns.NS) *ethnl.Conn {
	t.Helper()
	var c *ethnl.Conn
	if err := ns.Do(func() (err error) {
		c, err = ethnl.Dial(nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestKernelFeaturesRoundTrip: on a real veth, "tx" off through
// features-set turns every tx-checksum feature off, features-get sees it
// and ethtool(8) agrees; on again restores them; a feature the device
// cannot change is an error naming it while the others change; an unknown
// name is the kernel's EOPNOTSUPP.
func TestKernelFeaturesRoundTrip(t *testing.T) {
	testutil.Watchdog(t, time.Minute)
	p := testutil.NewPair(t, netns.Options{KeepPeerTxOffload: true})
	c := dialIn(t, p.Peer)

	f, err := c.Features(p.PeerIndex)
	if err != nil {
		t.Fatal(err)
	}
	if !f.Active["tx-checksum-ip-generic"] || !f.Hardware["tx-checksum-ip-generic"] {
		t.Fatalf("veth starts without tx-checksum-ip-generic: %+v", f)
	}
	if err := c.SetFeatures(p.PeerIndex, map[string]bool{"tx": false}); err != nil {
		t.Fatal(err)
	}
	f, err = c.Features(p.PeerIndex)
	if err != nil {
		t.Fatal(err)
	}
	for name := range f.Active {
		if strings.HasPrefix(name, "tx-checksum-") {
			t.Errorf("%s still on after tx off", name)
		}
	}
	if out, err := p.Peer.Command("ethtool", "-k", p.PeerIf).Output(); err != nil || !contains(string(out), "tx-checksumming: off") {
		t.Errorf("ethtool -k after tx off (%v):\n%s", err, out)
	}
	if err := c.SetFeatures(p.PeerIndex, map[string]bool{"tx": true}); err != nil {
		t.Fatal(err)
	}
	if f, err := c.Features(p.PeerIndex); err != nil || !f.Active["tx-checksum-ip-generic"] {
		t.Errorf("tx on again: %v, %v", f, err)
	}

	// A feature the device cannot turn on: veth offers the generic
	// checksum, not the IPv4-only one.
	const fixed = "tx-checksum-ipv4"
	if f.Hardware[fixed] || f.Active[fixed] {
		t.Fatalf("veth has %s: %+v", fixed, f)
	}
	err = c.SetFeatures(p.PeerIndex, map[string]bool{fixed: true, "tx-checksum-sctp": false})
	if !errors.Is(err, unix.EOPNOTSUPP) || !contains(err.Error(), fixed+" on") || contains(err.Error(), "sctp") {
		t.Errorf("%s on: %v, want an EOPNOTSUPP naming it alone", fixed, err)
	}
	if f, err := c.Features(p.PeerIndex); err != nil || f.Active["tx-checksum-sctp"] {
		t.Errorf("the feature that could change did not: %v", err)
	}
	err = c.SetFeatures(p.PeerIndex, map[string]bool{"no-such-feature": true})
	if !errors.Is(err, unix.EOPNOTSUPP) || !contains(err.Error(), "bit name not found") {
		t.Errorf("unknown feature: %v", err)
	}
}

// TestKernelChannels: channels-get on a veth reports the real queue counts
// set at creation (numrxqueues, numtxqueues) as RX and TX channels.
func TestKernelChannels(t *testing.T) {
	testutil.Watchdog(t, time.Minute)
	p := testutil.NewPair(t, netns.Options{TxQueues: 2, RxQueues: 3})
	ch, err := dialIn(t, p.Emu).Channels(p.EmuIndex)
	if err != nil {
		t.Fatal(err)
	}
	if ch.RX != 3 || ch.TX != 2 || ch.Combined != 0 || ch.RXMax < 3 || ch.TXMax < 2 {
		t.Errorf("channels %+v, want rx 3 tx 2", ch)
	}
	if _, err := dialIn(t, p.Emu).Channels(p.EmuIndex + 1000); !errors.Is(err, unix.ENODEV) {
		t.Errorf("unknown device: %v, want ENODEV", err)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

package genl

import (
	"errors"
	"maps"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
)

// TestFamilyRoundTrip proves the controller attributes the fake encodes
// are what Resolve decodes, ops included.
func TestFamilyRoundTrip(t *testing.T) {
	want := Family{ID: 0x1d, Version: 1, Name: "netdev", Ops: []uint8{1, 10, 13, 15}}
	b, err := EncodeFamily(want)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseFamily(b)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("family (-want +got):\n%s", diff)
	}
	if !got.HasOp(13) || got.HasOp(14) {
		t.Errorf("HasOp wrong for %v", got.Ops)
	}
	if _, err := ParseFamily(nil); err == nil {
		t.Error("a family without id parsed")
	}
}

// TestErr proves a netlink error becomes a devmemerr.Error with the
// extended-ack message, and anything else keeps its chain.
func TestErr(t *testing.T) {
	err := Err(devmemerr.OpBindTX, &netlink.OpError{Op: "receive", Err: unix.EOPNOTSUPP, Message: "Driver does not support netmem TX"})
	var de *devmemerr.Error
	if !errors.As(err, &de) || de.Errno != unix.EOPNOTSUPP || de.Message != "Driver does not support netmem TX" || de.Op != devmemerr.OpBindTX {
		t.Errorf("Err = %#v", err)
	}
	if !errors.Is(err, unix.EOPNOTSUPP) {
		t.Error("errno lost")
	}
	other := errors.New("mismatched sequence")
	if err := Err("dev-get", &netlink.OpError{Op: "validate", Err: other}); !errors.Is(err, other) || err.Error() != "dev-get: netlink validate: mismatched sequence" {
		t.Errorf("non-errno: %v", err)
	}
	if Err("x", nil) != nil {
		t.Error("Err(nil) != nil")
	}
}

// FuzzParseFamily: any controller reply either fails to parse or parses
// to a family that survives an encode/parse round trip.
func FuzzParseFamily(f *testing.F) {
	seed, _ := EncodeFamily(Family{ID: 20, Version: 1, Name: "netdev", Ops: []uint8{1, 5, 10, 13, 15}})
	f.Add(seed)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		fam, err := ParseFamily(b)
		if err != nil {
			return
		}
		b2, err := EncodeFamily(fam)
		if err != nil {
			t.Fatal(err)
		}
		again, err := ParseFamily(b2)
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if !cmp.Equal(fam, again) {
			t.Fatalf("round trip: %+v != %+v", fam, again)
		}
	})
}

// TestDoPolicyRoundTrip: a policy dump as the kernel sends it (one message
// for the operation, one per attribute) parses back to the attribute
// types of the operation's do policy; another operation's dump has none.
func TestDoPolicyRoundTrip(t *testing.T) {
	attrs := map[uint16]uint32{1: unix.NL_ATTR_TYPE_U32, 2: unix.NL_ATTR_TYPE_NESTED, 3: unix.NL_ATTR_TYPE_U32, 5: unix.NL_ATTR_TYPE_U8}
	msgs, err := EncodeDoPolicy(0x20, 13, attrs)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1+len(attrs) {
		t.Fatalf("%d messages, want %d", len(msgs), 1+len(attrs))
	}
	got, err := ParseDoPolicy(msgs, 13)
	if err != nil || !maps.Equal(got, attrs) {
		t.Fatalf("ParseDoPolicy = %v, %v; want %v", got, err, attrs)
	}
	if got, err := ParseDoPolicy(msgs, 15); err != nil || len(got) != 0 {
		t.Fatalf("another op: %v, %v", got, err)
	}
	if _, err := ParseDoPolicy([][]byte{{1, 2, 3}}, 13); err == nil {
		t.Fatal("malformed dump parsed")
	}
}

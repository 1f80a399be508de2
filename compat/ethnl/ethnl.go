// Package ethnl is the small part of the kernel's "ethtool" generic netlink
// family that devmem and xdevmem's set-up need: the ring parameters that
// gate a bind-rx (tcp-data-split, hds-thresh), the feature flags that steer
// a flow to a queue (rx-ntuple-filter), the channel counts (ethtool -l) and
// changing offload features (ethtool -K), so that no ethtool(8) binary is
// needed.
//
// github.com/mdlayher/ethtool does not decode tcp-data-split or hds-thresh,
// so this package sends ETHTOOL_MSG_RINGS_GET, ETHTOOL_MSG_FEATURES_GET,
// ETHTOOL_MSG_FEATURES_SET and ETHTOOL_MSG_CHANNELS_GET itself (attribute
// ids from include/uapi/linux/ethtool_netlink_generated.h, as
// golang.org/x/sys/unix carries them).
//
// # Feature bitsets
//
// Features travel as verbose bitsets: a list of bits by name. A set request
// lists only the bits to change, each with ETHTOOL_A_BITSET_BIT_VALUE when
// it is to be on; the kernel leaves the others alone. Its reply lists under
// ETHTOOL_A_FEATURES_WANTED the requested bits that did not take the
// requested value (a fixed feature, or one a dependency forces), and under
// ETHTOOL_A_FEATURES_ACTIVE every bit that changed, requested or not.
//
// Errors are *devmemerr.Error values (op "rings-get", "features-get",
// "features-set", "channels-get") with the kernel's errno and extended-ack
// message: a driver without ring parameters answers EOPNOTSUPP.
package ethnl

import (
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat/internal/genl"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
)

// The family.
const (
	// FamilyName is ETHTOOL_GENL_NAME.
	FamilyName = unix.ETHTOOL_GENL_NAME
	// FamilyVersion is ETHTOOL_GENL_VERSION.
	FamilyVersion = unix.ETHTOOL_GENL_VERSION
)

// TCPDataSplit is the header-split state (ETHTOOL_TCP_DATA_SPLIT_*).
type TCPDataSplit uint8

// Header-split states.
const (
	// TCPDataSplitUnknown: the driver does not report it.
	TCPDataSplitUnknown TCPDataSplit = 0
	// TCPDataSplitDisabled: header split is off.
	TCPDataSplitDisabled TCPDataSplit = 1
	// TCPDataSplitEnabled: header split is on.
	TCPDataSplitEnabled TCPDataSplit = 2
)

// String returns "unknown", "off", "on" as ethtool -g prints them.
func (s TCPDataSplit) String() string {
	switch s {
	case TCPDataSplitUnknown:
		return "unknown"
	case TCPDataSplitDisabled:
		return "off"
	case TCPDataSplitEnabled:
		return "on"
	}
	return fmt.Sprintf("tcp-data-split(%d)", uint8(s))
}

// NtupleFeature is the name of NETIF_F_NTUPLE in the features string set
// (ethtool -K IFACE ntuple on).
const NtupleFeature = "rx-ntuple-filter"

// Rings are a device's ring parameters (ETHTOOL_MSG_RINGS_GET_REPLY).
type Rings struct {
	// RX and RXMax are the RX ring size and its maximum.
	RX, RXMax uint32
	// TX and TXMax are the TX ring size and its maximum.
	TX, TXMax uint32
	// RXBufLen is the RX buffer length, 0 if not reported.
	RXBufLen uint32
	// TCPDataSplit is the header-split state; Unknown when not reported.
	TCPDataSplit TCPDataSplit
	// HDSThresh is the header-split threshold; valid when HDSThreshMax is
	// not 0 (the kernel reports both only for drivers that support it).
	HDSThresh uint32
	// HDSThreshMax is the largest threshold the driver accepts, 0 when
	// the driver does not report one.
	HDSThreshMax uint32
}

// Features are a device's feature flags by name (verbose bitsets of
// ETHTOOL_MSG_FEATURES_GET_REPLY).
type Features struct {
	// Hardware are the features the device can change (hw_features).
	Hardware map[string]bool
	// Wanted are the features the user asked for.
	Wanted map[string]bool
	// Active are the features on now.
	Active map[string]bool
	// NoChange are the features that cannot change.
	NoChange map[string]bool
}

// Conn is a connection to the ethtool family. Its methods may be called
// concurrently.
type Conn struct {
	c *genetlink.Conn
	f genl.Family
}

// Dial opens a generic netlink socket (cfg may be nil) with extended acks
// and resolves the ethtool family.
func Dial(cfg *netlink.Config) (*Conn, error) {
	c, f, err := genl.Dial(cfg, FamilyName)
	if err != nil {
		return nil, fmt.Errorf("ethtool %w", err)
	}
	return &Conn{c: c, f: f}, nil
}

// NewConn resolves the ethtool family over c and takes c over. On error it
// closes c.
func NewConn(c *genetlink.Conn) (*Conn, error) {
	f, err := genl.Adopt(c, FamilyName)
	if err != nil {
		return nil, fmt.Errorf("ethtool: %w", err)
	}
	return &Conn{c: c, f: f}, nil
}

// Close closes the socket.
func (c *Conn) Close() error { return c.c.Close() }

// SetDeadline bounds every later request: one that has no answer by t fails
// with os.ErrDeadlineExceeded. The zero time removes the bound.
func (c *Conn) SetDeadline(t time.Time) error { return c.c.SetDeadline(t) }

func (c *Conn) get(op devmemerr.Op, cmd uint8, headerAttr uint16, ifindex int) ([]byte, error) {
	return c.do(op, cmd, headerAttr, ifindex, nil)
}

// do sends one request whose header nest names ifindex, with the attributes
// body adds, and returns the attributes of its single reply.
func (c *Conn) do(op devmemerr.Op, cmd uint8, headerAttr uint16, ifindex int, body func(*netlink.AttributeEncoder)) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	ae.Nested(headerAttr, func(ae *netlink.AttributeEncoder) error {
		ae.Uint32(unix.ETHTOOL_A_HEADER_DEV_INDEX, uint32(ifindex))
		return nil
	})
	if body != nil {
		body(ae)
	}
	b, err := ae.Encode()
	if err != nil {
		return nil, fmt.Errorf("%s: encode: %w", op, err)
	}
	msgs, err := c.c.Execute(genetlink.Message{
		Header: genetlink.Header{Command: cmd, Version: FamilyVersion},
		Data:   b,
	}, c.f.ID, netlink.Request)
	if err != nil {
		return nil, genl.Err(op, err)
	}
	if len(msgs) != 1 {
		return nil, fmt.Errorf("%s: %d replies, want 1", op, len(msgs))
	}
	return msgs[0].Data, nil
}

// Rings asks for a device's ring parameters (ethtool -g).
func (c *Conn) Rings(ifindex int) (*Rings, error) {
	b, err := c.get("rings-get", unix.ETHTOOL_MSG_RINGS_GET, unix.ETHTOOL_A_RINGS_HEADER, ifindex)
	if err != nil {
		return nil, err
	}
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, fmt.Errorf("rings-get: %w", err)
	}
	var r Rings
	for ad.Next() {
		switch ad.Type() {
		case unix.ETHTOOL_A_RINGS_RX:
			r.RX = ad.Uint32()
		case unix.ETHTOOL_A_RINGS_RX_MAX:
			r.RXMax = ad.Uint32()
		case unix.ETHTOOL_A_RINGS_TX:
			r.TX = ad.Uint32()
		case unix.ETHTOOL_A_RINGS_TX_MAX:
			r.TXMax = ad.Uint32()
		case unix.ETHTOOL_A_RINGS_RX_BUF_LEN:
			r.RXBufLen = ad.Uint32()
		case unix.ETHTOOL_A_RINGS_TCP_DATA_SPLIT:
			r.TCPDataSplit = TCPDataSplit(ad.Uint8())
		case unix.ETHTOOL_A_RINGS_HDS_THRESH:
			r.HDSThresh = ad.Uint32()
		case unix.ETHTOOL_A_RINGS_HDS_THRESH_MAX:
			r.HDSThreshMax = ad.Uint32()
		}
	}
	if err := ad.Err(); err != nil {
		return nil, fmt.Errorf("rings-get: %w", err)
	}
	return &r, nil
}

// Features asks for a device's feature flags (ethtool -k).
func (c *Conn) Features(ifindex int) (*Features, error) {
	b, err := c.get("features-get", unix.ETHTOOL_MSG_FEATURES_GET, unix.ETHTOOL_A_FEATURES_HEADER, ifindex)
	if err != nil {
		return nil, err
	}
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, fmt.Errorf("features-get: %w", err)
	}
	var f Features
	for ad.Next() {
		var dst *map[string]bool
		switch ad.Type() {
		case unix.ETHTOOL_A_FEATURES_HW:
			dst = &f.Hardware
		case unix.ETHTOOL_A_FEATURES_WANTED:
			dst = &f.Wanted
		case unix.ETHTOOL_A_FEATURES_ACTIVE:
			dst = &f.Active
		case unix.ETHTOOL_A_FEATURES_NOCHANGE:
			dst = &f.NoChange
		default:
			continue
		}
		ad.Nested(func(nad *netlink.AttributeDecoder) error {
			*dst = decodeBitset(nad)
			return nil
		})
	}
	if err := ad.Err(); err != nil {
		return nil, fmt.Errorf("features-get: %w", err)
	}
	return &f, nil
}

// decodeBitset reads a verbose bitset into the set of its bits that are on:
// with ETHTOOL_A_BITSET_NOMASK (a list) every listed bit; otherwise the
// listed bits that carry ETHTOOL_A_BITSET_BIT_VALUE.
func decodeBitset(ad *netlink.AttributeDecoder) map[string]bool {
	list, bits := decodeBits(ad)
	set := make(map[string]bool)
	for name, on := range bits {
		if list || on {
			set[name] = true
		}
	}
	return set
}

// decodeBits reads a verbose bitset: whether it is a list
// (ETHTOOL_A_BITSET_NOMASK) and each listed bit by name with its value
// (ETHTOOL_A_BITSET_BIT_VALUE present). In a masked bitset the listed bits
// are the mask.
func decodeBits(ad *netlink.AttributeDecoder) (list bool, bits map[string]bool) {
	bits = make(map[string]bool)
	for ad.Next() {
		switch ad.Type() {
		case unix.ETHTOOL_A_BITSET_NOMASK:
			list = true
		case unix.ETHTOOL_A_BITSET_BITS:
			ad.Nested(func(bad *netlink.AttributeDecoder) error {
				for bad.Next() {
					if bad.Type() != unix.ETHTOOL_A_BITSET_BITS_BIT {
						continue
					}
					bad.Nested(func(b *netlink.AttributeDecoder) error {
						var name string
						var value bool
						for b.Next() {
							switch b.Type() {
							case unix.ETHTOOL_A_BITSET_BIT_NAME:
								name = b.String()
							case unix.ETHTOOL_A_BITSET_BIT_VALUE:
								value = true
							}
						}
						if name != "" {
							bits[name] = value
						}
						return nil
					})
				}
				return nil
			})
		}
	}
	return list, bits
}

// EncodeBits appends a verbose masked bitset of type typ to ae: each named
// bit, with ETHTOOL_A_BITSET_BIT_VALUE when it is on. Only the listed bits
// are in the mask, so a set request changes only those. Names go in sorted
// order.
func EncodeBits(ae *netlink.AttributeEncoder, typ uint16, bits map[string]bool) {
	ae.Nested(typ, func(ae *netlink.AttributeEncoder) error {
		ae.Nested(unix.ETHTOOL_A_BITSET_BITS, func(ae *netlink.AttributeEncoder) error {
			for _, name := range slices.Sorted(maps.Keys(bits)) {
				ae.Nested(unix.ETHTOOL_A_BITSET_BITS_BIT, func(ae *netlink.AttributeEncoder) error {
					ae.String(unix.ETHTOOL_A_BITSET_BIT_NAME, name)
					if bits[name] {
						ae.Flag(unix.ETHTOOL_A_BITSET_BIT_VALUE, true)
					}
					return nil
				})
			}
			return nil
		})
		return nil
	})
}

// DecodeBits reads a verbose bitset attribute's payload: whether it is a
// list (ETHTOOL_A_BITSET_NOMASK) and its listed bits by name with their
// values. It is [EncodeBits]'s inverse, for fakes of the kernel.
func DecodeBits(b []byte) (list bool, bits map[string]bool, err error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return false, nil, err
	}
	list, bits = decodeBits(ad)
	return list, bits, ad.Err()
}

// LegacyFeatures are the short names ethtool -K accepts for groups of
// features, each with the pattern of the feature names it stands for (as in
// ethtool's off_flag_def): "tx" is every "tx-checksum-*" feature.
var LegacyFeatures = map[string]string{
	"rx":     "rx-checksum",
	"tx":     "tx-checksum-*",
	"sg":     "tx-scatter-gather*",
	"tso":    "tx-tcp*-segmentation",
	"ufo":    "tx-udp-fragmentation",
	"gso":    "tx-generic-segmentation",
	"gro":    "rx-gro",
	"lro":    "rx-lro",
	"rxvlan": "rx-vlan-hw-parse",
	"txvlan": "tx-vlan-hw-insert",
	"ntuple": NtupleFeature,
	"rxhash": "rx-hashing",
}

// SetFeatures turns a device's features on or off, as ethtool -K does:
// want maps feature names ("tx-checksum-ip-generic") or the short names of
// [LegacyFeatures] ("tx", "tso", "gso", "gro") to the wanted state. A short
// name stands for the device's features that match its pattern among those
// it can change or has on (nothing, if none matches). Features not named
// keep their state.
//
// The kernel applies what it can; a named feature it could not set (fixed,
// or forced by a dependency) makes SetFeatures fail with an error that
// names it and matches unix.EOPNOTSUPP, after the other changes took
// effect. An unknown feature name fails with the kernel's EOPNOTSUPP and
// "bit name not found".
func (c *Conn) SetFeatures(ifindex int, want map[string]bool) error {
	const op = "features-set"
	bits := make(map[string]bool, len(want))
	var f *Features
	for name, on := range want {
		pattern, legacy := LegacyFeatures[name]
		if !legacy {
			bits[name] = on
			continue
		}
		if f == nil {
			var err error
			if f, err = c.Features(ifindex); err != nil {
				return fmt.Errorf("%s: %w", op, err)
			}
		}
		for _, m := range []map[string]bool{f.Hardware, f.Active} {
			for feature := range m {
				if ok, _ := path.Match(pattern, feature); ok {
					bits[feature] = on
				}
			}
		}
	}
	if len(bits) == 0 {
		return nil
	}
	b, err := c.do(op, unix.ETHTOOL_MSG_FEATURES_SET, unix.ETHTOOL_A_FEATURES_HEADER, ifindex, func(ae *netlink.AttributeEncoder) {
		EncodeBits(ae, unix.ETHTOOL_A_FEATURES_WANTED, bits)
	})
	if err != nil {
		return err
	}
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	var missed map[string]bool
	for ad.Next() {
		if ad.Type() == unix.ETHTOOL_A_FEATURES_WANTED {
			ad.Nested(func(nad *netlink.AttributeDecoder) error {
				_, missed = decodeBits(nad)
				return nil
			})
		}
	}
	if err := ad.Err(); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if len(missed) > 0 {
		var names []string
		for _, name := range slices.Sorted(maps.Keys(missed)) {
			state := "off"
			if missed[name] {
				state = "on"
			}
			names = append(names, name+" "+state)
		}
		return fmt.Errorf("%s: device %d could not set %s: %w", op, ifindex, strings.Join(names, ", "), unix.EOPNOTSUPP)
	}
	return nil
}

// Channels are a device's channel counts and their maximums
// (ETHTOOL_MSG_CHANNELS_GET_REPLY, ethtool -l): RX-only, TX-only, other
// (link interrupts...) and combined RX/TX channels. A count the driver does
// not report is 0.
type Channels struct {
	// RX, TX, Other and Combined are the current counts.
	RX, TX, Other, Combined uint32
	// RXMax, TXMax, OtherMax and CombinedMax are the maximums.
	RXMax, TXMax, OtherMax, CombinedMax uint32
}

// Channels asks for a device's channel counts (ethtool -l). A driver
// without channel parameters answers EOPNOTSUPP.
func (c *Conn) Channels(ifindex int) (*Channels, error) {
	b, err := c.get("channels-get", unix.ETHTOOL_MSG_CHANNELS_GET, unix.ETHTOOL_A_CHANNELS_HEADER, ifindex)
	if err != nil {
		return nil, err
	}
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, fmt.Errorf("channels-get: %w", err)
	}
	var ch Channels
	for ad.Next() {
		var dst *uint32
		switch ad.Type() {
		case unix.ETHTOOL_A_CHANNELS_RX_COUNT:
			dst = &ch.RX
		case unix.ETHTOOL_A_CHANNELS_TX_COUNT:
			dst = &ch.TX
		case unix.ETHTOOL_A_CHANNELS_OTHER_COUNT:
			dst = &ch.Other
		case unix.ETHTOOL_A_CHANNELS_COMBINED_COUNT:
			dst = &ch.Combined
		case unix.ETHTOOL_A_CHANNELS_RX_MAX:
			dst = &ch.RXMax
		case unix.ETHTOOL_A_CHANNELS_TX_MAX:
			dst = &ch.TXMax
		case unix.ETHTOOL_A_CHANNELS_OTHER_MAX:
			dst = &ch.OtherMax
		case unix.ETHTOOL_A_CHANNELS_COMBINED_MAX:
			dst = &ch.CombinedMax
		default:
			continue
		}
		*dst = ad.Uint32()
	}
	if err := ad.Err(); err != nil {
		return nil, fmt.Errorf("channels-get: %w", err)
	}
	return &ch, nil
}

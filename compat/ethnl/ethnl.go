// Package ethnl is the small part of the kernel's "ethtool" generic netlink
// family that devmem needs: the ring parameters that gate a bind-rx
// (tcp-data-split, hds-thresh) and the feature flags that steer a flow to a
// queue (rx-ntuple-filter).
//
// github.com/mdlayher/ethtool does not decode tcp-data-split or hds-thresh,
// so this package sends ETHTOOL_MSG_RINGS_GET and ETHTOOL_MSG_FEATURES_GET
// itself (attribute ids from include/uapi/linux/ethtool_netlink_generated.h,
// as golang.org/x/sys/unix carries them).
//
// Errors are *devmemerr.Error values (op "rings-get", "features-get") with
// the kernel's errno and extended-ack message: a driver without ring
// parameters answers EOPNOTSUPP.
package ethnl

import (
	"fmt"

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

func (c *Conn) get(op devmemerr.Op, cmd uint8, headerAttr uint16, ifindex int) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	ae.Nested(headerAttr, func(ae *netlink.AttributeEncoder) error {
		ae.Uint32(unix.ETHTOOL_A_HEADER_DEV_INDEX, uint32(ifindex))
		return nil
	})
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

// decodeBitset reads a verbose bitset: with ETHTOOL_A_BITSET_NOMASK (a
// list) every listed bit is set; otherwise a bit is set when it carries
// ETHTOOL_A_BITSET_BIT_VALUE.
func decodeBitset(ad *netlink.AttributeDecoder) map[string]bool {
	set := make(map[string]bool)
	var list bool
	type bit struct {
		name  string
		value bool
	}
	var bits []bit
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
						var x bit
						for b.Next() {
							switch b.Type() {
							case unix.ETHTOOL_A_BITSET_BIT_NAME:
								x.name = b.String()
							case unix.ETHTOOL_A_BITSET_BIT_VALUE:
								x.value = true
							}
						}
						bits = append(bits, x)
						return nil
					})
				}
				return nil
			})
		}
	}
	for _, b := range bits {
		if b.name != "" && (list || b.value) {
			set[b.name] = true
		}
	}
	return set
}

package netdevtest

import (
	"slices"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat/ethnl"
)

func (k *Kernel) ethtool(gm genetlink.Message) ([][]byte, *kerr) {
	a, ok := decode(gm.Data)
	if !ok {
		return nil, &kerr{unix.EINVAL, ""}
	}
	var header uint16
	switch gm.Header.Command {
	case unix.ETHTOOL_MSG_RINGS_GET:
		header = unix.ETHTOOL_A_RINGS_HEADER
	case unix.ETHTOOL_MSG_FEATURES_GET, unix.ETHTOOL_MSG_FEATURES_SET:
		header = unix.ETHTOOL_A_FEATURES_HEADER
	case unix.ETHTOOL_MSG_CHANNELS_GET:
		header = unix.ETHTOOL_A_CHANNELS_HEADER
	default:
		return nil, &kerr{unix.EOPNOTSUPP, ""}
	}
	if !a.has(header) {
		return nil, &kerr{unix.EINVAL, ""}
	}
	h, ok := decode(a[header][0])
	if !ok || !h.has(unix.ETHTOOL_A_HEADER_DEV_INDEX) {
		return nil, &kerr{unix.EINVAL, "neither ETHTOOL_A_HEADER_DEV_INDEX nor ETHTOOL_A_HEADER_DEV_NAME set"}
	}
	d := k.devs[int(h.u32(unix.ETHTOOL_A_HEADER_DEV_INDEX))]
	if d == nil {
		return nil, &kerr{unix.ENODEV, "no device matches ifindex"}
	}
	ae := netlink.NewAttributeEncoder()
	ae.Nested(header, func(ae *netlink.AttributeEncoder) error {
		ae.Uint32(unix.ETHTOOL_A_HEADER_DEV_INDEX, uint32(d.Ifindex))
		ae.String(unix.ETHTOOL_A_HEADER_DEV_NAME, d.Name)
		return nil
	})
	switch gm.Header.Command {
	case unix.ETHTOOL_MSG_FEATURES_SET:
		return setFeatures(d, a, ae)
	case unix.ETHTOOL_MSG_CHANNELS_GET:
		if d.RXQueues == 0 && d.TXQueues == 0 {
			return nil, &kerr{unix.EOPNOTSUPP, ""}
		}
		ae.Uint32(unix.ETHTOOL_A_CHANNELS_RX_MAX, uint32(d.RXQueues))
		ae.Uint32(unix.ETHTOOL_A_CHANNELS_TX_MAX, uint32(d.TXQueues))
		ae.Uint32(unix.ETHTOOL_A_CHANNELS_RX_COUNT, uint32(d.RXQueues))
		ae.Uint32(unix.ETHTOOL_A_CHANNELS_TX_COUNT, uint32(d.TXQueues))
		return [][]byte{reply(unix.ETHTOOL_MSG_CHANNELS_GET_REPLY, ethnl.FamilyVersion, ae)}, nil
	}
	if gm.Header.Command == unix.ETHTOOL_MSG_RINGS_GET {
		if d.NoRings {
			return nil, &kerr{unix.EOPNOTSUPP, ""}
		}
		ae.Uint32(unix.ETHTOOL_A_RINGS_RX_MAX, 4096)
		ae.Uint32(unix.ETHTOOL_A_RINGS_TX_MAX, 4096)
		ae.Uint32(unix.ETHTOOL_A_RINGS_RX, 1024)
		ae.Uint32(unix.ETHTOOL_A_RINGS_TX, 1024)
		if d.TCPDataSplit != ethnl.TCPDataSplitUnknown {
			ae.Uint8(unix.ETHTOOL_A_RINGS_TCP_DATA_SPLIT, uint8(d.TCPDataSplit))
		}
		if d.HDSThreshMax != 0 {
			ae.Uint32(unix.ETHTOOL_A_RINGS_HDS_THRESH, d.HDSThresh)
			ae.Uint32(unix.ETHTOOL_A_RINGS_HDS_THRESH_MAX, d.HDSThreshMax)
		}
		return [][]byte{reply(unix.ETHTOOL_MSG_RINGS_GET_REPLY, ethnl.FamilyVersion, ae)}, nil
	}
	bitset(ae, unix.ETHTOOL_A_FEATURES_HW, d.HWFeatures)
	bitset(ae, unix.ETHTOOL_A_FEATURES_WANTED, d.Features)
	bitset(ae, unix.ETHTOOL_A_FEATURES_ACTIVE, d.Features)
	bitset(ae, unix.ETHTOOL_A_FEATURES_NOCHANGE, nil)
	return [][]byte{reply(unix.ETHTOOL_MSG_FEATURES_GET_REPLY, ethnl.FamilyVersion, ae)}, nil
}

// bitset encodes a verbose list bitset (ETHTOOL_A_BITSET_NOMASK), as
// ethnl_put_bitset32 does with a NULL mask.
func bitset(ae *netlink.AttributeEncoder, typ uint16, names []string) {
	names = slices.Sorted(slices.Values(names))
	ae.Nested(typ, func(ae *netlink.AttributeEncoder) error {
		ae.Flag(unix.ETHTOOL_A_BITSET_NOMASK, true)
		ae.Uint32(unix.ETHTOOL_A_BITSET_SIZE, 64)
		ae.Nested(unix.ETHTOOL_A_BITSET_BITS, func(ae *netlink.AttributeEncoder) error {
			for i, n := range names {
				ae.Nested(unix.ETHTOOL_A_BITSET_BITS_BIT, func(ae *netlink.AttributeEncoder) error {
					ae.Uint32(unix.ETHTOOL_A_BITSET_BIT_INDEX, uint32(i))
					ae.String(unix.ETHTOOL_A_BITSET_BIT_NAME, n)
					return nil
				})
			}
			return nil
		})
		return nil
	})
}

// setFeatures answers features-set as ethnl_set_features does: the named
// bits of HWFeatures take the requested value, the others keep theirs; the
// reply lists under WANTED the requested bits whose state differs from the
// request and under ACTIVE the bits that changed. A name the device does
// not know fails as the kernel fails an unknown one, EOPNOTSUPP "bit name
// not found" (the real kernel knows every netdev feature name).
func setFeatures(d *Device, a attrs, ae *netlink.AttributeEncoder) ([][]byte, *kerr) {
	if !a.has(unix.ETHTOOL_A_FEATURES_WANTED) {
		return nil, &kerr{unix.EINVAL, ""}
	}
	_, req, err := ethnl.DecodeBits(a[unix.ETHTOOL_A_FEATURES_WANTED][0])
	if err != nil {
		return nil, &kerr{unix.EINVAL, ""}
	}
	for name := range req {
		if !slices.Contains(d.HWFeatures, name) && !slices.Contains(d.Features, name) {
			return nil, &kerr{unix.EOPNOTSUPP, "bit name not found"}
		}
	}
	missed, changed := map[string]bool{}, map[string]bool{}
	for name, on := range req {
		active := slices.Contains(d.Features, name)
		if slices.Contains(d.HWFeatures, name) && active != on {
			if on {
				d.Features = append(d.Features, name)
			} else {
				d.Features = slices.DeleteFunc(d.Features, func(s string) bool { return s == name })
			}
			changed[name] = on
			active = on
		}
		if active != on {
			missed[name] = on
		}
	}
	ethnl.EncodeBits(ae, unix.ETHTOOL_A_FEATURES_WANTED, missed)
	ethnl.EncodeBits(ae, unix.ETHTOOL_A_FEATURES_ACTIVE, changed)
	return [][]byte{reply(unix.ETHTOOL_MSG_FEATURES_SET_REPLY, ethnl.FamilyVersion, ae)}, nil
}

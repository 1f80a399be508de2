// Package genl holds what the netdev and ethtool clients share: resolving a
// generic netlink family with its operations, and turning the kernel's
// netlink errors (errno plus extended-ack message) into devmemerr.Error.
package genl

import (
	"errors"
	"fmt"
	"sort"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
)

// Family is a generic netlink family as the controller (nlctrl) reports it.
type Family struct {
	// ID is the family's netlink message type.
	ID uint16
	// Version is the family's version.
	Version uint8
	// Name is the family's name.
	Name string
	// Ops are the command numbers the kernel registered for the family.
	Ops []uint8
}

// HasOp reports whether the family has the command cmd.
func (f Family) HasOp(cmd uint8) bool {
	for _, op := range f.Ops {
		if op == cmd {
			return true
		}
	}
	return false
}

// Resolve asks the controller for the family name, with its operations
// (CTRL_ATTR_OPS), which genetlink.Conn.GetFamily leaves out. A missing
// family fails with an error matching unix.ENOENT.
func Resolve(c *genetlink.Conn, name string) (Family, error) {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.CTRL_ATTR_FAMILY_NAME, name)
	b, err := ae.Encode()
	if err != nil {
		return Family{}, fmt.Errorf("resolve family %s: %w", name, err)
	}
	msgs, err := c.Execute(genetlink.Message{
		Header: genetlink.Header{Command: unix.CTRL_CMD_GETFAMILY, Version: 1},
		Data:   b,
	}, unix.GENL_ID_CTRL, netlink.Request)
	if err != nil {
		return Family{}, fmt.Errorf("resolve family %s: %w", name, Err("getfamily", err))
	}
	if len(msgs) != 1 {
		return Family{}, fmt.Errorf("resolve family %s: %d replies, want 1", name, len(msgs))
	}
	f, err := ParseFamily(msgs[0].Data)
	if err != nil {
		return Family{}, fmt.Errorf("resolve family %s: %w", name, err)
	}
	if f.Name != name {
		return Family{}, fmt.Errorf("resolve family %s: controller answered %q", name, f.Name)
	}
	return f, nil
}

// ParseFamily decodes the attributes of a CTRL_CMD_NEWFAMILY message.
func ParseFamily(b []byte) (Family, error) {
	var f Family
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return f, err
	}
	for ad.Next() {
		switch ad.Type() {
		case unix.CTRL_ATTR_FAMILY_ID:
			f.ID = ad.Uint16()
		case unix.CTRL_ATTR_FAMILY_NAME:
			f.Name = ad.String()
		case unix.CTRL_ATTR_VERSION:
			f.Version = uint8(ad.Uint32())
		case unix.CTRL_ATTR_OPS:
			ad.Nested(func(ops *netlink.AttributeDecoder) error {
				for ops.Next() {
					ops.Nested(func(op *netlink.AttributeDecoder) error {
						for op.Next() {
							if op.Type() == unix.CTRL_ATTR_OP_ID {
								f.Ops = append(f.Ops, uint8(op.Uint32()))
							}
						}
						return nil
					})
				}
				return nil
			})
		}
	}
	if err := ad.Err(); err != nil {
		return f, err
	}
	if f.ID == 0 {
		return f, errors.New("family without id")
	}
	return f, nil
}

// EncodeFamily encodes f as the controller's CTRL_CMD_NEWFAMILY attributes,
// for fakes of the kernel.
func EncodeFamily(f Family) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	ae.Uint16(unix.CTRL_ATTR_FAMILY_ID, f.ID)
	ae.String(unix.CTRL_ATTR_FAMILY_NAME, f.Name)
	ae.Uint32(unix.CTRL_ATTR_VERSION, uint32(f.Version))
	ae.Nested(unix.CTRL_ATTR_OPS, func(ae *netlink.AttributeEncoder) error {
		for i, op := range f.Ops {
			ae.Nested(uint16(i+1), func(ae *netlink.AttributeEncoder) error {
				ae.Uint32(unix.CTRL_ATTR_OP_ID, uint32(op))
				ae.Uint32(unix.CTRL_ATTR_OP_FLAGS, 0)
				return nil
			})
		}
		return nil
	})
	return ae.Encode()
}

// Err converts a netlink request's error into a *devmemerr.Error carrying
// the kernel's errno and extended-ack message (op names the request). An
// error that holds no errno comes back wrapped with the op prefix.
func Err(op devmemerr.Op, err error) error {
	if err == nil {
		return nil
	}
	var errno unix.Errno
	if !errors.As(err, &errno) {
		return fmt.Errorf("%s: %w", op, err)
	}
	var msg string
	var oe *netlink.OpError
	if errors.As(err, &oe) {
		msg = oe.Message
	}
	return &devmemerr.Error{Op: op, Errno: errno, Message: msg}
}

// Dial opens a generic netlink socket (cfg may be nil) with extended
// acknowledgements, so kernel error messages reach the caller, and resolves
// the family name on it.
func Dial(cfg *netlink.Config, name string) (*genetlink.Conn, Family, error) {
	c, err := genetlink.Dial(cfg)
	if err != nil {
		return nil, Family{}, fmt.Errorf("dial: %w", err)
	}
	if err := c.SetOption(netlink.ExtendedAcknowledge, true); err != nil {
		c.Close()
		return nil, Family{}, fmt.Errorf("dial: extended ack: %w", err)
	}
	f, err := Resolve(c, name)
	if err != nil {
		c.Close()
		return nil, Family{}, err
	}
	return c, f, nil
}

// Adopt resolves the family name over c, which the caller configured (or a
// fake's connection); on error it closes c.
func Adopt(c *genetlink.Conn, name string) (Family, error) {
	f, err := Resolve(c, name)
	if err != nil {
		c.Close()
	}
	return f, err
}

// DoPolicy asks the controller for the policy of command cmd's do handler
// in family f (CTRL_CMD_GETPOLICY, dumped for one operation; Linux 5.13
// and later) and returns the type (NL_ATTR_TYPE_*) of each attribute the
// policy accepts, by attribute number. It needs no privilege. An attribute
// absent from the map is one the kernel refuses ("Unknown attribute
// type").
func DoPolicy(c *genetlink.Conn, f Family, cmd uint8) (map[uint16]uint32, error) {
	ae := netlink.NewAttributeEncoder()
	ae.Uint16(unix.CTRL_ATTR_FAMILY_ID, f.ID)
	ae.Uint32(unix.CTRL_ATTR_OP, uint32(cmd))
	b, err := ae.Encode()
	if err != nil {
		return nil, fmt.Errorf("policy of %s op %d: %w", f.Name, cmd, err)
	}
	msgs, err := c.Execute(genetlink.Message{
		Header: genetlink.Header{Command: unix.CTRL_CMD_GETPOLICY, Version: 1},
		Data:   b,
	}, unix.GENL_ID_CTRL, netlink.Request|netlink.Dump)
	if err != nil {
		return nil, fmt.Errorf("policy of %s op %d: %w", f.Name, cmd, Err("getpolicy", err))
	}
	datas := make([][]byte, len(msgs))
	for i, m := range msgs {
		datas[i] = m.Data
	}
	attrs, err := ParseDoPolicy(datas, cmd)
	if err != nil {
		return nil, fmt.Errorf("policy of %s op %d: %w", f.Name, cmd, err)
	}
	return attrs, nil
}

// ParseDoPolicy decodes the messages of a CTRL_CMD_GETPOLICY dump: the
// operation's policy indexes (CTRL_ATTR_OP_POLICY) and the policies
// (CTRL_ATTR_POLICY: index, attribute, NL_POLICY_TYPE_ATTR_TYPE), and
// returns the attribute types of cmd's do policy. An operation without a
// do policy takes no attributes: the map is empty.
func ParseDoPolicy(msgs [][]byte, cmd uint8) (map[uint16]uint32, error) {
	policies := map[uint32]map[uint16]uint32{}
	doIdx, haveDo := uint32(0), false
	for _, b := range msgs {
		ad, err := netlink.NewAttributeDecoder(b)
		if err != nil {
			return nil, err
		}
		for ad.Next() {
			switch ad.Type() {
			case unix.CTRL_ATTR_OP_POLICY:
				ad.Nested(func(ops *netlink.AttributeDecoder) error {
					for ops.Next() {
						op := ops.Type()
						ops.Nested(func(p *netlink.AttributeDecoder) error {
							for p.Next() {
								if p.Type() == unix.CTRL_ATTR_POLICY_DO && op == uint16(cmd) {
									doIdx, haveDo = p.Uint32(), true
								}
							}
							return nil
						})
					}
					return nil
				})
			case unix.CTRL_ATTR_POLICY:
				ad.Nested(func(pols *netlink.AttributeDecoder) error {
					for pols.Next() {
						idx := uint32(pols.Type())
						pols.Nested(func(as *netlink.AttributeDecoder) error {
							for as.Next() {
								attr := as.Type()
								as.Nested(func(props *netlink.AttributeDecoder) error {
									for props.Next() {
										if props.Type() == unix.NL_POLICY_TYPE_ATTR_TYPE {
											if policies[idx] == nil {
												policies[idx] = map[uint16]uint32{}
											}
											policies[idx][attr] = props.Uint32()
										}
									}
									return nil
								})
							}
							return nil
						})
					}
					return nil
				})
			}
		}
		if err := ad.Err(); err != nil {
			return nil, err
		}
	}
	out := map[uint16]uint32{}
	if haveDo {
		for a, t := range policies[doIdx] {
			out[a] = t
		}
	}
	return out, nil
}

// EncodeDoPolicy encodes the replies of a CTRL_CMD_GETPOLICY dump for one
// operation whose do policy (index 0) has attrs (number → NL_ATTR_TYPE_*),
// one message per attribute after the operation's, as the kernel sends
// them; for fakes of the kernel.
func EncodeDoPolicy(familyID uint16, cmd uint8, attrs map[uint16]uint32) ([][]byte, error) {
	var out [][]byte
	ae := netlink.NewAttributeEncoder()
	ae.Uint16(unix.CTRL_ATTR_FAMILY_ID, familyID)
	ae.Nested(unix.CTRL_ATTR_OP_POLICY, func(ae *netlink.AttributeEncoder) error {
		ae.Nested(uint16(cmd), func(ae *netlink.AttributeEncoder) error {
			ae.Uint32(unix.CTRL_ATTR_POLICY_DO, 0)
			return nil
		})
		return nil
	})
	b, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	out = append(out, b)
	keys := make([]int, 0, len(attrs))
	for a := range attrs {
		keys = append(keys, int(a))
	}
	sort.Ints(keys)
	for _, a := range keys {
		ae := netlink.NewAttributeEncoder()
		ae.Uint16(unix.CTRL_ATTR_FAMILY_ID, familyID)
		ae.Nested(unix.CTRL_ATTR_POLICY, func(ae *netlink.AttributeEncoder) error {
			ae.Nested(0, func(ae *netlink.AttributeEncoder) error {
				ae.Nested(uint16(a), func(ae *netlink.AttributeEncoder) error {
					ae.Uint32(unix.NL_POLICY_TYPE_ATTR_TYPE, attrs[uint16(a)])
					return nil
				})
				return nil
			})
			return nil
		})
		b, err := ae.Encode()
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

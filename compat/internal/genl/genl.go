// Package genl holds what the netdev and ethtool clients share: resolving a
// generic netlink family with its operations, and turning the kernel's
// netlink errors (errno plus extended-ack message) into devmemerr.Error.
package genl

import (
	"errors"
	"fmt"

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

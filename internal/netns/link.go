package netns

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat/ethnl"
)

// route runs fn with an rtnetlink handle whose socket was made inside the
// namespace, so that every request through it acts there, and closes the
// handle afterwards.
func (ns *NS) route(fn func(h *netlink.Handle) error) error {
	var h *netlink.Handle
	err := ns.Do(func() (err error) {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		return fmt.Errorf("netns %s: rtnetlink: %w", ns.Name, err)
	}
	defer h.Close()
	if err := h.SetSocketTimeout(requestTimeout); err != nil {
		return fmt.Errorf("netns %s: rtnetlink: %w", ns.Name, err)
	}
	return fn(h)
}

// ethtool runs fn with a connection to the ethtool netlink family made
// inside the namespace and the ifindex of ifname there.
func (ns *NS) ethtool(ifname string, fn func(c *ethnl.Conn, ifindex int) error) error {
	var c *ethnl.Conn
	var ifindex int
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		ifindex = ifi.Index
		c, err = ethnl.Dial(nil)
		return err
	})
	if err != nil {
		return fmt.Errorf("netns %s: %w", ns.Name, err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(requestTimeout)); err != nil {
		return fmt.Errorf("netns %s: %w", ns.Name, err)
	}
	return fn(c, ifindex)
}

// linkByName looks an interface up through h, with an error that names it
// and the namespace.
func (ns *NS) linkByName(h *netlink.Handle, ifname string) (netlink.Link, error) {
	l, err := h.LinkByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("netns %s: link %s: %w", ns.Name, ifname, err)
	}
	return l, nil
}

// nlAddr turns a prefix into the library's address; IPv6 addresses skip
// duplicate address detection (IFA_F_NODAD), so they are usable at once.
func nlAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{
		IP:   p.Addr().AsSlice(),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

// AddAddr configures prefix on the interface ifname inside the namespace
// ("ip addr add PREFIX dev IFNAME", with "nodad" for IPv6). An address that
// is already there fails with EEXIST.
func (ns *NS) AddAddr(ifname string, prefix netip.Prefix) error {
	if !prefix.IsValid() {
		return fmt.Errorf("netns %s: add address %v to %s: %w", ns.Name, prefix, ifname, unix.EINVAL)
	}
	return ns.route(func(h *netlink.Handle) error {
		l, err := ns.linkByName(h, ifname)
		if err != nil {
			return err
		}
		if err := h.AddrAdd(l, nlAddr(prefix)); err != nil {
			return fmt.Errorf("netns %s: add address %v to %s: %w", ns.Name, prefix, ifname, err)
		}
		return nil
	})
}

// DelAddr removes prefix from the interface ifname inside the namespace
// ("ip addr del PREFIX dev IFNAME"). An address that is not there fails
// with EADDRNOTAVAIL.
func (ns *NS) DelAddr(ifname string, prefix netip.Prefix) error {
	if !prefix.IsValid() {
		return fmt.Errorf("netns %s: delete address %v from %s: %w", ns.Name, prefix, ifname, unix.EINVAL)
	}
	return ns.route(func(h *netlink.Handle) error {
		l, err := ns.linkByName(h, ifname)
		if err != nil {
			return err
		}
		if err := h.AddrDel(l, nlAddr(prefix)); err != nil {
			return fmt.Errorf("netns %s: delete address %v from %s: %w", ns.Name, prefix, ifname, err)
		}
		return nil
	})
}

// SetNeigh adds or replaces a permanent neighbour entry for addr on the
// interface ifname inside the namespace ("ip neigh replace ADDR lladdr MAC
// dev IFNAME nud permanent").
func (ns *NS) SetNeigh(ifname string, addr netip.Addr, mac net.HardwareAddr) error {
	if !addr.IsValid() || len(mac) == 0 {
		return fmt.Errorf("netns %s: neighbour %v at %v on %s: %w", ns.Name, addr, mac, ifname, unix.EINVAL)
	}
	return ns.route(func(h *netlink.Handle) error {
		l, err := ns.linkByName(h, ifname)
		if err != nil {
			return err
		}
		family := netlink.FAMILY_V4
		if addr.Unmap().Is6() {
			family = netlink.FAMILY_V6
		}
		n := &netlink.Neigh{
			LinkIndex:    l.Attrs().Index,
			Family:       family,
			State:        netlink.NUD_PERMANENT,
			IP:           addr.Unmap().AsSlice(),
			HardwareAddr: mac,
		}
		if err := h.NeighSet(n); err != nil {
			return fmt.Errorf("netns %s: neighbour %v at %v on %s: %w", ns.Name, addr, mac, ifname, err)
		}
		return nil
	})
}

// SetFeatures changes offload features of the interface ifname inside the
// namespace through ethtool netlink, as "ethtool -K IFNAME tx off ..."
// does: want maps feature names, or ethtool's short names such as "tx",
// "tso", "gso" and "gro" ([ethnl.LegacyFeatures]), to their wanted state.
// See [ethnl.Conn.SetFeatures] for the errors.
func (ns *NS) SetFeatures(ifname string, want map[string]bool) error {
	return ns.ethtool(ifname, func(c *ethnl.Conn, ifindex int) error {
		if err := c.SetFeatures(ifindex, want); err != nil {
			return fmt.Errorf("netns %s: %s: %w", ns.Name, ifname, err)
		}
		return nil
	})
}

// LinkStats are an interface's packet counters (IFLA_STATS64, as
// "ip -s link show" prints them).
type LinkStats struct {
	// RxPackets, RxBytes and RxDropped count received packets, their bytes
	// and the packets dropped on receive.
	RxPackets, RxBytes, RxDropped uint64
	// TxPackets, TxBytes and TxDropped count transmitted packets, their
	// bytes and the packets dropped on transmit.
	TxPackets, TxBytes, TxDropped uint64
}

// LinkStats returns the counters of the interface ifname inside the
// namespace.
func (ns *NS) LinkStats(ifname string) (LinkStats, error) {
	var s LinkStats
	err := ns.route(func(h *netlink.Handle) error {
		l, err := ns.linkByName(h, ifname)
		if err != nil {
			return err
		}
		st := l.Attrs().Statistics
		if st == nil {
			return fmt.Errorf("netns %s: link %s: no statistics", ns.Name, ifname)
		}
		s = LinkStats{
			RxPackets: st.RxPackets, RxBytes: st.RxBytes, RxDropped: st.RxDropped,
			TxPackets: st.TxPackets, TxBytes: st.TxBytes, TxDropped: st.TxDropped,
		}
		return nil
	})
	return s, err
}

// isLinkNotFound reports an interface that does not exist.
func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

package compat

import (
	"net"
	"time"

	"github.com/xdevmem/xdevmem/compat/ethnl"
	"github.com/xdevmem/xdevmem/umem"
)

// ActiveRXQueues is the number of RX queues in use on ifname (read in the
// calling thread's network namespace): the current channel counts that
// ethtool -l shows, asked through ethtool netlink, or, for a driver without
// channel counts, the allocated queues (rtnetlink's IFLA_NUM_RX_QUEUES,
// umem.RXQueues); at least 1. The two differ: a veth made without
// numrxqueues has as many allocated queues as CPUs and one active, and an
// AF_XDP socket binds only active ones. The commands, the drop-in and
// ncdevmem all count queues here.
func ActiveRXQueues(ifname string) int {
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return 1
	}
	if c, err := ethnl.Dial(nil); err == nil {
		defer c.Close()
		if c.SetDeadline(time.Now().Add(5*time.Second)) == nil {
			if ch, err := c.Channels(ifc.Index); err == nil && ch.RX+ch.Combined > 0 {
				return int(ch.RX + ch.Combined)
			}
		}
	}
	if n, err := umem.RXQueues(ifc.Index); err == nil && n > 0 {
		return n
	}
	return 1
}

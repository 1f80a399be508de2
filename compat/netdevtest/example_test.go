package netdevtest_test

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat/ethnl"
	"github.com/xdevmem/xdevmem/compat/netdev"
	"github.com/xdevmem/xdevmem/compat/netdevtest"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
)

// A fake NIC with header split off refuses bind-rx as Linux does, without
// privileges; closing the connection unbinds.
func Example() {
	k := netdevtest.New()
	k.AddDevice(netdevtest.Device{Ifindex: 2, Name: "eth0", RXQueues: 2, QueueMgmt: true,
		TCPDataSplit: ethnl.TCPDataSplitDisabled})
	fd, _ := k.NewDmabuf(1 << 20)
	defer unix.Close(fd)

	gc, _ := k.Dial()
	c, _ := netdev.NewConn(gc)
	_, err := c.BindRX(netdev.BindRXRequest{Ifindex: 2, FD: fd, Queues: netdev.RXQueues(0)})
	fmt.Println(err)
	fmt.Println(errors.Is(err, unix.EINVAL), devmemerr.Match(err, devmemerr.BindRXHDSDisabled))

	k.Update(2, func(d *netdevtest.Device) { d.TCPDataSplit = ethnl.TCPDataSplitEnabled })
	id, _ := c.BindRX(netdev.BindRXRequest{Ifindex: 2, FD: fd, Queues: netdev.RXQueues(0)})
	fmt.Println("bound", id, len(k.Bindings()))
	c.Close()
	fmt.Println("after close", len(k.Bindings()))
	// Output:
	// bind-rx: tcp-data-split is disabled: invalid argument
	// true true
	// bound 1 1
	// after close 0
}

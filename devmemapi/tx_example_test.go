package devmemapi_test

import (
	"context"
	"fmt"
	"log"
	"net/netip"
	"time"

	"github.com/xdevmem/xdevmem/devmemapi"
)

// Example_send is ncdevmem's client loop on any backend that offers devmem
// TX: bind a TX dmabuf, fill it, send from it by offset with MSG_ZEROCOPY,
// and reuse the bytes only after their completion arrived.
func Example_send() {
	var prov devmemapi.Provider // e.g. stack.New(stack.Config{...})
	tp, ok := prov.(devmemapi.TXProvider)
	if !ok {
		log.Fatal("backend without devmem TX")
	}
	b, err := tp.BindTX(devmemapi.BindTXConfig{Ifindex: 2, Size: 1 << 20})
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	conn, err := tp.Dial(context.Background(), netip.MustParseAddrPort("192.0.2.1:5201"))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetZeroCopy(true); err != nil { // setsockopt(SO_ZEROCOPY)
		log.Fatal(err)
	}

	line := []byte("hello, devmem\n")
	b.WriteAt(line, 0) // provider->memcpy_to_device
	// Iovecs of at most 3 bytes, as ncdevmem -z 3 builds them.
	var iov []devmemapi.Iovec
	for off := uint64(0); off < uint64(len(line)); off += 3 {
		iov = append(iov, devmemapi.Iovec{Base: off, Len: min(3, uint64(len(line))-off)})
	}
	oob := devmemapi.AppendDmabufTxCmsg(nil, b.ID())
	n, err := conn.SendMsg(iov, oob, devmemapi.MSG_ZEROCOPY)
	if err != nil {
		log.Fatal(err) // EINVAL, ENODEV or EFAULT, as in the kernel
	}
	fmt.Println("sendmsg_ret", n)

	// wait_compl: poll for POLLERR, then recvmsg(MSG_ERRQUEUE).
	ctl := make([]byte, devmemapi.CmsgSpaceZerocopy6) // room for either family
	for {
		if ready, err := conn.PollErrQueue(time.Second); err != nil || !ready {
			log.Fatal("did not receive tx completion")
		}
		oobn, _, err := conn.RecvErrQueue(ctl, 0)
		if err != nil {
			continue // EAGAIN
		}
		rs, err := devmemapi.AppendZerocopyRanges(nil, ctl[:oobn])
		if err != nil {
			log.Fatal(err)
		}
		for _, r := range rs {
			fmt.Printf("tx complete [%d,%d]\n", r.Lo, r.Hi)
		}
		if len(rs) > 0 {
			return
		}
	}
}

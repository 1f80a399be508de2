// Package stack is xdevmem's emulated devmem TCP receive path: gVisor's
// netstack over an AF_XDP socket (package umem), with the header split done
// in userspace and TCP payload left where it landed in the UMEM.
//
// # Data flow
//
// The XDP program steers the stack's ARP and IPv4 traffic into the AF_XDP
// socket; every frame lands in a UMEM frame (the emulated dmabuf's net_iov).
// The receive loop splits each frame as a header-split NIC would
// (splitFrame): Ethernet, IPv4 and TCP headers are parsed and both checksums
// are verified in software, reading the payload once, as RX checksum offload
// does. Malformed and bad-checksum frames are counted and dropped.
//
// For a TCP segment with payload, the stack records where each new byte
// landed in the connection's fragment queue — keyed by sequence number, so
// retransmissions and overlaps map to the first arrival — pins the frame,
// and hands gVisor the headers (copied, a few dozen bytes) plus a
// placeholder payload of the right length: a clone of one shared read-only
// chunk, so no payload byte is copied. gVisor runs TCP (ordering, ACKs,
// windows, retransmission) and its GRO coalesces consecutive segments.
//
// When the application calls Conn.RecvMsg with MSG_SOCK_DEVMEM, the stack
// lets gVisor consume a run of the in-order stream into a counting writer,
// maps the consumed sequence range back to (frame, offset, length) runs, and
// returns one SCM_DEVMEM_DMABUF control message per run, each with a token
// that holds a frame reference (package tokens). The application reads the
// payload from the UMEM (Binding.ReadAt or Bytes) and returns the tokens with
// DontNeed; a frame goes back to the fill ring when its last reference drops.
//
// # Linear and plain data
//
// A segment the device did not split is ordinary data, as the kernel's
// readable skb is: RecvMsg copies it into p without devmem control messages,
// and MSG_SOCK_DEVMEM is not needed to read it. That is payload that arrives
// while no binding covers the queue, payload shorter than Config.HDSThresh
// or no longer than Config.LinearHead, and the payload of a segment that
// arrived in IP fragments: the reassembler (reasm.go) copies the fragments'
// data, rebuilds the segment in free UMEM frames and runs it through the
// split as if it had arrived whole. With Config.LinearHead a split segment
// keeps its first bytes "linear": RecvMsg copies them into p with
// SCM_DEVMEM_LINEAR, followed in the same call by the segment's
// SCM_DEVMEM_DMABUF fragments (tcp_recvmsg_dmabuf). One RecvMsg never mixes
// ordinary data with devmem data; reading devmem data without
// MSG_SOCK_DEVMEM fails with EFAULT.
//
// # Exhaustion
//
// Frames stay pinned until their payload is delivered and every token on
// them is returned. An application that withholds tokens empties the fill
// ring; the kernel then drops packets (Stats.XSK.RxFillRingEmpty) and TCP
// recovers once tokens come back, as with a real devmem NIC.
//
// # Sending
//
// Dial makes a TXConn, a connection that sends from TX dmabufs (SendMsg,
// completions in RecvErrQueue); its Send and Write put plain bytes in the
// same stream. An accepted Conn sends from a TX dmabuf too (Conn.SendMsg):
// its sending side becomes a TXConn over the same endpoint (conn_tx.go).
// The TX tap (tx_build.go) maps each outgoing segment's sequence range to
// dmabuf bytes, or to the plain bytes gVisor's segment carries.
//
// # Devices
//
// The stack runs on one Device per RX queue: what it needs of an AF_XDP
// socket (receive batch, fill ring, wait and wake, the TX ring and its
// completions, counters). New opens the interface's sockets (*umem.Socket)
// with the XDP program; NewOn takes devices that stand in for them, such as
// umemtest.Device, whose Inject plays the wire, so tests run the product's
// one path without privileges. The emulated NIC's ethtool settings
// (rings, channels, RSS, flow rules) are Stack.NIC's; switches for
// measurements and robustness tests are Config.Lab.
//
// # Invariants
//
// Stats.DmabufBytesCopied stays 0; Stats.Unmapped stays 0; after Close
// every UMEM frame is free (Region().Snapshot()).
package stack

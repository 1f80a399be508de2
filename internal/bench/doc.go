// Package bench is xdevmem's comparative performance study, the engine of
// "xdevmem bench": it measures the emulated devmem paths against the
// kernel's own TCP, gVisor's stock AF_XDP path and a bare AF_XDP loop, on
// the same veth link, and reports goodput, CPU per GB, copies, token rate,
// allocations and losses.
//
// # Rows
//
// A [Row] is one configuration. RX rows measure a receiver in this process
// fed by a kernel TCP sender in the peer namespace:
//
//   - kernel-off, kernel-default: the kernel's TCP reading into a buffer,
//     with the veth's offloads off (as an attached XDP program forces on the
//     peer) and as veth ships them (TSO/GSO: 64 KiB super-packets cross the
//     link).
//   - gvisor-xdp: gvisor.dev/gvisor/pkg/tcpip/link/xdp under a fifo qdisc,
//     read through gonet: two payload copies after the UMEM.
//   - devmem-a0, devmem-a1: xdevmem's devmem RX in both token modes;
//     devmem-a0-trust skips the software checksum check (diagnostic: the
//     distance to devmem-a0 is that check's cost); devmem-a0-ipv6 is
//     devmem-a0 over IPv6.
//   - kernel-off-3500, devmem-a0-3500, kernel-off-9000, devmem-a0-9000:
//     the same at MTU 3500 (the largest single-buffer XDP on veth) and 9000
//     (XDP multi-buffer).
//   - afxdp-bare: refill/receive/free on one AF_XDP socket under a UDP
//     flood that an AF_XDP socket on the peer's end transmits: the ceiling
//     for any AF_XDP receiver on the link.
//
// TX rows measure a sender in this process draining into a kernel TCP
// receiver in the peer namespace: kernel-tx-off (a socket writing from a
// buffer) and devmem-tx (sendmsg from the TX dmabuf with MSG_ZEROCOPY).
//
// # How a run is measured
//
// Every run builds a fresh namespace pair and removes it afterwards. The
// kernel peer is a separate process in the peer namespace (the xdevmem
// binary's hidden bench-peer subcommand, see [PeerMain]), so the bench
// process's getrusage(RUSAGE_SELF) covers the measured side only. Two more
// views keep that honest: the peer reports its own getrusage, and
// /proc/stat gives the whole machine's busy and softirq time. On veth the
// kernel's receive work (delivery, XDP, the copy into the UMEM, TCP input
// for the kernel rows) runs in softirq on the transmitting CPU; with
// tick-based CPU accounting it is charged to whatever task was running
// there (for RX rows mostly the peer) or to ksoftirqd, not to the receiver.
//
// The window runs from accept to the end of the stream (RX), from the first
// send to the last completion or the peer's close (TX), or from the first
// to the last datagram (UDP). Rows alternate: each round runs every row
// once, then the next round, so drift of the machine spreads evenly.
package bench

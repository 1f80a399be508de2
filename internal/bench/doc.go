// Package bench is xdevmem's comparative performance study, the engine of
// "xdevmem bench": it measures the emulated devmem receive path against the
// kernel's own TCP, gVisor's stock AF_XDP path and a bare AF_XDP loop, on
// the same veth link, and reports goodput, CPU per GB, copies, token rate,
// allocations and losses.
//
// # Rows
//
// A [Row] is one receiver configuration:
//
//   - kernel-off, kernel-default: the kernel's TCP reading into a buffer,
//     with the veth's offloads off (as an attached XDP program forces on the
//     peer) and as veth ships them (TSO/GSO: 64 KiB super-packets cross the
//     link).
//   - gvisor-xdp: gvisor.dev/gvisor/pkg/tcpip/link/xdp under a fifo qdisc,
//     read through gonet: two payload copies after the UMEM.
//   - devmem-a0, devmem-a1: xdevmem's devmem RX in both token modes.
//   - kernel-off-3500, devmem-a0-3500: the same at MTU 3500, the largest
//     single-buffer XDP on veth allows.
//   - afxdp-bare: refill/receive/free on one AF_XDP socket under a UDP
//     flood: the ceiling for any AF_XDP receiver on the link.
//
// # How a run is measured
//
// Every run builds a fresh namespace pair and removes it afterwards. The
// sender is a separate process in the peer namespace (the xdevmem binary's
// hidden bench-send subcommand, see [SenderMain]), so the bench process's
// getrusage(RUSAGE_SELF) covers the receiver only. Two more views keep that
// honest: the sender reports its own getrusage, and /proc/stat gives the
// whole machine's busy and softirq time — on veth the kernel's receive work
// (delivery, XDP, the copy into the UMEM, TCP input for the kernel rows)
// runs in softirq on the sender's CPU and is charged to the sender or to no
// process at all, not to the receiver.
//
// The window runs from accept to end of stream (TCP) or from the first to
// the last datagram (UDP). Rows alternate: each round runs every row once,
// then the next round, so drift of the machine spreads evenly.
package bench

package bench

import (
	"fmt"
	"strings"
)

// Kind is what receives in a row.
type Kind string

// The receivers a row can measure.
const (
	// KindKernel is the kernel's TCP: a plain socket read into a buffer.
	KindKernel Kind = "kernel-tcp"
	// KindGVisor is gVisor's stock AF_XDP link endpoint
	// (gvisor.dev/gvisor/pkg/tcpip/link/xdp, fifo qdisc) with reads through
	// gonet: the copying path.
	KindGVisor Kind = "gvisor-xdp"
	// KindDevmem is xdevmem's emulated devmem RX: recvmsg(MSG_SOCK_DEVMEM),
	// tokens returned with DONTNEED, payload left in the UMEM.
	KindDevmem Kind = "devmem"
	// KindAFXDP is a bare AF_XDP receive loop under a UDP flood: refill,
	// receive, count, free. The ceiling of any AF_XDP receiver on the link.
	KindAFXDP Kind = "afxdp-bare"
	// KindKernelTX is the kernel's TCP send: a plain socket writing from a
	// buffer, to a kernel receiver in the peer namespace.
	KindKernelTX Kind = "kernel-tcp-tx"
	// KindDevmemTX is xdevmem's emulated devmem TX: sendmsg from a TX
	// dmabuf with MSG_ZEROCOPY completions, to a kernel receiver.
	KindDevmemTX Kind = "devmem-tx"
)

// TX reports whether the kind measures the sending side.
func (k Kind) TX() bool { return k == KindKernelTX || k == KindDevmemTX }

// Row is one configuration the bench measures. RX rows measure a receiver
// in this process fed by a kernel sender in the peer namespace; TX rows
// (Kind.TX) a sender in this process draining into a kernel receiver.
type Row struct {
	// ID names the row on the command line (--rows) and in the output.
	ID string `json:"id"`
	// Title says what the row measures, in a few words.
	Title string `json:"title"`
	// Kind is what is measured.
	Kind Kind `json:"kind"`
	// MTU of the veth pair.
	MTU int `json:"mtu"`
	// DefaultOffloads leaves the veth's offloads as the kernel sets them up
	// (TSO, GSO, peer transmit checksum offload on). Otherwise both ends get
	// "ethtool -K IF tx off tso off gso off gro off", which is what an
	// attached XDP program forces on the peer anyway.
	DefaultOffloads bool `json:"default_offloads"`
	// Autorelease is the devmem binding's token mode (devmem rows).
	Autorelease bool `json:"autorelease,omitempty"`
	// TrustChecksum skips the devmem path's software checksum check.
	TrustChecksum bool `json:"trust_checksum,omitempty"`
	// Shared runs the devmem stack in shared-address mode: the address is
	// configured on the interface too, and the XDP program takes only the
	// stack's port (a port-map lookup per packet) instead of the whole
	// address.
	Shared bool `json:"shared,omitempty"`
	// IPv6 runs the transfer over IPv6 (neighbour discovery instead of
	// ARP, 20 more header bytes per segment); supported by devmem rows.
	IPv6 bool `json:"ipv6,omitempty"`
}

// Rows is every row the bench knows, in the order it runs them.
var Rows = []Row{
	{ID: "kernel-off", Title: "kernel TCP, offloads off", Kind: KindKernel, MTU: 1500},
	{ID: "kernel-default", Title: "kernel TCP, default veth offloads", Kind: KindKernel, MTU: 1500, DefaultOffloads: true},
	{ID: "gvisor-xdp", Title: "gVisor stock AF_XDP + gonet (copying)", Kind: KindGVisor, MTU: 1500},
	{ID: "devmem-a0", Title: "xdevmem devmem RX, autorelease 0", Kind: KindDevmem, MTU: 1500},
	{ID: "devmem-a0-shared", Title: "xdevmem devmem RX, autorelease 0, shared address (port map)", Kind: KindDevmem, MTU: 1500, Shared: true},
	{ID: "devmem-a1", Title: "xdevmem devmem RX, autorelease 1", Kind: KindDevmem, MTU: 1500, Autorelease: true},
	{ID: "devmem-a0-trust", Title: "devmem RX, autorelease 0, checksum trusted", Kind: KindDevmem, MTU: 1500, TrustChecksum: true},
	{ID: "devmem-a0-ipv6", Title: "xdevmem devmem RX, autorelease 0, over IPv6", Kind: KindDevmem, MTU: 1500, IPv6: true},
	{ID: "kernel-off-3500", Title: "kernel TCP, offloads off, MTU 3500", Kind: KindKernel, MTU: 3500},
	{ID: "devmem-a0-3500", Title: "xdevmem devmem RX, autorelease 0, MTU 3500", Kind: KindDevmem, MTU: 3500},
	{ID: "kernel-off-9000", Title: "kernel TCP, offloads off, MTU 9000", Kind: KindKernel, MTU: 9000},
	{ID: "devmem-a0-9000", Title: "xdevmem devmem RX, autorelease 0, MTU 9000 (XDP multi-buffer)", Kind: KindDevmem, MTU: 9000},
	{ID: "afxdp-bare", Title: "bare AF_XDP receive loop, UDP flood (ceiling)", Kind: KindAFXDP, MTU: 1500},
	{ID: "kernel-tx-off", Title: "kernel TCP send, offloads off", Kind: KindKernelTX, MTU: 1500},
	{ID: "devmem-tx", Title: "xdevmem devmem TX (sendmsg from the TX dmabuf, MSG_ZEROCOPY)", Kind: KindDevmemTX, MTU: 1500},
}

// DefaultRows are the rows run when none are named: all of them.
// devmem-a0-trust is diagnostic: its distance to devmem-a0 is the cost of
// the software checksum check.
var DefaultRows = []string{
	"kernel-off", "kernel-default", "gvisor-xdp", "devmem-a0", "devmem-a0-shared", "devmem-a1", "devmem-a0-trust", "devmem-a0-ipv6",
	"kernel-off-3500", "devmem-a0-3500", "kernel-off-9000", "devmem-a0-9000", "afxdp-bare",
	"kernel-tx-off", "devmem-tx",
}

// LookupRows resolves row IDs ("all" names every row). An empty list gives
// DefaultRows.
func LookupRows(ids []string) ([]Row, error) {
	if len(ids) == 0 {
		ids = DefaultRows
	}
	if len(ids) == 1 && ids[0] == "all" {
		return append([]Row(nil), Rows...), nil
	}
	var out []Row
	seen := map[string]bool{}
	for _, id := range ids {
		id = strings.TrimSpace(id)
		if id == "" || seen[id] {
			continue
		}
		seen[id] = true
		found := false
		for _, r := range Rows {
			if r.ID == id {
				out = append(out, r)
				found = true
				break
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown row %q (known: %s, all)", id, strings.Join(RowIDs(), ", "))
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no rows selected")
	}
	return out, nil
}

// RowIDs lists every row's ID.
func RowIDs() []string {
	ids := make([]string, len(Rows))
	for i, r := range Rows {
		ids[i] = r.ID
	}
	return ids
}

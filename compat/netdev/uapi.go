package netdev

import (
	"strconv"
	"strings"
)

// The family (include/uapi/linux/netdev.h; Documentation/netlink/specs/netdev.yaml).
const (
	// FamilyName is NETDEV_FAMILY_NAME.
	FamilyName = "netdev"
	// FamilyVersion is NETDEV_FAMILY_VERSION.
	FamilyVersion = 1
)

// Commands (NETDEV_CMD_*).
const (
	// CmdDevGet is NETDEV_CMD_DEV_GET.
	CmdDevGet uint8 = 1
	// CmdPagePoolGet is NETDEV_CMD_PAGE_POOL_GET.
	CmdPagePoolGet uint8 = 5
	// CmdQueueGet is NETDEV_CMD_QUEUE_GET.
	CmdQueueGet uint8 = 10
	// CmdNapiGet is NETDEV_CMD_NAPI_GET.
	CmdNapiGet uint8 = 11
	// CmdQstatsGet is NETDEV_CMD_QSTATS_GET.
	CmdQstatsGet uint8 = 12
	// CmdBindRX is NETDEV_CMD_BIND_RX.
	CmdBindRX uint8 = 13
	// CmdNapiSet is NETDEV_CMD_NAPI_SET.
	CmdNapiSet uint8 = 14
	// CmdBindTX is NETDEV_CMD_BIND_TX.
	CmdBindTX uint8 = 15
)

// Attributes of the "dev" set (NETDEV_A_DEV_*).
const (
	// AttrDevIfindex is NETDEV_A_DEV_IFINDEX (u32).
	AttrDevIfindex uint16 = 1
	// AttrDevPad is NETDEV_A_DEV_PAD.
	AttrDevPad uint16 = 2
	// AttrDevXDPFeatures is NETDEV_A_DEV_XDP_FEATURES (u64, XDPAct bits).
	AttrDevXDPFeatures uint16 = 3
	// AttrDevXDPZCMaxSegs is NETDEV_A_DEV_XDP_ZC_MAX_SEGS (u32).
	AttrDevXDPZCMaxSegs uint16 = 4
	// AttrDevXDPRXMetadataFeatures is NETDEV_A_DEV_XDP_RX_METADATA_FEATURES (u64).
	AttrDevXDPRXMetadataFeatures uint16 = 5
	// AttrDevXSKFeatures is NETDEV_A_DEV_XSK_FEATURES (u64).
	AttrDevXSKFeatures uint16 = 6
)

// Attributes of the "queue" set (NETDEV_A_QUEUE_*).
const (
	// AttrQueueID is NETDEV_A_QUEUE_ID (u32).
	AttrQueueID uint16 = 1
	// AttrQueueIfindex is NETDEV_A_QUEUE_IFINDEX (u32).
	AttrQueueIfindex uint16 = 2
	// AttrQueueType is NETDEV_A_QUEUE_TYPE (u32, QueueType).
	AttrQueueType uint16 = 3
	// AttrQueueNapiID is NETDEV_A_QUEUE_NAPI_ID (u32).
	AttrQueueNapiID uint16 = 4
	// AttrQueueDmabuf is NETDEV_A_QUEUE_DMABUF (u32, the binding id).
	AttrQueueDmabuf uint16 = 5
	// AttrQueueIOUring is NETDEV_A_QUEUE_IO_URING (nest, present when
	// io_uring zero-copy RX uses the queue).
	AttrQueueIOUring uint16 = 6
	// AttrQueueXSK is NETDEV_A_QUEUE_XSK (nest, present when an AF_XDP
	// socket uses the queue).
	AttrQueueXSK uint16 = 7
)

// Attributes of the "dmabuf" set (NETDEV_A_DMABUF_*).
const (
	// AttrDmabufIfindex is NETDEV_A_DMABUF_IFINDEX (u32).
	AttrDmabufIfindex uint16 = 1
	// AttrDmabufQueues is NETDEV_A_DMABUF_QUEUES (nest of queue
	// attributes, one per queue, repeated).
	AttrDmabufQueues uint16 = 2
	// AttrDmabufFD is NETDEV_A_DMABUF_FD (u32).
	AttrDmabufFD uint16 = 3
	// AttrDmabufID is NETDEV_A_DMABUF_ID (u32, the reply).
	AttrDmabufID uint16 = 4
	// AttrDmabufAutorelease is NETDEV_A_DMABUF_AUTORELEASE (u8) of the
	// autorelease series v7–v10, not merged upstream. Upstream later gave
	// attribute 5 to rx-page-size (u32, at least PAGE_SIZE), so a kernel
	// without the series rejects it with EINVAL.
	AttrDmabufAutorelease uint16 = 5
)

// QueueType is enum netdev_queue_type.
type QueueType uint32

// Queue types.
const (
	// QueueTypeRX is NETDEV_QUEUE_TYPE_RX.
	QueueTypeRX QueueType = 0
	// QueueTypeTX is NETDEV_QUEUE_TYPE_TX.
	QueueTypeTX QueueType = 1
)

// String returns "rx", "tx" or the number.
func (t QueueType) String() string {
	switch t {
	case QueueTypeRX:
		return "rx"
	case QueueTypeTX:
		return "tx"
	}
	return "queue-type(" + strconv.FormatUint(uint64(t), 10) + ")"
}

// XDPAct is enum netdev_xdp_act: the XDP features of a device.
type XDPAct uint64

// XDP features.
const (
	// XDPActBasic is NETDEV_XDP_ACT_BASIC.
	XDPActBasic XDPAct = 1 << iota
	// XDPActRedirect is NETDEV_XDP_ACT_REDIRECT.
	XDPActRedirect
	// XDPActNdoXmit is NETDEV_XDP_ACT_NDO_XMIT.
	XDPActNdoXmit
	// XDPActXSKZeroCopy is NETDEV_XDP_ACT_XSK_ZEROCOPY.
	XDPActXSKZeroCopy
	// XDPActHWOffload is NETDEV_XDP_ACT_HW_OFFLOAD.
	XDPActHWOffload
	// XDPActRXSG is NETDEV_XDP_ACT_RX_SG.
	XDPActRXSG
	// XDPActNdoXmitSG is NETDEV_XDP_ACT_NDO_XMIT_SG.
	XDPActNdoXmitSG
)

var xdpActNames = []string{"basic", "redirect", "ndo-xmit", "xsk-zerocopy", "hw-offload", "rx-sg", "ndo-xmit-sg"}

// String lists the features as the netdev spec names them, joined by
// commas ("none" when empty).
func (a XDPAct) String() string {
	if a == 0 {
		return "none"
	}
	var names []string
	for i, n := range xdpActNames {
		if a&(1<<i) != 0 {
			names = append(names, n)
			a &^= 1 << i
		}
	}
	if a != 0 {
		names = append(names, "0x"+strconv.FormatUint(uint64(a), 16))
	}
	return strings.Join(names, ",")
}

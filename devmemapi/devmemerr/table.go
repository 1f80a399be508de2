package devmemerr

import (
	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
)

// bind-rx, in the kernel's order of checks (netdev_nl_bind_rx_doit →
// net_devmem_bind_dmabuf → net_devmem_bind_dmabuf_to_queue →
// __net_mp_open_rxq → netdev_rx_queue_restart).
var (
	// BindRXNotAdmin: bind-rx is an admin-only genetlink operation.
	BindRXNotAdmin = Case{
		Name: "bind-rx/not-admin", Op: OpBindRX, Errno: unix.EPERM,
		When: "the caller lacks CAP_NET_ADMIN in the device's network namespace",
		Hint: "run as root or grant CAP_NET_ADMIN",
	}
	// BindRXMissingAttr: ifindex, fd or queues missing (the extended ack
	// names the missing attribute; there is no text).
	BindRXMissingAttr = Case{
		Name: "bind-rx/missing-attr", Op: OpBindRX, Errno: unix.EINVAL,
		When: "the request lacks ifindex, fd or queues",
		Hint: "send ifindex, fd and at least one queue",
	}
	// BindRXNoDevice: no such ifindex in the caller's namespace, or the
	// device is not present.
	BindRXNoDevice = Case{
		Name: "bind-rx/no-device", Op: OpBindRX, Errno: unix.ENODEV,
		When: "no device has the ifindex in this network namespace",
		Hint: "check the interface name and the network namespace",
	}
	// BindRXNoQueueOps: the driver does not take the netdev instance lock,
	// which every driver with queue-management ops does.
	BindRXNoQueueOps = Case{
		Name: "bind-rx/no-queue-ops", Op: OpBindRX, Errno: unix.EOPNOTSUPP,
		When: "driver lacks queue management ops",
		Hint: "use a NIC whose driver implements queue management (for example bnxt, gve, mlx5, fbnic), or the emulated backend",
	}
	// BindRXQueueAttr: a queues nest without id or type.
	BindRXQueueAttr = Case{
		Name: "bind-rx/queue-attr", Op: OpBindRX, Errno: unix.EINVAL,
		When: "a queues entry lacks id or type",
		Hint: "give every queue an id and type rx",
	}
	// BindRXQueueType: a queue of a type other than rx.
	BindRXQueueType = Case{
		Name: "bind-rx/queue-type", Op: OpBindRX, Errno: unix.EINVAL,
		When: "a queue's type is not rx",
		Hint: "bind rx queues only (type 0)",
	}
	// BindRXQueueRange: a queue id is not below the device's real RX queue
	// count. Linux 6.18 checks every id while it reads the queue list
	// (netdev_nl_read_rxq_bitmap), before it looks at the DMA device or
	// the dmabuf fd, and answers EINVAL with the bad attribute pointed at
	// and no message.
	BindRXQueueRange = Case{
		Name: "bind-rx/queue-range", Op: OpBindRX, Errno: unix.EINVAL,
		When: "a queue id is not below the device's real RX queue count",
		Hint: "pick a queue below the RX channel count (ethtool -l IFACE)",
	}
	// BindRXDMAMismatch: the bound queues sit on different DMA devices (a
	// NIC with several PCI functions behind one netdev).
	BindRXDMAMismatch = Case{
		Name: "bind-rx/dma-mismatch", Op: OpBindRX, Errno: unix.EOPNOTSUPP,
		Message: "DMA device mismatch between queue %u and %u (multi-PF device?)",
		When:    "the requested queues belong to different DMA devices (netdev_nl_get_dma_dev)",
		Hint:    "bind queues of one DMA device (one PCI function) per bind-rx; bind the others with a second dmabuf",
	}
	// BindRXNoDMA: the device has no DMA device to attach the dmabuf to
	// (a software device with queue-management ops).
	BindRXNoDMA = Case{
		Name: "bind-rx/no-dma", Op: OpBindRX, Errno: unix.EOPNOTSUPP,
		Message: "Device doesn't support DMA",
		When:    "the device's queues have no DMA device (net_devmem_bind_dmabuf)",
		Hint:    "bind a physical NIC's queues (a virtual device cannot DMA into a dmabuf), or use the emulated backend",
	}
	// BindRXBadFD: the dmabuf fd is not an open file.
	BindRXBadFD = Case{
		Name: "bind-rx/bad-fd", Op: OpBindRX, Errno: unix.EBADF,
		When: "the dmabuf fd is not an open file descriptor",
		Hint: "pass an open dmabuf fd",
	}
	// BindRXNotDmabuf: the fd is open but is no dmabuf (dma_buf_get).
	BindRXNotDmabuf = Case{
		Name: "bind-rx/not-dmabuf", Op: OpBindRX, Errno: unix.EINVAL,
		When: "the fd is not a dmabuf",
		Hint: "export a dmabuf from a GPU driver or make one with /dev/udmabuf",
	}
	// BindRXAutoreleaseMismatch: the autorelease series (v7+) makes the
	// release mode system-wide; net_devmem_bind_dmabuf checks it after
	// mapping the dmabuf, before any queue is opened.
	BindRXAutoreleaseMismatch = Case{
		Name: "bind-rx/autorelease-mismatch", Op: OpBindRX, Errno: unix.EBUSY,
		Message: "System already configured with autorelease=%d",
		When:    "another RX binding exists with the other release mode",
		Hint:    "bind with the mode already in use, or close the other bindings first",
		Series:  true,
	}
	// BindRXQueueRangeMP: the range check of kernels before 6.18, which
	// looked at the queue id only when opening the queue
	// (__net_mp_open_rxq), after the dmabuf fd. 6.18 still has the check
	// there, but bind-rx no longer reaches it.
	BindRXQueueRangeMP = Case{
		Name: "bind-rx/queue-range-mp", Op: OpBindRX, Errno: unix.ERANGE,
		Message: "rx queue index out of range",
		When:    "a queue id is not below the RX queue count, on Linux 6.12 to 6.17",
		Hint:    "pick a queue below the RX channel count (ethtool -l IFACE)",
	}
	// BindRXHDSDisabled: header split is off.
	BindRXHDSDisabled = Case{
		Name: "bind-rx/hds-disabled", Op: OpBindRX, Errno: unix.EINVAL,
		Message: "tcp-data-split is disabled",
		When:    "the device's header split is not enabled",
		Hint:    "ethtool -G IFACE tcp-data-split on",
	}
	// BindRXHDSThresh: the header-split threshold is not zero.
	BindRXHDSThresh = Case{
		Name: "bind-rx/hds-thresh", Op: OpBindRX, Errno: unix.EINVAL,
		Message: "hds-thresh is not zero",
		When:    "the header-split threshold is not 0",
		Hint:    "ethtool -G IFACE hds-thresh 0",
	}
	// BindRXXDPAttached: an XDP program is attached to the device.
	BindRXXDPAttached = Case{
		Name: "bind-rx/xdp-attached", Op: OpBindRX, Errno: unix.EEXIST,
		Message: "unable to custom memory provider to device with XDP program attached",
		When:    "an XDP program is attached to the device",
		Hint:    "detach the XDP program (ip link set IFACE xdp off)",
	}
	// BindRXQueueBound: the queue already has a memory provider.
	BindRXQueueBound = Case{
		Name: "bind-rx/queue-bound", Op: OpBindRX, Errno: unix.EEXIST,
		Message: "designated queue already memory provider bound",
		When:    "the queue is already bound to a dmabuf (or io_uring zero-copy RX)",
		Hint:    "close the other binding or pick another queue",
	}
	// BindRXAFXDP: an AF_XDP socket uses the queue.
	BindRXAFXDP = Case{
		Name: "bind-rx/af-xdp", Op: OpBindRX, Errno: unix.EBUSY,
		Message: "designated queue already in use by AF_XDP",
		When:    "an AF_XDP socket is bound to the queue",
		Hint:    "close the AF_XDP socket or pick another queue",
	}
	// BindRXNoQueueRestart: the driver takes the instance lock but cannot
	// restart a queue (netdev_rx_queue_restart without queue_mgmt_ops).
	BindRXNoQueueRestart = Case{
		Name: "bind-rx/no-queue-restart", Op: OpBindRX, Errno: unix.EOPNOTSUPP,
		When: "the driver cannot restart a queue with a new memory provider",
		Hint: "use a NIC whose driver implements queue management, or the emulated backend",
	}
	// BindRXNotPickedUp: the driver restarted the queue but did not use the
	// memory provider.
	BindRXNotPickedUp = Case{
		Name: "bind-rx/not-picked-up", Op: OpBindRX, Errno: unix.ENODATA,
		When: "the driver restarted the queue without the memory provider",
		Hint: "the driver does not support devmem on this queue configuration; check its documentation",
	}
)

// bind-tx (netdev_nl_bind_tx_doit). bind-tx is not an admin-only operation
// (no GENL_ADMIN_PERM in the netdev family's ops), so it has no EPERM case.
var (
	// BindTXMissingAttr: ifindex or fd missing.
	BindTXMissingAttr = Case{
		Name: "bind-tx/missing-attr", Op: OpBindTX, Errno: unix.EINVAL,
		When: "the request lacks ifindex or fd",
		Hint: "send ifindex and fd",
	}
	// BindTXNoDevice: no such ifindex, or the device is not present.
	BindTXNoDevice = Case{
		Name: "bind-tx/no-device", Op: OpBindTX, Errno: unix.ENODEV,
		When: "no device has the ifindex in this network namespace",
		Hint: "check the interface name and the network namespace",
	}
	// BindTXNoNetmemTX: the driver cannot transmit from net_iovs.
	BindTXNoNetmemTX = Case{
		Name: "bind-tx/no-netmem-tx", Op: OpBindTX, Errno: unix.EOPNOTSUPP,
		Message: "Driver does not support netmem TX",
		When:    "the driver does not support netmem TX",
		Hint:    "use a NIC whose driver supports devmem TX, or the emulated backend",
	}
	// BindTXNoDMA: the device's TX queue 0 has no DMA device.
	BindTXNoDMA = Case{
		Name: "bind-tx/no-dma", Op: OpBindTX, Errno: unix.EOPNOTSUPP,
		Message: "Device doesn't support DMA",
		When:    "the device has no DMA device to map the dmabuf for (net_devmem_bind_dmabuf)",
		Hint:    "bind a physical NIC, or use the emulated backend",
	}
	// BindTXBadFD: the dmabuf fd is not an open file.
	BindTXBadFD = Case{
		Name: "bind-tx/bad-fd", Op: OpBindTX, Errno: unix.EBADF,
		When: "the dmabuf fd is not an open file descriptor",
		Hint: "pass an open dmabuf fd",
	}
	// BindTXNotDmabuf: the fd is open but is no dmabuf.
	BindTXNotDmabuf = Case{
		Name: "bind-tx/not-dmabuf", Op: OpBindTX, Errno: unix.EINVAL,
		When: "the fd is not a dmabuf",
		Hint: "export a dmabuf from a GPU driver or make one with /dev/udmabuf",
	}
)

// SO_DEVMEM_DONTNEED (sk_setsockopt → sock_devmem_dontneed).
var (
	// DontNeedShortOptlen: sk_setsockopt rejects an optlen below
	// sizeof(int) before it looks at the option.
	DontNeedShortOptlen = Case{
		Name: "dontneed/short-optlen", Op: OpDontNeed, Errno: unix.EINVAL,
		When: "optlen is below 4 (checked before the socket type)",
		Hint: "pass at least one struct dmabuf_token",
	}
	// DontNeedNotTCP: the socket is not TCP.
	DontNeedNotTCP = Case{
		Name: "dontneed/not-tcp", Op: OpDontNeed, Errno: unix.EBADF,
		When: "the socket is not a TCP socket",
		Hint: "return tokens on the TCP socket that received them",
	}
	// DontNeedBadOptlen: optlen is not a multiple of 8.
	DontNeedBadOptlen = Case{
		Name: "dontneed/bad-optlen", Op: OpDontNeed, Errno: unix.EINVAL,
		When: "optlen is not a multiple of sizeof(struct dmabuf_token)",
		Hint: "pass whole struct dmabuf_token entries",
	}
	// DontNeedTooManyTokens: more than 128 tokens.
	DontNeedTooManyTokens = Case{
		Name: "dontneed/too-many-tokens", Op: OpDontNeed, Errno: unix.EINVAL,
		When: "optlen holds more than 128 tokens",
		Hint: "split the tokens into calls of at most 128",
	}
	// DontNeedNoBinding: manual release mode, the socket has no binding.
	DontNeedNoBinding = Case{
		Name: "dontneed/no-binding", Op: OpDontNeed, Errno: unix.EINVAL,
		When:   "autorelease off and the socket never received from a binding",
		Hint:   "return tokens only on sockets that received devmem data",
		Series: true,
	}
)

// recvmsg (tcp_recvmsg_locked → tcp_recvmsg_dmabuf).
var (
	// RecvMsgNoDevmemFlag: dmabuf data read without MSG_SOCK_DEVMEM.
	RecvMsgNoDevmemFlag = Case{
		Name: "recvmsg/no-devmem-flag", Op: OpRecvMsg, Errno: unix.EFAULT,
		When: "the next data lies in a dmabuf and recvmsg lacks MSG_SOCK_DEVMEM",
		Hint: "receive with MSG_SOCK_DEVMEM",
	}
	// RecvMsgCmsgSpace: not one control message fits the control buffer.
	RecvMsgCmsgSpace = Case{
		Name: "recvmsg/cmsg-space", Op: OpRecvMsg, Errno: devmemapi.ETOOSMALL,
		When: "the control buffer cannot hold one struct dmabuf_cmsg",
		Hint: "pass a control buffer of at least CMSG_SPACE(sizeof(struct dmabuf_cmsg)) bytes",
	}
	// RecvMsgOtherBinding: manual mode, a fragment from another binding
	// than the socket's.
	RecvMsgOtherBinding = Case{
		Name: "recvmsg/other-binding", Op: OpRecvMsg, Errno: unix.EFAULT,
		When:   "autorelease off and the data landed in another binding than the socket's first",
		Hint:   "steer a socket's flow to queues of one binding",
		Series: true,
	}
	// RecvMsgUnbound: manual mode, a socket not yet tied to a binding
	// receives a fragment of a binding without users left: unbound, and
	// no other socket tied to it (v10 tcp_recvmsg_dmabuf,
	// net_devmem_dmabuf_binding_user_get). A tied socket keeps its binding
	// alive, and autorelease-on sockets never see this error.
	RecvMsgUnbound = Case{
		Name: "recvmsg/unbound", Op: OpRecvMsg, Errno: unix.ENODEV,
		When:   "autorelease off, the socket has not received from the binding yet, and the binding was unbound with no socket tied to it",
		Hint:   "keep the binding open until its sockets have received (a socket that received once keeps it alive)",
		Series: true,
	}
)

// sendmsg with SCM_DEVMEM_DMABUF (___sys_sendmsg → tcp_sendmsg_locked →
// sock_cmsg_send, net_devmem_get_binding, zerocopy_fill_skb_from_devmem).
// The control-message cases are the errors of __sock_cmsg_send, which
// tcp_sendmsg_locked returns as they are (after the binding checks, which
// it skips when the control messages are bad).
var (
	// SendMsgTooManyIovecs: more than UIO_MAXIOV iovecs (import_iovec,
	// before the socket is looked at).
	SendMsgTooManyIovecs = Case{
		Name: "sendmsg/too-many-iovecs", Op: OpSendMsg, Errno: unix.EMSGSIZE,
		When: "the message has more than 1024 (UIO_MAXIOV) iovecs",
		Hint: "send at most 1024 iovecs per call",
	}
	// SendMsgUnknownBinding: the dmabuf id names no TX binding.
	SendMsgUnknownBinding = Case{
		Name: "sendmsg/unknown-binding", Op: OpSendMsg, Errno: unix.EINVAL,
		When: "the dmabuf id is no live TX binding (unknown, unbound, or an RX binding)",
		Hint: "send with the id bind-tx returned, while its netlink socket is open",
	}
	// SendMsgOtherDevice: the binding belongs to another device than the
	// connection's route.
	SendMsgOtherDevice = Case{
		Name: "sendmsg/other-device", Op: OpSendMsg, Errno: unix.ENODEV,
		When: "the TX binding is on another device than the one the connection's route uses",
		Hint: "bind-tx on the interface the connection leaves through",
	}
	// SendMsgNoZerocopy: a dmabuf id without MSG_ZEROCOPY or SO_ZEROCOPY.
	SendMsgNoZerocopy = Case{
		Name: "sendmsg/no-zerocopy", Op: OpSendMsg, Errno: unix.EINVAL,
		When: "the send names a dmabuf id but lacks MSG_ZEROCOPY, or the socket lacks SO_ZEROCOPY",
		Hint: "setsockopt(SO_ZEROCOPY, 1) once, and send with MSG_ZEROCOPY",
	}
	// SendMsgBadCmsg: a control message the kernel refuses: malformed,
	// of an unknown SOL_SOCKET type, of the wrong length, SO_TIMESTAMPING
	// flags outside the TX record mask, SCM_TXTIME without SO_TXTIME, or
	// SCM_TS_OPT_ID on TCP.
	SendMsgBadCmsg = Case{
		Name: "sendmsg/bad-cmsg", Op: OpSendMsg, Errno: unix.EINVAL,
		When: "a control message is malformed or refused by __sock_cmsg_send",
		Hint: "send SCM_DEVMEM_DMABUF with cmsg_len CMSG_LEN(4), and only the SOL_SOCKET messages a TCP socket takes",
	}
	// SendMsgCmsgPerm: SO_MARK, or SO_PRIORITY above 6, without
	// CAP_NET_ADMIN or CAP_NET_RAW.
	SendMsgCmsgPerm = Case{
		Name: "sendmsg/cmsg-perm", Op: OpSendMsg, Errno: unix.EPERM,
		When: "an SO_MARK control message, or SO_PRIORITY above 6, from a process without CAP_NET_ADMIN or CAP_NET_RAW",
		Hint: "drop the message, or grant CAP_NET_ADMIN",
	}
	// SendMsgOutsideDmabuf: an iovec's offset or end lies outside the
	// dmabuf.
	SendMsgOutsideDmabuf = Case{
		Name: "sendmsg/outside-dmabuf", Op: OpSendMsg, Errno: unix.EFAULT,
		When: "an iovec's offset or end lies outside the TX dmabuf",
		Hint: "keep every iov_base + iov_len within the dmabuf's size",
	}
)

// Cases lists every case, per operation in the kernel's order of checks.
var Cases = []Case{
	BindRXNotAdmin,
	BindRXMissingAttr,
	BindRXNoDevice,
	BindRXNoQueueOps,
	BindRXQueueAttr,
	BindRXQueueType,
	BindRXQueueRange,
	BindRXDMAMismatch,
	BindRXNoDMA,
	BindRXBadFD,
	BindRXNotDmabuf,
	BindRXAutoreleaseMismatch,
	BindRXQueueRangeMP,
	BindRXHDSDisabled,
	BindRXHDSThresh,
	BindRXXDPAttached,
	BindRXQueueBound,
	BindRXAFXDP,
	BindRXNoQueueRestart,
	BindRXNotPickedUp,

	BindTXMissingAttr,
	BindTXNoDevice,
	BindTXNoNetmemTX,
	BindTXNoDMA,
	BindTXBadFD,
	BindTXNotDmabuf,

	DontNeedShortOptlen,
	DontNeedNotTCP,
	DontNeedBadOptlen,
	DontNeedTooManyTokens,
	DontNeedNoBinding,

	RecvMsgNoDevmemFlag,
	RecvMsgCmsgSpace,
	RecvMsgOtherBinding,
	RecvMsgUnbound,

	SendMsgTooManyIovecs,
	SendMsgUnknownBinding,
	SendMsgOtherDevice,
	SendMsgNoZerocopy,
	SendMsgBadCmsg,
	SendMsgCmsgPerm,
	SendMsgOutsideDmabuf,
}

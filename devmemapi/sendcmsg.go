package devmemapi

import (
	"encoding/binary"
	"syscall"

	"golang.org/x/sys/unix"
)

// UIO_MAXIOV is the most iovecs one sendmsg takes (include/uapi/linux/uio.h);
// more fail with EMSGSIZE before the socket is looked at (import_iovec).
const UIO_MAXIOV = 1024

// SOF_TIMESTAMPING_TX_RECORD_MASK is the set of SO_TIMESTAMPING flags a
// send's control message may carry (include/uapi/linux/net_tstamp.h, Linux
// 6.15 and later: TX_HARDWARE, TX_SOFTWARE, TX_SCHED, TX_ACK and
// TX_COMPLETION); any other flag is EINVAL.
const SOF_TIMESTAMPING_TX_RECORD_MASK = unix.SOF_TIMESTAMPING_TX_HARDWARE | unix.SOF_TIMESTAMPING_TX_SOFTWARE |
	unix.SOF_TIMESTAMPING_TX_SCHED | unix.SOF_TIMESTAMPING_TX_ACK | sofTimestampingTxCompletion

// sofTimestampingTxCompletion is SOF_TIMESTAMPING_TX_COMPLETION (1 << 18),
// which x/sys/unix does not name yet.
const sofTimestampingTxCompletion = 1 << 18

// tcPrioInteractive is TC_PRIO_INTERACTIVE: SO_PRIORITY values up to it
// need no privilege (sk_set_prio_allowed).
const tcPrioInteractive = 6

// SendCookie is what a send's SOL_SOCKET control messages set: the
// kernel's struct sockcm_cookie, as far as a TCP socket uses it. A Has
// field reports that its message was present (the last one wins).
type SendCookie struct {
	// DmabufID is SCM_DEVMEM_DMABUF's dmabuf id (0: no devmem send).
	DmabufID    uint32
	HasDmabufID bool
	// Mark is SO_MARK's fwmark.
	Mark    uint32
	HasMark bool
	// Priority is SO_PRIORITY's priority.
	Priority    uint32
	HasPriority bool
	// TSFlags are SO_TIMESTAMPING's TX record flags.
	TSFlags    uint32
	HasTSFlags bool
	// TxTime is SCM_TXTIME's transmit time (nanoseconds).
	TxTime    uint64
	HasTxTime bool
}

// SendCmsgOptions is the socket state the checks of a send's control
// messages depend on.
type SendCmsgOptions struct {
	// Privileged is CAP_NET_ADMIN or CAP_NET_RAW in the socket's network
	// namespace: SO_MARK needs it, and so does SO_PRIORITY above 6.
	Privileged bool
	// TxTime is SO_TXTIME set on the socket, without which SCM_TXTIME is
	// EINVAL.
	TxTime bool
}

// ParseSendCmsg reads the control buffer of a send on a TCP socket with the
// kernel's rules (net/core/sock.c sock_cmsg_send and __sock_cmsg_send, Linux
// 6.18): a message whose length is short or runs past the buffer is EINVAL;
// messages of other levels are skipped; at SOL_SOCKET:
//
//   - SCM_DEVMEM_DMABUF: cmsg_len must be CMSG_LEN(4), else EINVAL;
//   - SO_MARK: EPERM without privilege, then EINVAL unless CMSG_LEN(4);
//   - SO_PRIORITY: EINVAL unless CMSG_LEN(4), then EPERM above 6 without
//     privilege;
//   - SO_TIMESTAMPING (old and new): EINVAL unless CMSG_LEN(4) and the flags
//     lie in SOF_TIMESTAMPING_TX_RECORD_MASK;
//   - SCM_TXTIME: EINVAL without SO_TXTIME, then unless CMSG_LEN(8);
//   - SCM_TS_OPT_ID: EINVAL on a TCP socket;
//   - SCM_RIGHTS and SCM_CREDENTIALS: ignored;
//   - every other type: EINVAL.
//
// tcp_sendmsg_locked returns these errors as they are, after its dmabuf
// checks, which it skips when the control messages are bad.
func ParseSendCmsg(oob []byte, opts SendCmsgOptions) (SendCookie, error) {
	var ck SendCookie
	// for_each_cmsghdr stops where no header fits (it.short: fine);
	// CMSG_OK fails a bad cmsg_len with EINVAL.
	it := cmsgIter{oob: oob}
	for it.next() {
		l, typ, data := it.len, it.typ, it.data
		if it.level != unix.SOL_SOCKET {
			continue
		}
		u32 := func() uint32 { return binary.NativeEndian.Uint32(data) }
		len4 := l == cmsgHdrLen+4
		switch typ {
		case unix.SO_MARK:
			if !opts.Privileged {
				return SendCookie{}, syscall.EPERM
			}
			if !len4 {
				return SendCookie{}, syscall.EINVAL
			}
			ck.Mark, ck.HasMark = u32(), true
		case unix.SO_TIMESTAMPING_OLD, unix.SO_TIMESTAMPING_NEW:
			if !len4 || u32()&^SOF_TIMESTAMPING_TX_RECORD_MASK != 0 {
				return SendCookie{}, syscall.EINVAL
			}
			ck.TSFlags, ck.HasTSFlags = u32(), true
		case unix.SCM_TXTIME:
			if !opts.TxTime || l != cmsgHdrLen+8 {
				return SendCookie{}, syscall.EINVAL
			}
			ck.TxTime, ck.HasTxTime = binary.NativeEndian.Uint64(data), true
		case unix.SCM_TS_OPT_ID:
			return SendCookie{}, syscall.EINVAL // not on TCP
		case unix.SCM_RIGHTS, unix.SCM_CREDENTIALS:
			// Semantically SOL_UNIX: accepted and ignored.
		case unix.SO_PRIORITY:
			if !len4 {
				return SendCookie{}, syscall.EINVAL
			}
			if u32() > tcPrioInteractive && !opts.Privileged {
				return SendCookie{}, syscall.EPERM
			}
			ck.Priority, ck.HasPriority = u32(), true
		case SCM_DEVMEM_DMABUF:
			if !len4 {
				return SendCookie{}, syscall.EINVAL
			}
			ck.DmabufID, ck.HasDmabufID = u32(), true
		default:
			return SendCookie{}, syscall.EINVAL
		}
	}
	if it.bad {
		return SendCookie{}, syscall.EINVAL // CMSG_OK
	}
	return ck, nil
}

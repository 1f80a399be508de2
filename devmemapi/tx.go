package devmemapi

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// This file is the devmem TX side of the uAPI (Documentation/networking/
// devmem.rst, "TX Interface"): a dmabuf bound for transmission
// (NETDEV_CMD_BIND_TX), sendmsg with the dmabuf id in a SOL_SOCKET /
// SCM_DEVMEM_DMABUF control message and iov_base holding dmabuf offsets, and
// the MSG_ZEROCOPY completion notifications read with recvmsg(MSG_ERRQUEUE).
//
// The errors of a devmem sendmsg, as Linux 6.18 returns them (and both
// backends must):
//
//	control message malformed, SCM_DEVMEM_DMABUF     EINVAL  net/core/sock.c sock_cmsg_send,
//	  cmsg_len != CMSG_LEN(4), other SOL_SOCKET type          __sock_cmsg_send
//	dmabuf id of no TX binding (unknown, unbound,    EINVAL  net/core/devmem.c net_devmem_get_binding
//	  an RX binding: no tx_vec)                               (!binding || !binding->tx_vec)
//	binding of another device than the route's       ENODEV  net_devmem_get_binding (dst dev check)
//	dmabuf id without MSG_ZEROCOPY or SO_ZEROCOPY    EINVAL  net/ipv4/tcp.c tcp_sendmsg_locked
//	iovec offset or end outside the dmabuf           EFAULT  net/core/datagram.c
//	                                                          zerocopy_fill_skb_from_devmem,
//	                                                          net_devmem_get_niov_at
//
// A call that fails sends nothing and takes no zerocopy number (the kernel's
// net_zcopy_put_abort gives the number back). A zero-length send returns 0
// without looking the id up, but a dmabuf id without MSG_ZEROCOPY is EINVAL
// even then.

// Flags and constants of a devmem send and its completions
// (include/uapi/linux/errqueue.h, include/linux/socket.h).
const (
	// MSG_ZEROCOPY is the sendmsg flag a devmem send requires.
	MSG_ZEROCOPY = unix.MSG_ZEROCOPY
	// MSG_ERRQUEUE reads the socket's error queue, where zerocopy
	// completions arrive.
	MSG_ERRQUEUE = unix.MSG_ERRQUEUE
	// MSG_CTRUNC is set in the returned flags when a control message was
	// truncated.
	MSG_CTRUNC = unix.MSG_CTRUNC
	// SO_ZEROCOPY is the socket option a MSG_ZEROCOPY send requires.
	SO_ZEROCOPY = unix.SO_ZEROCOPY
	// SO_EE_ORIGIN_ZEROCOPY is sock_extended_err.ee_origin of a zerocopy
	// completion.
	SO_EE_ORIGIN_ZEROCOPY = unix.SO_EE_ORIGIN_ZEROCOPY
	// SO_EE_CODE_ZEROCOPY_COPIED in ee_code reports that the data was
	// copied after all (never for devmem in the kernel).
	SO_EE_CODE_ZEROCOPY_COPIED = unix.SO_EE_CODE_ZEROCOPY_COPIED
	// IP_RECVERR is the SOL_IP control message type that carries a
	// sock_extended_err on an IPv4 socket.
	IP_RECVERR = unix.IP_RECVERR
	// IPV6_RECVERR is its SOL_IPV6 counterpart.
	IPV6_RECVERR = unix.IPV6_RECVERR
)

// Sizes of the TX structures and control messages on 64-bit Linux.
const (
	// SizeofIovec is sizeof(struct iovec).
	SizeofIovec = 16
	// SizeofSockExtendedErr is sizeof(struct sock_extended_err).
	SizeofSockExtendedErr = 16
	// SizeofZerocopyErr is the payload of an IPv4 IP_RECVERR message:
	// sock_extended_err followed by the offender's sockaddr_in (zeroed
	// for zerocopy completions), as ip_recv_error writes it.
	SizeofZerocopyErr = SizeofSockExtendedErr + unix.SizeofSockaddrInet4
	// CmsgSpaceDmabufTx is CMSG_SPACE(sizeof(__u32)): the room of the
	// SCM_DEVMEM_DMABUF message of a devmem send.
	CmsgSpaceDmabufTx = cmsgHdrLen + 8
	// CmsgLenDmabufTx is CMSG_LEN(sizeof(__u32)), the only cmsg_len the
	// kernel accepts for it.
	CmsgLenDmabufTx = cmsgHdrLen + SizeofDmabufTxCmsg
	// CmsgSpaceZerocopy is CMSG_SPACE(SizeofZerocopyErr): the control
	// buffer one completion notification on an IPv4 socket needs (it is
	// also its CMSG_LEN).
	CmsgSpaceZerocopy = cmsgHdrLen + SizeofZerocopyErr
	// SizeofZerocopyErr6 is the payload of an IPv6 IPV6_RECVERR message:
	// sock_extended_err followed by the offender's sockaddr_in6 (zeroed
	// for zerocopy completions), as ipv6_recv_error writes it.
	SizeofZerocopyErr6 = SizeofSockExtendedErr + unix.SizeofSockaddrInet6
	// CmsgLenZerocopy6 is CMSG_LEN(SizeofZerocopyErr6), the cmsg_len of
	// a notification on an IPv6 socket.
	CmsgLenZerocopy6 = cmsgHdrLen + SizeofZerocopyErr6
	// CmsgSpaceZerocopy6 is CMSG_SPACE(SizeofZerocopyErr6): the control
	// buffer one notification on an IPv6 socket needs, and so the room
	// for one notification whatever the socket's family.
	CmsgSpaceZerocopy6 = cmsgHdrLen + (SizeofZerocopyErr6+cmsgAlign-1)&^(cmsgAlign-1)
)

// Iovec is struct iovec as a devmem send reads it: Base is not an address
// but the offset into the TX dmabuf where Len bytes start.
type Iovec struct {
	// Base is the dmabuf offset (iov_base).
	Base uint64
	// Len is the byte count (iov_len).
	Len uint64
}

// SockExtendedErr is struct sock_extended_err. For a zerocopy completion
// Errno is 0, Origin is SO_EE_ORIGIN_ZEROCOPY, Info is the first and Data
// the last send sequence number of the completed range.
type SockExtendedErr struct {
	// Errno is ee_errno.
	Errno uint32
	// Origin is ee_origin.
	Origin uint8
	// Type is ee_type.
	Type uint8
	// Code is ee_code.
	Code uint8
	// Pad is ee_pad.
	Pad uint8
	// Info is ee_info (zerocopy: lo).
	Info uint32
	// Data is ee_data (zerocopy: hi).
	Data uint32
}

// Marshal writes e in the kernel's layout into b (SizeofSockExtendedErr
// bytes).
func (e *SockExtendedErr) Marshal(b []byte) {
	_ = b[SizeofSockExtendedErr-1]
	binary.NativeEndian.PutUint32(b[0:], e.Errno)
	b[4], b[5], b[6], b[7] = e.Origin, e.Type, e.Code, e.Pad
	binary.NativeEndian.PutUint32(b[8:], e.Info)
	binary.NativeEndian.PutUint32(b[12:], e.Data)
}

// Unmarshal reads e from b; it fails with EINVAL when b is too short.
func (e *SockExtendedErr) Unmarshal(b []byte) error {
	if len(b) < SizeofSockExtendedErr {
		return syscall.EINVAL
	}
	e.Errno = binary.NativeEndian.Uint32(b[0:])
	e.Origin, e.Type, e.Code, e.Pad = b[4], b[5], b[6], b[7]
	e.Info = binary.NativeEndian.Uint32(b[8:])
	e.Data = binary.NativeEndian.Uint32(b[12:])
	return nil
}

// ZerocopyRange is one completion notification: the sends numbered Lo to Hi
// (inclusive, modulo 2^32) are done and their dmabuf bytes may be reused.
// Every MSG_ZEROCOPY send call that queued data takes the socket's next
// number, starting at 0.
type ZerocopyRange struct {
	// Lo is the first completed send (ee_info).
	Lo uint32
	// Hi is the last completed send (ee_data).
	Hi uint32
	// Copied reports SO_EE_CODE_ZEROCOPY_COPIED.
	Copied bool
}

// Count is the number of sends the range covers.
func (r ZerocopyRange) Count() uint64 { return uint64(r.Hi-r.Lo) + 1 }

// String formats the range as ncdevmem prints it.
func (r ZerocopyRange) String() string { return fmt.Sprintf("[%d,%d]", r.Lo, r.Hi) }

// AppendDmabufTxCmsg appends the control message of a devmem send to dst:
// SOL_SOCKET / SCM_DEVMEM_DMABUF with the __u32 dmabuf id, padded to
// CmsgSpaceDmabufTx, exactly as ncdevmem builds it.
func AppendDmabufTxCmsg(dst []byte, dmabufID uint32) []byte {
	var b [CmsgSpaceDmabufTx]byte
	binary.NativeEndian.PutUint64(b[0:], CmsgLenDmabufTx)
	binary.NativeEndian.PutUint32(b[8:], uint32(unix.SOL_SOCKET))
	binary.NativeEndian.PutUint32(b[12:], SCM_DEVMEM_DMABUF)
	binary.NativeEndian.PutUint32(b[16:], dmabufID)
	return append(dst, b[:]...)
}

// ParseDmabufTxCmsg reads the control buffer of a send with the kernel's
// rules (ParseSendCmsg, for a privileged socket without SO_TXTIME) and
// returns the SCM_DEVMEM_DMABUF id (the last one wins); found reports
// whether such a message was present. The other SOL_SOCKET messages a TCP
// socket takes (SO_MARK, SO_PRIORITY, SO_TIMESTAMPING) are checked and
// accepted; a malformed or refused one is EINVAL.
func ParseDmabufTxCmsg(oob []byte) (dmabufID uint32, found bool, err error) {
	ck, err := ParseSendCmsg(oob, SendCmsgOptions{Privileged: true})
	if err != nil {
		return 0, false, err
	}
	return ck.DmabufID, ck.HasDmabufID, nil
}

// PutZerocopyCmsg writes one completion notification into oob as the
// kernel's ip_recv_error does on an AF_INET socket: a SOL_IP / IP_RECVERR
// message carrying a sock_extended_err (origin SO_EE_ORIGIN_ZEROCOPY,
// ee_info = Lo, ee_data = Hi) and a zeroed sockaddr_in. When oob is shorter
// than CmsgSpaceZerocopy the message is truncated as put_cmsg truncates it
// (nothing at all below a cmsghdr) and truncated is true; the caller
// reports MSG_CTRUNC.
func PutZerocopyCmsg(oob []byte, r ZerocopyRange) (n int, truncated bool) {
	var b [SizeofZerocopyErr]byte
	zerocopyErr(r).Marshal(b[:])
	return putCmsg(oob, unix.SOL_IP, IP_RECVERR, b[:])
}

// PutZerocopyCmsg6 writes one completion notification into oob as the
// kernel's ipv6_recv_error does on an AF_INET6 socket, whether it talks
// IPv6 or, v4-mapped, IPv4 (inet_recv_error chooses by the socket's family;
// ncdevmem's sockets are all AF_INET6): a SOL_IPV6 / IPV6_RECVERR message
// of cmsg_len CmsgLenZerocopy6 carrying the sock_extended_err and a
// sockaddr_in6 offender that is all zeros (sin6_family AF_UNSPEC:
// ipv6_recv_error clears it, and ip6_datagram_support_cmsg is false for a
// notification, which has no device). n is CmsgSpaceZerocopy6 when oob has
// that room; truncation is as for PutZerocopyCmsg.
func PutZerocopyCmsg6(oob []byte, r ZerocopyRange) (n int, truncated bool) {
	var b [SizeofZerocopyErr6]byte
	zerocopyErr(r).Marshal(b[:])
	return putCmsg(oob, unix.SOL_IPV6, IPV6_RECVERR, b[:])
}

// zerocopyErr is the sock_extended_err of a completion.
func zerocopyErr(r ZerocopyRange) *SockExtendedErr {
	ee := &SockExtendedErr{Origin: SO_EE_ORIGIN_ZEROCOPY, Info: r.Lo, Data: r.Hi}
	if r.Copied {
		ee.Code = SO_EE_CODE_ZEROCOPY_COPIED
	}
	return ee
}

// putCmsg is the kernel's put_cmsg: a header with cmsg_len CMSG_LEN(len(data))
// and the data; with less room than that, cmsg_len says what fits and the
// data is cut (truncated); with less room than a header, nothing. n is the
// room taken, at most CMSG_SPACE(len(data)); padding is zeroed.
func putCmsg(oob []byte, level, typ int, data []byte) (n int, truncated bool) {
	if len(oob) < cmsgHdrLen {
		return 0, true
	}
	l := cmsgHdrLen + len(data)
	if len(oob) < l {
		l, truncated = len(oob), true
	}
	binary.NativeEndian.PutUint64(oob[0:], uint64(l))
	binary.NativeEndian.PutUint32(oob[8:], uint32(level))
	binary.NativeEndian.PutUint32(oob[12:], uint32(typ))
	copy(oob[cmsgHdrLen:l], data)
	n = min(len(oob), cmsgHdrLen+cmsgAlignUp(len(data)))
	clear(oob[l:n])
	return n, truncated
}

// AppendZerocopyRanges parses the control messages of a
// recvmsg(MSG_ERRQUEUE), keeping what ncdevmem keeps (SOL_IP / IP_RECVERR
// and SOL_IPV6 / IPV6_RECVERR), and appends one range per zerocopy
// notification to dst. A message with another origin or a nonzero ee_errno
// fails with EPROTO (the notification is an error, not a completion); a
// malformed buffer fails with EINVAL.
func AppendZerocopyRanges(dst []ZerocopyRange, oob []byte) ([]ZerocopyRange, error) {
	it := cmsgIter{oob: oob}
	for it.next() {
		if !(it.level == unix.SOL_IP && it.typ == IP_RECVERR) && !(it.level == unix.SOL_IPV6 && it.typ == IPV6_RECVERR) {
			continue
		}
		var ee SockExtendedErr
		if err := ee.Unmarshal(it.data); err != nil {
			return dst, err
		}
		if ee.Origin != SO_EE_ORIGIN_ZEROCOPY || ee.Errno != 0 {
			return dst, fmt.Errorf("error queue: origin %d errno %d, not a zerocopy completion: %w", ee.Origin, ee.Errno, syscall.EPROTO)
		}
		dst = append(dst, ZerocopyRange{Lo: ee.Info, Hi: ee.Data, Copied: ee.Code == SO_EE_CODE_ZEROCOPY_COPIED})
	}
	if it.bad || it.short {
		return dst, syscall.EINVAL
	}
	return dst, nil
}

// ZerocopyTracker checks completions against sends: every send number must
// complete exactly once. It is not safe for concurrent use.
type ZerocopyTracker struct {
	done []ZerocopyRange // disjoint, sorted by Lo, merged; no wrap support
	n    uint64
}

// Add records a completed range; it fails when the range is inverted or
// overlaps one already recorded (a send completed twice).
func (t *ZerocopyTracker) Add(r ZerocopyRange) error {
	if r.Hi < r.Lo {
		return fmt.Errorf("zerocopy range %v is inverted: %w", r, syscall.EINVAL)
	}
	i := sort.Search(len(t.done), func(i int) bool { return t.done[i].Hi >= r.Lo })
	if i < len(t.done) && t.done[i].Lo <= r.Hi {
		return fmt.Errorf("zerocopy range %v overlaps completed %v: %w", r, t.done[i], syscall.EEXIST)
	}
	t.done = append(t.done, ZerocopyRange{})
	copy(t.done[i+1:], t.done[i:])
	t.done[i] = ZerocopyRange{Lo: r.Lo, Hi: r.Hi}
	// Merge with neighbours.
	if i+1 < len(t.done) && t.done[i].Hi+1 == t.done[i+1].Lo {
		t.done[i].Hi = t.done[i+1].Hi
		t.done = append(t.done[:i+1], t.done[i+2:]...)
	}
	if i > 0 && t.done[i-1].Hi+1 == t.done[i].Lo {
		t.done[i-1].Hi = t.done[i].Hi
		t.done = append(t.done[:i], t.done[i+1:]...)
	}
	t.n += r.Count()
	return nil
}

// Completed is the number of sends completed so far.
func (t *ZerocopyTracker) Completed() uint64 { return t.n }

// Covers reports whether sends 0 to n-1 have all completed.
func (t *ZerocopyTracker) Covers(n uint64) bool {
	if n == 0 {
		return true
	}
	return len(t.done) > 0 && t.done[0].Lo == 0 && uint64(t.done[0].Hi)+1 >= n
}

// IsDone reports whether send number id has completed.
func (t *ZerocopyTracker) IsDone(id uint32) bool {
	i := sort.Search(len(t.done), func(i int) bool { return t.done[i].Hi >= id })
	return i < len(t.done) && t.done[i].Lo <= id
}

// BindTXConfig is the request of a bind-tx (NETDEV_CMD_BIND_TX).
type BindTXConfig struct {
	// Ifindex is the interface (NETDEV_A_DMABUF_IFINDEX); 0 means the
	// backend's interface.
	Ifindex int
	// Size is the dmabuf size for backends that allocate it (the
	// emulation carves it out of its UMEM); 0 means the backend's
	// default.
	Size uint64
	// DmabufFD is a caller-supplied dmabuf (kernel backend), a
	// descriptor above 0; 0 (the zero value, so that a zero config works)
	// and -1 let the backend make one where it can. fd 0 is stdin in any
	// process that has not closed it; a dmabuf that landed there must be
	// moved first (fcntl F_DUPFD_CLOEXEC), as the backend dups it anyway.
	DmabufFD int
}

// TXBinding is a dmabuf bound for transmission. The application writes
// payload into it (as it would fill GPU memory) and sends from it by offset.
// Closing it unbinds; data already queued is still sent.
type TXBinding interface {
	// ID is the dmabuf id to put in SCM_DEVMEM_DMABUF.
	ID() uint32
	// Size is the dmabuf's size in bytes.
	Size() uint64
	// WriteAt fills dmabuf bytes at off from p (for GPU memory: a copy
	// to the device). It implements io.WriterAt. Bytes of a send must not
	// change until its completion arrives.
	WriteAt(p []byte, off int64) (int, error)
	// ReadAt copies dmabuf bytes at off into p. It implements
	// io.ReaderAt.
	ReadAt(p []byte, off int64) (int, error)
	// Close unbinds.
	Close() error
}

// Sender is the devmem TX side of a TCP socket. Backends offer it on their
// connections; find it by type assertion.
type Sender interface {
	// SetZeroCopy sets SO_ZEROCOPY, without which MSG_ZEROCOPY is
	// ignored and a devmem send fails with EINVAL.
	SetZeroCopy(on bool) error
	// SendMsg is sendmsg(2): iov holds dmabuf offsets and lengths, oob
	// the SCM_DEVMEM_DMABUF message (AppendDmabufTxCmsg), flags must
	// include MSG_ZEROCOPY. It returns the bytes queued. Errors are the
	// kernel's: EINVAL for a bad control message, an unknown dmabuf id
	// or a missing MSG_ZEROCOPY / SO_ZEROCOPY; ENODEV for a dmabuf bound
	// to another device; EFAULT for an offset or length outside the
	// dmabuf. A failed call sends nothing and takes no send number.
	SendMsg(iov []Iovec, oob []byte, flags int) (int, error)
	// RecvErrQueue is recvmsg(MSG_ERRQUEUE): it takes one completion
	// notification off the error queue and writes it into oob as the
	// socket's family has it: IP_RECVERR on an IPv4 socket
	// (PutZerocopyCmsg), IPV6_RECVERR on an IPv6 one, v4-mapped
	// included (PutZerocopyCmsg6). CmsgSpaceZerocopy6 bytes hold either.
	// Like the kernel it never
	// blocks: an empty queue is EAGAIN. recvflags has MSG_ERRQUEUE and,
	// when oob was too small, MSG_CTRUNC.
	RecvErrQueue(oob []byte, flags int) (oobn, recvflags int, err error)
	// PollErrQueue waits up to timeout (negative: no limit) for the
	// error queue to be non-empty, as poll(2) for POLLERR does.
	PollErrQueue(timeout time.Duration) (bool, error)
}

// TXConn is an outgoing TCP connection that can send from a TX dmabuf.
type TXConn interface {
	// Conn: Read takes ordinary bytes the peer sent; Write sends plain
	// bytes in the stream between the dmabuf sends (both backends do); the
	// write deadline also bounds blocking SendMsg calls (expiry fails with
	// os.ErrDeadlineExceeded); Close still delivers the queued data.
	net.Conn
	Sender
	// CloseWrite shuts the sending side down (FIN after the queued data).
	CloseWrite() error
}

// TXProvider is the optional TX side of a Provider: bind a TX dmabuf and
// open connections that send from it. Find it by type assertion.
type TXProvider interface {
	// BindTX binds a dmabuf for transmission (NETDEV_CMD_BIND_TX).
	BindTX(cfg BindTXConfig) (TXBinding, error)
	// Dial opens a TCP connection to addr.
	Dial(ctx context.Context, addr netip.AddrPort) (TXConn, error)
}

// SendDmabuf is the typed convenience over Sender.SendMsg: it sends the
// ranges iov of TX dmabuf dmabufID with MSG_ZEROCOPY (plus flags).
func SendDmabuf(s Sender, dmabufID uint32, iov []Iovec, flags int) (int, error) {
	var buf [CmsgSpaceDmabufTx]byte
	return s.SendMsg(iov, AppendDmabufTxCmsg(buf[:0], dmabufID), flags|MSG_ZEROCOPY)
}

// RecvCompletions takes every notification queued on s without waiting and
// appends its ranges to dst. An empty queue is not an error.
func RecvCompletions(s Sender, dst []ZerocopyRange) ([]ZerocopyRange, error) {
	var oob [CmsgSpaceZerocopy6]byte
	for {
		n, _, err := s.RecvErrQueue(oob[:], 0)
		if errors.Is(err, syscall.EAGAIN) {
			return dst, nil
		}
		if err != nil {
			return dst, err
		}
		if dst, err = AppendZerocopyRanges(dst, oob[:n]); err != nil {
			return dst, err
		}
	}
}

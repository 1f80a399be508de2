// Package devmemerr is the one table of the errors the kernel's devmem code
// returns: for each case the operation, the errno, the extended-ack message
// (when the kernel sets one), when it happens and what a person can do about
// it.
//
// Both backends use it. The kernel backend (package compat) classifies the
// kernel's answers with Lookup; the emulation (package stack) returns the
// same cases with Case.Err, so that an application sees the same errno and
// the same text on either backend, and tests assert both against one table
// with Match.
//
// # Order
//
// Cases of one operation are listed in the order the kernel checks them
// (net/core/netdev-genl.c netdev_nl_bind_rx_doit, net/core/devmem.c,
// net/core/netdev_rx_queue.c __net_mp_open_rxq, net/core/sock.c
// sock_devmem_dontneed and __sock_cmsg_send, net/ipv4/tcp.c
// tcp_recvmsg_dmabuf and tcp_sendmsg_locked, Linux 6.18).
// Where two cases share an errno and carry no message, Lookup returns the
// first, the one the kernel reaches first.
//
// The package depends only on golang.org/x/sys/unix and devmemapi, so the
// emulation can import it without the netlink client.
package devmemerr

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
)

// Op names an operation: one of the devmem uAPI's below, or another netlink
// request of the client ("dev-get", "rings-get").
type Op string

// The operations whose errors the table lists.
const (
	// OpBindRX is NETDEV_CMD_BIND_RX.
	OpBindRX Op = "bind-rx"
	// OpBindTX is NETDEV_CMD_BIND_TX.
	OpBindTX Op = "bind-tx"
	// OpDontNeed is setsockopt(SOL_SOCKET, SO_DEVMEM_DONTNEED).
	OpDontNeed Op = "dontneed"
	// OpRecvMsg is recvmsg on a socket receiving devmem data.
	OpRecvMsg Op = "recvmsg"
	// OpSendMsg is sendmsg with SCM_DEVMEM_DMABUF (devmem TX).
	OpSendMsg Op = "sendmsg"
)

// Case is one error the kernel's devmem code defines.
type Case struct {
	// Name identifies the case: "<op>/<what>".
	Name string
	// Op is the operation that fails.
	Op Op
	// Errno is the error number the kernel returns.
	Errno unix.Errno
	// Message is the extended-ack text the kernel sets, empty when it sets
	// none. It may hold fmt verbs (autorelease mismatch, DMA device
	// mismatch); Case.Err fills them.
	Message string
	// When says what condition makes the kernel fail this way.
	When string
	// Hint says what a person can do about it.
	Hint string
	// Series marks cases of the autorelease series (not merged upstream).
	Series bool
}

// Error is a devmem operation's failure with the kernel's errno and
// extended-ack message. errors.Is(err, unix.EINVAL) matches its errno.
type Error struct {
	// Op is the operation that failed.
	Op Op
	// Errno is the kernel's error number.
	Errno unix.Errno
	// Message is the kernel's extended-ack message, or empty.
	Message string
}

// Error formats the failure as "op: message: errno text" (or without the
// message when there is none).
func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("%s: %v", e.Op, e.Errno)
	}
	return fmt.Sprintf("%s: %s: %v", e.Op, e.Message, e.Errno)
}

// Unwrap returns the errno, so errors.Is matches it.
func (e *Error) Unwrap() error { return e.Errno }

// Err returns the case as an *Error; args fill the verbs in Message (the
// kernel's printf verbs: %d and %u).
func (c Case) Err(args ...any) error {
	msg := c.Message
	if len(args) > 0 {
		msg = fmt.Sprintf(strings.ReplaceAll(msg, "%u", "%d"), args...)
	}
	return &Error{Op: c.Op, Errno: c.Errno, Message: msg}
}

// matches reports whether message is the case's message, with a fmt verb in
// Message matching any text.
func (c Case) matches(message string) bool {
	i := strings.IndexByte(c.Message, '%')
	if i < 0 {
		return c.Message == message
	}
	return len(message) > i && message[:i] == c.Message[:i]
}

// Match reports whether err is this case: an *Error in its chain with the
// case's operation, errno and message.
func Match(err error, c Case) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	return e.Op == c.Op && e.Errno == c.Errno && c.matches(e.Message)
}

// Lookup finds the case of op that the kernel's answer (errno and
// extended-ack message) is. A case with the same message wins; else the
// first case of op with that errno and no message.
func Lookup(op Op, errno unix.Errno, message string) (Case, bool) {
	if message != "" {
		for _, c := range Cases {
			if c.Op == op && c.Errno == errno && c.Message != "" && c.matches(message) {
				return c, true
			}
		}
	}
	for _, c := range Cases {
		if c.Op == op && c.Errno == errno && c.Message == "" {
			return c, true
		}
	}
	return Case{}, false
}

// Classify finds the case err is: an *Error in its chain, looked up by op,
// errno and message.
func Classify(err error) (Case, bool) {
	var e *Error
	if !errors.As(err, &e) {
		return Case{}, false
	}
	return Lookup(e.Op, e.Errno, e.Message)
}

// ErrnoName names an errno as the kernel's headers spell the devmem code's
// errors: EOPNOTSUPP (not its alias ENOTSUP) and ETOOSMALL (which libc
// does not know).
func ErrnoName(e unix.Errno) string {
	switch e {
	case unix.EOPNOTSUPP:
		return "EOPNOTSUPP"
	case devmemapi.ETOOSMALL:
		return "ETOOSMALL"
	}
	return unix.ErrnoName(e)
}

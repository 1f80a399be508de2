package devmemapi

import (
	"errors"
	"net"
	"net/netip"
)

// Sentinel errors shared by both backends.
var (
	// ErrNotSupported reports a feature the backend or interface lacks.
	ErrNotSupported = errors.New("not supported")
	// ErrClosed reports use of a closed binding, listener or connection.
	ErrClosed = net.ErrClosed
)

// Binding is a dmabuf bound to RX queues (NETDEV_CMD_BIND_RX). Closing it
// unbinds, as closing the netlink socket does in the kernel.
type Binding interface {
	// ID is the dmabuf id that fragments report in DmabufCmsg.DmabufID.
	ID() uint32
	// Size is the dmabuf's size in bytes.
	Size() uint64
	// ReadAt copies dmabuf bytes at off into p, as an application reads a
	// mapped dmabuf (for GPU memory: a copy to the host). It implements
	// io.ReaderAt.
	ReadAt(p []byte, off int64) (int, error)
	// Close unbinds. In autorelease-off mode it frees every token still
	// outstanding on the binding.
	Close() error
}

// BindRXConfig is the request of a bind-rx: which interface and queues, and
// the token release mode.
type BindRXConfig struct {
	// Ifindex is the interface's index (NETDEV_A_DMABUF_IFINDEX).
	Ifindex int
	// Queues are the RX queue ids to bind (NETDEV_A_DMABUF_QUEUES).
	Queues []uint32
	// Size is the dmabuf size for backends that allocate it (the
	// emulation's UMEM); 0 means the backend's default.
	Size uint64
	// DmabufFD is a caller-supplied dmabuf (kernel backend), a
	// descriptor above 0; 0 (the zero value, so that a zero config works)
	// and -1 let the backend make one where it can. fd 0 is stdin in any
	// process that has not closed it; a dmabuf that landed there must be
	// moved first (fcntl F_DUPFD_CLOEXEC), as the backend dups it anyway.
	DmabufFD int
	// Autorelease selects the token release mode (the autorelease series'
	// NETDEV_A_DMABUF_AUTORELEASE): nil leaves the backend's default, the
	// kernel's own on the kernel backend (autorelease on upstream) and the
	// same host kernel's on the emulation.
	Autorelease *bool
}

// Listener accepts devmem-capable TCP connections.
type Listener interface {
	// Accept waits for and returns the next connection.
	Accept() (Conn, error)
	// Close stops listening; Accept then fails with ErrClosed.
	Close() error
	// Addr is the listening address.
	Addr() net.Addr
}

// Conn is a TCP connection that can receive devmem fragments. It is a
// net.Conn, as a kernel devmem socket is an ordinary TCP socket: Read
// takes ordinary data (dmabuf data fails with EFAULT, as a plain recv on
// the kernel's socket does; end of stream is io.EOF), Write sends plain
// bytes, and the deadlines bound them and RecvMsg. Close, in
// autorelease-on mode, frees every token the connection still holds.
type Conn interface {
	net.Conn
	// RecvMsg is shaped like unix.Recvmsg. With MSG_SOCK_DEVMEM in flags it
	// fills oob with SCM_DEVMEM_DMABUF messages (payload in the dmabuf, n
	// counts their bytes), each packet's possibly preceded by an
	// SCM_DEVMEM_LINEAR message for its part copied into p; ordinary data
	// comes copied into p with no control message, and never in the same
	// call as devmem data. Without the flag, dmabuf data fails with EFAULT.
	// MSG_PEEK, MSG_TRUNC, MSG_WAITALL and MSG_DONTWAIT act as on a kernel
	// TCP socket. At end of stream it returns n = 0 and a nil error.
	RecvMsg(p, oob []byte, flags int) (n, oobn int, err error)
	// DontNeed returns tokens (SO_DEVMEM_DONTNEED) and reports how many
	// fragments it freed.
	DontNeed(tokens []DmabufToken) (int, error)
}

// Provider is one backend: it binds dmabufs and opens listeners whose
// connections receive into them.
type Provider interface {
	// Name names the backend ("kernel" or "emulated").
	Name() string
	// BindRX binds a dmabuf to RX queues.
	BindRX(cfg BindRXConfig) (Binding, error)
	// Listen listens for TCP on addr.
	Listen(addr netip.AddrPort) (Listener, error)
	// Close releases the provider and everything it still holds.
	Close() error
}

// RecvFrags is the typed convenience over Conn.RecvMsg: it receives with
// MSG_SOCK_DEVMEM (plus flags) and appends the parsed fragments to
// frags[:0]. oob is the control buffer to use (len/CmsgSpaceDmabuf
// fragments at most); p receives linear data.
func RecvFrags(c Conn, p, oob []byte, frags []Frag, flags int) (n int, out []Frag, err error) {
	n, oobn, err := c.RecvMsg(p, oob, flags|MSG_SOCK_DEVMEM)
	if err != nil {
		return n, frags[:0], err
	}
	out, err = AppendFrags(frags[:0], oob[:oobn])
	return n, out, err
}

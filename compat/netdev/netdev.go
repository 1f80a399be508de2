// Package netdev is a client of the kernel's "netdev" generic netlink
// family: device and queue queries, and the devmem bind-rx and bind-tx
// requests.
//
// # Bindings live as long as the connection
//
// The kernel ties every dmabuf binding to the netlink socket that made it:
// closing the socket (Conn.Close, or the process exiting) unbinds. A caller
// that keeps bindings apart therefore uses one Conn per binding.
//
// # Errors
//
// A request the kernel refuses fails with a *devmemerr.Error holding the
// errno and the extended-ack message (Dial turns extended acks on), so
// errors.Is(err, unix.EOPNOTSUPP) works and the kernel's text is in the
// error's message. devmemerr.Classify names the case.
//
// # Namespaces
//
// A Conn talks to the network namespace its socket was made in: by default
// the calling thread's (netlink.Config.NetNS picks another).
//
// Tests use package netdevtest, a fake kernel that serves this family over
// a genetlink.Conn without privileges.
package netdev

import (
	"errors"
	"fmt"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"

	"github.com/xdevmem/xdevmem/compat/internal/genl"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
)

// Family is a resolved generic netlink family with its operations.
type Family = genl.Family

// Conn is a connection to the netdev family. Its methods may be called
// concurrently; each request holds the connection until its reply.
type Conn struct {
	c *genetlink.Conn
	f Family
}

// Dial opens a generic netlink socket (cfg may be nil), turns on extended
// acknowledgements and resolves the netdev family. A kernel without the
// family fails with an error matching unix.ENOENT.
func Dial(cfg *netlink.Config) (*Conn, error) {
	c, f, err := genl.Dial(cfg, FamilyName)
	if err != nil {
		return nil, fmt.Errorf("netdev %w", err)
	}
	return &Conn{c: c, f: f}, nil
}

// NewConn resolves the netdev family over c and takes c over (a fake's
// connection from package netdevtest, or one the caller configured). On
// error it closes c.
func NewConn(c *genetlink.Conn) (*Conn, error) {
	f, err := genl.Adopt(c, FamilyName)
	if err != nil {
		return nil, fmt.Errorf("netdev: %w", err)
	}
	return &Conn{c: c, f: f}, nil
}

// Family is the resolved netdev family: id, version and the commands this
// kernel has (CmdBindRX appears from Linux 6.12, CmdBindTX from 6.16).
func (c *Conn) Family() Family { return c.f }

// Close closes the socket; the kernel unbinds every binding made through
// it.
func (c *Conn) Close() error { return c.c.Close() }

func (c *Conn) execute(op devmemerr.Op, cmd uint8, flags netlink.HeaderFlags, ae *netlink.AttributeEncoder) ([]genetlink.Message, error) {
	b, err := ae.Encode()
	if err != nil {
		return nil, fmt.Errorf("%s: encode: %w", op, err)
	}
	msgs, err := c.c.Execute(genetlink.Message{
		Header: genetlink.Header{Command: cmd, Version: FamilyVersion},
		Data:   b,
	}, c.f.ID, flags)
	if err != nil {
		return nil, genl.Err(op, err)
	}
	return msgs, nil
}

func (c *Conn) executeOne(op devmemerr.Op, cmd uint8, ae *netlink.AttributeEncoder) ([]byte, error) {
	msgs, err := c.execute(op, cmd, netlink.Request, ae)
	if err != nil {
		return nil, err
	}
	if len(msgs) != 1 {
		return nil, fmt.Errorf("%s: %d replies, want 1", op, len(msgs))
	}
	return msgs[0].Data, nil
}

// Dev is a device as NETDEV_CMD_DEV_GET reports it.
type Dev struct {
	// Ifindex is the device's index.
	Ifindex int `json:"ifindex"`
	// XDPFeatures are the XDP features the driver implements.
	XDPFeatures XDPAct `json:"xdp_features"`
	// XDPZCMaxSegs is the most buffers of an AF_XDP zero-copy frame.
	XDPZCMaxSegs uint32 `json:"xdp_zc_max_segs"`
	// XDPRXMetadataFeatures are the XDP RX metadata kfuncs (bits of
	// enum netdev_xdp_rx_metadata).
	XDPRXMetadataFeatures uint64 `json:"xdp_rx_metadata_features"`
	// XSKFeatures are the AF_XDP features (bits of enum netdev_xsk_flags).
	XSKFeatures uint64 `json:"xsk_features"`
}

// DevGet asks for one device (NETDEV_CMD_DEV_GET do). No such device fails
// with ENODEV.
func (c *Conn) DevGet(ifindex int) (*Dev, error) {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(AttrDevIfindex, uint32(ifindex))
	b, err := c.executeOne("dev-get", CmdDevGet, ae)
	if err != nil {
		return nil, err
	}
	return parseDev(b)
}

func parseDev(b []byte) (*Dev, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, fmt.Errorf("dev-get: %w", err)
	}
	var d Dev
	for ad.Next() {
		switch ad.Type() {
		case AttrDevIfindex:
			d.Ifindex = int(ad.Uint32())
		case AttrDevXDPFeatures:
			d.XDPFeatures = XDPAct(ad.Uint64())
		case AttrDevXDPZCMaxSegs:
			d.XDPZCMaxSegs = ad.Uint32()
		case AttrDevXDPRXMetadataFeatures:
			d.XDPRXMetadataFeatures = ad.Uint64()
		case AttrDevXSKFeatures:
			d.XSKFeatures = ad.Uint64()
		}
	}
	if err := ad.Err(); err != nil {
		return nil, fmt.Errorf("dev-get: %w", err)
	}
	return &d, nil
}

// Queue is a queue as NETDEV_CMD_QUEUE_GET reports it.
type Queue struct {
	// ID is the queue's index within its type.
	ID uint32 `json:"id"`
	// Ifindex is the device's index.
	Ifindex int `json:"ifindex"`
	// Type is rx or tx.
	Type QueueType `json:"type"`
	// NapiID is the NAPI instance serving the queue, 0 if none.
	NapiID uint32 `json:"napi_id,omitempty"`
	// Dmabuf is the id of the dmabuf binding on the queue, 0 if none.
	Dmabuf uint32 `json:"dmabuf,omitempty"`
	// IOUring is set when io_uring zero-copy RX uses the queue.
	IOUring bool `json:"io_uring,omitempty"`
	// XSK is set when an AF_XDP socket uses the queue.
	XSK bool `json:"xsk,omitempty"`
}

// QueueGet lists the queues of one device (NETDEV_CMD_QUEUE_GET dump
// filtered by ifindex). The kernel lists the queues of running (up)
// devices only.
func (c *Conn) QueueGet(ifindex int) ([]Queue, error) {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(AttrQueueIfindex, uint32(ifindex))
	msgs, err := c.execute("queue-get", CmdQueueGet, netlink.Request|netlink.Dump, ae)
	if err != nil {
		return nil, err
	}
	qs := make([]Queue, 0, len(msgs))
	for _, m := range msgs {
		q, err := parseQueue(m.Data)
		if err != nil {
			return nil, err
		}
		qs = append(qs, q)
	}
	return qs, nil
}

func parseQueue(b []byte) (Queue, error) {
	var q Queue
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return q, fmt.Errorf("queue-get: %w", err)
	}
	for ad.Next() {
		switch ad.Type() {
		case AttrQueueID:
			q.ID = ad.Uint32()
		case AttrQueueIfindex:
			q.Ifindex = int(ad.Uint32())
		case AttrQueueType:
			q.Type = QueueType(ad.Uint32())
		case AttrQueueNapiID:
			q.NapiID = ad.Uint32()
		case AttrQueueDmabuf:
			q.Dmabuf = ad.Uint32()
		case AttrQueueIOUring:
			q.IOUring = true
		case AttrQueueXSK:
			q.XSK = true
		}
	}
	if err := ad.Err(); err != nil {
		return q, fmt.Errorf("queue-get: %w", err)
	}
	return q, nil
}

// QueueRef names one queue of a bind-rx request.
type QueueRef struct {
	// ID is the queue index.
	ID uint32
	// Type must be QueueTypeRX for the kernel to accept it.
	Type QueueType
}

// RXQueues returns refs to the RX queues ids.
func RXQueues(ids ...uint32) []QueueRef {
	qs := make([]QueueRef, len(ids))
	for i, id := range ids {
		qs[i] = QueueRef{ID: id, Type: QueueTypeRX}
	}
	return qs
}

// BindRXRequest is a NETDEV_CMD_BIND_RX request. Fields at their zero or
// negative value are left out of the message, which lets tests send what
// the kernel must refuse.
type BindRXRequest struct {
	// Ifindex is the device; 0 leaves NETDEV_A_DMABUF_IFINDEX out.
	Ifindex int
	// FD is the dmabuf; negative leaves NETDEV_A_DMABUF_FD out.
	FD int
	// Queues are the queues to bind; empty leaves NETDEV_A_DMABUF_QUEUES
	// out.
	Queues []QueueRef
	// Autorelease, when set, sends NETDEV_A_DMABUF_AUTORELEASE (the
	// autorelease series; kernels without it refuse with EINVAL).
	Autorelease *bool
}

// BindRX binds a dmabuf to RX queues and returns the binding's id, the
// dmabuf_id that fragments carry. The binding lasts until c is closed.
func (c *Conn) BindRX(req BindRXRequest) (uint32, error) {
	ae := netlink.NewAttributeEncoder()
	if req.Ifindex != 0 {
		ae.Uint32(AttrDmabufIfindex, uint32(req.Ifindex))
	}
	if req.FD >= 0 {
		ae.Uint32(AttrDmabufFD, uint32(req.FD))
	}
	for _, q := range req.Queues {
		ae.Nested(AttrDmabufQueues, func(ae *netlink.AttributeEncoder) error {
			ae.Uint32(AttrQueueID, q.ID)
			ae.Uint32(AttrQueueType, uint32(q.Type))
			return nil
		})
	}
	if req.Autorelease != nil {
		var v uint8
		if *req.Autorelease {
			v = 1
		}
		ae.Uint8(AttrDmabufAutorelease, v)
	}
	b, err := c.executeOne(devmemerr.OpBindRX, CmdBindRX, ae)
	if err != nil {
		return 0, err
	}
	return parseDmabufID(devmemerr.OpBindRX, b)
}

// BindTX binds a dmabuf for devmem TX on a device and returns the
// binding's id, the dmabuf id a devmem sendmsg names. The binding lasts
// until c is closed. A negative fd leaves NETDEV_A_DMABUF_FD out.
func (c *Conn) BindTX(ifindex, fd int) (uint32, error) {
	ae := netlink.NewAttributeEncoder()
	if ifindex != 0 {
		ae.Uint32(AttrDmabufIfindex, uint32(ifindex))
	}
	if fd >= 0 {
		ae.Uint32(AttrDmabufFD, uint32(fd))
	}
	b, err := c.executeOne(devmemerr.OpBindTX, CmdBindTX, ae)
	if err != nil {
		return 0, err
	}
	return parseDmabufID(devmemerr.OpBindTX, b)
}

func parseDmabufID(op devmemerr.Op, b []byte) (uint32, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", op, err)
	}
	var id uint32
	for ad.Next() {
		if ad.Type() == AttrDmabufID {
			id = ad.Uint32()
		}
	}
	if err := ad.Err(); err != nil {
		return 0, fmt.Errorf("%s: %w", op, err)
	}
	if id == 0 {
		return 0, fmt.Errorf("%s: %w", op, errNoID)
	}
	return id, nil
}

var errNoID = errors.New("reply without dmabuf id")

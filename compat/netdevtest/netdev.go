package netdevtest

import (
	"fmt"
	"slices"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nlenc"
	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat/netdev"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
)

// attrs is a decoded attribute set: the last value of each single
// attribute, and every value of repeated ones.
type attrs map[uint16][][]byte

func decode(b []byte) (attrs, bool) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, false
	}
	a := make(attrs)
	for ad.Next() {
		a[ad.Type()] = append(a[ad.Type()], ad.Bytes())
	}
	return a, ad.Err() == nil
}

func (a attrs) has(t uint16) bool { return len(a[t]) > 0 }

func (a attrs) u32(t uint16) uint32 {
	v := a[t]
	if len(v) == 0 || len(v[len(v)-1]) < 4 {
		return 0
	}
	return nlenc.Uint32(v[len(v)-1][:4])
}

func (a attrs) u16(t uint16) uint16 {
	v := a[t]
	if len(v) == 0 || len(v[len(v)-1]) < 2 {
		return 0
	}
	return nlenc.Uint16(v[len(v)-1][:2])
}

// unknownAttr is the policy check genetlink runs before a doit: an
// attribute above the policy's maximum fails EINVAL with this text.
var unknownAttr = &kerr{unix.EINVAL, "Unknown attribute type"}

func (k *Kernel) netdev(s *socket, gm genetlink.Message, flags netlink.HeaderFlags) ([][]byte, bool, *kerr) {
	a, ok := decode(gm.Data)
	if !ok {
		return nil, false, &kerr{unix.EINVAL, ""}
	}
	switch gm.Header.Command {
	case netdev.CmdDevGet:
		r, e := k.devGet(a)
		return r, false, e
	case netdev.CmdQueueGet:
		if flags&netlink.Dump != netlink.Dump {
			return nil, false, &kerr{unix.EOPNOTSUPP, ""}
		}
		r, e := k.queueGet(a)
		return r, true, e
	case netdev.CmdBindRX:
		if k.NoBindRX {
			return nil, false, &kerr{unix.EOPNOTSUPP, ""}
		}
		r, e := k.bindRX(s, a)
		return r, false, e
	case netdev.CmdBindTX:
		if k.NoBindTX || k.NoBindRX {
			return nil, false, &kerr{unix.EOPNOTSUPP, ""}
		}
		r, e := k.bindTX(s, a)
		return r, false, e
	}
	return nil, false, &kerr{unix.EOPNOTSUPP, ""}
}

func (k *Kernel) devGet(a attrs) ([][]byte, *kerr) {
	if !a.has(netdev.AttrDevIfindex) {
		return nil, &kerr{unix.EINVAL, ""}
	}
	d := k.devs[int(a.u32(netdev.AttrDevIfindex))]
	if d == nil {
		return nil, &kerr{unix.ENODEV, ""}
	}
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(netdev.AttrDevIfindex, uint32(d.Ifindex))
	ae.Uint64(netdev.AttrDevXDPFeatures, uint64(d.XDPFeatures))
	ae.Uint32(netdev.AttrDevXDPZCMaxSegs, 1)
	ae.Uint64(netdev.AttrDevXDPRXMetadataFeatures, 0)
	ae.Uint64(netdev.AttrDevXSKFeatures, 0)
	return [][]byte{reply(netdev.CmdDevGet, netdev.FamilyVersion, ae)}, nil
}

func (k *Kernel) queueGet(a attrs) ([][]byte, *kerr) {
	var devs []*Device
	if a.has(netdev.AttrQueueIfindex) {
		d := k.devs[int(a.u32(netdev.AttrQueueIfindex))]
		if d == nil {
			return nil, &kerr{unix.ENODEV, ""}
		}
		devs = append(devs, d)
	} else {
		for _, d := range k.devs {
			devs = append(devs, d)
		}
		slices.SortFunc(devs, func(x, y *Device) int { return x.Ifindex - y.Ifindex })
	}
	var out [][]byte
	for _, d := range devs {
		if d.Down {
			continue
		}
		for i := 0; i < d.RXQueues; i++ {
			ae := netlink.NewAttributeEncoder()
			ae.Uint32(netdev.AttrQueueID, uint32(i))
			ae.Uint32(netdev.AttrQueueType, uint32(netdev.QueueTypeRX))
			ae.Uint32(netdev.AttrQueueIfindex, uint32(d.Ifindex))
			ae.Uint32(netdev.AttrQueueNapiID, uint32(8192+i))
			if id := k.boundTo(d.Ifindex, uint32(i)); id != 0 {
				ae.Uint32(netdev.AttrQueueDmabuf, id)
			}
			if slices.Contains(d.XSKQueues, uint32(i)) {
				ae.Nested(netdev.AttrQueueXSK, func(*netlink.AttributeEncoder) error { return nil })
			}
			out = append(out, reply(netdev.CmdQueueGet, netdev.FamilyVersion, ae))
		}
		for i := 0; i < d.TXQueues; i++ {
			ae := netlink.NewAttributeEncoder()
			ae.Uint32(netdev.AttrQueueID, uint32(i))
			ae.Uint32(netdev.AttrQueueType, uint32(netdev.QueueTypeTX))
			ae.Uint32(netdev.AttrQueueIfindex, uint32(d.Ifindex))
			out = append(out, reply(netdev.CmdQueueGet, netdev.FamilyVersion, ae))
		}
	}
	return out, nil
}

func (k *Kernel) boundTo(ifindex int, q uint32) uint32 {
	for _, b := range k.bindings {
		if !b.TX && b.Ifindex == ifindex && slices.Contains(b.Queues, q) {
			return b.ID
		}
	}
	return 0
}

// bindRX follows netdev_nl_bind_rx_doit of Linux 6.18 check by check (of
// 6.12 to 6.17 with Kernel.Before618): the policy, the attributes, the
// device and its queue-management ops, the queue list
// (netdev_nl_read_rxq_bitmap), the queues' DMA device, the dmabuf, the
// autorelease mode (series), then each queue in ascending order
// (__net_mp_open_rxq).
func (k *Kernel) bindRX(s *socket, a attrs) ([][]byte, *kerr) {
	if k.Unprivileged {
		return nil, fail(devmemerr.BindRXNotAdmin)
	}
	maxAttr := netdev.AttrDmabufFD
	if k.AutoreleaseSeries {
		maxAttr = netdev.AttrDmabufAutorelease
	}
	for t := range a {
		if t > maxAttr || t == netdev.AttrDmabufID {
			return nil, unknownAttr
		}
	}
	if !a.has(netdev.AttrDmabufIfindex) || !a.has(netdev.AttrDmabufFD) || !a.has(netdev.AttrDmabufQueues) {
		return nil, fail(devmemerr.BindRXMissingAttr)
	}
	d := k.devs[int(a.u32(netdev.AttrDmabufIfindex))]
	if d == nil {
		return nil, fail(devmemerr.BindRXNoDevice)
	}
	if !d.QueueMgmt {
		return nil, fail(devmemerr.BindRXNoQueueOps)
	}
	// The queue list becomes a bitmap: a queue named twice is bound once.
	var queues []uint32
	for _, nest := range a[netdev.AttrDmabufQueues] {
		q, ok := decode(nest)
		if !ok {
			return nil, &kerr{unix.EINVAL, ""}
		}
		if !q.has(netdev.AttrQueueID) || !q.has(netdev.AttrQueueType) {
			return nil, fail(devmemerr.BindRXQueueAttr)
		}
		if netdev.QueueType(q.u32(netdev.AttrQueueType)) != netdev.QueueTypeRX {
			return nil, fail(devmemerr.BindRXQueueType)
		}
		id := q.u32(netdev.AttrQueueID)
		if !k.Before618 && int(id) >= d.RXQueues {
			return nil, fail(devmemerr.BindRXQueueRange)
		}
		if !slices.Contains(queues, id) {
			queues = append(queues, id)
		}
	}
	slices.Sort(queues)
	if !k.Before618 {
		if e := dmaDevice(d, queues); e != nil {
			return nil, e
		}
	}
	fd := int(a.u32(netdev.AttrDmabufFD))
	if e := k.dmabufGet(fd); e != nil {
		return nil, e
	}
	var auto *bool
	if k.AutoreleaseSeries {
		// The attribute is optional and defaults to 0; the mode is
		// system-wide while RX bindings exist.
		on := false
		if v := a[netdev.AttrDmabufAutorelease]; len(v) > 0 && len(v[0]) > 0 {
			on = v[0][0] != 0
		}
		auto = &on
		for _, b := range k.bindings {
			if !b.TX && b.Autorelease != nil && *b.Autorelease != on {
				c := devmemerr.BindRXAutoreleaseMismatch
				return nil, &kerr{c.Errno, fmt.Sprintf(c.Message, boolInt(*b.Autorelease))}
			}
		}
	}
	for _, id := range queues {
		if e := k.openRXQueue(d, id); e != nil {
			return nil, e
		}
	}
	k.nextID++
	b := &Binding{ID: k.nextID, Ifindex: d.Ifindex, FD: fd, Queues: queues, Autorelease: auto, sock: s}
	k.bindings[b.ID] = b
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(netdev.AttrDmabufID, b.ID)
	return [][]byte{reply(netdev.CmdBindRX, netdev.FamilyVersion, ae)}, nil
}

// dmaDevice follows netdev_nl_get_dma_dev and the first check of
// net_devmem_bind_dmabuf: every queue must have the same DMA device, and
// there must be one.
func dmaDevice(d *Device, queues []uint32) *kerr {
	if d.NoDMA {
		c := devmemerr.BindRXNoDMA
		return &kerr{c.Errno, c.Message}
	}
	prev, prevDev := uint32(0), -1
	for _, q := range queues {
		dev := 0
		if int(q) < len(d.QueueDMADevs) {
			dev = d.QueueDMADevs[q]
		}
		if prevDev >= 0 && dev != prevDev {
			c := devmemerr.BindRXDMAMismatch
			return &kerr{c.Errno, fmt.Sprintf("DMA device mismatch between queue %d and %d (multi-PF device?)", q, prev)}
		}
		prev, prevDev = q, dev
	}
	return nil
}

// openRXQueue follows __net_mp_open_rxq for one queue.
func (k *Kernel) openRXQueue(d *Device, id uint32) *kerr {
	switch {
	case int(id) >= d.RXQueues:
		return fail(devmemerr.BindRXQueueRangeMP)
	case d.TCPDataSplit != 2:
		return fail(devmemerr.BindRXHDSDisabled)
	case d.HDSThresh != 0:
		return fail(devmemerr.BindRXHDSThresh)
	case d.XDPAttached:
		return fail(devmemerr.BindRXXDPAttached)
	case k.boundTo(d.Ifindex, id) != 0:
		return fail(devmemerr.BindRXQueueBound)
	case slices.Contains(d.XSKQueues, id):
		return fail(devmemerr.BindRXAFXDP)
	case d.NoQueueRestart:
		return fail(devmemerr.BindRXNoQueueRestart)
	case d.IgnoresProvider:
		return fail(devmemerr.BindRXNotPickedUp)
	}
	return nil
}

// bindTX follows netdev_nl_bind_tx_doit. It is not an admin operation, so
// Kernel.Unprivileged does not refuse it.
func (k *Kernel) bindTX(s *socket, a attrs) ([][]byte, *kerr) {
	for t := range a {
		if t > netdev.AttrDmabufFD || t == netdev.AttrDmabufQueues {
			return nil, unknownAttr
		}
	}
	if !a.has(netdev.AttrDmabufIfindex) || !a.has(netdev.AttrDmabufFD) {
		return nil, fail(devmemerr.BindTXMissingAttr)
	}
	d := k.devs[int(a.u32(netdev.AttrDmabufIfindex))]
	if d == nil {
		return nil, fail(devmemerr.BindTXNoDevice)
	}
	if !d.NetmemTX {
		return nil, fail(devmemerr.BindTXNoNetmemTX)
	}
	if d.NoDMA {
		return nil, fail(devmemerr.BindTXNoDMA)
	}
	fd := int(a.u32(netdev.AttrDmabufFD))
	if e := k.dmabufGet(fd); e != nil {
		return nil, e
	}
	k.nextID++
	b := &Binding{ID: k.nextID, TX: true, Ifindex: d.Ifindex, FD: fd, sock: s}
	k.bindings[b.ID] = b
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(netdev.AttrDmabufID, b.ID)
	return [][]byte{reply(netdev.CmdBindTX, netdev.FamilyVersion, ae)}, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

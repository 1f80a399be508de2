package netdev

import (
	"testing"

	"github.com/mdlayher/netlink"
)

func encodeQueue(q Queue) []byte {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(AttrQueueID, q.ID)
	ae.Uint32(AttrQueueIfindex, uint32(q.Ifindex))
	ae.Uint32(AttrQueueType, uint32(q.Type))
	ae.Uint32(AttrQueueNapiID, q.NapiID)
	ae.Uint32(AttrQueueDmabuf, q.Dmabuf)
	if q.IOUring {
		ae.Nested(AttrQueueIOUring, func(*netlink.AttributeEncoder) error { return nil })
	}
	if q.XSK {
		ae.Nested(AttrQueueXSK, func(*netlink.AttributeEncoder) error { return nil })
	}
	b, _ := ae.Encode()
	return b
}

// FuzzParseReplies: the reply parsers never panic, and a queue that
// parses survives an encode/parse round trip.
func FuzzParseReplies(f *testing.F) {
	f.Add(encodeQueue(Queue{ID: 3, Ifindex: 7, Type: QueueTypeRX, NapiID: 8195, Dmabuf: 2, XSK: true}))
	f.Add([]byte{8, 0, 4, 0, 1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		parseDev(b)
		parseDmabufID("fuzz", b)
		q, err := parseQueue(b)
		if err != nil {
			return
		}
		again, err := parseQueue(encodeQueue(q))
		if err != nil || again != q {
			t.Fatalf("round trip: %+v -> %+v, %v", q, again, err)
		}
	})
}

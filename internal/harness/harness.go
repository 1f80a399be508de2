// Package harness builds xdevmem's test world — two network namespaces
// joined by a veth pair, the emulated stack on one end, a kernel TCP peer on
// the other — and runs the devmem receive loop an application would. The
// demo, the bench command and the end-to-end tests share it.
package harness

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/internal/netns"
	"github.com/xdevmem/xdevmem/stack"
)

// Options configures a World.
type Options struct {
	// Prefix names the namespaces (default netns.DefaultPrefix).
	Prefix string
	// MTU of the veth pair (default 1500).
	MTU int
	// Stack is the stack configuration; Ifname and Addr are filled in.
	Stack stack.Config
	// NoBind leaves the RX queue unbound (payload arrives as plain bytes).
	NoBind bool
	// Autorelease selects the token mode of the binding (nil: default).
	Autorelease *bool
	// Port is the listening port (default 5201).
	Port uint16
	// Queues is the veth's RX/TX queue count (default 1); the stack runs a
	// socket on each.
	Queues int
	// BindQueues are the logical queues to bind (default: all of them).
	BindQueues []uint32
	// Shared configures the stack's address on its interface in the kernel
	// too, so the stack runs in shared-address mode (the default on real
	// hosts); without it the address is the stack's alone (dedicated).
	Shared bool
	// IPv6 gives both ends IPv6 addresses (a random fd00::/8 /64) instead
	// of IPv4 ones.
	IPv6 bool
}

// World is a running pair of namespaces with the stack listening.
type World struct {
	Pair     *netns.Pair
	Stack    *stack.Stack
	Binding  devmemapi.Binding
	Listener devmemapi.Listener
	Port     uint16
}

// IPv6Addrs returns a peer and a stack address for a veth pair over IPv6:
// ::1 and ::2 of a random /64 in fd00:211::/32 (unique local addresses).
func IPv6Addrs() (peer, emu netip.Prefix) {
	var r [2]byte
	rand.Read(r[:])
	net := [16]byte{0xfd, 0x00, 0x02, 0x11, r[0], r[1]}
	p, e := net, net
	p[15], e[15] = 1, 2
	return netip.PrefixFrom(netip.AddrFrom16(p), 64), netip.PrefixFrom(netip.AddrFrom16(e), 64)
}

// New builds a World. On failure it removes everything it made.
func New(opts Options) (_ *World, err error) {
	if opts.Port == 0 {
		opts.Port = 5201
	}
	po := netns.Options{Prefix: opts.Prefix, MTU: opts.MTU, RxQueues: opts.Queues, TxQueues: opts.Queues, SharedAddr: opts.Shared}
	if opts.IPv6 {
		po.PeerAddr, po.EmuAddr = IPv6Addrs()
	}
	p, err := netns.NewPair(po)
	if err != nil {
		return nil, err
	}
	w := &World{Pair: p, Port: opts.Port}
	defer func() {
		if err != nil {
			w.Close()
		}
	}()
	cfg := opts.Stack
	cfg.Ifname = p.EmuIf
	cfg.Addr = p.EmuAddr
	err = p.Emu.Do(func() error {
		st, err := stack.New(cfg)
		if err != nil {
			return err
		}
		w.Stack = st
		return nil
	})
	if err != nil {
		return nil, err
	}
	if !opts.NoBind {
		qs := opts.BindQueues
		if qs == nil {
			for q := 0; q < w.Stack.NIC().Channels(); q++ {
				qs = append(qs, uint32(q))
			}
		}
		if w.Binding, err = w.Stack.BindRX(devmemapi.BindRXConfig{Ifindex: p.EmuIndex, Queues: qs, Autorelease: opts.Autorelease}); err != nil {
			return nil, err
		}
	}
	if w.Listener, err = w.Stack.Listen(netip.AddrPortFrom(netip.Addr{}, opts.Port)); err != nil {
		return nil, err
	}
	return w, nil
}

// StackAddr is the stack's address and port.
func (w *World) StackAddr() string {
	return netip.AddrPortFrom(w.Pair.EmuAddr.Addr(), w.Port).String()
}

// DialPeer opens a kernel TCP connection from the peer namespace to the
// stack.
func (w *World) DialPeer() (net.Conn, error) {
	var c net.Conn
	err := w.Pair.Peer.Do(func() error {
		var err error
		d := net.Dialer{Timeout: 10 * time.Second}
		c, err = d.Dial("tcp", w.StackAddr())
		return err
	})
	return c, err
}

// Close closes the stack and removes the namespaces.
func (w *World) Close() error {
	var errs []error
	if w.Stack != nil {
		errs = append(errs, w.Stack.Close())
	}
	if w.Pair != nil {
		errs = append(errs, w.Pair.Close())
	}
	return errors.Join(errs...)
}

// Result summarizes one connection's devmem receive.
type Result struct {
	// Bytes is the total received; DmabufBytes, LinearBytes (with
	// SCM_DEVMEM_LINEAR) and PlainBytes (without devmem control messages)
	// by path.
	Bytes, DmabufBytes, LinearBytes, PlainBytes uint64
	// Frags counts dmabuf fragments; Linear counts SCM_DEVMEM_LINEAR
	// messages; Plain counts recvmsg calls that returned data without
	// devmem control messages.
	Frags, Linear, Plain uint64
	// Calls counts RecvMsg calls; Freed the tokens DontNeed freed.
	Calls, Freed uint64
	// Elapsed is the time from the first byte to the end of the stream.
	Elapsed time.Duration
}

// ReceiveOptions configures Receive.
type ReceiveOptions struct {
	// Sink gets every received byte range in stream order, read from the
	// dmabuf at the fragment offsets (or from p for linear data). It must
	// not keep the slice. nil discards.
	Sink func(b []byte) error
	// HoldTokens withholds returned tokens until the slice passes this
	// many, to exercise exhaustion; 0 returns them after every call.
	HoldTokens int
	// OnFrag, if set, is called for each parsed control message.
	OnFrag func(f devmemapi.Frag)
	// BufSize is the size of p (default 819200, as ncdevmem) and OOBFrags
	// the number of control messages room is made for (default 256).
	BufSize, OOBFrags int
}

// Receive reads conn to the end as a devmem application does: recvmsg with
// MSG_SOCK_DEVMEM, read each fragment from the dmabuf, return the tokens.
//
// On an error the Result still counts what arrived before it, Elapsed
// included.
func Receive(conn devmemapi.Conn, b devmemapi.Binding, opts ReceiveOptions) (r Result, err error) {
	if opts.BufSize == 0 {
		opts.BufSize = 819200
	}
	if opts.OOBFrags == 0 {
		opts.OOBFrags = 256
	}
	var mem []byte
	if bb, ok := b.(interface{ Bytes() []byte }); ok {
		mem = bb.Bytes()
	}
	p := make([]byte, opts.BufSize)
	oob := make([]byte, opts.OOBFrags*devmemapi.CmsgSpaceDmabuf)
	frags := make([]devmemapi.Frag, 0, opts.OOBFrags)
	toks := make([]devmemapi.DmabufToken, 0, devmemapi.MaxDontNeedTokens)
	var held []devmemapi.DmabufToken
	var scratch []byte
	var start time.Time
	defer func() {
		if !start.IsZero() {
			r.Elapsed = time.Since(start)
		}
	}()
	giveBack := func(ts []devmemapi.DmabufToken) error {
		for len(ts) > 0 {
			n := min(len(ts), devmemapi.MaxDontNeedTokens)
			freed, err := conn.DontNeed(ts[:n])
			if err != nil {
				return err
			}
			if freed != n {
				return fmt.Errorf("dontneed freed %d of %d tokens", freed, n)
			}
			r.Freed += uint64(freed)
			ts = ts[n:]
		}
		return nil
	}
	for {
		n, fs, err := devmemapi.RecvFrags(conn, p, oob, frags, 0)
		r.Calls++
		if err != nil {
			return r, err
		}
		if n == 0 {
			break
		}
		if r.Bytes == 0 {
			start = time.Now()
		}
		r.Bytes += uint64(n)
		toks = toks[:0]
		// Control messages come in stream order: a linear part's bytes
		// are the next ones in p, a fragment's are in the dmabuf.
		pos := 0
		for _, f := range fs {
			if opts.OnFrag != nil {
				opts.OnFrag(f)
			}
			if f.Linear {
				r.Linear++
				r.LinearBytes += uint64(f.FragSize)
				end := pos + int(f.FragSize)
				if end > n || end > len(p) {
					return r, fmt.Errorf("linear parts of %d bytes in a %d-byte recvmsg", end, n)
				}
				if opts.Sink != nil {
					if err := opts.Sink(p[pos:end]); err != nil {
						return r, err
					}
				}
				pos = end
				continue
			}
			if f.DmabufID != b.ID() {
				return r, fmt.Errorf("fragment of dmabuf %d, bound %d", f.DmabufID, b.ID())
			}
			r.Frags++
			r.DmabufBytes += uint64(f.FragSize)
			if opts.Sink != nil {
				var data []byte
				if mem != nil {
					data = mem[f.FragOffset : f.FragOffset+uint64(f.FragSize)]
				} else {
					if cap(scratch) < int(f.FragSize) {
						scratch = make([]byte, f.FragSize)
					}
					data = scratch[:f.FragSize]
					if _, err := b.ReadAt(data, int64(f.FragOffset)); err != nil {
						return r, err
					}
				}
				if err := opts.Sink(data); err != nil {
					return r, err
				}
			}
			toks = append(toks, devmemapi.DmabufToken{TokenStart: f.FragToken, TokenCount: 1})
		}
		if len(fs) == 0 {
			r.Plain++
			r.PlainBytes += uint64(n)
			if opts.Sink != nil {
				if err := opts.Sink(p[:n]); err != nil {
					return r, err
				}
			}
		}
		if opts.HoldTokens > 0 {
			held = append(held, toks...)
			if len(held) >= opts.HoldTokens {
				if err := giveBack(held); err != nil {
					return r, err
				}
				held = held[:0]
			}
			continue
		}
		if err := giveBack(toks); err != nil {
			return r, err
		}
	}
	if err := giveBack(held); err != nil {
		return r, err
	}
	return r, nil
}

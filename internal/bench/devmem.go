package bench

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/internal/harness"
	"github.com/xdevmem/xdevmem/stack"
)

// runDevmem measures xdevmem's emulated devmem RX: the harness's world (XDP
// program, AF_XDP socket, gVisor TCP, RX binding) and its receive loop,
// which reads with MSG_SOCK_DEVMEM and returns every token with DONTNEED
// after each call, without touching the payload (as an application whose
// dmabuf is GPU memory would not).
func (r *runner) runDevmem(row Row, m *Measurement, ab *aborter) error {
	auto := row.Autorelease
	w, err := harness.New(harness.Options{
		Prefix:      r.cfg.Prefix,
		MTU:         row.MTU,
		Autorelease: &auto,
		Port:        benchPort,
		Shared:      row.Shared,
		IPv6:        row.IPv6,
		Stack:       stack.Config{Lab: stack.Lab{TrustChecksum: row.TrustChecksum}},
	})
	if err != nil {
		return err
	}
	defer w.Close()
	ab.onAbort(func() { w.Close() })
	if !row.DefaultOffloads {
		if err := offloadsOff(w.Pair); err != nil {
			return err
		}
	}
	snd, err := r.startPeer(w.Pair, peerArgs("tcp", w.StackAddr(), r.cfg.Size, 0))
	if err != nil {
		return err
	}
	defer snd.kill()
	ab.onAbort(snd.kill)
	c, err := acceptDevmem(w.Listener, snd)
	if err != nil {
		return err
	}
	defer c.Close()
	before := w.Stack.Stats()
	s0 := takeSample()
	res, rerr := harness.Receive(c, w.Binding, harness.ReceiveOptions{})
	s1 := takeSample()
	c.Close()
	after := w.Stack.Stats()
	if rerr != nil {
		return fmt.Errorf("receive after %d bytes: %w", res.Bytes, rerr)
	}
	m.Bytes = res.Bytes
	m.addWindow(between(s0, s1))
	m.Tokens = res.Freed
	m.Copied = (after.DmabufBytesCopied - before.DmabufBytesCopied) +
		(after.LinearBytesCopied - before.LinearBytesCopied) +
		(after.PlainBytesCopied - before.PlainBytesCopied)
	m.CopiedMeasured = true
	m.Drops = stackDrops(after) - stackDrops(before)
	rep, err := snd.wait(30 * time.Second)
	if err != nil {
		return err
	}
	m.addPeer(rep)
	if d, err := vethDrops(w.Pair); err == nil {
		m.Drops += d
	}
	if res.Bytes != r.cfg.Size {
		return fmt.Errorf("received %d of %d bytes", res.Bytes, r.cfg.Size)
	}
	if res.Linear+res.Plain > 0 {
		return fmt.Errorf("%d linear and %d plain receives on the devmem path", res.Linear, res.Plain)
	}
	return nil
}

// stackDrops adds up what the AF_XDP socket and the header split dropped.
func stackDrops(st stack.Stats) uint64 {
	return st.XSK.RxDropped + st.XSK.RxRingFull + st.XSK.RxFillRingEmpty +
		st.DropMalformed + st.DropBadIPChecksum + st.DropBadTCPChecksum + st.DropOutOfWindow
}

// acceptDevmem waits for the sender's connection, giving up when the sender
// exits first or after acceptTimeout.
func acceptDevmem(ln devmemapi.Listener, snd *peerProc) (devmemapi.Conn, error) {
	return acceptFrom(ln.Accept, ln.Close, snd)
}

// acceptFrom runs accept in the background and returns its connection,
// unless the sender exits first or acceptTimeout passes: then it closes the
// listener (closeLn) and any connection that still arrives.
func acceptFrom[C io.Closer](accept func() (C, error), closeLn func() error, snd *peerProc) (C, error) {
	type accepted struct {
		c   C
		err error
	}
	var zero C
	ac := make(chan accepted, 1)
	go func() {
		c, err := accept()
		ac <- accepted{c, err}
	}()
	giveUp := func(err error) (C, error) {
		closeLn()
		if a := <-ac; a.err == nil {
			a.c.Close()
		}
		return zero, err
	}
	select {
	case a := <-ac:
		if a.err != nil {
			return zero, fmt.Errorf("accept: %w", a.err)
		}
		return a.c, nil
	case <-snd.exited():
		return giveUp(fmt.Errorf("sender exited before connecting: %v: %s", snd.waitErr, strings.TrimSpace(snd.err.String())))
	case <-time.After(acceptTimeout):
		return giveUp(fmt.Errorf("no connection after %v", acceptTimeout))
	}
}

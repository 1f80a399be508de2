package tests

import (
	"io"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/internal/harness"
	"github.com/xdevmem/xdevmem/internal/netns"
	"github.com/xdevmem/xdevmem/internal/pattern"
	"github.com/xdevmem/xdevmem/internal/testutil"
	"github.com/xdevmem/xdevmem/stack"
)

// TestTwoQueuesOneBound: two RX queues (a socket and a goroutine each),
// only queue 1 bound; a flow rule steers port 5201 to queue 1 and RSS keeps
// everything else on queue 0. The bound flow arrives as dmabuf frags, the
// other as ordinary bytes without devmem cmsgs; both byte-exact.
func TestTwoQueuesOneBound(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	w := newWorld(t, harness.Options{Queues: 2, BindQueues: []uint32{1}})
	if got := w.Stack.NIC().Channels(); got != 2 {
		t.Fatalf("channels %d, want 2", got)
	}
	if err := w.Stack.NIC().SetRSS(1); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Stack.NIC().AddFlowRule(stack.FlowRule{DstPort: w.Port, Queue: 1}); err != nil {
		t.Fatal(err)
	}
	plainLn, err := w.Stack.Listen(netip.AddrPortFrom(netip.Addr{}, 5202))
	if err != nil {
		t.Fatal(err)
	}
	defer plainLn.Close()
	const size = 64 << 20
	send := func(port string, period int) <-chan error {
		errc := make(chan error, 1)
		go func() {
			errc <- w.Pair.Peer.Do(func() error {
				c, err := netDial(w.Pair.EmuAddr.Addr().String() + ":" + port)
				if err != nil {
					return err
				}
				if _, err := io.Copy(c, pattern.NewReader(period, size)); err != nil {
					return err
				}
				return c.Close()
			})
		}()
		return errc
	}
	var wg sync.WaitGroup
	var bound, plain harness.Result
	var boundErr, plainErr error
	wg.Add(2)
	go func() {
		defer wg.Done()
		c, err := w.Listener.Accept()
		if err != nil {
			boundErr = err
			return
		}
		defer c.Close()
		v := pattern.NewValidator(7)
		bound, boundErr = harness.Receive(c, w.Binding, harness.ReceiveOptions{Sink: v.Check})
		if boundErr == nil && v.Offset() != size {
			t.Errorf("bound flow: %d of %d bytes", v.Offset(), size)
		}
	}()
	go func() {
		defer wg.Done()
		c, err := plainLn.Accept()
		if err != nil {
			plainErr = err
			return
		}
		defer c.Close()
		v := pattern.NewValidator(13)
		plain, plainErr = harness.Receive(c, w.Binding, harness.ReceiveOptions{Sink: v.Check})
		if plainErr == nil && v.Offset() != size {
			t.Errorf("plain flow: %d of %d bytes", v.Offset(), size)
		}
	}()
	e1, e2 := send("5201", 7), send("5202", 13)
	wg.Wait()
	waitErr(t, e1, "send bound flow")
	waitErr(t, e2, "send plain flow")
	if boundErr != nil || plainErr != nil {
		t.Fatalf("receive: bound %v, plain %v", boundErr, plainErr)
	}
	if bound.DmabufBytes != size || bound.Plain != 0 {
		t.Fatalf("bound flow: %d dmabuf bytes, %d plain calls", bound.DmabufBytes, bound.Plain)
	}
	if plain.Frags != 0 || plain.Linear != 0 || plain.Plain == 0 || plain.Bytes != size {
		t.Fatalf("plain flow: %d frags, %d linear msgs, %d plain calls, %d bytes", plain.Frags, plain.Linear, plain.Plain, plain.Bytes)
	}
	st := w.Stack.Stats()
	if st.PlainBytes != size || st.DmabufBytes != size {
		t.Fatalf("stack counted %d plain, %d dmabuf bytes", st.PlainBytes, st.DmabufBytes)
	}
	checkStats(t, st)
}

// TestUnboundQueueIsPlain: without any binding, MSG_SOCK_DEVMEM reads return
// ordinary bytes and no devmem control messages, as on an unbound kernel
// queue.
func TestUnboundQueueIsPlain(t *testing.T) {
	w := newWorld(t, harness.Options{NoBind: true})
	connc := acceptOne(t, w)
	errc := sendPattern(w, 7, 1<<20)
	conn := <-connc
	if conn == nil {
		t.FailNow()
	}
	defer conn.Close()
	p := make([]byte, 1<<20)
	oob := make([]byte, 16*devmemapi.CmsgSpaceDmabuf)
	v := pattern.NewValidator(7)
	for v.Offset() < 1<<20 {
		n, oobn, err := conn.RecvMsg(p, oob, devmemapi.MSG_SOCK_DEVMEM)
		if err != nil || n == 0 {
			t.Fatalf("recvmsg: %d, %v", n, err)
		}
		if oobn != 0 {
			t.Fatalf("devmem cmsgs on an unbound queue")
		}
		if err := v.Check(p[:n]); err != nil {
			t.Fatal(err)
		}
	}
	waitErr(t, errc, "send")
}

// TestInactiveQueues: an interface with more RX queues allocated than
// active (ethtool -L) gets a socket on each active queue only.
func TestInactiveQueues(t *testing.T) {
	testutil.Watchdog(t, time.Minute)
	p := testutil.NewPair(t, netns.Options{Prefix: "xdt", RxQueues: 2, TxQueues: 2})
	if out, err := p.Emu.Command("ethtool", "-L", p.EmuIf, "rx", "1", "tx", "1").CombinedOutput(); err != nil {
		t.Fatalf("ethtool -L: %v: %s", err, out)
	}
	var st *stack.Stack
	err := p.Emu.Do(func() error {
		var err error
		st, err = stack.New(stack.Config{Ifname: p.EmuIf, Addr: p.EmuAddr})
		return err
	})
	if err != nil {
		t.Fatalf("stack on 1 of 2 queues: %v", err)
	}
	defer st.Close()
	if st.NIC().Channels() != 1 {
		t.Fatalf("channels %d, want 1", st.NIC().Channels())
	}
}

package stack

import (
	"testing"
	"time"
)

// TestLingerTXConn: SO_LINGER on a connected socket, against the fake
// peer. On with a time, Close waits until the peer has acknowledged the
// data and the FIN, and no longer than the time when it never does; on
// with no time, Close resets the connection; off, Close returns at once
// and the connection still ends with a FIN.
func TestLingerTXConn(t *testing.T) {
	payload := make([]byte, 8<<10)
	closeTimed := func(c *TXConn) time.Duration {
		t0 := time.Now()
		done := make(chan struct{})
		go func() { c.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatal("Close did not return")
		}
		return time.Since(t0)
	}
	peerState := func(p *fakePeer) (fin, rst bool, n int) {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.fin, p.rst, p.count
	}
	waitPeer := func(p *fakePeer, what string, ok func(fin, rst bool, n int) bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !ok(peerState(p)); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				fin, rst, n := peerState(p)
				t.Fatalf("peer never saw %s: fin %v, rst %v, %d bytes", what, fin, rst, n)
			}
		}
	}

	t.Run("time-acked", func(t *testing.T) {
		_, peer, _, c := txSetup(t, Config{}, 1<<20)
		defer peer.close()
		if _, err := c.Write(payload); err != nil {
			t.Fatal(err)
		}
		c.SetLinger(true, 10*time.Second)
		closeTimed(c)
		// Close returned because the FIN was acknowledged: the peer had
		// every byte and the FIN by then.
		if fin, rst, n := peerState(peer); !fin || rst || n != len(payload) {
			t.Fatalf("after Close: peer fin %v, rst %v, %d of %d bytes", fin, rst, n, len(payload))
		}
	})
	t.Run("time-unacked", func(t *testing.T) {
		_, peer, _, c := txSetup(t, Config{}, 1<<20)
		peer.mu.Lock()
		peer.drop = func(uint32, int) bool { return true } // nothing is acknowledged
		peer.mu.Unlock()
		defer peer.close()
		if _, err := c.Write(payload); err != nil {
			t.Fatal(err)
		}
		const linger = 300 * time.Millisecond
		c.SetLinger(true, linger)
		if d := closeTimed(c); d < linger-20*time.Millisecond {
			t.Fatalf("Close returned after %v with the data unacknowledged; SO_LINGER is %v", d, linger)
		}
		if fin, rst, _ := peerState(peer); fin || rst {
			t.Fatalf("peer fin %v, rst %v: it acknowledged nothing, and the linger timing out resets nothing", fin, rst)
		}
	})
	t.Run("zero", func(t *testing.T) {
		_, peer, _, c := txSetup(t, Config{}, 1<<20)
		defer peer.close()
		c.SetLinger(true, 0)
		closeTimed(c)
		waitPeer(peer, "a reset", func(fin, rst bool, _ int) bool { return rst })
		if fin, _, _ := peerState(peer); fin {
			t.Fatal("zero linger sent a FIN before its RST")
		}
	})
	t.Run("off", func(t *testing.T) {
		_, peer, _, c := txSetup(t, Config{}, 1<<20)
		peer.mu.Lock()
		peer.drop = func(uint32, int) bool { return true }
		peer.mu.Unlock()
		defer peer.close()
		if _, err := c.Write(payload); err != nil {
			t.Fatal(err)
		}
		c.SetLinger(true, 10*time.Second)
		c.SetLinger(false, 10*time.Second) // off again: the time no longer counts
		if d := closeTimed(c); d > 5*time.Second {
			t.Fatalf("Close without SO_LINGER waited %v for an acknowledgement", d)
		}
		peer.mu.Lock()
		peer.drop = nil
		peer.mu.Unlock()
		waitPeer(peer, "the data and the FIN", func(fin, rst bool, n int) bool { return fin && !rst && n == len(payload) })
	})
}

// TestLingerConn: zero linger on an accepted connection resets it.
func TestLingerConn(t *testing.T) {
	ip := newInproc(t, Config{})
	ln := ip.bindListen(t)
	c, _ := ip.connect(ln, 40001, 1000)
	c.SetLinger(true, 0)
	c.Close()
	for {
		f := ip.waitTX()
		flags := f[14+20+13]
		if flags&tcpFlagFin != 0 {
			t.Fatalf("zero linger sent a FIN (flags %#x)", flags)
		}
		if flags&tcpFlagRst != 0 {
			return
		}
	}
}

// TestDrain: a closed connection whose data the peer has not acknowledged
// keeps Drain waiting for its timeout; once the peer acknowledges it,
// Drain returns 0 and the peer has every byte and the FIN.
func TestDrain(t *testing.T) {
	ip, peer, _, c := txSetup(t, Config{}, 1<<20)
	defer peer.close()
	peer.mu.Lock()
	peer.drop = func(uint32, int) bool { return true }
	peer.mu.Unlock()
	payload := make([]byte, 8<<10)
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	c.Close()
	t0 := time.Now()
	if n := ip.s.Drain(200 * time.Millisecond); n != 1 {
		t.Fatalf("Drain with the data unacknowledged: %d connections left, want 1", n)
	}
	if d := time.Since(t0); d < 190*time.Millisecond {
		t.Fatalf("Drain returned after %v, before its timeout", d)
	}
	peer.mu.Lock()
	peer.drop = nil
	peer.mu.Unlock()
	if n := ip.s.Drain(20 * time.Second); n != 0 {
		t.Fatalf("Drain with a peer that acknowledges: %d connections left", n)
	}
	peer.mu.Lock()
	fin, count := peer.fin, peer.count
	peer.mu.Unlock()
	if !fin || count != len(payload) {
		t.Fatalf("after Drain: peer fin %v, %d of %d bytes", fin, count, len(payload))
	}
}

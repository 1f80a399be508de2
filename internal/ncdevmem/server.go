package ncdevmem

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
)

// runDevmemTests mirrors run_devmem_tests, ncdevmem's probe: binding an
// empty queue array must fail, binding with header split off must fail,
// binding with it on must succeed, and shrinking the channels under the
// bound queues must fail. The exit status is 0 only if all of that holds.
func (nc *ncdevmem) runDevmemTests() int {
	ring, err := nc.nic.rings()
	if err != nil {
		nc.prErr("Failed to get current ring configuration")
		return 1
	}
	// Configure RSS to divert all traffic from our devmem queues
	if err := nc.nic.setRSS(nc.startQueue); err != nil {
		nc.prErr("rss error: %v", err)
		return 1
	}
	defer nc.nic.resetRSS()
	if err := nc.nic.setHeaderSplit(true); err != nil {
		nc.prErr("Failed to configure header split: %v", err)
		return 1
	}
	defer nc.nic.restoreRings(ring)

	if b, err := nc.bindRX(nil, nil); err == nil {
		b.Close()
		nc.prErr("Binding empty queues array should have failed")
		return 1
	}
	if err := nc.nic.setHeaderSplit(false); err != nil {
		nc.prErr("Failed to configure header split: %v", err)
		return 1
	}
	if b, err := nc.bindRX(nc.queues(), nil); err == nil {
		b.Close()
		nc.prErr("Configure dmabuf with header split off should have failed")
		return 1
	}
	if err := nc.nic.setHeaderSplit(true); err != nil {
		nc.prErr("Failed to configure header split: %v", err)
		return 1
	}
	b, err := nc.bindRX(nc.queues(), nil)
	if err != nil {
		nc.prErr("Failed to bind: %v", err)
		return 1
	}
	defer b.Close()
	// Deactivating a bound queue should not be legal
	if err := nc.nic.checkChangingChannels(nc.numQueues); err == nil {
		nc.prErr("Deactivating a bound queue should be illegal")
		return 1
	}
	nc.logf("xdevmem: %s: devmem works (%s backend): empty queue list refused, header split off refused, bind to queues %d..%d, channel shrink under them refused\n",
		nc.ifname, nc.prov.Name(), nc.startQueue, nc.startQueue+nc.numQueues-1)
	return 0
}

// doServer mirrors do_server: NIC set-up (unless -n), bind, listen, accept
// one connection, and receive it with recvmsg(MSG_SOCK_DEVMEM), printing
// each fragment, validating (-v) or printing its bytes, and returning
// every token at once.
func (nc *ncdevmem) doServer() int {
	addr, _ := parseAddress(nc.serverIP)
	port := atoi(nc.port)
	if port <= 0 || port > 65535 {
		nc.prErr("parse server address: port %q", nc.port)
		return 1
	}
	if !nc.skipConfig {
		ring, err := nc.nic.rings()
		if err != nil {
			nc.prErr("Failed to get current ring configuration")
			return 1
		}
		if err := nc.nic.setHeaderSplit(true); err != nil {
			nc.prErr("Failed to enable TCP header split: %v", err)
			return 1
		}
		defer nc.nic.restoreRings(ring)
		// Configure RSS to divert all traffic from our devmem queues
		if err := nc.nic.setRSS(nc.startQueue); err != nil {
			nc.prErr("Failed to configure rss: %v", err)
			return 1
		}
		defer nc.nic.resetRSS()
		// Flow steer our devmem flows to start_queue
		ids, err := nc.configureFlowSteering(addr)
		if err != nil {
			nc.prErr("Failed to configure flow steering")
			return 1
		}
		defer func() { // reset_flow_steering
			for _, id := range ids {
				nc.nic.deleteFlow(id)
			}
		}()
	}
	b, err := nc.bindRX(nc.queues(), nc.autorelease)
	if err != nil {
		nc.prErr("Failed to bind")
		return 1
	}
	defer b.Close()
	var mem []byte
	if bb, ok := b.(interface{ Bytes() []byte }); ok {
		mem = bb.Bytes()
	}

	nc.logf("binding to address %s:%d\n", nc.serverIP, port)
	ln, err := nc.prov.Listen(netip.AddrPortFrom(addr, uint16(port)))
	if err != nil {
		nc.prErr("Failed to bind: %v", err)
		return 1
	}
	defer ln.Close() // the stack holds the port with a kernel listener: ss and /proc/net/tcp show it
	nc.logf("Waiting or connection on %s:%d\n", mapped(addr), port)
	nc.logf("%s%s (%s backend, dmabuf id %d)\n", ncReadyLine, netip.AddrPortFrom(addr, uint16(port)), nc.prov.Name(), b.ID())
	nc.flush()

	conn, err := ln.Accept()
	if err != nil {
		nc.prErr("Failed to accept: %v", err)
		return 1
	}
	defer conn.Close()
	if ra, ok := conn.RemoteAddr().(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ra.IP)
		nc.logf("Got connection from %s:%d\n", mapped(ip.Unmap()), ra.Port)
	}
	nc.flush()

	if nc.unbindMode == unbindBeforeRecv {
		// Wait for data then unbind (before recvmsg)
		if q, ok := conn.(interface{ Queued() int }); ok {
			deadline := time.Now().Add(ncPollMs * time.Millisecond)
			for q.Queued() == 0 {
				if time.Now().After(deadline) {
					nc.prErr("poll failed or timed out waiting for data")
					return 1
				}
				time.Sleep(2 * time.Millisecond)
			}
		}
		b.Close()
	}
	return nc.receive(conn, b, mem)
}

// receive is do_server's recvmsg loop.
func (nc *ncdevmem) receive(conn devmemapi.Conn, b devmemapi.Binding, mem []byte) int {
	iobuf := make([]byte, ncIOBufSize)
	ctrl := make([]byte, ncCtrlSize)
	var frags []devmemapi.Frag
	var scratch []byte
	val := &validator{period: nc.doValidation, nc: nc}
	var total, pageAligned, nonPageAligned uint64
	unbound := nc.unbindMode == unbindBeforeRecv
	lastErr, repeats := "", 0
	for {
		n, fs, err := devmemapi.RecvFrags(conn, iobuf, ctrl, frags, 0)
		frags = fs
		if err != nil {
			nc.logf("recvmsg ret=-1\n")
		} else {
			nc.logf("recvmsg ret=%d\n", n)
		}
		if err != nil {
			if errors.Is(err, unix.EAGAIN) {
				continue
			}
			if nc.unbindMode == unbindBeforeRecv && errors.Is(err, unix.ENODEV) {
				nc.logf("xdevmem: recvmsg after unbind: %v (expected with -U 1)\n", err)
				return nc.ok(pageAligned, nonPageAligned)
			}
			nc.logf("recvmsg: %v\n", err) // perror("recvmsg")
			if errors.Is(err, unix.EFAULT) {
				nc.prErr("received EFAULT, won't recover")
				return 1
			}
			if errors.Is(err, unix.ENODEV) {
				nc.prErr("unexpected ENODEV")
				return 1
			}
			// ncdevmem retries any other error; a socket that can only
			// fail again would loop for ever, so stop after 1000.
			if err.Error() == lastErr {
				repeats++
			} else {
				lastErr, repeats = err.Error(), 0
			}
			if repeats >= 1000 || errors.Is(err, devmemapi.ErrClosed) {
				nc.prErr("recvmsg keeps failing: %v", err)
				return 1
			}
			nc.flush()
			continue
		}
		if n == 0 {
			nc.prErr("client exited")
			return nc.ok(pageAligned, nonPageAligned)
		}
		isDevmem := false
		for _, f := range fs {
			isDevmem = true
			if f.Linear {
				nc.logf("SCM_DEVMEM_LINEAR. dmabuf_cmsg->frag_size=%d\n", f.FragSize)
				if nc.failOnLinear {
					nc.prErr("received SCM_DEVMEM_LINEAR but --fail-on-linear (-L) set")
					return 1
				}
				continue
			}
			total += uint64(f.FragSize)
			nc.logf("received frag_page=%d, in_page_offset=%d, frag_offset=%d, frag_size=%d, token=%d, total_received=%d, dmabuf_id=%d\n",
				f.FragOffset>>ncPageShift, f.FragOffset%ncPageSize, f.FragOffset, f.FragSize, f.FragToken, total, f.DmabufID)
			if f.DmabufID != b.ID() {
				nc.prErr("received on wrong dmabuf_id: flow steering error")
				return 1
			}
			if f.FragSize%ncPageSize != 0 {
				nonPageAligned++
			} else {
				pageAligned++
			}
			var data []byte // memcpy_from_device
			if mem != nil {
				data = mem[f.FragOffset : f.FragOffset+uint64(f.FragSize)]
			} else {
				if cap(scratch) < int(f.FragSize) {
					scratch = make([]byte, f.FragSize)
				}
				data = scratch[:f.FragSize]
				if _, err := b.ReadAt(data, int64(f.FragOffset)); err != nil {
					nc.prErr("read dmabuf at %d: %v", f.FragOffset, err)
					return 1
				}
			}
			if nc.doValidation != 0 {
				if !val.check(data) {
					return 1
				}
			} else {
				nc.stdout.Write(data) // print_nonzero_bytes
			}
			freed, err := conn.DontNeed([]devmemapi.DmabufToken{{TokenStart: f.FragToken, TokenCount: 1}})
			if err != nil || freed != 1 {
				nc.prErr("SO_DEVMEM_DONTNEED not enough tokens")
				return 1
			}
		}
		if !isDevmem {
			nc.prErr("flow steering error")
			return 1
		}
		if nc.unbindMode == unbindAfterRecv && !unbound {
			b.Close()
			unbound = true
		}
		nc.logf("total_received=%d\n", total)
		nc.flush()
	}
}

// ok ends a successful receive. ncdevmem's own "ncdevmem: ok" and
// page_aligned_frags lines follow an endless loop and are never printed;
// xdevmem prints them after ncdevmem's "client exited".
func (nc *ncdevmem) ok(pageAligned, nonPageAligned uint64) int {
	nc.logf("%s: ok\n", ncPrefix)
	nc.logf("page_aligned_frags=%d, non_page_aligned_frags=%d\n", pageAligned, nonPageAligned)
	return 0
}

// configureFlowSteering mirrors configure_flow_steering: a 5-tuple rule
// (src-ip -c, src-port = dst-port = -p) when -c is given, else dst-ip and
// dst-port only; a 3-tuple rule if the 5-tuple one fails.
func (nc *ncdevmem) configureFlowSteering(server netip.Addr) ([]int, error) {
	f := flowSpec{typ: "tcp6", dst: mapped(server), port: nc.port, queue: nc.startQueue}
	if server.Is4() {
		f.typ, f.dst = "tcp4", server.String()
	}
	if nc.clientIP != "" {
		f.src = nc.clientIP
	}
	id, err := nc.nic.addFlow(f)
	if err != nil {
		f.src = "" // If that fails, try configure 3-tuple
		if id, err = nc.nic.addFlow(f); err != nil {
			return nil, err
		}
	}
	return []int{id}, nil
}

// validator is ncdevmem's validate_buffer: the stream is 1, 2, ..., N-1,
// then the period's last byte; up to 20 mismatches are reported and
// tolerated, the 21st fails. Every checked buffer prints "Validated buffer"
// on stdout.
//
// The current selftest's ncdevmem (the one with devmem TX and the
// autorelease series' -a/-U, which xdevmem mirrors) expects '\n' as the
// last byte, so that `yes $(echo -e \\x01...\\x06)` feeds it. Linux 6.12's
// expects 0 there (its users pipe the stream through tr \\n \\0). Both are
// accepted: the first period's last byte decides which, and every later
// period must end the same way.
type validator struct {
	seed   uint8
	errors int
	period uint64
	nc     *ncdevmem
	init   bool
	// last is the byte that ends a period: '\n', 0 (6.12), or -1 until
	// the first period end decides.
	last int
}

// ncdevmem612Last is the byte 6.12's validate_buffer expects at the end of
// a period.
const ncdevmem612Last = 0

func (v *validator) check(p []byte) bool {
	if !v.init {
		v.seed, v.init, v.last = 1, true, -1
	}
	for i, b := range p {
		expected := v.seed
		if expected == 0 {
			switch {
			case v.last >= 0:
				expected = uint8(v.last)
			case b == '\n' || b == ncdevmem612Last:
				v.last = int(b)
				expected = b
				if b == ncdevmem612Last {
					v.nc.logf("xdevmem: -v %d: the stream's periods end in 0, as Linux 6.12's ncdevmem expects (not '\\n'); validating that way\n", v.period)
				}
			default:
				expected = '\n'
			}
		}
		if b != expected {
			v.nc.logf("Failed validation: expected=%d, actual=%d, index=%d\n", expected, b, i)
			v.errors++
			if v.errors > 20 {
				v.nc.prErr("validation failed")
				return false
			}
		}
		v.seed++
		if uint64(v.seed) == v.period {
			v.seed = 0
		}
	}
	fmt.Fprintf(v.nc.stdout, "Validated buffer\n")
	return true
}

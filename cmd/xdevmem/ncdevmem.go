package main

// ncdevmem drop-in: xdevmem run as "ncdevmem" (a link of that name, or
// "xdevmem ncdevmem ARGS...") takes the kernel selftest's command line
// unchanged and behaves like tools/testing/selftests/drivers/net/hw/ncdevmem.c:
// the same getopt string, mode selection, NIC set-up order, per-fragment
// output, validation, exit codes, and the autorelease series' -a/-U. Where
// ncdevmem drives the NIC with ethtool, the emulated NIC's settings are set
// instead (stack.NIC: SetRings, SetRSS, AddFlowRule, SetChannels); on a kernel
// devmem NIC (chosen through compat.Open) the same ethtool commands run.
//
// The C program is the reference throughout; comments name the function of
// ncdevmem.c each piece mirrors.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat"
	"github.com/xdevmem/xdevmem/compat/ethnl"
	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/stack"
)

// ncdevmem's constants (ncdevmem.c: TEST_PREFIX, PAGE_SHIFT, NUM_PAGES,
// MAX_IOV) and its getopt string, with the autorelease series' "a:U:".
const (
	ncPrefix    = "ncdevmem"
	ncPageSize  = 4096
	ncPageShift = 12
	ncNumPages  = 16000
	ncOptstring = "Lls:c:p:v:q:t:f:z:nb:a:U:"
	// ncCtrlSize is do_server's ctrl_data: sizeof(int) * 20000.
	ncCtrlSize = 4 * 20000
	// ncIOBufSize is do_server's iobuf.
	ncIOBufSize = 819200
	// ncPollMs is how long -U 1 waits for data before unbinding
	// (poll(&pfd, 1, 5000) in the series' do_server).
	ncPollMs = 5000
)

// Unbind modes of the autorelease series (enum unbind_mode_type).
const (
	unbindNormal     = 0 // UNBIND_MODE_NORMAL: unbind at exit
	unbindBeforeRecv = 1 // UNBIND_MODE_BEFORE_RECV: with autorelease off recvmsg then fails ENODEV, which is success
	unbindAfterRecv  = 2 // UNBIND_MODE_AFTER_RECV: unbind after the first recvmsg
	unbindInval      = 3 // UNBIND_MODE_INVAL
)

// ncReadyLine starts the line printed on stderr once the port is listening
// and held for ss and /proc/net/tcp (the stack holds it with a kernel
// listener): scripts that wait for a
// line can wait for it. It is not printed on stdout, which carries the
// received bytes when -v is not given, as ncdevmem's does.
const ncReadyLine = "xdevmem ncdevmem: listening on "

// ncBackendEnv selects the backend (auto, kernel or emulated) without
// adding a flag to ncdevmem's command line.
const ncBackendEnv = "XDEVMEM_BACKEND"

// ncdevmem holds the parsed command line (ncdevmem.c's globals) and the
// state of one run.
type ncdevmem struct {
	// Flags, as ncdevmem.c's globals.
	isServer     bool   // -l
	serverIP     string // -s (nil in C when absent: "")
	clientIP     string // -c
	port         string // -p, kept as text as ncdevmem does for ethtool
	doValidation uint64 // -v
	startQueue   int    // -t, -1 when absent
	numQueues    int    // -q, -1 when absent
	ifname       string // -f
	maxChunk     int    // -z
	skipConfig   bool   // -n
	failOnLinear bool   // -L
	rxBufSize    uint32 // -b (rx_page_size / rx-buf-size)
	badRxBufSize string // -b's text when strtoul overflowed 32 bits
	autorelease  *bool  // -a: nil when absent (the binding's default)
	unbindMode   int    // -U

	ifindex int
	backend compat.Backend // XDEVMEM_BACKEND

	stderr, stdout *bufio.Writer
	prov           devmemapi.Provider
	st             *stack.Stack // nil on the kernel backend
	nic            nicConfig
}

// ncUsage is what `xdevmem ncdevmem -h` prints.
const ncUsage = `usage: xdevmem ncdevmem [-l] -f IFACE [-s SERVER] [-c CLIENT] [-p PORT] [-v N] [-L] [-t QUEUE] [-q COUNT]
                        [-z MAX_CHUNK] [-n] [-b RX_BUF] [-a 0|1] [-U 0|1|2]

The kernel selftest's ncdevmem, its command line unchanged (getopt "` + ncOptstring + `"); also run
through a link named ncdevmem. Without -s and -c it probes IFACE; with -l it is the RX server
(-v validates the pattern, -L fails on linear data, -t/-q pick the queues, -a the token mode,
-U when to unbind); otherwise it is the TX client sending stdin (-z: bytes per iovec).
XDEVMEM_BACKEND=auto|kernel|emulated picks the backend (default auto). The emulated NIC has the
interface's active RX queues as channels (XDEVMEM_CHANNELS=N sets another count, reported at start).

It mirrors the current selftest's ncdevmem (tools/testing/selftests/drivers/net/hw/ncdevmem.c with
devmem TX, plus the autorelease series' -a/-U): -v N expects 1, 2, ..., N-1 and then '\n' in each
period. Linux 6.12's ncdevmem expected 0 there instead (its users piped the stream through
tr \\n \\0); that stream is accepted too, the first period deciding which.
`

// runNcdevmem is the "ncdevmem" command: ncdevmem.c's main().
func runNcdevmem(args []string) error {
	if len(args) == 1 && (args[0] == "-h" || args[0] == "--help") {
		// Not an ncdevmem option (it would complain and go on); alone on
		// the command line it can only be a request for help.
		fmt.Print(ncUsage)
		return nil
	}
	nc := &ncdevmem{
		startQueue: -1,
		numQueues:  -1,
		stderr:     bufio.NewWriterSize(os.Stderr, 64<<10),
		stdout:     bufio.NewWriterSize(os.Stdout, 64<<10),
	}
	defer nc.flush()
	b, err := compat.ParseBackend(os.Getenv(ncBackendEnv))
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", ncBackendEnv, err)
		return exitError{1}
	}
	nc.backend = b
	code := nc.main(args)
	nc.flush()
	if nc.prov != nil {
		nc.prov.Close()
	}
	if code != 0 {
		return exitError{code}
	}
	return nil
}

// main mirrors ncdevmem.c's main() and returns the exit status.
func (nc *ncdevmem) main(args []string) int {
	rest := getopt(args, ncOptstring, func(c byte, arg string) {
		switch c {
		case 'L':
			nc.failOnLinear = true
		case 'l':
			nc.isServer = true
		case 's':
			nc.serverIP = arg
		case 'c':
			nc.clientIP = arg
		case 'p':
			nc.port = arg
		case 'v':
			nc.doValidation = uint64(atoi(arg)) // atoll into a size_t
		case 'q':
			nc.numQueues = atoi(arg)
		case 't':
			nc.startQueue = atoi(arg)
		case 'f':
			nc.ifname = arg
		case 'z':
			nc.maxChunk = atoi(arg)
		case 'n':
			nc.skipConfig = true
		case 'b':
			v, ok := strtoul(arg)
			if !ok || v > 1<<32-1 {
				nc.rxBufSize = 0
				nc.badRxBufSize = arg
				return
			}
			nc.rxBufSize = uint32(v)
		case 'a':
			on := atoi(arg) != 0
			nc.autorelease = &on
		case 'U':
			nc.unbindMode = atoi(arg)
		default: // '?': getopt has complained
			nc.logf("unknown option: %c\n", c)
		}
	}, nc.stderr)
	if nc.badRxBufSize != "" {
		nc.prErr("invalid rx_page_size: %s", nc.badRxBufSize)
		return 1
	}
	if nc.ifname == "" {
		nc.prErr("Missing -f argument")
		return 1
	}
	if nc.unbindMode < unbindNormal || nc.unbindMode >= unbindInval {
		nc.prErr("invalid unbind mode %d", nc.unbindMode)
		return 1
	}
	if ifc, err := net.InterfaceByName(nc.ifname); err == nil {
		nc.ifindex = ifc.Index // if_nametoindex: 0 when there is none
	}
	nc.logf("using ifindex=%d\n", nc.ifindex)
	if os.Geteuid() != 0 {
		nc.prErr("needs root (CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF) for XDP, AF_XDP and netlink")
		return 1
	}

	// No -s and no -c: the probe (run_devmem_tests), whatever else is set.
	if nc.serverIP == "" && nc.clientIP == "" {
		if nc.ifindex == 0 {
			nc.prErr("no interface %q", nc.ifname)
			return 1
		}
		if err := nc.open(netip.Prefix{}); err != nil {
			return 1
		}
		if nc.startQueue < 0 && nc.numQueues < 0 {
			n, err := nc.nic.rxQueues()
			if err != nil || n < 0 {
				nc.prErr("couldn't detect number of queues")
				return 1
			}
			if n < 2 {
				nc.prErr("number of device queues is too low")
				return 1
			}
			// make sure can bind to multiple queues
			nc.startQueue = n / 2
			nc.numQueues = n / 2
		}
		if nc.startQueue < 0 || nc.numQueues < 0 {
			nc.prErr("Both -t and -q are required")
			return 1
		}
		return nc.runDevmemTests()
	}

	if nc.isServer {
		// ncdevmem checks -s and -p after the queues; the emulated NIC
		// needs the address to exist, so they are checked first here.
		if nc.serverIP == "" {
			nc.prErr("Missing -s argument")
			return 1
		}
		if nc.port == "" {
			nc.prErr("Missing -p argument")
			return 1
		}
		addr, err := parseAddress(nc.serverIP)
		if err != nil {
			nc.prErr("parse server address")
			return 1
		}
		if nc.ifindex == 0 {
			nc.prErr("no interface %q", nc.ifname)
			return 1
		}
		if err := nc.open(ifacePrefix(nc.ifname, addr)); err != nil {
			return 1
		}
	}
	if nc.startQueue < 0 && nc.numQueues < 0 {
		var n int
		if nc.nic != nil {
			n, _ = nc.nic.rxQueues()
		} else {
			var err error
			if n, _, err = emulatedChannels(nc.ifname); err != nil { // the client's emulated NIC
				nc.prErr("%v", err)
				return 1
			}
		}
		if n < 2 {
			nc.prErr("number of device queues is too low")
			return 1
		}
		nc.numQueues = 1
		nc.startQueue = n - nc.numQueues
		nc.logf("using queues %d..%d\n", nc.startQueue, nc.startQueue+nc.numQueues)
	}
	for _, a := range rest {
		nc.logf("extra arguments: %s\n", a)
	}
	if nc.startQueue < 0 {
		nc.prErr("Missing -t argument")
		return 1
	}
	if nc.numQueues < 0 {
		nc.prErr("Missing -q argument")
		return 1
	}
	if nc.serverIP == "" {
		nc.prErr("Missing -s argument")
		return 1
	}
	if nc.port == "" {
		nc.prErr("Missing -p argument")
		return 1
	}
	if nc.isServer {
		return nc.doServer()
	}
	return nc.doClient()
}

// open chooses the backend through compat.Open (the kernel's devmem where
// the interface passes the probe, else the emulation) and creates it with
// the stack's address addr (a throwaway one for the probe).
func (nc *ncdevmem) open(addr netip.Prefix) error {
	if !addr.IsValid() {
		// The probe has no -s: the emulated NIC gets an address from
		// TEST-NET-1 (RFC 5737), to which no real traffic is addressed,
		// for the fraction of a second the probe runs.
		addr = netip.MustParsePrefix("192.0.2.1/32")
	}
	channels, chWhy, err := emulatedChannels(nc.ifname)
	if err != nil {
		nc.prErr("%v", err)
		return err
	}
	prov, choice, err := compat.Open(compat.Options{
		Backend: nc.backend,
		Ifname:  nc.ifname,
		Emulated: func() (devmemapi.Provider, error) {
			if err := emulationUsable(nc.ifname); err != nil {
				return nil, err
			}
			return stack.New(stack.Config{Ifname: nc.ifname, Addr: addr, Queues: activeRXQueues(nc.ifname), Channels: channels})
		},
	})
	if choice != nil {
		nc.logf("xdevmem: backend %s: %s\n", choice.Backend, choice.Reason)
	}
	if err != nil {
		nc.prErr("no devmem on %s: %v", nc.ifname, err)
		return err
	}
	nc.prov = prov
	if st, ok := prov.(*stack.Stack); ok {
		nc.st = st
		nc.nic = &emuNIC{nc: nc, st: st}
		mode, why := st.AddressMode()
		nc.logf("xdevmem: %s address: %s\n", mode, why)
		nc.logf("xdevmem: emulated NIC on %s: %d RX channels (%s)\n", nc.ifname, st.NIC().Channels(), chWhy)
	} else {
		nc.nic = &ethtoolNIC{nc: nc}
	}
	nc.logTokenMode(choice)
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigc
		nc.flush()
		prov.Close() // detaches XDP, unbinds, closes sockets
		os.Exit(128 + int(s.(syscall.Signal)))
	}()
	return nil
}

// logTokenMode says which token release mode a bind-rx without -a gets and
// why: the host kernel's default on both backends (autorelease on upstream,
// the series' 0 where bind-rx takes the attribute), unless -a chooses.
func (nc *ncdevmem) logTokenMode(choice *compat.Choice) {
	var on bool
	var why string
	switch {
	case nc.st != nil:
		on, why = nc.st.DefaultAutorelease()
	case choice != nil && choice.Probe != nil:
		on, why = choice.Probe.TokenMode.On, "the kernel's default: "+choice.Probe.TokenMode.Reason
	default:
		return
	}
	if nc.autorelease != nil {
		nc.logf("xdevmem: token mode autorelease=%d (-a; without it: autorelease=%d, %s)\n", b2i(*nc.autorelease), b2i(on), why)
		return
	}
	nc.logf("xdevmem: token mode autorelease=%d (%s)\n", b2i(on), why)
}

// ncChannelsEnv sets the emulated NIC's channel count explicitly, since
// ncdevmem has no flag for it.
const ncChannelsEnv = "XDEVMEM_CHANNELS"

// emulatedChannels is the emulated NIC's RX channel count (ethtool -l): the
// interface's active RX queues, as the real NIC's would be, or
// XDEVMEM_CHANNELS (1 to 64) when set. why says which, for the report. A
// queue at or beyond it fails as on the real NIC: bind-rx EINVAL, RSS and
// flow rules naming it EINVAL (ethtool's "Invalid argument").
func emulatedChannels(ifname string) (n int, why string, err error) {
	if v := os.Getenv(ncChannelsEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > stack.MaxChannels {
			return 0, "", fmt.Errorf("%s=%q: want 1 to %d", ncChannelsEnv, v, stack.MaxChannels)
		}
		return n, fmt.Sprintf("%s=%d", ncChannelsEnv, n), nil
	}
	n = min(activeRXQueues(ifname), stack.MaxChannels)
	return n, fmt.Sprintf("the active RX queues of %s; %s=N sets another count", ifname, ncChannelsEnv), nil
}

// activeRXQueues is the number of RX queues in use on ifname, from the
// current channel counts (ethtool -l, asked through ethtool netlink):
// rtnetlink's IFLA_NUM_RX_QUEUES, which stack.RXQueueCount reads, counts
// the allocated ones: a veth made without numrxqueues has as many as CPUs,
// only one of them active, and an AF_XDP socket cannot bind the others.
// For a driver without channel counts it falls back to stack.RXQueueCount.
func activeRXQueues(ifname string) int {
	if ch, err := channels(ifname); err == nil && ch.RX+ch.Combined > 0 {
		return int(ch.RX + ch.Combined)
	}
	return stack.RXQueueCount(ifname)
}

// channels asks ethtool netlink for ifname's channel counts.
func channels(ifname string) (*ethnl.Channels, error) {
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, err
	}
	c, err := ethnl.Dial(nil)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return nil, err
	}
	return c.Channels(ifc.Index)
}

// emulationUsable refuses interfaces the emulation cannot run on: it needs
// an Ethernet device that can run XDP (a veth or a NIC), not loopback.
func emulationUsable(ifname string) error {
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("interface %q: %w", ifname, err)
	}
	if ifc.Flags&net.FlagLoopback != 0 || len(ifc.HardwareAddr) != 6 {
		return fmt.Errorf("%s is not an Ethernet device: the emulation needs an Ethernet interface that runs XDP (a veth or a NIC): %w",
			ifname, devmemapi.ErrNotSupported)
	}
	return nil
}

// ifacePrefix gives addr the prefix length it has on the interface when the
// kernel has it configured (devmem.py's environments do), else /24 or /64.
func ifacePrefix(ifname string, addr netip.Addr) netip.Prefix {
	if ifc, err := net.InterfaceByName(ifname); err == nil {
		as, _ := ifc.Addrs()
		for _, a := range as {
			if ipn, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(ipn.IP); ok && ip.Unmap() == addr {
					ones, _ := ipn.Mask.Size()
					return netip.PrefixFrom(addr, ones)
				}
			}
		}
	}
	if addr.Is4() {
		return netip.PrefixFrom(addr, 24)
	}
	return netip.PrefixFrom(addr, 64)
}

// parseAddress mirrors ncdevmem's parse_address: IPv6, else IPv4 (which
// ncdevmem maps to ::ffff:a.b.c.d; the stack takes it unmapped).
func parseAddress(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, err
	}
	return a.Unmap(), nil
}

// mapped renders addr as ncdevmem's inet_ntop(AF_INET6, ...) does.
func mapped(addr netip.Addr) string {
	if addr.Is4() {
		return "::ffff:" + addr.String()
	}
	return addr.String()
}

// bindRX mirrors bind_rx_queue: it binds the queues (none for the probe's
// empty-array case) and prints what ncdevmem prints. rx-buf-size (-b) is
// checked as netdev_nl_bind_rx_doit checks it.
func (nc *ncdevmem) bindRX(queues []uint32, autorelease *bool) (devmemapi.Binding, error) {
	fail := func(err error) (devmemapi.Binding, error) {
		nc.logf("netdev_bind_rx: %v\n", errnoText(err))
		nc.logf("YNL failed: %v\n", err)
		return nil, err
	}
	if nc.rxBufSize != 0 {
		if b := nc.rxBufSize; b&(b-1) != 0 || b < ncPageSize {
			return fail(fmt.Errorf("rx_buf_size %d must be a power of 2 >= page size (%d): %w", b, ncPageSize, unix.EINVAL))
		}
		if nc.st == nil {
			return fail(fmt.Errorf("rx-buf-size: xdevmem's kernel backend does not send NETDEV_A_DMABUF_RX_BUF_SIZE: %w", unix.EOPNOTSUPP))
		}
	}
	b, err := nc.prov.BindRX(devmemapi.BindRXConfig{
		Ifindex: nc.ifindex, Queues: queues, Autorelease: autorelease, Size: ncNumPages * ncPageSize,
	})
	if err != nil {
		return fail(err)
	}
	nc.logf("got dmabuf id=%d\n", b.ID())
	if nc.rxBufSize > ncPageSize {
		nc.logf("xdevmem: rx-buf-size %d accepted; the emulated NIC still receives into one %d-byte UMEM frame per buffer, so no fragment exceeds %d bytes\n",
			nc.rxBufSize, ncPageSize, ncPageSize)
	}
	return b, nil
}

// queues mirrors create_queues: -q queues from -t.
func (nc *ncdevmem) queues() []uint32 {
	qs := make([]uint32, max(nc.numQueues, 0))
	for i := range qs {
		qs[i] = uint32(nc.startQueue + i)
	}
	return qs
}

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

// doClient mirrors do_client through the emulated devmem TX client
// (client.go): stdin is written into a TX dmabuf and sent from there with
// MSG_ZEROCOPY, -z splitting it into iovecs of at most that many bytes.
// Without -c the stack takes the interface's address of the server's
// family, the source the kernel would pick.
func (nc *ncdevmem) doClient() int {
	server, err := parseAddress(nc.serverIP)
	if err != nil {
		nc.prErr("parse server address")
		return 1
	}
	var local netip.Prefix
	if nc.clientIP != "" {
		a, err := parseAddress(nc.clientIP)
		if err != nil {
			nc.prErr("parse client address")
			return 1
		}
		local = ifacePrefix(nc.ifname, a)
	} else if local, err = sourcePrefix(nc.ifname, server); err != nil {
		nc.prErr("%v", err)
		return 1
	}
	nc.logf("xdevmem: backend emulated: the devmem TX client runs on the emulation\n")
	nc.logf("Connect to %s %d (via %s)\n", nc.serverIP, atoi(nc.port), nc.ifname)
	nc.flush()
	// ncdevmem's socket is AF_INET6 whatever the server's family
	// (parse_address maps IPv4 to ::ffff:a.b.c.d), so its completions
	// come as ipv6_recv_error writes them: give the client the same.
	args := []string{"-f", nc.ifname, "-s", mapped(server), "-c", local.Addr().String(),
		"-p", strconv.Itoa(atoi(nc.port)), "--prefix-len", strconv.Itoa(local.Bits()), "--verbose", "--quiet"}
	if nc.maxChunk > 0 {
		args = append(args, "-z", strconv.Itoa(nc.maxChunk))
	}
	if err := runClient(args); err != nil {
		var ee exitError
		if !errors.As(err, &ee) {
			nc.prErr("%v", err)
		}
		return 1
	}
	nc.logf("%s: tx ok\n", ncPrefix)
	return 0
}

// sourcePrefix picks the interface's configured address of server's family,
// preferring one on server's subnet, as the kernel's source selection would.
func sourcePrefix(ifname string, server netip.Addr) (netip.Prefix, error) {
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return netip.Prefix{}, err
	}
	as, _ := ifc.Addrs()
	var first netip.Prefix
	for _, a := range as {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, _ := netip.AddrFromSlice(ipn.IP)
		ip = ip.Unmap()
		if ip.Is4() != server.Is4() || ip.IsLinkLocalUnicast() {
			continue
		}
		ones, _ := ipn.Mask.Size()
		p := netip.PrefixFrom(ip, ones)
		if p.Masked().Contains(server) {
			return p, nil
		}
		if !first.IsValid() {
			first = p
		}
	}
	if first.IsValid() {
		return first, nil
	}
	return netip.Prefix{}, fmt.Errorf("no -c and no address of %s's family on %s: the emulated client needs one for its stack (give -c ADDR)", server, ifname)
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

// logf writes to stderr, where ncdevmem writes nearly everything.
func (nc *ncdevmem) logf(format string, args ...any) {
	fmt.Fprintf(nc.stderr, format, args...)
}

// prErr mirrors ncdevmem's pr_err: "ncdevmem: " and the message.
func (nc *ncdevmem) prErr(format string, args ...any) {
	fmt.Fprintf(nc.stderr, "%s: %s\n", ncPrefix, fmt.Sprintf(format, args...))
}

func (nc *ncdevmem) flush() {
	nc.stdout.Flush()
	nc.stderr.Flush()
}

// errnoText names err's errno as strerror does, or gives err.
func errnoText(err error) string {
	var en unix.Errno
	if errors.As(err, &en) {
		return en.Error()
	}
	return err.Error()
}

// getopt parses args as glibc's getopt(3) does with optstring: options may
// be clustered (-lv7), an option's argument attached (-v7) or the next word
// (-v 7), non-option words are set aside and returned (GNU permutation),
// and "--" ends the options. It calls opt for each option; an unknown option
// or a missing argument is reported on w as glibc does and passed to opt as
// '?'.
func getopt(args []string, optstring string, opt func(c byte, arg string), w io.Writer) (rest []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(rest, args[i+1:]...)
		}
		if len(a) < 2 || a[0] != '-' {
			rest = append(rest, a)
			continue
		}
		for j := 1; j < len(a); j++ {
			c := a[j]
			k := strings.IndexByte(optstring, c)
			if k < 0 || c == ':' {
				fmt.Fprintf(w, "%s: invalid option -- '%c'\n", ncPrefix, c)
				opt('?', "")
				continue
			}
			if k+1 >= len(optstring) || optstring[k+1] != ':' {
				opt(c, "")
				continue
			}
			switch {
			case j+1 < len(a):
				opt(c, a[j+1:])
			case i+1 < len(args):
				i++
				opt(c, args[i])
			default:
				fmt.Fprintf(w, "%s: option requires an argument -- '%c'\n", ncPrefix, c)
				opt('?', "")
			}
			break
		}
	}
	return rest
}

// atoi is C's atoi: leading blanks, a sign, then digits up to the first
// non-digit; anything else gives 0.
func atoi(s string) int {
	s = strings.TrimLeft(s, " \t\n\v\f\r")
	neg := false
	if s != "" && (s[0] == '+' || s[0] == '-') {
		neg = s[0] == '-'
		s = s[1:]
	}
	n := 0
	for i := 0; i < len(s) && s[i] >= '0' && s[i] <= '9'; i++ {
		if n < 1<<40 {
			n = n*10 + int(s[i]-'0')
		}
	}
	if neg {
		return -n
	}
	return n
}

var strtoulRE = regexp.MustCompile(`^[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)`)

// strtoul is C's strtoul(s, NULL, 0): decimal, 0x hex or 0 octal, the
// longest valid prefix, a minus sign negating modulo 2^64; ok is false on
// overflow (ERANGE).
func strtoul(s string) (v uint64, ok bool) {
	m := strtoulRE.FindStringSubmatch(s)
	if m == nil {
		return 0, true
	}
	v, err := strconv.ParseUint(m[2], 0, 64)
	if err != nil {
		return 0, false
	}
	if m[1] == "-" {
		v = -v
	}
	return v, true
}

// ringState is the part of ethtool's ring settings ncdevmem changes and
// restores (get_ring_config / restore_ring_config).
type ringState struct {
	split bool
	hds   uint32
}

// flowSpec is configure_flow_steering's ethtool ntuple rule.
type flowSpec struct {
	typ   string // tcp4 or tcp6
	src   string // -c, "" for the 3-tuple rule
	dst   string // the server address
	port  string // -p: dst-port, and src-port when src is set
	queue int
}

// ethtoolArgs renders the rule as ncdevmem's format string does (the empty
// fields of a 3-tuple rule leave their spaces).
func (f flowSpec) ethtoolArgs() string {
	srcIP, srcPort := "", ""
	if f.src != "" {
		srcIP, srcPort = "src-ip", "src-port"
	}
	sp := ""
	if f.src != "" {
		sp = f.port
	}
	return fmt.Sprintf("flow-type %s %s %s dst-ip %s %s %s dst-port %s queue %d",
		f.typ, srcIP, f.src, f.dst, srcPort, sp, f.port, f.queue)
}

// nicConfig is the NIC set-up ncdevmem performs with ethtool: on the
// emulated NIC (emuNIC) it changes the stack's settings, on a kernel devmem
// NIC (ethtoolNIC) it runs ethtool as ncdevmem does.
type nicConfig interface {
	// rxQueues is rxq_num: RX plus combined channels.
	rxQueues() (int, error)
	// rings returns the settings to restore later.
	rings() (ringState, error)
	// setHeaderSplit is configure_headersplit: on with hds-thresh 0, or
	// back to the default.
	setHeaderSplit(on bool) error
	// restoreRings is restore_ring_config.
	restoreRings(r ringState)
	// setRSS is configure_rss: ethtool -X IFACE equal N.
	setRSS(equal int) error
	// resetRSS is reset_rss: ethtool -X IFACE default.
	resetRSS()
	// addFlow is ethtool_add_flow; it returns the rule id.
	addFlow(f flowSpec) (int, error)
	// deleteFlow removes a rule (reset_flow_steering).
	deleteFlow(id int)
	// checkChangingChannels is check_changing_channels: it sets n RX and
	// n TX channels and, if that unexpectedly works, restores the old
	// count and returns nil.
	checkChangingChannels(n int) error
}

// emuNIC applies ncdevmem's ethtool set-up to the emulated NIC.
type emuNIC struct {
	nc *ncdevmem
	st *stack.Stack
}

var _ nicConfig = (*emuNIC)(nil)

// ran prints ncdevmem's "Running:" line for a command the emulation applies
// itself.
func (n *emuNIC) ran(format string, args ...any) {
	n.nc.logf("Running: "+format+" (applied to the emulated NIC)\n", args...)
}

func (n *emuNIC) rxQueues() (int, error) { return n.st.NIC().Channels(), nil }

func (n *emuNIC) rings() (ringState, error) {
	r := n.st.NIC().Rings()
	return ringState{split: r.TCPDataSplit, hds: r.HDSThresh}, nil
}

func (n *emuNIC) setHeaderSplit(on bool) error {
	r := n.st.NIC().Rings()
	r.TCPDataSplit = on
	if on {
		r.HDSThresh = 0
	}
	if err := n.st.NIC().SetRings(r); err != nil {
		n.nc.logf("YNL failed: %v\n", err)
		return err
	}
	state := "off"
	if on {
		state = "on"
	}
	n.nc.logf("TCP header split: %s\n", state)
	return nil
}

func (n *emuNIC) restoreRings(r ringState) {
	if err := n.st.NIC().SetRings(stack.Rings{TCPDataSplit: r.split, HDSThresh: r.hds}); err != nil {
		n.nc.logf("YNL restoring HDS cfg: %v\n", err)
	}
}

func (n *emuNIC) setRSS(equal int) error {
	n.ran("ethtool -X %s equal %d >&2", n.nc.ifname, equal)
	if err := n.st.NIC().SetRSS(equal); err != nil {
		n.nc.logf("Cannot set RX flow hash configuration: %v\n", err)
		return err
	}
	return nil
}

func (n *emuNIC) resetRSS() {
	n.ran("ethtool -X %s default >&2", n.nc.ifname)
	n.st.NIC().SetRSS(n.st.NIC().Channels())
}

func (n *emuNIC) addFlow(f flowSpec) (int, error) {
	n.ran("ethtool -N %s %s", n.nc.ifname, f.ethtoolArgs())
	r := stack.FlowRule{DstPort: uint16(atoi(f.port)), Queue: f.queue}
	if f.src != "" {
		src, err := parseAddress(f.src)
		if err != nil {
			n.nc.logf("ethtool: bad src-ip %q\n", f.src)
			return 0, err
		}
		r.Src, r.SrcPort = src, r.DstPort
	}
	id, err := n.st.NIC().AddFlowRule(r)
	if err != nil {
		n.nc.logf("rmgr: Cannot insert RX class rule: %v\n", err)
		return 0, err
	}
	n.nc.logf("Added flow rule with ID %d\n", id)
	return id, nil
}

func (n *emuNIC) deleteFlow(id int) {
	n.ran("ethtool -N %s delete %d", n.nc.ifname, id)
	n.st.NIC().DeleteFlowRule(id)
}

func (n *emuNIC) checkChangingChannels(c int) error {
	n.nc.logf("setting channel count rx:%d tx:%d\n", c, c)
	old := n.st.NIC().Channels()
	if err := n.st.NIC().SetChannels(c); err != nil {
		n.nc.logf("YNL set channels: %v\n", err)
		return err
	}
	// We were expecting a failure, go back to previous settings
	if err := n.st.NIC().SetChannels(old); err != nil {
		n.nc.logf("YNL un-setting channels: %v\n", err)
	}
	return nil
}

// ethtoolNIC runs ncdevmem's ethtool commands on a kernel devmem NIC. It
// needs such a NIC and is not exercised on machines without one.
type ethtoolNIC struct {
	nc *ncdevmem
}

var _ nicConfig = (*ethtoolNIC)(nil)

// run is ncdevmem's __run_command: the command through sh, its first line
// of output, and its status.
func (n *ethtoolNIC) run(format string, args ...any) (string, error) {
	cmd := fmt.Sprintf(format, args...)
	n.nc.logf("Running: %s\n", cmd)
	n.nc.flush()
	out, err := exec.Command("sh", "-c", cmd).Output()
	return string(out), err
}

// currentSettings returns the lines of ethtool's "Current hardware settings:" part.
func currentSettings(out string) []string {
	_, cur, ok := strings.Cut(out, "Current hardware settings:")
	if !ok {
		return nil
	}
	return strings.Split(cur, "\n")
}

// settingValue returns the number after "name:" in lines, 0 for n/a.
func settingValue(lines []string, name string) (int, bool) {
	for _, l := range lines {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), name+":"); ok {
			x, err := strconv.Atoi(strings.TrimSpace(v))
			return x, err == nil
		}
	}
	return 0, false
}

func (n *ethtoolNIC) channels() (rx, tx, combined int, err error) {
	out, err := n.run("ethtool -l %s", n.nc.ifname)
	if err != nil {
		return 0, 0, 0, err
	}
	cur := currentSettings(out)
	rx, _ = settingValue(cur, "RX")
	tx, _ = settingValue(cur, "TX")
	combined, _ = settingValue(cur, "Combined")
	return rx, tx, combined, nil
}

func (n *ethtoolNIC) rxQueues() (int, error) {
	rx, _, combined, err := n.channels()
	if err != nil {
		return -1, err
	}
	return rx + combined, nil
}

func (n *ethtoolNIC) rings() (ringState, error) {
	out, err := n.run("ethtool -g %s", n.nc.ifname)
	if err != nil {
		return ringState{}, err
	}
	cur := currentSettings(out)
	hds, _ := settingValue(cur, "HDS thresh")
	split := false
	for _, l := range cur {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "TCP data split:"); ok {
			split = strings.TrimSpace(v) == "on"
		}
	}
	return ringState{split: split, hds: uint32(hds)}, nil
}

func (n *ethtoolNIC) setHeaderSplit(on bool) error {
	if on {
		_, err := n.run("ethtool -G %s tcp-data-split on hds-thresh 0", n.nc.ifname)
		return err
	}
	_, err := n.run("ethtool -G %s tcp-data-split auto", n.nc.ifname)
	return err
}

func (n *ethtoolNIC) restoreRings(r ringState) {
	split := "auto"
	if r.split {
		split = "on"
	}
	n.run("ethtool -G %s tcp-data-split %s hds-thresh %d", n.nc.ifname, split, r.hds)
}

func (n *ethtoolNIC) setRSS(equal int) error {
	_, err := n.run("ethtool -X %s equal %d >&2", n.nc.ifname, equal)
	return err
}

func (n *ethtoolNIC) resetRSS() { n.run("ethtool -X %s default >&2", n.nc.ifname) }

var addedRuleRE = regexp.MustCompile(`Added rule with ID (\d+)`)

func (n *ethtoolNIC) addFlow(f flowSpec) (int, error) {
	out, err := n.run("ethtool -N %s %s", n.nc.ifname, f.ethtoolArgs())
	if err != nil {
		return 0, err
	}
	m := addedRuleRE.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("ethtool -N: no rule id in %q", out)
	}
	id, _ := strconv.Atoi(m[1])
	n.nc.logf("Added flow rule with ID %d\n", id)
	return id, nil
}

func (n *ethtoolNIC) deleteFlow(id int) { n.run("ethtool -N %s delete %d", n.nc.ifname, id) }

func (n *ethtoolNIC) checkChangingChannels(c int) error {
	n.nc.logf("setting channel count rx:%d tx:%d\n", c, c)
	rx, tx, combined, err := n.channels()
	if err != nil {
		return err
	}
	set := fmt.Sprintf("rx %d tx %d", c, c)
	if combined > 0 {
		set = fmt.Sprintf("combined %d", c)
		if rx > 0 || tx > 0 {
			set += " rx 0 tx 0"
		}
	}
	if _, err := n.run("ethtool -L %s %s", n.nc.ifname, set); err != nil {
		return err
	}
	// We were expecting a failure, go back to previous settings
	n.run("ethtool -L %s combined %d rx %d tx %d", n.nc.ifname, combined, rx, tx)
	return nil
}

// Package ncdevmem is xdevmem run as "ncdevmem" (a link of that name, or
// "xdevmem ncdevmem ARGS..."): it takes the kernel selftest's command line
// unchanged and behaves like tools/testing/selftests/drivers/net/hw/ncdevmem.c:
// the same getopt string, mode selection, NIC set-up order, per-fragment
// output, validation, exit codes, and the autorelease series' -a/-U. Where
// ncdevmem drives the NIC with ethtool, the emulated NIC's settings are set
// instead (stack.NIC: SetRings, SetRSS, AddFlowRule, SetChannels); on a kernel
// devmem NIC (chosen through compat.Open) the same ethtool commands run.
//
// The C program is the reference throughout; comments name the function of
// ncdevmem.c each piece mirrors.
package ncdevmem

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat"
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
	opts Options
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

// Options wires in what the command supplies.
type Options struct {
	// Client runs the devmem TX client (xdevmem client's command line) for
	// ncdevmem's client mode. An error with an ExitCode method was
	// reported already; others are printed.
	Client func(args []string) error
}

// Run is the "ncdevmem" command: ncdevmem.c's main(). It returns the exit
// status.
func Run(args []string, opts Options) int {
	if len(args) == 1 && (args[0] == "-h" || args[0] == "--help") {
		// Not an ncdevmem option (it would complain and go on); alone on
		// the command line it can only be a request for help.
		fmt.Print(ncUsage)
		return 0
	}
	nc := &ncdevmem{
		startQueue: -1,
		numQueues:  -1,
		stderr:     bufio.NewWriterSize(os.Stderr, 64<<10),
		stdout:     bufio.NewWriterSize(os.Stdout, 64<<10),
		opts:       opts,
	}
	defer nc.flush()
	b, err := compat.ParseBackend(os.Getenv(ncBackendEnv))
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", ncBackendEnv, err)
		return 1
	}
	nc.backend = b
	code := nc.main(args)
	nc.flush()
	if nc.prov != nil {
		nc.prov.Close()
	}
	return code
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
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
			return stack.New(stack.Config{Ifname: nc.ifname, Addr: addr, Queues: compat.ActiveRXQueues(nc.ifname), Channels: channels})
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
	n = min(compat.ActiveRXQueues(ifname), stack.MaxChannels)
	return n, fmt.Sprintf("the active RX queues of %s; %s=N sets another count", ifname, ncChannelsEnv), nil
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
		ps, _ := stack.InterfacePrefixes(ifc)
		for _, p := range ps {
			if p.Addr() == addr {
				return p
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

var _ nicConfig = (*emuNIC)(nil)

var _ nicConfig = (*ethtoolNIC)(nil)

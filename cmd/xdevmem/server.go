package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/xdevmem/xdevmem/compat"
	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/internal/harness"
	"github.com/xdevmem/xdevmem/internal/pattern"
	"github.com/xdevmem/xdevmem/stack"
)

type serverSummary struct {
	OK             bool    `json:"ok"`
	Backend        string  `json:"backend"`
	Error          string  `json:"error,omitempty"`
	Interrupted    string  `json:"interrupted,omitempty"`
	Peer           string  `json:"peer,omitempty"`
	Connections    int     `json:"connections"`
	Bytes          uint64  `json:"bytes"`
	Seconds        float64 `json:"seconds"`
	MBps           float64 `json:"mb_per_s"`
	Frags          uint64  `json:"frags"`
	DmabufBytes    uint64  `json:"dmabuf_bytes"`
	LinearBytes    uint64  `json:"linear_bytes"`
	PlainCalls     uint64  `json:"plain_recvmsg_calls"`
	TokensReturned uint64  `json:"tokens_returned"`
	Validated      bool    `json:"validated"`
	DmabufID       uint32  `json:"dmabuf_id"`
	Queue          int     `json:"queue"`
	// stackReport: modes, frames, drops and warnings (emulation only).
	stackReport
	// PerConn is one entry per connection served.
	PerConn []connSummary `json:"per_connection,omitempty"`
}

// connSummary is one served connection.
type connSummary struct {
	Peer        string  `json:"peer"`
	Bytes       uint64  `json:"bytes"`
	Seconds     float64 `json:"seconds"`
	Frags       uint64  `json:"frags"`
	DmabufBytes uint64  `json:"dmabuf_bytes"`
	LinearBytes uint64  `json:"linear_bytes"`
	PlainCalls  uint64  `json:"plain_recvmsg_calls"`
	Error       string  `json:"error,omitempty"`
}

// serverFlags are the server's command line, checked before anything is
// bound or listened on.
type serverFlags struct {
	ifname      string
	addr        netip.Addr
	prefixLen   int
	client      netip.Addr
	port        int
	period      int
	failLinear  bool
	first, nq   int
	autorelease *bool
	unbindWhen  int
	out         string
	umemSize    uint64
	hds         int
	lab         stack.Lab
	jsonOut     bool
	quiet       bool
	backend     compat.Backend
	connections int
	addrMode    stack.AddressMode
}

func parseServerFlags(args []string) (*serverFlags, error) {
	f := &serverFlags{umemSize: stack.DefaultRegionSize}
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	_ = fs.Bool("l", true, "listen (server mode; accepted for ncdevmem compatibility)")
	serverIP := fs.String("s", "", "the server's address, IPv4 or IPv6: IFACE's own (shared with the kernel) or one configured nowhere (dedicated)")
	clientIP := fs.String("c", "", "accept only connections from this client address (same family as -s)")
	fs.IntVar(&f.port, "p", 5201, "TCP port")
	fs.StringVar(&f.ifname, "f", "", "interface")
	fs.IntVar(&f.period, "v", 0, "validate the ncdevmem pattern with this period (0: off)")
	fs.BoolVar(&f.failLinear, "L", false, "fail if any payload arrives linear (not in the dmabuf)")
	fs.IntVar(&f.first, "t", 0, "first RX queue to bind; the server steers its port to it, as ncdevmem's ntuple rule")
	fs.IntVar(&f.nq, "q", 1, "number of RX queues to bind")
	labf := addLabFlags(fs, true)
	auto := autoreleaseFlag(fs, "autorelease `mode`: 0 or 1 (default: the binding's default)")
	fs.IntVar(&f.unbindWhen, "U", 0, "unbind the dmabuf: 0 at exit, 1 before the first recvmsg (which then fails with ENODEV with -a 0; a socket that received keeps its binding), 2 after the last recvmsg, before closing the socket")
	fs.StringVar(&f.out, "o", "", "write the received stream to FILE (- for stdout), read from the dmabuf at the fragment offsets")
	fs.IntVar(&f.prefixLen, "prefix-len", 0, "prefix length of -s (default 24 for IPv4, 64 for IPv6)")
	fs.Var(sizeValue{&f.umemSize}, "umem", "UMEM (emulated dmabuf) size")
	fs.BoolVar(&f.jsonOut, "json", false, "print the summary as JSON (on stderr when -o - is used)")
	fs.BoolVar(&f.quiet, "quiet", false, "no progress lines")
	backend := fs.String("backend", string(compat.BackendAuto), "auto (kernel devmem where the probe passes, else the emulation), kernel or emulated")
	addrMode := fs.String("address-mode", "auto", "shared (the address is the kernel's too: only the server's port comes to the stack), dedicated (the address is configured nowhere: the stack takes all its traffic), or auto: shared if IFACE has the address")
	fs.IntVar(&f.connections, "connections", 1, "connections to serve, at the same time, before exiting; 0 serves until interrupted")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: xdevmem server -f IFACE -s ADDR [flags]\n\n"+
			"Receives TCP connections through the devmem path, like ncdevmem -l, then exits (0 on success).\n"+
			"By default it is one-shot, as ncdevmem: it serves the first connection (from -c, if given) and\n"+
			"refuses every further one with a reset while it runs; --connections N serves N at the same time,\n"+
			"0 until interrupted. A connection whose data arrives without devmem control messages (not steered\n"+
			"to a bound queue) fails the run. Run it in the network namespace of IFACE.\n\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if f.ifname == "" || *serverIP == "" {
		fs.Usage()
		return nil, fmt.Errorf("-f IFACE and -s ADDR are required")
	}
	var err error
	if f.addr, err = netip.ParseAddr(*serverIP); err != nil {
		return nil, fmt.Errorf("-s %q: not an IPv4 or IPv6 address", *serverIP)
	}
	f.addr = f.addr.Unmap()
	bits := 32
	if f.addr.Is6() {
		bits = 128
	}
	if f.prefixLen == 0 {
		f.prefixLen = map[bool]int{false: 24, true: 64}[f.addr.Is6()]
	}
	if f.prefixLen < 1 || f.prefixLen > bits {
		return nil, fmt.Errorf("--prefix-len %d: want 1 to %d for %v", f.prefixLen, bits, f.addr)
	}
	if err := checkUnicast("-s", f.addr, f.prefixLen); err != nil {
		return nil, err
	}
	if *clientIP != "" {
		if f.client, err = netip.ParseAddr(*clientIP); err != nil {
			return nil, fmt.Errorf("-c %q: not an IPv4 or IPv6 address", *clientIP)
		}
		f.client = f.client.Unmap()
		if f.client.Is4() != f.addr.Is4() {
			return nil, fmt.Errorf("-c %v and -s %v are of different address families: no connection could ever match", f.client, f.addr)
		}
		if err := checkUnicast("-c", f.client, 0); err != nil {
			return nil, err
		}
		if f.client == f.addr {
			return nil, fmt.Errorf("-c %v is the server's own address", f.client)
		}
	}
	switch {
	case f.period != 0 && (f.period < 2 || f.period > 256):
		return nil, fmt.Errorf("-v %d: the period must be 2 to 256", f.period)
	case f.port <= 0 || f.port > 65535:
		return nil, fmt.Errorf("-p %d: not a port", f.port)
	case f.first < 0:
		return nil, fmt.Errorf("-t %d: a queue index is 0 or more", f.first)
	case f.nq < 1:
		return nil, fmt.Errorf("-q %d: need at least one queue", f.nq)
	case f.first+f.nq > stack.MaxChannels:
		return nil, fmt.Errorf("-t %d -q %d: queues beyond %d", f.first, f.nq, stack.MaxChannels-1)
	case f.unbindWhen < 0 || f.unbindWhen > 2:
		return nil, fmt.Errorf("-U %d: want 0, 1 or 2", f.unbindWhen)
	case f.connections < 0:
		return nil, fmt.Errorf("--connections %d: want 0 (until interrupted) or more", f.connections)
	case f.connections != 1 && f.unbindWhen != 0:
		return nil, fmt.Errorf("-U %d unbinds under one connection: use it with --connections 1", f.unbindWhen)
	case f.connections != 1 && f.out != "":
		return nil, fmt.Errorf("-o writes one stream: use it with --connections 1")
	}
	if err := checkUMEMFlag(f.umemSize, 0, 0); err != nil {
		return nil, err
	}
	if f.backend, err = compat.ParseBackend(*backend); err != nil {
		return nil, fmt.Errorf("--backend: %w", err)
	}
	if f.addrMode, err = stack.ParseAddressMode(*addrMode); err != nil {
		return nil, fmt.Errorf("--address-mode: %w", err)
	}
	if f.autorelease, err = boolFlag01(*auto, "a"); err != nil {
		return nil, err
	}
	if f.lab, f.hds, err = labf.lab(); err != nil {
		return nil, err
	}
	return f, nil
}

// serverRun is one run of the server: what it serves and what it counted.
type serverRun struct {
	f      *serverFlags
	prov   devmemapi.Provider
	st     *stack.Stack // nil on the kernel backend
	b      devmemapi.Binding
	ln     devmemapi.Listener
	w      *bufio.Writer
	got    atomic.Uint64 // bytes received, all connections (progress)
	signal atomic.Value  // os.Signal that interrupted the run

	mu     sync.Mutex
	sum    serverSummary // guarded by mu
	conns  map[devmemapi.Conn]struct{}
	first  time.Time
	last   time.Time
	errs   []error
	alerts []string
}

func runServer(args []string) error {
	f, err := parseServerFlags(args)
	if err != nil {
		return err
	}
	if err := requireRoot("server"); err != nil {
		return err
	}
	ifc, err := lookupInterface(f.ifname)
	if err != nil {
		return err
	}
	r := &serverRun{f: f, conns: map[devmemapi.Conn]struct{}{}}
	r.sum.Queue = f.first
	// The output file is made before anything listens: a bad path must
	// fail before a client connects.
	var outFile *os.File
	switch f.out {
	case "":
	case "-":
		r.w = bufio.NewWriterSize(os.Stdout, 1<<20)
	default:
		if outFile, err = os.Create(f.out); err != nil {
			return fmt.Errorf("-o: %w", err)
		}
		defer outFile.Close()
		r.w = bufio.NewWriterSize(outFile, 1<<20)
	}
	prov, choice, err := compat.Open(compat.Options{
		Backend: f.backend,
		Ifname:  f.ifname,
		Emulated: func() (devmemapi.Provider, error) {
			return stack.New(stack.Config{
				Ifname: f.ifname, Addr: netip.PrefixFrom(f.addr, f.prefixLen), RegionSize: f.umemSize,
				Channels: max(f.first+f.nq, compat.ActiveRXQueues(f.ifname)), HDSThresh: f.hds, Lab: f.lab,
				OnAlert: r.alert, AddressMode: f.addrMode,
			})
		},
	})
	if choice != nil {
		fmt.Fprintf(os.Stderr, "xdevmem server: backend %s: %s\n", choice.Backend, choice.Reason)
	}
	if err != nil {
		return err
	}
	defer prov.Close()
	r.prov = prov
	r.sum.Backend = prov.Name()
	r.st, _ = prov.(*stack.Stack)

	sigc := make(chan os.Signal, 2)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigc)
	go r.onSignal(sigc)

	if err := r.setup(ifc); err != nil {
		return err
	}
	serveErr := r.serve()
	return r.finish(serveErr)
}

// setup binds the queues, steers the port to the first of them and
// listens.
func (r *serverRun) setup(ifc *net.Interface) error {
	f := r.f
	queues := make([]uint32, f.nq)
	for i := range queues {
		queues[i] = uint32(f.first + i)
	}
	b, err := r.prov.BindRX(devmemapi.BindRXConfig{Ifindex: ifc.Index, Queues: queues, Autorelease: f.autorelease, Size: f.umemSize})
	if err != nil {
		return err
	}
	r.b = b
	r.sum.DmabufID = b.ID()
	r.sum.modes(r.st, b, f.autorelease != nil)
	fmt.Fprintf(os.Stderr, "xdevmem server: token mode autorelease=%d (%s)\n", b2i(r.sum.Autorelease), r.sum.AutoreleaseWhy)
	steer := "the kernel backend: steer the flow to the bound queue with an ntuple rule (ethtool -N), as ncdevmem does"
	if r.st != nil {
		// As ncdevmem's ntuple rule: this server's flows go to the first
		// bound queue, whatever the RSS spread would pick.
		rule := stack.FlowRule{DstPort: uint16(f.port), Queue: f.first}
		if f.client.IsValid() {
			rule.Src = f.client
		}
		if _, err := r.st.NIC().AddFlowRule(rule); err != nil {
			return fmt.Errorf("steer port %d to queue %d: %w", f.port, f.first, err)
		}
		steer = fmt.Sprintf("port %d steered to queue %d", f.port, f.first)
		fmt.Fprintf(os.Stderr, "xdevmem server: %s address: %s\n", r.sum.AddressMode, r.sum.AddressWhy)
	}
	ln, err := r.prov.Listen(netip.AddrPortFrom(f.addr, uint16(f.port)))
	if err != nil {
		return err
	}
	r.ln = ln
	detail := ""
	if r.st != nil {
		detail = fmt.Sprintf(", XDP %s, UMEM %s", r.st.XDPMode(), humanBytes(r.st.DmabufSize()))
	}
	fmt.Fprintf(os.Stderr, "xdevmem server: listening on %s (%s, %s backend, dmabuf id %d on queues %d-%d, %s%s)\n",
		netip.AddrPortFrom(f.addr, uint16(f.port)), f.ifname, r.prov.Name(), b.ID(), f.first, f.first+f.nq-1, steer, detail)
	return nil
}

// onSignal ends the run on the first signal: the listener and every
// connection close, the receive loops return what they had, and the run
// reports and exits 130. A second signal exits at once.
func (r *serverRun) onSignal(sigc <-chan os.Signal) {
	s, ok := <-sigc
	if !ok {
		return
	}
	r.signal.Store(s)
	fmt.Fprintf(os.Stderr, "xdevmem server: %v: closing the connections, unbinding and exiting\n", s)
	r.closeAll()
	if _, ok := <-sigc; ok {
		r.prov.Close()
		os.Exit(130)
	}
}

func (r *serverRun) closeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ln != nil {
		r.ln.Close()
	}
	for c := range r.conns {
		c.Close()
	}
}

func (r *serverRun) interrupted() os.Signal {
	s, _ := r.signal.Load().(os.Signal)
	return s
}

// alert prints a stalled-flow warning from the stack, once per reason.
func (r *serverRun) alert(a stack.Alert) {
	fmt.Fprintf(os.Stderr, "xdevmem server: warning: %v\n", a)
	r.mu.Lock()
	r.alerts = append(r.alerts, a.String())
	r.mu.Unlock()
}

// serve accepts connections and receives each on its own goroutine: the
// first one only by default (the listener then closes, so further
// connections are reset), --connections of them, or until interrupted.
func (r *serverRun) serve() error {
	f := r.f
	stopProgress := r.progress()
	defer stopProgress()
	var wg sync.WaitGroup
	defer wg.Wait()
	served := 0
	for f.connections == 0 || served < f.connections {
		c, err := r.ln.Accept()
		if err != nil {
			if r.interrupted() != nil {
				return nil
			}
			return err
		}
		if ra, _ := c.RemoteAddr().(*net.TCPAddr); f.client.IsValid() && (ra == nil || !ra.IP.Equal(f.client.AsSlice())) {
			fmt.Fprintf(os.Stderr, "xdevmem server: refusing %v (not the -c client %v)\n", c.RemoteAddr(), f.client)
			c.Close()
			continue
		}
		served++
		if served == f.connections {
			// One-shot (or the last of N): nobody else is served, so
			// nobody else may connect and send into the void.
			r.ln.Close()
		}
		r.mu.Lock()
		if r.interrupted() != nil {
			r.mu.Unlock()
			c.Close()
			return nil
		}
		r.conns[c] = struct{}{}
		r.mu.Unlock()
		fmt.Fprintf(os.Stderr, "xdevmem server: connection from %v\n", c.RemoteAddr())
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.receive(c)
		}()
	}
	return nil
}

// progress prints the bytes received every two seconds until stopped.
func (r *serverRun) progress() (stop func()) {
	if r.f.quiet {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				fmt.Fprintf(os.Stderr, "xdevmem server: %s received\n", humanMB(r.got.Load()))
			case <-done:
				return
			}
		}
	}()
	return func() { close(done) }
}

// receive reads one connection to its end and records the outcome.
func (r *serverRun) receive(conn devmemapi.Conn) {
	f := r.f
	var v *pattern.Validator
	if f.period > 0 {
		v = pattern.NewValidator(f.period)
	}
	if f.unbindWhen == 1 {
		// Let data arrive into the dmabuf first, as ncdevmem's peer has
		// sent by then; then unbind and receive.
		if c, ok := conn.(interface{ Queued() int }); ok {
			for deadline := time.Now().Add(5 * time.Second); c.Queued() == 0 && time.Now().Before(deadline); {
				time.Sleep(5 * time.Millisecond)
			}
		}
		r.b.Close()
		fmt.Fprintln(os.Stderr, "xdevmem server: unbound before recvmsg (-U 1)")
	}
	var linearErr error
	start := time.Now()
	res, rerr := harness.Receive(conn, r.b, harness.ReceiveOptions{
		OnFrag: func(fr devmemapi.Frag) {
			if fr.Linear && f.failLinear && linearErr == nil {
				linearErr = fmt.Errorf("received %d linear bytes with -L", fr.FragSize)
			}
		},
		Sink: func(p []byte) error {
			r.got.Add(uint64(len(p)))
			if v != nil {
				if err := v.Check(p); err != nil {
					return err
				}
			}
			if r.w != nil {
				if _, err := r.w.Write(p); err != nil {
					return err
				}
			}
			return linearErr
		},
	})
	if f.unbindWhen == 2 {
		r.b.Close()
		fmt.Fprintln(os.Stderr, "xdevmem server: unbound after recvmsg, before closing the socket (-U 2)")
	}
	peer := conn.RemoteAddr().String()
	conn.Close()
	if rerr == nil && linearErr != nil {
		rerr = linearErr
	}
	if rerr == nil && res.Plain > 0 && f.hds == 0 {
		// ncdevmem exits with "flow steering error" on the first such
		// call; a devmem server must never pass without devmem.
		rerr = fmt.Errorf("%d recvmsg calls returned data without devmem control messages: the flow was not steered to a bound queue (flow steering error)", res.Plain)
	}
	if rerr != nil && r.interrupted() != nil && errors.Is(rerr, net.ErrClosed) {
		rerr = nil // the signal closed it; the summary says so
	}
	end := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.conns, conn)
	if r.first.IsZero() || start.Before(r.first) {
		r.first = start
	}
	r.last = end
	s := &r.sum
	s.Connections++
	if s.Peer == "" {
		s.Peer = peer
	}
	s.Bytes += res.Bytes
	s.Frags += res.Frags
	s.DmabufBytes += res.DmabufBytes
	s.LinearBytes += res.LinearBytes
	s.PlainCalls += res.Plain
	s.TokensReturned += res.Freed
	cs := connSummary{Peer: peer, Bytes: res.Bytes, Seconds: res.Elapsed.Seconds(), Frags: res.Frags,
		DmabufBytes: res.DmabufBytes, LinearBytes: res.LinearBytes, PlainCalls: res.Plain}
	if rerr != nil {
		cs.Error = rerr.Error()
		r.errs = append(r.errs, fmt.Errorf("connection from %s: %w", peer, rerr))
	}
	s.PerConn = append(s.PerConn, cs)
}

// finish closes everything, writes the summary and picks the exit status.
func (r *serverRun) finish(serveErr error) error {
	f := r.f
	var flushErr error
	if r.w != nil {
		flushErr = r.w.Flush()
	}
	r.b.Close()
	r.ln.Close()
	sum := r.sum
	if r.st != nil {
		stats := r.st.Stats()
		r.st.Close()
		acct := r.st.Accounting()
		if acct.Free != acct.Frames {
			fmt.Fprintf(os.Stderr, "xdevmem server: not every frame is free after close: %v\n", acct)
		}
		r.mu.Lock()
		sum.counters(stats, acct, r.alerts)
		r.mu.Unlock()
	}
	r.prov.Close()
	r.mu.Lock()
	errs := append([]error(nil), r.errs...)
	if !r.first.IsZero() {
		sum.Seconds = r.last.Sub(r.first).Seconds()
	}
	r.mu.Unlock()
	if sum.Connections == 1 && len(sum.PerConn) == 1 && sum.PerConn[0].Seconds > 0 {
		sum.Seconds = sum.PerConn[0].Seconds // from the first byte, as before
	}
	if sum.Seconds > 0 {
		sum.MBps = float64(sum.Bytes) / 1e6 / sum.Seconds
	}
	if serveErr != nil {
		errs = append(errs, serveErr)
	}
	if flushErr != nil {
		errs = append(errs, fmt.Errorf("-o: %w", flushErr))
	}
	sig := r.interrupted()
	if sig != nil {
		sum.Interrupted = sig.String()
		errs = append(errs, fmt.Errorf("interrupted by %v after %d bytes on %d connections", sig, sum.Bytes, sum.Connections))
	} else if sum.Connections == 0 && serveErr == nil {
		errs = append(errs, errors.New("no connection served"))
	}
	runErr := errors.Join(errs...)
	sum.OK = runErr == nil
	if runErr != nil {
		sum.Error = runErr.Error()
	}
	sum.Validated = sum.OK && f.period > 0
	report := io.Writer(os.Stdout)
	if f.out == "-" {
		report = os.Stderr
	}
	if f.jsonOut {
		writeJSON(report, sum)
	} else {
		fmt.Fprintf(os.Stderr, "xdevmem server: %d bytes from %s in %.3f s (%.1f MB/s): %d dmabuf frags, %d linear bytes, %d tokens returned\n",
			sum.Bytes, peersText(sum), sum.Seconds, sum.MBps, sum.Frags, sum.LinearBytes, sum.TokensReturned)
		if sum.Drops != nil {
			fmt.Fprintf(os.Stderr, "xdevmem server: drops: %v\n", *sum.Drops)
		}
		if sum.Validated {
			fmt.Fprintln(os.Stderr, "Validated buffer")
		}
	}
	if runErr != nil {
		fmt.Fprintf(os.Stderr, "xdevmem server: FAILED: %v\n", runErr)
		if sig != nil {
			return exitError{130}
		}
		return exitError{1}
	}
	if !f.jsonOut {
		fmt.Fprintln(os.Stderr, "ncdevmem: ok")
	}
	return nil
}

func peersText(s serverSummary) string {
	if s.Connections <= 1 {
		return s.Peer
	}
	return fmt.Sprintf("%d connections", s.Connections)
}

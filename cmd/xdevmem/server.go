package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
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
	Peer           string  `json:"peer,omitempty"`
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
	XDPMode        string  `json:"xdp_mode"`
	FramesFree     uint32  `json:"frames_free_after_close"`
	Frames         uint32  `json:"frames"`
	DmabufCopied   uint64  `json:"dmabuf_bytes_copied"`
	ChecksumDrops  uint64  `json:"checksum_drops"`
	FillEmptyDrops uint64  `json:"fill_ring_empty_drops"`
}

func runServer(args []string) error {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	_ = fs.Bool("l", true, "listen (server mode; accepted for ncdevmem compatibility)")
	serverIP := fs.String("s", "", "the stack's IPv4 address (not configured in the kernel: the XDP program takes its traffic)")
	clientIP := fs.String("c", "", "accept only connections from this client address")
	port := fs.Int("p", 5201, "TCP port")
	ifname := fs.String("f", "", "interface")
	period := fs.Int("v", 0, "validate the ncdevmem pattern with this period (0: off)")
	failLinear := fs.Bool("L", false, "fail if any payload arrives linear (not in the dmabuf)")
	first := fs.Int("t", 0, "first RX queue to bind")
	nq := fs.Int("q", 1, "number of RX queues to bind")
	auto := fs.Int("a", -1, "autorelease mode 0 or 1 (default: the binding's default)")
	unbindWhen := fs.Int("U", 0, "unbind the dmabuf: 0 at exit, 1 before the first recvmsg (which then fails with ENODEV), 2 after the last recvmsg, before closing the socket")
	out := fs.String("o", "", "write the received stream to FILE (- for stdout), read from the dmabuf at the fragment offsets")
	prefixLen := fs.Int("prefix-len", 24, "prefix length of -s")
	umemSize := uint64(stack.DefaultRegionSize)
	fs.Var(sizeValue{&umemSize}, "umem", "UMEM (emulated dmabuf) size")
	hds := fs.Int("hds-thresh", 0, "header-split threshold: smaller payloads arrive linear")
	trust := fs.Bool("trust-checksum", false, "skip software checksum verification (benchmarking only)")
	jsonOut := fs.Bool("json", false, "print the summary as JSON (on stderr when -o - is used)")
	quiet := fs.Bool("quiet", false, "no progress lines")
	faultSpec := fs.String("faults", "", "inject faults into received frames, e.g. drop=0.05,reorder=0.1,dup=0.02,corrupt=0.01,truncate=0.001")
	seed := fs.Uint64("seed", 1, "seed for --faults")
	backend := fs.String("backend", compat.BackendAuto, "auto (kernel devmem where the probe passes, else the emulation), kernel or emulated")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: xdevmem server -f IFACE -s ADDR [flags]\n\nReceives one TCP connection through the emulated devmem path, like ncdevmem -l, then exits\n(0 on success). Run it in the network namespace of IFACE.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return exitError{2}
	}
	if *ifname == "" || *serverIP == "" {
		fs.Usage()
		return fmt.Errorf("-f IFACE and -s ADDR are required")
	}
	addr, err := netip.ParseAddr(*serverIP)
	if err != nil || !addr.Is4() {
		return fmt.Errorf("-s %q: need an IPv4 address", *serverIP)
	}
	var client netip.Addr
	if *clientIP != "" {
		if client, err = netip.ParseAddr(*clientIP); err != nil {
			return fmt.Errorf("-c %q: %v", *clientIP, err)
		}
	}
	if *period != 0 && (*period < 2 || *period > 256) {
		return fmt.Errorf("-v %d: the period must be 2 to 256", *period)
	}
	if *port <= 0 || *port > 65535 {
		return fmt.Errorf("-p %d: not a port", *port)
	}
	if *nq < 1 {
		return fmt.Errorf("-q %d: need at least one queue", *nq)
	}
	if err := checkUMEMFlag(umemSize, 0, 0); err != nil {
		return err
	}
	autoP, faults, err := receiveFlags(*auto, *faultSpec, *seed)
	if err != nil {
		return err
	}
	if err := requireRoot("server"); err != nil {
		return err
	}

	sum := serverSummary{}
	prov, choice, err := compat.Open(compat.Options{
		Backend: *backend,
		Ifname:  *ifname,
		Emulated: func() (devmemapi.Provider, error) {
			return stack.New(stack.Config{
				Ifname: *ifname, Addr: netip.PrefixFrom(addr, *prefixLen), RegionSize: umemSize,
				Channels: max(*first+*nq, stack.RXQueueCount(*ifname)), HDSThresh: *hds, TrustChecksum: *trust, Faults: faults,
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
	sum.Backend = prov.Name()
	st, _ := prov.(*stack.Stack) // nil on the kernel backend
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigc
		fmt.Fprintf(os.Stderr, "xdevmem server: %v: unbinding and exiting\n", s)
		prov.Close()
		os.Exit(130)
	}()
	queues := make([]uint32, *nq)
	for i := range queues {
		queues[i] = uint32(*first + i)
	}
	ifc, err := net.InterfaceByName(*ifname)
	if err != nil {
		return err
	}
	b, err := prov.BindRX(devmemapi.BindRXConfig{Ifindex: ifc.Index, Queues: queues, Autorelease: autoP, Size: umemSize})
	if err != nil {
		return err
	}
	defer b.Close()
	ln, err := prov.Listen(netip.AddrPortFrom(addr, uint16(*port)))
	if err != nil {
		return err
	}
	defer ln.Close()
	sum.DmabufID = b.ID()
	detail := ""
	if st != nil {
		sum.XDPMode = st.XDPMode()
		detail = fmt.Sprintf(", XDP %s, UMEM %s", st.XDPMode(), humanBytes(st.Region().Size()))
	}
	fmt.Fprintf(os.Stderr, "xdevmem server: listening on %s:%d (%s, %s backend, dmabuf id %d%s)\n",
		addr, *port, *ifname, prov.Name(), b.ID(), detail)

	var conn devmemapi.Conn
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		ra, _ := c.RemoteAddr().(*net.TCPAddr)
		if client.IsValid() && (ra == nil || !ra.IP.Equal(client.AsSlice())) {
			fmt.Fprintf(os.Stderr, "xdevmem server: refusing %v (not the -c client %v)\n", c.RemoteAddr(), client)
			c.Close()
			continue
		}
		conn = c
		break
	}
	sum.Peer = conn.RemoteAddr().String()
	fmt.Fprintf(os.Stderr, "xdevmem server: connection from %v\n", conn.RemoteAddr())

	var w *bufio.Writer
	var outFile *os.File
	switch *out {
	case "":
	case "-":
		w = bufio.NewWriterSize(os.Stdout, 1<<20)
	default:
		if outFile, err = os.Create(*out); err != nil {
			return err
		}
		defer outFile.Close()
		w = bufio.NewWriterSize(outFile, 1<<20)
	}
	var v *pattern.Validator
	if *period > 0 {
		v = pattern.NewValidator(*period)
	}
	var got uint64
	done := make(chan struct{})
	if !*quiet {
		go func() {
			t := time.NewTicker(2 * time.Second)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					fmt.Fprintf(os.Stderr, "xdevmem server: %s received\n", humanMB(got))
				case <-done:
					return
				}
			}
		}()
	}
	if *unbindWhen < 0 || *unbindWhen > 2 {
		return fmt.Errorf("-U %d: want 0, 1 or 2", *unbindWhen)
	}
	if *unbindWhen == 1 {
		// Let data arrive into the dmabuf first, as ncdevmem's peer has
		// sent by then; then unbind and receive.
		if c, ok := conn.(interface{ Queued() int }); ok {
			for deadline := time.Now().Add(5 * time.Second); c.Queued() == 0 && time.Now().Before(deadline); {
				time.Sleep(5 * time.Millisecond)
			}
		}
		b.Close()
		fmt.Fprintln(os.Stderr, "xdevmem server: unbound before recvmsg (-U 1)")
	}
	var linearErr error
	res, rerr := harness.Receive(conn, b, harness.ReceiveOptions{
		OnFrag: func(f devmemapi.Frag) {
			if f.Linear && *failLinear && linearErr == nil {
				linearErr = fmt.Errorf("received %d linear bytes with -L", f.FragSize)
			}
		},
		Sink: func(p []byte) error {
			got += uint64(len(p))
			if v != nil {
				if err := v.Check(p); err != nil {
					return err
				}
			}
			if w != nil {
				if _, err := w.Write(p); err != nil {
					return err
				}
			}
			return linearErr
		},
	})
	close(done)
	if *unbindWhen == 2 {
		b.Close()
		fmt.Fprintln(os.Stderr, "xdevmem server: unbound after recvmsg, before closing the socket (-U 2)")
	}
	conn.Close()
	if w != nil {
		if err := w.Flush(); err != nil && rerr == nil {
			rerr = err
		}
	}
	if rerr == nil && linearErr != nil {
		rerr = linearErr
	}
	if rerr == nil && *failLinear && res.Plain > 0 {
		rerr = fmt.Errorf("%d recvmsg calls returned data without devmem control messages (flow steering error)", res.Plain)
	}
	b.Close()
	ln.Close()
	if st != nil {
		stats := st.Stats()
		st.Close()
		acct := st.Region().Snapshot()
		sum.FramesFree, sum.Frames = acct.Free, acct.Frames
		sum.DmabufCopied = stats.DmabufBytesCopied
		sum.ChecksumDrops = stats.DropBadIPChecksum + stats.DropBadTCPChecksum
		sum.FillEmptyDrops = stats.XSK.RxFillRingEmpty
	}
	prov.Close()
	sum.Bytes, sum.Frags, sum.DmabufBytes, sum.LinearBytes = res.Bytes, res.Frags, res.DmabufBytes, res.LinearBytes
	sum.PlainCalls, sum.TokensReturned = res.Plain, res.Freed
	sum.Validated = v != nil && rerr == nil
	if res.Elapsed > 0 {
		sum.Seconds = res.Elapsed.Seconds()
		sum.MBps = float64(res.Bytes) / 1e6 / sum.Seconds
	}
	sum.OK = rerr == nil
	if rerr != nil {
		sum.Error = rerr.Error()
	}
	report := io.Writer(os.Stdout)
	if *out == "-" {
		report = os.Stderr
	}
	if *jsonOut {
		writeJSON(report, sum)
	} else {
		fmt.Fprintf(os.Stderr, "xdevmem server: %d bytes from %s in %.3f s (%.1f MB/s): %d dmabuf frags, %d linear bytes, %d tokens returned\n",
			sum.Bytes, sum.Peer, sum.Seconds, sum.MBps, sum.Frags, sum.LinearBytes, sum.TokensReturned)
		if v != nil && rerr == nil {
			fmt.Fprintln(os.Stderr, "Validated buffer")
		}
	}
	if rerr != nil {
		fmt.Fprintf(os.Stderr, "xdevmem server: FAILED: %v\n", rerr)
		return exitError{1}
	}
	if !*jsonOut {
		fmt.Fprintln(os.Stderr, "ncdevmem: ok")
	}
	return nil
}

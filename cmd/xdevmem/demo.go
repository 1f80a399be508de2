package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/internal/harness"
	"github.com/xdevmem/xdevmem/internal/netns"
	"github.com/xdevmem/xdevmem/internal/pattern"
	"github.com/xdevmem/xdevmem/stack"
)

// demoPrefix names the demo's namespaces; leftovers of a killed demo are
// removed at the next start.
const demoPrefix = "xdm"

type demoSummary struct {
	OK              bool    `json:"ok"`
	Error           string  `json:"error,omitempty"`
	Bytes           uint64  `json:"bytes"`
	Seconds         float64 `json:"seconds"`
	MBps            float64 `json:"mb_per_s"`
	Gbps            float64 `json:"gbit_per_s"`
	Frags           uint64  `json:"frags"`
	DmabufBytes     uint64  `json:"dmabuf_bytes"`
	LinearBytes     uint64  `json:"linear_bytes"`
	TokensReturned  uint64  `json:"tokens_returned"`
	TokensOut       int     `json:"tokens_outstanding"`
	ValidationErrs  int     `json:"validation_errors"`
	KernelMBps      float64 `json:"kernel_tcp_mb_per_s,omitempty"`
	KernelRatio     float64 `json:"devmem_to_kernel_ratio,omitempty"`
	UMEMBytes       uint64  `json:"umem_bytes"`
	MTU             int     `json:"mtu"`
	ValidatePeriod  int     `json:"validate_period"`
	PeerNamespace   string  `json:"peer_namespace"`
	StackNamespace  string  `json:"stack_namespace"`
	StackAddress    string  `json:"stack_address"`
	ReceiveSyscalls uint64  `json:"recvmsg_calls"`
	RxFrames        uint64  `json:"rx_frames"`
	TCPSegments     uint64  `json:"tcp_segments_after_gro"`
	TxFrames        uint64  `json:"tx_frames"`
	stackReport
	FaultSpec string           `json:"faults,omitempty"`
	Faults    stack.FaultStats `json:"faults_injected"`
}

func runDemo(args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	size := uint64(1 << 30)
	umemSize := uint64(stack.DefaultRegionSize)
	fs.Var(sizeValue{&size}, "size", "bytes the kernel client sends")
	fs.Var(sizeValue{&umemSize}, "umem", "UMEM (emulated dmabuf) size")
	mtu := fs.Int("mtu", 1500, "veth MTU (at most 3506 without multi-buffer XDP)")
	period := fs.Int("v", 7, "validation pattern period, as ncdevmem -v")
	labf := addLabFlags(fs, true)
	auto := autoreleaseFlag(fs, "autorelease `mode`: 0 (tokens per binding) or 1 (per socket); default: the binding's default")
	rcvbuf := uint64(0)
	fs.Var(sizeValue{&rcvbuf}, "rcvbuf", "TCP receive buffer (window) of the stack's connection (default: sized from the UMEM)")
	noGRO := fs.Bool("no-gro", false, "do not coalesce segments before TCP")
	ipv6 := fs.Bool("ipv6", false, "use IPv6 addresses (neighbour discovery instead of ARP)")
	addrMode := fs.String("address-mode", "shared", "shared: the stack's address is configured on its interface too, as on a real host (the XDP program takes only the stack's port); dedicated: configured nowhere (it takes all of the address's traffic)")
	compare := fs.Bool("compare", false, "also measure the kernel's own TCP receive over the same veth, side by side")
	jsonOut := fs.Bool("json", false, "print the summary as JSON")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the transfer to FILE (go tool pprof FILE)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: xdevmem demo [flags]\n\nBuilds two network namespaces joined by a veth pair, sends the ncdevmem -v pattern from a\nkernel TCP client, receives it through the emulated devmem path, validates every byte at\nthe fragment offsets in the dmabuf, returns every token, and removes everything it made.\n\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *period < 2 || *period > 256 {
		return fmt.Errorf("-v %d: the period must be 2 to 256", *period)
	}
	// Everything the stack would refuse later, refused now with the reason.
	if err := stack.CheckMTU(*mtu, *ipv6); err != nil {
		return fmt.Errorf("--mtu %d: %w", *mtu, err)
	}
	if err := checkUMEMFlag(umemSize, *mtu, 1); err != nil {
		return err
	}
	autoP, err := boolFlag01(*auto, "a")
	if err != nil {
		return err
	}
	lab, hds, err := labf.lab()
	if err != nil {
		return err
	}
	lab.NoGRO = *noGRO
	faults := lab.Faults
	mode, err := stack.ParseAddressMode(*addrMode)
	if err != nil || mode == stack.AddressAuto {
		return fmt.Errorf("--address-mode %q: want shared or dedicated", *addrMode)
	}
	if err := requireRoot("demo"); err != nil {
		return err
	}
	if err := netns.Cleanup(demoPrefix); err != nil {
		fmt.Fprintf(os.Stderr, "xdevmem demo: removing leftovers of an earlier run: %v\n", err)
	}

	// Signals are caught from here on: one that comes during the set-up
	// stops the run as soon as the set-up is done.
	sigc := make(chan os.Signal, 2)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigc)
	var alertMu sync.Mutex
	var alerts []string
	onAlert := func(a stack.Alert) {
		fmt.Fprintf(os.Stderr, "xdevmem demo: warning: %v\n", a)
		alertMu.Lock()
		alerts = append(alerts, a.String())
		alertMu.Unlock()
	}
	w, err := harness.New(harness.Options{
		Prefix:      demoPrefix,
		MTU:         *mtu,
		IPv6:        *ipv6,
		Shared:      mode == stack.AddressShared,
		Autorelease: autoP,
		Stack: stack.Config{RegionSize: umemSize, HDSThresh: hds, RcvBuf: int(rcvbuf), AddressMode: mode, OnAlert: onAlert,
			Lab: lab},
	})
	if err != nil {
		return fmt.Errorf("set up: %w", err)
	}
	// A signal stops the transfer; the rest of the run then removes what it
	// made and prints the summary of what happened so far, as after a
	// failure, and the process exits 130. A second signal, or a cleanup
	// that takes longer than 10s, removes everything at once.
	pair := w.Pair
	stop := make(chan struct{})
	var caught atomic.Value // os.Signal
	closed := make(chan struct{})
	defer close(closed)
	go func() {
		select {
		case s := <-sigc:
			caught.Store(s)
			fmt.Fprintf(os.Stderr, "\nxdevmem demo: %s: stopping the transfer, removing namespaces and XDP program\n", sigName(s))
			close(stop)
		case <-closed:
			return
		}
		select {
		case s := <-sigc:
			fmt.Fprintf(os.Stderr, "xdevmem demo: %s again: removing everything now\n", sigName(s))
		case <-time.After(10 * time.Second):
			fmt.Fprintf(os.Stderr, "xdevmem demo: cleanup takes too long: removing everything now\n")
		case <-closed:
			return
		}
		w.Stack.Close()
		pair.Close()
		os.Exit(130)
	}()
	fmt.Fprintf(os.Stderr, "xdevmem demo: %s (namespace %s) sends %d bytes to %s (namespace %s)\n",
		pair.PeerAddr.Addr(), pair.Peer.Name, size, w.StackAddr(), pair.Emu.Name)

	sum := demoSummary{
		Bytes: size, MTU: *mtu, UMEMBytes: w.Stack.DmabufSize(), ValidatePeriod: *period,
		PeerNamespace: w.Pair.Peer.Name, StackNamespace: w.Pair.Emu.Name, StackAddress: w.StackAddr(),
	}
	sum.modes(w.Stack, w.Binding, autoP != nil)
	sum.Frames = w.Stack.Accounting().Frames
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			w.Close()
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			w.Close()
			return err
		}
	}
	res, runErr := demoTransfer(w, size, *period, &sum, !*jsonOut, stop)
	if *cpuprofile != "" {
		pprof.StopCPUProfile()
	}
	sig, _ := caught.Load().(os.Signal)
	if sig != nil {
		runErr = fmt.Errorf("interrupted by %s after %d of %d bytes", sigName(sig), res.Bytes, size)
	}
	st := w.Stack.Stats()
	w.Pair = nil // keep the namespaces for the kernel comparison
	closeErr := w.Stack.Close()
	acct := w.Stack.Accounting()
	alertMu.Lock()
	sum.counters(st, acct, alerts)
	alertMu.Unlock()
	sum.Bytes = res.Bytes
	sum.Frags, sum.DmabufBytes, sum.LinearBytes = res.Frags, res.DmabufBytes, res.LinearBytes+st.PlainBytes
	sum.TokensReturned = res.Freed
	sum.ReceiveSyscalls = res.Calls
	sum.RxFrames, sum.TCPSegments, sum.TxFrames = st.RxFrames, st.TCPSegments, st.TxFrames
	sum.Faults = st.Faults
	if faults.Enabled() {
		sum.FaultSpec = faults.String()
	}
	if res.Elapsed > 0 {
		sum.Seconds = res.Elapsed.Seconds()
		sum.MBps = float64(res.Bytes) / 1e6 / sum.Seconds
		sum.Gbps = float64(res.Bytes) * 8 / 1e9 / sum.Seconds
	}
	if runErr == nil && closeErr != nil {
		runErr = closeErr
	}
	if runErr == nil && acct.Free != acct.Frames {
		runErr = fmt.Errorf("after close only %d of %d frames are free: %v", acct.Free, acct.Frames, acct)
	}
	if runErr == nil && *compare && caught.Load() == nil {
		kr, err := harness.KernelBaseline(pair, size, *period)
		if err != nil {
			runErr = err
		} else {
			sum.KernelMBps = float64(kr.Bytes) / 1e6 / kr.Elapsed.Seconds()
			if sum.KernelMBps > 0 {
				sum.KernelRatio = sum.MBps / sum.KernelMBps
			}
		}
	}
	if err := pair.Close(); err != nil && runErr == nil {
		runErr = fmt.Errorf("remove namespaces: %w", err)
	}
	sum.OK = runErr == nil
	if runErr != nil {
		sum.Error = runErr.Error()
	}
	if *jsonOut {
		writeJSON(os.Stdout, sum)
	} else {
		printDemo(os.Stdout, sum)
	}
	if sig, _ := caught.Load().(os.Signal); sig != nil {
		return exitError{130}
	}
	if runErr != nil {
		if !*jsonOut {
			fmt.Fprintf(os.Stderr, "xdevmem demo: FAILED: %v\n", runErr)
		}
		return exitError{1}
	}
	return nil
}

// demoStallTimeout is how long the transfer may go without a byte before
// the demo gives up and says why.
const demoStallTimeout = 20 * time.Second

// demoTransfer sends size bytes of the pattern from a kernel client in the
// peer namespace and receives them through w's devmem path. Closing stop
// ends it early: the connections are closed and it returns what arrived.
func demoTransfer(w *harness.World, size uint64, period int, sum *demoSummary, progress bool, stop <-chan struct{}) (harness.Result, error) {
	type accepted struct {
		c   devmemapi.Conn
		err error
	}
	// closers ends every blocking call of the transfer when stop closes,
	// or when the transfer stalls.
	var (
		mu       sync.Mutex
		closers  []io.Closer
		canceled bool
	)
	register := func(c io.Closer) {
		mu.Lock()
		defer mu.Unlock()
		if canceled {
			c.Close()
			return
		}
		closers = append(closers, c)
	}
	cancel := func() {
		mu.Lock()
		defer mu.Unlock()
		canceled = true
		for _, c := range closers {
			c.Close()
		}
		closers = nil
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-stop:
			cancel()
		case <-done:
		}
	}()

	ac := make(chan accepted, 1)
	go func() {
		c, err := w.Listener.Accept()
		ac <- accepted{c, err}
	}()
	// The kernel client's outcome: sendErr is valid once sent is closed.
	sent := make(chan struct{})
	var sendErr error
	go func() {
		defer close(sent)
		c, err := w.DialPeer()
		if err != nil {
			sendErr = fmt.Errorf("kernel client: %w", err)
			return
		}
		register(c)
		_, err = io.Copy(c, pattern.NewReader(period, size))
		if cerr := c.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			sendErr = fmt.Errorf("kernel client: %w", err)
		}
	}()
	var a accepted
	select {
	case a = <-ac:
	case <-sent:
		// The client may finish (size 0, small sizes) before Accept
		// returns; without an error, the connection is still there.
		if sendErr != nil {
			return harness.Result{}, sendErr
		}
		select {
		case a = <-ac:
		case <-stop:
			return harness.Result{}, errors.New("stopped before the connection was accepted")
		case <-time.After(30 * time.Second):
			return harness.Result{}, fmt.Errorf("the kernel client finished but no connection was accepted after 30s")
		}
	case <-stop:
		return harness.Result{}, errors.New("stopped before the connection was accepted")
	case <-time.After(30 * time.Second):
		return harness.Result{}, fmt.Errorf("no connection from the kernel client after 30s")
	}
	if a.err != nil {
		return harness.Result{}, a.err
	}
	defer a.c.Close()
	register(a.c)
	v := pattern.NewValidator(period)
	// got is read by the progress and stall watcher while the receive
	// loop adds to it.
	var got atomic.Uint64
	var first time.Time
	stalled := make(chan struct{})
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		last, lastChange := uint64(0), time.Now()
		for {
			select {
			case <-t.C:
				n := got.Load()
				if progress && size >= 256<<20 {
					fmt.Fprintf(os.Stderr, "  ... %s of %s\n", humanMB(n), humanMB(size))
				}
				if n != last {
					last, lastChange = n, time.Now()
				} else if time.Since(lastChange) >= demoStallTimeout {
					close(stalled)
					cancel()
					return
				}
			case <-done:
				return
			}
		}
	}()
	res, err := harness.Receive(a.c, w.Binding, harness.ReceiveOptions{Sink: func(b []byte) error {
		if first.IsZero() {
			first = time.Now()
		}
		got.Add(uint64(len(b)))
		v.Check(b)
		return nil
	}})
	if res.Elapsed == 0 && !first.IsZero() {
		res.Elapsed = time.Since(first) // cut short: the time until now
	}
	sum.ValidationErrs = v.Errors()
	select {
	case <-stalled:
		st := w.Stack.Stats()
		return res, fmt.Errorf("stalled: no data for %v after %d of %d bytes (fill-ring-empty drops %d, out-of-window drops %d, frames %v)",
			demoStallTimeout, got.Load(), size, st.XSK.RxFillRingEmpty, st.DropOutOfWindow, st.Frames)
	case <-stop:
		return res, nil // the caller reports the signal
	default:
	}
	if err != nil {
		return res, fmt.Errorf("receive: %w", err)
	}
	select {
	case <-sent:
	case <-stop:
		return res, nil
	}
	if sendErr != nil {
		return res, sendErr
	}
	if c, ok := a.c.(*stack.Conn); ok {
		sum.TokensOut = c.TokensOutstanding()
	}
	if v.Err() != nil {
		return res, fmt.Errorf("%d bytes failed validation; first: %w", v.Errors(), v.Err())
	}
	if n := got.Load(); n != size {
		return res, fmt.Errorf("received %d of %d bytes", n, size)
	}
	if sum.TokensOut != 0 {
		return res, fmt.Errorf("%d tokens still outstanding", sum.TokensOut)
	}
	return res, nil
}

// sigName names a signal as kill(1) does ("SIGINT").
func sigName(s os.Signal) string {
	if n, ok := s.(syscall.Signal); ok && unix.SignalName(n) != "" {
		return unix.SignalName(n)
	}
	return s.String()
}

func humanMB(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func printDemo(w io.Writer, s demoSummary) {
	status := "ok"
	switch {
	case strings.HasPrefix(s.Error, "interrupted"):
		status = "interrupted"
	case !s.OK:
		status = "FAILED"
	}
	fmt.Fprintf(w, "xdevmem demo: %s\n", status)
	fmt.Fprintf(w, "  path        kernel TCP client (%s) -> veth -> XDP (%s) -> AF_XDP copy mode -> UMEM -> header split -> gVisor TCP -> devmem tokens\n", s.PeerNamespace, s.XDPMode)
	fmt.Fprintf(w, "  stack       %s in %s, MTU %d, UMEM %s (%d frames), autorelease=%d\n", s.StackAddress, s.StackNamespace, s.MTU, humanBytes(s.UMEMBytes), s.Frames, b2i(s.Autorelease))
	fmt.Fprintf(w, "  token mode  autorelease=%d: %s\n", b2i(s.Autorelease), s.AutoreleaseWhy)
	fmt.Fprintf(w, "  address     %s: %s\n", s.AddressMode, s.AddressWhy)
	fmt.Fprintf(w, "  received    %d bytes in %.3f s: %.1f MB/s (%.2f Gbit/s)\n", s.Bytes, s.Seconds, s.MBps, s.Gbps)
	if s.KernelMBps > 0 {
		fmt.Fprintf(w, "  kernel TCP  %.1f MB/s over the same veth: devmem/kernel = %.2f\n", s.KernelMBps, s.KernelRatio)
	}
	fmt.Fprintf(w, "  validated   pattern -v %d, %d errors, read from the dmabuf at the fragment offsets\n", s.ValidatePeriod, s.ValidationErrs)
	fmt.Fprintf(w, "  frags       %d dmabuf frags (%d bytes), %d linear bytes, %d recvmsg calls\n", s.Frags, s.DmabufBytes, s.LinearBytes, s.ReceiveSyscalls)
	fmt.Fprintf(w, "  tokens      %d returned, %d outstanding\n", s.TokensReturned, s.TokensOut)
	fmt.Fprintf(w, "  packets     %d frames in, %d TCP segments after GRO, %d frames out (ACKs)\n", s.RxFrames, s.TCPSegments, s.TxFrames)
	fmt.Fprintf(w, "  frames      %d of %d free after close, recycled %d times\n", s.FramesFree, s.Frames, s.FramesRecycled)
	fmt.Fprintf(w, "  copies      %d payload bytes copied on the dmabuf path\n", s.DmabufCopied)
	if s.Drops != nil {
		fmt.Fprintf(w, "  drops       %v\n", *s.Drops)
	}
	if s.FaultSpec != "" {
		fmt.Fprintf(w, "  faults      %s\n", s.FaultSpec)
	}
	for _, a := range s.Alerts {
		fmt.Fprintf(w, "  warning     %s\n", a)
	}
	if s.Error != "" {
		fmt.Fprintf(w, "  error       %s\n", s.Error)
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// requireRoot gives a clear error when the process lacks the privileges the
// emulation needs.
func requireRoot(cmd string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%s needs root (CAP_NET_ADMIN to create links and attach XDP, CAP_BPF for the XDP program, CAP_NET_RAW for AF_XDP, CAP_SYS_ADMIN for namespaces): run it with sudo", cmd)
	}
	return nil
}

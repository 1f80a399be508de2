package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat"
	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/internal/pattern"
	"github.com/xdevmem/xdevmem/stack"
)

// clientSummary is the client's report (--json).
type clientSummary struct {
	OK            bool    `json:"ok"`
	Error         string  `json:"error,omitempty"`
	Server        string  `json:"server"`
	Bytes         uint64  `json:"bytes"`
	Seconds       float64 `json:"seconds"`
	MBps          float64 `json:"mb_per_s"`
	Sends         uint64  `json:"sends"`
	Completed     uint64  `json:"completed"`
	Notifications uint64  `json:"notifications"`
	// ErrQueueCmsg is the control message the completions came in:
	// SOL_IP/IP_RECVERR on an AF_INET socket, SOL_IPV6/IPV6_RECVERR on an
	// AF_INET6 one (v4-mapped -s included).
	ErrQueueCmsg  string  `json:"errqueue_cmsg,omitempty"`
	CoverOnce     bool    `json:"completions_cover_every_send_once"`
	DmabufID      uint32  `json:"dmabuf_id"`
	TXBytes       uint64  `json:"tx_dmabuf_bytes"`
	Mode          string  `json:"tx_mode"`
	PayloadSent   uint64  `json:"payload_bytes_on_wire"`
	PayloadCopied uint64  `json:"payload_bytes_copied"`
	CopiedPerByte float64 `json:"bytes_copied_per_byte_sent"`
	Segments      uint64  `json:"segments"`
	PayloadDescs  uint64  `json:"payload_descriptors"`
	Unmapped      uint64  `json:"unmapped_segments"`
	XDPMode       string  `json:"xdp_mode"`
	FramesFree    uint32  `json:"frames_free_after_close"`
	Frames        uint32  `json:"frames"`
}

// runClient is ncdevmem's client mode on the emulated stack: it binds a TX
// dmabuf (a span of the UMEM), connects to the server, and sends stdin (or
// --size bytes of the -v pattern) from the dmabuf with sendmsg(MSG_ZEROCOPY,
// SCM_DEVMEM_DMABUF), waiting for every completion before it exits.
func runClient(args []string) error {
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	ifname := fs.String("f", "", "interface")
	serverIP := fs.String("s", "", "server address: IPv4, IPv6, or IPv4 as ::ffff:a.b.c.d (an AF_INET6 socket to an IPv4 server, as ncdevmem's; its completions come as IPV6_RECVERR)")
	clientIP := fs.String("c", "", "the stack's (client's) address, of the server's family: the XDP program takes its traffic")
	port := fs.Int("p", 5201, "server TCP port")
	maxChunk := fs.Uint64("z", 0, "max bytes per iovec (ncdevmem -z; check_tx_chunks uses 3); 0: one iovec per send")
	period := fs.Int("v", 0, "with --size: send the ncdevmem validation pattern of this period (default 7)")
	var size uint64
	fs.Var(sizeValue{&size}, "size", "send this many pattern bytes instead of stdin")
	sendSize := uint64(1 << 20)
	fs.Var(sizeValue{&sendSize}, "send-size", "bytes per send call (one dmabuf slot)")
	txSize := uint64(8 << 20)
	fs.Var(sizeValue{&txSize}, "tx-size", "TX dmabuf size: the slots sends use in turn; a slot is refilled only after its send completed")
	var umemSize uint64
	fs.Var(sizeValue{&umemSize}, "umem", "UMEM size (default 16MiB per RX queue + --tx-size)")
	prefixLen := fs.Int("prefix-len", 0, "prefix length of -c (default 24 for IPv4, 64 for IPv6)")
	txCopy := fs.Bool("tx-copy", false, "copy payload into TX frames instead of multi-buffer descriptors (for comparison)")
	timeout := fs.Duration("timeout", 60*time.Second, "how long to wait for the connection and for the last completions")
	jsonOut := fs.Bool("json", false, "print the summary as JSON on stdout")
	verbose := fs.Bool("verbose", false, "print sendmsg_ret and every tx complete range, as ncdevmem does")
	quiet := fs.Bool("quiet", false, "no progress lines")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the transfer to FILE")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: xdevmem client -f IFACE -s SERVER -c CLIENT [-p PORT] [-z N] [--size N -v N] [flags]\n\n"+
			"Sends stdin (or --size bytes of the -v pattern) over the emulated devmem TX path, like ncdevmem's\n"+
			"client mode: the data is written into a TX dmabuf and sent from there with MSG_ZEROCOPY; the\n"+
			"client exits after every send's completion arrived (0 on success). Run it in IFACE's namespace.\n\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *ifname == "" || *serverIP == "" || *clientIP == "" {
		fs.Usage()
		return fmt.Errorf("-f IFACE, -s SERVER and -c CLIENT are required")
	}
	// server keeps its form: a v4-mapped address makes an AF_INET6
	// socket (stack.Dial). The stack's own address is plain.
	server, err := netip.ParseAddr(*serverIP)
	if err != nil {
		return fmt.Errorf("-s %q: not an IPv4 or IPv6 address", *serverIP)
	}
	if server.Zone() != "" {
		return fmt.Errorf("-s %v: scoped addresses are not supported", server)
	}
	client, err := netip.ParseAddr(*clientIP)
	if err != nil {
		return fmt.Errorf("-c %q: not an IPv4 or IPv6 address", *clientIP)
	}
	client = client.Unmap()
	if client.Is4() != server.Unmap().Is4() {
		return fmt.Errorf("-c %v and -s %v are of different address families", client, server)
	}
	bits := client.BitLen()
	if *prefixLen == 0 {
		*prefixLen = map[bool]int{true: 24, false: 64}[client.Is4()]
	}
	if *prefixLen < 1 || *prefixLen > bits {
		return fmt.Errorf("--prefix-len %d: want 1 to %d for %v", *prefixLen, bits, client)
	}
	if err := checkUnicast("-s", server, 0); err != nil {
		return err
	}
	if err := checkUnicast("-c", client, *prefixLen); err != nil {
		return err
	}
	if client == server.Unmap() {
		return fmt.Errorf("-c %v is the server's address", client)
	}
	if *port <= 0 || *port > 65535 {
		return fmt.Errorf("-p %d: not a port", *port)
	}
	if size > 0 && *period == 0 {
		*period = 7
	}
	if *period != 0 && (*period < 2 || *period > 256) {
		return fmt.Errorf("-v %d: the period must be 2 to 256", *period)
	}
	if sendSize == 0 || txSize < sendSize {
		return fmt.Errorf("--send-size %d must be positive and at most --tx-size %d", sendSize, txSize)
	}
	if umemSize == 0 {
		// Each RX queue's fill ring holds 16 MiB of frames; the TX
		// dmabuf is a contiguous span beside them.
		umemSize = uint64(compat.ActiveRXQueues(*ifname))*16<<20 + txSize
	}
	if err := requireRoot("client"); err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	sum := clientSummary{Server: netip.AddrPortFrom(server, uint16(*port)).String()}
	report := func(err error) error {
		if err != nil {
			sum.Error = err.Error()
		}
		sum.OK = err == nil
		if *jsonOut {
			writeJSON(os.Stdout, sum)
		} else {
			cm := sum.ErrQueueCmsg
			if cm == "" {
				cm = "none read"
			}
			fmt.Fprintf(os.Stderr, "xdevmem client: %d bytes to %s in %.3f s (%.1f MB/s): %d sends, %d completed in %d notifications (%s), %s TX, %.3f bytes copied per byte sent\n",
				sum.Bytes, sum.Server, sum.Seconds, sum.MBps, sum.Sends, sum.Completed, sum.Notifications, cm, sum.Mode, sum.CopiedPerByte)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "xdevmem client: FAILED: %v\n", err)
			return exitError{1}
		}
		if !*jsonOut {
			fmt.Fprintln(os.Stderr, "ncdevmem: ok")
		}
		return nil
	}

	st, err := stack.New(stack.Config{Ifname: *ifname, Addr: netip.PrefixFrom(client, *prefixLen), RegionSize: umemSize, Lab: stack.Lab{TXCopy: *txCopy}})
	if err != nil {
		return report(err)
	}
	defer st.Close()
	sum.XDPMode = st.XDPMode()
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigc
		fmt.Fprintf(os.Stderr, "xdevmem client: %v: unbinding and exiting\n", s)
		st.Close()
		os.Exit(130)
	}()
	ifc, err := net.InterfaceByName(*ifname)
	if err != nil {
		return report(err)
	}
	b, err := st.BindTX(devmemapi.BindTXConfig{Ifindex: ifc.Index, Size: txSize})
	if err != nil {
		return report(err)
	}
	defer b.Close()
	sum.DmabufID, sum.TXBytes = b.ID(), b.Size()
	mem := b.(interface{ Bytes() []byte }).Bytes()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	conn, err := st.Dial(ctx, netip.AddrPortFrom(server, uint16(*port)))
	cancel()
	if err != nil {
		return report(err)
	}
	defer conn.Close()
	if err := conn.SetZeroCopy(true); err != nil { // SO_ZEROCOPY
		return report(err)
	}
	family := "AF_INET"
	if server.Is6() {
		family = "AF_INET6"
	}
	fmt.Fprintf(os.Stderr, "xdevmem client: connected %v -> %v (%s socket, %s, TX dmabuf id %d, %s, %s TX)\n",
		tcpAddrText(conn.LocalAddr()), tcpAddrText(conn.RemoteAddr()), family, *ifname, b.ID(), humanBytes(b.Size()), st.TXStats().Mode)

	src := io.Reader(os.Stdin)
	if size > 0 {
		src = pattern.NewReader(*period, size)
	}
	var tr devmemapi.ZerocopyTracker
	var ranges []devmemapi.ZerocopyRange
	var oob [devmemapi.CmsgSpaceZerocopy6]byte // room for either family
	drain := func() error {                    // recvmsg(MSG_ERRQUEUE) until EAGAIN
		ranges = ranges[:0]
		for {
			n, _, err := conn.RecvErrQueue(oob[:], 0)
			if errors.Is(err, syscall.EAGAIN) {
				break
			}
			if err != nil {
				return err
			}
			if sum.ErrQueueCmsg == "" {
				sum.ErrQueueCmsg = cmsgName(oob[:n])
			}
			if ranges, err = devmemapi.AppendZerocopyRanges(ranges, oob[:n]); err != nil {
				return err
			}
		}
		for _, r := range ranges {
			if *verbose {
				fmt.Fprintf(os.Stderr, "tx complete %v\n", r)
			}
			if err := tr.Add(r); err != nil {
				return err
			}
		}
		ranges = ranges[:0]
		return nil
	}
	waitFor := func(id uint64) error { // until send id completed
		deadline := time.Now().Add(*timeout)
		for !tr.IsDone(uint32(id)) {
			if time.Now().After(deadline) {
				return fmt.Errorf("did not receive tx completion of send %d within %v (%d of %d completed)", id, *timeout, tr.Completed(), sum.Sends)
			}
			if _, err := conn.PollErrQueue(100 * time.Millisecond); err != nil {
				return err
			}
			if err := drain(); err != nil {
				return err
			}
		}
		return nil
	}

	slots := txSize / sendSize
	done := make(chan struct{})
	if !*quiet {
		go func() {
			tk := time.NewTicker(2 * time.Second)
			defer tk.Stop()
			for {
				select {
				case <-tk.C:
					fmt.Fprintf(os.Stderr, "xdevmem client: %s sent\n", humanMB(sum.Bytes))
				case <-done:
					return
				}
			}
		}()
	}
	defer close(done)
	var iov []devmemapi.Iovec
	var start time.Time
	// slotEnd[i] is one past the number of the last send from slot i; its
	// bytes may be rewritten once that send completed.
	slotEnd := make([]uint64, slots)
	for slot := uint64(0); ; slot = (slot + 1) % slots {
		if slotEnd[slot] > 0 {
			// The slot's previous sends must be complete before the
			// slot is written again.
			if err := waitFor(slotEnd[slot] - 1); err != nil {
				return report(err)
			}
		}
		buf := mem[slot*sendSize : (slot+1)*sendSize]
		n, rerr := io.ReadFull(src, buf) // the application's copy to the device
		if n > 0 {
			iov = iov[:0]
			if *maxChunk == 0 {
				iov = append(iov, devmemapi.Iovec{Base: slot * sendSize, Len: uint64(n)})
			} else {
				for off := uint64(0); off < uint64(n); off += *maxChunk {
					iov = append(iov, devmemapi.Iovec{Base: slot*sendSize + off, Len: min(*maxChunk, uint64(n)-off)})
				}
			}
			if start.IsZero() {
				start = time.Now()
			}
			// At most UIO_MAXIOV iovecs per sendmsg (more is EMSGSIZE), as
			// ncdevmem's do_client sends at most MAX_IOV at a time.
			for rest := iov; len(rest) > 0; {
				part := rest[:min(len(rest), devmemapi.UIO_MAXIOV)]
				rest = rest[len(part):]
				want := 0
				for _, v := range part {
					want += int(v.Len)
				}
				k, err := devmemapi.SendDmabuf(conn, b.ID(), part, 0)
				if err != nil {
					return report(fmt.Errorf("sendmsg: %w", err))
				}
				if *verbose {
					fmt.Fprintf(os.Stderr, "sendmsg_ret=%d\n", k)
				}
				if k != want {
					return report(fmt.Errorf("did not send all bytes %d vs %d", k, want))
				}
				sum.Sends++
				sum.Bytes += uint64(k)
			}
			slotEnd[slot] = sum.Sends
			if err := drain(); err != nil {
				return report(err)
			}
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			return report(fmt.Errorf("read input: %w", rerr))
		}
	}
	if sum.Sends > 0 {
		if err := waitFor(sum.Sends - 1); err != nil {
			return report(err)
		}
		for i := uint64(0); i < sum.Sends; i++ { // every one, not just the last
			if !tr.IsDone(uint32(i)) {
				if err := waitFor(i); err != nil {
					return report(err)
				}
			}
		}
	}
	if !start.IsZero() {
		sum.Seconds = time.Since(start).Seconds()
		sum.MBps = float64(sum.Bytes) / 1e6 / sum.Seconds
	}
	// Nothing may arrive twice, nothing beyond the sends made.
	time.Sleep(10 * time.Millisecond)
	if err := drain(); err != nil {
		return report(err)
	}
	sum.Completed = tr.Completed()
	sum.CoverOnce = tr.Covers(sum.Sends) && sum.Completed == sum.Sends
	if cerr := conn.CloseWrite(); cerr != nil {
		return report(cerr)
	}
	ts := st.TXStats()
	sum.Mode, sum.Notifications = ts.Mode, ts.Notifications
	sum.PayloadSent, sum.PayloadCopied = ts.DmabufBytes, ts.DmabufBytesCopied
	sum.Segments, sum.PayloadDescs, sum.Unmapped = ts.Segments, ts.PayloadDescs, ts.Unmapped
	if ts.DmabufBytes > 0 {
		sum.CopiedPerByte = float64(ts.DmabufBytesCopied) / float64(ts.DmabufBytes)
	}
	// Let the FIN go out and the server close before tearing down.
	eof := make(chan struct{})
	go func() {
		var sink [4096]byte
		for {
			if _, err := conn.Read(sink[:]); err != nil {
				close(eof)
				return
			}
		}
	}()
	select {
	case <-eof:
	case <-time.After(2 * time.Second):
	}
	conn.Close()
	b.Close()
	st.Close()
	acct := st.Accounting()
	sum.FramesFree, sum.Frames = acct.Free, acct.Frames
	if !sum.CoverOnce {
		return report(fmt.Errorf("completions cover %d of %d sends", sum.Completed, sum.Sends))
	}
	if ts.Unmapped != 0 {
		return report(fmt.Errorf("%d segments could not be mapped to the dmabuf", ts.Unmapped))
	}
	return report(nil)
}

// cmsgName names the level and type of the first control message in oob.
func cmsgName(oob []byte) string {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil || len(msgs) == 0 {
		return "none"
	}
	switch h := msgs[0].Header; {
	case h.Level == unix.SOL_IP && h.Type == unix.IP_RECVERR:
		return "SOL_IP/IP_RECVERR"
	case h.Level == unix.SOL_IPV6 && h.Type == unix.IPV6_RECVERR:
		return "SOL_IPV6/IPV6_RECVERR"
	default:
		return fmt.Sprintf("level %d type %d", h.Level, h.Type)
	}
}

// tcpAddrText prints a TCP address as netip does, so that a v4-mapped one
// shows as [::ffff:a.b.c.d]:port (net.TCPAddr prints it as IPv4).
func tcpAddrText(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort().String()
	}
	return fmt.Sprint(a)
}

package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/internal/netns"
)

// DefaultPrefix names the bench's namespaces; leftovers of a killed run are
// removed at the next start.
const DefaultPrefix = "xdb"

// benchPort is the port every receiver listens on.
const benchPort = 5201

// Config configures Run.
type Config struct {
	// Rows to measure, in order (see LookupRows).
	Rows []Row
	// Runs is how many times each row runs (default 5). Rows alternate:
	// round 1 runs every row once, then round 2, and so on, so that slow
	// drift of the machine spreads over all rows alike.
	Runs int
	// Size is the payload of each TCP transfer (default 1 GiB).
	Size uint64
	// UDPDuration is how long the UDP flood of the bare AF_XDP row lasts
	// (default 2s).
	UDPDuration time.Duration
	// The flood's sender is by default a UDP socket with UDP GSO
	// (UDP_SEGMENT, 44 datagrams per send): one pass through the sender's
	// UDP/IP stack per 64 KiB, the fastest sender on this machine, so the
	// row is a ceiling for the TCP rows. UDPSocket makes it a UDP socket
	// without GSO (sendmmsg of single datagrams; its own UDP/IP stack
	// saturates it well below the receive loop), XSKFlood an AF_XDP
	// socket on the peer's veth end (copy mode: an skb built per frame).
	UDPSocket, XSKFlood bool
	// Prefix names the namespaces (default DefaultPrefix).
	Prefix string
	// SenderExe is a binary with the bench-peer subcommand (default: this
	// process's executable).
	SenderExe string
	// RunTimeout bounds one run, set-up to tear-down (default 2 minutes
	// plus 1 s per 50 MB).
	RunTimeout time.Duration
	// IdleWait, if positive, makes each run wait up to this long for the
	// machine to be idle (under idleBusy CPUs busy) before it starts.
	IdleWait time.Duration
	// Log, if set, gets one progress line per run.
	Log io.Writer
	// Quick marks the runs as a quick check (xdevmem bench --quick): the
	// goals' verdicts are then only indicative.
	Quick bool
}

func (c *Config) fill() error {
	if c.Runs <= 0 {
		c.Runs = 5
	}
	if c.Size == 0 {
		c.Size = 1 << 30
	}
	if c.UDPDuration <= 0 {
		c.UDPDuration = 2 * time.Second
	}
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.RunTimeout <= 0 {
		c.RunTimeout = 2*time.Minute + time.Duration(c.Size/50e6)*time.Second
	}
	if len(c.Rows) == 0 {
		rows, err := LookupRows(nil)
		if err != nil {
			return err
		}
		c.Rows = rows
	}
	if c.SenderExe == "" {
		exe, err := selfExecutable()
		if err != nil {
			return err
		}
		c.SenderExe = exe
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
	return nil
}

// Machine describes where the bench ran.
type Machine struct {
	Kernel     string `json:"kernel"`
	CPU        string `json:"cpu"`
	CPUs       int    `json:"cpus"`
	GoVersion  string `json:"go"`
	GOMAXPROCS int    `json:"gomaxprocs"`
}

// RowReport is one row's runs and figures.
type RowReport struct {
	Row
	// Runs are the row's measurements in round order, failed ones too.
	Runs []Measurement `json:"runs"`
	// Figures summarize the successful runs.
	Figures Figures `json:"figures"`
}

// Report is the result of Run.
type Report struct {
	Started time.Time `json:"started"`
	Machine Machine   `json:"machine"`
	// Runs, Size, UDPSeconds and Quick echo the configuration.
	Runs       int     `json:"runs_per_row"`
	Size       uint64  `json:"tcp_bytes_per_run"`
	UDPSeconds float64 `json:"udp_seconds_per_run"`
	Quick      bool    `json:"quick,omitempty"`
	// LoadStart and LoadEnd are /proc/loadavg's 1-minute load before the
	// first and after the last run: anything well above the bench's own
	// two busy threads means other work shared the machine, and the
	// machine-CPU figures include it.
	LoadStart float64 `json:"loadavg1_start"`
	LoadEnd   float64 `json:"loadavg1_end"`
	// CPUAccounting says how receiver CPU is measured.
	CPUAccounting string      `json:"cpu_accounting"`
	Rows          []RowReport `json:"rows"`
	// Goals are the targets checked against the rows present.
	Goals []Goal `json:"goals"`
}

// cpuAccounting is the one-line statement of how CPU is measured.
const cpuAccounting = "local CPU = getrusage(RUSAGE_SELF) user+sys of the bench process (all its threads: the receiver of RX rows, the sender of TX rows) over the transfer window; " +
	"the kernel peer (sender of RX rows, receiver of TX rows) is a separate process in the peer namespace and reports its own getrusage; " +
	"machine CPU = /proc/stat busy time of all CPUs over the window (includes softirq work charged to no process)"

// Run measures every row cfg.Runs times, alternating rows, building a fresh
// namespace pair for every run and removing it afterwards. A failed run is
// recorded in its row and does not stop the others. Run needs root.
func Run(cfg Config) (*Report, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	if err := netns.Cleanup(cfg.Prefix); err != nil {
		fmt.Fprintf(cfg.Log, "bench: removing leftovers of an earlier run: %v\n", err)
	}
	rep := &Report{
		Started: time.Now().UTC(), Machine: machine(),
		Runs: cfg.Runs, Size: cfg.Size, UDPSeconds: cfg.UDPDuration.Seconds(), Quick: cfg.Quick,
		CPUAccounting: cpuAccounting, LoadStart: loadAvg1(),
	}
	rep.Rows = make([]RowReport, len(cfg.Rows))
	for i, r := range cfg.Rows {
		rep.Rows[i].Row = r
	}
	r := &runner{cfg: cfg}
	for round := 0; round < cfg.Runs; round++ {
		for i := range rep.Rows {
			row := rep.Rows[i].Row
			bg := waitIdle(cfg.IdleWait)
			m := r.runOnce(row)
			m.Round = round
			m.Background = bg
			rep.Rows[i].Runs = append(rep.Rows[i].Runs, m)
			logRun(cfg.Log, round, cfg.Runs, row, m)
		}
	}
	for i := range rep.Rows {
		rep.Rows[i].Figures = summarize(rep.Rows[i].Runs)
	}
	rep.Goals = checkGoals(rep)
	rep.LoadEnd = loadAvg1()
	return rep, nil
}

func logRun(w io.Writer, round, runs int, row Row, m Measurement) {
	if m.Error != "" {
		fmt.Fprintf(w, "[%d/%d] %-16s FAILED: %s\n", round+1, runs, row.ID, m.Error)
		return
	}
	fmt.Fprintf(w, "[%d/%d] %-16s %8.1f MB/s  local %.2f s/GB  machine %.2f s/GB  (%.0f MB in %.2f s)\n",
		round+1, runs, row.ID, float64(m.Bytes)/1e6/m.Seconds,
		m.perGB(m.LocalUser+m.LocalSys), m.perGB(m.MachineBusy), float64(m.Bytes)/1e6, m.Seconds)
}

// runner runs single measurements.
type runner struct {
	cfg Config
	buf []byte // receive buffer of the copying rows
}

// runOnce runs one row once, within the run timeout.
func (r *runner) runOnce(row Row) (m Measurement) {
	var err error
	ab := &aborter{}
	timer := time.AfterFunc(r.cfg.RunTimeout, func() { ab.abort(fmt.Errorf("run timed out after %v", r.cfg.RunTimeout)) })
	defer timer.Stop()
	switch row.Kind {
	case KindKernel:
		err = r.runKernel(row, &m, ab)
	case KindDevmem:
		err = r.runDevmem(row, &m, ab)
	case KindGVisor:
		err = r.runGVisor(row, &m, ab)
	case KindAFXDP:
		err = r.runAFXDP(row, &m, ab)
	case KindKernelTX:
		err = r.runKernelTX(row, &m, ab)
	case KindDevmemTX:
		err = r.runDevmemTX(row, &m, ab)
	default:
		err = fmt.Errorf("unknown row kind %q", row.Kind)
	}
	if aerr := ab.err(); aerr != nil {
		err = errors.Join(aerr, err)
	}
	if err == nil && m.Bytes == 0 {
		err = errors.New("no payload received")
	}
	if err != nil {
		m.Error = err.Error()
	}
	return m
}

// aborter lets a timeout unblock a run: the run registers what to close.
type aborter struct {
	mu      sync.Mutex
	fns     []func()
	aborted error
}

func (a *aborter) onAbort(fn func()) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.aborted != nil {
		go fn()
		return
	}
	a.fns = append(a.fns, fn)
}

func (a *aborter) abort(err error) {
	a.mu.Lock()
	if a.aborted != nil {
		a.mu.Unlock()
		return
	}
	a.aborted = err
	fns := a.fns
	a.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
}

func (a *aborter) err() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.aborted
}

// newPair builds a run's namespace pair with the row's MTU and offloads.
func (r *runner) newPair(row Row) (*netns.Pair, error) {
	p, err := netns.NewPair(netns.Options{Prefix: r.cfg.Prefix, MTU: row.MTU, KeepPeerTxOffload: row.DefaultOffloads})
	if err != nil {
		return nil, err
	}
	if !row.DefaultOffloads {
		if err := offloadsOff(p); err != nil {
			p.Close()
			return nil, err
		}
	}
	return p, nil
}

// offloadsOff turns off checksum, segmentation and receive offloads on both
// ends of the pair.
func offloadsOff(p *netns.Pair) error {
	for _, end := range []struct {
		ns *netns.NS
		If string
	}{{p.Peer, p.PeerIf}, {p.Emu, p.EmuIf}} {
		if err := end.ns.SetFeatures(end.If, map[string]bool{"tx": false, "tso": false, "gso": false, "gro": false}); err != nil {
			return fmt.Errorf("offloads off: %w", err)
		}
	}
	return nil
}

// peerProc is a running bench-peer process in the peer namespace.
type peerProc struct {
	cmd      *exec.Cmd
	out, err bytes.Buffer
	done     chan struct{}
	waitErr  error
}

// startPeer runs "exe bench-peer ..." inside the peer namespace for the row.
func (r *runner) startPeer(p *netns.Pair, args []string) (*peerProc, error) {
	s := &peerProc{done: make(chan struct{})}
	s.cmd = p.Peer.Command(r.cfg.SenderExe, args...)
	s.cmd.Stdout, s.cmd.Stderr = &s.out, &s.err
	// The peer dies with us, whatever happens to us.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start peer: %w", err)
	}
	go func() {
		s.waitErr = s.cmd.Wait()
		close(s.done)
	}()
	return s, nil
}

// exited is closed when the peer has exited.
func (s *peerProc) exited() <-chan struct{} { return s.done }

func (s *peerProc) kill() {
	if s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
	}
}

// wait waits up to d for the peer and parses its report.
func (s *peerProc) wait(d time.Duration) (PeerReport, error) {
	select {
	case <-s.done:
	case <-time.After(d):
		s.kill()
		<-s.done
		return PeerReport{}, fmt.Errorf("peer still running after %v", d)
	}
	if s.waitErr != nil {
		return PeerReport{}, fmt.Errorf("peer: %v: %s", s.waitErr, strings.TrimSpace(s.err.String()))
	}
	var rep PeerReport
	if err := json.Unmarshal(s.out.Bytes(), &rep); err != nil {
		return rep, fmt.Errorf("peer report %q: %w", s.out.String(), err)
	}
	return rep, nil
}

// addPeer fills the peer's part of m.
func (m *Measurement) addPeer(rep PeerReport) {
	m.PeerUser, m.PeerSys = rep.UserSeconds, rep.SysSeconds
	m.Retrans = rep.Retrans
	if m.Packets == 0 {
		m.Packets = rep.Packets
	}
}

// addWindow fills the measured side's part of m from a window.
func (m *Measurement) addWindow(w window) {
	m.Seconds = w.seconds
	m.LocalUser, m.LocalSys = w.user, w.sys
	m.MachineBusy, m.MachineSoftirq = w.busy, w.softirq
	m.Allocs = w.allocs
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), GOMAXPROCS: runtime.GOMAXPROCS(0)}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

// vethDrops is what the veth pair itself dropped on the way to the
// receiver: the peer's transmit drops (a full receive ring of the emulated
// end) and the emulated end's receive drops. The pair is fresh, so the
// counters cover the run.
func vethDrops(p *netns.Pair) (uint64, error) {
	var total uint64
	for _, end := range []struct {
		ns *netns.NS
		If string
		tx bool
	}{{p.Peer, p.PeerIf, true}, {p.Emu, p.EmuIf, false}} {
		st, err := end.ns.LinkStats(end.If)
		if err != nil {
			return 0, err
		}
		if end.tx {
			total += st.TxDropped
		} else {
			total += st.RxDropped
		}
	}
	return total, nil
}

// loadAvg1 is the 1-minute load average, or -1.
func loadAvg1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	var v float64
	if _, err := fmt.Sscan(string(b), &v); err != nil {
		return -1
	}
	return v
}

// idleBusy is how many CPUs may be busy for the machine to count as idle.
const idleBusy = 0.25

// backgroundSample is how long waitIdle looks at /proc/stat.
const backgroundSample = 300 * time.Millisecond

// waitIdle samples how many CPUs are busy and, while that is above
// idleBusy, samples again until d has passed. It returns the last sample.
func waitIdle(d time.Duration) float64 {
	deadline := time.Now().Add(d)
	for {
		b0, _, err0 := readProcStat()
		t0 := time.Now()
		time.Sleep(backgroundSample)
		b1, _, err1 := readProcStat()
		if err0 != nil || err1 != nil {
			return -1
		}
		busy := (b1 - b0) / time.Since(t0).Seconds()
		if busy < idleBusy || !time.Now().Before(deadline) {
			return busy
		}
	}
}

package bench

import (
	"bytes"
	"math"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/xdevmem/xdevmem/internal/testutil"
)

// TestMain doubles as the peer: the privileged tests run this test binary
// as "bench-peer" in the peer namespace.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == PeerCommand {
		if err := PeerMain(os.Args[2:], os.Stdout); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(testutil.CheckLeaks(m))
}

func TestFigureOf(t *testing.T) {
	for _, tc := range []struct {
		in            []float64
		med, min, max float64
		n             int
	}{
		{[]float64{3, 1, 2}, 2, 1, 3, 3},
		{[]float64{4, 1, 3, 2}, 2.5, 1, 4, 4},
		{[]float64{5}, 5, 5, 5, 1},
		{[]float64{math.NaN(), 7, math.Inf(1)}, 7, 7, 7, 1},
	} {
		f := figureOf(tc.in)
		if f.Median != tc.med || f.Min != tc.min || f.Max != tc.max || f.N != tc.n {
			t.Errorf("figureOf(%v) = %+v", tc.in, f)
		}
	}
	if f := figureOf(nil); f.Valid() || f.N != 0 {
		t.Errorf("empty figure is valid: %+v", f)
	}
}

func TestParseProcStat(t *testing.T) {
	in := []byte("cpu  100 5 50 1000 20 3 7 2 0 0\ncpu0 50 2 25 500 10 1 3 1 0 0\nintr 1\n")
	busy, soft, err := parseProcStat(in)
	if err != nil {
		t.Fatal(err)
	}
	if want := float64(100+5+50+3+7+2) / clockTicks; busy != want || soft != 0.07 {
		t.Fatalf("busy %v softirq %v, want %v 0.07", busy, soft, want)
	}
	if _, _, err := parseProcStat([]byte("intr 1\n")); err == nil {
		t.Fatal("no cpu line accepted")
	}
	if _, _, err := readProcStat(); err != nil {
		t.Fatalf("this machine's /proc/stat: %v", err)
	}
}

func TestLookupRows(t *testing.T) {
	rows, err := LookupRows(nil)
	if err != nil || len(rows) != len(DefaultRows) {
		t.Fatalf("default rows: %v, %v", rows, err)
	}
	all, err := LookupRows([]string{"all"})
	if err != nil || len(all) != len(Rows) {
		t.Fatalf("all: %d rows, %v", len(all), err)
	}
	two, err := LookupRows([]string{"devmem-a0", " kernel-off", "devmem-a0"})
	if err != nil || len(two) != 2 || two[0].ID != "devmem-a0" || two[1].ID != "kernel-off" {
		t.Fatalf("two rows: %v, %v", two, err)
	}
	if _, err := LookupRows([]string{"nope"}); err == nil || !strings.Contains(err.Error(), "devmem-a0") {
		t.Fatalf("unknown row: %v", err)
	}
	seen := map[string]bool{}
	for _, r := range Rows {
		if seen[r.ID] || r.MTU == 0 || r.Title == "" {
			t.Errorf("row %+v: duplicate or incomplete", r)
		}
		if r.IPv6 && r.Kind != KindDevmem {
			t.Errorf("row %s: IPv6 is supported by devmem rows only", r.ID)
		}
		seen[r.ID] = true
	}
}

// fakeReport is a report as Run would produce it, without running anything.
func fakeReport() *Report {
	rep := &Report{Runs: 3, Size: 1 << 30, UDPSeconds: 2, Machine: machine(), CPUAccounting: cpuAccounting}
	mk := func(id string, mbps, cpu float64, copied uint64, measured bool) RowReport {
		rows, _ := LookupRows([]string{id})
		rr := RowReport{Row: rows[0]}
		for i := 0; i < 3; i++ {
			s := 1e9 / (mbps * 1e6) * (1 + 0.01*float64(i))
			rr.Runs = append(rr.Runs, Measurement{
				Round: i, Bytes: 1e9, Seconds: s, Packets: 690000,
				LocalUser: cpu * 0.4, LocalSys: cpu * 0.6, PeerUser: 0.1, PeerSys: 0.3,
				MachineBusy: cpu * 2, MachineSoftirq: 0.5, Copied: copied, CopiedMeasured: measured,
				Tokens: 690000, Allocs: 10,
			})
		}
		rr.Runs = append(rr.Runs, Measurement{Round: 3, Error: "boom"})
		rr.Figures = summarize(rr.Runs)
		return rr
	}
	rep.Rows = []RowReport{
		mk("kernel-off", 300, 1, 1e9, false),
		mk("gvisor-xdp", 140, 5, 2e9, false),
		mk("devmem-a0", 320, 2, 0, true),
		mk("devmem-a1", 300, 2.5, 0, true),
		{Row: mustRow("afxdp-bare"), Runs: []Measurement{{Error: "failed"}}},
		mk("kernel-off-9000", 1000, 1, 1e9, false),
		mk("devmem-a0-9000", 700, 1, 0, true),
		mk("kernel-tx-off", 800, 1, 1e9, false),
		mk("devmem-tx", 300, 4, 0, true),
		mk("kernel-default", 4000, 0.4, 1e9, false),
	}
	rep.Rows[4].Figures = summarize(rep.Rows[4].Runs)
	rep.Goals = checkGoals(rep)
	return rep
}

func TestSummarizeAndGoals(t *testing.T) {
	rep := fakeReport()
	f := rep.Rows[2].Figures
	if f.MBps.N != 3 || math.Abs(f.MBps.Max-320) > 1e-9 || f.CopiedPerByte.Max != 0 {
		t.Fatalf("devmem-a0 figures: %+v", f)
	}
	if got := f.LocalCPUPerGB.Median; math.Abs(got-2) > 1e-9 {
		t.Fatalf("recv CPU/GB %v, want 2", got)
	}
	if got := f.AllocsPerPacket.Median; math.Abs(got-10.0/690000) > 1e-12 {
		t.Fatalf("allocs/packet %v", got)
	}
	want := map[string]bool{
		"devmem RX goodput / kernel TCP (MTU 1500, offloads off)":         true,
		"devmem RX goodput / gVisor stock AF_XDP":                         true,
		"payload bytes copied after the UMEM per byte (devmem rows, max)": true,
		"Go heap allocations per packet (devmem-a0, whole process)":       true,
		"autorelease 0 CPU/GB saving over autorelease 1 (receiver)":       true,
		"machine CPU per GB, devmem RX / kernel TCP RX (MTU 1500)":        false,
		"devmem RX goodput / kernel TCP (MTU 9000, offloads off)":         false,
		"devmem TX goodput / kernel TCP TX (MTU 1500, offloads off)":      false,
	}
	for _, g := range rep.Goals {
		met, ok := want[g.Name]
		if !ok {
			t.Errorf("unexpected goal %q", g.Name)
			continue
		}
		delete(want, g.Name)
		if g.Met != met {
			t.Errorf("goal %q: met %v (value %v)", g.Name, g.Met, g.Value)
		}
	}
	if len(want) > 0 {
		t.Errorf("goals missing: %v", want)
	}
	if failed := rep.Failed(); len(failed) != 1 || failed[0] != "afxdp-bare" {
		t.Errorf("failed rows %v", failed)
	}
}

func TestWriteTableAndJSON(t *testing.T) {
	rep := fakeReport()
	var tb bytes.Buffer
	if err := rep.WriteTable(&tb); err != nil {
		t.Fatal(err)
	}
	out := tb.String()
	for _, want := range []string{"devmem-a0", "316.8 (313.7–320.0)", "0.00 (counted)", "2.00 (by construction)", "getrusage", "goals (medians)", "round 4 failed: boom"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	var jb bytes.Buffer
	if err := rep.WriteJSON(&jb); err != nil {
		t.Fatal(err)
	}
	back, err := ReadReport(&jb)
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Rows) != len(rep.Rows) || back.Rows[2].Figures.MBps != rep.Rows[2].Figures.MBps {
		t.Fatalf("JSON round trip: %+v", back.Rows[2].Figures.MBps)
	}
	if back.Rows[4].Figures.MBps.Valid() {
		t.Fatal("a row without runs came back with figures")
	}
}

func TestWritePlot(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bench.png")
	if err := fakeReport().WritePlot(path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 1000 || !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatalf("not a PNG (%d bytes)", len(b))
	}
}

func TestSenderArgs(t *testing.T) {
	if err := PeerMain(nil, &bytes.Buffer{}); err == nil {
		t.Fatal("no mode accepted")
	}
	if err := PeerMain([]string{"tcp"}, &bytes.Buffer{}); err == nil {
		t.Fatal("missing -addr accepted")
	}
	a := peerArgs("udp", "10.0.0.2:9", 0, 300*time.Millisecond)
	if strings.Join(a, " ") != "bench-peer udp -addr 10.0.0.2:9 -duration 300ms" {
		t.Fatalf("udp args %q", a)
	}
}

// TestRowsRun runs every row once with small transfers, using this test
// binary as the peer, and checks that each produced figures and that the
// gVisor row's teardown leaves no goroutine or descriptor behind.
func TestRowsRun(t *testing.T) {
	testutil.RequirePrivileged(t)
	testutil.RequireTools(t, "ip", "ethtool")
	testutil.Watchdog(t, 3*time.Minute)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	rows, _ := LookupRows([]string{"all"})
	cfg := Config{Runs: 1, Size: 8 << 20, UDPDuration: 200 * time.Millisecond, SenderExe: exe, Prefix: "xdbtest", RunTimeout: time.Minute}
	if err := cfg.fill(); err != nil {
		t.Fatal(err)
	}
	r := &runner{cfg: cfg}
	for _, row := range rows {
		t.Run(row.ID, func(t *testing.T) {
			testutil.CheckFDs(t)
			gBefore := liveGoroutines(t)
			m := r.runOnce(row)
			if m.Error != "" {
				t.Fatal(m.Error)
			}
			f := summarize([]Measurement{m})
			if !f.MBps.Valid() || !f.LocalCPUPerGB.Valid() || !f.MachineCPUPerGB.Valid() || !f.Mpps.Valid() {
				t.Fatalf("figures missing: %+v", f)
			}
			if row.Kind == KindDevmem && (m.Copied != 0 || m.Tokens == 0) {
				t.Fatalf("devmem: %d bytes copied, %d tokens", m.Copied, m.Tokens)
			}
			// Teardown is synchronous: nothing of the run keeps running.
			deadline := time.Now().Add(3 * time.Second)
			for liveGoroutines(t) > gBefore && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if g := liveGoroutines(t); g > gBefore {
				buf := make([]byte, 1<<20)
				t.Fatalf("%d goroutines before, %d after:\n%s", gBefore, g, buf[:runtime.Stack(buf, true)])
			}
		})
	}
}

func mustRow(id string) Row {
	rows, err := LookupRows([]string{id})
	if err != nil {
		panic(err)
	}
	return rows[0]
}

// knownLeaks are goroutines of other packages that outlive a Stack.Close;
// they are reported, not counted. None are known now (the TX engine's
// kicker goroutine that once leaked is gone: it kicks inline).
var knownLeaks = []string{}

// liveGoroutines counts goroutines, leaving out knownLeaks (logged).
func liveGoroutines(t *testing.T) int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.TrimSpace(g) == "" {
			continue
		}
		known := false
		for _, k := range knownLeaks {
			if strings.Contains(g, k) {
				known = true
				t.Logf("known leak, not counted: %s", k)
			}
		}
		if !known {
			count++
		}
	}
	return count
}

// TestCeilingGoal: the afxdp-bare row is checked against the fastest RX row
// at its MTU with offloads off, in packets; TSO rows and TX rows do not count.
func TestCeilingGoal(t *testing.T) {
	rep := fakeReport()
	bare := &rep.Rows[4]
	for i := range bare.Runs {
		bare.Runs[i] = Measurement{Round: i, Bytes: 1e9, Seconds: 1, Packets: 800000}
	}
	bare.Figures = summarize(bare.Runs)
	rep.Goals = checkGoals(rep)
	for _, g := range rep.Goals {
		if strings.HasPrefix(g.Name, "afxdp-bare ceiling") {
			// 0.8 Mpps against devmem-a0's 690000 packets in ~3.1 s.
			if !g.Met || !strings.Contains(g.Detail, "devmem-a0") {
				t.Errorf("ceiling goal %+v", g)
			}
			return
		}
	}
	t.Fatalf("no ceiling goal in %+v", rep.Goals)
}

// TestGoalsIndicative: verdicts from --quick (or fewer than three runs per
// row) are marked indicative in the table and in JSON, and a saved report
// keeps the mark.
func TestGoalsIndicative(t *testing.T) {
	rep := fakeReport()
	var tb bytes.Buffer
	rep.WriteTable(&tb)
	if strings.Contains(tb.String(), "indicative") {
		t.Fatalf("3 runs per row marked indicative:\n%s", tb.String())
	}
	for _, tc := range []struct {
		quick bool
		runs  int
		why   string
	}{{true, 1, "--quick"}, {true, 5, "--quick"}, {false, 1, "1 run(s) per row"}} {
		rep.Quick, rep.Runs = tc.quick, tc.runs
		rep.Goals = checkGoals(rep)
		tb.Reset()
		rep.WriteTable(&tb)
		if !strings.Contains(tb.String(), "MET (indicative: "+tc.why+")") {
			t.Errorf("quick %v, %d runs: table lacks %q:\n%s", tc.quick, tc.runs, "MET (indicative: "+tc.why+")", tb.String())
		}
		var jb bytes.Buffer
		rep.WriteJSON(&jb)
		if !strings.Contains(jb.String(), `"indicative": true`) {
			t.Errorf("quick %v, %d runs: JSON lacks \"indicative\": true", tc.quick, tc.runs)
		}
		back, err := ReadReport(&jb)
		if err != nil {
			t.Fatal(err)
		}
		if back.Quick != tc.quick || len(back.Goals) == 0 || !back.Goals[0].Indicative {
			t.Errorf("saved report lost the mark: quick %v, goals %+v", back.Quick, back.Goals)
		}
	}
}

// TestSendUDPGSO: the flood's GSO sender counts datagrams, not sends, and
// the kernel cuts its 64 KiB messages into datagrams of the asked length.
func TestSendUDPGSO(t *testing.T) {
	ln, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_ = ln.SetReadBuffer(4 << 20)
	sizes := make(chan int, 1)
	go func() {
		b := make([]byte, 1<<16)
		n, _, _ := ln.ReadFromUDP(b)
		sizes <- n
	}()
	rep, err := sendUDP(ln.LocalAddr().String(), 20*time.Millisecond, 1472, 4, true)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Packets == 0 || rep.Packets%44 != 0 || rep.Bytes != rep.Packets*1472 {
		t.Fatalf("report %+v: want a multiple of 44 datagrams of 1472 bytes", rep)
	}
	if n := <-sizes; n != 1472 {
		t.Fatalf("received a datagram of %d bytes, want 1472", n)
	}
	if args := strings.Join(peerArgs("udp-gso", "1.2.3.4:9", 0, time.Second), " "); !strings.Contains(args, "-gso") {
		t.Fatalf("peer args %q", args)
	}
}

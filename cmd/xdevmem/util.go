package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/stack"
	"github.com/xdevmem/xdevmem/umem"
)

// parseSize parses "1GiB", "16MiB", "64k", "1G" or a plain byte count.
func parseSize(s string) (uint64, error) {
	t := strings.TrimSpace(strings.ToLower(s))
	mult := uint64(1)
	for _, u := range []struct {
		suffix string
		m      uint64
	}{
		{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
		{"kb", 1000}, {"mb", 1e6}, {"gb", 1e9},
		{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"t", 1 << 40}, {"b", 1},
	} {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSuffix(t, u.suffix), u.m
			break
		}
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(t), 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("bad size %q (want e.g. 1GiB, 16MiB, 4096)", s)
	}
	return uint64(v * float64(mult)), nil
}

// sizeValue is a flag.Value for sizes. A zero size prints as "0", what the
// flag package takes for the zero value, so help text shows no
// "(default 0B)" for a size that defaults to "not given".
type sizeValue struct{ v *uint64 }

func (s sizeValue) String() string {
	if s.v == nil || *s.v == 0 {
		return "0"
	}
	return humanBytes(*s.v)
}

func (s sizeValue) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	*s.v = n
	return nil
}

func humanBytes(n uint64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// modeValue is ncdevmem's -a: 0 or 1, or -1 when not given (the binding's
// default). Unset prints as "", so the help text shows no "(default -1)".
type modeValue struct{ v *int }

func (m modeValue) String() string {
	if m.v == nil || *m.v < 0 {
		return ""
	}
	return strconv.Itoa(*m.v)
}

func (m modeValue) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil {
		return errors.New("want 0 or 1")
	}
	*m.v = n
	return nil
}

// autoreleaseFlag defines -a on fs; it reads -1 when not given.
func autoreleaseFlag(fs *flag.FlagSet, usage string) *int {
	v := -1
	fs.Var(modeValue{&v}, "a", usage)
	return &v
}

// parseFlags parses a subcommand's flags. Asking for help (-h, --help) is
// no error: the usage goes to stdout and the command exits 0, as
// `xdevmem -h` does; a bad flag exits 2 after the flag package said why
// on stderr.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if wantsHelp(args) {
		fs.SetOutput(os.Stdout)
	}
	err := fs.Parse(args)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, flag.ErrHelp):
		return exitError{0}
	}
	return exitError{2}
}

// wantsHelp reports whether the flags in args (up to the first non-flag
// or "--") ask for help.
func wantsHelp(args []string) bool {
	for _, a := range args {
		switch a {
		case "-h", "-help", "--h", "--help":
			return true
		case "--":
			return false
		}
		if !strings.HasPrefix(a, "-") {
			return false
		}
	}
	return false
}

// boolFlag01 parses ncdevmem's 0/1 integer options.
func boolFlag01(v int, name string) (*bool, error) {
	switch v {
	case -1:
		return nil, nil
	case 0, 1:
		b := v == 1
		return &b, nil
	}
	return nil, fmt.Errorf("-%s takes 0 or 1, not %d", name, v)
}

// labFlags are the receive commands' lab switches (server, demo, soak):
// fault injection and, where asked, the device's split threshold and
// checksum trust. One definition, so the commands spell and explain them
// alike.
type labFlags struct {
	faultSpec *string
	seed      *uint64
	hds       *int  // nil where the command has no --hds-thresh
	trust     *bool // nil where the command has no --trust-checksum
}

// addLabFlags defines --faults and --seed on fs, and --hds-thresh and
// --trust-checksum when device is set.
func addLabFlags(fs *flag.FlagSet, device bool) *labFlags {
	l := &labFlags{
		faultSpec: fs.String("faults", "", "inject faults into received frames, e.g. drop=0.05,reorder=0.1,dup=0.02,corrupt=0.01,truncate=0.001"),
		seed:      fs.Uint64("seed", 1, "seed for --faults"),
	}
	if device {
		l.hds = fs.Int("hds-thresh", 0, "header-split threshold of the emulated device: smaller payloads arrive as ordinary bytes, without devmem control messages")
		l.trust = fs.Bool("trust-checksum", false, "skip software checksum verification (benchmarking only)")
	}
	return l
}

// lab turns the flags into the stack's lab switches and the device's split
// threshold.
func (l *labFlags) lab() (stack.Lab, int, error) {
	faults, err := stack.ParseFaults(*l.faultSpec, *l.seed)
	if err != nil {
		return stack.Lab{}, 0, err
	}
	lab := stack.Lab{Faults: faults}
	hds := 0
	if l.hds != nil {
		if hds = *l.hds; hds < 0 {
			return stack.Lab{}, 0, fmt.Errorf("--hds-thresh %d: want 0 or more", hds)
		}
		lab.TrustChecksum = *l.trust
	}
	return lab, hds, nil
}

// checkUnicast refuses, for the flag named name, an address that no host
// can own: unspecified, multicast, loopback, the IPv4 limited broadcast
// and, given a prefix length, the broadcast address of its IPv4 subnet.
func checkUnicast(name string, a netip.Addr, prefixLen int) error {
	a = a.Unmap()
	why := ""
	switch {
	case a.IsUnspecified():
		why = "unspecified"
	case a.IsMulticast():
		why = "multicast"
	case a.IsLoopback():
		why = "loopback (the emulation serves a network interface, not lo)"
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		why = "the limited broadcast address"
	case a.Is4() && prefixLen > 0 && prefixLen < 31:
		p := netip.PrefixFrom(a, prefixLen).Masked()
		b := p.Addr().As4()
		host := uint32(1)<<(32-prefixLen) - 1
		bcast := binary.BigEndian.Uint32(b[:]) | host
		if binary.BigEndian.Uint32(a.AsSlice()) == bcast {
			why = fmt.Sprintf("the broadcast address of %v", p)
		}
	}
	if why != "" {
		return fmt.Errorf("%s %v: not a unicast host address: %s", name, a, why)
	}
	return nil
}

// lookupInterface finds ifname in the calling thread's network namespace;
// the error lists the interfaces there are.
func lookupInterface(ifname string) (*net.Interface, error) {
	ifc, err := net.InterfaceByName(ifname)
	if err == nil {
		return ifc, nil
	}
	var names []string
	if all, lerr := net.Interfaces(); lerr == nil {
		for _, i := range all {
			names = append(names, i.Name)
		}
	}
	return nil, fmt.Errorf("-f %s: no such interface in this network namespace (there are: %s)", ifname, strings.Join(names, ", "))
}

// checkUMEMFlag validates a --umem value at start, before anything is
// built: 0 is refused (it is not "the default"), and the size must pass
// stack.CheckRegionSize for the MTU and queue count (mtu 0 when the
// interface's MTU is not known yet: the stack checks the minimum then).
func checkUMEMFlag(size uint64, mtu, queues int) error {
	if size == 0 {
		min := stack.MinRegionSize(max(mtu, stack.DefaultMTU), queues)
		return fmt.Errorf("--umem 0: the UMEM needs at least %s at MTU %d (leave --umem out for the default %s)",
			humanBytes(min), max(mtu, stack.DefaultMTU), humanBytes(stack.DefaultRegionSize))
	}
	if err := stack.CheckRegionSize(size, mtu, queues); err != nil {
		return fmt.Errorf("--umem %s: %w", humanBytes(size), err)
	}
	return nil
}

// stackReport is what the receive commands (server, demo) report of the
// stack they ran: token and address mode with their reasons, how XDP was
// attached, the frame accounting after close, the copy counter, every drop
// counter and the stall warnings. Embedded in their summaries, its fields
// are top-level JSON fields.
type stackReport struct {
	Autorelease    bool         `json:"autorelease"`
	AutoreleaseWhy string       `json:"autorelease_reason"`
	AddressMode    string       `json:"address_mode,omitempty"`
	AddressWhy     string       `json:"address_mode_reason,omitempty"`
	XDPMode        string       `json:"xdp_mode"`
	FramesFree     uint32       `json:"frames_free_after_close"`
	Frames         uint32       `json:"frames"`
	FramesRecycled uint64       `json:"frames_recycled"`
	DmabufCopied   uint64       `json:"dmabuf_bytes_copied"`
	ChecksumDrops  uint64       `json:"checksum_drops"`
	FillEmptyDrops uint64       `json:"fill_ring_empty_drops"`
	Drops          *stack.Drops `json:"drops,omitempty"`
	Alerts         []string     `json:"alerts,omitempty"`
}

// modes records the stack's modes: the token mode of binding b (chosen
// with -a when chosen is set) and the address mode. st may be nil (kernel
// backend).
func (r *stackReport) modes(st *stack.Stack, b devmemapi.Binding, chosen bool) {
	if ab, ok := b.(interface{ Autorelease() bool }); ok {
		r.Autorelease = ab.Autorelease()
	}
	switch {
	case chosen:
		r.AutoreleaseWhy = "chosen with -a"
	case st != nil:
		_, r.AutoreleaseWhy = st.DefaultAutorelease()
	default:
		r.AutoreleaseWhy = "the kernel's default"
	}
	if st != nil {
		mode, why := st.AddressMode()
		r.AddressMode, r.AddressWhy, r.XDPMode = mode.String(), why, st.XDPMode()
	}
}

// counters records the stack's counters, taken before closing it (stats),
// and the frame accounting after (acct).
func (r *stackReport) counters(stats stack.Stats, acct umem.Accounting, alerts []string) {
	r.FramesFree, r.Frames, r.FramesRecycled = acct.Free, acct.Frames, acct.Recycled
	r.DmabufCopied = stats.DmabufBytesCopied
	r.ChecksumDrops = stats.DropBadIPChecksum + stats.DropBadTCPChecksum
	r.FillEmptyDrops = stats.XSK.RxFillRingEmpty
	d := stats.Drops()
	r.Drops = &d
	r.Alerts = append([]string(nil), alerts...)
}

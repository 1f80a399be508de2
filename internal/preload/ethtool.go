package preload

import (
	"fmt"
	"net/netip"
	"path"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/stack"
)

// ethtool as the devmem selftests run it, through system(3) or popen(3):
// "[sudo] ethtool OPTION IFACE ..." with at most output redirections. When
// IFACE is an emulated NIC and the option is one the selftests use (-K
// ntuple, -G tcp-data-split / hds-thresh, -g, -X equal / default, -L, -l,
// -N/-U flow-type / delete), the library applies it to the emulated NIC
// and prints what ethtool prints; every other command runs as usual.

// EthtoolCmd is a parsed command line.
type EthtoolCmd struct {
	// Op is the ethtool option, in its short form ("-K", "-G", ...).
	Op string
	// Ifname is the interface.
	Ifname string
	// Args are the words after the interface.
	Args []string
	// Stdout and Stderr are where the command's output goes: 1, 2, or -1
	// for /dev/null, after the redirections.
	Stdout, Stderr int
}

var ethtoolOps = map[string]string{
	"-K": "-K", "--features": "-K", "--offload": "-K",
	"-G": "-G", "--set-ring": "-G",
	"-g": "-g", "--show-ring": "-g",
	"-X": "-X", "--set-rxfh-indir": "-X", "--rxfh": "-X",
	"-L": "-L", "--set-channels": "-L",
	"-l": "-l", "--show-channels": "-l",
	"-N": "-N", "-U": "-N", "--config-ntuple": "-N", "--config-nfc": "-N",
}

// ParseEthtool parses a shell command line that runs ethtool; ok is false
// for anything else (pipes, lists, quoting, expansions, another program,
// an option the library does not emulate).
func ParseEthtool(cmd string) (c EthtoolCmd, ok bool) {
	if strings.ContainsAny(cmd, "|;`$'\"\\(){}*?~!#\n") {
		return c, false
	}
	words := strings.Fields(cmd)
	c.Stdout, c.Stderr = 1, 2
	var rest []string
	for i := 0; i < len(words); i++ {
		w := words[i]
		target := ""
		switch {
		case w == ">&2" || w == "1>&2":
			c.Stdout = c.Stderr
			continue
		case w == "2>&1":
			c.Stderr = c.Stdout
			continue
		case w == ">" || w == "1>" || w == "2>" || w == "&>":
			if i+1 >= len(words) {
				return c, false
			}
			target = words[i+1]
			i++
			w += target
		}
		if strings.HasPrefix(w, "&>") || strings.HasPrefix(w, ">") || strings.HasPrefix(w, "1>") || strings.HasPrefix(w, "2>") {
			fd, t := 1, strings.TrimLeft(w, "12&>")
			if strings.HasPrefix(w, "2>") {
				fd = 2
			}
			if t != "/dev/null" {
				return c, false
			}
			switch {
			case strings.HasPrefix(w, "&>"):
				c.Stdout, c.Stderr = -1, -1
			case fd == 1:
				c.Stdout = -1
			default:
				c.Stderr = -1
			}
			continue
		}
		if strings.ContainsAny(w, "<>&") {
			return c, false
		}
		rest = append(rest, w)
	}
	for len(rest) > 0 && rest[0] == "sudo" {
		rest = rest[1:]
		for len(rest) > 0 && (rest[0] == "-n" || rest[0] == "-E") {
			rest = rest[1:]
		}
	}
	if len(rest) < 3 || path.Base(rest[0]) != "ethtool" || (strings.Contains(rest[0], "/") && !strings.HasPrefix(rest[0], "/")) {
		return c, false
	}
	op, known := ethtoolOps[rest[1]]
	if !known {
		return c, false
	}
	c.Op, c.Ifname, c.Args = op, rest[2], rest[3:]
	switch op {
	case "-K":
		if len(c.Args) == 0 || len(c.Args)%2 != 0 {
			return c, false
		}
		for i := 0; i < len(c.Args); i += 2 {
			switch c.Args[i] {
			case "ntuple", "ntuple-filters", "rx-ntuple-filter":
			default:
				return c, false
			}
		}
	case "-G":
		if len(c.Args) == 0 || len(c.Args)%2 != 0 {
			return c, false
		}
		for i := 0; i < len(c.Args); i += 2 {
			if c.Args[i] != "tcp-data-split" && c.Args[i] != "hds-thresh" {
				return c, false
			}
		}
	case "-X":
		if !(len(c.Args) == 2 && c.Args[0] == "equal") && !(len(c.Args) == 1 && c.Args[0] == "default") {
			return c, false
		}
	case "-g", "-l":
		if len(c.Args) != 0 {
			return c, false
		}
	}
	return c, true
}

// ethtoolOut collects a command's output for its two streams.
type ethtoolOut struct {
	out, err strings.Builder
	status   int
}

func (o *ethtoolOut) printf(format string, args ...any) { fmt.Fprintf(&o.out, format, args...) }

func (o *ethtoolOut) fail(format string, args ...any) {
	fmt.Fprintf(&o.err, format, args...)
	o.status = 1
}

// runEthtool applies c to n. l.mu must be held.
func (l *Lib) runEthtool(n *nic, c EthtoolCmd) *ethtoolOut {
	o := &ethtoolOut{}
	switch c.Op {
	case "-K":
		l.ethtoolFeatures(n, c, o)
	case "-G":
		l.ethtoolRings(n, c, o)
	case "-g":
		ethtoolShowRings(n, o)
	case "-X":
		l.ethtoolRSS(n, c, o)
	case "-L":
		l.ethtoolChannels(n, c, o)
	case "-l":
		ethtoolShowChannels(n, o)
	case "-N":
		l.ethtoolNtuple(n, c, o)
	}
	return o
}

func onOff(s string) (bool, bool) {
	switch s {
	case "on":
		return true, true
	case "off":
		return false, true
	}
	return false, false
}

func (l *Lib) ethtoolFeatures(n *nic, c EthtoolCmd, o *ethtoolOut) {
	for i := 0; i < len(c.Args); i += 2 {
		on, ok := onOff(c.Args[i+1])
		if !ok {
			o.fail("ethtool: bad command line argument(s)\nFor more information run ethtool -h\n")
			return
		}
		if !on && n.ntuple {
			// Turning ntuple filters off drops the rules, as drivers do.
			for _, r := range n.rules {
				if n.st != nil && r.sid >= 0 {
					n.st.NIC().DeleteFlowRule(r.sid)
				}
			}
			n.rules = nil
		}
		n.ntuple = on
	}
}

func (l *Lib) ethtoolRings(n *nic, c EthtoolCmd, o *ethtoolOut) {
	r := n.rings
	for i := 0; i < len(c.Args); i += 2 {
		v := c.Args[i+1]
		switch c.Args[i] {
		case "tcp-data-split":
			switch v {
			case "on":
				r.TCPDataSplit = true
			case "off", "auto":
				r.TCPDataSplit = false
			default:
				o.fail("ethtool: bad command line argument(s)\nFor more information run ethtool -h\n")
				return
			}
		case "hds-thresh":
			x, err := strconv.ParseUint(v, 0, 32)
			if err != nil {
				o.fail("ethtool: bad command line argument(s)\nFor more information run ethtool -h\n")
				return
			}
			if x > maxHDSThresh {
				o.fail("netlink error: hds-thresh is greater than the maximum\nnetlink error: Invalid argument\n")
				return
			}
			r.HDSThresh = uint32(x)
		}
	}
	if n.st != nil {
		if err := n.st.NIC().SetRings(r); err != nil {
			o.fail("netlink error: %s\nnetlink error: %s\n", errMessage(err), errText(err))
			return
		}
	}
	n.rings = r
}

// maxHDSThresh is the emulated NIC's largest header-split threshold.
const maxHDSThresh = 1024

func ethtoolShowRings(n *nic, o *ethtoolOut) {
	split := "off"
	if n.rings.TCPDataSplit {
		split = "on"
	}
	o.printf("Ring parameters for %s:\nPre-set maximums:\nRX:\t\t\t2048\nRX Mini:\t\tn/a\nRX Jumbo:\t\tn/a\nTX:\t\t\t512\nTX push buff len:\tn/a\nHDS thresh:\t\t%d\n",
		n.name, maxHDSThresh)
	o.printf("Current hardware settings:\nRX:\t\t\t2048\nRX Mini:\t\tn/a\nRX Jumbo:\t\tn/a\nTX:\t\t\t512\nRX Buf Len:\t\tn/a\nCQE Size:\t\tn/a\nTX Push:\t\toff\nRX Push:\t\toff\nTX push buff len:\tn/a\nTCP data split:\t\t%s\nHDS thresh:\t\t%d\n",
		split, n.rings.HDSThresh)
}

func (l *Lib) ethtoolRSS(n *nic, c EthtoolCmd, o *ethtoolOut) {
	if c.Args[0] == "default" {
		if n.st != nil {
			n.st.NIC().SetRSS(n.channels)
		}
		n.rss = 0
		return
	}
	x, err := strconv.Atoi(c.Args[1])
	if err != nil || x < 1 || x > n.channels {
		o.fail("Cannot set RX flow hash configuration: Invalid argument\n")
		return
	}
	if n.st != nil {
		if err := n.st.NIC().SetRSS(x); err != nil {
			o.fail("Cannot set RX flow hash configuration: %s\n", errText(err))
			return
		}
	}
	n.rss = x
}

// maxChannels is the emulated NIC's channel maximum (ethtool -l).
const maxChannels = stack.MaxChannels

func (l *Lib) ethtoolChannels(n *nic, c EthtoolCmd, o *ethtoolOut) {
	rx, tx, combined := n.channels, n.txChannels, 0
	if len(c.Args)%2 != 0 || len(c.Args) == 0 {
		o.fail("ethtool: bad command line argument(s)\nFor more information run ethtool -h\n")
		return
	}
	for i := 0; i < len(c.Args); i += 2 {
		v, err := strconv.ParseUint(c.Args[i+1], 0, 32)
		if err != nil {
			o.fail("ethtool: bad command line argument(s)\nFor more information run ethtool -h\n")
			return
		}
		switch c.Args[i] {
		case "rx":
			rx = int(v)
		case "tx":
			tx = int(v)
		case "combined":
			combined = int(v)
		case "other":
			if v != 0 {
				o.fail("netlink error: requested channel count exceeds maximum\nnetlink error: Invalid argument\n")
				return
			}
		default:
			o.fail("ethtool: bad command line argument(s)\nFor more information run ethtool -h\n")
			return
		}
	}
	// ethnl_set_channels: the maximums, at least one RX and one TX
	// channel, then ethtool_check_max_channel: the RSS indirection table,
	// the ntuple rules, the memory providers (bound queues).
	if rx > maxChannels || tx > maxChannels || combined != 0 {
		o.fail("netlink error: requested channel count exceeds maximum\nnetlink error: Invalid argument\n")
		return
	}
	if rx == 0 || tx == 0 {
		o.fail("netlink error: requested channel counts would result in no RX or TX channel being configured\nnetlink error: Invalid argument\n")
		return
	}
	if n.rss > 0 && rx <= n.rss-1 {
		o.fail("netlink error: requested channel counts are too low for existing indirection table (%d)\nnetlink error: Invalid argument\n", n.rss-1)
		return
	}
	for _, r := range n.rules {
		if rx <= r.r.Queue {
			o.fail("netlink error: requested channel counts are too low for existing ntuple filter settings\nnetlink error: Invalid argument\n")
			return
		}
	}
	if n.st != nil {
		for q := n.channels - 1; q >= rx; q-- {
			if _, bound := n.st.BoundTo(q); bound {
				o.fail("netlink error: requested channel counts are too low for existing memory provider setting (%d)\nnetlink error: Invalid argument\n", q+1)
				return
			}
		}
		if err := n.st.NIC().SetChannels(rx); err != nil {
			o.fail("netlink error: %s\nnetlink error: %s\n", errMessage(err), errText(err))
			return
		}
	}
	n.channels, n.txChannels = rx, tx
	if n.rss > rx {
		n.rss = rx
	}
}

func ethtoolShowChannels(n *nic, o *ethtoolOut) {
	o.printf("Channel parameters for %s:\nPre-set maximums:\nRX:\t\t%d\nTX:\t\t%d\nOther:\t\tn/a\nCombined:\tn/a\n", n.name, maxChannels, maxChannels)
	o.printf("Current hardware settings:\nRX:\t\t%d\nTX:\t\t%d\nOther:\t\tn/a\nCombined:\tn/a\n", n.channels, n.txChannels)
}

func (l *Lib) ethtoolNtuple(n *nic, c EthtoolCmd, o *ethtoolOut) {
	bad := func() { o.fail("ethtool: bad command line argument(s)\nFor more information run ethtool -h\n") }
	if len(c.Args) == 2 && c.Args[0] == "delete" {
		id, err := strconv.Atoi(c.Args[1])
		if err != nil {
			bad()
			return
		}
		for i, r := range n.rules {
			if r.id == id {
				if n.st != nil && r.sid >= 0 {
					n.st.NIC().DeleteFlowRule(r.sid)
				}
				n.rules = append(n.rules[:i], n.rules[i+1:]...)
				return
			}
		}
		o.fail("rmgr: Cannot delete RX class rule: No such file or directory\nCannot delete classification rule\n")
		return
	}
	if len(c.Args) < 2 || c.Args[0] != "flow-type" || (c.Args[1] != "tcp4" && c.Args[1] != "tcp6") {
		bad()
		return
	}
	v6 := c.Args[1] == "tcp6"
	var r stack.FlowRule
	queue := -2
	for i := 2; i < len(c.Args); i += 2 {
		if i+1 >= len(c.Args) {
			bad()
			return
		}
		k, v := c.Args[i], c.Args[i+1]
		switch k {
		case "src-ip", "dst-ip":
			a, err := netip.ParseAddr(v)
			if err != nil || a.Is6() != v6 {
				o.fail("Invalid %s value: %s\n", map[bool]string{true: "IPv6", false: "IPv4"}[v6], v)
				o.fail("ethtool: bad command line argument(s)\nFor more information run ethtool -h\n")
				return
			}
			if k == "src-ip" {
				r.Src = a
			}
		case "src-port", "dst-port":
			p, err := strconv.ParseUint(v, 0, 16)
			if err != nil {
				bad()
				return
			}
			if k == "src-port" {
				r.SrcPort = uint16(p)
			} else {
				r.DstPort = uint16(p)
			}
		case "queue", "action":
			q, err := strconv.Atoi(v)
			if err != nil {
				bad()
				return
			}
			queue = q
		case "loc":
			if _, err := strconv.Atoi(v); err != nil {
				bad()
				return
			}
		default:
			bad()
			return
		}
	}
	if queue == -2 {
		bad()
		return
	}
	if !n.ntuple {
		o.fail("rmgr: Cannot insert RX class rule: Operation not supported\n")
		return
	}
	if queue < 0 || queue >= n.channels {
		o.fail("rmgr: Cannot insert RX class rule: Invalid argument\n")
		return
	}
	r.Queue = queue
	nr := &nicRule{id: n.nextRule, r: r, sid: -1}
	if n.st != nil {
		sid, err := n.st.NIC().AddFlowRule(r)
		if err != nil {
			o.fail("rmgr: Cannot insert RX class rule: %s\n", errText(err))
			return
		}
		nr.sid = sid
	}
	n.nextRule++
	n.rules = append(n.rules, nr)
	o.printf("Added rule with ID %d\n", nr.id)
}

// errText is an error's errno text as strerror has it ("Invalid
// argument").
func errText(err error) string {
	t := unix.Errno(Errno(err)).Error()
	if t == "" {
		return t
	}
	return strings.ToUpper(t[:1]) + t[1:]
}

// errMessage is the message part of an error from the stack ("set rings:
// can't ...: invalid argument" → "can't ...").
func errMessage(err error) string {
	s := err.Error()
	if i := strings.Index(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[:i]
	}
	return s
}

// ethtool runs cmd if it is an emulated ethtool command: the output goes
// where the command line sends it (stdout to pipe when popen reads it),
// and the wait status comes back. ok is false when libc should run it.
func (l *Lib) ethtool(cmd string, pipe int) (status int, ok bool) {
	c, parsed := ParseEthtool(cmd)
	if !parsed || !l.choose() {
		return 0, false
	}
	l.mu.Lock()
	n := l.nicByName(c.Ifname)
	var o *ethtoolOut
	if n != nil {
		o = l.runEthtool(n, c)
	}
	l.mu.Unlock()
	if n == nil {
		return 0, false
	}
	l.logf("%q applied to the emulated NIC: exit %d", cmd, o.status)
	write := func(fd int, s string) {
		if fd == 1 && pipe >= 0 {
			fd = pipe
		}
		for b := []byte(s); fd >= 0 && len(b) > 0; {
			k, err := unix.Write(fd, b)
			if err != nil {
				return
			}
			b = b[k:]
		}
	}
	write(c.Stdout, o.out.String())
	write(c.Stderr, o.err.String())
	return o.status << 8, true
}

// System is system(3) for an ethtool command line; handled is false when
// libc should run it.
func (l *Lib) System(cmd string) (status int, handled bool) { return l.ethtool(cmd, -1) }

// Popen is popen(3, "r") for an ethtool command line: it returns the read
// end of a pipe holding the output, and the status pclose will return;
// Pass when libc should run it.
func (l *Lib) Popen(cmd string) (fd, status int) {
	if _, ok := ParseEthtool(cmd); !ok {
		return Pass, 0
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return Pass, 0
	}
	status, ok := l.ethtool(cmd, p[1])
	unix.Close(p[1])
	if !ok {
		unix.Close(p[0])
		return Pass, 0
	}
	return p[0], status
}

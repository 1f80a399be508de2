package ncdevmem

import (
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"

	"github.com/xdevmem/xdevmem/stack"
)

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

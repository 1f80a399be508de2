package compat

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat/ethnl"
	"github.com/xdevmem/xdevmem/compat/netdev"
	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
)

// Status is a probe check's outcome.
type Status string

// Check outcomes.
const (
	// StatusPass: the requirement holds.
	StatusPass Status = "pass"
	// StatusFail: the requirement does not hold; the kernel backend cannot
	// work until the hint is acted on.
	StatusFail Status = "fail"
	// StatusSkip: the check could not run (an earlier check failed) or
	// does not apply.
	StatusSkip Status = "skip"
)

// The probe's checks, in the order it runs them.
const (
	CheckNetdevFamily = "netdev-family"
	CheckDevice       = "device"
	CheckRXQueues     = "rx-queues"
	CheckQueueMgmt    = "queue-management"
	CheckHeaderSplit  = "tcp-data-split"
	CheckHDSThresh    = "hds-thresh"
	CheckNtuple       = "ntuple"
	CheckDmabuf       = "dmabuf-source"
)

// Check is one requirement of kernel devmem and what the probe found.
type Check struct {
	// Name is one of the Check* constants.
	Name string `json:"name"`
	// Status is pass, fail or skip.
	Status Status `json:"status"`
	// Detail says what the probe saw.
	Detail string `json:"detail"`
	// Hint says what a person can do about a failure.
	Hint string `json:"hint,omitempty"`
	// Errno is the kernel's errno name (EOPNOTSUPP) when a request failed.
	Errno string `json:"errno,omitempty"`
	// Err is the failure as an error: errors.Is matches the kernel's errno.
	Err error `json:"-"`
}

// ProbeResult is what Probe found, check by check.
type ProbeResult struct {
	// Ifname is the probed interface.
	Ifname string `json:"ifname"`
	// Ifindex is its index, 0 if not found.
	Ifindex int `json:"ifindex,omitempty"`
	// Driver is its driver, "" if unknown.
	Driver string `json:"driver,omitempty"`
	// Kernel is the kernel release (uname -r).
	Kernel string `json:"kernel,omitempty"`
	// Checks are the checks in the order they ran.
	Checks []Check `json:"checks"`
	// Emulation says whether the emulated backend could run on the
	// interface instead; nil when the probe could not tell (no such
	// interface).
	Emulation *Emulation `json:"emulation,omitempty"`
	// TokenMode is the token release mode a bind-rx without the
	// autorelease attribute gets from this kernel, and why; the emulation
	// defaults to the same, so a program sees one behaviour on either
	// backend.
	TokenMode netdev.AutoreleaseDefault `json:"token_mode"`
}

// Emulation is the probe's word on the emulated backend, which needs an
// Ethernet device (frames with Ethernet headers, native or generic XDP,
// AF_XDP).
type Emulation struct {
	// Possible is false when the interface cannot carry the emulation.
	Possible bool `json:"possible"`
	// Detail says why.
	Detail string `json:"detail"`
}

// Supported reports whether no check failed: the kernel backend can bind
// and receive on the interface.
func (r *ProbeResult) Supported() bool {
	_, failed := r.firstFailure()
	return !failed
}

func (r *ProbeResult) firstFailure() (Check, bool) {
	for _, c := range r.Checks {
		if c.Status == StatusFail {
			return c, true
		}
	}
	return Check{}, false
}

// Reason says in one line why the kernel backend can or cannot be used:
// the first failing check and what it found.
func (r *ProbeResult) Reason() string {
	c, failed := r.firstFailure()
	if !failed {
		return fmt.Sprintf("kernel devmem supported on %s: every check passed", r.Ifname)
	}
	if r.Emulation != nil && !r.Emulation.Possible {
		return fmt.Sprintf("%s: %s; the emulated backend cannot run on %s either (not an Ethernet device)", c.Name, c.Detail, r.Ifname)
	}
	return fmt.Sprintf("%s: %s", c.Name, c.Detail)
}

// Err is nil when supported, else an *UnsupportedError for the first
// failing check: it matches devmemapi.ErrNotSupported and the check's
// errno (EOPNOTSUPP for a driver without queue management).
func (r *ProbeResult) Err() error {
	c, failed := r.firstFailure()
	if !failed {
		return nil
	}
	return &UnsupportedError{Ifname: r.Ifname, Check: c.Name, Detail: c.Detail, Hint: c.Hint, Err: c.Err}
}

// Check returns the named check.
func (r *ProbeResult) Check(name string) (Check, bool) {
	for _, c := range r.Checks {
		if c.Name == name {
			return c, true
		}
	}
	return Check{}, false
}

// MarshalJSON adds "supported" and "reason" to the fields.
func (r ProbeResult) MarshalJSON() ([]byte, error) {
	type fields ProbeResult
	return json.Marshal(struct {
		Supported bool   `json:"supported"`
		Reason    string `json:"reason"`
		fields
	}{r.Supported(), r.Reason(), fields(r)})
}

// WriteTable writes the result as an aligned table with a verdict line
// and, under each failing check, the hint.
func (r *ProbeResult) WriteTable(w io.Writer) error {
	head := fmt.Sprintf("xdevmem probe %s", r.Ifname)
	if r.Ifindex != 0 {
		head += fmt.Sprintf(" (ifindex %d", r.Ifindex)
		if r.Driver != "" {
			head += ", driver " + r.Driver
		}
		head += ")"
	}
	if r.Kernel != "" {
		head += ", kernel " + r.Kernel
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, head)
	fmt.Fprintln(tw, "CHECK\tSTATUS\tDETAIL")
	for _, c := range r.Checks {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Name, c.Status, c.Detail)
		if c.Status == StatusFail && c.Hint != "" {
			fmt.Fprintf(tw, "\t\t→ %s\n", c.Hint)
		}
	}
	if r.Supported() {
		fmt.Fprintln(tw, "result: supported — the kernel backend can be used")
	} else {
		fmt.Fprintf(tw, "result: not supported — %s\n", r.Reason())
	}
	if em := r.Emulation; em != nil {
		if em.Possible {
			fmt.Fprintf(tw, "emulation: possible — %s\n", em.Detail)
		} else {
			fmt.Fprintf(tw, "emulation: not possible — %s\n", em.Detail)
		}
	}
	fmt.Fprintf(tw, "token mode: autorelease=%d by default — %s; the emulation defaults to the same (-a 0|1 chooses)\n", b2i(r.TokenMode.On), r.TokenMode.Reason)
	return tw.Flush()
}

// UnsupportedError says why the kernel backend cannot run on an interface.
// It matches devmemapi.ErrNotSupported and unwraps to the failing check's
// error (so the kernel's errno matches too).
type UnsupportedError struct {
	// Ifname is the interface.
	Ifname string
	// Check is the first failing check.
	Check string
	// Detail is what the check found.
	Detail string
	// Hint says what to do.
	Hint string
	// Err is the check's error, nil when it has none.
	Err error
}

// Error formats "kernel devmem not supported on IF: check: detail".
func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("kernel devmem not supported on %s: %s: %s", e.Ifname, e.Check, e.Detail)
}

// Is matches devmemapi.ErrNotSupported.
func (e *UnsupportedError) Is(target error) bool { return target == devmemapi.ErrNotSupported }

// Unwrap returns the check's error.
func (e *UnsupportedError) Unwrap() error { return e.Err }

// Probe checks, one requirement at a time, whether the kernel's own devmem
// TCP can run on ifname in the calling thread's network namespace. It
// needs CAP_NET_ADMIN for the bind-rx check. It fails only for an empty
// name; everything else is a check's outcome.
func Probe(ifname string) (*ProbeResult, error) { return Env{}.Probe(ifname) }

// probeFD is the dmabuf fd of the probe's bind-rx: never an open file, so
// a driver that passes the kernel's queue-management check stops at
// dma_buf_get with EBADF and nothing is bound.
const probeFD = math.MaxInt32

// Probe runs the probe through e (see the package Probe).
//
// The queue-management check sends a real bind-rx for RX queue 0 with an
// fd that is never open (nothing can be bound): the kernel (6.15+) refuses
// a driver without queue-management ops (netdev_need_ops_lock) with
// EOPNOTSUPP before it looks at the fd, and a capable driver gets as far as
// dma_buf_get, which fails EBADF. The probe therefore proves the first but
// not that the driver also restarts queues with the memory provider; only
// a bind with a real dmabuf proves that.
func (e Env) Probe(ifname string) (*ProbeResult, error) {
	if ifname == "" {
		return nil, fmt.Errorf("probe: empty interface name: %w", unix.EINVAL)
	}
	r := &ProbeResult{Ifname: ifname}
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		r.Kernel = unix.ByteSliceToString(uts.Release[:])
	}
	add := func(c Check) { r.Checks = append(r.Checks, c) }
	skipRest := func(reason string, names ...string) {
		for _, n := range names {
			add(Check{Name: n, Status: StatusSkip, Detail: reason})
		}
	}

	// netdev family and its devmem ops.
	nd, err := e.netdev()
	if err == nil {
		defer nd.Close()
		add(e.familyCheck(nd.Family()))
		r.TokenMode = netdev.DefaultAutorelease(nd)
	} else {
		r.TokenMode = netdev.AutoreleaseDefault{On: true, Reason: "no netdev family; upstream devmem frees tokens per socket on close (autorelease on)"}
		nd = nil
		c := Check{Name: CheckNetdevFamily, Status: StatusFail, Err: err, Errno: errnoName(err)}
		if errors.Is(err, unix.ENOENT) {
			c.Detail = "the kernel has no netdev generic netlink family"
			c.Hint = "run Linux 6.12 or later with CONFIG_NET_DEVMEM=y"
		} else {
			c.Detail = err.Error()
			c.Hint = "check that generic netlink works here (ip netns, seccomp)"
		}
		add(c)
	}
	haveBindRX := nd != nil && nd.Family().HasOp(netdev.CmdBindRX)

	// The device.
	ifindex, driver, err := e.lookup(ifname)
	if err != nil {
		add(Check{Name: CheckDevice, Status: StatusFail, Err: err, Errno: errnoName(err),
			Detail: fmt.Sprintf("no interface %s in this network namespace", ifname),
			Hint:   "check the name with `ip link` (and the namespace)"})
		skipRest("needs the device", CheckRXQueues, CheckQueueMgmt, CheckHeaderSplit, CheckHDSThresh, CheckNtuple)
		add(e.dmabufCheck())
		return r, nil
	}
	r.Ifindex, r.Driver = ifindex, driver
	add(deviceCheck(nd, ifindex, driver))

	// Queues.
	if nd == nil {
		skipRest("needs the netdev family", CheckRXQueues, CheckQueueMgmt)
	} else {
		add(queuesCheck(nd, ifindex, ifname))
		if haveBindRX {
			add(queueMgmtCheck(nd, ifindex))
		} else {
			skipRest("needs bind-rx", CheckQueueMgmt)
		}
	}

	// Header split, threshold and ntuple through ethtool.
	et, err := e.ethtool()
	if err != nil {
		add(Check{Name: CheckHeaderSplit, Status: StatusFail, Err: err, Errno: errnoName(err),
			Detail: "ethtool netlink: " + err.Error(),
			Hint:   "the kernel needs CONFIG_ETHTOOL_NETLINK"})
		skipRest("needs ethtool netlink", CheckHDSThresh, CheckNtuple)
	} else {
		defer et.Close()
		for _, c := range ringsChecks(et, ifindex, ifname) {
			add(c)
		}
		add(ntupleCheck(et, ifindex, ifname))
	}

	add(e.dmabufCheck())
	e.emulationCheck(r)
	return r, nil
}

// emulationCheck fills in r.Emulation (after the checks: where the
// emulation cannot run, their hints stop suggesting it).
func (e Env) emulationCheck(r *ProbeResult) {
	eth, err := e.ethernet(r.Ifname)
	switch {
	case err != nil:
		return
	case eth:
		r.Emulation = &Emulation{Possible: true, Detail: fmt.Sprintf("%s is an Ethernet device: the emulated backend (AF_XDP, XDP, gVisor) can run on it (--backend emulated)", r.Ifname)}
		return
	}
	r.Emulation = &Emulation{Detail: fmt.Sprintf("%s is not an Ethernet device (the emulation needs Ethernet frames, XDP and AF_XDP)", r.Ifname)}
	for i := range r.Checks {
		h := r.Checks[i].Hint
		for _, s := range []string{", or the emulated backend", " or the emulated backend"} {
			h = strings.ReplaceAll(h, s, "")
		}
		r.Checks[i].Hint = h
	}
}

func errnoName(err error) string {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return devmemerr.ErrnoName(errno)
	}
	return ""
}

func (e Env) familyCheck(f netdev.Family) Check {
	c := Check{Name: CheckNetdevFamily, Status: StatusPass}
	var ops []string
	if f.HasOp(netdev.CmdBindRX) {
		ops = append(ops, "bind-rx")
	}
	if f.HasOp(netdev.CmdBindTX) {
		ops = append(ops, "bind-tx")
	}
	c.Detail = fmt.Sprintf("id %d, version %d, devmem ops: %s", f.ID, f.Version, strings.Join(ops, " "))
	if len(ops) == 0 {
		c.Detail = fmt.Sprintf("id %d, version %d, no bind-rx op", f.ID, f.Version)
		c.Status = StatusFail
		c.Hint = "run Linux 6.12 or later (devmem TCP RX) with CONFIG_NET_DEVMEM=y"
		c.Err = fmt.Errorf("netdev family without bind-rx: %w", devmemapi.ErrNotSupported)
		return c
	}
	switch v, ok := kernelConfig(e.KernelConfigPath, "CONFIG_NET_DEVMEM"); {
	case !ok:
		c.Detail += "; kernel config not readable"
	case v == "y":
		c.Detail += "; CONFIG_NET_DEVMEM=y"
	default:
		c.Status = StatusFail
		c.Detail += "; CONFIG_NET_DEVMEM is not set"
		c.Hint = "rebuild the kernel with CONFIG_NET_DEVMEM=y"
		c.Err = fmt.Errorf("CONFIG_NET_DEVMEM not set: %w", devmemapi.ErrNotSupported)
	}
	return c
}

func deviceCheck(nd *netdev.Conn, ifindex int, driver string) Check {
	c := Check{Name: CheckDevice, Status: StatusPass}
	if driver == "" {
		driver = "unknown"
	}
	c.Detail = fmt.Sprintf("ifindex %d, driver %s", ifindex, driver)
	if nd != nil {
		if d, err := nd.DevGet(ifindex); err == nil {
			c.Detail += ", xdp " + d.XDPFeatures.String()
		} else {
			c.Detail += ", dev-get: " + err.Error()
		}
	}
	return c
}

func queuesCheck(nd *netdev.Conn, ifindex int, ifname string) Check {
	c := Check{Name: CheckRXQueues}
	qs, err := nd.QueueGet(ifindex)
	if err != nil {
		c.Status, c.Err, c.Errno = StatusFail, err, errnoName(err)
		c.Detail = err.Error()
		c.Hint = "the kernel could not list the queues"
		return c
	}
	var rx, tx int
	var notes []string
	for _, q := range qs {
		if q.Type != netdev.QueueTypeRX {
			tx++
			continue
		}
		rx++
		switch {
		case q.Dmabuf != 0:
			notes = append(notes, fmt.Sprintf("rx %d bound to dmabuf %d", q.ID, q.Dmabuf))
		case q.IOUring:
			notes = append(notes, fmt.Sprintf("rx %d used by io_uring", q.ID))
		case q.XSK:
			notes = append(notes, fmt.Sprintf("rx %d used by AF_XDP", q.ID))
		}
	}
	if rx == 0 {
		c.Status = StatusFail
		c.Detail = "the kernel lists no RX queue (it lists the queues of up devices only)"
		c.Hint = fmt.Sprintf("ip link set %s up", ifname)
		c.Err = fmt.Errorf("no rx queues: %w", unix.ENODEV)
		return c
	}
	c.Status = StatusPass
	c.Detail = fmt.Sprintf("%d rx, %d tx", rx, tx)
	if len(notes) > 0 {
		c.Detail += "; " + strings.Join(notes, ", ")
	}
	return c
}

func queueMgmtCheck(nd *netdev.Conn, ifindex int) Check {
	c := Check{Name: CheckQueueMgmt}
	_, err := nd.BindRX(netdev.BindRXRequest{Ifindex: ifindex, FD: probeFD, Queues: netdev.RXQueues(0)})
	if err == nil || errors.Is(err, unix.EBADF) {
		c.Status = StatusPass
		c.Detail = "the driver passed bind-rx's queue-management check (the probe's dmabuf fd is invalid, so nothing was bound; a real bind still has to restart the queue)"
		return c
	}
	c.Status, c.Err, c.Errno = StatusFail, err, errnoName(err)
	if kc, ok := devmemerr.Classify(err); ok {
		c.Detail = fmt.Sprintf("%s (bind-rx %s)", kc.When, c.Errno)
		c.Hint = kc.Hint
	} else {
		c.Detail = err.Error()
		c.Hint = "see the kernel's message"
	}
	return c
}

func ringsChecks(et *ethnl.Conn, ifindex int, ifname string) []Check {
	hs := Check{Name: CheckHeaderSplit}
	th := Check{Name: CheckHDSThresh}
	r, err := et.Rings(ifindex)
	if err != nil {
		hs.Status, hs.Err, hs.Errno = StatusFail, err, errnoName(err)
		hs.Detail = fmt.Sprintf("the driver reports no ring parameters, so header split cannot be turned on (rings-get %s)", hs.Errno)
		if hs.Errno == "" {
			hs.Detail = "rings-get: " + err.Error()
		}
		hs.Hint = "devmem needs a NIC that splits headers from payload (ethtool -G IFACE tcp-data-split on)"
		th.Status, th.Detail = StatusSkip, "needs ring parameters"
		return []Check{hs, th}
	}
	switch r.TCPDataSplit {
	case ethnl.TCPDataSplitEnabled:
		hs.Status, hs.Detail = StatusPass, "on"
	case ethnl.TCPDataSplitDisabled:
		hs.Status, hs.Detail = StatusFail, "off"
		hs.Hint = fmt.Sprintf("ethtool -G %s tcp-data-split on", ifname)
		hs.Err = devmemerr.BindRXHDSDisabled.Err()
	default:
		hs.Status, hs.Detail = StatusFail, "the driver does not report tcp-data-split"
		hs.Hint = "devmem needs a NIC that splits headers from payload"
		hs.Err = devmemerr.BindRXHDSDisabled.Err()
	}
	hs.Errno = errnoName(hs.Err)
	switch {
	case r.HDSThreshMax == 0:
		th.Status, th.Detail = StatusSkip, "the driver does not report hds-thresh (the kernel keeps 0)"
	case r.HDSThresh == 0:
		th.Status, th.Detail = StatusPass, fmt.Sprintf("0 (max %d)", r.HDSThreshMax)
	default:
		th.Status = StatusFail
		th.Detail = fmt.Sprintf("%d (must be 0)", r.HDSThresh)
		th.Hint = fmt.Sprintf("ethtool -G %s hds-thresh 0", ifname)
		th.Err = devmemerr.BindRXHDSThresh.Err()
		th.Errno = errnoName(th.Err)
	}
	return []Check{hs, th}
}

func ntupleCheck(et *ethnl.Conn, ifindex int, ifname string) Check {
	c := Check{Name: CheckNtuple}
	f, err := et.Features(ifindex)
	switch {
	case err != nil:
		c.Status, c.Err, c.Errno = StatusFail, err, errnoName(err)
		c.Detail = "features-get: " + err.Error()
		c.Hint = "the kernel could not report the device's features"
	case f.Active[ethnl.NtupleFeature]:
		c.Status, c.Detail = StatusPass, "on"
	case f.Hardware[ethnl.NtupleFeature]:
		c.Status, c.Detail = StatusFail, "off: flows cannot be steered to the bound queue"
		c.Hint = fmt.Sprintf("ethtool -K %s ntuple on", ifname)
		c.Err = fmt.Errorf("ntuple off: %w", devmemapi.ErrNotSupported)
	default:
		c.Status, c.Detail = StatusFail, "the driver has no ntuple filters (off [fixed]): flows cannot be steered to a bound queue"
		c.Hint = "devmem needs a NIC with ntuple flow steering"
		c.Err = fmt.Errorf("no ntuple filters: %w", devmemapi.ErrNotSupported)
	}
	return c
}

func (e Env) dmabufCheck() Check {
	c := Check{Name: CheckDmabuf}
	if e.CallerDmabuf {
		c.Status, c.Detail = StatusPass, "the application supplies dmabuf fds"
		return c
	}
	path := e.udmabufPath()
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		c.Status, c.Errno = StatusFail, errnoName(err)
		c.Err = fmt.Errorf("open %s: %w (%w)", path, ErrNoUdmabuf, err)
		if errors.Is(err, unix.ENOENT) {
			c.Detail = fmt.Sprintf("no %s (CONFIG_UDMABUF) and no dmabuf fd supplied", path)
		} else {
			c.Detail = fmt.Sprintf("%s: %v", path, err)
		}
		c.Hint = "modprobe udmabuf, or pass a dmabuf fd exported by a GPU driver (BindRXConfig.DmabufFD)"
		return c
	}
	unix.Close(fd)
	c.Status, c.Detail = StatusPass, path
	return c
}

// RunProbe probes ifname and writes the result to w as a table, or as
// indented JSON when asJSON. ok is the verdict; err reports a failure to
// probe or to write, not an unsupported interface.
func RunProbe(w io.Writer, ifname string, asJSON bool) (ok bool, err error) {
	return Env{}.RunProbe(w, ifname, asJSON)
}

// RunProbe is the package RunProbe through e.
func (e Env) RunProbe(w io.Writer, ifname string, asJSON bool) (ok bool, err error) {
	r, err := e.Probe(ifname)
	if err != nil {
		return false, err
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		err = enc.Encode(r)
	} else {
		err = r.WriteTable(w)
	}
	if err != nil {
		return r.Supported(), fmt.Errorf("probe %s: write: %w", ifname, err)
	}
	return r.Supported(), nil
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

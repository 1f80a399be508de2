package umem

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Holder says who holds an interface's XDP hook: the program attached, the
// BPF link that attaches it, and the process that keeps the link (or the
// program) open. An AF_XDP socket on the same queue, the usual reason a
// bind fails with EBUSY, normally belongs to that process too.
type Holder struct {
	// Ifname and Ifindex name the interface.
	Ifname  string
	Ifindex int
	// ProgID is the attached XDP program's id; 0 when none is attached.
	ProgID uint32
	// LinkID is the BPF link holding it; 0 when it was attached without
	// one (netlink, as ip(8) does) or no process holds the link open.
	LinkID uint32
	// PID and Comm are a process holding the link, or else the program,
	// open; 0 and "" when none was found.
	PID  int
	Comm string
}

// String says who holds the interface, e.g. "interface eth1 is in use by
// xdevmem pid 1234 (XDP link id 12, program id 77)".
func (h Holder) String() string {
	name := h.Ifname
	if name == "" {
		name = fmt.Sprintf("ifindex %d", h.Ifindex)
	}
	switch {
	case h.ProgID == 0:
		return fmt.Sprintf("interface %s is in use (no XDP program attached: another AF_XDP socket holds the queue)", name)
	case h.PID == 0:
		return fmt.Sprintf("interface %s is in use by XDP program id %d, which no process holds open (attached through netlink; `ip link set dev %s xdp off` removes it)", name, h.ProgID, name)
	case h.LinkID == 0:
		return fmt.Sprintf("interface %s is in use by %s pid %d (XDP program id %d)", name, h.Comm, h.PID, h.ProgID)
	}
	return fmt.Sprintf("interface %s is in use by %s pid %d (XDP link id %d, program id %d)", name, h.Comm, h.PID, h.LinkID, h.ProgID)
}

// InUseError is a bind or attach that failed because another socket or
// program holds the interface (EBUSY, EEXIST); it names the holder and
// unwraps to the kernel's errno.
type InUseError struct {
	Holder Holder
	Err    error
}

// Error is the holder's description and the errno.
func (e *InUseError) Error() string { return fmt.Sprintf("%s: %v", e.Holder, e.Err) }

// Unwrap returns the kernel's error.
func (e *InUseError) Unwrap() error { return e.Err }

// FindHolder looks up who holds ifindex's XDP hook, in the calling
// thread's network namespace: the attached program's id from rtnetlink,
// then, through /proc/*/fdinfo, a process with a BPF link or program file
// descriptor for that id (root sees every process). It is for error
// messages: slow (it reads every process's descriptors) and best effort.
func FindHolder(ifindex int) (Holder, error) {
	h := Holder{Ifindex: ifindex}
	if ifi, err := net.InterfaceByIndex(ifindex); err == nil {
		h.Ifname = ifi.Name
	}
	id, err := xdpProgID(ifindex)
	if err != nil {
		return h, fmt.Errorf("find xdp holder of ifindex %d: %w", ifindex, err)
	}
	h.ProgID = id
	if id == 0 {
		return h, nil
	}
	h.PID, h.LinkID = bpfHolder(id)
	if h.PID != 0 {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", h.PID)); err == nil {
			h.Comm = strings.TrimSpace(string(b))
		}
		if h.Comm == "" {
			h.Comm = "process"
		}
	}
	return h, nil
}

// inUse wraps err (EBUSY or EEXIST from a bind or attach on ifindex) in an
// *InUseError when the holder can be found.
func inUse(ifindex int, err error) error {
	h, herr := FindHolder(ifindex)
	if herr != nil {
		return err
	}
	return &InUseError{Holder: h, Err: err}
}

// rtnetlink's IFLA_XDP attributes.
const (
	iflaXDP          = 43
	iflaXDPProgID    = 4
	iflaXDPDrvProgID = 5
	iflaXDPSKBProgID = 6
	iflaXDPHWProgID  = 7
)

// linkAttrs dumps the links over rtnetlink (in the calling thread's
// network namespace) and returns ifindex's attributes.
func linkAttrs(ifindex int) ([]syscall.NetlinkRouteAttr, error) {
	rib, err := syscall.NetlinkRIB(unix.RTM_GETLINK, unix.AF_UNSPEC)
	if err != nil {
		return nil, err
	}
	msgs, err := syscall.ParseNetlinkMessage(rib)
	if err != nil {
		return nil, err
	}
	for i := range msgs {
		m := &msgs[i]
		if m.Header.Type != unix.RTM_NEWLINK || len(m.Data) < syscall.SizeofIfInfomsg {
			continue
		}
		if int(int32(binary.NativeEndian.Uint32(m.Data[4:8]))) != ifindex {
			continue
		}
		return syscall.ParseNetlinkRouteAttr(m)
	}
	return nil, fmt.Errorf("ifindex %d: no such link: %w", ifindex, unix.ENODEV)
}

// xdpProgID returns the id of the XDP program attached to ifindex, 0 if
// none.
func xdpProgID(ifindex int) (uint32, error) {
	attrs, err := linkAttrs(ifindex)
	if err != nil {
		return 0, err
	}
	for _, a := range attrs {
		if a.Attr.Type&^unix.NLA_F_NESTED == iflaXDP {
			return xdpAttrProgID(a.Value), nil
		}
	}
	return 0, nil
}

// iflaNumRXQueues is IFLA_NUM_RX_QUEUES.
const iflaNumRXQueues = 32

// RXQueues is the number of RX queues allocated to the interface ifindex
// (rtnetlink's IFLA_NUM_RX_QUEUES, which sysfs may not show inside a
// namespace), read in the calling thread's network namespace. Only the
// active ones (ethtool -l) take an AF_XDP socket; binding one beyond them
// fails with EINVAL.
func RXQueues(ifindex int) (int, error) {
	attrs, err := linkAttrs(ifindex)
	if err != nil {
		return 0, err
	}
	for _, a := range attrs {
		if a.Attr.Type == iflaNumRXQueues && len(a.Value) >= 4 {
			return int(binary.NativeEndian.Uint32(a.Value)), nil
		}
	}
	return 0, fmt.Errorf("ifindex %d: no IFLA_NUM_RX_QUEUES: %w", ifindex, unix.ENOENT)
}

// xdpAttrProgID reads the program id from IFLA_XDP's nested attributes:
// IFLA_XDP_PROG_ID, else the id of the one mode attached.
func xdpAttrProgID(b []byte) uint32 {
	var any uint32
	for len(b) >= 4 {
		n := int(binary.NativeEndian.Uint16(b))
		typ := binary.NativeEndian.Uint16(b[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if n < 4 || n > len(b) {
			break
		}
		if n >= 8 {
			v := binary.NativeEndian.Uint32(b[4:])
			switch typ {
			case iflaXDPProgID:
				return v
			case iflaXDPDrvProgID, iflaXDPSKBProgID, iflaXDPHWProgID:
				any = v
			}
		}
		b = b[min((n+3)&^3, len(b)):]
	}
	return any
}

// bpfHolder finds a process with a BPF link (preferred) or program file
// descriptor for program id: its pid and the link's id (0 for a program
// descriptor). pid is 0 when there is none.
func bpfHolder(id uint32) (pid int, link uint32) {
	want := strconv.FormatUint(uint64(id), 10)
	procs, _ := filepath.Glob("/proc/[0-9]*")
	progPID := 0
	for _, p := range procs {
		fds, err := os.ReadDir(filepath.Join(p, "fd"))
		if err != nil {
			continue
		}
		for _, fd := range fds {
			target, err := os.Readlink(filepath.Join(p, "fd", fd.Name()))
			if err != nil || (target != "anon_inode:bpf_link" && target != "anon_inode:bpf-prog") {
				continue
			}
			info := fdinfo(filepath.Join(p, "fdinfo", fd.Name()))
			if info["prog_id"] != want {
				continue
			}
			n, _ := strconv.Atoi(filepath.Base(p))
			if target == "anon_inode:bpf_link" {
				l, _ := strconv.ParseUint(info["link_id"], 10, 32)
				return n, uint32(l)
			}
			if progPID == 0 {
				progPID = n
			}
		}
	}
	return progPID, 0
}

// fdinfo reads a /proc/PID/fdinfo/FD file's "key:\tvalue" lines.
func fdinfo(path string) map[string]string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	m := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

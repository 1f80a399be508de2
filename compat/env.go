package compat

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/mdlayher/genetlink"
	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat/ethnl"
	"github.com/xdevmem/xdevmem/compat/netdev"
)

// Env is how the kernel backend and the probe reach the kernel. The zero
// value reaches the real kernel from the calling thread's network
// namespace; tests substitute the fake of package compat/netdevtest
// (Dial: Kernel.Dial, Interface: Kernel.LookupInterface, Ethernet:
// Kernel.Ethernet).
type Env struct {
	// Dial opens a generic netlink connection for the netdev and ethtool
	// families. nil dials the kernel (with extended acks).
	Dial func() (*genetlink.Conn, error)
	// Interface finds a device by name: its ifindex and driver name ("" if
	// unknown). nil asks the kernel (net.InterfaceByName, and the ethtool
	// ioctl ETHTOOL_GDRVINFO or sysfs for the driver).
	Interface func(name string) (ifindex int, driver string, err error)
	// Ethernet reports whether a device is one the emulated backend can run
	// on: an Ethernet device (not loopback, a 6-byte hardware address), as
	// package stack requires. nil asks the kernel (net.InterfaceByName).
	Ethernet func(name string) (bool, error)
	// UdmabufPath is the udmabuf device; "" is DefaultUdmabufPath.
	UdmabufPath string
	// KernelConfigPath is the kernel's configuration (gzip); "" is
	// /proc/config.gz. When it cannot be read the probe says so and goes on.
	KernelConfigPath string
	// CallerDmabuf tells the probe the application brings its own dmabuf
	// fds (BindRXConfig.DmabufFD), so a missing udmabuf device is no
	// reason to fail.
	CallerDmabuf bool
}

func (e Env) netdev() (*netdev.Conn, error) {
	if e.Dial == nil {
		return netdev.Dial(nil)
	}
	c, err := e.Dial()
	if err != nil {
		return nil, fmt.Errorf("netdev dial: %w", err)
	}
	return netdev.NewConn(c)
}

func (e Env) ethtool() (*ethnl.Conn, error) {
	if e.Dial == nil {
		return ethnl.Dial(nil)
	}
	c, err := e.Dial()
	if err != nil {
		return nil, fmt.Errorf("ethtool dial: %w", err)
	}
	return ethnl.NewConn(c)
}

func (e Env) lookup(name string) (int, string, error) {
	if e.Interface != nil {
		return e.Interface(name)
	}
	return lookupInterface(name)
}

func (e Env) ethernet(name string) (bool, error) {
	if e.Ethernet != nil {
		return e.Ethernet(name)
	}
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return false, err
	}
	return ifi.Flags&net.FlagLoopback == 0 && len(ifi.HardwareAddr) == 6, nil
}

func (e Env) udmabufPath() string {
	if e.UdmabufPath == "" {
		return DefaultUdmabufPath
	}
	return e.UdmabufPath
}

// lookupInterface resolves name in the calling thread's namespace.
func lookupInterface(name string) (int, string, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return 0, "", fmt.Errorf("interface %s: %w", name, err)
	}
	return ifi.Index, driverName(name), nil
}

// driverName asks the ethtool ioctl (which works in the calling thread's
// namespace), then sysfs; "" when neither knows.
func driverName(name string) string {
	if fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err == nil {
		info, err := unix.IoctlGetEthtoolDrvinfo(fd, name)
		unix.Close(fd)
		if err == nil {
			if d := unix.ByteSliceToString(info.Driver[:]); d != "" {
				return d
			}
		}
	}
	if link, err := os.Readlink(filepath.Join("/sys/class/net", name, "device", "driver")); err == nil {
		return filepath.Base(link)
	}
	return ""
}

// kernelConfig reads one option from a gzip'd kernel config: its value
// ("y", "m", a string) or "n" when "is not set"; ok is false when the file
// cannot be read.
func kernelConfig(path, option string) (value string, ok bool) {
	if path == "" {
		path = "/proc/config.gz"
	}
	f, err := os.Open(path)
	if err != nil {
		return "", false
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return "", false
	}
	sc := bufio.NewScanner(zr)
	for sc.Scan() {
		line := sc.Text()
		if v, found := strings.CutPrefix(line, option+"="); found {
			return v, true
		}
		if line == "# "+option+" is not set" {
			return "n", true
		}
	}
	if sc.Err() != nil {
		return "", false
	}
	return "n", true
}

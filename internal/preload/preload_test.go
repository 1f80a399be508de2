package preload

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/stack"
)

// addr is the address of b's first byte as application memory.
func addr(b []byte) UPtr { return UPtr(uintptr(unsafe.Pointer(&b[0]))) }

// TestUserMemory: application memory is copied with the kernel's EFAULT
// for the null page, unmapped and protected pages and ranges past the user
// address space, and without a fault for good memory.
func TestUserMemory(t *testing.T) {
	page := unix.Getpagesize()
	none, err := unix.Mmap(-1, 0, page, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(none)
	ro, err := unix.Mmap(-1, 0, page, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(ro)
	gone, err := unix.Mmap(-1, 0, page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	goneAddr := addr(gone)
	unix.Munmap(gone)
	good := make([]byte, 64)
	copy(good, "hello")
	var buf [8]byte
	for _, tc := range []struct {
		name string
		p    UPtr
		out  bool
		want error
	}{
		{"null", 0, false, unix.EFAULT},
		{"first page", 8, false, unix.EFAULT},
		{"protected", addr(none), false, unix.EFAULT},
		{"unmapped", goneAddr, false, unix.EFAULT},
		{"kernel half", UPtr(1 << 63), false, unix.EFAULT},
		{"wraps", ^UPtr(0) - 3, false, unix.EFAULT},
		{"read-only, read", addr(ro), false, nil},
		{"read-only, write", addr(ro), true, unix.EFAULT},
		{"good, read", addr(good), false, nil},
		{"good, write", addr(good), true, nil},
	} {
		var err error
		if tc.out {
			err = CopyOut(tc.p, buf[:])
		} else {
			err = CopyIn(buf[:], tc.p)
		}
		if !errors.Is(err, tc.want) && err != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if err := CopyIn(nil, 0); err != nil {
		t.Errorf("zero bytes at NULL: %v", err)
	}
	if err := probe(addr(none), 1); !errors.Is(err, unix.EFAULT) {
		t.Errorf("probe of a protected page: %v", err)
	}
	if s, err := CString(addr(good), 31); s != "hello" || err != nil {
		t.Errorf("CString: %q %v", s, err)
	}
	long := make([]byte, 40)
	for i := range long {
		long[i] = 'x'
	}
	if _, err := CString(addr(long), 31); !errors.Is(err, unix.EINVAL) {
		t.Errorf("CString without NUL within 32 bytes: %v", err)
	}
}

// TestReadIovecs: UIO_MAXIOV, negative lengths and the MAX_RW_COUNT cap,
// as import_iovec has them.
func TestReadIovecs(t *testing.T) {
	mk := func(lens ...uint64) []byte {
		b := make([]byte, 16*len(lens))
		for i, l := range lens {
			binary.NativeEndian.PutUint64(b[i*16:], 0x10000)
			binary.NativeEndian.PutUint64(b[i*16+8:], l)
		}
		return b
	}
	if _, _, err := ReadIovecs(addr(mk(1)), 1025, nil); !errors.Is(err, unix.EMSGSIZE) {
		t.Errorf("1025 iovecs: %v", err)
	}
	if _, _, err := ReadIovecs(addr(mk(1<<63)), 1, nil); !errors.Is(err, unix.EINVAL) {
		t.Errorf("negative length: %v", err)
	}
	if _, n, err := ReadIovecs(addr(mk(1<<31, 1<<31)), 2, nil); err != nil || n != maxRWCount {
		t.Errorf("large: %d %v", n, err)
	}
	if _, _, err := ReadIovecs(8, 1, nil); !errors.Is(err, unix.EFAULT) {
		t.Errorf("bad array: %v", err)
	}
}

// TestSockaddr: inet_bind's and inet6_bind's checks.
func TestSockaddr(t *testing.T) {
	v4 := encodeSockaddr(unix.AF_INET, netip.MustParseAddrPort("10.1.2.3:5201"))
	v6 := encodeSockaddr(unix.AF_INET6, netip.MustParseAddrPort("[fd00::2]:80"))
	mapped := encodeSockaddr(unix.AF_INET6, netip.MustParseAddrPort("10.1.2.3:5201"))
	unspec := make([]byte, 16)
	for _, tc := range []struct {
		name string
		fam  int
		sa   []byte
		n    uint32
		want string
		err  error
	}{
		{"v4", unix.AF_INET, v4, 16, "10.1.2.3:5201", nil},
		{"v4 short", unix.AF_INET, v4, 15, "", unix.EINVAL},
		{"v6", unix.AF_INET6, v6, 28, "[fd00::2]:80", nil},
		{"v6 rfc2133 length", unix.AF_INET6, v6, 24, "[fd00::2]:80", nil},
		{"v6 short", unix.AF_INET6, v6, 23, "", unix.EINVAL},
		{"mapped", unix.AF_INET6, mapped, 28, "[::ffff:10.1.2.3]:5201", nil},
		{"v4 into v6 socket", unix.AF_INET6, append(v4, make([]byte, 12)...), 28, "", unix.EAFNOSUPPORT},
		{"v6 into v4 socket", unix.AF_INET, v6, 28, "", unix.EAFNOSUPPORT},
		{"unspec", unix.AF_INET, unspec, 16, "invalid AddrPort", nil},
		{"one byte", unix.AF_INET, v4, 1, "", unix.EINVAL},
	} {
		ap, err := sockaddr(tc.fam, addr(tc.sa), tc.n)
		if !errors.Is(err, tc.err) && err != tc.err {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.err)
			continue
		}
		if err == nil && ap.String() != tc.want {
			t.Errorf("%s: %v, want %s", tc.name, ap, tc.want)
		}
	}
	if _, err := sockaddr(unix.AF_INET, 8, 16); !errors.Is(err, unix.EFAULT) {
		t.Errorf("bad pointer: %v", err)
	}
}

func TestParseEthtool(t *testing.T) {
	for _, tc := range []struct {
		cmd            string
		ok             bool
		op, ifname     string
		args           string
		stdout, stderr int
	}{
		// ncdevmem 6.12's run_command strings.
		{"sudo ethtool -K eth1 ntuple off >&2", true, "-K", "eth1", "ntuple off", 2, 2},
		{"sudo ethtool -G eth1 tcp-data-split on >&2", true, "-G", "eth1", "tcp-data-split on", 2, 2},
		{"sudo ethtool -X eth1 equal 8 >&2", true, "-X", "eth1", "equal 8", 2, 2},
		{"sudo ethtool -L eth1 rx 8 tx 7", true, "-L", "eth1", "rx 8 tx 7", 1, 2},
		{"sudo ethtool -N eth1 flow-type tcp4 src-ip 1.2.3.4 dst-ip 1.2.3.5 src-port 5201 dst-port 5201 queue 8 >&2",
			true, "-N", "eth1", "flow-type tcp4 src-ip 1.2.3.4 dst-ip 1.2.3.5 src-port 5201 dst-port 5201 queue 8", 2, 2},
		{"sudo ethtool -N eth1 flow-type tcp6   dst-ip fd00::1   dst-port 5201 queue 8 >&2",
			true, "-N", "eth1", "flow-type tcp6 dst-ip fd00::1 dst-port 5201 queue 8", 2, 2},
		// Later selftests and scripts.
		{"ethtool -N eth1 delete 3", true, "-N", "eth1", "delete 3", 1, 2},
		{"/usr/sbin/ethtool -l eth1 2>/dev/null", true, "-l", "eth1", "", 1, -1},
		{"ethtool -g eth1 2>&1", true, "-g", "eth1", "", 1, 1},
		{"ethtool --set-channels eth1 combined 4 &> /dev/null", true, "-L", "eth1", "combined 4", -1, -1},
		{"ethtool -X eth1 default", true, "-X", "eth1", "default", 1, 2},
		{"ethtool -G eth1 hds-thresh 0 tcp-data-split on", true, "-G", "eth1", "hds-thresh 0 tcp-data-split on", 1, 2},
		// Not emulated: other programs, shell syntax, other options.
		{"ethtool -K eth1 tx off", false, "", "", "", 0, 0},
		{"ethtool -G eth1 rx 1024", false, "", "", "", 0, 0},
		{"ethtool -i eth1", false, "", "", "", 0, 0},
		{"ethtool -l eth1 | grep RX", false, "", "", "", 0, 0},
		{"ethtool -l eth1 > out.txt", false, "", "", "", 0, 0},
		{"ethtool -l eth1; echo", false, "", "", "", 0, 0},
		{"ethtool -l $IF", false, "", "", "", 0, 0},
		{"myethtool -l eth1", false, "", "", "", 0, 0},
		{"bin/ethtool -l eth1", false, "", "", "", 0, 0},
		{"ethtool -X eth1 weight 1 2", false, "", "", "", 0, 0},
		{"ethtool", false, "", "", "", 0, 0},
	} {
		c, ok := ParseEthtool(tc.cmd)
		if ok != tc.ok {
			t.Errorf("%q: ok %v, want %v", tc.cmd, ok, tc.ok)
			continue
		}
		if !ok {
			continue
		}
		if c.Op != tc.op || c.Ifname != tc.ifname || strings.Join(c.Args, " ") != tc.args || c.Stdout != tc.stdout || c.Stderr != tc.stderr {
			t.Errorf("%q: %+v", tc.cmd, c)
		}
	}
}

func FuzzParseEthtool(f *testing.F) {
	for _, s := range []string{"sudo ethtool -K eth1 ntuple off >&2", "ethtool -N eth1 flow-type tcp4 dst-port 1 queue 1",
		"ethtool -L eth1 rx 1 tx 0", "ethtool -l eth1 2>&1 >/dev/null", "ethtool -X eth1 equal 2", "sh -c ethtool"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, ok := ParseEthtool(s)
		if !ok {
			return
		}
		if ethtoolOps[c.Op] != c.Op || c.Ifname == "" || c.Stdout < -1 || c.Stdout > 2 || c.Stderr < -1 || c.Stderr > 2 {
			t.Fatalf("%q: %+v", s, c)
		}
		// Whatever it parsed applies to a NIC without failing to run.
		l := &Lib{cfg: Config{}}
		n := &nic{name: c.Ifname, channels: 2, txChannels: 2, ntuple: true, rings: stack.Rings{TCPDataSplit: true}}
		o := l.runEthtool(n, c)
		if o.status != 0 && o.err.Len() == 0 {
			t.Fatalf("%q failed without a message", s)
		}
		if n.channels < 1 || n.channels > maxChannels || n.rss > n.channels {
			t.Fatalf("%q left %d channels, rss %d", s, n.channels, n.rss)
		}
	})
}

// TestEthtoolEmulatedNIC applies the selftests' commands to an emulated
// NIC without a stack: outcomes and messages as ethtool and the kernel
// give them.
func TestEthtoolEmulatedNIC(t *testing.T) {
	l := &Lib{}
	n := &nic{name: "eth1", channels: 4, txChannels: 4, ntuple: true, rings: stack.Rings{TCPDataSplit: true}}
	run := func(cmd string) *ethtoolOut {
		t.Helper()
		c, ok := ParseEthtool(cmd)
		if !ok {
			t.Fatalf("%q not parsed", cmd)
		}
		return l.runEthtool(n, c)
	}
	for _, tc := range []struct {
		cmd      string
		status   int
		out, err string
	}{
		{"ethtool -X eth1 equal 2", 0, "", ""},
		{"ethtool -X eth1 equal 5", 1, "", "Cannot set RX flow hash configuration: Invalid argument\n"},
		{"ethtool -N eth1 flow-type tcp4 src-ip 10.0.0.1 dst-ip 10.0.0.2 src-port 1 dst-port 2 queue 3", 0, "Added rule with ID 0\n", ""},
		{"ethtool -N eth1 flow-type tcp4 dst-ip fd00::1 dst-port 2 queue 3", 1, "", "Invalid IPv4 value: fd00::1\n"},
		{"ethtool -N eth1 flow-type tcp6 dst-port 2 queue 9", 1, "", "rmgr: Cannot insert RX class rule: Invalid argument\n"},
		{"ethtool -L eth1 rx 0 tx 1", 1, "", "netlink error: requested channel counts would result in no RX or TX channel being configured\n"},
		{"ethtool -L eth1 rx 65 tx 1", 1, "", "netlink error: requested channel count exceeds maximum\n"},
		{"ethtool -L eth1 rx 1 tx 1", 1, "", "netlink error: requested channel counts are too low for existing indirection table (1)\n"},
		{"ethtool -L eth1 rx 3 tx 1", 1, "", "netlink error: requested channel counts are too low for existing ntuple filter settings\n"},
		{"ethtool -N eth1 delete 7", 1, "", "rmgr: Cannot delete RX class rule: No such file or directory\n"},
		{"ethtool -N eth1 delete 0", 0, "", ""},
		{"ethtool -L eth1 rx 3 tx 2", 0, "", ""},
		{"ethtool -K eth1 ntuple off", 0, "", ""},
		{"ethtool -N eth1 flow-type tcp4 dst-port 2 queue 1", 1, "", "rmgr: Cannot insert RX class rule: Operation not supported\n"},
		{"ethtool -K eth1 ntuple on", 0, "", ""},
		{"ethtool -G eth1 tcp-data-split off", 0, "", ""},
		{"ethtool -G eth1 hds-thresh 4096", 1, "", "netlink error: hds-thresh is greater than the maximum\n"},
		{"ethtool -l eth1", 0, "Channel parameters for eth1:", ""},
		{"ethtool -g eth1", 0, "TCP data split:\t\toff", ""},
	} {
		o := run(tc.cmd)
		if o.status != tc.status || !strings.Contains(o.out.String(), tc.out) || !strings.HasPrefix(o.err.String(), tc.err) {
			t.Errorf("%q: status %d, stdout %q, stderr %q", tc.cmd, o.status, o.out.String(), o.err.String())
		}
	}
	if n.channels != 3 || n.txChannels != 2 || n.rss != 2 || n.rings.TCPDataSplit || len(n.rules) != 0 {
		t.Errorf("NIC after the commands: %+v", n)
	}
}

type fakeHost struct{}

func (fakeHost) SetKind(int, Kind)      {}
func (fakeHost) SetState(int)           {}
func (fakeHost) Seq(int) uint32         { return 0 }
func (fakeHost) Wake(int)               {}
func (fakeHost) SetLingering(int, bool) {}

// FuzzGenl feeds arbitrary netdev and nlctrl requests to the netlink
// emulation: every answer is well-formed netlink for the request's
// sequence number, and nothing is bound without a dmabuf.
func FuzzGenl(f *testing.F) {
	ae := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	attr := func(t uint16, v []byte) []byte {
		b := make([]byte, 4, 4+len(v)+3)
		binary.NativeEndian.PutUint16(b, uint16(4+len(v)))
		binary.NativeEndian.PutUint16(b[2:], t)
		b = append(b, v...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		return b
	}
	u32 := func(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }
	f.Add(false, uint8(13), uint16(5), ae(attr(1, u32(1)), attr(3, u32(99)), attr(2|unix.NLA_F_NESTED, ae(attr(1, u32(1)), attr(3, u32(0))))))
	f.Add(false, uint8(13), uint16(5), ae(attr(1, u32(1)), attr(3, u32(0)), attr(2, nil)))
	f.Add(false, uint8(15), uint16(5), ae(attr(1, u32(1)), attr(3, u32(1))))
	f.Add(false, uint8(10), uint16(unix.NLM_F_DUMP|1), ae(attr(2, u32(1))))
	f.Add(false, uint8(1), uint16(5), ae(attr(1, u32(1))))
	f.Add(true, uint8(unix.CTRL_CMD_GETFAMILY), uint16(5), attr(unix.CTRL_ATTR_FAMILY_NAME, []byte("netdev\x00")))
	l := New(fakeHost{}, Config{Backend: "emulated"})
	fam := netdevFamily()
	f.Fuzz(func(t *testing.T, ctrl bool, cmd uint8, flags uint16, attrs []byte) {
		typ := fam.id
		if ctrl {
			typ = unix.GENL_ID_CTRL
		}
		raw := append(nlHeader(genlHdrLen+len(attrs), typ, flags|unix.NLM_F_REQUEST, 77, 0), append([]byte{cmd, 1, 0, 0}, attrs...)...)
		ms, ok := parseNlmsgs(raw)
		if !ok || len(ms) != 1 {
			return
		}
		g := &genlSock{l: l}
		for _, o := range []sockOpts{{}, {capAck: true, extAck: true}} {
			for _, d := range l.answer(g, o, ms[0]) {
				rs, ok := parseNlmsgs(d)
				if !ok || len(rs) == 0 {
					t.Fatalf("reply is not netlink: %x", d)
				}
				for _, r := range rs {
					if r.seq != 77 {
						t.Fatalf("reply seq %d", r.seq)
					}
				}
			}
		}
		if len(g.bindings) != 0 {
			t.Fatalf("bound without a dmabuf: %+v", g.bindings)
		}
	})
}

func TestErrno(t *testing.T) {
	for _, c := range []struct {
		err  error
		want int
	}{
		{nil, 0},
		{unix.EAGAIN, int(unix.EAGAIN)},
		{fmt.Errorf("recvmsg: %w", unix.EAGAIN), int(unix.EAGAIN)},
		{fmt.Errorf("a: %w", fmt.Errorf("b: %w", unix.ENOTCONN)), int(unix.ENOTCONN)},
		{errors.Join(errors.New("x"), fmt.Errorf("y: %w", unix.EPIPE)), int(unix.EPIPE)}, // two branches: errors.As
		{&os.SyscallError{Syscall: "bind", Err: unix.EADDRINUSE}, int(unix.EADDRINUSE)},
		{fmt.Errorf("read: %w", net.ErrClosed), int(unix.EBADF)},
		{os.ErrDeadlineExceeded, int(unix.EAGAIN)},
		{errors.New("something else"), int(unix.EIO)},
	} {
		if got := Errno(c.err); got != c.want {
			t.Errorf("Errno(%v) = %d, want %d", c.err, got, c.want)
		}
	}
}

// TestTimeoDuration: a time kept in jiffies becomes the wait it bounds.
// None (-1) and times too long to count in a time.Duration (the longest
// SO_RCVTIMEO or SO_LINGER the kernel keeps is ~2^63 jiffies) are no bound,
// never a negative or wrapped wait, which would end a blocking call at
// once.
func TestTimeoDuration(t *testing.T) {
	hz := 1e6 / jiffy()
	longest, err := timeoJiffies(math.MaxInt64/hz-2, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		j      int64
		want   time.Duration
		wantOK bool
	}{
		{-1, 0, false},
		{0, 0, true},
		{hz, time.Second, true},
		{longest, 0, false},
		{math.MaxInt64, 0, false},
	} {
		if d, ok := timeoDuration(c.j); d != c.want || ok != c.wantOK {
			t.Errorf("timeoDuration(%d) = %v, %v; want %v, %v", c.j, d, ok, c.want, c.wantOK)
		}
	}
	// SO_LINGER keeps its time the same way.
	var l lingerOpt
	l.set(1, -1)
	if d, ok := timeoDuration(l.jiffies); ok || d != 0 {
		t.Errorf("SO_LINGER {1, -1}: %v, %v; want no bound", d, ok)
	}
	l.set(1, 5)
	if d, ok := timeoDuration(l.jiffies); !ok || d != 5*time.Second {
		t.Errorf("SO_LINGER {1, 5}: %v, %v; want 5s", d, ok)
	}
}

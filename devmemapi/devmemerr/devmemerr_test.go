package devmemerr_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
)

// TestTable pins the table: every row, its errno and its kernel text. A
// change here is a change of the uAPI that both backends mirror.
func TestTable(t *testing.T) {
	want := []struct {
		name    string
		errno   unix.Errno
		message string
	}{
		{"bind-rx/not-admin", unix.EPERM, ""},
		{"bind-rx/missing-attr", unix.EINVAL, ""},
		{"bind-rx/no-device", unix.ENODEV, ""},
		{"bind-rx/no-queue-ops", unix.EOPNOTSUPP, ""},
		{"bind-rx/queue-attr", unix.EINVAL, ""},
		{"bind-rx/queue-type", unix.EINVAL, ""},
		{"bind-rx/queue-range", unix.EINVAL, ""},
		{"bind-rx/dma-mismatch", unix.EOPNOTSUPP, "DMA device mismatch between queue %u and %u (multi-PF device?)"},
		{"bind-rx/no-dma", unix.EOPNOTSUPP, "Device doesn't support DMA"},
		{"bind-rx/bad-fd", unix.EBADF, ""},
		{"bind-rx/not-dmabuf", unix.EINVAL, ""},
		{"bind-rx/autorelease-mismatch", unix.EBUSY, "System already configured with autorelease=%d"},
		{"bind-rx/queue-range-mp", unix.ERANGE, "rx queue index out of range"},
		{"bind-rx/hds-disabled", unix.EINVAL, "tcp-data-split is disabled"},
		{"bind-rx/hds-thresh", unix.EINVAL, "hds-thresh is not zero"},
		{"bind-rx/xdp-attached", unix.EEXIST, "unable to custom memory provider to device with XDP program attached"},
		{"bind-rx/queue-bound", unix.EEXIST, "designated queue already memory provider bound"},
		{"bind-rx/af-xdp", unix.EBUSY, "designated queue already in use by AF_XDP"},
		{"bind-rx/no-queue-restart", unix.EOPNOTSUPP, ""},
		{"bind-rx/not-picked-up", unix.ENODATA, ""},
		{"bind-tx/missing-attr", unix.EINVAL, ""},
		{"bind-tx/no-device", unix.ENODEV, ""},
		{"bind-tx/no-netmem-tx", unix.EOPNOTSUPP, "Driver does not support netmem TX"},
		{"bind-tx/no-dma", unix.EOPNOTSUPP, "Device doesn't support DMA"},
		{"bind-tx/bad-fd", unix.EBADF, ""},
		{"bind-tx/not-dmabuf", unix.EINVAL, ""},
		{"dontneed/short-optlen", unix.EINVAL, ""},
		{"dontneed/not-tcp", unix.EBADF, ""},
		{"dontneed/bad-optlen", unix.EINVAL, ""},
		{"dontneed/too-many-tokens", unix.EINVAL, ""},
		{"dontneed/no-binding", unix.EINVAL, ""},
		{"recvmsg/no-devmem-flag", unix.EFAULT, ""},
		{"recvmsg/cmsg-space", unix.Errno(524), ""},
		{"recvmsg/other-binding", unix.EFAULT, ""},
		{"recvmsg/unbound", unix.ENODEV, ""},
		{"sendmsg/too-many-iovecs", unix.EMSGSIZE, ""},
		{"sendmsg/unknown-binding", unix.EINVAL, ""},
		{"sendmsg/other-device", unix.ENODEV, ""},
		{"sendmsg/no-zerocopy", unix.EINVAL, ""},
		{"sendmsg/bad-cmsg", unix.EINVAL, ""},
		{"sendmsg/cmsg-perm", unix.EPERM, ""},
		{"sendmsg/outside-dmabuf", unix.EFAULT, ""},
	}
	if len(devmemerr.Cases) != len(want) {
		t.Fatalf("table has %d cases, want %d", len(devmemerr.Cases), len(want))
	}
	seen := map[string]bool{}
	for i, c := range devmemerr.Cases {
		w := want[i]
		if c.Name != w.name || c.Errno != w.errno || c.Message != w.message {
			t.Errorf("case %d = {%s %v %q}, want {%s %v %q}", i, c.Name, c.Errno, c.Message, w.name, w.errno, w.message)
		}
		if seen[c.Name] {
			t.Errorf("case %s listed twice", c.Name)
		}
		seen[c.Name] = true
		if op, _, _ := strings.Cut(c.Name, "/"); op != string(c.Op) {
			t.Errorf("case %s has op %s", c.Name, c.Op)
		}
		if c.When == "" || c.Hint == "" {
			t.Errorf("case %s lacks When or Hint", c.Name)
		}
	}
}

// TestLookup proves that every case with a message is found by its text,
// and that a message-less answer finds the first row of its op and errno:
// the check the kernel reaches first.
func TestLookup(t *testing.T) {
	for _, c := range devmemerr.Cases {
		msg := c.Message
		switch strings.Count(msg, "%") {
		case 1:
			msg = fmt.Sprintf(msg, 1)
		case 2:
			msg = fmt.Sprintf(msg, 3, 2)
		}
		got, ok := devmemerr.Lookup(c.Op, c.Errno, msg)
		if !ok {
			t.Errorf("Lookup(%s, %v, %q) found nothing", c.Op, c.Errno, msg)
			continue
		}
		if msg != "" && got.Name != c.Name {
			t.Errorf("Lookup(%s, %v, %q) = %s, want %s", c.Op, c.Errno, msg, got.Name, c.Name)
		}
	}
	for _, tt := range []struct {
		op    devmemerr.Op
		errno unix.Errno
		msg   string
		want  string
	}{
		{devmemerr.OpBindRX, unix.EINVAL, "", "bind-rx/missing-attr"},
		{devmemerr.OpBindRX, unix.EOPNOTSUPP, "", "bind-rx/no-queue-ops"},
		{devmemerr.OpBindRX, unix.EEXIST, "designated queue already memory provider bound", "bind-rx/queue-bound"},
		{devmemerr.OpBindRX, unix.EBUSY, "System already configured with autorelease=0", "bind-rx/autorelease-mismatch"},
		{devmemerr.OpBindTX, unix.EOPNOTSUPP, "Driver does not support netmem TX", "bind-tx/no-netmem-tx"},
		{devmemerr.OpDontNeed, unix.EINVAL, "", "dontneed/short-optlen"},
		{devmemerr.OpRecvMsg, unix.EFAULT, "", "recvmsg/no-devmem-flag"},
		// A real NIC's DMA errors have their own rows, not the
		// message-less "no queue management ops" one.
		{devmemerr.OpBindRX, unix.EOPNOTSUPP, "Device doesn't support DMA", "bind-rx/no-dma"},
		{devmemerr.OpBindRX, unix.EOPNOTSUPP, "DMA device mismatch between queue 1 and 0 (multi-PF device?)", "bind-rx/dma-mismatch"},
		{devmemerr.OpSendMsg, unix.EINVAL, "", "sendmsg/unknown-binding"},
		// An unknown message falls back to the message-less row.
		{devmemerr.OpBindRX, unix.EINVAL, "Unknown attribute type", "bind-rx/missing-attr"},
	} {
		got, ok := devmemerr.Lookup(tt.op, tt.errno, tt.msg)
		if !ok || got.Name != tt.want {
			t.Errorf("Lookup(%s, %v, %q) = %s, %v; want %s", tt.op, tt.errno, tt.msg, got.Name, ok, tt.want)
		}
	}
	if c, ok := devmemerr.Lookup(devmemerr.OpBindTX, unix.ERANGE, ""); ok {
		t.Errorf("Lookup of an undefined case found %s", c.Name)
	}
}

// TestErr proves that a case's error text carries the kernel's message,
// that errors.Is matches the errno through wrapping, and that Match and
// Classify tell cases of one errno apart by their message.
func TestErr(t *testing.T) {
	for _, tt := range []struct {
		c    devmemerr.Case
		args []any
		text string
	}{
		{devmemerr.BindRXQueueRangeMP, nil, "bind-rx: rx queue index out of range: numerical result out of range"},
		{devmemerr.BindRXDMAMismatch, []any{3, 2}, "bind-rx: DMA device mismatch between queue 3 and 2 (multi-PF device?): operation not supported"},
		{devmemerr.BindRXNoDMA, nil, "bind-rx: Device doesn't support DMA: operation not supported"},
		{devmemerr.SendMsgTooManyIovecs, nil, "sendmsg: message too long"},
		{devmemerr.BindRXNoQueueOps, nil, "bind-rx: operation not supported"},
		{devmemerr.BindRXAutoreleaseMismatch, []any{1}, "bind-rx: System already configured with autorelease=1: device or resource busy"},
		{devmemerr.BindTXNoNetmemTX, nil, "bind-tx: Driver does not support netmem TX: operation not supported"},
		{devmemerr.BindTXNoDMA, nil, "bind-tx: Device doesn't support DMA: operation not supported"},
		{devmemerr.DontNeedNotTCP, nil, "dontneed: bad file descriptor"},
		{devmemerr.RecvMsgCmsgSpace, nil, "recvmsg: errno 524"},
	} {
		err := fmt.Errorf("bind rx eth0 queues [0]: %w", tt.c.Err(tt.args...))
		if got := err.Error(); got != "bind rx eth0 queues [0]: "+tt.text {
			t.Errorf("%s: text %q, want suffix %q", tt.c.Name, got, tt.text)
		}
		if !errors.Is(err, tt.c.Errno) {
			t.Errorf("%s: errors.Is(err, %v) = false", tt.c.Name, tt.c.Errno)
		}
		if !devmemerr.Match(err, tt.c) {
			t.Errorf("%s: Match = false", tt.c.Name)
		}
		if got, ok := devmemerr.Classify(err); !ok || got.Name != tt.c.Name {
			t.Errorf("%s: Classify = %s, %v", tt.c.Name, got.Name, ok)
		}
	}
	if devmemerr.Match(devmemerr.BindRXHDSDisabled.Err(), devmemerr.BindRXHDSThresh) {
		t.Error("Match confused two EINVAL cases with different messages")
	}
	if devmemerr.Match(unix.EINVAL, devmemerr.BindRXMissingAttr) {
		t.Error("Match accepted a bare errno without the op")
	}
	if _, ok := devmemerr.Classify(errors.New("other")); ok {
		t.Error("Classify accepted a non-devmem error")
	}
}

func TestErrnoName(t *testing.T) {
	for e, want := range map[unix.Errno]string{unix.EOPNOTSUPP: "EOPNOTSUPP", devmemapi.ETOOSMALL: "ETOOSMALL", unix.EINVAL: "EINVAL", unix.ENODATA: "ENODATA"} {
		if got := devmemerr.ErrnoName(e); got != want {
			t.Errorf("ErrnoName(%d) = %q, want %q", e, got, want)
		}
	}
}

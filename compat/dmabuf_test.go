package compat

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
)

// TestIoctlLayouts proves the hand-written ioctl numbers and structs
// against the kernel's values (_IOW on x86-64/arm64).
func TestIoctlLayouts(t *testing.T) {
	if got := unsafe.Sizeof(udmabufCreate{}); got != 24 {
		t.Errorf("sizeof(struct udmabuf_create) = %d, want 24", got)
	}
	if got := unsafe.Offsetof(udmabufCreate{}.size); got != 16 {
		t.Errorf("offsetof(size) = %d, want 16", got)
	}
	if got := unsafe.Sizeof(dmaBufSync{}); got != 8 {
		t.Errorf("sizeof(struct dma_buf_sync) = %d, want 8", got)
	}
	if udmabufCreateIoctl != 0x40187542 {
		t.Errorf("UDMABUF_CREATE = %#x, want 0x40187542", udmabufCreateIoctl)
	}
	if dmaBufIoctlSync != 0x40086200 {
		t.Errorf("DMA_BUF_IOCTL_SYNC = %#x, want 0x40086200", dmaBufIoctlSync)
	}
}

// memfdDmabuf stands a memfd in for a dmabuf (this machine has no dmabuf
// exporter): mapping, bounds and close work the same; the sync ioctl,
// which only dmabufs answer, is skipped.
func memfdDmabuf(t *testing.T, content []byte) *dmabuf {
	t.Helper()
	fd, err := unix.MemfdCreate("test-dmabuf", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, err := unix.Write(fd, content); err != nil {
		t.Fatal(err)
	}
	d, err := adoptDmabuf(fd)
	if err != nil {
		t.Fatal(err)
	}
	d.noSync = true
	return d
}

// TestDmabufReadAt proves ReadAt through the mapping: io.ReaderAt
// semantics at the edges, the caller's fd duplicated (closing it does not
// matter), and ErrClosed after close.
func TestDmabufReadAt(t *testing.T) {
	content := make([]byte, 3*4096+100)
	for i := range content {
		content[i] = byte(i*7 + 1)
	}
	d := memfdDmabuf(t, content)
	if d.size != uint64(len(content)) {
		t.Fatalf("size %d, want %d", d.size, len(content))
	}
	p := make([]byte, 4096)
	for _, off := range []int64{0, 1, 4095, 8192} {
		n, err := d.ReadAt(p, off)
		if n != len(p) || err != nil || !bytes.Equal(p, content[off:off+4096]) {
			t.Errorf("ReadAt(%d) = %d, %v", off, n, err)
		}
	}
	n, err := d.ReadAt(p, int64(len(content)-10))
	if n != 10 || err != io.EOF || !bytes.Equal(p[:10], content[len(content)-10:]) {
		t.Errorf("ReadAt near the end = %d, %v", n, err)
	}
	if n, err := d.ReadAt(p, int64(len(content))); n != 0 || err != io.EOF {
		t.Errorf("ReadAt(size) = %d, %v", n, err)
	}
	if _, err := d.ReadAt(p, -1); !errors.Is(err, unix.EINVAL) {
		t.Errorf("ReadAt(-1) = %v", err)
	}
	if err := d.close(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ReadAt(p, 0); !errors.Is(err, devmemapi.ErrClosed) {
		t.Errorf("ReadAt after close = %v", err)
	}
	if err := d.close(); err != nil {
		t.Errorf("second close: %v", err)
	}
}

// TestDmabufSyncRequired proves ReadAt brackets the copy with
// DMA_BUF_IOCTL_SYNC: on a file that is no dmabuf the ioctl fails (ENOTTY)
// and ReadAt reports it.
func TestDmabufSyncRequired(t *testing.T) {
	d := memfdDmabuf(t, make([]byte, 4096))
	defer d.close()
	d.noSync = false
	if _, err := d.ReadAt(make([]byte, 16), 0); !errors.Is(err, unix.ENOTTY) {
		t.Errorf("ReadAt on a memfd with sync = %v, want ENOTTY", err)
	}
}

// TestNoUdmabuf proves a missing udmabuf device is a clear error that
// matches devmemapi.ErrNotSupported and ENOENT.
func TestNoUdmabuf(t *testing.T) {
	_, err := newUdmabuf(filepath.Join(t.TempDir(), "udmabuf"), 1<<20)
	if !errors.Is(err, devmemapi.ErrNotSupported) || !errors.Is(err, ErrNoUdmabuf) || !errors.Is(err, unix.ENOENT) {
		t.Errorf("err = %v", err)
	}
	t.Log(err)
	if _, err := os.Stat(DefaultUdmabufPath); err == nil {
		t.Logf("%s exists here: the udmabuf path can be exercised", DefaultUdmabufPath)
	}
}

// TestDontNeedSyscall proves the raw setsockopt against the kernel: its
// return value (the count) and its errno order — optlen below 4 fails
// EINVAL before the socket type, a non-TCP socket EBADF, a bad optlen or
// more than 128 tokens EINVAL, unknown tokens are skipped (0 freed).
func TestDontNeedSyscall(t *testing.T) {
	tcp, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(tcp)
	udp, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(udp)
	tok := func(n int) []byte {
		toks := make([]devmemapi.DmabufToken, n)
		for i := range toks {
			toks[i] = devmemapi.DmabufToken{TokenStart: uint32(1000 + i), TokenCount: 1}
		}
		return devmemapi.AppendTokens(nil, toks)
	}
	for _, tt := range []struct {
		name  string
		fd    int
		opt   []byte
		want  int
		errno unix.Errno
		c     devmemerr.Case
	}{
		{"unknown tokens", tcp, tok(3), 0, 0, devmemerr.Case{}},
		{"128 tokens", tcp, tok(128), 0, 0, devmemerr.Case{}},
		{"empty", tcp, nil, 0, unix.EINVAL, devmemerr.DontNeedShortOptlen},
		{"empty on udp", udp, nil, 0, unix.EINVAL, devmemerr.DontNeedShortOptlen},
		{"udp", udp, tok(1), 0, unix.EBADF, devmemerr.DontNeedNotTCP},
		{"12 bytes", tcp, tok(2)[:12], 0, unix.EINVAL, devmemerr.DontNeedBadOptlen},
		{"129 tokens", tcp, tok(129), 0, unix.EINVAL, devmemerr.DontNeedTooManyTokens},
	} {
		n, err := setsockoptDontNeed(tt.fd, tt.opt)
		if tt.errno == 0 {
			if err != nil || n != tt.want {
				t.Errorf("%s: %d, %v; want %d", tt.name, n, err, tt.want)
			}
			continue
		}
		if err != tt.errno || tt.c.Errno != tt.errno {
			t.Errorf("%s: err %v, want %v (%s)", tt.name, err, tt.errno, tt.c.Name)
		}
	}
}

// TestKernelConnDontNeedErrors proves KernelConn.DontNeed hands the
// kernel's refusals back as devmemerr cases.
func TestKernelConnDontNeedErrors(t *testing.T) {
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.DialTCP("tcp", nil, l.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	kc, err := NewKernelConn(c)
	if err != nil {
		t.Fatal(err)
	}
	defer kc.Close()
	if _, err := kc.DontNeed(make([]devmemapi.DmabufToken, 129)); !devmemerr.Match(err, devmemerr.DontNeedTooManyTokens) {
		t.Errorf("129 tokens: %v", err)
	}
	if _, err := kc.DontNeed(nil); !devmemerr.Match(err, devmemerr.DontNeedShortOptlen) {
		t.Errorf("no tokens: %v", err)
	}
	if n, err := kc.DontNeed([]devmemapi.DmabufToken{{TokenStart: 1, TokenCount: 1024}}); n != 0 || err != nil {
		t.Errorf("unknown tokens: %d, %v", n, err)
	}
	if _, err := kc.DontNeedOpt(make([]byte, 12)); !devmemerr.Match(err, devmemerr.DontNeedBadOptlen) {
		t.Errorf("optlen 12: %v", err)
	}
	if _, err := kc.DontNeedOpt(make([]byte, 3)); !devmemerr.Match(err, devmemerr.DontNeedShortOptlen) {
		t.Errorf("optlen 3: %v", err)
	}
}

// TestDmabufWriteAt: a TX dmabuf is mapped writable; WriteAt fills it
// through the mapping (ReadAt sees the bytes), refuses what does not fit
// with EFAULT, and a read-only mapping refuses writes.
func TestDmabufWriteAt(t *testing.T) {
	d := memfdDmabuf(t, make([]byte, 8192))
	defer d.close()
	if _, err := d.WriteAt([]byte("x"), 0); !errors.Is(err, unix.EBADF) {
		t.Fatalf("write to a read-only dmabuf: %v", err)
	}
	w := memfdDmabuf(t, make([]byte, 8192))
	defer w.close()
	w.writable = true
	if n, err := w.WriteAt([]byte("devmem tx"), 4090); n != 9 || err != nil {
		t.Fatalf("WriteAt across a page: %d, %v", n, err)
	}
	p := make([]byte, 9)
	if n, err := w.ReadAt(p, 4090); n != 9 || err != nil || string(p) != "devmem tx" {
		t.Fatalf("ReadAt = %q, %v", p[:n], err)
	}
	for _, off := range []int64{-1, 8190, 8193} {
		if _, err := w.WriteAt([]byte("abc"), off); !errors.Is(err, unix.EFAULT) {
			t.Errorf("WriteAt(%d): %v, want EFAULT", off, err)
		}
	}
}

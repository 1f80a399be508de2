package umem

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/internal/netns"
	"github.com/xdevmem/xdevmem/internal/testutil"
)

// memfd makes a memfd of size bytes, closed at the end of the test.
func memfd(t *testing.T, size int64) int {
	t.Helper()
	fd, err := unix.MemfdCreate("umem-test", unix.MFD_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Ftruncate(fd, size); err != nil {
		t.Fatal(err)
	}
	return fd
}

// TestRegionFile: the file part of a region is the file's memory (what the
// region holds, another mapping of the file reads, and the other way
// round); the rest is anonymous; the file may be closed afterwards.
func TestRegionFile(t *testing.T) {
	const page = 4096
	fd := memfd(t, 80*page)
	other, err := unix.Mmap(fd, 0, 80*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(other)
	for _, tc := range []struct {
		name       string
		size       uint64
		off        int64
		fileFrames int
	}{
		{"whole", 0, 0, 64},
		{"offset", 0, 16 * page, 64},
		{"anon tail", 100 * page, 8 * page, 64},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dup, err := unix.Dup(fd)
			if err != nil {
				t.Fatal(err)
			}
			r, err := NewRegion(RegionConfig{Size: tc.size, Files: []FileBacking{{FD: dup, Offset: tc.off, Size: uint64(tc.fileFrames) * page}}})
			unix.Close(dup) // the region keeps its own mapping
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			want := max(tc.size, uint64(tc.fileFrames)*page)
			if r.Size() != want || r.Frames() != uint32(want/page) {
				t.Fatalf("size %d frames %d, want %d", r.Size(), r.Frames(), want)
			}
			mem := r.Bytes()
			copy(mem[page:], "kernel wrote this")
			if got := other[tc.off+page : tc.off+page+17]; string(got) != "kernel wrote this" {
				t.Fatalf("the file's other mapping reads %q", got)
			}
			copy(other[tc.off+2*page:], "app wrote this")
			if got := mem[2*page : 2*page+14]; string(got) != "app wrote this" {
				t.Fatalf("the region reads %q", got)
			}
			if tail := mem[tc.fileFrames*page:]; len(tail) > 0 {
				copy(tail, "anonymous")
				if bytes.Contains(other, []byte("anonymous")) {
					t.Fatal("the anonymous tail is in the file")
				}
			}
			for i := range 3 * page {
				other[tc.off+int64(i)] = 0
			}
		})
	}
}

// TestRegionFiles: two files back consecutive parts of one region (an RX
// and a TX dmabuf of one interface), each seen through its own mapping.
func TestRegionFiles(t *testing.T) {
	const page = 4096
	a, b := memfd(t, 64*page), memfd(t, 40*page)
	ma, err := unix.Mmap(a, 0, 64*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(ma)
	mb, err := unix.Mmap(b, 0, 40*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mb)
	copy(ma[page:], "first file")
	copy(mb[8*page+3:], "second file")
	r, err := NewRegion(RegionConfig{Files: []FileBacking{{FD: a, Size: 64 * page}, {FD: b, Offset: 8 * page, Size: 32 * page}}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Size() != 96*page {
		t.Fatalf("size %d, want %d", r.Size(), 96*page)
	}
	mem := r.Bytes()
	if string(mem[page:page+10]) != "first file" || string(mem[64*page+3:64*page+14]) != "second file" {
		t.Fatalf("the region reads %q and %q", mem[page:page+10], mem[64*page+3:64*page+14])
	}
	copy(mem[95*page:], "into the second")
	if string(mb[39*page:39*page+15]) != "into the second" {
		t.Fatal("a write into the region's second part did not reach the second file")
	}
	// Each file is checked, not only the first.
	if _, err := NewRegion(RegionConfig{Files: []FileBacking{{FD: a, Size: 64 * page}, {FD: b, Offset: 100, Size: 32 * page}}}); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("second file at an unaligned offset: %v, want EINVAL", err)
	}
}

func TestRegionFileErrors(t *testing.T) {
	const page = 4096
	fd := memfd(t, 64*page)
	notFile, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(notFile)
	for _, tc := range []struct {
		name string
		cfg  RegionConfig
		want error
	}{
		{"past the end", RegionConfig{Files: []FileBacking{{FD: fd, Offset: page, Size: 64 * page}}}, unix.EINVAL},
		{"unaligned offset", RegionConfig{Files: []FileBacking{{FD: fd, Offset: 100, Size: 63 * page}}}, unix.EINVAL},
		{"partial frame", RegionConfig{Files: []FileBacking{{FD: fd, Size: 64*page - 1}}}, unix.EINVAL},
		{"larger than the region", RegionConfig{Size: 64 * page, Files: []FileBacking{{FD: fd, Size: 65 * page}}}, unix.EINVAL},
		{"too few frames", RegionConfig{Files: []FileBacking{{FD: fd, Size: 32 * page}}}, unix.EINVAL},
		{"closed fd", RegionConfig{Files: []FileBacking{{FD: 1 << 20, Size: 64 * page}}}, unix.EBADF},
		{"socket", RegionConfig{Files: []FileBacking{{FD: notFile, Size: 64 * page}}}, unix.EINVAL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewRegion(tc.cfg)
			if err == nil {
				r.Close()
				t.Fatal("no error")
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("%v, want %v", err, tc.want)
			}
		})
	}
}

func TestReserveSpanAt(t *testing.T) {
	r := newTestRegion(t, 64)
	if err := r.ReserveSpanAt(0, 16); err != nil {
		t.Fatal(err)
	}
	if a := r.Snapshot(); a.TX != 16 || a.Free != 48 {
		t.Fatalf("after reserving 16: %v", a)
	}
	for _, tc := range []struct {
		first, n uint32
		want     error
	}{{15, 2, unix.EBUSY}, {0, 0, unix.EINVAL}, {60, 5, unix.EINVAL}, {64, 1, unix.EINVAL}} {
		if err := r.ReserveSpanAt(tc.first, tc.n); !errors.Is(err, tc.want) {
			t.Errorf("ReserveSpanAt(%d, %d): %v, want %v", tc.first, tc.n, err, tc.want)
		}
	}
	var got [48]uint32
	if n := r.Alloc(got[:]); n != 48 {
		t.Fatalf("alloc took %d", n)
	}
	for _, f := range got {
		if f < 16 {
			t.Fatalf("alloc returned reserved frame %d", f)
		}
	}
	r.Free(got[:]...)
	r.ReleaseSpan(0, 16)
	if a := r.Snapshot(); a.Free != 64 || a.TX != 0 {
		t.Fatalf("after release: %v", a)
	}
}

// TestRegionFileUMEM: XDP_UMEM_REG takes a region whose frames are a
// memfd's pages (the library makes an application's udmabuf memfd the
// UMEM; the end-to-end tests receive through it).
func TestRegionFileUMEM(t *testing.T) {
	testutil.Watchdog(t, time.Minute)
	pair := testutil.NewPair(t, netns.Options{})
	const page = 4096
	fd := memfd(t, 256*page)
	r, err := NewRegion(RegionConfig{Size: 512 * page, Files: []FileBacking{{FD: fd, Size: 256 * page}}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var s *Socket
	if err := pair.Emu.Do(func() (err error) {
		s, err = NewSocket(r, pair.EmuIndex, SocketConfig{})
		return err
	}); err != nil {
		t.Fatalf("AF_XDP socket over a memfd-backed UMEM: %v", err)
	}
	s.Close()
}

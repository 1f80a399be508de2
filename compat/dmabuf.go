package compat

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
)

// DefaultUdmabufPath is the udmabuf device (CONFIG_UDMABUF).
const DefaultUdmabufPath = "/dev/udmabuf"

// DefaultDmabufSize is the size of a dmabuf the kernel backend makes when
// BindRXConfig.Size is 0.
const DefaultDmabufSize = 64 << 20

// dmabuf is a dmabuf fd the kernel backend owns, mapped on first read.
//
// ReadAt may run concurrently with itself; close waits for them.
type dmabuf struct {
	fd   int
	size uint64
	// noSync skips DMA_BUF_IOCTL_SYNC: for tests that stand a memfd in
	// for a dmabuf (no dmabuf exporter on the test machine).
	noSync bool
	// writable maps the dmabuf for writing too (a TX dmabuf the
	// application fills).
	writable bool

	mu     sync.RWMutex
	mem    []byte // the mapping, made by the first ReadAt
	mapErr error  // why the mapping failed (a dmabuf without mmap)
	closed bool
}

// adoptDmabuf duplicates a caller's dmabuf fd (the caller keeps its own)
// and reads its size (dmabufs answer lseek SEEK_END with their size).
func adoptDmabuf(fd int) (*dmabuf, error) {
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dmabuf fd %d: dup: %w", fd, err)
	}
	end, err := unix.Seek(dup, 0, io.SeekEnd)
	if err != nil {
		unix.Close(dup)
		return nil, fmt.Errorf("dmabuf fd %d: size: %w", fd, err)
	}
	return &dmabuf{fd: dup, size: uint64(end)}, nil
}

// ErrNoUdmabuf reports that no dmabuf can be made: the udmabuf device is
// missing. It matches devmemapi.ErrNotSupported.
var ErrNoUdmabuf = fmt.Errorf("no udmabuf device (CONFIG_UDMABUF): pass a dmabuf fd: %w", devmemapi.ErrNotSupported)

// newUdmabuf makes a dmabuf of size bytes (rounded up to pages) over a
// sealed memfd through the udmabuf device at path. A missing device fails
// with ErrNoUdmabuf (and the open's ENOENT).
func newUdmabuf(path string, size uint64) (*dmabuf, error) {
	if path == "" {
		path = DefaultUdmabufPath
	}
	page := uint64(os.Getpagesize())
	size = (size + page - 1) &^ (page - 1)
	if size == 0 {
		size = DefaultDmabufSize
	}
	dev, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("udmabuf %s: %w (%w)", path, ErrNoUdmabuf, err)
		}
		return nil, fmt.Errorf("udmabuf %s: %w", path, err)
	}
	defer unix.Close(dev)
	memfd, err := unix.MemfdCreate("xdevmem-dmabuf", unix.MFD_ALLOW_SEALING|unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("udmabuf: memfd: %w", err)
	}
	// The dmabuf holds its own reference to the memfd's pages.
	defer unix.Close(memfd)
	if err := unix.Ftruncate(memfd, int64(size)); err != nil {
		return nil, fmt.Errorf("udmabuf: memfd size %d: %w", size, err)
	}
	// udmabuf requires F_SEAL_SHRINK and refuses F_SEAL_WRITE.
	if _, err := unix.FcntlInt(uintptr(memfd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK); err != nil {
		return nil, fmt.Errorf("udmabuf: memfd seal: %w", err)
	}
	fd, err := udmabufIoctl(dev, memfd, size)
	if err != nil {
		return nil, fmt.Errorf("udmabuf: create %d bytes: %w", size, err)
	}
	return &dmabuf{fd: fd, size: size}, nil
}

// acquire returns the mapping, made on first use, with d.mu held for
// reading; on error d.mu is not held.
func (d *dmabuf) acquire() ([]byte, error) {
	for {
		d.mu.RLock()
		switch {
		case d.closed:
			d.mu.RUnlock()
			return nil, devmemapi.ErrClosed
		case d.mem != nil:
			return d.mem, nil
		case d.mapErr != nil:
			d.mu.RUnlock()
			return nil, d.mapErr
		}
		d.mu.RUnlock()
		d.mu.Lock()
		if !d.closed && d.mem == nil && d.mapErr == nil {
			prot := unix.PROT_READ
			if d.writable {
				prot |= unix.PROT_WRITE
			}
			mem, err := unix.Mmap(d.fd, 0, int(d.size), prot, unix.MAP_SHARED)
			if err != nil {
				d.mapErr = fmt.Errorf("mmap: %w", err)
			}
			d.mem = mem
		}
		d.mu.Unlock()
	}
}

// ReadAt copies dmabuf bytes at off into p through the mapping, bracketed
// by DMA_BUF_IOCTL_SYNC start and end (read). It implements io.ReaderAt.
func (d *dmabuf) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read dmabuf at %d: %w", off, unix.EINVAL)
	}
	if uint64(off) >= d.size {
		return 0, io.EOF
	}
	mem, err := d.acquire()
	if err != nil {
		return 0, fmt.Errorf("read dmabuf: %w", err)
	}
	defer d.mu.RUnlock()
	if !d.noSync {
		if err := dmabufSync(d.fd, dmaBufSyncStart|dmaBufSyncRead); err != nil {
			return 0, fmt.Errorf("read dmabuf: sync start: %w", err)
		}
	}
	n := copy(p, mem[off:])
	if !d.noSync {
		if err := dmabufSync(d.fd, dmaBufSyncEnd|dmaBufSyncRead); err != nil {
			return n, fmt.Errorf("read dmabuf: sync end: %w", err)
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt copies p into the dmabuf at off through the mapping, bracketed by
// DMA_BUF_IOCTL_SYNC start and end (write), as an application fills a TX
// dmabuf. It implements io.WriterAt; writes past the end fail with EFAULT.
func (d *dmabuf) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || uint64(off) > d.size || uint64(len(p)) > d.size-uint64(off) {
		return 0, fmt.Errorf("write dmabuf [%d, +%d) of %d bytes: %w", off, len(p), d.size, unix.EFAULT)
	}
	if !d.writable {
		return 0, fmt.Errorf("write dmabuf: mapped read-only: %w", unix.EBADF)
	}
	mem, err := d.acquire()
	if err != nil {
		return 0, fmt.Errorf("write dmabuf: %w", err)
	}
	defer d.mu.RUnlock()
	if !d.noSync {
		if err := dmabufSync(d.fd, dmaBufSyncStart|dmaBufSyncWrite); err != nil {
			return 0, fmt.Errorf("write dmabuf: sync start: %w", err)
		}
	}
	n := copy(mem[off:], p)
	if !d.noSync {
		if err := dmabufSync(d.fd, dmaBufSyncEnd|dmaBufSyncWrite); err != nil {
			return n, fmt.Errorf("write dmabuf: sync end: %w", err)
		}
	}
	return n, nil
}

// close unmaps and closes the fd; it waits for running reads.
func (d *dmabuf) close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	var err error
	if d.mem != nil {
		err = unix.Munmap(d.mem)
		d.mem = nil
	}
	if cerr := unix.Close(d.fd); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("close dmabuf: %w", err)
	}
	return nil
}

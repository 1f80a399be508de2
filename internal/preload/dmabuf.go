package preload

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// The dmabuf side of the uAPI, as a C program uses it with udmabuf:
// open("/dev/udmabuf"), ioctl(UDMABUF_CREATE) over a sealed memfd, mmap of
// the dmabuf, DMA_BUF_IOCTL_SYNC around CPU access. The stand-in for the
// device is /dev/null opened with the caller's flags; a dmabuf is the
// memfd opened anew (its own file description, as a dmabuf has), so the
// application's mmap of it is a real shared mapping of the memfd, and the
// same pages become the UMEM when the dmabuf is bound (nic.go).

// uAPI numbers (include/uapi/linux/udmabuf.h, dma-buf.h).
const (
	udmabufCreate     = 0x40187542 // _IOW('u', 0x42, struct udmabuf_create)
	udmabufCreateList = 0x40087543 // _IOW('u', 0x43, struct udmabuf_create_list)
	udmabufCloexec    = 0x01
	udmabufListLimit  = 1024     // module parameter list_limit
	udmabufSizeLimit  = 64 << 20 // module parameter size_limit_mb

	dmaBufIoctlSync   = 0x40086200 // _IOW('b', 0, struct dma_buf_sync)
	dmaBufSetNameA    = 0x40046201 // _IOW('b', 1, __u32)
	dmaBufSetNameB    = 0x40086201 // _IOW('b', 1, __u64)
	dmaBufSyncRead    = 1 << 0
	dmaBufSyncWrite   = 2 << 0
	dmaBufSyncRW      = dmaBufSyncRead | dmaBufSyncWrite
	dmaBufSyncEnd     = 1 << 2
	dmaBufSyncValid   = dmaBufSyncRW | dmaBufSyncEnd
	dmaBufNameLen     = 32
	udmabufSealWanted = unix.F_SEAL_SHRINK
	udmabufSealDenied = unix.F_SEAL_WRITE
	pageSize          = 4096
)

// udmabufDev is the stand-in for /dev/udmabuf.
type udmabufDev struct{ refs }

func (d *udmabufDev) release() { d.drop() }

// dmabuf is a buffer UDMABUF_CREATE made.
type dmabuf struct {
	refs
	fd     int    // the library's own fd of the memfd (close-on-exec)
	off    int64  // where the dmabuf starts in the memfd
	size   uint64 // bytes
	ino    uint64 // the memfd's inode, for logs
	mu     sync.Mutex
	closed bool
	users  atomic.Int32 // bindings and stacks using it
	name   string       // DMA_BUF_SET_NAME
}

func (d *dmabuf) release() {
	if d.drop() {
		d.maybeClose()
	}
}

// use and unuse count the bindings that keep the buffer alive after the
// application closed its fds (the kernel's dma_buf_get).
func (d *dmabuf) use() { d.users.Add(1) }

func (d *dmabuf) unuse() {
	if d.users.Add(-1) == 0 {
		d.maybeClose()
	}
}

func (d *dmabuf) maybeClose() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.closed && d.n.Load() == 0 && d.users.Load() == 0 {
		d.closed = true
		unix.Close(d.fd)
	}
}

// Open is open("/dev/udmabuf"): a stand-in fd, or Pass when the kernel
// backend serves the program.
func (l *Lib) Open(path string, flags, mode int) (int, error) {
	if !l.choose() {
		return Pass, nil
	}
	fd, err := unix.Open("/dev/null", flags&(unix.O_ACCMODE|unix.O_CLOEXEC|unix.O_NONBLOCK), 0)
	if err != nil {
		return -1, err
	}
	l.install(fd, KindUdmabuf, &udmabufDev{})
	l.logf("open(%q) = %d (udmabuf stand-in)", path, fd)
	return fd, nil
}

// Ioctl serves ioctl(2) on the stand-in device, a dmabuf and an emulated
// socket.
func (l *Lib) Ioctl(fd int, req uint, arg UPtr) (int, error) {
	switch {
	case l.get(fd, KindUdmabuf) != nil:
		return l.udmabufIoctl(fd, req, arg)
	case l.get(fd, KindDmabuf) != nil:
		return l.dmabufIoctl(l.get(fd, KindDmabuf).(*dmabuf), req, arg)
	case l.get(fd, KindEmu) != nil:
		return l.get(fd, KindEmu).(*esock).ioctl(req, arg)
	}
	return Pass, nil
}

// udmabufItem is struct udmabuf_create_item.
type udmabufItem struct {
	memfd  uint32
	offset uint64
	size   uint64
}

func (l *Lib) udmabufIoctl(fd int, req uint, arg UPtr) (int, error) {
	var flags uint32
	var items []udmabufItem
	e := binary.NativeEndian
	switch req {
	case udmabufCreate:
		var b [24]byte // struct udmabuf_create
		if err := CopyIn(b[:], arg); err != nil {
			return -1, err
		}
		flags = e.Uint32(b[4:])
		items = []udmabufItem{{memfd: e.Uint32(b[0:]), offset: e.Uint64(b[8:]), size: e.Uint64(b[16:])}}
	case udmabufCreateList:
		var h [8]byte // struct udmabuf_create_list: flags, count
		if err := CopyIn(h[:], arg); err != nil {
			return -1, err
		}
		flags = e.Uint32(h[0:])
		n := e.Uint32(h[4:])
		if n > udmabufListLimit {
			return -1, unix.EINVAL
		}
		b := make([]byte, 24*int(n))
		if err := CopyIn(b, arg.Add(8)); err != nil {
			return -1, err
		}
		for i := 0; i < int(n); i++ {
			x := b[24*i:]
			items = append(items, udmabufItem{memfd: e.Uint32(x[0:]), offset: e.Uint64(x[8:]), size: e.Uint64(x[16:])})
		}
	default:
		return -1, unix.ENOTTY
	}
	nfd, err := l.udmabufCreate(flags, items)
	l.logf("ioctl(%d, UDMABUF_CREATE%s, %+v) = %d %v", fd, map[bool]string{true: "_LIST"}[req == udmabufCreateList], items, nfd, err)
	return nfd, err
}

// udmabufCreate follows udmabuf_create of Linux 6.12 check by check. A
// list of several items must be consecutive ranges of one memfd (one
// contiguous UMEM); anything else is EOPNOTSUPP, which the kernel would
// accept.
func (l *Lib) udmabufCreate(flags uint32, items []udmabufItem) (int, error) {
	var pgcnt uint64
	for _, it := range items {
		if it.offset%pageSize != 0 || it.size%pageSize != 0 {
			return -1, unix.EINVAL
		}
		pgcnt += it.size / pageSize
		if pgcnt > udmabufSizeLimit/pageSize {
			return -1, unix.EINVAL
		}
	}
	if pgcnt == 0 {
		return -1, unix.EINVAL
	}
	var ino uint64
	for i, it := range items {
		var st unix.Stat_t
		if err := unix.Fstat(int(it.memfd), &st); err != nil {
			return -1, unix.EBADFD // fget failed
		}
		seals, err := unix.FcntlInt(uintptr(it.memfd), unix.F_GET_SEALS, 0)
		if err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			return -1, unix.EBADFD // not shmem or hugetlbfs
		}
		if seals&udmabufSealWanted != udmabufSealWanted || seals&udmabufSealDenied != 0 {
			return -1, unix.EINVAL
		}
		if it.offset+it.size > uint64(st.Size) || it.offset+it.size < it.offset {
			return -1, unix.EINVAL // shmem_read_folio past the end
		}
		if i > 0 && (st.Ino != ino || it.offset != items[i-1].offset+items[i-1].size) {
			return -1, fmt.Errorf("udmabuf list of separate ranges (xdevmem needs one contiguous range): %w", unix.EOPNOTSUPP)
		}
		ino = st.Ino
	}
	oflags := unix.O_RDWR
	if flags&udmabufCloexec != 0 {
		oflags |= unix.O_CLOEXEC
	}
	// The dmabuf fd: the memfd opened anew, with its own flags and
	// offset; the library keeps one more for itself.
	memfd := int(items[0].memfd)
	appfd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(memfd), oflags, 0)
	if err != nil {
		if appfd, err = unix.FcntlInt(uintptr(memfd), unix.F_DUPFD_CLOEXEC, 0); err != nil {
			return -1, err
		}
		if flags&udmabufCloexec == 0 {
			unix.FcntlInt(uintptr(appfd), unix.F_SETFD, 0)
		}
	}
	own, err := unix.FcntlInt(uintptr(appfd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		unix.Close(appfd)
		return -1, err
	}
	d := &dmabuf{fd: own, off: int64(items[0].offset), size: pgcnt * pageSize, ino: ino}
	l.install(appfd, KindDmabuf, d)
	return appfd, nil
}

// dmabufIoctl is dma_buf_ioctl: SYNC checks its flags and does nothing
// else (the UMEM is the CPU's memory), SET_NAME records the name, and
// every other request is ENOTTY (EXPORT_SYNC_FILE and IMPORT_SYNC_FILE
// included, which a kernel with CONFIG_SYNC_FILE would serve).
func (l *Lib) dmabufIoctl(d *dmabuf, req uint, arg UPtr) (int, error) {
	switch req {
	case dmaBufIoctlSync:
		flags, err := ReadU64(arg)
		if err != nil {
			return -1, err
		}
		if flags&^dmaBufSyncValid != 0 || flags&dmaBufSyncRW == 0 {
			return -1, unix.EINVAL
		}
		return 0, nil
	case dmaBufSetNameA, dmaBufSetNameB:
		name, err := CString(arg, dmaBufNameLen-1)
		if err != nil {
			return -1, err
		}
		d.mu.Lock()
		d.name = name
		d.mu.Unlock()
		return 0, nil
	}
	return -1, unix.ENOTTY
}

// MmapOffset is mmap(2) of a dmabuf: dma_buf_mmap_internal's size check
// and udmabuf's MAP_SHARED check; it returns the offset in the memfd to
// map instead.
func (l *Lib) MmapOffset(fd int, length uint64, off int64, prot, flags int) (int64, error) {
	d, _ := l.get(fd, KindDmabuf).(*dmabuf)
	if d == nil {
		return off, nil
	}
	pages := (length + pageSize - 1) / pageSize
	if off < 0 || off%pageSize != 0 || uint64(off)/pageSize+pages > d.size/pageSize {
		return -1, unix.EINVAL
	}
	if t := flags & 0x0f; t != unix.MAP_SHARED && t != unix.MAP_SHARED_VALIDATE { // MAP_TYPE
		return -1, unix.EINVAL
	}
	return off + d.off, nil
}

// Lseek is dma_buf_llseek: SEEK_END and SEEK_SET with offset 0 only.
func (l *Lib) Lseek(fd int, off int64, whence int) (int64, error) {
	d, _ := l.get(fd, KindDmabuf).(*dmabuf)
	if d == nil {
		return -1, unix.EBADF
	}
	if off != 0 {
		return -1, unix.EINVAL
	}
	switch whence {
	case unix.SEEK_END:
		return int64(d.size), nil
	case unix.SEEK_SET:
		return 0, nil
	}
	return -1, unix.EINVAL
}

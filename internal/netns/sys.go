package netns

// The system calls behind named namespaces, as ip(8) makes them: a bind
// mount of a namespace's nsfs file under RunDir keeps the namespace alive
// and names it; running a program inside one re-executes this binary, which
// switches namespaces before it becomes that program.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// createNamed creates a network namespace and names it RunDir/name, as
// "ip netns add" does: RunDir becomes a shared mount point (so that the
// names propagate to mount namespaces created later, such as those of
// [NS.Command]), an empty file takes the name, and the nsfs file of a fresh
// namespace is bind-mounted onto it.
func createNamed(name string) error {
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", RunDir, err)
	}
	if err := shareRunDir(); err != nil {
		return err
	}
	path := filepath.Join(RunDir, name)
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	unix.Close(fd)
	if err := bindNewNetNS(path); err != nil {
		_ = os.Remove(path)
		return err
	}
	return nil
}

// shareRunDir makes RunDir a shared mount, first bind-mounting it onto
// itself if it is no mount point yet (mount --make-shared fails EINVAL
// then). A lock under OwnerDir's parent keeps two xdevmem processes from
// both stacking a bind mount.
func shareRunDir() error {
	lockDir := filepath.Dir(OwnerDir)
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", lockDir, err)
	}
	lock, err := unix.Open(filepath.Join(lockDir, "netns.lock"), unix.O_RDONLY|unix.O_CREAT|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("lock %s: %w", RunDir, err)
	}
	defer unix.Close(lock) // releases the lock
	if err := unix.Flock(lock, unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", RunDir, err)
	}
	bound := false
	for {
		err := unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EINVAL) || bound {
			return fmt.Errorf("mount --make-shared %s: %w", RunDir, err)
		}
		if err := unix.Mount(RunDir, RunDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("mount --bind %s %s: %w", RunDir, RunDir, err)
		}
		bound = true
	}
}

// bindNewNetNS creates a network namespace on a thread of its own and
// bind-mounts it onto path. The thread is locked and never unlocked: it
// ends with its goroutine, so no other goroutine ever runs in the new
// namespace and nothing needs switching back.
func bindNewNetNS(path string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare network namespace: %w", err)
			return
		}
		if err := unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind network namespace to %s: %w", path, err)
			return
		}
		errc <- nil
	}()
	return <-errc
}

// deleteNamed removes the name RunDir/name, as "ip netns delete" does: a
// lazy unmount and the file's removal. The namespace itself ends when
// nothing else refers to it. A name that is already gone is no error.
func deleteNamed(name string) error {
	path := filepath.Join(RunDir, name)
	// EINVAL: not a mount (a half-made name); the removal still applies.
	_ = unix.Unmount(path, unix.MNT_DETACH)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// execArg0 marks a re-execution of this binary by [NS.Command]: its
// arguments are then the namespace's name, the resolved program path, and
// the program's argv.
const execArg0 = "xdevmem-netns-exec"

// selfExe is this binary as the kernel knows it, even if its file was
// replaced since.
const selfExe = "/proc/self/exe"

func init() {
	if len(os.Args) < 4 || os.Args[0] != execArg0 {
		return
	}
	// Package initialisation runs on the main thread, locked to it; keep it
	// so while its namespaces change.
	runtime.LockOSThread()
	name, path, argv := os.Args[1], os.Args[2], os.Args[3:]
	err := execInNamed(name, path, argv)
	fmt.Fprintf(os.Stderr, "netns exec %s: exec of %q failed: %v\n", name, argv[0], err)
	os.Exit(255)
}

// execInNamed switches the calling thread into the named network namespace
// and a mount namespace of its own that shows the namespace's devices under
// /sys (as "ip netns exec" does), then executes path. It returns only on
// failure.
func execInNamed(name, path string, argv []string) error {
	fd, err := unix.Open(filepath.Join(RunDir, name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", name, err)
	}
	err = unix.Setns(fd, unix.CLONE_NEWNET)
	unix.Close(fd)
	if err != nil {
		return fmt.Errorf("setns %s: %w", name, err)
	}
	if err := mountSysfs(name); err != nil {
		return err
	}
	// syscall.Exec restores the open-file limit the Go runtime raised.
	return syscall.Exec(path, argv, os.Environ())
}

// mountSysfs gives the calling thread a mount namespace whose mounts do not
// propagate back, with a sysfs of the current network namespace on /sys
// (read-only if the old one was) and the files of /etc/netns/<name>
// bind-mounted over their namesakes in /etc.
func mountSysfs(name string) error {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare mount namespace: %w", err)
	}
	if err := unix.Mount("", "/", "none", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("mount --make-rslave /: %w", err)
	}
	var flags uintptr
	var st unix.Statfs_t
	if unix.Statfs("/sys", &st) == nil && st.Flags&unix.ST_RDONLY != 0 {
		flags = unix.MS_RDONLY
	}
	// Fails if no sysfs was mounted there: fine.
	_ = unix.Unmount("/sys", unix.MNT_DETACH)
	if err := unix.Mount(name, "/sys", "sysfs", flags, ""); err != nil {
		return fmt.Errorf("mount sysfs on /sys: %w", err)
	}
	// Like ip(8), a configuration file that cannot be bound is a warning.
	etc := filepath.Join("/etc/netns", name)
	entries, _ := os.ReadDir(etc)
	for _, e := range entries {
		src, dst := filepath.Join(etc, e.Name()), filepath.Join("/etc", e.Name())
		if err := unix.Mount(src, dst, "none", unix.MS_BIND, ""); err != nil {
			fmt.Fprintf(os.Stderr, "netns exec %s: bind %s to %s: %v\n", name, src, dst, err)
		}
	}
	return nil
}

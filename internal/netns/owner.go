package netns

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// OwnerDir records which process created each namespace, so that Cleanup
// removes only the leftovers of processes that are gone and never the
// namespaces of another run that is still using them.
const OwnerDir = "/run/xdevmem/netns-owners"

// procStart returns a process's start time (field 22 of /proc/PID/stat), which
// tells a live owner from a later process that reused its pid.
func procStart(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command may contain spaces
	if i < 0 {
		return "", fmt.Errorf("proc %d: bad stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return "", fmt.Errorf("proc %d: short stat", pid)
	}
	return f[19], nil
}

// recordOwner notes this process as name's owner (best effort).
func recordOwner(name string) {
	start, err := procStart(os.Getpid())
	if err != nil || os.MkdirAll(OwnerDir, 0o755) != nil {
		return
	}
	_ = os.WriteFile(filepath.Join(OwnerDir, name), []byte(strconv.Itoa(os.Getpid())+" "+start+"\n"), 0o644)
}

// dropOwner forgets name's owner.
func dropOwner(name string) { _ = os.Remove(filepath.Join(OwnerDir, name)) }

// ownerAlive reports whether name was created by a process that still runs
// (and is not this one, which may clean up after itself).
func ownerAlive(name string) bool {
	b, err := os.ReadFile(filepath.Join(OwnerDir, name))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return false
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil || pid == os.Getpid() {
		return false
	}
	start, err := procStart(pid)
	return err == nil && start == f[1]
}

package netns

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// TestCleanupSparesLiveOwners: Cleanup leaves a pair-named namespace alone
// while the process that created it runs (here: pid 1, with its real start
// time), and removes it once the recorded owner is gone.
func TestCleanupSparesLiveOwners(t *testing.T) {
	if unix.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("needs root (CI is set: a skip here is a failure)")
		}
		t.Skip("needs root")
	}
	const prefix = "xdvown"
	name := prefix + "-abc123-peer"
	ns, err := NewNS(name)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	start, err := procStart(1)
	if err != nil {
		t.Fatal(err)
	}
	owner := filepath.Join(OwnerDir, name)
	if err := os.WriteFile(owner, []byte("1 "+start+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Cleanup(prefix); err != nil {
		t.Fatal(err)
	}
	if names, _ := List(); !slices.Contains(names, name) {
		t.Fatal("Cleanup removed a namespace whose owner is alive")
	}
	// The owner "dies": a start time that no longer matches.
	if err := os.WriteFile(owner, []byte("1 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Cleanup(prefix); err != nil {
		t.Fatal(err)
	}
	if names, _ := List(); slices.Contains(names, name) {
		t.Fatal("Cleanup kept a namespace whose owner is gone")
	}
	if _, err := os.Stat(owner); !os.IsNotExist(err) {
		t.Fatalf("owner record left behind: %v", err)
	}
}

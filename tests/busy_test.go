package tests

import (
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/internal/netns"
	"github.com/xdevmem/xdevmem/internal/testutil"
	"github.com/xdevmem/xdevmem/umem"
)

// TestSecondServerNamesHolder: a second server on an interface a first one
// holds fails at once and names the first one's pid, instead of retrying
// and saying "device or resource busy".
func TestSecondServerNamesHolder(t *testing.T) {
	testutil.Watchdog(t, 2*time.Minute)
	bin := xdevmemBinary(t)
	p := testutil.NewPair(t, netns.Options{Prefix: "xdt"})
	addr := p.EmuAddr.Addr().String()
	first := p.Emu.Command(bin, "server", "--backend", "emulated", "-f", p.EmuIf, "-s", addr, "-p", "5320", "--quiet")
	stderr, _ := first.StderrPipe()
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		first.Process.Kill()
		first.Wait()
	}()
	waitLine(t, stderr, "listening on", 30*time.Second)
	// ip netns exec execs the command: the server keeps the pid.
	pid := first.Process.Pid

	second := p.Emu.Command(bin, "server", "--backend", "emulated", "-f", p.EmuIf, "-s", addr, "-p", "5321", "--quiet")
	var out strings.Builder
	second.Stdout, second.Stderr = &out, &out
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	err := waitCmd(second, 30*time.Second)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("second server: %v, want a failure:\n%s", err, out.String())
	}
	want := fmt.Sprintf("interface %s is in use by xdevmem pid %d (XDP link id ", p.EmuIf, pid)
	if !strings.Contains(out.String(), want) {
		t.Fatalf("second server's message lacks %q:\n%s", want, out.String())
	}
	t.Logf("second server: %s", strings.TrimSpace(out.String()))

	// Fail fast: with a minute of EBUSY retries allowed, the bind gives up
	// at once because another process holds the interface.
	r, err := umem.NewRegion(umem.RegionConfig{Size: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	start := time.Now()
	err = p.Emu.Do(func() error {
		s, err := umem.NewSocket(r, p.EmuIndex, umem.SocketConfig{BindRetry: time.Minute})
		if err == nil {
			s.Close()
		}
		return err
	})
	elapsed := time.Since(start)
	var iu *umem.InUseError
	if !errors.As(err, &iu) || !errors.Is(err, unix.EBUSY) || iu.Holder.PID != pid || iu.Holder.LinkID == 0 {
		t.Fatalf("bind on a held queue: %v (%+v)", err, iu)
	}
	if elapsed > 30*time.Second {
		t.Fatalf("bind gave up after %v: it waited out the retries", elapsed)
	}
}

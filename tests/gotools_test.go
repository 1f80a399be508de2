package tests

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/xdevmem/xdevmem/internal/netns"
	"github.com/xdevmem/xdevmem/internal/testutil"
)

// TestDemoWithoutTools runs `xdevmem demo` as on a host with Go and nothing
// else: PATH names an empty directory, so no ip(8), no ethtool(8), no shell.
// Namespaces, the veth, addresses, the peer's offloads (and, with
// --compare, the kernel baseline's address) are all set up through netlink,
// over IPv4 and IPv6, and nothing is left behind.
func TestDemoWithoutTools(t *testing.T) {
	testutil.Watchdog(t, 3*time.Minute)
	testutil.RequirePrivileged(t)
	bin := xdevmemBinary(t)
	empty := t.TempDir()
	for _, args := range [][]string{
		{"--size", "8MiB", "--compare"},
		{"--size", "8MiB", "--ipv6"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			cmd := exec.Command(bin, append([]string{"demo", "--json"}, args...)...)
			cmd.Env = []string{"PATH=" + empty}
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("demo: %v\nstdout: %s\nstderr: %s", err, out, stderr.String())
			}
			var sum struct {
				OK         bool    `json:"ok"`
				Bytes      uint64  `json:"bytes"`
				ValErrs    int     `json:"validation_errors"`
				TokensOut  int     `json:"tokens_outstanding"`
				KernelMBps float64 `json:"kernel_tcp_mb_per_s"`
				PeerNS     string  `json:"peer_namespace"`
				StackNS    string  `json:"stack_namespace"`
			}
			if err := json.Unmarshal(out, &sum); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if !sum.OK || sum.Bytes != 8<<20 || sum.ValErrs != 0 || sum.TokensOut != 0 {
				t.Errorf("demo summary: %+v", sum)
			}
			if args[len(args)-1] == "--compare" && sum.KernelMBps <= 0 {
				t.Errorf("no kernel baseline: %+v", sum)
			}
			names, err := netns.List()
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range names {
				if n == sum.PeerNS || n == sum.StackNS {
					t.Errorf("demo left namespace %s", n)
				}
			}
		})
	}
}

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// mainEnv makes the test binary run main() instead of the tests, so the
// command's exit statuses and output can be checked without building it.
const mainEnv = "XDEVMEM_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(mainEnv) == "1" {
		os.Args[0] = "xdevmem"
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runMain runs the command with args and returns its stdout, stderr and
// exit status.
func runMain(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), mainEnv+"=1")
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("run %v: %v", args, err)
	}
	return o.String(), e.String(), code
}

// twoDefaults matches a help line that states a default twice, such as
// "(default: sized from the UMEM) (default 0B)".
var twoDefaults = regexp.MustCompile(`\(default[: ][^\n]*\(default `)

// TestHelpExitsZero: `xdevmem SUB -h` prints the usage on stdout and exits
// 0, like `xdevmem -h`; the help shows each default once, and none for a
// flag whose default is "not given"; an unknown flag still exits 2.
func TestHelpExitsZero(t *testing.T) {
	var subs []string
	for name := range commands {
		if !strings.HasPrefix(name, "bench-") { // the bench's hidden sender
			subs = append(subs, name)
		}
	}
	for _, args := range [][]string{{"-h"}, {"--help"}} {
		if out, _, code := runMain(t, args...); code != 0 || !strings.Contains(out, "Commands:") {
			t.Errorf("xdevmem %s: exit %d, stdout %q", args[0], code, out)
		}
	}
	for _, sub := range subs {
		for _, h := range []string{"-h", "--help"} {
			out, errOut, code := runMain(t, sub, h)
			if code != 0 || !strings.Contains(out, "usage: xdevmem "+sub) {
				t.Errorf("xdevmem %s %s: exit %d (want 0), stdout %q, stderr %q", sub, h, code, out, errOut)
			}
			for _, bad := range []string{"(default 0B)", "(default -1)"} {
				if strings.Contains(out, bad) {
					t.Errorf("xdevmem %s %s: help shows %q:\n%s", sub, h, bad, out)
				}
			}
			if l := twoDefaults.FindString(out); l != "" {
				t.Errorf("xdevmem %s %s: a flag with two defaults: %q", sub, h, l)
			}
		}
		if sub == "ncdevmem" {
			continue // getopt: unknown options are reported and skipped
		}
		if _, errOut, code := runMain(t, sub, "--no-such-flag"); code != 2 || !strings.Contains(errOut, "no-such-flag") {
			t.Errorf("xdevmem %s --no-such-flag: exit %d (want 2), stderr %q", sub, code, errOut)
		}
	}
}

func TestWantsHelp(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{[]string{"-h"}, true},
		{[]string{"-f", "eth0", "--help"}, false}, // -f's value ends nothing, but "eth0" is not a flag
		{[]string{"--json", "-help"}, true},
		{[]string{"--", "-h"}, false},
		{nil, false},
	} {
		if got := wantsHelp(tc.args); got != tc.want {
			t.Errorf("wantsHelp(%q) = %v, want %v", tc.args, got, tc.want)
		}
	}
}

// TestProbeCommand: without -f the probe reports every interface but
// loopback (--json: one array); on lo it says the emulation cannot run
// there either and does not suggest it.
func TestProbeCommand(t *testing.T) {
	out, errOut, code := runMain(t, "probe", "--json")
	if code != 0 && code != 1 {
		t.Fatalf("probe --json: exit %d, stderr %q", code, errOut)
	}
	var results []struct {
		Ifname    string `json:"ifname"`
		Supported bool   `json:"supported"`
		Checks    []any  `json:"checks"`
	}
	if err := json.Unmarshal([]byte(out), &results); err != nil {
		t.Fatalf("probe --json without -f: not a JSON array: %v\n%s", err, out)
	}
	ifs, _ := net.Interfaces()
	want := 0
	for _, ifi := range ifs {
		if ifi.Flags&net.FlagLoopback == 0 {
			want++
		}
	}
	anyOK := false
	for _, r := range results {
		if r.Ifname == "lo" || len(r.Checks) == 0 {
			t.Errorf("result %+v", r)
		}
		anyOK = anyOK || r.Supported
	}
	if len(results) != want || (code == 0) != anyOK {
		t.Errorf("%d results for %d interfaces, exit %d, any supported %v", len(results), want, code, anyOK)
	}

	out, _, code = runMain(t, "probe", "-f", "lo")
	if code != 1 || !strings.Contains(out, "the emulated backend cannot run on lo either") || strings.Contains(out, "or the emulated backend") {
		t.Errorf("probe -f lo: exit %d:\n%s", code, out)
	}
}

// TestClientAddressErrors: the client's -s and -c are checked before
// anything is set up, whatever their family.
func TestClientAddressErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-s", "fd00::1", "-c", "10.0.0.2"}, "different address families"},
		{[]string{"-s", "10.0.0.1", "-c", "fd00::2"}, "different address families"},
		{[]string{"-s", "::ffff:10.0.0.1", "-c", "::ffff:10.0.0.1"}, "is the server's address"},
		{[]string{"-s", "fd00::1", "-c", "fd00::2", "--prefix-len", "129"}, "--prefix-len 129"},
		{[]string{"-s", "10.0.0.1", "-c", "10.0.0.2", "--prefix-len", "33"}, "--prefix-len 33"},
		{[]string{"-s", "ff02::1", "-c", "fd00::2"}, "multicast"},
		{[]string{"-s", "fd00::1", "-c", "::"}, "unspecified"},
		{[]string{"-s", "fe80::1%eth0", "-c", "fe80::2"}, "scoped"},
		{[]string{"-s", "10.0.0.1.5", "-c", "10.0.0.2"}, "not an IPv4 or IPv6 address"},
	} {
		err := runClient(append([]string{"-f", "nonexistent0"}, tc.args...))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("client %q: %v; want an error with %q", tc.args, err, tc.want)
		}
	}
}

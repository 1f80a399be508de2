package ncdevmem

import (
	"bufio"
	"bytes"
	"slices"
	"strings"
	"testing"
)

func TestGetopt(t *testing.T) {
	type got struct {
		c   byte
		arg string
	}
	for _, tc := range []struct {
		args []string
		want []got
		rest []string
		msg  string
	}{
		{args: []string{"-l", "-f", "eth1", "-s", "10.0.0.2", "-p", "5201", "-v", "7"},
			want: []got{{'l', ""}, {'f', "eth1"}, {'s', "10.0.0.2"}, {'p', "5201"}, {'v', "7"}}},
		{args: []string{"-lLv7", "-feth1", "-n"}, want: []got{{'l', ""}, {'L', ""}, {'v', "7"}, {'f', "eth1"}, {'n', ""}}},
		{args: []string{"extra", "-a", "1", "--", "-U", "2"}, want: []got{{'a', "1"}}, rest: []string{"extra", "-U", "2"}},
		{args: []string{"-x", "-p"}, want: []got{{'?', ""}, {'?', ""}},
			msg: "ncdevmem: invalid option -- 'x'\nncdevmem: option requires an argument -- 'p'\n"},
		{args: []string{"-", "-b", "0x4000"}, want: []got{{'b', "0x4000"}}, rest: []string{"-"}},
	} {
		var gs []got
		var w bytes.Buffer
		rest := getopt(tc.args, ncOptstring, func(c byte, arg string) { gs = append(gs, got{c, arg}) }, &w)
		if !slices.Equal(gs, tc.want) || !slices.Equal(rest, tc.rest) || w.String() != tc.msg {
			t.Errorf("getopt(%q) = %v, rest %q, messages %q; want %v, %q, %q", tc.args, gs, rest, w.String(), tc.want, tc.rest, tc.msg)
		}
	}
}

func TestAtoiStrtoul(t *testing.T) {
	for s, want := range map[string]int{"7": 7, " 12x": 12, "-3": -3, "+4": 4, "abc": 0, "": 0} {
		if got := atoi(s); got != want {
			t.Errorf("atoi(%q) = %d, want %d", s, got, want)
		}
	}
	for s, want := range map[string]uint64{"16384": 16384, "0x4000": 16384, "040000": 16384, "0": 0, "zz": 0, "4096k": 4096} {
		if got, ok := strtoul(s); !ok || got != want {
			t.Errorf("strtoul(%q) = %d, %v; want %d", s, got, ok, want)
		}
	}
	if _, ok := strtoul("99999999999999999999999"); ok {
		t.Error("strtoul overflow not reported")
	}
	if got, _ := strtoul("-1"); got != 1<<64-1 {
		t.Errorf("strtoul(-1) = %d", got)
	}
}

// TestValidator: ncdevmem's validate_buffer across calls, and its tolerance
// of 20 mismatches.
func TestValidator(t *testing.T) {
	var out, errs bytes.Buffer
	nc := &ncdevmem{stdout: bufio.NewWriter(&out), stderr: bufio.NewWriter(&errs)}
	v := &validator{period: 7, nc: nc}
	stream := bytes.Repeat([]byte{1, 2, 3, 4, 5, 6, '\n'}, 10)
	if !v.check(stream[:5]) || !v.check(stream[5:]) {
		t.Fatal("valid stream refused")
	}
	bad := bytes.Repeat([]byte{0xff}, 20)
	if !v.check(bad) {
		t.Fatal("20 mismatches must be tolerated")
	}
	if v.check([]byte{0xff}) {
		t.Fatal("the 21st mismatch must fail")
	}
	nc.flush()
	if n := strings.Count(out.String(), "Validated buffer\n"); n != 3 {
		t.Errorf("%d Validated buffer lines, want 3", n)
	}
	if !strings.Contains(errs.String(), "Failed validation: expected=1, actual=255, index=0\n") ||
		!strings.HasSuffix(errs.String(), "ncdevmem: validation failed\n") {
		t.Errorf("stderr: %s", errs.String())
	}
}

// TestValidator612: a stream whose periods end in 0, as Linux 6.12's
// ncdevmem expects (its users pipe through tr \\n \\0), validates too, the
// first period deciding; a later period ending in '\n' is then a mismatch.
func TestValidator612(t *testing.T) {
	var out, errs bytes.Buffer
	nc := &ncdevmem{stdout: bufio.NewWriter(&out), stderr: bufio.NewWriter(&errs)}
	v := &validator{period: 7, nc: nc}
	stream := bytes.Repeat([]byte{1, 2, 3, 4, 5, 6, 0}, 10)
	if !v.check(stream[:9]) || !v.check(stream[9:]) {
		t.Fatal("6.12 stream refused")
	}
	if v.errors != 0 {
		t.Fatalf("%d mismatches on a 6.12 stream", v.errors)
	}
	v.check([]byte{1, 2, 3, 4, 5, 6, '\n'})
	if v.errors != 1 {
		t.Fatalf("a '\\n' period after 0 periods: %d mismatches, want 1", v.errors)
	}
	nc.flush()
	if !strings.Contains(errs.String(), "periods end in 0, as Linux 6.12's ncdevmem expects") {
		t.Errorf("stderr does not say which ncdevmem the stream suits: %s", errs.String())
	}
}

// TestFlowSpec: the ethtool command ncdevmem's configure_flow_steering
// builds, spaces included.
func TestFlowSpec(t *testing.T) {
	f := flowSpec{typ: "tcp4", src: "10.0.0.1", dst: "10.0.0.2", port: "5201", queue: 1}
	if got, want := f.ethtoolArgs(), "flow-type tcp4 src-ip 10.0.0.1 dst-ip 10.0.0.2 src-port 5201 dst-port 5201 queue 1"; got != want {
		t.Errorf("5-tuple: %q, want %q", got, want)
	}
	f.src = ""
	if got, want := f.ethtoolArgs(), "flow-type tcp4   dst-ip 10.0.0.2   dst-port 5201 queue 1"; got != want {
		t.Errorf("3-tuple: %q, want %q", got, want)
	}
}

func TestCurrentSettings(t *testing.T) {
	out := "Channel parameters for ncde:\nPre-set maximums:\nRX:\t\t2\nTX:\t\t2\nOther:\t\tn/a\nCombined:\tn/a\n" +
		"Current hardware settings:\nRX:\t\t1\nTX:\t\t1\nOther:\t\tn/a\nCombined:\tn/a\n"
	cur := currentSettings(out)
	rx, ok := settingValue(cur, "RX")
	comb, _ := settingValue(cur, "Combined")
	if !ok || rx != 1 || comb != 0 {
		t.Errorf("RX %d (%v), Combined %d", rx, ok, comb)
	}
}

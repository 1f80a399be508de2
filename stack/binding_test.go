package stack

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
)

// TestBindRXErrors: bind-rx fails with the kernel's errno and message for
// each bad request, in the order ncdevmem's probe mode exercises them.
func TestBindRXErrors(t *testing.T) {
	ip := newInproc(t, Config{})
	s := ip.s
	cases := []struct {
		name  string
		setup func()
		cfg   devmemapi.BindRXConfig
		errno unix.Errno
		msg   string
	}{
		{"empty queue list", nil, devmemapi.BindRXConfig{}, unix.EINVAL, "no queues"},
		{"queue out of range", nil, devmemapi.BindRXConfig{Queues: []uint32{3}}, unix.ERANGE, "rx queue index out of range"},
		{"other interface", nil, devmemapi.BindRXConfig{Ifindex: 999, Queues: []uint32{0}}, unix.ENODEV, "ifindex 999"},
		{"header split off", func() { s.NIC().SetRings(Rings{TCPDataSplit: false}) }, devmemapi.BindRXConfig{Queues: []uint32{0}}, unix.EINVAL, "tcp-data-split is disabled"},
		{"hds-thresh not zero", func() { s.NIC().SetRings(Rings{TCPDataSplit: true, HDSThresh: 256}) }, devmemapi.BindRXConfig{Queues: []uint32{0}}, unix.EINVAL, "hds-thresh is not zero"},
	}
	for _, c := range cases {
		if c.setup != nil {
			c.setup()
		}
		_, err := s.BindRX(c.cfg)
		if !errors.Is(err, c.errno) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: got %v, want %v containing %q", c.name, err, c.errno, c.msg)
		}
	}
	if err := s.NIC().SetRings(Rings{TCPDataSplit: true}); err != nil {
		t.Fatal(err)
	}
	b, err := s.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}})
	if err != nil {
		t.Fatalf("normal bind: %v", err)
	}
	if _, err := s.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}}); !errors.Is(err, unix.EEXIST) {
		t.Fatalf("second bind: %v, want EEXIST", err)
	}
	// While bound, the settings bind-rx depends on cannot change.
	if err := s.NIC().SetRings(Rings{TCPDataSplit: false}); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("disable split while bound: %v", err)
	}
	if err := s.NIC().SetRings(Rings{TCPDataSplit: true, HDSThresh: 1}); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("hds-thresh while bound: %v", err)
	}
	b.Close()
	if err := s.NIC().SetRings(Rings{TCPDataSplit: false}); err != nil {
		t.Fatalf("after unbind: %v", err)
	}
	if _, err := s.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}}); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("bind with split off after unbind: %v", err)
	}
}

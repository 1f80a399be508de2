package stack

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
)

// Rings are the emulated ethtool ring settings that devmem depends on
// (ethtool -G IFACE tcp-data-split on|off hds-thresh N). A real NIC must have
// header split on and hds-thresh 0 before bind-rx succeeds; the emulation
// applies the same checks with the kernel's errnos and messages, so set-up
// scripts and tests written for a devmem NIC behave the same here.
//
// They are separate from Config.HDSThresh, which models the device itself:
// payloads shorter than it are left in the header buffer (delivered linear,
// SCM_DEVMEM_LINEAR) whatever the settings say.
type Rings struct {
	// TCPDataSplit is ethtool's tcp-data-split (default on).
	TCPDataSplit bool
	// HDSThresh is ethtool's hds-thresh (default 0).
	HDSThresh uint32
}

// Rings returns the current ring settings (ethtool -g).
func (nic *NIC) Rings() Rings {
	s := nic.s
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rings
}

// SetRings changes the ring settings as ethtool -G would. While a dmabuf is
// bound, turning header split off or setting a non-zero hds-thresh fails
// with EINVAL, as the kernel refuses it for a device with a memory provider.
func (nic *NIC) SetRings(r Rings) error {
	s := nic.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.bindings) > 0 {
		if !r.TCPDataSplit {
			return fmt.Errorf("set rings: can't disable tcp-data-split while device has memory provider enabled: %w", unix.EINVAL)
		}
		if r.HDSThresh != 0 {
			return fmt.Errorf("set rings: can't set non-zero hds_thresh while device is memory provider enabled: %w", unix.EINVAL)
		}
	}
	s.rings = r
	return nil
}

// checkBindRings applies bind-rx's header-split checks (s.mu held).
func (s *Stack) checkBindRings() error {
	if !s.rings.TCPDataSplit {
		return fmt.Errorf("bind rx: %w", devmemerr.BindRXHDSDisabled.Err())
	}
	if s.rings.HDSThresh != 0 {
		return fmt.Errorf("bind rx: %w", devmemerr.BindRXHDSThresh.Err())
	}
	return nil
}

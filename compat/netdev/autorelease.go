package netdev

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/compat/internal/genl"
)

// BindRXPolicy returns the attributes the kernel's bind-rx accepts, with
// their types (NL_ATTR_TYPE_*), from the controller's policy dump. It needs
// no privilege. A kernel without bind-rx fails with an error matching
// unix.EOPNOTSUPP.
func (c *Conn) BindRXPolicy() (map[uint16]uint32, error) {
	if !c.f.HasOp(CmdBindRX) {
		return nil, fmt.Errorf("bind-rx policy: the netdev family has no bind-rx: %w", unix.EOPNOTSUPP)
	}
	return genl.DoPolicy(c.c, c.f, CmdBindRX)
}

// HasAutoreleaseAttr reports whether the kernel's bind-rx takes
// NETDEV_A_DMABUF_AUTORELEASE: attribute 5 of its policy, a u8, as the
// autorelease series (v7+) adds it. Upstream kernels, 6.18 included, lack
// it; later ones give number 5 to rx-page-size, a u32.
func (c *Conn) HasAutoreleaseAttr() (bool, error) {
	p, err := c.BindRXPolicy()
	if err != nil {
		return false, err
	}
	t, ok := p[AttrDmabufAutorelease]
	return ok && t == unix.NL_ATTR_TYPE_U8, nil
}

// AutoreleaseDefault is the token release mode this kernel gives a bind-rx
// that does not choose one, and why.
type AutoreleaseDefault struct {
	// On is autorelease on (1): tokens per socket, freed on close.
	On bool `json:"autorelease"`
	// Series is set when the kernel has the autorelease series.
	Series bool `json:"series"`
	// Reason says how the mode was found, in words a person can act on.
	Reason string `json:"reason"`
}

// String formats the mode as "autorelease=N (reason)".
func (d AutoreleaseDefault) String() string {
	n := 0
	if d.On {
		n = 1
	}
	return fmt.Sprintf("autorelease=%d (%s)", n, d.Reason)
}

// DefaultAutorelease finds the kernel's default token release mode over c:
// the autorelease series' default, 0 (tokens per binding, freed on unbind),
// where bind-rx takes NETDEV_A_DMABUF_AUTORELEASE; else 1, the only
// behaviour upstream devmem has (tokens per socket, freed on close). A
// kernel without bind-rx, or a policy that cannot be read, is taken for
// upstream.
func DefaultAutorelease(c *Conn) AutoreleaseDefault {
	if !c.f.HasOp(CmdBindRX) {
		return AutoreleaseDefault{On: true, Reason: "this kernel has no devmem bind-rx; upstream devmem frees tokens per socket on close (autorelease on)"}
	}
	series, err := c.HasAutoreleaseAttr()
	switch {
	case err != nil:
		return AutoreleaseDefault{On: true, Reason: fmt.Sprintf("bind-rx's policy could not be read (%v); taking the upstream behaviour, tokens per socket freed on close", err)}
	case series:
		return AutoreleaseDefault{Series: true, Reason: "this kernel's bind-rx takes NETDEV_A_DMABUF_AUTORELEASE (the autorelease series), whose default is 0: tokens per binding, freed on unbind"}
	}
	return AutoreleaseDefault{On: true, Reason: "this kernel's bind-rx has no NETDEV_A_DMABUF_AUTORELEASE: upstream devmem (Linux 6.18 included) keeps tokens per socket and frees them on close"}
}

var host struct {
	once sync.Once
	d    AutoreleaseDefault
}

// HostAutorelease is DefaultAutorelease of the running kernel, asked once
// per process (the netdev family is the same in every network namespace).
// Without a netdev family it is the upstream behaviour, autorelease on.
func HostAutorelease() AutoreleaseDefault {
	host.once.Do(func() {
		c, err := Dial(nil)
		if err != nil {
			host.d = AutoreleaseDefault{On: true, Reason: fmt.Sprintf("no netdev family (%v); upstream devmem frees tokens per socket on close (autorelease on)", err)}
			return
		}
		defer c.Close()
		host.d = DefaultAutorelease(c)
	})
	return host.d
}

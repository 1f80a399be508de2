package netns

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultPrefix names the namespaces of a pair whose [Options.Prefix] is
// empty.
const DefaultPrefix = "xdevmem"

// Interface name prefixes of the two veth ends; the pair's id follows.
const (
	PeerIfPrefix = "xdvp"
	EmuIfPrefix  = "xdve"
)

// idLen is the length of a pair id in hex digits.
const idLen = 6

// Options configures [NewPair]. The zero value is a usable default.
type Options struct {
	// Prefix starts both namespace names (default [DefaultPrefix]). It is
	// made of lowercase letters, digits and '-', at most 32 characters.
	Prefix string
	// MTU is set on both veth ends (default 1500). Native single-buffer XDP
	// on veth works up to 3506.
	MTU int
	// PeerAddr is configured on the peer end in the kernel; EmuAddr is only
	// reported, for the userspace stack. Set both or neither; the default is
	// 10.211.X.1/24 and 10.211.X.2/24 with X taken from the pair's random id.
	PeerAddr, EmuAddr netip.Prefix
	// TxQueues and RxQueues are the veth's numtxqueues and numrxqueues on
	// both ends (default 1).
	TxQueues, RxQueues int
	// SharedAddr configures EmuAddr on the emu end in the kernel too, as on
	// a real host, where the stack shares the interface's address with the
	// kernel (the stack's shared-address mode).
	SharedAddr bool
	// KeepPeerTxOffload leaves the peer's transmit checksum offload on. By
	// default it is turned off (as ethtool -K <peer> tx off would, through
	// ethtool netlink) so that the peer sends finished checksums, as a real
	// NIC's link partner would.
	KeepPeerTxOffload bool
}

// Pair is a veth pair between two fresh namespaces: the kernel peer's and
// the emulated stack's. Its fields are read-only.
type Pair struct {
	// ID is the random id shared by the pair's names.
	ID string
	// Peer holds the kernel peer's end; Emu the end the XDP program and the
	// AF_XDP sockets use.
	Peer, Emu *NS
	// PeerIf and EmuIf are the veth ends' interface names.
	PeerIf, EmuIf string
	// PeerIndex and EmuIndex are their ifindexes, each in its namespace.
	PeerIndex, EmuIndex int
	// PeerMAC and EmuMAC are their hardware addresses.
	PeerMAC, EmuMAC net.HardwareAddr
	// PeerAddr is configured on PeerIf; EmuAddr is for the userspace stack.
	PeerAddr, EmuAddr netip.Prefix
	// MTU is the MTU of both ends.
	MTU int

	closeOnce sync.Once
	closeErr  error
}

var prefixRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

// NewPair creates two namespaces "<prefix>-<id>-peer" and "<prefix>-<id>-emu"
// and a veth pair across them: both ends up with the MTU set, loopback up in
// both namespaces, PeerAddr on the peer end, the peer's transmit checksum
// offload off. No neighbour entry is added: the userspace stack answers ARP
// for EmuAddr. On failure everything created so far is removed.
func NewPair(opts Options) (*Pair, error) {
	if err := opts.fill(); err != nil {
		return nil, fmt.Errorf("new veth pair: %w", err)
	}
	p := &Pair{MTU: opts.MTU, ID: freeID(opts.Prefix)}
	var err error
	p.Peer, err = NewNS(opts.Prefix + "-" + p.ID + "-peer")
	if err != nil {
		return nil, fmt.Errorf("new veth pair: %w", err)
	}
	if err := p.setup(opts); err != nil {
		_ = p.Close()
		return nil, fmt.Errorf("new veth pair %s: %w", p.ID, err)
	}
	return p, nil
}

// freeID returns a random id whose namespace names are not taken yet. If it
// cannot tell, it returns some id and lets the namespace creation report why.
func freeID(prefix string) string {
	var id string
	for range 100 {
		var raw [idLen / 2]byte
		_, _ = rand.Read(raw[:])
		id = hex.EncodeToString(raw[:])
		_, errPeer := os.Stat(filepath.Join(RunDir, prefix+"-"+id+"-peer"))
		_, errEmu := os.Stat(filepath.Join(RunDir, prefix+"-"+id+"-emu"))
		if errors.Is(errPeer, os.ErrNotExist) && errors.Is(errEmu, os.ErrNotExist) {
			break
		}
	}
	return id
}

func (o *Options) fill() error {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if !prefixRE.MatchString(o.Prefix) {
		return fmt.Errorf("invalid prefix %q", o.Prefix)
	}
	if o.MTU == 0 {
		o.MTU = 1500
	}
	if o.MTU < 68 || o.MTU > 65535 {
		return fmt.Errorf("mtu %d out of range [68, 65535]", o.MTU)
	}
	if o.TxQueues == 0 {
		o.TxQueues = 1
	}
	if o.RxQueues == 0 {
		o.RxQueues = 1
	}
	if o.TxQueues < 1 || o.RxQueues < 1 || o.TxQueues > 256 || o.RxQueues > 256 {
		return fmt.Errorf("queue counts tx %d rx %d out of range [1, 256]", o.TxQueues, o.RxQueues)
	}
	if o.PeerAddr.IsValid() != o.EmuAddr.IsValid() {
		return errors.New("set both PeerAddr and EmuAddr or neither")
	}
	if o.PeerAddr.IsValid() && o.PeerAddr.Addr() == o.EmuAddr.Addr() {
		return fmt.Errorf("peer and emu address are both %v", o.PeerAddr.Addr())
	}
	return nil
}

func (p *Pair) setup(opts Options) error {
	var err error
	p.Emu, err = NewNS(opts.Prefix + "-" + p.ID + "-emu")
	if err != nil {
		return err
	}
	p.PeerIf, p.EmuIf = PeerIfPrefix+p.ID, EmuIfPrefix+p.ID
	p.PeerAddr, p.EmuAddr = opts.PeerAddr, opts.EmuAddr
	if !p.PeerAddr.IsValid() {
		x, _ := strconv.ParseUint(p.ID[:2], 16, 8)
		p.PeerAddr = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 211, byte(x), 1}), 24)
		p.EmuAddr = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 211, byte(x), 2}), 24)
	}

	if err := p.Peer.route(func(hPeer *netlink.Handle) error {
		return p.Emu.route(func(hEmu *netlink.Handle) error {
			return p.link(opts, hPeer, hEmu)
		})
	}); err != nil {
		return err
	}
	if !opts.KeepPeerTxOffload {
		if err := p.Peer.SetFeatures(p.PeerIf, map[string]bool{"tx": false}); err != nil {
			return fmt.Errorf("peer tx checksum offload off: %w", err)
		}
	}
	return testHook("features")
}

// testHook, when a test sets it, may fail NewPair after a step ("veth",
// "addr", "up", "features") so that the clean-up of everything made so far
// can be checked.
var testHook = func(step string) error { return nil }

// link creates the veth across the namespaces, brings the loopbacks and
// both ends up, configures the peer's address and reads both ends'
// indexes and MACs.
func (p *Pair) link(opts Options, hPeer, hEmu *netlink.Handle) error {
	la := netlink.NewLinkAttrs()
	la.Name = p.PeerIf
	la.MTU = p.MTU
	la.NumTxQueues, la.NumRxQueues = opts.TxQueues, opts.RxQueues
	veth := &netlink.Veth{
		LinkAttrs:       la,
		PeerName:        p.EmuIf,
		PeerTxQLen:      -1, // the kernel's default, as for la
		PeerMTU:         uint32(p.MTU),
		PeerNumTxQueues: uint32(opts.TxQueues),
		PeerNumRxQueues: uint32(opts.RxQueues),
	}
	// Created inside the peer namespace with its other end placed straight
	// into the emu namespace (IFLA_NET_NS_FD): the veth never exists in
	// ours.
	err := p.Emu.withFD(func(fd int) error {
		veth.PeerNamespace = netlink.NsFd(fd)
		return hPeer.LinkAdd(veth)
	})
	if err != nil {
		return fmt.Errorf("add veth %s peer %s: %w", p.PeerIf, p.EmuIf, err)
	}
	if err := testHook("veth"); err != nil {
		return err
	}
	peer, err := p.Peer.linkByName(hPeer, p.PeerIf)
	if err != nil {
		return err
	}
	emu, err := p.Emu.linkByName(hEmu, p.EmuIf)
	if err != nil {
		return err
	}
	if err := hPeer.AddrAdd(peer, nlAddr(p.PeerAddr)); err != nil {
		return fmt.Errorf("add address %v to %s: %w", p.PeerAddr, p.PeerIf, err)
	}
	if opts.SharedAddr {
		if err := hEmu.AddrAdd(emu, nlAddr(p.EmuAddr)); err != nil {
			return fmt.Errorf("add address %v to %s: %w", p.EmuAddr, p.EmuIf, err)
		}
	}
	if err := testHook("addr"); err != nil {
		return err
	}
	for _, up := range []struct {
		ns   *NS
		h    *netlink.Handle
		name string
	}{{p.Peer, hPeer, "lo"}, {p.Emu, hEmu, "lo"}, {p.Peer, hPeer, p.PeerIf}, {p.Emu, hEmu, p.EmuIf}} {
		l, err := up.ns.linkByName(up.h, up.name)
		if err != nil {
			return err
		}
		if err := up.h.LinkSetUp(l); err != nil {
			return fmt.Errorf("netns %s: set %s up: %w", up.ns.Name, up.name, err)
		}
	}
	if err := testHook("up"); err != nil {
		return err
	}
	p.PeerIndex, p.PeerMAC = peer.Attrs().Index, peer.Attrs().HardwareAddr
	p.EmuIndex, p.EmuMAC = emu.Attrs().Index, emu.Attrs().HardwareAddr
	return nil
}

// Close removes the veth pair and both namespaces. It is idempotent and best
// effort: it tries every step and returns the first error.
func (p *Pair) Close() error {
	p.closeOnce.Do(func() {
		var errs []error
		if p.Peer != nil && p.PeerIf != "" {
			// Deleting one end deletes both, at once, even if a socket
			// still holds a namespace alive.
			if err := p.Peer.deleteLink(p.PeerIf); err != nil {
				errs = append(errs, fmt.Errorf("delete veth %s: %w", p.PeerIf, err))
			}
		}
		for _, ns := range []*NS{p.Emu, p.Peer} {
			if ns != nil {
				if err := ns.Close(); err != nil {
					errs = append(errs, err)
				}
			}
		}
		if len(errs) > 0 {
			p.closeErr = errs[0]
		}
	})
	return p.closeErr
}

// deleteLink deletes the interface ifname inside the namespace. An
// interface that is already gone, or a namespace already closed (which
// deleted its veths first, see [Cleanup]), is no error.
func (ns *NS) deleteLink(ifname string) error {
	err := ns.route(func(h *netlink.Handle) error {
		l, err := h.LinkByName(ifname)
		if err != nil {
			return err
		}
		return h.LinkDel(l)
	})
	if err == nil || isLinkNotFound(err) || errors.Is(err, os.ErrClosed) {
		return nil
	}
	return err
}

// CloseOnSignal makes SIGINT and SIGTERM close the pair and then end the
// process as the signal would have, so that an interrupted command leaves no
// namespace behind. stop undoes it without closing the pair; call it (or
// defer it) before closing the pair normally.
//
// It suits commands that have no signal handling of their own; a command
// that shuts down gracefully on a signal should close the pair itself.
func (p *Pair) CloseOnSignal() (stop func()) {
	return closeOnSignal(p.Close)
}

func closeOnSignal(closeFn func() error) (stop func()) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case <-done:
			signal.Stop(sigs)
		case sig := <-sigs:
			signal.Stop(sigs)
			if err := closeFn(); err != nil {
				fmt.Fprintf(os.Stderr, "netns: cleanup on %v: %v\n", sig, err)
			}
			// Die of the signal, so the parent sees the usual status.
			signal.Reset(sig)
			_ = unix.Kill(os.Getpid(), sig.(syscall.Signal))
			// Delivery is asynchronous; only if the signal is ignored do we
			// get past this pause.
			time.Sleep(time.Second)
			os.Exit(128 + int(sig.(syscall.Signal)))
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done) }) }
}

// Cleanup removes the namespaces named like a pair's with this prefix
// ("<prefix>-<6 hex digits>-peer" or "-emu") and the veths inside them:
// leftovers of a process that died without closing its pairs. Namespaces
// whose creating process still runs (see OwnerDir) are left alone, so two
// runs with the same prefix do not tear down each other's pairs; this
// process's own open pairs with the prefix are removed. Errors are joined.
func Cleanup(prefix string) error {
	if !prefixRE.MatchString(prefix) {
		return fmt.Errorf("cleanup: invalid prefix %q", prefix)
	}
	names, err := List()
	if err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	re := regexp.MustCompile(`^` + regexp.QuoteMeta(prefix) + `-[0-9a-f]{` + strconv.Itoa(idLen) + `}-(peer|emu)$`)
	var errs []error
	for _, name := range names {
		if !re.MatchString(name) || ownerAlive(name) {
			continue
		}
		if err := removeNS(name); err != nil {
			errs = append(errs, fmt.Errorf("cleanup %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// removeNS deletes the veths inside a namespace, so they vanish even if the
// namespace itself outlives its name, and then the namespace.
func removeNS(name string) error {
	if fd, err := unix.Open(filepath.Join(RunDir, name), unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
		// An unregistered handle on the namespace, just for the deletion.
		tmp := &NS{Name: name, fd: fd}
		_ = tmp.route(func(h *netlink.Handle) error {
			links, err := h.LinkList()
			if err != nil {
				return err
			}
			for _, l := range links {
				if l.Type() == "veth" {
					// The other end may already have taken this one with it.
					_ = h.LinkDel(l)
				}
			}
			return nil
		})
		unix.Close(fd)
	}
	if ns := lookupLive(name); ns != nil {
		return ns.Close()
	}
	return deleteNS(name)
}

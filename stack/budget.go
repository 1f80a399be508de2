package stack

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/umem"
)

// # The UMEM's frame budget
//
// The UMEM's frames serve four uses at once: frames reserved for TX, frames
// waiting on the fill rings, payload a connection's fragment queue pins
// until the application reads it, and payload the application holds as
// tokens. If one connection's queue could pin every receive frame with
// out-of-order data, the segment that fills its first hole would find the
// fill ring empty and the connection would stall for good (the reader
// blocked in RecvMsg, the receive loop idle). So the budget is fixed here,
// in one place, from the UMEM size, the MTU and the queue count:
//
//   - rxFrames: the frames left after the TX reservation;
//   - each queue's fill ring: rxFrames/(2*queues) rounded down to a power
//     of two, at most 2048, so that all the rings together hold at most
//     half the receive frames (an idle queue's ring holds its frames);
//   - one connection's fragment queue: at most rxFrames/2 fragments, and
//     its byte window (Config.RcvBuf's bound) what that many frames hold
//     when full-sized segments arrive.
//
// gVisor advertises half its receive buffer (its rcvAdvWndScale), so with
// RcvBuf equal to the window a connection normally pins a quarter of the
// receive frames; the window and the fragment cap only bind against a peer
// that ignores the advertised window or sends tiny segments.

// MTU limits of TCP over the emulation.
const (
	// MinMTU is the smallest MTU for IPv4: 20 bytes of IPv4 header, 20 of
	// TCP header and 48 bytes of segment, Linux's smallest (its
	// net.ipv4.tcp_min_snd_mss): below it a Linux peer still sends 48-byte
	// segments, which do not fit and never arrive.
	MinMTU = 20 + 20 + 48
	// MinMTU6 is the smallest MTU for IPv6 (RFC 8200; the kernel removes
	// IPv6 from a link with a smaller MTU).
	MinMTU6 = 1280
)

// Frame budget constants.
const (
	txReserve      = 256  // frames the first socket reserves for TX (umem.SocketConfig.TXFrames' default)
	maxRing        = 2048 // largest fill/RX ring per queue
	minRing        = 64   // smallest fill/RX ring per queue
	minWindowSegs  = 64   // a connection's window holds at least this many full segments
	minRcvBufBytes = 4096 // gVisor's smallest receive buffer
	maxRcvBufBytes = 8 << 20
	tcpTSOptLen    = 12 // the timestamp option Linux peers send on every segment
)

// rxBudget is the frame budget derived from a Config (see above).
type rxBudget struct {
	frames   uint64 // frames in the UMEM
	rxFrames uint64 // frames left for receiving after the TX reservation
	ring     uint32 // fill and RX ring entries per queue
	maxFrags int    // fragments one connection's queue may hold
	window   uint64 // bytes past the read offset one connection's queue may record
}

// framesPerPacket is how many UMEM frames one full-sized frame of mtu takes.
func framesPerPacket(mtu int) uint64 {
	return (uint64(mtu) + ethHdrLen + umem.DefaultFrameSize - 1) / umem.DefaultFrameSize
}

// segPayload is the payload of a full-sized segment from a peer that sends
// timestamps: the least a full frame carries.
func segPayload(mtu int, ipv6 bool) uint64 {
	hdr := 20 + 20 + tcpTSOptLen
	if ipv6 {
		hdr += 20
	}
	return uint64(max(mtu-hdr, 1))
}

// budgetFor computes the budget of frames frames for the MTU and queues.
func budgetFor(frames uint64, mtu, queues int, ipv6 bool) rxBudget {
	queues = max(queues, 1)
	if mtu <= 0 {
		mtu = DefaultMTU
	}
	b := rxBudget{frames: frames}
	if reserve := uint64(txReserve + queues - 1); frames > reserve {
		b.rxFrames = frames - reserve
	}
	ring := b.rxFrames / uint64(2*queues)
	b.ring = maxRing
	for uint64(b.ring) > ring && b.ring > 1 {
		b.ring >>= 1
	}
	flowFrames := b.rxFrames / 2
	b.maxFrags = int(flowFrames)
	b.window = flowFrames / framesPerPacket(mtu) * segPayload(mtu, ipv6)
	return b
}

// MinRegionSize is the smallest UMEM (Config.RegionSize) the stack runs with
// at this MTU on this many RX queues (0 means 1): the TX reservation, a
// fill ring of at least 64 frames per queue, and a connection window of at
// least 64 full-sized segments (and 4 KiB) within half the receive frames,
// so that no connection can pin the frames the segment filling its first
// hole needs. Commands validate their --umem against it.
func MinRegionSize(mtu, queues int) uint64 {
	queues = max(queues, 1)
	if mtu <= 0 {
		mtu = DefaultMTU
	}
	pay := segPayload(mtu, false)
	segs := max(uint64(minWindowSegs), (minRcvBufBytes+pay-1)/pay)
	rx := max(2*segs*framesPerPacket(mtu), uint64(2*minRing*queues))
	// Rounded up to 64 frames (256 KiB), a size people can type.
	frames := (uint64(txReserve+queues-1) + rx + 63) &^ 63
	return frames * umem.DefaultFrameSize
}

// MaxRegionFrames bounds the UMEM's frame count (umem.NewRegion's limit).
const MaxRegionFrames = 1 << 24

// CheckRegionSize reports, with the reason, why a UMEM of size bytes cannot
// serve an interface of this MTU and queue count: below MinRegionSize,
// above MaxRegionFrames frames, or more than half the memory the kernel
// reports available (/proc/meminfo MemAvailable) — the UMEM is pinned in
// RAM for as long as the stack runs. With mtu 0 (not known yet) only the
// upper bounds are checked; New checks again with the interface's MTU. The
// error wraps unix.EINVAL or unix.ENOMEM.
func CheckRegionSize(size uint64, mtu, queues int) error {
	if size == 0 {
		return fmt.Errorf("UMEM of 0 bytes: %w", unix.EINVAL)
	}
	if min := MinRegionSize(mtu, queues); mtu > 0 && size < min {
		q := ""
		if queues > 1 {
			q = fmt.Sprintf(" and %d RX queues", queues)
		}
		return fmt.Errorf("UMEM of %s is too small: MTU %d%s needs at least %s (%d frames: %d for TX, the rest for the fill rings and a receive window of full-sized segments): %w",
			sizeString(size), mtu, q, sizeString(min), min/umem.DefaultFrameSize, txReserve+max(queues, 1)-1, unix.EINVAL)
	}
	if size/umem.DefaultFrameSize > MaxRegionFrames {
		return fmt.Errorf("UMEM of %s is too large: at most %s (%d frames): %w",
			sizeString(size), sizeString(MaxRegionFrames*umem.DefaultFrameSize), MaxRegionFrames, unix.EINVAL)
	}
	if avail, err := MemAvailable(); err == nil && size > avail/2 {
		return fmt.Errorf("UMEM of %s is more than half the available memory (MemAvailable %s): the UMEM stays pinned in RAM while the stack runs: %w",
			sizeString(size), sizeString(avail), unix.ENOMEM)
	}
	return nil
}

// MemAvailable is the kernel's estimate of the memory available for new
// allocations without swapping (/proc/meminfo MemAvailable), in bytes.
func MemAvailable() (uint64, error) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) >= 2 && string(f[0]) == "MemAvailable:" {
			kb, err := strconv.ParseUint(string(f[1]), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/meminfo: %w", err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("/proc/meminfo: no MemAvailable: %w", unix.ENOENT)
}

// CheckMTU reports why TCP cannot run over the emulation at this MTU
// (below MinMTU, or below MinMTU6 with IPv6 addresses, or above MaxMTU).
// The error wraps unix.EINVAL or unix.EMSGSIZE.
func CheckMTU(mtu int, ipv6 bool) error {
	switch {
	case mtu > MaxMTU:
		return fmt.Errorf("MTU %d is too large: at most %d (XDP multi-buffer frames of %d bytes): %w", mtu, MaxMTU, umem.DefaultFrameSize, unix.EMSGSIZE)
	case ipv6 && mtu < MinMTU6:
		return fmt.Errorf("MTU %d is too small for IPv6: at least %d (RFC 8200; the kernel removes IPv6 from smaller links): %w", mtu, MinMTU6, unix.EINVAL)
	case mtu < MinMTU:
		return fmt.Errorf("MTU %d is too small for TCP: at least %d (20 bytes of IPv4 header, 20 of TCP header and the 48-byte segments Linux peers send at the least, net.ipv4.tcp_min_snd_mss): %w", mtu, MinMTU, unix.EINVAL)
	}
	return nil
}

// sizeString prints a byte count in the largest binary unit it reaches.
func sizeString(n uint64) string {
	for _, u := range []struct {
		name string
		m    uint64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		switch {
		case n >= u.m && n%u.m == 0:
			return fmt.Sprintf("%d %s", n/u.m, u.name)
		case n >= u.m:
			v := strings.TrimRight(fmt.Sprintf("%.2f", float64(n)/float64(u.m)), "0")
			return v + " " + u.name
		}
	}
	return fmt.Sprintf("%d B", n)
}

// hasIPv6 reports whether the configuration gives the stack an IPv6 address.
func (cfg *Config) hasIPv6() bool {
	return (cfg.Addr.IsValid() && !cfg.Addr.Addr().Unmap().Is4()) || cfg.Addr6.IsValid()
}

// budget is the configuration's frame budget.
func (cfg *Config) budget() rxBudget {
	size := cfg.RegionSize
	if size == 0 {
		size = DefaultRegionSize
	}
	return budgetFor(size/umem.DefaultFrameSize, cfg.MTU, cfg.Queues, cfg.hasIPv6())
}

// sizeRcvBuf fills in RcvBuf from the budget, or lowers a larger one to it.
func (cfg *Config) sizeRcvBuf() error {
	if cfg.RcvBuf != 0 && cfg.RcvBuf < minRcvBufBytes {
		return fmt.Errorf("receive buffer of %d bytes: at least %d: %w", cfg.RcvBuf, minRcvBufBytes, unix.EINVAL)
	}
	w := int(max(cfg.budget().window, minRcvBufBytes))
	if cfg.RcvBuf == 0 {
		cfg.RcvBuf = min(w, maxRcvBufBytes)
	} else {
		cfg.RcvBuf = min(cfg.RcvBuf, w)
	}
	return nil
}

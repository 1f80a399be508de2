package bench

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/internal/pattern"
	"github.com/xdevmem/xdevmem/stack"
	"github.com/xdevmem/xdevmem/umem"
)

// PeerCommand is the hidden subcommand of the xdevmem binary that runs the
// kernel peer of a measurement in the peer namespace ("xdevmem bench-peer
// ..." started by netns.NS.Command): the TCP sender or UDP flood of RX rows, the TCP
// receiver of TX rows. Keeping the peer in its own process keeps its CPU
// time out of the measured side's getrusage.
const PeerCommand = "bench-peer"

// PeerReport is what the peer prints on its standard output, as one JSON
// object, when it is done.
type PeerReport struct {
	// Bytes is the payload the peer handed to the kernel (TCP send), that
	// left in datagrams (UDP) or that it read (TCP receive).
	Bytes uint64 `json:"bytes"`
	// Packets is TCP_INFO's tcpi_data_segs_out (retransmissions included)
	// or the number of datagrams sent; 0 when receiving.
	Packets uint64 `json:"packets"`
	// Retrans is TCP_INFO's tcpi_total_retrans (0 for UDP and receiving).
	Retrans uint64 `json:"retrans"`
	// UserSeconds and SysSeconds are the peer's getrusage(RUSAGE_SELF)
	// from connect (or accept) to the end of the transfer.
	UserSeconds float64 `json:"user_s"`
	SysSeconds  float64 `json:"sys_s"`
	// Seconds is the peer's wall time over the same span.
	Seconds float64 `json:"seconds"`
}

// PeerMain runs the hidden bench-peer subcommand:
//
//	bench-peer tcp -addr IP:PORT -size BYTES [-buf BYTES]
//	bench-peer udp -addr IP:PORT -duration D [-len BYTES] [-batch N] [-xsk IFNAME -dst-mac MAC]
//	bench-peer tcp-recv -addr IP:PORT [-buf BYTES]
//
// tcp connects, writes size bytes, shuts its write side down, waits for the
// receiver to close and reports TCP_INFO counters. udp sends datagrams of
// len bytes for the duration, in sendmmsg batches or, with -xsk, as
// prebuilt frames through an AF_XDP socket. tcp-recv listens, accepts one
// connection, reads it to the end into a buffer and closes. Each prints a
// [PeerReport] as JSON on out.
func PeerMain(args []string, out io.Writer) error {
	if len(args) == 0 || (args[0] != "tcp" && args[0] != "udp" && args[0] != "tcp-recv") {
		return errors.New("bench-peer: want tcp, udp or tcp-recv as the first argument")
	}
	mode := args[0]
	fs := flag.NewFlagSet(PeerCommand+" "+mode, flag.ContinueOnError)
	addr := fs.String("addr", "", "receiver address IP:PORT")
	size := fs.Uint64("size", 1<<30, "tcp: bytes to send")
	bufSize := fs.Int("buf", 1<<20, "tcp: bytes per write")
	dur := fs.Duration("duration", 2*time.Second, "udp: how long to send")
	dlen := fs.Int("len", 1472, "udp: payload bytes per datagram")
	batch := fs.Int("batch", 64, "udp: datagrams per sendmmsg or per AF_XDP kick")
	xskIf := fs.String("xsk", "", "udp: send prebuilt frames through an AF_XDP socket on this interface instead of a UDP socket")
	dstMAC := fs.String("dst-mac", "", "udp with -xsk: the receiver's MAC address")
	gso := fs.Bool("gso", false, "udp: send 64 KiB messages cut into datagrams by the kernel (UDP_SEGMENT)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *addr == "" {
		return errors.New("bench-peer: -addr is required")
	}
	var rep PeerReport
	var err error
	if mode == "tcp" {
		rep, err = sendTCP(*addr, *size, *bufSize)
	} else if mode == "tcp-recv" {
		rep, err = recvTCP(*addr, *bufSize)
	} else if *xskIf != "" {
		rep, err = sendXSK(*xskIf, *dstMAC, *addr, *dur, *dlen, *batch)
	} else {
		rep, err = sendUDP(*addr, *dur, *dlen, *batch, *gso)
	}
	if err != nil {
		return fmt.Errorf("bench-peer %s: %w", mode, err)
	}
	return json.NewEncoder(out).Encode(rep)
}

// cpuNow is the process's user and system time so far.
func cpuNow() (user, sys float64) {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return tvSeconds(ru.Utime), tvSeconds(ru.Stime)
}

func tvSeconds(tv unix.Timeval) float64 { return float64(tv.Sec) + float64(tv.Usec)/1e6 }

func sendTCP(addr string, size uint64, bufSize int) (PeerReport, error) {
	var c net.Conn
	var err error
	// The receiver listens before the sender starts; a stack that has to
	// answer ARP first may need a moment.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return PeerReport{}, err
	}
	defer c.Close()
	tc := c.(*net.TCPConn)
	buf := make([]byte, bufSize)
	pattern.Fill(7, 0, buf)
	u0, s0 := cpuNow()
	t0 := time.Now()
	var sent uint64
	for sent < size {
		n := min(uint64(len(buf)), size-sent)
		w, err := tc.Write(buf[:n])
		sent += uint64(w)
		if err != nil {
			return PeerReport{}, fmt.Errorf("write after %d bytes: %w", sent, err)
		}
	}
	if err := tc.CloseWrite(); err != nil {
		return PeerReport{}, fmt.Errorf("shutdown: %w", err)
	}
	// The receiver closes after it has read everything: then every byte is
	// acknowledged and TCP_INFO is final.
	tc.SetReadDeadline(time.Now().Add(2 * time.Minute))
	if _, err := io.Copy(io.Discard, tc); err != nil {
		return PeerReport{}, fmt.Errorf("wait for the receiver to close: %w", err)
	}
	rep := PeerReport{Bytes: sent, Seconds: time.Since(t0).Seconds()}
	u1, s1 := cpuNow()
	rep.UserSeconds, rep.SysSeconds = u1-u0, s1-s0
	info, err := tcpInfo(tc)
	if err != nil {
		return rep, fmt.Errorf("TCP_INFO: %w", err)
	}
	rep.Packets = uint64(info.Data_segs_out)
	rep.Retrans = uint64(info.Total_retrans)
	return rep, nil
}

// recvTCP is the kernel receiver of TX rows: one connection, read into a
// buffer to the end, then closed (which tells the sender everything
// arrived).
func recvTCP(addr string, bufSize int) (PeerReport, error) {
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		return PeerReport{}, err
	}
	defer ln.Close()
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(30 * time.Second))
	c, err := ln.Accept()
	if err != nil {
		return PeerReport{}, err
	}
	defer c.Close()
	buf := make([]byte, bufSize)
	u0, s0 := cpuNow()
	t0 := time.Now()
	var rep PeerReport
	for {
		n, err := c.Read(buf)
		rep.Bytes += uint64(n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return rep, fmt.Errorf("read after %d bytes: %w", rep.Bytes, err)
		}
	}
	rep.Seconds = time.Since(t0).Seconds()
	u1, s1 := cpuNow()
	rep.UserSeconds, rep.SysSeconds = u1-u0, s1-s0
	return rep, nil
}

func sendUDP(addr string, d time.Duration, dlen, batch int, gso bool) (PeerReport, error) {
	c, err := net.Dial("udp4", addr)
	if err != nil {
		return PeerReport{}, err
	}
	defer c.Close()
	uc := c.(*net.UDPConn)
	_ = uc.SetWriteBuffer(4 << 20)
	// UDP GSO: each message is segs datagrams of dlen bytes, cut by the
	// kernel after one pass through the socket layer (what makes a kernel
	// sender outrun the receive loop); 1 when the kernel refuses it.
	segs := 1
	if gso {
		segs = max(1, (1<<16-udpOverhead)/dlen)
		if rc, err := uc.SyscallConn(); err == nil {
			var serr error
			rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT, dlen) })
			if serr != nil {
				segs = 1
			}
		}
	}
	pc := ipv4.NewPacketConn(uc)
	payload := make([]byte, dlen*segs)
	pattern.Fill(7, 0, payload)
	msgs := make([]ipv4.Message, batch)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{payload}
	}
	u0, s0 := cpuNow()
	t0 := time.Now()
	end := t0.Add(d)
	var rep PeerReport
	for i := 0; ; i++ {
		if i&15 == 0 && time.Now().After(end) {
			break
		}
		n, err := pc.WriteBatch(msgs, 0)
		if err != nil {
			// A full device queue (ENOBUFS) is part of flooding.
			if errors.Is(err, unix.ENOBUFS) || errors.Is(err, unix.EAGAIN) || strings.Contains(err.Error(), "no buffer space") {
				continue
			}
			return rep, fmt.Errorf("sendmmsg: %w", err)
		}
		rep.Packets += uint64(n * segs)
	}
	rep.Bytes = rep.Packets * uint64(dlen)
	rep.Seconds = time.Since(t0).Seconds()
	u1, s1 := cpuNow()
	rep.UserSeconds, rep.SysSeconds = u1-u0, s1-s0
	return rep, nil
}

// peerArgs builds the bench-peer command line.
func peerArgs(kind string, addr string, size uint64, udpDur time.Duration) []string {
	if kind == "udp" {
		return []string{PeerCommand, "udp", "-addr", addr, "-duration", udpDur.String()}
	}
	if kind == "udp-gso" {
		return []string{PeerCommand, "udp", "-gso", "-addr", addr, "-duration", udpDur.String()}
	}
	if kind == "tcp-recv" {
		return []string{PeerCommand, "tcp-recv", "-addr", addr}
	}
	if kind == "xsk" {
		// addr is "IFNAME,DSTMAC,IP:PORT".
		f := strings.SplitN(addr, ",", 3)
		return []string{PeerCommand, "udp", "-xsk", f[0], "-dst-mac", f[1], "-addr", f[2], "-duration", udpDur.String()}
	}
	return []string{PeerCommand, "tcp", "-addr", addr, "-size", fmt.Sprint(size)}
}

// sendXSK floods UDP datagrams through an AF_XDP socket bound to ifname
// (copy mode: the kernel builds an skb per frame and transmits it on the
// veth). It skips the sender's UDP/IP stack, so the flood reaches rates a
// UDP socket on this machine cannot; the receive side is unchanged.
func sendXSK(ifname, dstMAC, addr string, d time.Duration, dlen, batch int) (PeerReport, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return PeerReport{}, err
	}
	dmac, err := net.ParseMAC(dstMAC)
	if err != nil {
		return PeerReport{}, err
	}
	dst, err := netip.ParseAddrPort(addr)
	if err != nil || !dst.Addr().Is4() {
		return PeerReport{}, fmt.Errorf("address %q: want IPv4:port", addr)
	}
	ps, err := stack.InterfacePrefixes(ifi)
	if err != nil {
		return PeerReport{}, err
	}
	var src netip.Addr
	for _, p := range ps {
		if p.Addr().Is4() {
			src = p.Addr()
			break
		}
	}
	if !src.IsValid() {
		return PeerReport{}, fmt.Errorf("%s has no IPv4 address", ifname)
	}
	frame := udpFrame(ifi.HardwareAddr, dmac, src, dst, dlen)
	region, err := umem.NewRegion(umem.RegionConfig{Size: 16 << 20})
	if err != nil {
		return PeerReport{}, err
	}
	defer region.Close()
	sock, err := umem.NewSocket(region, ifi.Index, umem.SocketConfig{Queue: 0, RingSize: 64, TXRingSize: 2048, TXFrames: 2048})
	if err != nil {
		return PeerReport{}, err
	}
	defer sock.Close()
	u0, s0 := cpuNow()
	t0 := time.Now()
	end := t0.Add(d)
	var queued uint64
	txAddrs := make([]uint64, batch)
	descs := make([]unix.XDPDesc, batch)
	for i := 0; ; i++ {
		if i&15 == 0 && time.Now().After(end) {
			break
		}
		k := sock.TXAcquire(txAddrs)
		for j, a := range txAddrs[:k] {
			copy(sock.TXFrame(a), frame)
			descs[j] = unix.XDPDesc{Addr: a, Len: uint32(len(frame))}
		}
		n, err := sock.TXProduce(descs[:k])
		if err != nil {
			return PeerReport{}, err
		}
		if n < k {
			sock.TXRelease(txAddrs[n:k]...)
		}
		queued += uint64(n)
		if err := sock.TXKick(); err != nil {
			return PeerReport{}, err
		}
	}
	// Let the last kicks finish before counting.
	time.Sleep(10 * time.Millisecond)
	sock.TXKick()
	var rep PeerReport
	rep.Packets = queued
	rep.Bytes = rep.Packets * uint64(dlen)
	rep.Seconds = time.Since(t0).Seconds()
	u1, s1 := cpuNow()
	rep.UserSeconds, rep.SysSeconds = u1-u0, s1-s0
	return rep, nil
}

// udpFrame builds an Ethernet/IPv4/UDP frame with a dlen-byte payload, a
// valid IPv4 header checksum and no UDP checksum (0, allowed over IPv4).
func udpFrame(smac, dmac net.HardwareAddr, src netip.Addr, dst netip.AddrPort, dlen int) []byte {
	b := make([]byte, udpOverhead+dlen)
	copy(b[0:6], dmac)
	copy(b[6:12], smac)
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+dlen))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	ip[8] = 64
	ip[9] = 17
	s4, d4 := src.As4(), dst.Addr().As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	udp := b[34:42]
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(8+dlen))
	pattern.Fill(7, 0, b[42:])
	return b
}

// selfExecutable is the binary that has the bench-peer subcommand.
func selfExecutable() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find own executable for the peer: %w", err)
	}
	return exe, nil
}

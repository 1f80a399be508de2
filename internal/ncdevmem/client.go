package ncdevmem

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/xdevmem/xdevmem/stack"
)

// doClient mirrors do_client through the emulated devmem TX client
// (client.go): stdin is written into a TX dmabuf and sent from there with
// MSG_ZEROCOPY, -z splitting it into iovecs of at most that many bytes.
// Without -c the stack takes the interface's address of the server's
// family, the source the kernel would pick.
func (nc *ncdevmem) doClient() int {
	server, err := parseAddress(nc.serverIP)
	if err != nil {
		nc.prErr("parse server address")
		return 1
	}
	var local netip.Prefix
	if nc.clientIP != "" {
		a, err := parseAddress(nc.clientIP)
		if err != nil {
			nc.prErr("parse client address")
			return 1
		}
		local = ifacePrefix(nc.ifname, a)
	} else if local, err = sourcePrefix(nc.ifname, server); err != nil {
		nc.prErr("%v", err)
		return 1
	}
	nc.logf("xdevmem: backend emulated: the devmem TX client runs on the emulation\n")
	nc.logf("Connect to %s %d (via %s)\n", nc.serverIP, atoi(nc.port), nc.ifname)
	nc.flush()
	// ncdevmem's socket is AF_INET6 whatever the server's family
	// (parse_address maps IPv4 to ::ffff:a.b.c.d), so its completions
	// come as ipv6_recv_error writes them: give the client the same.
	args := []string{"-f", nc.ifname, "-s", mapped(server), "-c", local.Addr().String(),
		"-p", strconv.Itoa(atoi(nc.port)), "--prefix-len", strconv.Itoa(local.Bits()), "--verbose", "--quiet"}
	if nc.maxChunk > 0 {
		args = append(args, "-z", strconv.Itoa(nc.maxChunk))
	}
	if err := nc.opts.Client(args); err != nil {
		var reported interface{ ExitCode() int }
		if !errors.As(err, &reported) {
			nc.prErr("%v", err)
		}
		return 1
	}
	nc.logf("%s: tx ok\n", ncPrefix)
	return 0
}

// sourcePrefix picks the interface's configured address of server's family,
// preferring one on server's subnet, as the kernel's source selection would.
func sourcePrefix(ifname string, server netip.Addr) (netip.Prefix, error) {
	ifc, err := net.InterfaceByName(ifname)
	if err != nil {
		return netip.Prefix{}, err
	}
	ps, _ := stack.InterfacePrefixes(ifc)
	var first netip.Prefix
	for _, p := range ps {
		if ip := p.Addr(); ip.Is4() != server.Is4() || ip.IsLinkLocalUnicast() {
			continue
		}
		if p.Masked().Contains(server) {
			return p, nil
		}
		if !first.IsValid() {
			first = p
		}
	}
	if first.IsValid() {
		return first, nil
	}
	return netip.Prefix{}, fmt.Errorf("no -c and no address of %s's family on %s: the emulated client needs one for its stack (give -c ADDR)", server, ifname)
}

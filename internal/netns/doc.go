// Package netns builds the isolated network world that xdevmem's tests and
// its demo and bench commands run in: named network namespaces and a veth
// pair joining two of them.
//
// # The pair
//
// [NewPair] creates two namespaces, "<prefix>-<id>-peer" and
// "<prefix>-<id>-emu", and one veth pair across them. The peer end carries
// an address in the kernel: the kernel's own TCP runs there. The emu end has
// no kernel address; the userspace stack answers for [Pair.EmuAddr] once an
// XDP program steers that address's ARP and IP traffic into AF_XDP sockets.
// The peer's transmit checksum offload is turned off, because a veth
// otherwise hands the other end packets whose checksums are unfinished.
//
// The veth is created directly inside the namespaces, so it never exists in
// the caller's namespace, and removing the namespaces removes it.
//
// # Running code inside a namespace
//
// [NS.Do] switches one locked OS thread into the namespace for the duration
// of a function. Whatever the function creates there — sockets, netlink
// sockets, BPF links, bound AF_XDP sockets — stays in the namespace and keeps
// working from any goroutine afterwards. [NS.Command] runs a program inside
// the namespace as "ip netns exec" would: it re-executes this binary, which
// switches namespaces before main and then becomes the program. [NS.AddAddr],
// [NS.DelAddr], [NS.SetNeigh], [NS.SetFeatures] and [NS.LinkStats] do what
// ip(8) and ethtool(8) would do inside the namespace.
//
// # Leaving nothing behind
//
// [Pair.Close] and [NS.Close] are idempotent and best effort. The package
// remembers every namespace this process created: [CloseAll] removes those
// still open (a watchdog calls it before crashing the process), and
// [Leftovers] reports any that survived. [Pair.CloseOnSignal] removes a pair
// on SIGINT or SIGTERM, and [Cleanup] removes the leftovers of a process that
// died without cleaning up (kill -9), typically at a command's start.
//
// # Go alone
//
// Nothing here runs ip(8) or ethtool(8): a namespace is named the way
// "ip netns add" names it (a bind mount of its nsfs file under [RunDir], a
// shared mount point, so "ip netns list" and "ip netns exec" still see it);
// links, addresses, neighbours and counters go through rtnetlink
// (github.com/vishvananda/netlink) and offload features through ethtool
// netlink (compat/ethnl). It all needs CAP_SYS_ADMIN and CAP_NET_ADMIN.
package netns

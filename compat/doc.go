// Package compat is xdevmem's kernel backend, the capability probe that
// says whether the kernel's own devmem TCP can run on an interface, and the
// choice between that backend and the emulation.
//
// # The kernel backend
//
// KernelProvider implements devmemapi.Provider over the kernel's uAPI:
//
//   - BindRX sends NETDEV_CMD_BIND_RX (package compat/netdev) over a netlink
//     socket of its own; the Binding keeps the socket, and closing it is the
//     unbind, exactly as in the kernel.
//   - The dmabuf is the caller's fd (BindRXConfig.DmabufFD), or one made
//     from a sealed memfd through /dev/udmabuf. Binding.ReadAt reads it
//     through an mmap bracketed by DMA_BUF_IOCTL_SYNC.
//   - Listen and Accept give KernelConns over kernel TCP sockets: RecvMsg is
//     recvmsg(2) with MSG_SOCK_DEVMEM passed through, DontNeed is the raw
//     setsockopt(SO_DEVMEM_DONTNEED) whose return value is the count of
//     freed fragments.
//   - It is also a devmemapi.TXProvider: BindTX sends NETDEV_CMD_BIND_TX
//     (no admin capability needed) and maps the TX dmabuf for writing;
//     Dial gives KernelTXConns whose SendMsg is sendmsg(2) with the
//     iovecs' bases as dmabuf offsets, SCM_DEVMEM_DMABUF and MSG_ZEROCOPY,
//     and whose RecvErrQueue and PollErrQueue read the zerocopy
//     completions from MSG_ERRQUEUE. A program written against
//     devmemapi sends on either backend.
//
// It does not configure the NIC: header split, hds-thresh, ntuple rules
// that steer flows to the bound queues and RSS away from them are the
// administrator's (ethtool), as with the kernel's ncdevmem -n.
//
// # The probe
//
// Probe checks one requirement at a time (CheckNetdevFamily ...
// CheckDmabuf) and says for each what it saw and what a person can do.
// Its bind-rx check sends a real bind-rx with an fd that is never open:
// the kernel refuses a driver without queue management (EOPNOTSUPP) before
// it looks at the fd, and a capable driver fails at the fd (EBADF) with
// nothing bound. So the probe is safe on a production NIC, and it cannot
// prove that the driver will pick up the memory provider when the queue
// restarts; only a bind with a real dmabuf does.
//
// # Choosing
//
// Open with BackendAuto probes the interface and returns the kernel backend
// when every check passes, otherwise the emulation (whose constructor the
// caller injects: compat does not import package stack), with a Choice
// saying which and why. Forcing BackendKernel on an interface that fails
// the probe fails with an *UnsupportedError that matches
// devmemapi.ErrNotSupported and the kernel's errno.
//
// # Errors
//
// Every errno the kernel's devmem code defines is one row of the table in
// package devmemapi/devmemerr; both backends return *devmemerr.Error values,
// so errors.Is(err, unix.EOPNOTSUPP) and devmemerr.Match work the same on
// either.
//
// # Namespaces
//
// Netlink sockets, the probe and listeners work in the calling thread's
// network namespace. Code that serves another namespace enters it on a
// locked OS thread (or passes Env.Dial a netlink.Config with NetNS); a
// socket keeps its namespace once made.
package compat

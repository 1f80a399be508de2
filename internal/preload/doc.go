// Package preload is the logic of libxdevmem.so (cmd/libxdevmem): the
// devmem uAPI of a C program, served by the emulated stack from inside the
// program's own process.
//
// # How calls arrive
//
// The library's C side interposes libc's functions and keeps a table of
// fd kinds (Kind). A call on an fd of kind KindPlain never leaves C; the
// others, and the calls that may create a devmem object (open of
// /dev/udmabuf, bind and connect of a TCP socket, system and popen of
// ethtool), come here as Lib methods with the application's pointers as
// UPtr. A method returns Pass to send the call on to libc.
//
// # Objects
//
//   - udmabuf stand-in and dmabufs (dmabuf.go): a dmabuf is the program's
//     memfd opened anew, so its mmap is the kernel's.
//   - netlink sockets (genl.go): the kernel's, with netdev requests about
//     emulated interfaces answered into a queue the receives drain first.
//   - emulated NICs (nic.go): ethtool state, and the stack whose UMEM is
//     the bound dmabufs (at most one RX and one TX), made by the first
//     bind, remade with both at the other kind's, closed when unused.
//   - emulated TCP sockets (sock.go, sockopt.go, poll.go): the fd names a
//     socketpair end whose readiness mirrors the socket's.
//
// # Waiting, and what stays in C
//
// A blocking receive on a connection does not wait in Go: Recv returns
// Wait with an event word (Waiter), the C side sleeps on it with a futex
// (bounded by SO_RCVTIMEO, ended with EINTR by a signal handler without
// SA_RESTART, which it learns from the trampoline it puts in front of the
// program's handlers), and the connection's notify moves the word
// (Host.Wake). DMA_BUF_IOCTL_SYNC with its struct on the caller's stack
// is answered in C; poll and select arrays are read in C through the
// kernel (process_vm_readv), so a bad one is EFAULT.
//
// # Application memory
//
// Every access to the program's memory goes through usermem_unsafe.go,
// which turns faults into EFAULT as copy_from_user does.
//
// # Errors
//
// Handlers return errors carrying a unix.Errno (Errno extracts it); the
// results are the kernel's, checked call by call by tests/preload_test.go
// against a kernel socket and the kernel's code.
package preload

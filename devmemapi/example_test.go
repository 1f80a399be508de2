package devmemapi_test

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
)

// Parsing what a devmem recvmsg returns. The control buffer is built by
// hand here, as the kernel fills it: two SCM_DEVMEM_DMABUF messages
// around an unrelated SCM_RIGHTS message. A real program gets oob[:oobn]
// from unix.Recvmsg(fd, p, oob, devmemapi.MSG_SOCK_DEVMEM) or from
// devmemapi.Conn.RecvMsg.
func ExampleAppendFrags() {
	oob := make([]byte, 0, 4*devmemapi.CmsgSpaceDmabuf)
	put := func(c devmemapi.DmabufCmsg) {
		buf := make([]byte, devmemapi.CmsgSpaceDmabuf)
		devmemapi.PutDmabufCmsg(buf, 0, devmemapi.SCM_DEVMEM_DMABUF, &c)
		oob = append(oob, buf...)
	}
	put(devmemapi.DmabufCmsg{FragOffset: 8192, FragSize: 1448, FragToken: 1, DmabufID: 3})
	oob = append(oob, unix.UnixRights(0)...) // skipped: not devmem
	put(devmemapi.DmabufCmsg{FragOffset: 8192 + 1448, FragSize: 2648, FragToken: 2, DmabufID: 3})

	frags, err := devmemapi.AppendFrags(nil, oob)
	if err != nil {
		panic(err)
	}
	var toks []devmemapi.DmabufToken
	for _, f := range frags {
		if f.Linear {
			fmt.Println("linear bytes in p:", f.FragSize)
			continue
		}
		fmt.Printf("dmabuf %d: %d bytes at %d, token %d\n", f.DmabufID, f.FragSize, f.FragOffset, f.FragToken)
		toks = append(toks, devmemapi.DmabufToken{TokenStart: f.FragToken, TokenCount: 1})
	}

	// Return the tokens: the SO_DEVMEM_DONTNEED option value.
	optval := devmemapi.AppendTokens(nil, toks)
	fmt.Println("dontneed optlen:", len(optval), devmemapi.CheckDontNeedLen(len(optval)))
	// A kernel backend would now call
	//   unix.Syscall6(unix.SYS_SETSOCKOPT, fd, unix.SOL_SOCKET,
	//       devmemapi.SO_DEVMEM_DONTNEED, uintptr(unsafe.Pointer(&optval[0])), len, 0)
	// and read the number of freed frags from the return value.
	fmt.Println("first token:", binary.NativeEndian.Uint32(optval[0:]), binary.NativeEndian.Uint32(optval[4:]))
	// Output:
	// dmabuf 3: 1448 bytes at 8192, token 1
	// dmabuf 3: 2648 bytes at 9640, token 2
	// dontneed optlen: 16 <nil>
	// first token: 1 1
}

package devmemapi

import (
	"encoding/binary"
	"errors"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// solCmsg builds one SOL_SOCKET (or level) control message with data.
func solCmsg(level, typ int32, data []byte) []byte {
	b := make([]byte, cmsgAlignUp(cmsgHdrLen+len(data)))
	binary.NativeEndian.PutUint64(b, uint64(cmsgHdrLen+len(data)))
	binary.NativeEndian.PutUint32(b[8:], uint32(level))
	binary.NativeEndian.PutUint32(b[12:], uint32(typ))
	copy(b[cmsgHdrLen:], data)
	return b
}

func u32b(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }
func u64b(v uint64) []byte { return binary.NativeEndian.AppendUint64(nil, v) }

// TestParseSendCmsg pins __sock_cmsg_send's checks of Linux 6.18 for the
// control messages a TCP socket accepts beside SCM_DEVMEM_DMABUF.
func TestParseSendCmsg(t *testing.T) {
	sol := int32(unix.SOL_SOCKET)
	dmabuf := AppendDmabufTxCmsg(nil, 7)
	priv := SendCmsgOptions{Privileged: true}
	for _, tc := range []struct {
		name string
		oob  []byte
		opts SendCmsgOptions
		err  error
		want SendCookie
	}{
		{"SO_MARK privileged", append(solCmsg(sol, unix.SO_MARK, u32b(9)), dmabuf...), priv, nil,
			SendCookie{DmabufID: 7, HasDmabufID: true, Mark: 9, HasMark: true}},
		{"SO_MARK unprivileged", solCmsg(sol, unix.SO_MARK, u32b(9)), SendCmsgOptions{}, syscall.EPERM, SendCookie{}},
		{"SO_MARK unprivileged, bad length: EPERM first", solCmsg(sol, unix.SO_MARK, u64b(9)), SendCmsgOptions{}, syscall.EPERM, SendCookie{}},
		{"SO_MARK bad length", solCmsg(sol, unix.SO_MARK, u64b(9)), priv, syscall.EINVAL, SendCookie{}},
		{"SO_PRIORITY 6 unprivileged", solCmsg(sol, unix.SO_PRIORITY, u32b(6)), SendCmsgOptions{}, nil, SendCookie{Priority: 6, HasPriority: true}},
		{"SO_PRIORITY 7 unprivileged", solCmsg(sol, unix.SO_PRIORITY, u32b(7)), SendCmsgOptions{}, syscall.EPERM, SendCookie{}},
		{"SO_PRIORITY 7 privileged", solCmsg(sol, unix.SO_PRIORITY, u32b(7)), priv, nil, SendCookie{Priority: 7, HasPriority: true}},
		{"SO_PRIORITY bad length: EINVAL first", solCmsg(sol, unix.SO_PRIORITY, []byte{7}), SendCmsgOptions{}, syscall.EINVAL, SendCookie{}},
		{"SO_TIMESTAMPING TX flags", solCmsg(sol, unix.SO_TIMESTAMPING_NEW, u32b(unix.SOF_TIMESTAMPING_TX_SOFTWARE|unix.SOF_TIMESTAMPING_TX_ACK)), SendCmsgOptions{}, nil,
			SendCookie{TSFlags: unix.SOF_TIMESTAMPING_TX_SOFTWARE | unix.SOF_TIMESTAMPING_TX_ACK, HasTSFlags: true}},
		{"SO_TIMESTAMPING_OLD TX completion", solCmsg(sol, unix.SO_TIMESTAMPING_OLD, u32b(1<<18)), SendCmsgOptions{}, nil, SendCookie{TSFlags: 1 << 18, HasTSFlags: true}},
		{"SO_TIMESTAMPING RX flag", solCmsg(sol, unix.SO_TIMESTAMPING_NEW, u32b(unix.SOF_TIMESTAMPING_RX_SOFTWARE)), SendCmsgOptions{}, syscall.EINVAL, SendCookie{}},
		{"SO_TIMESTAMPING bad length", solCmsg(sol, unix.SO_TIMESTAMPING_NEW, u64b(1)), SendCmsgOptions{}, syscall.EINVAL, SendCookie{}},
		{"SCM_TXTIME without SO_TXTIME", solCmsg(sol, unix.SCM_TXTIME, u64b(5)), priv, syscall.EINVAL, SendCookie{}},
		{"SCM_TXTIME with SO_TXTIME", solCmsg(sol, unix.SCM_TXTIME, u64b(5)), SendCmsgOptions{TxTime: true}, nil, SendCookie{TxTime: 5, HasTxTime: true}},
		{"SCM_TXTIME bad length", solCmsg(sol, unix.SCM_TXTIME, u32b(5)), SendCmsgOptions{TxTime: true}, syscall.EINVAL, SendCookie{}},
		{"SCM_TS_OPT_ID on TCP", solCmsg(sol, unix.SCM_TS_OPT_ID, u32b(1)), priv, syscall.EINVAL, SendCookie{}},
		{"unknown SOL_SOCKET type", solCmsg(sol, 200, u32b(1)), priv, syscall.EINVAL, SendCookie{}},
		{"other level skipped", append(solCmsg(unix.SOL_IP, unix.IP_TTL, u32b(1)), dmabuf...), SendCmsgOptions{}, nil, SendCookie{DmabufID: 7, HasDmabufID: true}},
	} {
		got, err := ParseSendCmsg(tc.oob, tc.opts)
		if !errors.Is(err, tc.err) || (tc.err == nil && err != nil) || got != tc.want {
			t.Errorf("%s: %+v, %v; want %+v, %v", tc.name, got, err, tc.want, tc.err)
		}
	}
}

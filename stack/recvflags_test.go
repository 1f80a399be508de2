package stack

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xdevmem/xdevmem/devmemapi"
	"github.com/xdevmem/xdevmem/devmemapi/devmemerr"
)

// recvWorld is an in-process stack with one accepted connection on a bound
// queue, for the recvmsg semantics tests.
type recvWorld struct {
	ip  *inproc
	c   *Conn
	seq uint32 // the peer's next sequence number
	all []byte // what the peer sent so far
}

func newRecvWorld(t *testing.T, cfg Config, auto bool) *recvWorld {
	t.Helper()
	ip := newInproc(t, cfg)
	if _, err := ip.s.BindRX(devmemapi.BindRXConfig{Queues: []uint32{0}, Autorelease: &auto}); err != nil {
		t.Fatal(err)
	}
	ln, err := ip.s.Listen(netip.AddrPortFrom(netip.Addr{}, 5201))
	if err != nil {
		t.Fatal(err)
	}
	c, seq := ip.connect(ln, 40300, 900)
	return &recvWorld{ip: ip, c: c, seq: seq}
}

// send injects one segment of n pattern bytes and waits until the stack
// queued them.
func (w *recvWorld) send(t *testing.T, n int) {
	t.Helper()
	before := w.c.Queued()
	w.push(w.pattern(n))
	for deadline := time.Now().Add(5 * time.Second); w.c.Queued() < before+n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes queued, want %d", w.c.Queued(), before+n)
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(5 * time.Millisecond) // let gVisor take the segment too
}

// push injects one segment of payload p without waiting. The sequence
// number advances before the segment goes in: a reader woken by it may
// have the test send the next one at once.
func (w *recvWorld) push(p []byte) {
	seq := w.seq
	w.seq += uint32(len(p))
	w.all = append(w.all, p...)
	w.ip.inject(segment(40300, 5201, seq, 1, tcpFlagAck, nil, p))
}

// pattern returns n pattern bytes continuing the stream.
func (w *recvWorld) pattern(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(len(w.all) + i*3)
	}
	return p
}

func (w *recvWorld) recv(t *testing.T, p, oob []byte, flags int) (int, []devmemapi.Frag, error) {
	t.Helper()
	w.c.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, oobn, err := w.c.RecvMsg(p, oob, flags)
	if err != nil {
		return n, nil, err
	}
	fs, perr := devmemapi.AppendFrags(nil, oob[:oobn])
	if perr != nil {
		t.Fatalf("control messages: %v", perr)
	}
	return n, fs, nil
}

// TestRecvPeek: MSG_PEEK leaves the data queued, as tcp_recvmsg_locked
// does; on devmem data tcp_recvmsg_dmabuf still hands out a token (a
// reference) per fragment, so a peek followed by a read gives two tokens
// for the same bytes, each freed by DONTNEED.
func TestRecvPeek(t *testing.T) {
	for _, auto := range []bool{false, true} {
		t.Run(map[bool]string{false: "autorelease=0", true: "autorelease=1"}[auto], func(t *testing.T) { testRecvPeek(t, auto) })
	}
}

func testRecvPeek(t *testing.T, auto bool) {
	w := newRecvWorld(t, Config{}, auto)
	w.send(t, 1000)
	w.send(t, 500)
	p := make([]byte, 4096)
	oob := make([]byte, 8*devmemapi.CmsgSpaceDmabuf)
	n, peeked, err := w.recv(t, p, oob, devmemapi.MSG_SOCK_DEVMEM|unix.MSG_PEEK)
	if err != nil || n != 1500 || len(peeked) != 2 {
		t.Fatalf("autorelease %v: peek: %d bytes, %d frags, %v", auto, n, len(peeked), err)
	}
	if got := w.c.Queued(); got != 1500 {
		t.Fatalf("peek consumed data: %d bytes queued", got)
	}
	n, read, err := w.recv(t, p, oob, devmemapi.MSG_SOCK_DEVMEM)
	if err != nil || n != 1500 || len(read) != 2 || w.c.Queued() != 0 {
		t.Fatalf("read after peek: %d bytes, %d frags, %v, %d queued", n, len(read), err, w.c.Queued())
	}
	mem := w.ip.s.region.Bytes()
	for i := range read {
		if peeked[i].FragOffset != read[i].FragOffset || peeked[i].FragSize != read[i].FragSize {
			t.Fatalf("peek %+v and read %+v differ", peeked[i], read[i])
		}
	}
	var got []byte
	for _, f := range read {
		got = append(got, mem[f.FragOffset:f.FragOffset+uint64(f.FragSize)]...)
	}
	if !bytes.Equal(got, w.all) {
		t.Fatal("bytes differ")
	}
	var toks []devmemapi.DmabufToken
	for _, f := range append(peeked, read...) {
		toks = append(toks, devmemapi.DmabufToken{TokenStart: f.FragToken, TokenCount: 1})
	}
	if freed, err := w.c.DontNeed(toks); err != nil || freed != 4 {
		t.Fatalf("autorelease %v: DONTNEED of peek and read tokens = %d, %v; want 4", auto, freed, err)
	}
	if a := w.ip.s.Accounting(); a.Held != 0 || a.Pinned != 0 {
		t.Fatalf("after DONTNEED: %+v", a)
	}
}

// TestRecvWaitAll: MSG_WAITALL waits until the buffer is full (today's
// code returned short), but still stops at the end of the control buffer
// and where devmem data turns into ordinary data.
func TestRecvWaitAll(t *testing.T) {
	w := newRecvWorld(t, Config{HDSThresh: 100}, false)
	w.send(t, 1000)
	p := make([]byte, 3000)
	oob := make([]byte, 8*devmemapi.CmsgSpaceDmabuf)
	go func() {
		// Not send: the reader consumes concurrently, so waiting for
		// the bytes to stay queued would race with it.
		time.Sleep(50 * time.Millisecond)
		w.push(w.pattern(1200))
		time.Sleep(50 * time.Millisecond)
		w.push(w.pattern(800))
	}()
	n, fs, err := w.recv(t, p, oob, devmemapi.MSG_SOCK_DEVMEM|unix.MSG_WAITALL)
	if err != nil || n != 3000 || len(fs) != 3 {
		t.Fatalf("waitall: %d bytes, %d frags, %v; want 3000 bytes in 3 frags", n, len(fs), err)
	}
	if fs[2].FragSize != 800 {
		t.Fatalf("last frag %d bytes, want 800", fs[2].FragSize)
	}
	// A full control buffer ends the call, MSG_WAITALL or not.
	w.send(t, 1000)
	w.send(t, 1000)
	n, fs, err = w.recv(t, p, oob[:devmemapi.CmsgSpaceDmabuf], devmemapi.MSG_SOCK_DEVMEM|unix.MSG_WAITALL)
	if err != nil || n != 1000 || len(fs) != 1 {
		t.Fatalf("waitall, room for one cmsg: %d bytes, %d frags, %v", n, len(fs), err)
	}
	// Devmem data followed by ordinary data (a payload under the
	// threshold): the call stops at the change.
	w.send(t, 50)
	n, fs, err = w.recv(t, p, oob, devmemapi.MSG_SOCK_DEVMEM|unix.MSG_WAITALL)
	if err != nil || n != 1000 || len(fs) != 1 {
		t.Fatalf("waitall over a kind change: %d bytes, %d frags, %v; want the 1000 devmem bytes", n, len(fs), err)
	}
	n, fs, err = w.recv(t, p, oob, unix.MSG_DONTWAIT)
	if err != nil || n != 50 || len(fs) != 0 || !bytes.Equal(p[:50], w.all[len(w.all)-50:]) {
		t.Fatalf("ordinary bytes: %d, %d frags, %v", n, len(fs), err)
	}
}

// TestRecvTrunc: MSG_TRUNC takes the bytes without copying or reporting
// them: no control message, no token, no EFAULT without MSG_SOCK_DEVMEM,
// across devmem and ordinary data; the frames go back at once.
func TestRecvTrunc(t *testing.T) {
	w := newRecvWorld(t, Config{HDSThresh: 100}, false)
	w.send(t, 1000)
	w.send(t, 60) // ordinary (under the threshold)
	w.send(t, 700)
	p := make([]byte, 4096)
	oob := make([]byte, 8*devmemapi.CmsgSpaceDmabuf)
	n, oobn, err := w.c.RecvMsg(p, oob, unix.MSG_TRUNC|unix.MSG_DONTWAIT)
	if err != nil || n != 1760 || oobn != 0 {
		t.Fatalf("trunc: %d bytes, %d control bytes, %v; want 1760, 0", n, oobn, err)
	}
	if a := w.ip.s.Accounting(); a.Held != 0 || a.Pinned != 0 || w.c.Queued() != 0 {
		t.Fatalf("after trunc: %+v, %d queued", a, w.c.Queued())
	}
	// Peek and trunc: counts, takes nothing.
	w.send(t, 300)
	n, oobn, err = w.c.RecvMsg(p[:100], oob, unix.MSG_TRUNC|unix.MSG_PEEK|devmemapi.MSG_SOCK_DEVMEM)
	if err != nil || n != 100 || oobn != 0 || w.c.Queued() != 300 {
		t.Fatalf("trunc|peek: %d, %d, %v, %d queued", n, oobn, err, w.c.Queued())
	}
}

// TestRecvZeroLength follows tcp_recvmsg_locked for a zero-length read: on
// devmem data it takes nothing but reports the next fragment in a
// zero-size SCM_DEVMEM_DMABUF whose token holds a reference; without
// MSG_SOCK_DEVMEM it is EFAULT; with no room for a control message
// ETOOSMALL; on ordinary data it returns 0.
func TestRecvZeroLength(t *testing.T) {
	w := newRecvWorld(t, Config{}, true)
	oob := make([]byte, 4*devmemapi.CmsgSpaceDmabuf)
	// Nothing queued: a zero-length read waits like any other (its target
	// is one byte), so MSG_DONTWAIT answers EAGAIN.
	if _, _, err := w.c.RecvMsg(nil, oob, devmemapi.MSG_SOCK_DEVMEM|unix.MSG_DONTWAIT); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("zero-length read with nothing queued: %v; want EAGAIN", err)
	}
	w.send(t, 1000)
	_, _, err := w.recv(t, nil, oob, 0)
	if !devmemerr.Match(err, devmemerr.RecvMsgNoDevmemFlag) {
		t.Fatalf("zero-length without MSG_SOCK_DEVMEM: %v", err)
	}
	_, _, err = w.recv(t, nil, oob[:8], devmemapi.MSG_SOCK_DEVMEM)
	if !devmemerr.Match(err, devmemerr.RecvMsgCmsgSpace) {
		t.Fatalf("zero-length with no control room: %v", err)
	}
	n, fs, err := w.recv(t, nil, oob, devmemapi.MSG_SOCK_DEVMEM)
	if err != nil || n != 0 || len(fs) != 1 || fs[0].Linear || fs[0].FragSize != 0 || fs[0].FragToken == 0 {
		t.Fatalf("zero-length devmem read: %d, %+v, %v; want 0 bytes and one zero-size fragment with a token", n, fs, err)
	}
	if w.c.Queued() != 1000 || w.ip.s.Accounting().Held != 1 {
		t.Fatalf("zero-length read took data (%d queued) or no reference (%+v)", w.c.Queued(), w.ip.s.Accounting())
	}
	if freed, err := w.c.DontNeed([]devmemapi.DmabufToken{{TokenStart: fs[0].FragToken, TokenCount: 1}}); freed != 1 || err != nil {
		t.Fatalf("DONTNEED of the zero-size fragment's token = %d, %v", freed, err)
	}
}

// TestRecvLinearHead: a device that leaves the first bytes of each split
// segment in the header buffer (Config.LinearHead). Each segment's linear
// part comes with SCM_DEVMEM_LINEAR, copied into p, followed in the same
// call by the segment's SCM_DEVMEM_DMABUF fragments; a payload that fits
// the head whole has no fragment and is ordinary data, readable without
// MSG_SOCK_DEVMEM, never mixed with devmem data in one call.
func TestRecvLinearHead(t *testing.T) {
	w := newRecvWorld(t, Config{LinearHead: 100}, false)
	w.send(t, 1000)
	w.send(t, 600)
	w.send(t, 80) // wholly linear: ordinary data
	p := make([]byte, 4096)
	oob := make([]byte, 8*devmemapi.CmsgSpaceDmabuf)
	n, fs, err := w.recv(t, p, oob, devmemapi.MSG_SOCK_DEVMEM)
	if err != nil || n != 1600 || len(fs) != 4 {
		t.Fatalf("recvmsg: %d bytes, %+v, %v; want 1600 bytes in LINEAR, DMABUF, LINEAR, DMABUF", n, fs, err)
	}
	wantKinds := []struct {
		linear bool
		size   uint32
	}{{true, 100}, {false, 900}, {true, 100}, {false, 500}}
	mem := w.ip.s.region.Bytes()
	var got []byte
	pos := 0
	for i, f := range fs {
		if f.Linear != wantKinds[i].linear || f.FragSize != wantKinds[i].size {
			t.Fatalf("control message %d: %+v, want linear %v size %d", i, f, wantKinds[i].linear, wantKinds[i].size)
		}
		if f.Linear {
			got = append(got, p[pos:pos+int(f.FragSize)]...)
			pos += int(f.FragSize)
		} else {
			got = append(got, mem[f.FragOffset:f.FragOffset+uint64(f.FragSize)]...)
		}
	}
	if !bytes.Equal(got, w.all[:1600]) {
		t.Fatal("stream differs")
	}
	n, fs, err = w.recv(t, p, oob, 0)
	if err != nil || n != 80 || len(fs) != 0 || !bytes.Equal(p[:80], w.all[1600:]) {
		t.Fatalf("the wholly linear payload: %d bytes, %d cmsgs, %v; want 80 ordinary bytes", n, len(fs), err)
	}
	if st := w.ip.s.Stats(); st.LinearBytes != 200 || st.PlainBytes != 80 || st.DmabufBytes != 1400 {
		t.Fatalf("stats: linear %d plain %d dmabuf %d", st.LinearBytes, st.PlainBytes, st.DmabufBytes)
	}
	// Under the header-split threshold a payload is ordinary data too.
	w2 := newRecvWorld(t, Config{HDSThresh: 500}, false)
	w2.send(t, 300)
	n, fs, err = w2.recv(t, p, oob, 0)
	if err != nil || n != 300 || len(fs) != 0 {
		t.Fatalf("payload under the threshold, without MSG_SOCK_DEVMEM: %d, %d cmsgs, %v; want 300 ordinary bytes", n, len(fs), err)
	}
	if _, _, err := w2.recv(t, p, oob, unix.MSG_DONTWAIT); !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("nothing left: %v", err)
	}
}

// TestRecvMsgNoCopy: RecvMsgNoCopy takes dmabuf fragments and nothing that
// is copied into p: it stops before ordinary data or a linear part, and
// answers ErrWouldCopy, taking nothing, when such bytes are first; RecvMsg
// then takes them.
func TestRecvMsgNoCopy(t *testing.T) {
	w := newRecvWorld(t, Config{HDSThresh: 100}, false)
	w.send(t, 1000)
	w.send(t, 50) // under the threshold: ordinary data
	p := make([]byte, 4096)
	oob := make([]byte, 8*devmemapi.CmsgSpaceDmabuf)
	n, oobn, err := w.c.RecvMsgNoCopy(p, oob, devmemapi.MSG_SOCK_DEVMEM|unix.MSG_DONTWAIT)
	fs, _ := devmemapi.AppendFrags(nil, oob[:oobn])
	if err != nil || n != 1000 || len(fs) != 1 || fs[0].Linear {
		t.Fatalf("dmabuf then ordinary data: %d bytes, %+v, %v; want the 1000 dmabuf bytes", n, fs, err)
	}
	w.c.DontNeed([]devmemapi.DmabufToken{{TokenStart: fs[0].FragToken, TokenCount: 1}})
	for range 2 { // taking nothing, it says so again
		if n, _, err := w.c.RecvMsgNoCopy(p, oob, devmemapi.MSG_SOCK_DEVMEM|unix.MSG_DONTWAIT); !errors.Is(err, ErrWouldCopy) || n != 0 {
			t.Fatalf("ordinary data first: %d, %v; want ErrWouldCopy", n, err)
		}
	}
	n, oobn, err = w.c.RecvMsg(p, oob, devmemapi.MSG_SOCK_DEVMEM|unix.MSG_DONTWAIT)
	if err != nil || n != 50 || oobn != 0 || !bytes.Equal(p[:50], w.all[1000:]) {
		t.Fatalf("RecvMsg after ErrWouldCopy: %d bytes, %d control bytes, %v; want the 50 ordinary bytes", n, oobn, err)
	}

	// A linear part is copied too: the call stops before it.
	w2 := newRecvWorld(t, Config{LinearHead: 100}, false)
	w2.send(t, 1000)
	if n, _, err := w2.c.RecvMsgNoCopy(p, oob, devmemapi.MSG_SOCK_DEVMEM|unix.MSG_DONTWAIT); !errors.Is(err, ErrWouldCopy) || n != 0 {
		t.Fatalf("linear part first: %d, %v; want ErrWouldCopy", n, err)
	}
	n, oobn, err = w2.c.RecvMsg(p, oob, devmemapi.MSG_SOCK_DEVMEM|unix.MSG_DONTWAIT)
	fs, _ = devmemapi.AppendFrags(nil, oob[:oobn])
	if err != nil || n != 1000 || len(fs) != 2 || !fs[0].Linear {
		t.Fatalf("RecvMsg: %d bytes, %+v, %v; want LINEAR then DMABUF", n, fs, err)
	}
}

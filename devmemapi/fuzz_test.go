package devmemapi

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzAppendFrags: AppendFrags never panics; whatever it returns (also the
// fragments before an error) re-encodes with PutDmabufCmsg into a buffer
// that parses to the same fragments; and it agrees with x/sys's
// ParseSocketControlMessage on every buffer both accept.
func FuzzAppendFrags(f *testing.F) {
	f.Add([]byte{})
	one := make([]byte, CmsgSpaceDmabuf)
	PutDmabufCmsg(one, 0, SCM_DEVMEM_DMABUF, &DmabufCmsg{FragOffset: 4096, FragSize: 1448, FragToken: 1, DmabufID: 2})
	f.Add(one)
	f.Add(append(append([]byte{}, unix.UnixRights(0, 1)...), one...))
	f.Fuzz(func(t *testing.T, oob []byte) {
		frags, err := AppendFrags(nil, oob)
		if err != nil && !errors.Is(err, unix.EINVAL) {
			t.Fatalf("error %v is not EINVAL", err)
		}

		// Re-encode and parse again.
		buf := make([]byte, len(frags)*CmsgSpaceDmabuf)
		off := 0
		for i := range frags {
			typ := int32(SCM_DEVMEM_DMABUF)
			if frags[i].Linear {
				typ = SCM_DEVMEM_LINEAR
			}
			var ok bool
			if off, ok = PutDmabufCmsg(buf, off, typ, &frags[i].DmabufCmsg); !ok {
				t.Fatalf("PutDmabufCmsg refused at %d of %d", off, len(buf))
			}
		}
		again, err2 := AppendFrags(nil, buf)
		if err2 != nil || len(again) != len(frags) || (len(frags) > 0 && !reflect.DeepEqual(again, frags)) {
			t.Fatalf("re-encoded %+v parses to %+v, %v", frags, again, err2)
		}

		// Differential check against x/sys, which casts b[i:] to a
		// *Cmsghdr: give it a fresh, 8-byte aligned copy.
		msgs, xerr := unix.ParseSocketControlMessage(bytes.Clone(oob))
		if xerr == nil && err != nil {
			// x/sys stops at a trailing partial header, AppendFrags
			// rejects it; and x/sys does not look into payloads.
			end, short := 0, false
			for _, m := range msgs {
				end += (int(m.Header.Len) + 7) &^ 7
				if m.Header.Level == unix.SOL_SOCKET && (m.Header.Type == SCM_DEVMEM_DMABUF || m.Header.Type == SCM_DEVMEM_LINEAR) && len(m.Data) < SizeofDmabufCmsg {
					short = true
				}
			}
			if end >= len(oob) && !short {
				t.Fatalf("AppendFrags rejects what x/sys accepts: %v", err)
			}
		}
		if err == nil {
			if xerr != nil {
				t.Fatalf("AppendFrags accepted what x/sys rejects: %v", xerr)
			}
			var want []Frag
			for _, m := range msgs {
				if m.Header.Level != unix.SOL_SOCKET || (m.Header.Type != SCM_DEVMEM_DMABUF && m.Header.Type != SCM_DEVMEM_LINEAR) {
					continue
				}
				var fr Frag
				if err := fr.Unmarshal(m.Data); err != nil {
					t.Fatalf("AppendFrags accepted a %d-byte devmem payload", len(m.Data))
				}
				fr.Linear = m.Header.Type == SCM_DEVMEM_LINEAR
				want = append(want, fr)
			}
			if !reflect.DeepEqual(want, frags) {
				t.Fatalf("x/sys sees %+v, AppendFrags %+v", want, frags)
			}
		}
	})
}

// FuzzParseTokens: ParseTokens accepts exactly the lengths CheckDontNeedLen
// accepts, and AppendTokens gives back the same bytes.
func FuzzParseTokens(f *testing.F) {
	f.Add([]byte{})
	f.Add(AppendTokens(nil, []DmabufToken{{1, 1}}))
	f.Add(AppendTokens(nil, []DmabufToken{{1, 1}, {0xffffffff, 0xffffffff}, {7, 0}}))
	f.Add(make([]byte, 7))
	f.Add(make([]byte, SizeofDmabufToken*(MaxDontNeedTokens+1)))
	f.Fuzz(func(t *testing.T, optval []byte) {
		toks, err := ParseTokens(nil, optval)
		lenErr := CheckDontNeedLen(len(optval))
		if (err == nil) != (lenErr == nil) {
			t.Fatalf("ParseTokens(%d bytes) = %v, CheckDontNeedLen = %v", len(optval), err, lenErr)
		}
		if err != nil {
			if !errors.Is(err, unix.EINVAL) || len(toks) != 0 {
				t.Fatalf("ParseTokens(%d bytes) = %d tokens, %v", len(optval), len(toks), err)
			}
			return
		}
		if len(toks) != len(optval)/SizeofDmabufToken {
			t.Fatalf("%d tokens from %d bytes", len(toks), len(optval))
		}
		if back := AppendTokens(nil, toks); !bytes.Equal(back, optval) {
			t.Fatalf("AppendTokens(ParseTokens(%x)) = %x", optval, back)
		}
	})
}

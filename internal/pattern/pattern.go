// Package pattern generates and checks ncdevmem's validation stream: with
// period N (the -v N flag) the stream repeats the bytes 1, 2, ..., N-1 and
// then '\n'. It is used by the demo, the server's -v check and the tests.
package pattern

import (
	"bytes"
	"fmt"
	"io"
	"sync"
)

// tileSize is the minimum length of the precomputed pattern tile.
const tileSize = 64 << 10

var tiles sync.Map // period → []byte tile of whole periods, plus one extra period

// tile returns at least tileSize+n bytes of the period-n pattern from offset
// 0, so that tile[off%n:] holds tileSize bytes of the stream at off.
func tile(n int) []byte {
	if t, ok := tiles.Load(n); ok {
		return t.([]byte)
	}
	reps := (tileSize+n-1)/n + 1
	t := make([]byte, reps*n)
	for i := range t {
		s := i%n + 1
		if s == n {
			t[i] = '\n'
		} else {
			t[i] = byte(s)
		}
	}
	tiles.Store(n, t)
	return t
}

// Byte returns the pattern byte at stream offset off for period n (n >= 2).
func Byte(n int, off uint64) byte {
	s := int(off%uint64(n)) + 1
	if s == n {
		return '\n'
	}
	return byte(s)
}

// Fill writes the pattern for stream offsets off, off+1, ... into b.
func Fill(n int, off uint64, b []byte) {
	t := tile(n)
	for len(b) > 0 {
		k := copy(b, t[off%uint64(n):][:tileSize])
		b = b[k:]
		off += uint64(k)
	}
}

// Reader is an io.Reader of size bytes of the period-n pattern.
type Reader struct {
	n    int
	off  uint64
	size uint64
}

// NewReader returns a Reader of size pattern bytes.
func NewReader(n int, size uint64) *Reader { return &Reader{n: n, size: size} }

// Read implements io.Reader.
func (r *Reader) Read(p []byte) (int, error) {
	if r.off >= r.size {
		return 0, io.EOF
	}
	p = p[:min(uint64(len(p)), r.size-r.off)]
	Fill(r.n, r.off, p)
	r.off += uint64(len(p))
	return len(p), nil
}

// Validator checks a stream against the pattern as it arrives, in any
// number of pieces.
type Validator struct {
	n      int
	off    uint64
	errors int
	first  error
}

// NewValidator returns a Validator for period n.
func NewValidator(n int) *Validator { return &Validator{n: n} }

// Check validates the next piece of the stream and reports the first
// mismatch in it (nil if it matches).
func (v *Validator) Check(b []byte) error {
	t := tile(v.n)
	for done := 0; done < len(b); {
		k := min(len(b)-done, tileSize)
		if !bytes.Equal(b[done:done+k], t[(v.off+uint64(done))%uint64(v.n):][:k]) {
			start := v.off
			v.off += uint64(done)
			err := v.checkSlow(b[done:])
			v.off = start + uint64(len(b))
			return err
		}
		done += k
	}
	v.off += uint64(len(b))
	return nil
}

// checkSlow compares byte by byte to count and locate mismatches.
func (v *Validator) checkSlow(b []byte) error {
	s := int(v.off % uint64(v.n))
	var err error
	for i, c := range b {
		s++
		want := byte(s)
		if s == v.n {
			want = '\n'
			s = 0
		}
		if c != want {
			v.errors++
			if err == nil {
				err = fmt.Errorf("validation failed at stream offset %d: expected=%d, actual=%d", v.off+uint64(i), want, c)
				if v.first == nil {
					v.first = err
				}
			}
		}
	}
	v.off += uint64(len(b))
	return err
}

// Offset is how many bytes were checked.
func (v *Validator) Offset() uint64 { return v.off }

// Errors is how many bytes mismatched; Err the first mismatch.
func (v *Validator) Errors() int { return v.errors }

// Err returns the first mismatch seen, or nil.
func (v *Validator) Err() error { return v.first }

package pattern

import (
	"bytes"
	"io"
	"testing"
)

func TestPatternMatchesNcdevmem(t *testing.T) {
	// ncdevmem -v 7: 1 2 3 4 5 6 '\n' 1 2 ...
	want := []byte{1, 2, 3, 4, 5, 6, '\n', 1, 2, 3}
	got, _ := io.ReadAll(NewReader(7, 10))
	if !bytes.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if Byte(7, uint64(i)) != want[i] {
			t.Fatalf("Byte(7,%d)=%d want %d", i, Byte(7, uint64(i)), want[i])
		}
	}
}

func TestValidatorPieces(t *testing.T) {
	data, _ := io.ReadAll(NewReader(13, 1000))
	v := NewValidator(13)
	for off := 0; off < len(data); {
		n := min(1+off%37, len(data)-off)
		if err := v.Check(data[off : off+n]); err != nil {
			t.Fatal(err)
		}
		off += n
	}
	data[500] ^= 1
	v = NewValidator(13)
	if err := v.Check(data); err == nil || v.Errors() != 1 {
		t.Fatalf("corruption not found: %v %d", err, v.Errors())
	}
}

func TestFillAcrossTiles(t *testing.T) {
	for _, n := range []int{2, 7, 256, 1000} {
		b := make([]byte, 3*tileSize+17)
		Fill(n, 5, b)
		for i, c := range b {
			if c != Byte(n, uint64(i)+5) {
				t.Fatalf("period %d: byte %d = %d, want %d", n, i, c, Byte(n, uint64(i)+5))
			}
		}
		v := NewValidator(n)
		v.Check(make([]byte, 0))
		w := NewValidator(n)
		Fill(n, 0, b)
		if err := w.Check(b[:tileSize+3]); err != nil {
			t.Fatal(err)
		}
		if err := w.Check(b[tileSize+3:]); err != nil {
			t.Fatal(err)
		}
	}
}

func BenchmarkValidator(b *testing.B) {
	buf := make([]byte, 1<<20)
	Fill(7, 0, buf)
	b.SetBytes(int64(len(buf)))
	v := NewValidator(7)
	for i := 0; i < b.N; i++ {
		v.off = 0
		if err := v.Check(buf); err != nil {
			b.Fatal(err)
		}
	}
}

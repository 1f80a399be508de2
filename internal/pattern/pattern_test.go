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

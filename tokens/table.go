package tokens

import "math/bits"

// MaxToken is the largest token an autorelease-on socket hands out: the
// kernel allocates tokens with xa_alloc(..., xa_limit_31b) in an xarray
// initialised with XA_FLAGS_ALLOC1, so tokens are 1 ... 1<<31-1.
const MaxToken = 1<<31 - 1

// entry is what an autorelease-on token refers to.
type entry struct {
	b     *Binding
	frame uint32
}

// table is the autorelease-on token table of one socket: the emulation of
// sk->sk_devmem_info.frags. Token t lives at ents[t-1]. A bitmap marks the
// used slots and a summary bitmap marks the bitmap words that are full, so
// the lowest free token (what xa_alloc returns) is found by scanning
// len/4096 summary words at most, and usually one. It grows (doubling) only
// when full; in steady state alloc and erase do not allocate.
//
// The zero table is empty and usable. It is not safe for concurrent use;
// Socket guards it with its mutex.
type table struct {
	ents []entry
	used []uint64 // bit i%64 of used[i/64]: slot i holds a token
	full []uint64 // bit w%64 of full[w/64]: used[w] is all ones
	hint int      // every used word below hint is full
	n    int      // slots in use
	// limit is the most tokens the table may hold (MaxToken; tests lower
	// it). 0 means MaxToken.
	limit int
}

func (t *table) maxEntries() int {
	if t.limit > 0 {
		return t.limit
	}
	return MaxToken
}

// alloc stores e under the lowest free token and returns it; ok is false
// when all maxEntries tokens are in use (xa_alloc's -EBUSY).
func (t *table) alloc(e entry) (token uint32, ok bool) {
	w := t.freeWord()
	if w < 0 {
		if !t.grow() {
			return 0, false
		}
		w = t.freeWord()
	}
	bit := bits.TrailingZeros64(^t.used[w])
	i := w<<6 | bit
	if i >= t.maxEntries() {
		// Everything below i is in use: the last word is only partly
		// inside the limit.
		return 0, false
	}
	t.used[w] |= 1 << bit
	if t.used[w] == ^uint64(0) {
		t.full[w>>6] |= 1 << (w & 63)
	}
	t.hint = w
	t.ents[i] = e
	t.n++
	return uint32(i + 1), true
}

// freeWord returns the lowest used-bitmap word at or above hint that has a
// clear bit, or -1 if there is none (the table is full).
func (t *table) freeWord() int {
	first := t.hint >> 6
	for sw := first; sw < len(t.full); sw++ {
		x := ^t.full[sw]
		if sw == first {
			x &= ^uint64(0) << (t.hint & 63)
		}
		if x != 0 {
			w := sw<<6 | bits.TrailingZeros64(x)
			if w < len(t.used) {
				return w
			}
			return -1
		}
	}
	return -1
}

// grow doubles the table, up to maxEntries.
func (t *table) grow() bool {
	maxWords := (t.maxEntries() + 63) >> 6
	nw := len(t.used)
	if nw >= maxWords {
		return false
	}
	nw2 := max(1, 2*nw)
	if nw2 > maxWords {
		nw2 = maxWords
	}
	ents := make([]entry, nw2<<6)
	copy(ents, t.ents)
	used := make([]uint64, nw2)
	copy(used, t.used)
	full := make([]uint64, (nw2+63)>>6)
	copy(full, t.full)
	t.ents, t.used, t.full = ents, used, full
	return true
}

// erase removes token tok and returns what it referred to. ok is
// false if tok is not in the table (unknown, never allocated, or already
// freed). Any uint64 is accepted.
func (t *table) erase(tok uint64) (e entry, ok bool) {
	if tok == 0 || tok > uint64(len(t.ents)) {
		return entry{}, false
	}
	i := int(tok - 1)
	w, bit := i>>6, uint(i&63)
	if t.used[w]&(1<<bit) == 0 {
		return entry{}, false
	}
	e = t.ents[i]
	t.ents[i] = entry{} // drop the *Binding for the GC
	t.used[w] &^= 1 << bit
	t.full[w>>6] &^= 1 << (w & 63)
	if w < t.hint {
		t.hint = w
	}
	t.n--
	return e, true
}

// size returns one past the largest token the table has room for; tokens
// at or above it are certainly unknown.
func (t *table) size() uint64 { return uint64(len(t.ents)) + 1 }

// each calls f for every token in the table, in token order.
func (t *table) each(f func(tok uint32, e entry)) {
	for w, x := range t.used {
		for x != 0 {
			bit := bits.TrailingZeros64(x)
			x &= x - 1
			i := w<<6 | bit
			f(uint32(i+1), t.ents[i])
		}
	}
}

package umem

import (
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// The ring benchmarks measure the userspace half of the per-packet ring
// work on ordinary memory, with the benchmark playing the kernel's half
// (consuming what userspace produces and producing what it consumes) in
// the same batch sizes. Each op is one batch; SetBytes counts descriptors
// as bytes, so MB/s reads as millions of descriptors per second.

var ringBatches = []int{1, 16, 64}

func BenchmarkFillRingProduce(b *testing.B) {
	for _, batch := range ringBatches {
		b.Run("batch="+strconv.Itoa(batch), func(b *testing.B) {
			const n = 2048
			mem, off := fakeRingMem(n, 8)
			f := FillRing{ring: ringView(mem, off, n), descs: addrDescs(mem, off, n)}
			addrs := make([]uint64, batch)
			for i := range addrs {
				addrs[i] = uint64(i) << 12
			}
			b.ReportAllocs()
			b.SetBytes(int64(batch))
			for i := 0; i < b.N; i++ {
				if f.Produce(addrs) != batch {
					b.Fatal("fill ring full")
				}
				f.Publish()
				f.consumer.Store(f.producer.Load()) // the kernel takes them
			}
		})
	}
}

func BenchmarkRXRingConsume(b *testing.B) {
	for _, batch := range ringBatches {
		b.Run("batch="+strconv.Itoa(batch), func(b *testing.B) {
			const n = 2048
			mem, off := fakeRingMem(n, sizeofXDPDesc)
			r := RXRing{ring: ringView(mem, off, n), descs: xdpDescs(mem, off, n)}
			dst := make([]unix.XDPDesc, batch)
			prod := uint32(0)
			b.ReportAllocs()
			b.SetBytes(int64(batch))
			for i := 0; i < b.N; i++ {
				for j := 0; j < batch; j++ { // the kernel fills a batch
					r.descs[(prod+uint32(j))&(n-1)] = unix.XDPDesc{Addr: uint64(j) << 12, Len: 1514}
				}
				prod += uint32(batch)
				r.producer.Store(prod)
				if r.Consume(dst) != batch {
					b.Fatal("short batch")
				}
			}
		})
	}
}

func BenchmarkTXCompletionRings(b *testing.B) {
	for _, batch := range ringBatches {
		b.Run("batch="+strconv.Itoa(batch), func(b *testing.B) {
			const n = 512
			mem, off := fakeRingMem(n, sizeofXDPDesc)
			tx := TXRing{ring: ringView(mem, off, n), descs: xdpDescs(mem, off, n)}
			cmem, coff := fakeRingMem(n, 8)
			comp := CompletionRing{ring: ringView(cmem, coff, n), descs: addrDescs(cmem, coff, n)}
			descs := make([]unix.XDPDesc, batch)
			for i := range descs {
				descs[i] = unix.XDPDesc{Addr: uint64(i) << 12, Len: 66}
			}
			done := make([]uint64, batch)
			cprod := uint32(0)
			b.ReportAllocs()
			b.SetBytes(int64(batch))
			for i := 0; i < b.N; i++ {
				if tx.Produce(descs) != batch {
					b.Fatal("tx ring full")
				}
				tx.Publish()
				// The kernel sends the batch and completes it.
				p := tx.producer.Load()
				for c := tx.consumer.Load(); c != p; c++ {
					comp.descs[cprod&(n-1)] = tx.descs[c&(n-1)].Addr
					cprod++
				}
				tx.consumer.Store(p)
				comp.producer.Store(cprod)
				if comp.Consume(done) != batch {
					b.Fatal("short completion batch")
				}
			}
		})
	}
}

// BenchmarkRegionAllocFree is the free-list half of a refill: take a batch
// of frames for the fill ring, later give the same number back, as the
// receive loop does for frames it did not keep.
func BenchmarkRegionAllocFree(b *testing.B) {
	for _, batch := range ringBatches {
		b.Run("batch="+strconv.Itoa(batch), func(b *testing.B) {
			r, err := NewRegion(RegionConfig{Size: 16 << 20})
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			fs := make([]uint32, batch)
			b.ReportAllocs()
			b.SetBytes(int64(batch))
			for i := 0; i < b.N; i++ {
				if r.Alloc(fs) != batch {
					b.Fatal("region empty")
				}
				r.Free(fs...)
			}
		})
	}
}

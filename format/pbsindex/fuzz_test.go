package pbsindex_test

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/chunkbridge/chunkbridge/format/pbsindex"
)

// The fuzz targets take an index in a compact form, because the 4 KiB of
// zero padding would otherwise make every input 4 KiB and the fuzzer's
// minimization crawl: compact holds the header's used bytes, then the
// entries; expand puts the zero padding in between and, unless pad is 0,
// one pad byte into the padding at padAt. A compact input shorter than the
// used bytes stays as it is: a truncated header.
func expand(compact []byte, used int, padAt uint16, pad byte) []byte {
	if len(compact) < used {
		return compact
	}
	b := make([]byte, 0, len(compact)+pbsindex.HeaderSize-used)
	b = append(b, compact[:used]...)
	b = append(b, make([]byte, pbsindex.HeaderSize-used)...)
	b = append(b, compact[used:]...)
	if pad != 0 {
		b[used+int(padAt)%(pbsindex.HeaderSize-used)] = pad
	}
	return b
}

// compact is the inverse of expand for a file with zero padding.
func compact(b []byte, used int) []byte {
	return append(append([]byte{}, b[:used]...), b[pbsindex.HeaderSize:]...)
}

const (
	fixedUsed   = 56
	dynamicUsed = 40
)

// FuzzParseFixed: ParseFixed never panics; what it accepts, WriteFixed
// writes back byte for byte and ReadFixed reads the same; what it refuses,
// ReadFixed refuses too, and with a *FormatError.
func FuzzParseFixed(f *testing.F) {
	_, good := goldenFixed(f)
	_, dyn := goldenDynamic(f)
	c := compact(good, fixedUsed)
	f.Add(c, uint16(0), byte(0))
	f.Add(c[:fixedUsed], uint16(0), byte(0))
	f.Add(c[:len(c)-1], uint16(0), byte(0))
	f.Add(c, uint16(100), byte(1))
	f.Add(compact(dyn, fixedUsed), uint16(0), byte(0))
	f.Add([]byte("PROXMOX-FIDX"), uint16(0), byte(0))
	f.Fuzz(func(t *testing.T, c []byte, padAt uint16, pad byte) {
		b := expand(c, fixedUsed, padAt, pad)
		idx, err := pbsindex.ParseFixed(b)
		ridx, rerr := pbsindex.ReadFixed(bytes.NewReader(b), 1<<16)
		agreeWithScan(t, b, pbsindex.KindFixed, func() []pbsindex.Digest { return ridx.Digests }, rerr)
		if err != nil {
			var fe *pbsindex.FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("ParseFixed error %T: %v", err, err)
			}
			if rerr == nil {
				t.Fatalf("ParseFixed refused (%v) what ReadFixed accepted", err)
			}
			return
		}
		if rerr != nil {
			if errors.Is(rerr, pbsindex.ErrTooManyEntries) {
				return // the reader's limit, which ParseFixed does not have
			}
			t.Fatalf("ReadFixed refused (%v) what ParseFixed accepted", rerr)
		}
		if !reflect.DeepEqual(idx, ridx) {
			t.Fatal("ParseFixed and ReadFixed disagree")
		}
		var buf bytes.Buffer
		if err := pbsindex.WriteFixed(&buf, idx); err != nil {
			t.Fatalf("WriteFixed of a parsed index: %v", err)
		}
		if !bytes.Equal(buf.Bytes(), b) {
			t.Fatal("WriteFixed does not reproduce the parsed file")
		}
	})
}

// FuzzParseDynamic is FuzzParseFixed for dynamic indexes; here the two
// parsers must also report the same error.
func FuzzParseDynamic(f *testing.F) {
	_, good := goldenDynamic(f)
	_, fixed := goldenFixed(f)
	c := compact(good, dynamicUsed)
	f.Add(c, uint16(0), byte(0))
	f.Add(c[:dynamicUsed], uint16(0), byte(0))
	f.Add(c[:len(c)-1], uint16(0), byte(0))
	f.Add(compact(mutate(good, 4136, 5), dynamicUsed), uint16(0), byte(0))
	f.Add(c, uint16(7), byte(0x80))
	f.Add(compact(fixed, dynamicUsed), uint16(0), byte(0))
	f.Fuzz(func(t *testing.T, c []byte, padAt uint16, pad byte) {
		b := expand(c, dynamicUsed, padAt, pad)
		idx, err := pbsindex.ParseDynamic(b)
		ridx, rerr := pbsindex.ReadDynamic(bytes.NewReader(b), 1<<16)
		agreeWithScan(t, b, pbsindex.KindDynamic, func() []pbsindex.Digest {
			var ds []pbsindex.Digest
			for _, e := range ridx.Entries {
				ds = append(ds, e.Digest)
			}
			return ds
		}, rerr)
		if err != nil {
			var fe *pbsindex.FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("ParseDynamic error %T: %v", err, err)
			}
			if rerr == nil || rerr.Error() != err.Error() {
				t.Fatalf("ParseDynamic: %v; ReadDynamic: %v", err, rerr)
			}
			return
		}
		if rerr != nil {
			if errors.Is(rerr, pbsindex.ErrTooManyEntries) {
				return
			}
			t.Fatalf("ReadDynamic refused (%v) what ParseDynamic accepted", rerr)
		}
		if !reflect.DeepEqual(idx, ridx) {
			t.Fatal("ParseDynamic and ReadDynamic disagree")
		}
		var buf bytes.Buffer
		if err := pbsindex.WriteDynamic(&buf, idx); err != nil {
			t.Fatalf("WriteDynamic of a parsed index: %v", err)
		}
		if !bytes.Equal(buf.Bytes(), b) {
			t.Fatal("WriteDynamic does not reproduce the parsed file")
		}
	})
}

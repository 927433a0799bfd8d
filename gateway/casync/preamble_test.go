package casync_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/chunkbridge/chunkbridge/gateway/casync"
)

func readPreamble(b []byte) (casync.Preamble, []byte, error) {
	rd := bytes.NewReader(b)
	br := bufio.NewReaderSize(rd, 64<<10)
	p, err := casync.ReadPreamble(br)
	rest := make([]byte, br.Buffered(), br.Buffered()+rd.Len())
	br.Read(rest)
	rest = append(rest, b[len(b)-rd.Len():]...)
	return p, rest, err
}

var argv = []string{"casync", "push", "-", "-", "images/os.caibx", "/default.castr"}

func TestPreambleRoundTrip(t *testing.T) {
	var v1, v2 bytes.Buffer
	if err := casync.WritePreamble(&v1, argv); err != nil {
		t.Fatal(err)
	}
	if err := casync.WritePreamble2(&v2, "cbt_secret", argv); err != nil {
		t.Fatal(err)
	}
	want := "\x00CBP\x02\x0a\x00cbt_secret\x06\x06\x00casync\x04\x00push\x01\x00-\x01\x00-\x0f\x00images/os.caibx\x0e\x00/default.castr"
	if v2.String() != want {
		t.Fatalf("version 2 bytes:\n%q\nwant\n%q", v2.String(), want)
	}
	for _, tc := range []struct {
		b       []byte
		version int
		token   string
	}{{v1.Bytes(), 1, ""}, {v2.Bytes(), 2, "cbt_secret"}} {
		p, rest, err := readPreamble(append(bytes.Clone(tc.b), 0x18, 0))
		if err != nil || p.Version != tc.version || p.Token != tc.token || strings.Join(p.Words, " ") != strings.Join(argv, " ") || !bytes.Equal(rest, []byte{0x18, 0}) {
			t.Errorf("version %d: %+v, rest %q, %v", tc.version, p, rest, err)
		}
	}
	// Version 2 without a token is a preamble too (auth off serves it).
	var v2empty bytes.Buffer
	casync.WritePreamble2(&v2empty, "", argv)
	if p, _, err := readPreamble(v2empty.Bytes()); err != nil || p.Version != 2 || p.Token != "" {
		t.Errorf("version 2 without token: %+v, %v", p, err)
	}
}

// Every size field is checked before it is trusted: a length beyond its
// limit fails at once, however many bytes follow.
func TestPreambleLimits(t *testing.T) {
	u16 := func(n int) string { return string(binary.LittleEndian.AppendUint16(nil, uint16(n))) }
	word := func(s string) string { return u16(len(s)) + s }
	head := "\x00CBP\x02"
	for _, tc := range []struct {
		name, in, says string
	}{
		{"token too long", head + u16(casync.MaxPreambleToken+1), "token length 1025: at most 1024"},
		{"token cut short", head + u16(10) + "abc", "unexpected EOF"},
		{"no words", head + u16(0) + "\x00", "0 words"},
		{"too many words", head + u16(0) + "\x42", "66 words"},
		{"word too long", head + u16(0) + "\x01" + u16(4096), "word length 4096: at most 4095"},
		{"empty word", head + u16(0) + "\x01" + u16(0), "length 0"},
		{"word with NUL", head + u16(0) + "\x01" + word("a\x00b"), "NUL"},
		{"fewer words than counted", head + u16(0) + "\x02" + word("casync"), "unexpected EOF"},
		{"cut in the magic", "\x00CB", "unexpected EOF"},
		{"NUL then no magic", "\x00\x18\x00\x00\x00\x00", "neither version 1"},
		{"version 1 word too long", strings.Repeat("a", 5000) + "\x00\x00", "longer than 4096"},
		{"version 1 too many words", strings.Repeat("a\x00", 66) + "\x00", "more than 65 words"},
	} {
		_, _, err := readPreamble([]byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.says)
		}
	}
	_, _, err := readPreamble([]byte("\x00CBP\x03anything"))
	var ve *casync.PreambleVersionError
	if !errors.As(err, &ve) || ve.Version != 3 {
		t.Errorf("version 3: %v, want a PreambleVersionError", err)
	}
	if err := casync.WritePreamble2(new(bytes.Buffer), strings.Repeat("t", casync.MaxPreambleToken+1), argv); err == nil {
		t.Error("WritePreamble2 wrote a token beyond the limit")
	}
}

// FuzzReadPreamble: no input panics or reads beyond its limits; whatever
// parses has its fields within them and is written back byte for byte.
func FuzzReadPreamble(f *testing.F) {
	var v1, v2 bytes.Buffer
	casync.WritePreamble(&v1, argv)
	casync.WritePreamble2(&v2, "cbt_secret", argv)
	f.Add(v1.Bytes())
	f.Add(v2.Bytes())
	f.Add([]byte("\x00CBP\x02\x00\x00\x01\x01\x00x\x18"))
	f.Add([]byte("\x00CBP\x09"))
	f.Add([]byte("\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, rest, err := readPreamble(data)
		if err != nil {
			return
		}
		if len(p.Token) > casync.MaxPreambleToken || len(p.Words) == 0 || len(p.Words) > 65 {
			t.Fatalf("out of limits: %d-byte token, %d words", len(p.Token), len(p.Words))
		}
		var again bytes.Buffer
		switch p.Version {
		case 1:
			if p.Token != "" {
				t.Fatal("version 1 with a token")
			}
			err = casync.WritePreamble(&again, p.Words)
		case 2:
			err = casync.WritePreamble2(&again, p.Token, p.Words)
		default:
			t.Fatalf("version %d", p.Version)
		}
		if err != nil {
			t.Fatalf("%+v does not write back: %v", p, err)
		}
		if consumed := data[:len(data)-len(rest)]; !bytes.Equal(again.Bytes(), consumed) {
			t.Fatalf("read %q, writes back %q", consumed, again.Bytes())
		}
	})
}

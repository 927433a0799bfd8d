package pbsmanifest_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/chunkbridge/chunkbridge/format/pbsmanifest"
)

// goldenSigned is a signed manifest written by hand the way Proxmox writes
// one (serde_json's pretty printer over a sorted map: keys in byte order,
// two-space indentation, no final newline): two files, a note and a key
// fingerprint in unprotected. The signature is an arbitrary 64-hex string:
// nothing here can check it.
const goldenSigned = `{
  "backup-id": "elsa",
  "backup-time": 1593179765,
  "backup-type": "host",
  "files": [
    {
      "crypt-mode": "encrypt",
      "csum": "0101010101010101010101010101010101010101010101010101010101010101",
      "filename": "test1.img.fidx",
      "size": 200
    },
    {
      "crypt-mode": "none",
      "csum": "0202020202020202020202020202020202020202020202020202020202020202",
      "filename": "abc.blob",
      "size": 200
    }
  ],
  "signature": "d7b446fb7db081662081d4b40fedd858a1d6307a5aff4ecff7d5bf4fd35679e9",
  "unprotected": {
    "key-fingerprint": "aa:bb:cc",
    "note": "This is not protected by the signature."
  }
}`

// goldenGoClient is what the Go client (proxmoxbackupclient_go) uploads,
// by its struct's field order and json.Marshal without indentation: an
// empty csum for the catalog, signature null, upload statistics.
const goldenGoClient = `{"backup-id":"desktop","backup-time":1764500000,"backup-type":"host",` +
	`"files":[{"crypt-mode":"none","csum":"","filename":"catalog.pcat1.didx","size":0},` +
	`{"crypt-mode":"none","csum":"3A1B9DFB2D1C2BB7A7A1C67D0D06D0CE25EFD8DC2F53B8FBF5EE90E5E44B3C01","filename":"backup.pxar.didx","size":1048576}],` +
	`"signature":null,"unprotected":{"chunk_upload_stats":{"compressed_size":1,"count":2,"duplicates":0,"size":3}}}`

func TestGoldenSigned(t *testing.T) {
	m, err := pbsmanifest.Parse([]byte(goldenSigned))
	if err != nil {
		t.Fatal(err)
	}
	want := &pbsmanifest.Manifest{
		BackupType: pbsmanifest.TypeHost, BackupID: "elsa", BackupTime: 1593179765,
		Files: []pbsmanifest.File{
			{Filename: "test1.img.fidx", CryptMode: pbsmanifest.CryptEncrypt, Size: 200, Csum: strings.Repeat("01", 32)},
			{Filename: "abc.blob", CryptMode: pbsmanifest.CryptNone, Size: 200, Csum: strings.Repeat("02", 32)},
		},
		Signature: "d7b446fb7db081662081d4b40fedd858a1d6307a5aff4ecff7d5bf4fd35679e9",
	}
	got := *m
	got.Unprotected = nil
	if !reflect.DeepEqual(&got, want) {
		t.Fatalf("Parse =\n%+v\nwant\n%+v", &got, want)
	}
	if !bytes.Contains(m.Unprotected, []byte(`"note": "This is not protected by the signature."`)) {
		t.Errorf("Unprotected = %s", m.Unprotected)
	}
	out, err := m.Marshal()
	if err != nil || string(out) != goldenSigned {
		t.Fatalf("Marshal = %v\n%s", err, out)
	}
	f, ok := m.Lookup("test1.img.fidx")
	if sum, sok := f.Checksum(); !ok || !sok || sum[0] != 1 || f.Kind() != pbsmanifest.FixedIndex {
		t.Errorf("Lookup = %+v, %v; Checksum ok %v; Kind %v", f, ok, sok, f.Kind())
	}
	if _, ok := m.Lookup("nope.blob"); ok {
		t.Error("Lookup found a file that is not there")
	}
}

func TestGoldenGoClient(t *testing.T) {
	m, err := pbsmanifest.Parse([]byte(goldenGoClient))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Files) != 2 || m.Files[0].Csum != "" || m.Signature != "" || m.Files[1].Kind() != pbsmanifest.DynamicIndex {
		t.Fatalf("Parse = %+v", m)
	}
	if _, ok := m.Files[0].Checksum(); ok {
		t.Error("an empty csum has a checksum")
	}
	if sum, ok := m.Files[1].Checksum(); !ok || sum[0] != 0x3a {
		t.Errorf("upper-case csum: %x, %v", sum, ok)
	}
	out, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{`"csum": "",`, `"signature": null,`, `"compressed_size": 1,`} {
		if !bytes.Contains(out, []byte(s)) {
			t.Errorf("Marshal output lacks %s:\n%s", s, out)
		}
	}
}

// TestOldManifest: before Proxmox Backup 0.8 manifests had no crypt-mode
// and no unprotected; both default as Proxmox defaults them.
func TestOldManifest(t *testing.T) {
	m, err := pbsmanifest.Parse([]byte(`{"backup-type":"vm","backup-id":"100","backup-time":1577836800,
		"files":[{"filename":"drive-scsi0.img.fidx","size":34359738368,"csum":"` + strings.Repeat("ab", 32) + `"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if m.Files[0].CryptMode != pbsmanifest.CryptNone || m.Unprotected != nil || m.Signature != "" || m.Files[0].Size != 32<<30 {
		t.Fatalf("Parse = %+v", m)
	}
	out, err := m.Marshal()
	if err != nil || !bytes.Contains(out, []byte(`"unprotected": {}`)) || !bytes.Contains(out, []byte(`"crypt-mode": "none"`)) {
		t.Fatalf("Marshal = %v\n%s", err, out)
	}
}

func TestLenient(t *testing.T) {
	for _, c := range []struct{ name, doc string }{
		{"unknown keys", `{"backup-type":"ct","backup-id":"101","backup-time":1,"files":[{"filename":"a.blob","size":1,"extra":[1,2]}],"verified":true}`},
		{"null csum, unprotected and signature", `{"backup-type":"ct","backup-id":"101","backup-time":1,"files":[{"filename":"a.blob","size":1,"csum":null}],"unprotected":null,"signature":null}`},
		{"missing csum", `{"backup-type":"ct","backup-id":"101","backup-time":1,"files":[{"filename":"a.blob","size":1}]}`},
		{"no files", `{"backup-type":"ct","backup-id":"101","backup-time":1,"files":[]}`},
		{"whitespace and sign-only", " \n{ \"backup-type\" : \"host\" , \"backup-id\":\"_x.y-z\",\"backup-time\":253402300799,\"files\":[ {\"filename\":\"é v.fidx\",\"crypt-mode\":\"sign-only\",\"size\":0} ] , \"unprotected\" : { } }\n"},
		{"escaped name", `{"backup-type":"ct","backup-id":"101","backup-time":1,"files":[{"filename":"a\u00e9\u0062.blob","size":1}]}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, err := pbsmanifest.Parse([]byte(c.doc))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := m.Marshal(); err != nil {
				t.Fatalf("Marshal: %v", err)
			}
		})
	}
}

const valid = `{"backup-type":"host","backup-id":"h1","backup-time":1700000000,"files":[%s]%s}`

func doc(files, extra string) string { return fmt.Sprintf(valid, files, extra) }

func TestParseRejections(t *testing.T) {
	good := `{"filename":"a.didx","size":1}`
	for _, c := range []struct {
		name, doc, field, reason string
	}{
		{"not json", `hello`, "json", "invalid character"},
		{"empty", ``, "json", "unexpected EOF"},
		{"array", `[]`, "manifest", "an array, want a JSON object"},
		{"null", `null`, "manifest", "null, want a JSON object"},
		{"cut", `{"backup-type":"host"`, "json", "unexpected EOF"},
		{"trailing object", doc(good, "") + `{}`, "json", "data after the manifest object"},
		{"trailing junk", doc(good, "") + `x`, "json", "data after the manifest object"},
		{"invalid utf-8", doc("{\"filename\":\"a\xff.blob\",\"size\":1}", ""), "json", "not valid UTF-8"},
		{"duplicate key", doc(good, `,"backup-id":"h2"`), "manifest", `key "backup-id" given twice`},
		{"duplicate file key", doc(`{"filename":"a.didx","size":1,"size":2}`, ""), "files[0]", `key "size" given twice`},
		{"key case", `{"Backup-Type":"host","backup-id":"h1","backup-time":1,"files":[]}`, "backup-type", "missing"},
		{"no id", `{"backup-type":"host","backup-time":1,"files":[]}`, "backup-id", "missing"},
		{"no time", `{"backup-type":"host","backup-id":"h","files":[]}`, "backup-time", "missing"},
		{"no files", `{"backup-type":"host","backup-id":"h","backup-time":1}`, "files", "missing"},
		{"null files", `{"backup-type":"host","backup-id":"h","backup-time":1,"files":null}`, "files", "null, want an array"},
		{"files object", `{"backup-type":"host","backup-id":"h","backup-time":1,"files":{}}`, "files", "an object, want an array"},
		{"file not object", doc(`"a.didx"`, ""), "files[0]", "a string, want a JSON object"},
		{"null type", `{"backup-type":null,"backup-id":"h","backup-time":1,"files":[]}`, "backup-type", "null, want a string"},
		{"bad type", `{"backup-type":"lxc","backup-id":"h","backup-time":1,"files":[]}`, "backup-type", `"lxc", want vm, ct or host`},
		{"empty id", `{"backup-type":"vm","backup-id":"","backup-time":1,"files":[]}`, "backup-id", "0 bytes"},
		{"id with slash", `{"backup-type":"vm","backup-id":"a/b","backup-time":1,"files":[]}`, "backup-id", `byte 1 ('/')`},
		{"id leading dash", `{"backup-type":"vm","backup-id":"-a","backup-time":1,"files":[]}`, "backup-id", "byte 0"},
		{"id too long", `{"backup-type":"vm","backup-id":"` + strings.Repeat("a", 256) + `","backup-time":1,"files":[]}`, "backup-id", "256 bytes"},
		{"time 0", `{"backup-type":"vm","backup-id":"1","backup-time":0,"files":[]}`, "backup-time", "0, want 1 to 253402300799"},
		{"time negative", `{"backup-type":"vm","backup-id":"1","backup-time":-5,"files":[]}`, "backup-time", "-5"},
		{"time year 10000", `{"backup-type":"vm","backup-id":"1","backup-time":253402300800,"files":[]}`, "backup-time", "253402300800"},
		{"time float", `{"backup-type":"vm","backup-id":"1","backup-time":1.5,"files":[]}`, "backup-time", "1.5 is not an integer"},
		{"time exponent", `{"backup-type":"vm","backup-id":"1","backup-time":1e9,"files":[]}`, "backup-time", "not an integer"},
		{"time string", `{"backup-type":"vm","backup-id":"1","backup-time":"1","files":[]}`, "backup-time", "a string, want an integer"},
		{"time overflow", `{"backup-type":"vm","backup-id":"1","backup-time":99999999999999999999,"files":[]}`, "backup-time", "not an integer in the range of int64"},
		{"no filename", doc(`{"size":1}`, ""), "files[0].filename", "missing"},
		{"no size", doc(`{"filename":"a.blob"}`, ""), "files[0].size", "missing"},
		{"negative size", doc(`{"filename":"a.blob","size":-1}`, ""), "files[0].size", "not an integer in the range of uint64"},
		{"null size", doc(`{"filename":"a.blob","size":null}`, ""), "files[0].size", "null, want an integer"},
		{"null crypt-mode", doc(`{"filename":"a.blob","size":1,"crypt-mode":null}`, ""), "files[0].crypt-mode", "null, want a string"},
		{"bad crypt-mode", doc(`{"filename":"a.blob","size":1,"crypt-mode":"aes"}`, ""), "files[0].crypt-mode", `"aes", want none, encrypt or sign-only`},
		{"short csum", doc(`{"filename":"a.blob","size":1,"csum":"abcd"}`, ""), "files[0].csum", `"abcd", want 64 hex digits or empty`},
		{"non-hex csum", doc(`{"filename":"a.blob","size":1,"csum":"`+strings.Repeat("zz", 32)+`"}`, ""), "files[0].csum", "want 64 hex digits"},
		{"numeric csum", doc(`{"filename":"a.blob","size":1,"csum":5}`, ""), "files[0].csum", "a number, want a string"},
		{"slash", doc(`{"filename":"x/a.blob","size":1}`, ""), "files[0].filename", `'/' at byte 1`},
		{"dot dot", doc(`{"filename":"../a.blob","size":1}`, ""), "files[0].filename", "starts with a dot"},
		{"hidden", doc(`{"filename":".a.blob","size":1}`, ""), "files[0].filename", "starts with a dot"},
		{"backslash", doc(`{"filename":"a\\b.blob","size":1}`, ""), "files[0].filename", `'\\' at byte 1`},
		{"control", doc(`{"filename":"a\nb.blob","size":1}`, ""), "files[0].filename", `'\n' at byte 1`},
		{"NUL", doc(`{"filename":"a\u0000.blob","size":1}`, ""), "files[0].filename", `'\x00' at byte 1`},
		{"lone surrogate", doc(`{"filename":"a\ud800.blob","size":1}`, ""), "files[0].filename", `'�' at byte 1`},
		{"bad extension", doc(`{"filename":"a.pxar","size":1}`, ""), "files[0].filename", "does not end in .fidx, .didx or .blob"},
		{"bare extension", doc(`{"filename":".blob","size":1}`, ""), "files[0].filename", "does not end in"},
		{"empty name", doc(`{"filename":"","size":1}`, ""), "files[0].filename", "0 bytes"},
		{"long name", doc(`{"filename":"`+strings.Repeat("a", 251)+`.blob","size":1}`, ""), "files[0].filename", "256 bytes"},
		{"manifest itself", doc(`{"filename":"index.json.blob","size":1}`, ""), "files[0].filename", "the manifest's own name"},
		{"duplicate file", doc(good+`,{"filename":"b.blob","size":1},`+good, ""), "files[2].filename", `"a.didx" is listed twice, first at files[0]`},
		{"unprotected array", doc(good, `,"unprotected":[]`), "unprotected", "[], want a JSON object"},
		{"unprotected string", doc(good, `,"unprotected":"x"`), "unprotected", `"x", want a JSON object`},
		{"signature number", doc(good, `,"signature":1`), "signature", "a number, want a string"},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, err := pbsmanifest.Parse([]byte(c.doc))
			var fe *pbsmanifest.FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("Parse = %+v, %v (%T); want a *FormatError", m, err, err)
			}
			if fe.Field != c.field || !strings.Contains(fe.Reason, c.reason) {
				t.Errorf("%q (field %q); want field %q, reason containing %q", err, fe.Field, c.field, c.reason)
			}
			if errors.Is(err, pbsmanifest.ErrTooLarge) {
				t.Errorf("%v wraps ErrTooLarge", err)
			}
		})
	}
}

func TestLimits(t *testing.T) {
	pad := doc(`{"filename":"a.blob","size":1}`, `,"unprotected":{"notes":"`+strings.Repeat("x", pbsmanifest.MaxSize)+`"}`)
	if _, err := pbsmanifest.Parse([]byte(pad)); !errors.Is(err, pbsmanifest.ErrTooLarge) {
		t.Fatalf("Parse over MaxSize: %v", err)
	}
	var files []string
	for i := range pbsmanifest.MaxFiles + 1 {
		files = append(files, fmt.Sprintf(`{"filename":"f%d.blob","size":1}`, i))
	}
	if _, err := pbsmanifest.Parse([]byte(doc(strings.Join(files, ","), ""))); !errors.Is(err, pbsmanifest.ErrTooLarge) {
		t.Fatalf("Parse with %d files: %v", len(files), err)
	}
	m, err := pbsmanifest.Parse([]byte(doc(strings.Join(files[:pbsmanifest.MaxFiles], ","), "")))
	if err != nil {
		t.Fatalf("Parse with MaxFiles files: %v", err)
	}
	m.Files = append(m.Files, pbsmanifest.File{Filename: "more.blob", CryptMode: pbsmanifest.CryptNone})
	if _, err := m.Marshal(); !errors.Is(err, pbsmanifest.ErrTooLarge) {
		t.Fatalf("Marshal with %d files: %v", len(m.Files), err)
	}
}

func TestMarshalRefuses(t *testing.T) {
	good := func() *pbsmanifest.Manifest {
		return &pbsmanifest.Manifest{BackupType: pbsmanifest.TypeVM, BackupID: "100", BackupTime: 1,
			Files: []pbsmanifest.File{{Filename: "a.fidx", CryptMode: pbsmanifest.CryptNone}}}
	}
	if _, err := good().Marshal(); err != nil {
		t.Fatal(err)
	}
	for name, mutate := range map[string]func(*pbsmanifest.Manifest){
		"type":        func(m *pbsmanifest.Manifest) { m.BackupType = "" },
		"id":          func(m *pbsmanifest.Manifest) { m.BackupID = "a b" },
		"time":        func(m *pbsmanifest.Manifest) { m.BackupTime = 0 },
		"crypt-mode":  func(m *pbsmanifest.Manifest) { m.Files[0].CryptMode = "" },
		"csum":        func(m *pbsmanifest.Manifest) { m.Files[0].Csum = "x" },
		"name":        func(m *pbsmanifest.Manifest) { m.Files[0].Filename = "a" },
		"duplicate":   func(m *pbsmanifest.Manifest) { m.Files = append(m.Files, m.Files[0]) },
		"unprotected": func(m *pbsmanifest.Manifest) { m.Unprotected = json.RawMessage(`{"a":`) },
	} {
		m := good()
		mutate(m)
		var fe *pbsmanifest.FormatError
		if out, err := m.Marshal(); !errors.As(err, &fe) {
			t.Errorf("%s: Marshal = %s, %v", name, out, err)
		}
	}
}

func TestKindOf(t *testing.T) {
	for name, want := range map[string]pbsmanifest.ArchiveKind{
		"a.fidx": pbsmanifest.FixedIndex, "a.didx": pbsmanifest.DynamicIndex, "a.blob": pbsmanifest.Blob,
		"a.pxar": 0, "a.fidx.tmp": 0, "": 0,
	} {
		if got := pbsmanifest.KindOf(name); got != want {
			t.Errorf("KindOf(%q) = %d, want %d", name, got, want)
		}
	}
}

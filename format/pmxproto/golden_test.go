package pmxproto_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"reflect"
	"strings"
	"testing"

	"github.com/chunkbridge/chunkbridge/format/pmxproto"
)

// helloDigest is sha256("hello"), the digest in the reference's examples.
const helloDigest = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"

func digestOf(s string) pmxproto.Digest { return sha256.Sum256([]byte(s)) }

// unhex decodes hex with spaces and with "quoted" ASCII runs, so that the
// examples read as the reference writes them.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	var out []byte
	for len(s) > 0 {
		switch {
		case s[0] == ' ' || s[0] == '\n' || s[0] == '\t':
			s = s[1:]
		case s[0] == '"':
			end := strings.IndexByte(s[1:], '"')
			if end < 0 {
				t.Fatalf("unterminated quote in %q", s)
			}
			out = append(out, s[1:1+end]...)
			s = s[end+2:]
		default:
			if len(s) < 2 {
				t.Fatalf("odd hex digit at %q", s)
			}
			b, err := hex.DecodeString(s[:2])
			if err != nil {
				t.Fatalf("bad hex %q: %v", s[:2], err)
			}
			out = append(out, b...)
			s = s[2:]
		}
	}
	return out
}

type golden struct {
	name   string
	source string // where the bytes come from
	packet pmxproto.Packet
	hex    string
}

func goldens() []golden {
	d := digestOf("hello")
	return []golden{
		{"Hello", "reference §3.1", &pmxproto.Hello{ID: 0, Version: 1},
			`00 00 12 00 00 00 50 4d 58 42 43 4b 55 50 01 00 00 00`},
		{"Ok id 5", "reference §3.2", &pmxproto.Ok{ID: 5},
			`05 01 06 00 00 00`},
		{"Error Busy id 3", "reference §3.3", &pmxproto.Error{ID: 3, Code: pmxproto.ErrorBusy},
			`03 02 07 00 00 00 01`},
		{"GetHashList id 1 a.fidx", "reference §3.4", &pmxproto.GetHashList{ID: 1, Name: "a.fidx"},
			`01 03 0e 00 00 00 06 00 61 2e 66 69 64 78`},
		{"UploadChunk id 7 hello", "reference §3.7", &pmxproto.UploadChunk{ID: 7, Digest: d, Data: []byte("hello")},
			`07 07 2b 00 00 00 ` + helloDigest + ` 68 65 6c 6c 6f`},
		{"CreateBackup id 2", "reference §3.8",
			&pmxproto.CreateBackup{ID: 2, BackupType: pmxproto.BackupHost, Timestamp: 1551863212,
				Flags: pmxproto.FlagExcl | pmxproto.FlagDynamicChunks, ChunkSize: 4 << 20, FileSize: 0,
				BackupID: "backup1", Name: "foo.pxar"},
			`02 08 2d 00 00 00 02 07 ac 8d 7f 5c 00 00 00 00 05 08 00 00 40 00 00 00 00 00 00 00 00 00 "backup1" "foo.pxar"`},
		{"BackupDataFixed stream 2 index 3", "reference §3.10",
			&pmxproto.BackupDataFixed{ID: 2, Entries: []pmxproto.FixedEntry{{Index: 3, Digest: d}}},
			`02 0a 2e 00 00 00 03 00 00 00 00 00 00 00 ` + helloDigest},
		{"BackupDataDynamic stream 2 offset 0", "reference §3.11",
			&pmxproto.BackupDataDynamic{ID: 2, Entries: []pmxproto.DynamicEntry{{Offset: 0, Digest: d}}},
			`02 0b 2e 00 00 00 00 00 00 00 00 00 00 00 ` + helloDigest},
		{"BackupFinished stream 2", "reference §3.12", &pmxproto.BackupFinished{ID: 2},
			`02 0c 06 00 00 00`},

		// Layouts of reference §3 and DESIGN §7 without a printed example.
		{"HashListPart end of list", "reference §3.5 (empty body ends the list)", &pmxproto.HashListPart{ID: 1, Digests: []pmxproto.Digest{}},
			`01 04 06 00 00 00`},
		{"HashListPart two digests", "reference §3.5", &pmxproto.HashListPart{ID: 1, Digests: []pmxproto.Digest{d, digestOf("")}},
			`01 04 46 00 00 00 ` + helloDigest + ` e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855`},
		{"DownloadChunks one digest", "DESIGN §7.10", &pmxproto.DownloadChunks{ID: 4, Digests: []pmxproto.Digest{d}},
			`04 05 26 00 00 00 ` + helloDigest},
		{"Chunk reply", "DESIGN §7.10 (offset = position in the request)", &pmxproto.Chunk{ID: 4, Offset: 1, Digest: d, Data: []byte("hello")},
			`04 06 33 00 00 00 01 00 00 00 00 00 00 00 ` + helloDigest + ` 68 65 6c 6c 6f`},
		{"BackupCreated path", "reference §3.9, DESIGN §7.5 path", &pmxproto.BackupCreated{ID: 2, Path: "host/backup1/2019-03-06T09:06:52Z/foo.pxar.didx"},
			`02 09 37 00 00 00 2f 00 "host/backup1/2019-03-06T09:06:52Z/foo.pxar.didx"`},
		{"Error Generic with reason", "DESIGN §7.4", &pmxproto.Error{ID: 9, Code: pmxproto.ErrorGeneric, Reason: "no such chunk"},
			`09 02 14 00 00 00 00 "no such chunk"`},
		{"Fixed CreateBackup", "reference §5.2", &pmxproto.CreateBackup{ID: 3, BackupType: pmxproto.BackupVM, Timestamp: 1551863212,
			Flags: pmxproto.FlagExcl, ChunkSize: 4 << 20, FileSize: 10 << 20, BackupID: "100", Name: "disk0.img"},
			`03 08 2a 00 00 00 00 03 ac 8d 7f 5c 00 00 00 00 01 09 00 00 40 00 00 00 a0 00 00 00 00 00 "100" "disk0.img"`},
	}
}

func TestGoldenEncode(t *testing.T) {
	for _, g := range goldens() {
		t.Run(g.name, func(t *testing.T) {
			want := unhex(t, g.hex)
			if err := g.packet.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			got := g.packet.Encode(nil)
			if !bytes.Equal(got, want) {
				t.Fatalf("%s: Encode =\n%x\nwant\n%x", g.source, got, want)
			}
			// Appending keeps what dst held.
			prefix := []byte{0xaa, 0xbb}
			got = g.packet.Encode(prefix)
			if !bytes.Equal(got[:2], prefix) || !bytes.Equal(got[2:], want) {
				t.Fatalf("Encode(prefix) = %x", got)
			}
		})
	}
}

func TestGoldenDecode(t *testing.T) {
	for _, g := range goldens() {
		t.Run(g.name, func(t *testing.T) {
			r := pmxproto.NewReader(bytes.NewReader(unhex(t, g.hex)))
			p, err := r.ReadPacket()
			if err != nil {
				t.Fatalf("ReadPacket: %v", err)
			}
			if !reflect.DeepEqual(p, g.packet) {
				t.Fatalf("decoded %#v, want %#v", p, g.packet)
			}
			if p.PacketType() != g.packet.PacketType() || p.PacketID() != g.packet.PacketID() {
				t.Fatalf("type/id %v/%d, want %v/%d", p.PacketType(), p.PacketID(), g.packet.PacketType(), g.packet.PacketID())
			}
			if _, err := r.ReadPacket(); err == nil || err.Error() != "EOF" {
				t.Fatalf("after the only packet: %v, want EOF", err)
			}
		})
	}
}

// TestGoldenStream reads all examples back to back from one stream, as a
// connection would deliver them.
func TestGoldenStream(t *testing.T) {
	var stream []byte
	gs := goldens()
	for _, g := range gs {
		stream = append(stream, unhex(t, g.hex)...)
	}
	r := pmxproto.NewReader(bytes.NewReader(stream))
	for _, g := range gs {
		p, err := r.ReadPacket()
		if err != nil {
			t.Fatalf("%s: %v", g.name, err)
		}
		if !reflect.DeepEqual(p, g.packet) {
			t.Fatalf("%s: decoded %#v", g.name, p)
		}
	}
	if r.Offset() != int64(len(stream)) {
		t.Fatalf("Offset %d, want %d", r.Offset(), len(stream))
	}
}

func TestConstants(t *testing.T) {
	types := []struct {
		t    pmxproto.Type
		v    uint8
		name string
	}{
		{pmxproto.TypeHello, 0, "Hello"}, {pmxproto.TypeOk, 1, "Ok"}, {pmxproto.TypeError, 2, "Error"},
		{pmxproto.TypeGetHashList, 3, "GetHashList"}, {pmxproto.TypeHashListPart, 4, "HashListPart"},
		{pmxproto.TypeDownloadChunks, 5, "DownloadChunks"}, {pmxproto.TypeChunk, 6, "Chunk"},
		{pmxproto.TypeUploadChunk, 7, "UploadChunk"}, {pmxproto.TypeCreateBackup, 8, "CreateBackup"},
		{pmxproto.TypeBackupCreated, 9, "BackupCreated"}, {pmxproto.TypeBackupDataFixed, 10, "BackupDataFixed"},
		{pmxproto.TypeBackupDataDynamic, 11, "BackupDataDynamic"}, {pmxproto.TypeBackupFinished, 12, "BackupFinished"},
	}
	for _, c := range types {
		if uint8(c.t) != c.v || c.t.String() != c.name {
			t.Errorf("%s = %d (%q), want %d", c.name, uint8(c.t), c.t.String(), c.v)
		}
	}
	if s := pmxproto.Type(13).String(); s != "Type(13)" {
		t.Errorf("Type(13).String() = %q", s)
	}
	if pmxproto.FlagExcl != 1 || pmxproto.FlagRaw != 2 || pmxproto.FlagDynamicChunks != 4 {
		t.Error("backup flags differ from the reference §2.3")
	}
	if s := (pmxproto.FlagExcl | pmxproto.FlagDynamicChunks | 0x80).String(); s != "EXCL|DYNAMIC_CHUNKS|0x80" {
		t.Errorf("Flags.String = %q", s)
	}
	if pmxproto.BackupVM != 0 || pmxproto.BackupCT != 1 || pmxproto.BackupHost != 2 {
		t.Error("backup types differ from the reference §2.3")
	}
	for _, name := range []string{"vm", "ct", "host"} {
		bt, err := pmxproto.ParseBackupType(name)
		if err != nil || bt.String() != name {
			t.Errorf("ParseBackupType(%q) = %v, %v", name, bt, err)
		}
	}
	if _, err := pmxproto.ParseBackupType("lxc"); err == nil {
		t.Error("ParseBackupType(lxc) succeeded")
	}
	if pmxproto.ErrorGeneric != 0 || pmxproto.ErrorBusy != 1 || pmxproto.ErrorBusy.String() != "Busy" || pmxproto.ErrorID(7).String() != "ErrorID(7)" {
		t.Error("error ids differ from the reference §2.3")
	}
	if pmxproto.MaxPacketSize != 16777216 || pmxproto.MaxUploadData != 16777178 || pmxproto.MaxDigestsPerPacket != 524287 {
		t.Errorf("limits: packet %d, upload data %d, digests %d", pmxproto.MaxPacketSize, pmxproto.MaxUploadData, pmxproto.MaxDigestsPerPacket)
	}
	if got := digestOf("hello").String(); got != helloDigest {
		t.Errorf("Digest.String = %s", got)
	}
}

func TestCreateBackupPath(t *testing.T) {
	c := &pmxproto.CreateBackup{BackupType: pmxproto.BackupHost, Timestamp: 1551863212, Flags: pmxproto.FlagDynamicChunks,
		BackupID: "backup1", Name: "foo.pxar"}
	if got, want := c.Path(), "host/backup1/2019-03-06T09:06:52Z/foo.pxar.didx"; got != want {
		t.Errorf("dynamic Path = %q, want %q", got, want)
	}
	c.Flags, c.ChunkSize, c.BackupType = pmxproto.FlagExcl, 4<<20, pmxproto.BackupVM
	if got, want := c.Path(), "vm/backup1/2019-03-06T09:06:52Z/foo.pxar.fidx"; got != want {
		t.Errorf("fixed Path = %q, want %q", got, want)
	}
	if !c.Exclusive() || c.Dynamic() {
		t.Error("Exclusive/Dynamic wrong for EXCL")
	}
}

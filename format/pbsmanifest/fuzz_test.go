package pbsmanifest_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"testing"

	"github.com/chunkbridge/chunkbridge/format/pbsmanifest"
)

// FuzzManifest: Parse never panics and fails only with a *FormatError;
// what it accepts, Marshal writes, Parse reads back as the same manifest,
// and Marshal then writes again byte for byte.
func FuzzManifest(f *testing.F) {
	for _, s := range []string{
		goldenSigned, goldenGoClient,
		doc(`{"filename":"a.didx","size":1}`, ""),
		doc(`{"filename":"a.didx","size":1,"crypt-mode":"sign-only","csum":null}`, `,"unprotected":{"n":[1,{"x":null}]},"signature":null`),
		doc(`{"filename":"a.didx","size":1,"size":2}`, ""),
		`{"backup-type":"vm","backup-id":"1","backup-time":1,"files":[],"extra":{"files":[]}}`,
		`[]`, `{}`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := pbsmanifest.Parse(b)
		if err != nil {
			var fe *pbsmanifest.FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("Parse error %T: %v", err, err)
			}
			if m != nil {
				t.Fatal("Parse returned a manifest with its error")
			}
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("Parse accepted what Validate refuses: %v", err)
		}
		out, err := m.Marshal()
		if err != nil {
			t.Fatalf("Marshal of a parsed manifest: %v", err)
		}
		back, err := pbsmanifest.Parse(out)
		if err != nil {
			t.Fatalf("Parse of Marshal's output: %v\n%s", err, out)
		}
		if !sameManifest(m, back) {
			t.Fatalf("round trip changed the manifest:\n%+v\n%+v", m, back)
		}
		again, err := back.Marshal()
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("Marshal is not stable: %v\n%s\n%s", err, out, again)
		}
	})
}

// sameManifest compares two manifests, Unprotected as JSON (whitespace and
// the nil/{} default aside).
func sameManifest(a, b *pbsmanifest.Manifest) bool {
	ua, ub := compact(a.Unprotected), compact(b.Unprotected)
	ca, cb := *a, *b
	ca.Unprotected, cb.Unprotected = nil, nil
	return ua == ub && reflect.DeepEqual(ca, cb)
}

func compact(raw json.RawMessage) string {
	if raw == nil {
		return "{}"
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return "invalid: " + err.Error()
	}
	return buf.String()
}

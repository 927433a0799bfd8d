package pbsmanifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// Parse reads a manifest of at most MaxSize bytes and checks it with
// Validate. Keys are matched exactly (encoding/json alone would match them
// case-insensitively) and a key given twice is refused (encoding/json alone
// would keep the last), so that chunkbridge reads the same manifest a
// Proxmox client does.
func Parse(b []byte) (*Manifest, error) {
	if len(b) > MaxSize {
		return nil, &FormatError{Field: "json", Reason: fmt.Sprintf("%d bytes, more than %d", len(b), MaxSize), Err: ErrTooLarge}
	}
	if !utf8.Valid(b) {
		return nil, invalid("json", "not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	m := &Manifest{}
	var have struct{ typ, id, time, files bool }
	err := object(dec, "manifest", func(key string, raw json.RawMessage) error {
		var err error
		switch key {
		case "backup-type":
			var s string
			s, err = str(key, raw)
			m.BackupType, have.typ = BackupType(s), true
		case "backup-id":
			m.BackupID, err = str(key, raw)
			have.id = true
		case "backup-time":
			m.BackupTime, err = integer[int64](key, raw)
			have.time = true
		case "files":
			m.Files, err = files(raw)
			have.files = true
		case "unprotected":
			if !isNull(raw) {
				m.Unprotected = raw
			}
		case "signature":
			if !isNull(raw) {
				m.Signature, err = str(key, raw)
			}
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, invalid("json", "data after the manifest object")
	}
	for _, r := range []struct {
		ok   bool
		name string
	}{{have.typ, "backup-type"}, {have.id, "backup-id"}, {have.time, "backup-time"}, {have.files, "files"}} {
		if !r.ok {
			return nil, invalid(r.name, "missing")
		}
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return m, nil
}

func files(raw json.RawMessage) ([]File, error) {
	if isNull(raw) || raw[0] != '[' {
		return nil, invalid("files", "%s, want an array", jsonKind(raw))
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	dec.Token() // '[', checked above
	list := []File{}
	for i := 0; dec.More(); i++ {
		if i == MaxFiles {
			return nil, &FormatError{Field: "files", Reason: fmt.Sprintf("more than %d files", MaxFiles), Err: ErrTooLarge}
		}
		prefix := fmt.Sprintf("files[%d]", i)
		f := File{CryptMode: CryptNone}
		var haveName, haveSize bool
		err := object(dec, prefix, func(key string, raw json.RawMessage) error {
			var err error
			switch key {
			case "filename":
				f.Filename, err = str(prefix+".filename", raw)
				haveName = true
			case "crypt-mode":
				var s string
				s, err = str(prefix+".crypt-mode", raw)
				f.CryptMode = CryptMode(s)
			case "size":
				f.Size, err = integer[uint64](prefix+".size", raw)
				haveSize = true
			case "csum":
				if !isNull(raw) {
					f.Csum, err = str(prefix+".csum", raw)
				}
			}
			return err
		})
		if err != nil {
			return nil, err
		}
		if !haveName {
			return nil, invalid(prefix+".filename", "missing")
		}
		if !haveSize {
			return nil, invalid(prefix+".size", "missing")
		}
		list = append(list, f)
	}
	return list, nil
}

// object reads one JSON object from dec, calling fn for each member in
// order with the value's raw bytes, and refuses a key given twice.
func object(dec *json.Decoder, what string, fn func(key string, raw json.RawMessage) error) error {
	t, err := dec.Token()
	if err != nil {
		return syntaxErr(what, err)
	}
	if d, ok := t.(json.Delim); !ok || d != '{' {
		return invalid(what, "%s, want a JSON object", tokenKind(t))
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return syntaxErr(what, err)
		}
		key := t.(string) // the decoder allows only a string here
		if seen[key] {
			return invalid(what, "key %q given twice", truncate(key))
		}
		seen[key] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return syntaxErr(what, err)
		}
		if err := fn(key, raw); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil { // '}'
		return syntaxErr(what, err)
	}
	return nil
}

func syntaxErr(what string, err error) *FormatError {
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return invalid("json", "in %s: %v", what, err)
}

// str decodes a JSON string; json.Unmarshal alone would take null as "".
func str(field string, raw json.RawMessage) (string, error) {
	if len(raw) == 0 || raw[0] != '"' {
		return "", invalid(field, "%s, want a string", jsonKind(raw))
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", invalid(field, "%v", err)
	}
	return s, nil
}

// integer decodes a JSON integer into T; json.Unmarshal alone would take
// null as 0.
func integer[T int64 | uint64](field string, raw json.RawMessage) (T, error) {
	var v T
	if len(raw) == 0 || (raw[0] != '-' && (raw[0] < '0' || raw[0] > '9')) {
		return 0, invalid(field, "%s, want an integer", jsonKind(raw))
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return 0, invalid(field, "%s is not an integer in the range of %T", truncate(string(raw)), v)
	}
	return v, nil
}

func isNull(raw json.RawMessage) bool { return string(raw) == "null" }

// jsonKind names the type of a raw JSON value for error messages.
func jsonKind(raw json.RawMessage) string {
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

func tokenKind(t json.Token) string {
	switch v := t.(type) {
	case json.Delim:
		if v == '[' {
			return "an array"
		}
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%v", t)
}

// Marshal returns the manifest as Proxmox writes it: keys sorted, two-space
// indentation, signature null when unsigned. It refuses a manifest that
// fails Validate.
//
// A manifest received from a client should be stored as received: Marshal
// drops unknown keys and respells numbers and whitespace, which changes
// nothing a Proxmox client reads but is not byte for byte the same.
func (m *Manifest) Marshal() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	type file struct {
		CryptMode CryptMode `json:"crypt-mode"`
		Csum      string    `json:"csum"`
		Filename  string    `json:"filename"`
		Size      uint64    `json:"size"`
	}
	out := struct {
		BackupID    string          `json:"backup-id"`
		BackupTime  int64           `json:"backup-time"`
		BackupType  BackupType      `json:"backup-type"`
		Files       []file          `json:"files"`
		Signature   *string         `json:"signature"`
		Unprotected json.RawMessage `json:"unprotected"`
	}{
		BackupID:    m.BackupID,
		BackupTime:  m.BackupTime,
		BackupType:  m.BackupType,
		Files:       make([]file, len(m.Files)),
		Unprotected: m.Unprotected,
	}
	for i, f := range m.Files {
		out.Files[i] = file{CryptMode: f.CryptMode, Csum: f.Csum, Filename: f.Filename, Size: f.Size}
	}
	if m.Signature != "" {
		out.Signature = &m.Signature
	}
	if out.Unprotected == nil {
		out.Unprotected = json.RawMessage("{}")
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // file names and notes stay readable, as Proxmox writes them
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		return nil, fmt.Errorf("pbsmanifest: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

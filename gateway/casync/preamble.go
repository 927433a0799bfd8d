package casync

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// The TCP gateway's preamble carries the remote argv that ssh would have
// passed to casync on the remote host, and, from version 2 on, the
// client's token. caprotocol follows immediately. A preamble cannot be
// mistaken for caprotocol, whose first frame starts with 0x18 0x00.
// docs/formats.md §3 describes both versions byte by byte.
//
// Version 1 is the words of the remote command (program name first, e.g.
// "casync", then casync's options and the verb and paths), each followed
// by a NUL byte, and then one more NUL (an empty word) to end the list:
//
//	casync\0pull\0-\0-\0/images/os.caibx\0/default.castr\0\0<caprotocol…>
//
// Version 2 starts with a NUL (so no version 1 preamble reads as one: its
// first word is never empty), then "CBP" and the version byte; then the
// token and the words, each with a little-endian u16 length before it:
//
//	00 'C' 'B' 'P' 02 | u16 T | T bytes token | u8 N | N × (u16 L | L bytes word)
const (
	maxPreambleWord  = 4096 // counting version 1's NUL; version 2's words are 1 byte shorter at most
	maxPreambleWords = maxArgs + 1
	// MaxPreambleToken bounds version 2's token.
	MaxPreambleToken = 1024
)

// preambleMagic starts a version 2 (and any later) preamble; the version
// byte follows.
const preambleMagic = "\x00CBP"

// Preamble is what a client sends before caprotocol.
type Preamble struct {
	// Version is 1 (words only) or 2 (a token and words).
	Version int
	// Token is version 2's credential; "" when the client sent none.
	Token string
	// Words is the remote argv, the program name first.
	Words []string
}

// PreambleVersionError is a preamble of a version this gateway does not
// read. The client speaks caprotocol next, so it can be told.
type PreambleVersionError struct{ Version byte }

func (e *PreambleVersionError) Error() string {
	return fmt.Sprintf("preamble version %d: this gateway reads versions 1 and 2", e.Version)
}

func checkWord(word string) error {
	if word == "" || strings.IndexByte(word, 0) >= 0 || len(word) >= maxPreambleWord {
		return fmt.Errorf("preamble word %.40q: empty, containing NUL, or longer than %d bytes", word, maxPreambleWord-1)
	}
	return nil
}

// WritePreamble writes words as a version 1 preamble (no token).
func WritePreamble(w io.Writer, words []string) error {
	var b strings.Builder
	for _, word := range words {
		if err := checkWord(word); err != nil {
			return err
		}
		b.WriteString(word)
		b.WriteByte(0)
	}
	b.WriteByte(0)
	_, err := io.WriteString(w, b.String())
	return err
}

// WritePreamble2 writes a version 2 preamble: token and words.
func WritePreamble2(w io.Writer, token string, words []string) error {
	if len(token) > MaxPreambleToken {
		return fmt.Errorf("token of %d bytes: at most %d", len(token), MaxPreambleToken)
	}
	if len(words) == 0 || len(words) > maxPreambleWords {
		return fmt.Errorf("preamble of %d words: want 1 to %d", len(words), maxPreambleWords)
	}
	b := []byte(preambleMagic + "\x02")
	b = binary.LittleEndian.AppendUint16(b, uint16(len(token)))
	b = append(b, token...)
	b = append(b, byte(len(words)))
	for _, word := range words {
		if err := checkWord(word); err != nil {
			return err
		}
		b = binary.LittleEndian.AppendUint16(b, uint16(len(word)))
		b = append(b, word...)
	}
	_, err := w.Write(b)
	return err
}

// ReadPreamble reads a preamble of either version from r, byte-limited so
// a client cannot make the gateway buffer without bound: every size field
// is checked against its limit before anything is read or allocated for
// it. r should be buffered; what follows the preamble stays in it.
func ReadPreamble(r *bufio.Reader) (Preamble, error) {
	first, err := r.Peek(1)
	if err != nil {
		return Preamble{}, fmt.Errorf("preamble: %w", err)
	}
	if first[0] != 0 {
		words, err := readWords1(r)
		return Preamble{Version: 1, Words: words}, err
	}
	var hdr [len(preambleMagic) + 1]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Preamble{}, fmt.Errorf("preamble: %w", noEOF(err))
	}
	if string(hdr[:len(preambleMagic)]) != preambleMagic {
		// A lone NUL was version 1's empty list; anything else is no
		// preamble this gateway knows.
		return Preamble{}, fmt.Errorf("preamble starts with %q: neither version 1 (a word) nor version 2 (%q)", hdr[:], preambleMagic)
	}
	if v := hdr[len(preambleMagic)]; v != 2 {
		return Preamble{}, &PreambleVersionError{Version: v}
	}
	p := Preamble{Version: 2}
	n, err := readU16(r, "token length", MaxPreambleToken)
	if err != nil {
		return Preamble{}, err
	}
	tok, err := readN(r, n, "token")
	if err != nil {
		return Preamble{}, err
	}
	p.Token = string(tok)
	count, err := r.ReadByte()
	if err != nil {
		return Preamble{}, fmt.Errorf("preamble word count: %w", noEOF(err))
	}
	if count == 0 || int(count) > maxPreambleWords {
		return Preamble{}, fmt.Errorf("preamble has %d words: want 1 to %d", count, maxPreambleWords)
	}
	p.Words = make([]string, 0, count)
	for range count {
		n, err := readU16(r, "word length", maxPreambleWord-1)
		if err != nil {
			return Preamble{}, err
		}
		if n == 0 {
			return Preamble{}, errors.New("preamble word of length 0")
		}
		word, err := readN(r, n, "word")
		if err != nil {
			return Preamble{}, err
		}
		if err := checkWord(string(word)); err != nil {
			return Preamble{}, err
		}
		p.Words = append(p.Words, string(word))
	}
	return p, nil
}

// readU16 reads a little-endian u16 size field and checks it against max.
func readU16(r *bufio.Reader, what string, max int) (int, error) {
	var b [2]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, fmt.Errorf("preamble %s: %w", what, noEOF(err))
	}
	n := int(binary.LittleEndian.Uint16(b[:]))
	if n > max {
		return 0, fmt.Errorf("preamble %s %d: at most %d", what, n, max)
	}
	return n, nil
}

// readN reads n bytes; n is already bounded by its size field's limit.
func readN(r *bufio.Reader, n int, what string) ([]byte, error) {
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("preamble %s: %w", what, noEOF(err))
	}
	return b, nil
}

// noEOF: a preamble cut short is unexpected whatever byte it stops at.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// readWords1 reads version 1's NUL-terminated words.
func readWords1(r *bufio.Reader) ([]string, error) {
	var words []string
	for {
		word, err := r.ReadSlice(0)
		if errors.Is(err, bufio.ErrBufferFull) || len(word) > maxPreambleWord {
			return nil, fmt.Errorf("preamble word longer than %d bytes", maxPreambleWord)
		}
		if err != nil {
			return nil, fmt.Errorf("preamble: %w", err)
		}
		if len(word) == 1 {
			return words, nil
		}
		if len(words) == maxPreambleWords {
			return nil, fmt.Errorf("preamble has more than %d words", maxPreambleWords)
		}
		words = append(words, string(word[:len(word)-1]))
	}
}

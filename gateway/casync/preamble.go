package casync

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"
)

// The TCP gateway's preamble carries the remote argv that ssh would have
// passed to casync on the remote host: the words of the remote command
// (program name first, e.g. "casync", then casync's options and the verb
// and paths), each followed by a NUL byte, and then one more NUL (an empty
// word) to end the list. caprotocol follows immediately. A preamble cannot
// be mistaken for caprotocol, whose first frame starts with 0x18 0x00.
//
//	casync\0pull\0-\0-\0/images/os.caibx\0/default.castr\0\0<caprotocol…>
const (
	maxPreambleWord  = 4096
	maxPreambleWords = maxArgs + 1
)

// WritePreamble writes words as a preamble.
func WritePreamble(w io.Writer, words []string) error {
	var b strings.Builder
	for _, word := range words {
		if word == "" || strings.IndexByte(word, 0) >= 0 {
			return fmt.Errorf("preamble word %q: empty or containing NUL", word)
		}
		b.WriteString(word)
		b.WriteByte(0)
	}
	b.WriteByte(0)
	_, err := io.WriteString(w, b.String())
	return err
}

// ReadPreamble reads a preamble from r, byte-limited so a client cannot make
// the gateway buffer without bound. r should be buffered; what follows the
// preamble stays in it.
func ReadPreamble(r *bufio.Reader) ([]string, error) {
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

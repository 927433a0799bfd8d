// Package shellwords splits a command line into words as a POSIX shell
// does, and quotes words so that a shell reads them back unchanged.
//
// ssh hands the remote command to the user's shell as one string, so a
// program standing in for ssh (or for the command ssh runs) must split
// that string the way the shell would. Split does the quoting part of
// that: blanks, single and double quotes, backslashes and comments. It
// expands nothing; instead of guessing what a shell would make of
// parameters, command substitution or operators, it refuses them.
package shellwords

import (
	"errors"
	"fmt"
	"strings"
)

// ErrUnterminated is wrapped by the error for a quote left open.
var ErrUnterminated = errors.New("unterminated quote")

// ErrNeedsShell is wrapped by the error for syntax that only a shell can
// carry out: $ and ` (expansions) and the operators | & ; < > ( ).
var ErrNeedsShell = errors.New("needs a shell")

// Split returns the words of s as a POSIX shell would pass them to a
// command: words are separated by unquoted blanks (space, tab); an
// unquoted newline ends the command, so only blanks and comments may
// follow it;
// '…' keeps everything literally; "…" keeps everything but \$, \`, \",
// \\ and backslash-newline; an unquoted backslash keeps the next
// character (and removes itself and a following newline); an unquoted #
// that starts a word starts a comment to the end of the line. A pair of
// quotes with nothing between makes an empty word. Globs (* ? [) and ~ are kept as they are,
// and words are words: reserved words (if, !, {) and a leading NAME=value
// assignment are not recognised.
func Split(s string) ([]string, error) {
	var (
		words   []string
		word    strings.Builder
		in      bool // inside a word (possibly an empty quoted one)
		newline = -1 // offset of an unquoted newline: it ends the command
	)
	begin := func() error {
		if !in && newline >= 0 {
			return fmt.Errorf("%w: a second command after the newline at byte %d", ErrNeedsShell, newline)
		}
		in = true
		return nil
	}
	end := func() {
		if in {
			words = append(words, word.String())
			word.Reset()
			in = false
		}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case ' ', '\t':
			end()
		case '\n':
			end()
			if newline < 0 {
				newline = i
			}
		case '\\':
			if i+1 < len(s) && s[i+1] == '\n' { // line continuation
				i++
				continue
			}
			if err := begin(); err != nil {
				return nil, err
			}
			if i+1 < len(s) { // else, as in sh, a trailing backslash is itself
				i++
			}
			word.WriteByte(s[i])
		case '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("%w: ' at byte %d", ErrUnterminated, i)
			}
			if err := begin(); err != nil {
				return nil, err
			}
			word.WriteString(s[i+1 : i+1+j])
			i += 1 + j
		case '"':
			if err := begin(); err != nil {
				return nil, err
			}
			j := i + 1
			for ; j < len(s) && s[j] != '"'; j++ {
				switch s[j] {
				case '\\':
					if j+1 < len(s) && strings.IndexByte("$`\"\\\n", s[j+1]) >= 0 {
						j++
						if s[j] != '\n' {
							word.WriteByte(s[j])
						}
						continue
					}
				case '$', '`':
					return nil, fmt.Errorf("%w: %c at byte %d expands inside double quotes; quote it with '…' or \\", ErrNeedsShell, s[j], j)
				}
				word.WriteByte(s[j])
			}
			if j == len(s) {
				return nil, fmt.Errorf("%w: \" at byte %d", ErrUnterminated, i)
			}
			i = j
		case '#':
			if !in {
				if nl := strings.IndexByte(s[i:], '\n'); nl >= 0 {
					i += nl - 1 // the newline itself is read next
				} else {
					i = len(s)
				}
				continue
			}
			word.WriteByte(c)
		case '$', '`', '|', '&', ';', '<', '>', '(', ')':
			return nil, fmt.Errorf("%w: unquoted %c at byte %d; quote it with '…' or \\", ErrNeedsShell, c, i)
		default:
			if err := begin(); err != nil {
				return nil, err
			}
			word.WriteByte(c)
		}
	}
	end()
	return words, nil
}

// Quote returns w quoted for a POSIX shell: unchanged if it holds only
// characters no shell treats specially (= is not among them: a leading
// NAME=value is an assignment), else in single quotes (with each
// ' written as '\”).
func Quote(w string) string {
	if w == "" {
		return "''"
	}
	plain := true
	for i := 0; i < len(w) && plain; i++ {
		c := w[i]
		plain = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-_./:@%+,", c) >= 0
	}
	if plain {
		return w
	}
	return "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
}

// Join quotes each word and joins them with spaces: Split(Join(words))
// returns words.
func Join(words []string) string {
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = Quote(w)
	}
	return strings.Join(q, " ")
}

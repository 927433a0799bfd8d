package casync

import (
	"fmt"
	"strings"
)

// Args is the remote argv that casync gives the process it spawns:
// [--opt=…]* (pull|push) BASE ARCHIVE INDEX WSTORE [EXTRA…], with "-" for
// "none" (casync-protocol.md §2.2).
type Args struct {
	// Push is true for "push", false for "pull".
	Push bool
	// Archive, Index and Store are paths, or "" for "-".
	Archive, Index, Store string
	// Options are the --opt=value words casync put before the verb
	// (--log-level, --rate-limit-bps). They are accepted and ignored.
	Options []string
}

// maxArgs bounds the argv; casync sends at most a handful.
const maxArgs = 64

// ParseArgs reads casync's remote argv, without the program name.
func ParseArgs(argv []string) (Args, error) {
	var a Args
	if len(argv) > maxArgs {
		return a, fmt.Errorf("remote argv has %d words, at most %d", len(argv), maxArgs)
	}
	i := 0
	for ; i < len(argv) && strings.HasPrefix(argv[i], "--"); i++ {
		a.Options = append(a.Options, argv[i])
	}
	rest := argv[i:]
	if len(rest) < 5 {
		return a, fmt.Errorf("remote argv %q: want [--opt=…] pull|push BASE ARCHIVE INDEX STORE", strings.Join(argv, " "))
	}
	switch rest[0] {
	case "push":
		a.Push = true
	case "pull":
	default:
		return a, fmt.Errorf("remote verb %q: want pull or push", rest[0])
	}
	if rest[1] != "-" {
		// casync itself refuses a base path: "not yet supported".
		return a, fmt.Errorf("remote base path %q: not supported (casync sends \"-\")", rest[1])
	}
	path := func(s string) string {
		if s == "-" {
			return ""
		}
		return s
	}
	a.Archive, a.Index, a.Store = path(rest[2]), path(rest[3]), path(rest[4])
	return a, nil
}

// Words renders the args as casync would send them, verb first.
func (a Args) Words() []string {
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	verb := "pull"
	if a.Push {
		verb = "push"
	}
	return append(append([]string{}, a.Options...), verb, "-", dash(a.Archive), dash(a.Index), dash(a.Store))
}

package shellwords

import (
	"bytes"
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

var splitCases = []struct {
	in   string
	want []string
}{
	{"", nil},
	{"   \t\n ", nil},
	{"casync pull - - - '/srv/store'", []string{"casync", "pull", "-", "-", "-", "/srv/store"}},
	// desync quotes the path with shellQuote: ' becomes '\''
	{`casync pull - - - '/it'\''s here'`, []string{"casync", "pull", "-", "-", "-", "/it's here"}},
	{"a  b\tc\n", []string{"a", "b", "c"}},
	{"a\n\n  # c\n", []string{"a"}},
	{"'a\nb' \"c\nd\"", []string{"a\nb", "c\nd"}},
	{`'a b' "c d"`, []string{"a b", "c d"}},
	{`a'b'"c"d`, []string{"abcd"}},
	{`'' "" x`, []string{"", "", "x"}},
	{`a\ b`, []string{"a b"}},
	{`\'\"\\`, []string{`'"\`}},
	{"a\\\nb", []string{"ab"}},
	{`"a\"b\\c\d\$e"`, []string{`a"b\c\d$e`}},
	{"\"a\\\nb\"", []string{"ab"}},
	{`'a\b'`, []string{`a\b`}},
	{`'$x' '|;&<>()' "|;&<>()"`, []string{"$x", "|;&<>()", "|;&<>()"}},
	{`\$x \| \; \#`, []string{"$x", "|", ";", "#"}},
	{"a # comment\n", []string{"a"}},
	{"a#b", []string{"a#b"}},
	{"# all comment", nil},
	{`"#" '#'`, []string{"#", "#"}},
	{`trailing\`, []string{`trailing\`}},
	{"--log-level=3 push - /a.caidx - /default.castr", []string{"--log-level=3", "push", "-", "/a.caidx", "-", "/default.castr"}},
	{"é 'ü ß'", []string{"é", "ü ß"}},
}

// Where a shell would expand, Split keeps the words as they are.
var noExpansion = []struct {
	in   string
	want []string
}{
	{"* ? [a] ~ ~/x", []string{"*", "?", "[a]", "~", "~/x"}},
}

func TestSplit(t *testing.T) {
	for _, tc := range append(splitCases, noExpansion...) {
		got, err := Split(tc.in)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("Split(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestSplitRefuses(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want error
	}{
		{`'open`, ErrUnterminated},
		{`a "open`, ErrUnterminated},
		{`"a\"`, ErrUnterminated},
		{`$HOME`, ErrNeedsShell},
		{`a$b`, ErrNeedsShell},
		{"`id`", ErrNeedsShell},
		{`"$HOME"`, ErrNeedsShell},
		{"\"`id`\"", ErrNeedsShell},
		{`a | b`, ErrNeedsShell},
		{`a;b`, ErrNeedsShell},
		{`a && b`, ErrNeedsShell},
		{`a > f`, ErrNeedsShell},
		{`a < f`, ErrNeedsShell},
		{"a\nb", ErrNeedsShell},
		{"a # c\nb", ErrNeedsShell},
		{`(a)`, ErrNeedsShell},
	} {
		got, err := Split(tc.in)
		if !errors.Is(err, tc.want) {
			t.Errorf("Split(%q) = %q, %v; want an error wrapping %v", tc.in, got, err, tc.want)
		}
	}
}

// The splitter agrees with the system's sh on every case it accepts.
func TestSplitAgreesWithSh(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	for _, tc := range splitCases {
		// printf prints each word NUL-ended; an empty line gives no words.
		out, err := exec.Command(sh, "-c", "printf '%s\\0' "+tc.in).Output()
		if err != nil {
			t.Fatalf("sh on %q: %v", tc.in, err)
		}
		var words []string
		if strings.TrimSpace(tc.in) != "" && !strings.HasPrefix(strings.TrimSpace(tc.in), "#") {
			words = strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
		}
		if got, _ := Split(tc.in); !slices.Equal(got, words) {
			t.Errorf("Split(%q) = %q; sh gives %q", tc.in, got, words)
		}
	}
}

func TestQuote(t *testing.T) {
	for in, want := range map[string]string{
		"":             "''",
		"/srv/a.caibx": "/srv/a.caibx",
		"a b":          "'a b'",
		"it's":         `'it'\''s'`,
		"a=b":          "'a=b'",
		"$x":           "'$x'",
	} {
		if got := Quote(in); got != want {
			t.Errorf("Quote(%q) = %s, want %s", in, got, want)
		}
	}
}

func FuzzJoinSplit(f *testing.F) {
	f.Add("a", "b c", "it's")
	f.Add("", "\n\t", `\"$`)
	f.Fuzz(func(t *testing.T, a, b, c string) {
		words := []string{a, b, c}
		got, err := Split(Join(words))
		if err != nil || !slices.Equal(got, words) {
			t.Fatalf("Split(Join(%q)) = %q, %v", words, got, err)
		}
	})
}

// Words quoted by Join reach a real shell's command unchanged.
func TestJoinThroughSh(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	words := []string{"", "a b", "it's", `"\$x`, "a=b", "#c", "~", "*", "tab\there", "new\nline", "é"}
	out, err := exec.Command(sh, "-c", "printf '%s\\0' "+Join(words)).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := bytes.Split(bytes.TrimSuffix(out, []byte{0}), []byte{0}); len(got) != len(words) {
		t.Fatalf("sh got %q from %s", got, Join(words))
	} else {
		for i := range words {
			if string(got[i]) != words[i] {
				t.Errorf("word %d: sh got %q, want %q", i, got[i], words[i])
			}
		}
	}
}

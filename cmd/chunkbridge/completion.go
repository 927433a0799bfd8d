package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
)

// completion runs `chunkbridge completion bash|zsh`: it prints a script
// that completes commands, subcommands and flags. The commands come from
// helps (what -h prints) and each command's flags from the flag set its -h
// prints, so the script cannot drift from the help.
func completion(args []string, stdout io.Writer) error {
	if wantsHelp(args) {
		return printHelp(stdout, "completion")
	}
	if len(args) == 2 && wantsHelp(args[1:]) {
		if _, ok := helps["completion "+args[0]]; ok {
			return printHelp(stdout, "completion "+args[0])
		}
	}
	if len(args) != 1 {
		return usagef("completion: want bash or zsh (see chunkbridge completion -h)")
	}
	t := completionTables()
	switch args[0] {
	case "bash":
		_, err := io.WriteString(stdout, t.script(bashTemplate))
		return err
	case "zsh":
		_, err := io.WriteString(stdout, t.script(zshTemplate))
		return err
	}
	return usagef("completion %s: want bash or zsh", args[0])
}

// compTables are what the scripts complete: the top-level commands, the
// subcommands of each, and the flags of each command ("gc", "pmx list").
type compTables struct {
	commands []string
	subs     map[string][]string
	flags    map[string][]string
}

// flagSetCreated, when set, sees every flag set newFlagSet makes:
// completionTables uses it to read each command's flags.
var flagSetCreated func(*flag.FlagSet)

func completionTables() compTables {
	t := compTables{commands: []string{"help"}, subs: map[string][]string{}, flags: map[string][]string{}}
	for cmd := range helps {
		top, sub, ok := strings.Cut(cmd, " ")
		if !slices.Contains(t.commands, top) {
			t.commands = append(t.commands, top)
		}
		if ok {
			t.subs[top] = append(t.subs[top], sub)
		}
	}
	slices.Sort(t.commands)
	for cmd := range helps {
		var sets []*flag.FlagSet
		flagSetCreated = func(fs *flag.FlagSet) { sets = append(sets, fs) }
		// -h builds the command's flag set and prints its help, nothing
		// else: the flags are the ones that help lists.
		_ = run(context.Background(), append(strings.Fields(cmd), "-h"), io.Discard, io.Discard)
		flagSetCreated = nil
		var names []string
		for _, fs := range sets {
			fs.VisitAll(func(f *flag.Flag) { names = append(names, "--"+f.Name) })
		}
		if len(names) > 0 {
			t.flags[cmd] = append(names, "--help")
		}
	}
	for _, s := range t.subs {
		slices.Sort(s)
	}
	return t
}

// script fills a template's @COMMANDS@, @SUBS@ and @FLAGS@: a case
// statement of words by command.
func (t compTables) script(tmpl string) string {
	var subs, flags strings.Builder
	for _, top := range t.commands {
		if s := t.subs[top]; len(s) > 0 {
			fmt.Fprintf(&subs, "    %q) subs=%q ;;\n", top, strings.Join(s, " "))
		}
	}
	var keys []string
	for k := range t.flags {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(&flags, "    %q) flags=%q ;;\n", k, strings.Join(t.flags[k], " "))
	}
	r := strings.NewReplacer("@COMMANDS@", strings.Join(t.commands, " "), "@SUBS@", subs.String(), "@FLAGS@", flags.String())
	return r.Replace(tmpl)
}

// completionBody is the part of both scripts after the command and
// subcommand are found: offer a subcommand, else a flag of the command,
// else a file. @OFFER@ is the shell's way to offer the words of a
// variable (@OFFER@subs), @FILES@ its way to offer file names.
const completionBody = `  case $cmd in
@SUBS@  esac
  if [[ -n $subs && -z $sub && $cur != -* ]]; then
    @OFFER@subs
    return
  fi
  key=$cmd
  [[ -n $subs ]] && key="$cmd $sub"
  case $key in
@FLAGS@  esac
  if [[ $cur == -* ]]; then
    @OFFER@flags
    return
  fi
  @FILES@
}
`

var bashTemplate = `# bash completion for chunkbridge (chunkbridge completion bash)
# Load it with: source <(chunkbridge completion bash)
_chunkbridge() {
  local cur=${COMP_WORDS[COMP_CWORD]} cmd="" sub="" subs="" flags="" key i w
  for ((i = 1; i < COMP_CWORD; i++)); do
    w=${COMP_WORDS[i]}
    [[ $w == -* ]] && continue
    if [[ -z $cmd ]]; then cmd=$w; elif [[ -z $sub ]]; then sub=$w; break; fi
  done
  if [[ -z $cmd ]]; then
    COMPREPLY=($(compgen -W "@COMMANDS@" -- "$cur"))
    return
  fi
` + strings.NewReplacer("@OFFER@subs", `COMPREPLY=($(compgen -W "$subs" -- "$cur"))`, "@OFFER@flags", `COMPREPLY=($(compgen -W "$flags" -- "$cur"))`,
	"@FILES@", `COMPREPLY=($(compgen -f -- "$cur"))`).Replace(completionBody) + `complete -o filenames -F _chunkbridge chunkbridge
`

var zshTemplate = `#compdef chunkbridge
# zsh completion for chunkbridge (chunkbridge completion zsh)
# Load it with: source <(chunkbridge completion zsh), or save it as _chunkbridge on $fpath.
_chunkbridge() {
  local cmd="" sub="" subs="" flags="" key i w cur=${words[CURRENT]}
  for ((i = 2; i < CURRENT; i++)); do
    w=${words[i]}
    [[ $w == -* ]] && continue
    if [[ -z $cmd ]]; then cmd=$w; elif [[ -z $sub ]]; then sub=$w; break; fi
  done
  if [[ -z $cmd ]]; then
    compadd -- ${=:-"@COMMANDS@"}
    return
  fi
` + strings.NewReplacer("@OFFER@subs", `compadd -- ${=subs}`, "@OFFER@flags", `compadd -- ${=flags}`, "@FILES@", "_files").Replace(completionBody) +
	`if [[ $funcstack[1] == _chunkbridge ]]; then _chunkbridge "$@"; else compdef _chunkbridge chunkbridge; fi
`

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// Exit codes of every command (verify adds exitTransient).
const (
	exitFailed = 1 // the operation failed
	exitUsage  = 2 // the command line is wrong: nothing was done
)

// usageError is a mistake in the command line: the process exits 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// exitCode prints err on stderr and returns the process's exit status:
// 0 on success and when help was asked for (it is printed already), 2 for
// a usage error, an exitError's own code, and 1 for any other failure.
func exitCode(err error, stderr io.Writer) int {
	var exit *exitError
	var usage usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &exit):
		if exit.msg != "" {
			fmt.Fprintln(stderr, "chunkbridge:", exit.msg)
		}
		return exit.code
	case errors.As(err, &usage):
		fmt.Fprintln(stderr, "chunkbridge:", err)
		return exitUsage
	}
	fmt.Fprintln(stderr, "chunkbridge:", err)
	return exitFailed
}

// wantsHelp reports whether args asks for help and nothing else, for the
// commands without a flag set.
func wantsHelp(args []string) bool {
	return len(args) == 1 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help")
}

// printHelp prints a command's help on stdout and returns flag.ErrHelp,
// which exits 0.
func printHelp(stdout io.Writer, command string) error {
	fmt.Fprint(stdout, helps[command])
	return flag.ErrHelp
}

// newFlagSet returns the flag set of a command: -h prints the command's
// help (what it does) and then its flags on stdout; parseFlags reports
// errors.
func newFlagSet(command string, stdout io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("chunkbridge "+command, flag.ContinueOnError)
	if flagSetCreated != nil {
		flagSetCreated(fs)
	}
	fs.SetOutput(stdout)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), helps[command])
		fmt.Fprintln(fs.Output(), "\nFlags (each can also be given as an environment variable: --foo-bar is CHUNKBRIDGE_FOO_BAR):")
		fs.PrintDefaults()
	}
	return fs
}

// helps says what each command does, keyed by its words after
// "chunkbridge"; -h prints it. TestHelpOnEveryCommand walks the commands of
// the usage text and wants an entry for each.
var helps = map[string]string{
	"serve": `Usage: chunkbridge serve all|chunk|casync-gateway|rest-gateway|pmx-gateway|pbs-gateway [flags]

Runs chunkbridge's services and gateways until SIGINT or SIGTERM, then
finishes in-flight calls. "all" runs everything in one process; the other
modes run one part each, for separate deployments. Run
"chunkbridge serve MODE -h" for a mode's flags.
`,
	"serve all": `Usage: chunkbridge serve all [flags]

Runs everything in one process on one store: the chunk, catalog and admin
gRPC services, the REST gateway (REST, OpenAPI, the casync HTTP store,
metrics, health), the casync gateway and the PMXBCKUP gateway, and the
Proxmox Backup Server gateway when --pbs-listen is given.
`,
	"serve chunk": `Usage: chunkbridge serve chunk [flags]

Runs the chunk, catalog and admin gRPC services on the store given by
--store, with /metrics, /healthz and /readyz on --http-listen.
`,
	"serve casync-gateway": `Usage: chunkbridge serve casync-gateway [flags]

Serves casync's remote protocol over TCP (reached through
chunkbridge-casync-ssh), in front of the chunk service at --chunk-service.
`,
	"serve rest-gateway": `Usage: chunkbridge serve rest-gateway [flags]

Serves REST, /openapi.json and the casync HTTP chunk store, in front of the
chunk service at --chunk-service.
`,
	"serve pmx-gateway": `Usage: chunkbridge serve pmx-gateway [flags]

Serves the PMXBCKUP backup protocol over TCP (optionally TLS), in front of
the chunk service at --chunk-service. With --credentials-file, clients
authenticate by TLS client certificate only (--pmx-tls-client-ca): PMXBCKUP
has no credential field (docs/auth.md).
`,
	"serve pbs-gateway": `Usage: chunkbridge serve pbs-gateway [flags]

Serves the Proxmox Backup Server protocol (HTTPS, HTTP/2 after an upgrade)
to proxmox-backup-client, Proxmox VE and proxmoxbackupclient_go, in front
of the chunk service at --chunk-service, on --pbs-listen with
--pbs-tls-cert/--pbs-tls-key; it logs the certificate's fingerprint at
start. Clients authenticate with API tokens (user@realm!tokenname:secret,
a principal of --credentials-file); the datastore is the principal's tenant
(docs/pbs.md). Give every replica the same --pbs-ticket-key-file, so that
login tickets work at each and survive restarts.
`,
	"casync-remote": `Usage: chunkbridge casync-remote [--chunk-service ADDR] [--principal NAME] [--OPT=…] pull|push BASE ARCHIVE INDEX STORE
       (or the same as one string, or in SSH_ORIGINAL_COMMAND)

Speaks casync's remote protocol on stdin and stdout, storing in the chunk
service at --chunk-service (or CHUNKBRIDGE_CHUNK_SERVICE, default
127.0.0.1:9090). ssh runs it as the remote casync: point casync's or
desync's CASYNC_REMOTE_PATH at a symlink named chunkbridge-casync-remote.
When ssh runs it as a forced command (authorized_keys command="…"), the
client's command is read from SSH_ORIGINAL_COMMAND.

With credentials, --principal NAME (or CHUNKBRIDGE_PRINCIPAL) names the
principal of CHUNKBRIDGE_CREDENTIALS_FILE the session acts as: ssh
authenticated the user, so a key's forced command
command="chunkbridge-casync-remote --principal web-backup" maps it to one.
The chunk service is called with the admin token of
CHUNKBRIDGE_AUTH_TOKEN_FILE and authorises each call as the principal.
`,
	"casync-ssh": `Usage: chunkbridge casync-ssh [SSH OPTIONS] [--] [user@]HOST[:PORT] COMMAND…

Stands in for ssh as casync and desync call it (CASYNC_SSH_PATH, through a
symlink named chunkbridge-casync-ssh): instead of logging in to HOST it
connects to the casync gateway at $CHUNKBRIDGE_CASYNC_ADDR, or else at
HOST and the port of the destination or -p (default 8473), and relays the
session. COMMAND is joined and split as ssh's remote shell would split it,
so both casync's words and desync's one quoted string work. ssh's options
are accepted and ignored, except -p. When the gateway ends the session with
ABORT, its reason is printed on stderr.

A gateway with credentials needs a token: CHUNKBRIDGE_TOKEN, or
CHUNKBRIDGE_TOKEN_FILE naming a file that holds it. It is sent in the
preamble (version 2); without one, version 1 is sent.

Without those variables, the profile of the config file
(CHUNKBRIDGE_PROFILE, else its default_profile) gives casync_addr and
token_file.
`,
	"pmx":         pmxUsage,
	"pmx backup":  pmxHelp("backup"),
	"pmx restore": pmxHelp("restore"),
	"pmx hashes":  pmxHelp("hashes"),
	"pmx list":    pmxHelp("list"),
	"s3": `Usage: chunkbridge s3 mkbucket s3://BUCKET [--s3-endpoint HOST:PORT] [--s3-insecure]

Prepares an object store: mkbucket creates the bucket if it is missing.
`,
	"s3 mkbucket": `Usage: chunkbridge s3 mkbucket s3://BUCKET [flags]

Creates the bucket if it is missing (what serve also does at start), for a
job that prepares a fresh object store. Credentials come from
AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
`,
	"gc": `Usage: chunkbridge gc [--grace 24h] [--dry-run] [flags]

Deletes the chunks that no casync index and no PMXBCKUP snapshot references,
through the AdminService at --chunk-service. Chunks written within --grace
of the start are kept, so that a backup still uploading keeps its chunks.
Prints what was deleted and kept; --dry-run deletes nothing.
`,
	"verify": `Usage: chunkbridge verify [--sample F] [--rate-limit R] [--resume-domain D --resume-after ID] [flags]

Reads stored chunks back and re-hashes them, and checks that every chunk an
index or snapshot references is stored, through the AdminService at
--chunk-service: every dedup domain in turn, each tenant's files against
its domain. Prints each problem and what references it. Exits 0 if the
store is intact, 1 if anything is damaged, 3 if only storage outages got in
the way (verify again later), 2 on usage errors.
`,
	"prune": `Usage: chunkbridge prune --keep-last N [--keep-daily N ...] [--type T --id ID] [--tenant T] [--dry-run] [flags]

Applies a retention policy to PMXBCKUP snapshots, through the AdminService
at --chunk-service: keeps the snapshots a --keep-* option selects in each
backup group and removes the others. The chunks only removed snapshots used
go at the next gc. Prints each decision; --dry-run removes nothing.
`,
	"stats": `Usage: chunkbridge stats [flags]

Prints what the store holds, from the AdminService at --chunk-service:
chunks, stored and logical bytes, compression and dedup ratios, casync
indexes and PMXBCKUP snapshots, and when they were counted. While storage
is unreachable the last count is shown, first labelled STALE with its age
and the reason.
`,
	"auth": `Usage: chunkbridge auth add-token --tenant T --role R NAME [--json]

Manages the principals of the credentials file that "serve
--credentials-file" reads (docs/auth.md). add-token creates a principal
with a new random token.
`,
	"auth add-token": `Usage: chunkbridge auth add-token [--tenant T] --role R [--json] NAME

Creates a principal NAME with a new random token: prints the token, once,
and the entry to add under "principals:" in the credentials file, which
holds only the token's SHA-256. Nothing is written; a running serve picks
the changed file up within --health-interval. Roles: read, append, write,
admin. A tenant other than "default" must be listed under "tenants:".
`,
	"completion": `Usage: chunkbridge completion bash|zsh

Prints a shell completion script for chunkbridge's commands, subcommands
and flags, made from the same command and flag tables as the help:
	source <(chunkbridge completion bash)    # in ~/.bashrc
	source <(chunkbridge completion zsh)     # in ~/.zshrc, after compinit
`,
	"completion bash": `Usage: chunkbridge completion bash

Prints the bash completion script of chunkbridge's commands, subcommands
and flags; load it with: source <(chunkbridge completion bash)
`,
	"completion zsh": `Usage: chunkbridge completion zsh

Prints the zsh completion script of chunkbridge's commands, subcommands
and flags; load it with: source <(chunkbridge completion zsh) after
compinit, or save it as _chunkbridge in a directory of $fpath.
`,
	"version": `Usage: chunkbridge version [--json]

Prints this build's version (as the Makefile set it, else the module's),
its VCS commit, whether the work tree had uncommitted changes (dirty), and
the Go version it was built with.
`,
}

// pmxHelp returns the help of "pmx name": its synopsis and its paragraph
// of pmxUsage.
func pmxHelp(name string) string {
	var desc []string
	for _, l := range strings.Split(pmxUsage, "\n") {
		switch {
		case strings.HasPrefix(l, name+" "):
			d := strings.TrimSpace(l[len(name):])
			desc = append(desc, strings.ToUpper(d[:1])+d[1:])
		case len(desc) > 0 && strings.HasPrefix(l, "         "):
			desc = append(desc, strings.TrimSpace(l))
		case len(desc) > 0:
			return "Usage: " + pmxSynopsis("pmx "+name) + "\n\n" + strings.Join(desc, "\n") + "\n" +
				"\nFlags may come before or after the arguments.\n"
		}
	}
	return "Usage: " + pmxSynopsis("pmx "+name) + "\n"
}

// Command chunkbridge runs chunkbridge's services, gateways and clients.
// Every service and client is a subcommand; see `chunkbridge help`.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/chunkbridge/chunkbridge/internal/buildinfo"
)

const usage = `chunkbridge: a deduplicated chunk store on S3 that speaks casync and PMXBCKUP

Usage:
  chunkbridge serve all             everything in one process (the embedded default)
  chunkbridge serve chunk           chunk, catalog and admin services over gRPC
  chunkbridge serve casync-gateway  casync's protocol over TCP, in front of a chunk service
  chunkbridge serve rest-gateway    REST, OpenAPI and the casync HTTP store, in front of a chunk service
  chunkbridge serve pmx-gateway     PMXBCKUP over TCP (optional TLS), in front of a chunk service
  chunkbridge serve pbs-gateway     the Proxmox Backup Server protocol (TLS, HTTP/2), in front of a chunk service
  chunkbridge casync-remote ...     casync's protocol on stdin/stdout: what ssh runs as the remote casync
  chunkbridge casync-ssh HOST ...   a CASYNC_SSH_PATH that relays casync's session to a casync gateway
  chunkbridge pmx backup|restore|hashes|list ...  the PMXBCKUP client ("chunkbridge pmx help")
  chunkbridge s3 mkbucket s3://B    create the bucket if missing (for a Kubernetes Job)
  chunkbridge gc [--grace 24h] [--dry-run]
                                    delete the chunks no index or snapshot references
  chunkbridge verify [--sample F] [--rate-limit R] [--resume-domain D --resume-after ID] [--repair-from PATH]
                                    read chunks back, re-hash them, check every reference (exit 1 on damage);
                                    corrupt chunks go to quarantine; --repair-from uploads them again
  chunkbridge prune --keep-last N [--keep-daily N ...] [--type T --id ID] [--tenant T] [--dry-run]
                                    apply a retention policy to PMXBCKUP snapshots
  chunkbridge stats                 what the store holds: chunks, bytes, dedup ratio, indexes, snapshots
  chunkbridge auth add-token --tenant T --role R NAME [--json]
                                    create a principal: print its new token once and the
                                    credentials file entry with the token's hash (docs/auth.md)
  chunkbridge version [--json]      version, VCS commit and Go version of this build
  chunkbridge completion bash|zsh   a shell completion script for commands, subcommands and flags

The admin commands talk to the AdminService at --chunk-service (default
127.0.0.1:9090). The client commands (gc, verify, prune, stats, pmx,
casync-ssh) also take their server and credentials from a profile of
~/.config/chunkbridge/config.yaml (--profile, CHUNKBRIDGE_PROFILE); a flag
wins over its CHUNKBRIDGE_* variable, which wins over the profile. "chunkbridge COMMAND -h" (or "chunkbridge help COMMAND")
says what a command does and lists its flags.

Exit status: 0 success, 1 the operation failed, 2 the command line is wrong
(verify also uses 3, see "chunkbridge verify -h"). Every flag can also be set
with an environment variable: --grpc-listen is CHUNKBRIDGE_GRPC_LISTEN.
`

// version and commit are set by the build (-ldflags "-X main.version=...
// -X main.commit=..."); unset, buildinfo.Read uses what Go stamped.
var version, commit = "dev", ""

// printVersion runs `chunkbridge version [--json]`.
func printVersion(args []string, stdout io.Writer) error {
	fs := newFlagSet("version", stdout)
	asJSON := fs.Bool("json", false, "print the version, commit, dirty flag and Go version as JSON")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usagef("version: %v (see chunkbridge version -h)", err)
	}
	if fs.NArg() > 0 {
		return usagef("version takes no arguments, only --json")
	}
	info := buildinfo.Read(version, commit)
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(info)
	}
	_, err := fmt.Fprintln(stdout, info.String())
	return err
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	args := os.Args[1:]
	// casync takes CASYNC_SSH_PATH and CASYNC_REMOTE_PATH as one word each,
	// so a symlink named chunkbridge-casync-ssh or chunkbridge-casync-remote
	// runs that command.
	switch name := filepath.Base(os.Args[0]); name {
	case "chunkbridge-casync-ssh", "chunkbridge-casync-remote":
		args = append([]string{strings.TrimPrefix(name, "chunkbridge-")}, args...)
	}
	err := run(ctx, args, os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// run runs the command args. Its error decides the exit status (exitCode):
// 0 success or help, 1 the operation failed, 2 a usage error.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return &exitError{code: exitUsage}
	}
	switch args[0] {
	case "serve", "casync-remote", "casync-ssh": // no flag set of their own to print help
		if wantsHelp(args[1:]) {
			return printHelp(stdout, args[0])
		}
	}
	switch args[0] {
	case "serve":
		if len(args) < 2 {
			return usagef("serve: which service? want one of: all, chunk, casync-gateway, rest-gateway, pmx-gateway, pbs-gateway")
		}
		if _, ok := modes[args[1]]; ok {
			return serve(ctx, args[1], args[2:], stdout, stderr)
		}
		return usagef("serve %s: unknown service; want one of: all, chunk, casync-gateway, rest-gateway, pmx-gateway, pbs-gateway", args[1])
	case "casync-remote":
		return casyncRemote(ctx, args[1:], stderr)
	case "casync-ssh":
		return casyncSSH(ctx, args[1:], stderr)
	case "pmx":
		return pmxMain(ctx, args[1:], stdout, stderr)
	case "s3":
		return s3Command(ctx, args[1:], stdout, stderr)
	case "gc":
		return adminGC(ctx, args[1:], stdout, stderr)
	case "verify":
		return adminVerify(ctx, args[1:], stdout, stderr)
	case "prune":
		return adminPrune(ctx, args[1:], stdout, stderr)
	case "stats":
		return adminStats(ctx, args[1:], stdout, stderr)
	case "auth":
		return authCommand(args[1:], stdout, stderr)
	case "completion":
		return completion(args[1:], stdout)
	case "version", "--version":
		return printVersion(args[1:], stdout)
	case "help", "-h", "--help":
		if len(args) > 1 { // chunkbridge help gc
			if _, ok := helps[strings.Join(args[1:], " ")]; ok {
				return run(ctx, append(args[1:], "-h"), stdout, stderr)
			}
			return usagef("help %s: no such command; run `chunkbridge help`", strings.Join(args[1:], " "))
		}
		fmt.Fprint(stdout, usage)
		return nil
	}
	return usagef("unknown command %q; run `chunkbridge help`", args[0])
}

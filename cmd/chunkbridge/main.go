// Command chunkbridge runs chunkbridge's services, gateways and clients.
// Every service and client is a subcommand; see `chunkbridge help`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `chunkbridge: a deduplicated chunk store on S3 that speaks casync and PMXBCKUP

Usage:
  chunkbridge serve all      everything in one process (the embedded default)
  chunkbridge serve chunk    ChunkService and AdminService over gRPC
  chunkbridge version

Run "chunkbridge serve all -h" for the flags. Every flag can also be set
with an environment variable: --grpc-listen is CHUNKBRIDGE_GRPC_LISTEN.
`

// version is set by the build (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "chunkbridge:", err)
		}
		os.Exit(2)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return flag.ErrHelp
	}
	switch args[0] {
	case "serve":
		if len(args) < 2 {
			return fmt.Errorf("serve: which service? want one of: all, chunk")
		}
		switch args[1] {
		case "all", "chunk":
			return serve(ctx, args[1], args[2:], stderr)
		}
		return fmt.Errorf("serve %s: unknown service; want one of: all, chunk", args[1])
	case "version", "--version":
		fmt.Fprintln(stdout, "chunkbridge", version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	return fmt.Errorf("unknown command %q; run `chunkbridge help`", args[0])
}

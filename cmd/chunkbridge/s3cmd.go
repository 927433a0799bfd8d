package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// s3Command runs `chunkbridge s3 mkbucket s3://bucket`: it creates the
// bucket if missing (what the chunk service also does at start), for a
// Kubernetes Job that prepares a fresh object store.
func s3Command(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if wantsHelp(args) {
		return printHelp(stdout, "s3")
	}
	if len(args) == 0 || args[0] != "mkbucket" {
		return usagef("s3: want `chunkbridge s3 mkbucket s3://BUCKET [--s3-endpoint HOST:PORT] [--s3-insecure]`")
	}
	var f storeFlags
	fs := newFlagSet("s3 mkbucket", stdout)
	fs.StringVar(&f.s3Endpoint, "s3-endpoint", "", "S3 endpoint HOST[:PORT] or http(s)://HOST[:PORT] (default AWS); credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
	fs.StringVar(&f.s3Region, "s3-region", "", "S3 region")
	fs.BoolVar(&f.s3Insecure, "s3-insecure", false, "plain HTTP")
	var rest []string
	for _, a := range args[1:] { // the URL may come before or after the flags
		if strings.HasPrefix(strings.ToLower(a), "s3:") { // openStore refuses s3:/b
			f.store = a
		} else {
			rest = append(rest, a)
		}
	}
	if err := parseFlags(fs, rest, slog.New(slog.NewTextHandler(stderr, nil)), envName("store")); err != nil {
		return err
	}
	if f.store == "" {
		return usagef("s3 mkbucket: want an s3://BUCKET argument")
	}
	store, err := openStore(ctx, f)
	if err != nil {
		return err
	}
	store.Close()
	fmt.Fprintf(stdout, "bucket of %s is ready\n", f.store)
	return nil
}

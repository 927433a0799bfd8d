package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/chunkbridge/chunkbridge/internal/bytesize"
	"github.com/chunkbridge/chunkbridge/pmxclient"
)

const pmxUsage = `Usage:
  chunkbridge pmx backup  --server HOST:PORT --type vm|ct|host --id ID [--name NAME]
                          [--fixed] [--chunk-size N] [--time T [--add]] [--allow-empty]
                          [--tls] [--tls-ca FILE] [--cert FILE --key FILE] FILE|-|NAME:PATH...
  chunkbridge pmx restore --server HOST:PORT [--tls] [--tls-ca FILE] [--cert FILE --key FILE]
                          [--force] SNAPSHOT_PATH OUT|-  |  SNAPSHOT --name FILE OUT|-
                          |  SNAPSHOT --api URL [--token-file FILE] DIR
  chunkbridge pmx hashes  --server HOST:PORT [--tls] [--tls-ca FILE] [--cert FILE --key FILE] SNAPSHOT_PATH
  chunkbridge pmx list    [--api http[s]://HOST:PORT] [--token-file FILE] [--tls-ca FILE]
                          [--type T] [--id ID] [--json]

backup   stores FILE (or stdin, -) as a new snapshot file <type>/<id>/<time>/<name>.didx,
         cut by casync's chunker; with --fixed as <name>.fidx in equal blocks (disk
         images; needs a file or block device, not stdin). Several inputs, each NAME:PATH
         (root.pxar:- disk.img:/dev/sda), go into one snapshot over one connection; a NAME
         ending in .img is fixed (an image, as proxmox-backup-client names them), --fixed
         makes every input fixed. The snapshot must be new; --add --time T adds the files
         to the snapshot at T. Only chunks that the newest snapshot of the same file lacks
         are uploaded. Prints a summary per file, with its snapshot path.
         An empty input is refused unless --allow-empty.
restore  writes a snapshot file's content to OUT (or stdout, -), verifying every chunk;
         OUT appears only when complete, and replaces an existing file only with
         --force. The time may be "latest":
         host/web-01/latest/root.pxar.didx. A SNAPSHOT (<type>/<id>/<time>) with
         --name FILE restores that file (root.pxar.didx, or root.pxar); without --name,
         every file of it into the directory DIR, each as its name without .didx/.fidx
         (DIR/root.pxar): the list of files comes from the REST API, --api.
hashes   prints a snapshot file's chunk digests, one per line, in order.
list     lists the snapshots, each followed by its files (name, size, chunk count,
         fixed or dynamic), through the REST API named by --api (PMXBCKUP has no
         list packet; with --server set and no --api, list refuses rather than guess;
         with neither, http://127.0.0.1:8080). With access control it needs a token
         (--token-file, CHUNKBRIDGE_TOKEN); --tls-ca verifies an https:// --api.

A gateway with access control (docs/auth.md) wants a client certificate: --cert and
--key, whose subject is a principal's cert_subject. Its role decides: read restores,
append also backs up. Every flag can also be set with an environment variable:
--server is CHUNKBRIDGE_SERVER, --tls-ca is CHUNKBRIDGE_TLS_CA, --cert is CHUNKBRIDGE_CERT;
and the server settings with a profile of the config file (--profile, CHUNKBRIDGE_PROFILE:
pmx_server, api, token_file, tls_ca, cert, key). --json prints the result as JSON.
`

// pmxMain runs `chunkbridge pmx ...`, the PMXBCKUP client.
func pmxMain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, pmxUsage)
		return &exitError{code: exitUsage}
	}
	switch args[0] {
	case "backup":
		return pmxBackup(ctx, args[1:], stdout, stderr)
	case "restore":
		return pmxRestore(ctx, args[1:], stdout, stderr)
	case "hashes":
		return pmxHashes(ctx, args[1:], stdout, stderr)
	case "list":
		return pmxList(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, pmxUsage)
		return nil
	}
	return usagef("pmx %s: unknown command; want backup, restore, hashes or list", args[0])
}

// pmxDefaultPort is the PMXBCKUP gateway's port (--pmx-listen).
const pmxDefaultPort = "8007"

// pmxConnFlags are the flags of a connection to the PMXBCKUP gateway.
type pmxConnFlags struct {
	server         string
	tls            bool
	tlsCA          string
	cert, key      string
	connectTimeout time.Duration
}

func (f *pmxConnFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.server, "server", "127.0.0.1:"+pmxDefaultPort, "the PMXBCKUP gateway, HOST[:PORT] (port "+pmxDefaultPort+" if omitted)")
	fs.BoolVar(&f.tls, "tls", false, "connect over TLS")
	fs.StringVar(&f.tlsCA, "tls-ca", "", "PEM file of the CA that signed the gateway's certificate (default: system roots); implies --tls")
	fs.StringVar(&f.cert, "cert", "", "PEM client certificate: the credential of a gateway with access control (its subject is a principal's cert_subject); implies --tls")
	fs.StringVar(&f.key, "key", "", "PEM private key of --cert")
	fs.DurationVar(&f.connectTimeout, "connect-timeout", 15*time.Second, "how long to wait for the connection and the server's Hello")
	registerConfigFlags(fs)
}

// addr returns --server with the default port added if it has none.
func (f *pmxConnFlags) addr() string { return withDefaultPort(f.server, pmxDefaultPort) }

func withDefaultPort(hostport, port string) string {
	if _, _, err := net.SplitHostPort(hostport); err == nil {
		return hostport
	}
	return net.JoinHostPort(strings.Trim(hostport, "[]"), port)
}

func (f *pmxConnFlags) tlsConfig() (*tls.Config, error) {
	if (f.cert == "") != (f.key == "") {
		return nil, usagef("--cert and --key go together: the client certificate and its private key")
	}
	if !f.tls && f.tlsCA == "" && f.cert == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.cert != "" {
		cert, err := tls.LoadX509KeyPair(f.cert, f.key)
		if err != nil {
			return nil, fmt.Errorf("--cert/--key: %w", err)
		}
		// Sent whichever CAs the gateway names as acceptable: one it does
		// not accept fails the handshake with a reason, instead of being
		// left out silently (Go's default) and refused as missing.
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	}
	if f.tlsCA != "" {
		var err error
		if cfg.RootCAs, err = loadCAPool("--tls-ca", f.tlsCA); err != nil {
			return nil, err
		}
	}
	return cfg, nil
}

// dial connects to the gateway, with a hint in the error for the usual
// causes.
func (f *pmxConnFlags) dial(ctx context.Context) (*pmxclient.Client, error) {
	cfg, err := f.tlsConfig()
	if err != nil {
		return nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, f.connectTimeout)
	defer cancel()
	c, err := pmxclient.Dial(dctx, f.addr(), cfg)
	if err != nil {
		var se *pmxclient.ServerError
		switch {
		case errors.As(err, &se):
			return nil, err // the gateway refused this client, and said why
		case errors.Is(err, pmxclient.ErrTLSRefused) && f.cert == "":
			return nil, fmt.Errorf("%w (a gateway with access control wants a client certificate: --cert FILE --key FILE, or CHUNKBRIDGE_CERT and CHUNKBRIDGE_KEY)", err)
		case errors.Is(err, pmxclient.ErrTLSRefused):
			return nil, err
		}
		hint := "is `chunkbridge serve pmx-gateway` running there? Set --server or CHUNKBRIDGE_SERVER"
		if cfg == nil {
			hint += "; add --tls if the gateway uses TLS"
		}
		return nil, fmt.Errorf("%w (%s)", err, hint)
	}
	return c, nil
}

// pmxEnvNames are the variables of every pmx flag: parseFlags does not warn
// about one that belongs to another pmx command.
func pmxEnvNames() []string {
	var names []string
	for _, f := range []string{"server", "tls", "tls-ca", "cert", "key", "connect-timeout", "type", "id", "name", "fixed", "chunk-size", "api", "token", "token-file", "json", "force", "allow-empty", "time", "add"} {
		names = append(names, envName(f))
	}
	return names
}

// parsePMXFlags parses args, in which flags may come before or after the
// positional arguments, fills unset flags from the environment, and
// returns the positional arguments; there must be want of them, or at
// least one if want is oneOrMore.
func parsePMXFlags(fs *flag.FlagSet, args []string, stderr io.Writer, want int, what string) ([]string, error) {
	flags, pos := splitArgs(fs, args)
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := parseFlags(fs, flags, log, pmxEnvNames()...); err != nil {
		return nil, err
	}
	if len(pos) != want && (want != oneOrMore || len(pos) == 0) {
		return nil, usagef("%s: want %s, got %d arguments (see %s -h)", strings.TrimPrefix(fs.Name(), "chunkbridge "), what, len(pos), fs.Name())
	}
	return pos, nil
}

// oneOrMore is parsePMXFlags's want for "at least one argument".
const oneOrMore = -1

// pmxSynopsis returns the usage line of name ("pmx backup") from pmxUsage.
func pmxSynopsis(name string) string {
	var lines []string
	for _, l := range strings.Split(pmxUsage, "\n")[1:] {
		l = strings.TrimSpace(l)
		if l == "" {
			break
		}
		if strings.HasPrefix(l, "chunkbridge ") {
			lines = append(lines, l)
		} else if len(lines) > 0 {
			lines[len(lines)-1] += " " + l
		}
	}
	for _, l := range lines {
		if strings.HasPrefix(l, "chunkbridge "+name+" ") {
			return strings.Join(strings.Fields(l), " ")
		}
	}
	return "chunkbridge " + name
}

// splitArgs separates flags (with their values) from positional arguments,
// so that both `backup --id x FILE` and `backup FILE --id x` work. "-" is
// positional; after "--" everything is.
func splitArgs(fs *flag.FlagSet, args []string) (flags, pos []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			return flags, append(pos, args[i+1:]...)
		case a == "-" || !strings.HasPrefix(a, "-"):
			pos = append(pos, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			continue // Parse reports it
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			continue
		}
		if i+1 < len(args) {
			i++
			flags = append(flags, args[i])
		}
	}
	return flags, pos
}

// sizeFlag is a byte count written as 4194304, 4096K, 4M, 4MiB, 1G.
type sizeFlag int64

// String returns the size in bytes.
func (s *sizeFlag) String() string { return strconv.FormatInt(int64(*s), 10) }

// Set parses a size such as 4M; see parseSize.
func (s *sizeFlag) Set(v string) error {
	n, err := bytesize.Parse(v)
	if err != nil {
		return err
	}
	*s = sizeFlag(n)
	return nil
}

// isTerminal reports whether w is a terminal, where a progress line makes
// sense.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0 && os.Getenv("TERM") != "dumb"
}

// progressLine redraws one status line on a terminal at most 4 times a
// second; elsewhere it prints nothing.
type progressLine struct {
	w     io.Writer
	on    bool
	shown bool
	last  time.Time
}

func newProgressLine(w io.Writer) *progressLine { return &progressLine{w: w, on: isTerminal(w)} }

func (p *progressLine) show(s string) {
	if !p.on || time.Since(p.last) < 250*time.Millisecond {
		return
	}
	p.last = time.Now()
	p.shown = true
	fmt.Fprintf(p.w, "\r%s\x1b[K", s)
}

// clear removes the line before the summary is printed.
func (p *progressLine) clear() {
	if p.shown {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.shown = false
	}
}

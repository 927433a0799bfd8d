package main

import (
	"bytes"
	"cmp"
	"context"
	le "encoding/binary" // main's tests have a variable named binary
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/format/caproto"
	"github.com/chunkbridge/chunkbridge/gateway/casync"
	"github.com/chunkbridge/chunkbridge/internal/shellwords"
)

// casyncRemote speaks caprotocol on stdin and stdout: ssh runs it as the
// remote casync (CASYNC_REMOTE_PATH="chunkbridge casync-remote"). Its argv is
// [--chunk-service ADDR] [--principal NAME] followed by casync's remote
// argv, with or without casync's --log-level/--rate-limit-bps options, as
// words or as one string (see remoteWords). CHUNKBRIDGE_SESSION_IDLE_TIMEOUT
// and CHUNKBRIDGE_SESSION_WRITE_TIMEOUT (Go durations) override the session's
// idle timeout (10m) and write timeout (1m).
//
// ssh authenticated the user; --principal (or CHUNKBRIDGE_PRINCIPAL) names
// the principal of CHUNKBRIDGE_CREDENTIALS_FILE the session acts as, so
// that a key's forced command (authorized_keys command="chunkbridge-casync-remote
// --principal web-backup") maps the key to it. The chunk service is called
// with the admin token of CHUNKBRIDGE_AUTH_TOKEN_FILE, naming the principal
// (auth.ForwardUnary), and authorises each call as that principal.
func casyncRemote(ctx context.Context, argv []string, stderr io.Writer) error {
	addr := os.Getenv(envName("chunk-service"))
	if addr == "" {
		addr = "127.0.0.1:9090"
	}
	principal := os.Getenv(envName("principal"))
	var rest []string
	for i := 0; i < len(argv); i++ {
		switch w := argv[i]; {
		case w == "--chunk-service" && i+1 < len(argv):
			addr = argv[i+1]
			i++
		case strings.HasPrefix(w, "--chunk-service="):
			addr = strings.TrimPrefix(w, "--chunk-service=")
		case w == "--principal" && i+1 < len(argv):
			principal = argv[i+1]
			i++
		case strings.HasPrefix(w, "--principal="):
			principal = strings.TrimPrefix(w, "--principal=")
		default:
			rest = append(rest, w)
		}
	}
	level := slog.LevelWarn // stderr goes back to the user's terminal through ssh
	if l := os.Getenv(envName("log-level")); l != "" {
		level.UnmarshalText([]byte(l))
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	rest, err := remoteWords(rest)
	if err != nil {
		return usageError{fmt.Errorf("casync-remote: %w", err)}
	}
	args, err := casync.ParseArgs(rest)
	if err != nil {
		return usageError{fmt.Errorf("casync-remote: %w", err)}
	}
	var sec securityFlags
	sec.tokenFile = os.Getenv(envName("auth-token-file"))
	sec.credentialsFile = os.Getenv(envName("credentials-file"))
	sec.chunkServiceTLS = os.Getenv(envName("chunk-service-tls")) == "true"
	sec.chunkServiceCA = os.Getenv(envName("chunk-service-ca"))
	acc, err := sec.access(log, false)
	if err != nil {
		return fmt.Errorf("casync-remote: %s: %w", envName("credentials-file"), err)
	}
	ctx, err = acc.remotePrincipal(ctx, sec.credentialsFile, principal, args)
	if err != nil {
		return err
	}
	conn, err := dialChunkService(addr, sec, acc.hop)
	if err != nil {
		return err
	}
	defer conn.Close()
	h := &casync.Handler{
		Chunks:  client.NewGRPC(conn),
		Catalog: client.NewCatalogGRPC(conn),
		Log:     log,
	}
	acc.casyncHandler(h)
	// The session's timeouts, for a client that stops reading or sending:
	// the same CHUNKBRIDGE_SESSION_* variables as serve's flags.
	for name, d := range map[string]*time.Duration{"session-idle-timeout": &h.IdleTimeout, "session-write-timeout": &h.WriteTimeout} {
		if v := os.Getenv(envName(name)); v != "" {
			if *d, err = time.ParseDuration(v); err != nil {
				return fmt.Errorf("casync-remote: %s: %w", envName(name), err)
			}
		}
	}
	if err := h.Serve(ctx, casync.StdioConn{In: pollable(os.Stdin, 0), Out: pollable(os.Stdout, 1)}, args); err != nil {
		return fmt.Errorf("casync-remote %s: %w", strings.Join(rest, " "), err)
	}
	return nil
}

// remoteWords returns casync's remote argv from what casync-remote was
// given. Usually a shell has split it already; it may also come as one
// string that no shell split (a wrapper that runs commands without one),
// or, when ssh runs casync-remote as a forced command (authorized_keys
// command="…"), in SSH_ORIGINAL_COMMAND. Such a string is split as a
// shell would, and its program name (casync, or whatever
// CASYNC_REMOTE_PATH said) dropped.
func remoteWords(argv []string) ([]string, error) {
	line, ok := "", false
	switch {
	case len(argv) == 1 && strings.ContainsAny(argv[0], " \t\n"):
		line, ok = argv[0], true
	case len(argv) == 0:
		line, ok = os.LookupEnv("SSH_ORIGINAL_COMMAND")
	}
	if !ok {
		return argv, nil
	}
	words, err := shellwords.Split(line)
	if err != nil {
		return nil, fmt.Errorf("the remote command %q: %w", line, err)
	}
	if len(words) > 0 && words[0] != "pull" && words[0] != "push" && !strings.HasPrefix(words[0], "--") {
		words = words[1:]
	}
	return words, nil
}

// pollable returns std (os.Stdin or os.Stdout, fd fd) as a file with
// deadlines, so that the session can cut off a client that stops reading
// or writing. casync hands non-blocking pipes, which os already serves
// through the runtime poller; sshd may hand blocking ones, which are put
// in non-blocking mode and opened anew (os registered fd at start-up only
// if it was non-blocking then). A terminal or a regular file is left as
// it is: the session then closes it on a timer instead. Whether os can
// wait on std decides, not the descriptor's O_NONBLOCK flag: stdin and
// stdout may share one socket, whose flag setting stdin's sets too.
func pollable(std *os.File, fd int) *os.File {
	if std.SetReadDeadline(time.Time{}) == nil {
		return std
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return std
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFIFO, unix.S_IFSOCK:
		if unix.SetNonblock(fd, true) != nil {
			return std
		}
		return os.NewFile(uintptr(fd), std.Name())
	}
	return std
}

// casyncSSH is a drop-in for ssh as casync and desync call it
// (CASYNC_SSH_PATH): `[OPTIONS] [--] DESTINATION COMMAND…`. Instead of running
// the command on the destination it connects to the casync gateway at
// $CHUNKBRIDGE_CASYNC_ADDR (or the destination's host and port, 8473 by
// default), sends the command's words as the preamble (with the token of
// CHUNKBRIDGE_TOKEN or CHUNKBRIDGE_TOKEN_FILE, if set), and relays bytes both
// ways until both directions are done. An ABORT from the gateway has its
// reason printed on stderr: casync itself shows only the errno.
func casyncSSH(_ context.Context, argv []string, stderr io.Writer) error {
	call, err := parseSSHArgv(argv)
	if err != nil {
		return usageError{fmt.Errorf("casync-ssh: %w", err)}
	}
	// casync gives ssh no options of ours: the environment, then the
	// profile (CHUNKBRIDGE_PROFILE or the config file's default), then
	// the destination.
	profile, _, err := selectProfile(os.Getenv(envName("config")), os.Getenv(envName("profile")))
	if err != nil {
		return fmt.Errorf("casync-ssh: %w", err)
	}
	addr := cmp.Or(os.Getenv(envName("casync-addr")), profile["casync-addr"], net.JoinHostPort(call.host, cmp.Or(call.port, "8473")))
	token, err := casyncToken(profile["token-file"])
	if err != nil {
		return fmt.Errorf("casync-ssh: %w", err)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return fmt.Errorf("casync-ssh: connect to the casync gateway at %s (set CHUNKBRIDGE_CASYNC_ADDR, or casync_addr in the config profile): %w", addr, err)
	}
	defer c.Close()
	// Without a token, version 1: what every gateway reads, and all one
	// without credentials needs.
	if token == "" {
		err = casync.WritePreamble(c, call.command)
	} else {
		err = casync.WritePreamble2(c, token, call.command)
	}
	if err != nil {
		return fmt.Errorf("casync-ssh: %w", err)
	}
	// casync hands us non-blocking pipes; os.File handles them through the
	// runtime poller, so plain copies work.
	up := make(chan struct{})
	go func() {
		io.CopyBuffer(c, os.Stdin, make([]byte, 1<<20))
		c.(*net.TCPConn).CloseWrite()
		close(up)
	}()
	// The watcher sees each frame before casync does, so the reason is on
	// stderr before casync reacts to the ABORT (and stops waiting for us).
	var aborted bool
	watch := &abortWatch{onAbort: func(a *caproto.Abort) {
		aborted = true
		why := a.Reason
		if a.Errno != 0 {
			why += " (" + syscall.Errno(a.Errno).Error() + ")"
		}
		fmt.Fprintln(stderr, "chunkbridge-casync-ssh: the server aborted the session:", why)
	}}
	_, err = io.CopyBuffer(io.MultiWriter(watch, os.Stdout), c, make([]byte, 1<<20))
	os.Stdout.Close()
	// Keep relaying the client's output until it closes: after an ABORT the
	// gateway drains, and the client must read the ABORT, not hit EPIPE.
	<-up
	switch {
	case aborted:
		return &exitError{code: 1}
	case err != nil:
		return fmt.Errorf("casync-ssh: relay from %s: %w", addr, err)
	}
	return nil
}

// casyncToken is the token casync-ssh sends the gateway: CHUNKBRIDGE_TOKEN,
// or what the file CHUNKBRIDGE_TOKEN_FILE (else the profile's token_file,
// profileFile) holds (surrounding white space trimmed); "" when none is set.
func casyncToken(profileFile string) (string, error) {
	token, file := os.Getenv(envName("token")), os.Getenv(envName("token-file"))
	if token == "" && file == "" {
		file = profileFile
	}
	if token != "" && file != "" {
		return "", fmt.Errorf("both %s and %s are set: set one", envName("token"), envName("token-file"))
	}
	if file != "" {
		var err error
		if token, err = readTokenFile(envName("token-file"), file); err != nil {
			return "", err
		}
	}
	if len(token) > casync.MaxPreambleToken {
		return "", fmt.Errorf("the token has %d bytes: at most %d", len(token), casync.MaxPreambleToken)
	}
	return token, nil
}

// sshCall is what ssh was asked to do: reach host (port "" unless the
// destination or -p named one) and run command there.
type sshCall struct {
	host, port string
	command    []string
}

// ssh's options (OpenSSH): those that take a value, and those that don't.
const (
	sshValueOptions = "BbcDEeFIiJLlmOoPpQRSWw"
	sshFlagOptions  = "46AaCfGgKkMNnqsTtVvXxYy"
)

// parseSSHArgv reads ssh's argv as casync (`HOST casync [--opt=…] pull|push
// …`) and desync (`-- HOST "casync pull - - - 'STORE'"`) write it, or with
// any of ssh's options. As ssh does, it joins the command's words with
// spaces, and the result is split as the remote shell would split it:
// both callers' words come out as they meant them.
func parseSSHArgv(argv []string) (sshCall, error) {
	var call sshCall
	var dest string
	i := 0
	// ssh reads options before and after the destination, each run ended
	// by "--" or by the first word that is no option.
	for {
		for i < len(argv) {
			a := argv[i]
			if a == "--" {
				i++
				break
			}
			if len(a) < 2 || a[0] != '-' {
				break
			}
			i++
			for j := 1; j < len(a); j++ {
				switch c := a[j]; {
				case c == 's':
					return call, errors.New("-s (an ssh subsystem such as sftp) is not supported: the casync gateway speaks casync's protocol only")
				case strings.IndexByte(sshFlagOptions, c) >= 0:
				case strings.IndexByte(sshValueOptions, c) >= 0:
					v := a[j+1:]
					if v == "" {
						if i == len(argv) {
							return call, fmt.Errorf("ssh option -%c needs a value", c)
						}
						v = argv[i]
						i++
					}
					if c == 'p' {
						call.port = v
					}
					j = len(a)
				default:
					return call, fmt.Errorf("unknown ssh option -%c in %q", c, a)
				}
			}
		}
		if dest != "" || i == len(argv) {
			break
		}
		dest = argv[i]
		i++
	}
	if dest == "" || i == len(argv) {
		return call, errors.New("want [SSH OPTIONS] [--] HOST COMMAND…, as casync and desync call ssh")
	}
	call.host, call.port = parseSSHDest(dest, call.port)
	words, err := shellwords.Split(strings.Join(argv[i:], " "))
	if err != nil {
		return call, fmt.Errorf("the remote command %q: %w", strings.Join(argv[i:], " "), err)
	}
	if len(words) == 0 {
		return call, errors.New("the remote command is empty")
	}
	call.command = words
	return call, nil
}

// parseSSHDest reads [user@]host[:port], ssh://[user@]host[:port] or
// [user@][v6 address][:port] (desync passes a URL's host, port included).
// A port in the destination wins over -p's.
func parseSSHDest(dest, port string) (string, string) {
	if rest, ok := strings.CutPrefix(dest, "ssh://"); ok {
		dest = strings.TrimSuffix(rest, "/")
	}
	if at := strings.LastIndexByte(dest, '@'); at >= 0 {
		dest = dest[at+1:]
	}
	if h, p, err := net.SplitHostPort(dest); err == nil {
		return h, p
	}
	return strings.Trim(dest, "[]"), port
}

// abortWatch follows the caprotocol frames written to it and calls onAbort
// with each complete ABORT. It never fails: a stream that stops looking
// like frames is no longer followed.
type abortWatch struct {
	onAbort func(*caproto.Abort)
	hdr     [caproto.HeaderSize]byte
	nhdr    int    // header bytes of the next frame so far
	left    uint64 // body bytes of the current frame still to come
	abort   []byte // the current frame, if it is an ABORT
	lost    bool
}

func (w *abortWatch) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 && !w.lost {
		if w.left == 0 {
			k := copy(w.hdr[w.nhdr:], p)
			w.nhdr += k
			p = p[k:]
			if w.nhdr < len(w.hdr) {
				break
			}
			w.nhdr = 0
			size := le.LittleEndian.Uint64(w.hdr[:8])
			if size < caproto.HeaderSize || size > caproto.MaxFrameSize {
				w.lost = true
				break
			}
			w.left = size - caproto.HeaderSize
			w.abort = nil
			if caproto.Type(le.LittleEndian.Uint64(w.hdr[8:])) == caproto.TypeAbort {
				w.abort = append(make([]byte, 0, size), w.hdr[:]...)
			}
		} else {
			k := int(min(uint64(len(p)), w.left))
			if w.abort != nil {
				w.abort = append(w.abort, p[:k]...)
			}
			w.left -= uint64(k)
			p = p[k:]
		}
		if w.left == 0 && w.abort != nil {
			m, err := caproto.NewReader(bytes.NewReader(w.abort), 0).ReadMessage()
			if a, ok := m.(*caproto.Abort); ok && err == nil {
				w.onAbort(a)
			}
			w.abort = nil
		}
	}
	return n, nil
}

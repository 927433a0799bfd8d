package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/gateway/casync"
)

// casyncRemote speaks caprotocol on stdin and stdout: ssh runs it as the
// remote casync (CASYNC_REMOTE_PATH="chunkbridge casync-remote"). Its argv is
// [--chunk-service ADDR] followed by casync's remote argv, with or without
// casync's --log-level/--rate-limit-bps options. CHUNKBRIDGE_SESSION_IDLE_TIMEOUT
// and CHUNKBRIDGE_SESSION_WRITE_TIMEOUT (Go durations) override the session's
// idle timeout (10m) and write timeout (1m).
func casyncRemote(ctx context.Context, argv []string, stderr io.Writer) error {
	addr := os.Getenv(envName("chunk-service"))
	if addr == "" {
		addr = "127.0.0.1:9090"
	}
	var rest []string
	for i := 0; i < len(argv); i++ {
		switch w := argv[i]; {
		case w == "--chunk-service" && i+1 < len(argv):
			addr = argv[i+1]
			i++
		case strings.HasPrefix(w, "--chunk-service="):
			addr = strings.TrimPrefix(w, "--chunk-service=")
		default:
			rest = append(rest, w)
		}
	}
	level := slog.LevelWarn // stderr goes back to the user's terminal through ssh
	if l := os.Getenv(envName("log-level")); l != "" {
		level.UnmarshalText([]byte(l))
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	args, err := casync.ParseArgs(rest)
	if err != nil {
		return fmt.Errorf("casync-remote: %w", err)
	}
	var sec securityFlags
	sec.tokenFile = os.Getenv(envName("auth-token-file"))
	sec.chunkServiceTLS = os.Getenv(envName("chunk-service-tls")) == "true"
	sec.chunkServiceCA = os.Getenv(envName("chunk-service-ca"))
	token, err := sec.loadToken()
	if err != nil {
		return err
	}
	conn, err := dialChunkService(addr, sec, token)
	if err != nil {
		return err
	}
	defer conn.Close()
	h := &casync.Handler{
		Chunks:  client.NewGRPC(conn),
		Catalog: client.NewCatalogGRPC(conn),
		Log:     log,
	}
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

// casyncSSH is a drop-in for ssh as casync calls it (CASYNC_SSH_PATH):
// `HOST casync [opts] pull|push ARCHIVE INDEX STORE`. Instead of running the
// command on HOST it connects to the casync gateway at
// $CHUNKBRIDGE_CASYNC_ADDR (or HOST:8473), sends the command as the
// preamble, and relays bytes both ways until both directions are done.
func casyncSSH(_ context.Context, argv []string, stderr io.Writer) error {
	if len(argv) < 2 {
		return errors.New("casync-ssh: want HOST COMMAND…, as casync calls ssh")
	}
	host := argv[0]
	if i := strings.LastIndexByte(host, '@'); i >= 0 {
		host = host[i+1:]
	}
	addr := os.Getenv("CHUNKBRIDGE_CASYNC_ADDR")
	if addr == "" {
		addr = net.JoinHostPort(host, "8473")
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return fmt.Errorf("casync-ssh: connect to the casync gateway at %s (set CHUNKBRIDGE_CASYNC_ADDR): %w", addr, err)
	}
	defer c.Close()
	if err := casync.WritePreamble(c, argv[1:]); err != nil {
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
	_, err = io.CopyBuffer(os.Stdout, c, make([]byte, 1<<20))
	os.Stdout.Close()
	// Keep relaying the client's output until it closes: after an ABORT the
	// gateway drains, and the client must read the ABORT, not hit EPIPE.
	<-up
	if err != nil {
		return fmt.Errorf("casync-ssh: relay from %s: %w", addr, err)
	}
	return nil
}

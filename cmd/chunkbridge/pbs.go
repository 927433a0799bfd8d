package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"

	"golang.org/x/sync/errgroup"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/gateway/pbs"
	"github.com/chunkbridge/chunkbridge/services/apierr"
)

// servePBS starts the Proxmox Backup Server gateway (docs/pbs.md) and
// returns its shutdown.
func (f *serveFlags) servePBS(g *errgroup.Group, log *slog.Logger, acc *access, chunks *client.Chunks, cat *client.Catalog, adm chunkbridgev1.AdminServiceClient, listening *[]any) (func(context.Context), error) {
	if f.pbsTLSCert == "" || f.pbsTLSKey == "" {
		return nil, usagef("--pbs-listen %s needs --pbs-tls-cert and --pbs-tls-key: PBS clients speak TLS only", f.pbsListen)
	}
	if f.pbsFileMemory <= 0 {
		return nil, usagef("--pbs-file-memory-bytes %d: must be positive", f.pbsFileMemory)
	}
	cert, err := tls.LoadX509KeyPair(f.pbsTLSCert, f.pbsTLSKey)
	if err != nil {
		return nil, fmt.Errorf("--pbs-tls-cert/--pbs-tls-key: %w", err)
	}
	var ticketKey []byte
	if f.pbsTicketKeyFile != "" {
		// The file's bytes as they are: every replica mounts the same
		// Secret, and trimming random bytes could shorten the key.
		ticketKey, err = os.ReadFile(f.pbsTicketKeyFile)
		if err != nil {
			return nil, fmt.Errorf("--pbs-ticket-key-file: %w; give a file of at least %d random bytes", err, pbs.MinTicketKey)
		}
		if len(ticketKey) < pbs.MinTicketKey {
			return nil, usagef("--pbs-ticket-key-file %s: %d bytes, want at least %d random ones (e.g. head -c 32 /dev/urandom > FILE)", f.pbsTicketKeyFile, len(ticketKey), pbs.MinTicketKey)
		}
	}
	ln, err := net.Listen("tcp", f.pbsListen)
	if err != nil {
		return nil, fmt.Errorf("--pbs-listen %s: %w", f.pbsListen, err)
	}
	plog := log.With("gateway", "pbs")
	srv := &pbs.Server{
		Chunks: chunks, Catalog: cat, Log: plog, MaxConns: f.maxConns, IdleTimeout: f.sessionIdle, TicketKey: ticketKey,
		FileMemory: f.pbsFileMemory,
		// PBS clients do the HTTP/1.1 upgrade themselves: no ALPN h2.
		TLS: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}},
	}
	// The datastore status counts the store as the gateway: its hop
	// token is an admin's.
	srv.Stats = func(ctx context.Context) (*chunkbridgev1.GetStatsResponse, error) {
		st, err := adm.GetStats(ctx, &chunkbridgev1.GetStatsRequest{})
		return st, apierr.FromStatus(err)
	}
	// Tokens and tickets map onto the credentials file's principals;
	// without one every caller is anonymous.
	srv.Credentials = acc.reg
	plog.Info("PBS gateway certificate", "fingerprint", pbs.Fingerprint(cert.Certificate[0]))
	*listening = append(*listening, "pbs", ln.Addr().String())
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, pbs.ErrServerClosed) {
			return fmt.Errorf("pbs gateway: %w", err)
		}
		return nil
	})
	return func(ctx context.Context) { srv.Shutdown(ctx) }, nil
}

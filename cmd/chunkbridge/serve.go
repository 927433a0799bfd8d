package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/test/bufconn"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/gateway/casync"
	"github.com/chunkbridge/chunkbridge/gateway/pmx"
	"github.com/chunkbridge/chunkbridge/gateway/rest"
	"github.com/chunkbridge/chunkbridge/gateway/session"
	"github.com/chunkbridge/chunkbridge/internal/buildinfo"
	"github.com/chunkbridge/chunkbridge/services/admin"
	"github.com/chunkbridge/chunkbridge/services/catalog"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/quota"
	"github.com/chunkbridge/chunkbridge/services/readiness"
)

// What each "serve" mode runs.
type parts struct {
	services bool // chunk, catalog and admin gRPC services on a store
	rest     bool // REST routes, OpenAPI, casync HTTP store
	casync   bool // casync gateway over TCP
	pmx      bool // PMXBCKUP gateway over TCP (optional TLS)
	pbs      bool // Proxmox Backup Server gateway (TLS, HTTP/2)
}

var modes = map[string]parts{
	"all":            {services: true, rest: true, casync: true, pmx: true, pbs: true},
	"chunk":          {services: true},
	"casync-gateway": {casync: true},
	"rest-gateway":   {rest: true},
	"pmx-gateway":    {pmx: true},
	"pbs-gateway":    {pbs: true},
}

type serveFlags struct {
	storeFlags
	securityFlags
	grpcListen, httpListen string
	casyncListen           string
	pmxListen              string
	pmxTLSCert, pmxTLSKey  string
	pmxTLSClientCA         string
	pbsListen              string
	pbsTLSCert, pbsTLSKey  string
	pbsTicketKeyFile       string
	pbsFileMemory          int64
	chunkService           string
	maxConcurrentChunks    int
	streamWindow           int
	streamMemory           int64
	streamStall            time.Duration
	grpcMaxStreams         uint
	presenceCache          int
	spoolDir               string
	maxBlobSpools          int
	maxIndexSpools         int
	healthInterval         time.Duration
	statsTTL               time.Duration
	shutdownTimeout        time.Duration
	logFormat, logLevel    string
	allowAnonymous         bool
	http                   rest.Limits
	// The raw-protocol gateways' sessions (docs/session.md).
	maxConns                  int
	sessionIdle, sessionWrite time.Duration
	gatewayBuffer             int64
}

func (f *serveFlags) register(fs *flag.FlagSet, p parts) {
	if p.services {
		fs.StringVar(&f.store, "store", "./data", "where chunks live: a directory, or s3://bucket[/prefix]")
		fs.StringVar(&f.s3Endpoint, "s3-endpoint", "", "S3 endpoint HOST[:PORT], or http://HOST[:PORT] (plain HTTP) or https://HOST[:PORT] (default AWS); credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
		fs.StringVar(&f.s3Region, "s3-region", "", "S3 region (default: discovered)")
		fs.BoolVar(&f.s3Insecure, "s3-insecure", false, "talk to the S3 endpoint over plain HTTP (or write --s3-endpoint http://...)")
		fs.StringVar(&f.grpcListen, "grpc-listen", "127.0.0.1:9090", "address of the gRPC services (chunk, catalog, admin, health, reflection)")
		fs.IntVar(&f.maxConcurrentChunks, "max-concurrent-chunks", 0, "chunks verified, compressed or stored at once across the process; bounds memory to about 48 MiB each (default 4 × CPUs)")
		fs.IntVar(&f.streamWindow, "stream-window", 16, "chunks in flight per upload or download stream")
		fs.Int64Var(&f.streamMemory, "stream-memory-bytes", 256<<20, "chunk data the chunk service's upload, download and read streams hold at once, all together; while others wait for it, a stream whose client reads nothing for --stream-stall-timeout is ended")
		fs.DurationVar(&f.streamStall, "stream-stall-timeout", 5*time.Second, "how long a download or read stream may wait for its client to read while others wait for --stream-memory-bytes")
		fs.UintVar(&f.grpcMaxStreams, "grpc-max-streams", 1024, "calls each gRPC connection may have open at once; more wait for one to end")
		fs.IntVar(&f.presenceCache, "presence-cache", 1<<18, "ids of stored chunks remembered to answer existence checks without storage (about 100 bytes each; 0 disables)")
		fs.StringVar(&f.spoolDir, "spool-dir", "", "where arriving indexes are validated before publication (default: the system temporary directory)")
		fs.IntVar(&f.maxBlobSpools, "max-blob-spools", 16, "blob files (PBS blobs, PutSnapshotBlob) spooled to --spool-dir at once, each up to 128 MiB; more wait their turn")
		fs.IntVar(&f.maxIndexSpools, "max-index-spools", 8, "casync indexes (PUT /casync/indexes, casync push, PutIndex) spooled to --spool-dir and checked at once, each up to 1 GiB; more wait their turn")
		fs.DurationVar(&f.healthInterval, "health-interval", 2*time.Second, "how often storage reachability is probed for health")
		fs.DurationVar(&f.statsTTL, "stats-ttl", 10*time.Second, "how long store counts (stats, store metrics) are reused; counting lists every chunk, so raise it for large stores")
	} else {
		fs.StringVar(&f.chunkService, "chunk-service", "127.0.0.1:9090", "address of the chunk service (gRPC)")
		fs.BoolVar(&f.chunkServiceTLS, "chunk-service-tls", false, "connect to the chunk service over TLS")
		fs.StringVar(&f.chunkServiceCA, "chunk-service-ca", "", "PEM file of the CA that signed the chunk service's certificate (default: system roots)")
		fs.StringVar(&f.chunkServiceName, "chunk-service-server-name", "", "name to verify in the chunk service's certificate (default: from --chunk-service)")
	}
	fs.StringVar(&f.credentialsFile, "credentials-file", "", "YAML file of principals (name, tenant, role, token hash or certificate subject) every REST and gRPC call must authenticate as; re-read when it changes (docs/auth.md)")
	fs.StringVar(&f.tokenFile, "auth-token-file", "", "file holding an admin bearer token: accepted on every REST and gRPC call (health and metrics stay open), and sent by gateways to the chunk service")
	fs.StringVar(&f.tlsClientCA, "tls-client-ca", "", "PEM file of the CA whose client certificates authenticate gRPC callers, by subject, against --credentials-file")
	fs.BoolVar(&f.allowAnonymous, "allow-anonymous", false, "serve without --credentials-file or --auth-token-file on a non-loopback listener: every caller is then an admin (refused without this flag)")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "PEM certificate: serve HTTP and gRPC over TLS")
	fs.StringVar(&f.tlsKey, "tls-key", "", "PEM private key for --tls-cert")
	if p.casync {
		fs.StringVar(&f.casyncListen, "casync-listen", "127.0.0.1:8473", "address of the casync gateway (caprotocol over TCP, after a preamble)")
	}
	if p.pmx {
		fs.StringVar(&f.pmxListen, "pmx-listen", "127.0.0.1:8007", "address of the PMXBCKUP gateway")
		fs.StringVar(&f.pmxTLSCert, "pmx-tls-cert", "", "PEM certificate: PMXBCKUP over TLS (default: --tls-cert)")
		fs.StringVar(&f.pmxTLSKey, "pmx-tls-key", "", "PEM private key for --pmx-tls-cert (default: --tls-key)")
		fs.StringVar(&f.pmxTLSClientCA, "pmx-tls-client-ca", "", "PEM file of the CA whose client certificates authenticate PMXBCKUP clients, by subject, against --credentials-file (default: --tls-client-ca); with credentials, a client without one is refused")
	}
	if p.pbs {
		def := ""
		if !p.services {
			def = "127.0.0.1:8008"
		}
		fs.StringVar(&f.pbsListen, "pbs-listen", def, "address of the Proxmox Backup Server gateway (HTTPS and HTTP/2; empty: off); needs --pbs-tls-cert and --pbs-tls-key")
		fs.StringVar(&f.pbsTLSCert, "pbs-tls-cert", "", "PEM certificate of the PBS gateway; its SHA-256 fingerprint is logged at start for clients that pin it")
		fs.StringVar(&f.pbsTLSKey, "pbs-tls-key", "", "PEM private key for --pbs-tls-cert")
		fs.Int64Var(&f.pbsFileMemory, "pbs-file-memory-bytes", 256<<20, "whole files the PBS gateway holds in memory at once, all sessions together: previous indexes and blobs read for clients (an index with its conversion and chunk map), blobs uploaded, manifests until finish; a request waits until its share is free")
		fs.StringVar(&f.pbsTicketKeyFile, "pbs-ticket-key-file", "", "file of at least 32 random bytes that signs PBS login tickets: give every replica the same one, and tickets work at each and survive restarts (default: a key made at start, so tickets are per process)")
	}
	if p.casync || p.pmx || p.pbs {
		fs.IntVar(&f.maxConns, "max-connections", 4096, "connections each gateway (casync, PMXBCKUP, PBS) serves at once; beyond it a client is refused with a reason")
		fs.DurationVar(&f.sessionIdle, "session-idle-timeout", 10*time.Minute, "a casync, PMXBCKUP or PBS connection with no traffic either way for this long is closed")
	}
	if p.casync || p.pmx {
		fs.DurationVar(&f.sessionWrite, "session-write-timeout", time.Minute, "a casync or PMXBCKUP client that reads nothing for this long while a reply waits is disconnected")
		fs.Int64Var(&f.gatewayBuffer, "gateway-buffer-bytes", 64<<20, "chunk data the raw-protocol gateways (casync, PMXBCKUP) buffer for their clients, all connections together; while others wait for it, a client that reads nothing is disconnected after 5s")
	}
	fs.StringVar(&f.httpListen, "http-listen", "127.0.0.1:8080", "address of /metrics, /healthz and /readyz (and REST, /openapi.json and the casync HTTP store where served)")
	d := rest.DefaultLimits()
	fs.DurationVar(&f.http.HeaderTimeout, "http-header-timeout", d.HeaderTimeout, "longest an HTTP client may take to send a request's headers")
	fs.DurationVar(&f.http.BodyTimeout, "http-body-timeout", d.BodyTimeout, "longest wait for more of an HTTP request body, and the grace before --http-min-rate applies")
	fs.Int64Var(&f.http.MinRate, "http-min-rate", d.MinRate, "bytes per second an HTTP request body must average after the grace (slower clients are cut with 408), and the extra write time a response gets per byte; -1 disables")
	fs.DurationVar(&f.http.WriteTimeout, "http-write-timeout", d.WriteTimeout, "longest an HTTP response write may wait for the client, plus its size at --http-min-rate")
	fs.DurationVar(&f.http.IdleTimeout, "http-idle-timeout", d.IdleTimeout, "how long an idle kept-alive HTTP connection stays open")
	fs.Int64Var(&f.http.MaxJSONBody, "http-max-json-body", d.MaxJSONBody, "largest REST (JSON) request body in bytes; larger ones get 413")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 20*time.Second, "how long in-flight calls and sessions may finish after SIGTERM")
	fs.StringVar(&f.logFormat, "log-format", "json", "log format: json or text")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
}

// serve runs the parts of one mode until ctx ends, then shuts them down in
// order: health NOT_SERVING, stop accepting, let in-flight work finish.
func serve(ctx context.Context, mode string, args []string, stdout, stderr io.Writer) error {
	p := modes[mode]
	var f serveFlags
	fs := newFlagSet("serve "+mode, stdout)
	f.register(fs, p)
	if err := parseFlags(fs, args, slog.New(slog.NewJSONHandler(stderr, nil))); err != nil {
		return err
	}
	log, err := newLogger(stderr, f.logFormat, f.logLevel)
	if err != nil {
		return err
	}
	log = log.With("service", "chunkbridge", "mode", mode)
	if err := f.checkAnonymous(p, log); err != nil {
		return err
	}
	acc, err := f.access(log, p.services)
	if err != nil {
		return err
	}
	token := acc.hop
	tlsConfig, err := f.serverTLS()
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	build := buildinfo.Read(version, commit)
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), build.Collector())

	var (
		g, gctx   = errgroup.WithContext(ctx)
		conn      *grpc.ClientConn
		chunks    *client.Chunks
		listening = []any{"http", ""}
		shutdown  []func(context.Context)
	)
	if p.services {
		svc, err := startServices(ctx, f, log, reg, acc, tlsConfig)
		if err != nil {
			return err
		}
		defer svc.store.Close()
		listening = append(listening, "grpc", svc.lis.Addr().String())
		g.Go(func() error { return svc.grpc.Serve(svc.lis) })
		g.Go(func() error { return svc.grpc.Serve(svc.loop) })
		g.Go(func() error { svc.monitor.Run(gctx); return nil })
		g.Go(func() error { svc.admin.WatchGC(gctx, f.healthInterval); return nil })
		// Quarantines in other replicas: the same cache reset as for GC.
		g.Go(func() error { svc.chunks.WatchRemovals(gctx, f.healthInterval); return nil })
		shutdown = append(shutdown, svc.stop)
		// The other parts reach the services through real gRPC, as they
		// do as separate deployments; in one process over an in-memory pipe.
		loopCreds := insecure.NewCredentials()
		if tlsConfig != nil {
			// The server speaks TLS on every listener; this one is an
			// in-memory pipe inside the process, so there is nothing to verify.
			loopCreds = credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})
		}
		opts := []grpc.DialOption{
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return svc.loop.DialContext(ctx) }),
			grpc.WithTransportCredentials(loopCreds),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessage), grpc.MaxCallSendMsgSize(maxMessage)),
		}
		if token != "" {
			opts = append(opts, grpc.WithPerRPCCredentials(bearer(token)))
		}
		opts = append(opts, grpc.WithChainUnaryInterceptor(auth.ForwardUnary), grpc.WithChainStreamInterceptor(auth.ForwardStream))
		conn, err = grpc.NewClient("passthrough:///chunkbridge", opts...)
		// Chunk data takes the typed client's in-process transport: the
		// same contract as gRPC (docs/client.md), without the loopback
		// hop's copies and framing. The catalog still goes through conn.
		chunks = client.NewLocal(svc.chunks, f.streamWindow)
	} else {
		conn, err = dialChunkService(f.chunkService, f.securityFlags, token)
	}
	if err != nil {
		return err
	}
	defer conn.Close()
	if acc.reg != nil {
		// Every mode follows the file: a gateway's clients too (tokens,
		// certificate subjects). Gateways have no --health-interval.
		every := f.healthInterval
		if every <= 0 {
			every = 2 * time.Second
		}
		g.Go(func() error { acc.reg.Watch(gctx, every); return nil })
	}
	if chunks == nil {
		chunks = client.NewGRPC(conn)
	}
	// The catalog goes over gRPC in every mode (docs/client.md).
	cat := client.NewCatalogGRPC(conn)

	// One budget for the chunk data both gateways buffer for clients: the
	// sum over every connection (docs/session.md).
	var shared *session.Budget
	if p.casync || p.pmx {
		if f.gatewayBuffer <= 0 {
			return usagef("--gateway-buffer-bytes %d: must be positive", f.gatewayBuffer)
		}
		shared = session.NewBudget(f.gatewayBuffer)
	}
	if p.casync {
		ln, err := net.Listen("tcp", f.casyncListen)
		if err != nil {
			return fmt.Errorf("--casync-listen %s: %w", f.casyncListen, err)
		}
		srv := &casync.Server{
			Handler: &casync.Handler{
				Chunks: chunks, Catalog: cat, Log: log.With("gateway", "casync"), Metrics: casync.NewMetrics(reg),
				IdleTimeout: f.sessionIdle, WriteTimeout: f.sessionWrite, Shared: shared,
			},
			MaxConns: f.maxConns,
		}
		acc.casync(srv)
		listening = append(listening, "casync", ln.Addr().String())
		g.Go(func() error {
			if err := srv.Serve(ln); !errors.Is(err, casync.ErrServerClosed) {
				return fmt.Errorf("casync gateway: %w", err)
			}
			return nil
		})
		// Sessions end before the services they use.
		shutdown = append([]func(context.Context){func(ctx context.Context) { srv.Shutdown(ctx) }}, shutdown...)
	}

	if p.pmx {
		pmxTLS, err := f.pmxTLS(tlsConfig)
		if err != nil {
			return err
		}
		if acc.reg != nil && (pmxTLS == nil || pmxTLS.ClientCAs == nil) && !p.services {
			// A process that is only this gateway would serve no one.
			return usagef("serve %s with credentials needs TLS with client certificates: PMXBCKUP clients authenticate by certificate only; "+
				"give --pmx-tls-cert/--pmx-tls-key (or --tls-cert/--tls-key) and --pmx-tls-client-ca (or --tls-client-ca)", mode)
		}
		ln, err := net.Listen("tcp", f.pmxListen)
		if err != nil {
			return fmt.Errorf("--pmx-listen %s: %w", f.pmxListen, err)
		}
		srv := &pmx.Server{
			Chunks: chunks, Catalog: cat, Log: log.With("gateway", "pmx"), TLS: pmxTLS, Metrics: pmx.NewMetrics(reg),
			MaxConns: f.maxConns, IdleTimeout: f.sessionIdle, WriteTimeout: f.sessionWrite, Shared: shared,
		}
		if acc.reg != nil {
			// PMXBCKUP has no credential field: a client certificate is it.
			withCA := pmxTLS != nil && pmxTLS.ClientCAs != nil
			srv.Authenticate = acc.pmxAuthenticate(withCA)
			srv.Credentials = acc.reg
			if !withCA {
				log.Warn("the PMXBCKUP gateway refuses every client: with credentials, PMXBCKUP clients authenticate by TLS client certificate only; " +
					"give --pmx-tls-cert/--pmx-tls-key (or --tls-cert/--tls-key) and --pmx-tls-client-ca (or --tls-client-ca)")
			}
		}
		listening = append(listening, "pmx", ln.Addr().String())
		g.Go(func() error {
			if err := srv.Serve(ln); !errors.Is(err, pmx.ErrServerClosed) {
				return fmt.Errorf("pmx gateway: %w", err)
			}
			return nil
		})
		shutdown = append([]func(context.Context){func(ctx context.Context) { srv.Shutdown(ctx) }}, shutdown...)
	}

	if p.pbs && f.pbsListen != "" {
		stop, err := f.servePBS(g, log, acc, chunks, cat, chunkbridgev1.NewAdminServiceClient(conn), &listening)
		if err != nil {
			return err
		}
		shutdown = append([]func(context.Context){stop}, shutdown...)
	}

	f.http.Log = log
	handler, err := rest.NewHandler(ctx, conn, rest.Options{API: p.rest, Gatherer: reg, Log: log, Limits: f.http, Chunks: chunks, Version: build.Version})
	if err != nil {
		return err
	}
	httpLis, err := net.Listen("tcp", f.httpListen)
	if err != nil {
		return fmt.Errorf("--http-listen %s: %w", f.httpListen, err)
	}
	listening[1] = httpLis.Addr().String()
	// The limits' guard wraps the token check too: an unauthenticated
	// client is cut as fast as any other.
	httpSrv := rest.NewServer(acc.requireHTTP(handler), f.http)
	httpSrv.TLSConfig = tlsConfig
	if p.rest && tlsConfig == nil {
		// Chunk reads of the casync store are answered ahead of net/http
		// (sendfile needs plain TCP); everything else goes on to httpSrv.
		door := &rest.Door{Prefix: "/casync/chunks/", Chunks: chunks, Admit: acc.admitDoor, Limits: f.http, Log: log}
		httpLis = door.Listen(httpLis)
		shutdown = append([]func(context.Context){func(ctx context.Context) { door.Shutdown(ctx) }}, shutdown...)
	}
	g.Go(func() error {
		serveHTTP := httpSrv.Serve
		if tlsConfig != nil {
			serveHTTP = func(l net.Listener) error { return httpSrv.ServeTLS(l, "", "") }
		}
		if err := serveHTTP(httpLis); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http server: %w", err)
		}
		return nil
	})
	shutdown = append([]func(context.Context){func(ctx context.Context) { httpSrv.Shutdown(ctx) }}, shutdown...)

	log.Info("listening", listening...)
	g.Go(func() error {
		<-gctx.Done()
		log.Info("shutting down", "timeout", f.shutdownTimeout)
		sctx, cancel := context.WithTimeout(context.Background(), f.shutdownTimeout)
		defer cancel()
		for _, stop := range shutdown {
			stop(sctx)
		}
		return nil
	})
	err = g.Wait()
	if ctx.Err() != nil && (err == nil || errors.Is(err, grpc.ErrServerStopped)) {
		log.Info("stopped")
		return nil
	}
	return err
}

type services struct {
	store   interface{ Close() error }
	grpc    *grpc.Server
	lis     net.Listener
	loop    *bufconn.Listener
	health  *health.Server
	monitor *readiness.Monitor
	admin   *admin.Server
	chunks  *chunk.Service
	log     *slog.Logger
}

// startServices opens the store and builds the gRPC server with the chunk,
// catalog, admin, health and reflection services.
func startServices(ctx context.Context, f serveFlags, log *slog.Logger, reg *prometheus.Registry, acc *access, tlsConfig *tls.Config) (*services, error) {
	switch {
	case f.streamMemory <= 0:
		return nil, usagef("--stream-memory-bytes %d: must be positive", f.streamMemory)
	case f.streamStall <= 0:
		return nil, usagef("--stream-stall-timeout %v: must be positive", f.streamStall)
	case f.maxBlobSpools <= 0:
		return nil, usagef("--max-blob-spools %d: must be positive", f.maxBlobSpools)
	case f.maxIndexSpools <= 0:
		return nil, usagef("--max-index-spools %d: must be positive", f.maxIndexSpools)
	case f.grpcMaxStreams == 0 || f.grpcMaxStreams > math.MaxUint32:
		return nil, usagef("--grpc-max-streams %d: must be from 1 to %d", f.grpcMaxStreams, uint32(math.MaxUint32))
	}
	store, err := openStore(ctx, f.storeFlags)
	if err != nil {
		return nil, err
	}
	log.Info("store opened", "store", f.store)
	presence := f.presenceCache
	if presence == 0 {
		presence = -1
	}
	quotas := quota.New(acc.quotas, 0)
	chunks, err := chunk.New(store, chunk.Config{MaxConcurrentChunks: f.maxConcurrentChunks, PresenceCacheSize: presence, Log: log, Quota: quotas}, chunk.NewMetrics(reg))
	if err != nil {
		store.Close()
		return nil, err
	}
	cat, err := catalog.New(store, chunks, catalog.Config{SpoolDir: f.spoolDir, MaxBlobSpools: f.maxBlobSpools, MaxIndexSpools: f.maxIndexSpools, Quota: quotas})
	if err != nil {
		store.Close()
		return nil, err
	}
	srv, grpcMetrics := newGRPCServer(log, reg, acc, tlsConfig, uint32(f.grpcMaxStreams))
	chunkbridgev1.RegisterChunkServiceServer(srv, chunk.NewServer(chunks, chunk.ServerConfig{Window: f.streamWindow, StreamMemory: f.streamMemory, StallTimeout: f.streamStall}))
	chunkbridgev1.RegisterCatalogServiceServer(srv, cat)
	var monitor *readiness.Monitor // set below; stats label their figures stale while it says unreachable
	ready := func() bool { return monitor == nil || monitor.Ready() }
	adm, err := admin.New(admin.Config{Store: store, Chunks: chunks, Catalog: cat, Log: log, Registerer: reg, StatsTTL: f.statsTTL, Ready: ready, Tenants: acc.tenants, Quota: quotas})
	if err != nil {
		store.Close()
		return nil, err
	}
	chunkbridgev1.RegisterAdminServiceServer(srv, adm)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	reflection.Register(srv)
	grpcMetrics.InitializeMetrics(srv)
	monitor = readiness.New(store, hs, []string{
		chunkbridgev1.ChunkService_ServiceDesc.ServiceName,
		chunkbridgev1.CatalogService_ServiceDesc.ServiceName,
		chunkbridgev1.AdminService_ServiceDesc.ServiceName,
	}, f.healthInterval, log)
	lis, err := net.Listen("tcp", f.grpcListen)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("--grpc-listen %s: %w", f.grpcListen, err)
	}
	return &services{store: store, grpc: srv, lis: lis, loop: bufconn.Listen(1 << 20), health: hs, monitor: monitor, admin: adm, chunks: chunks, log: log}, nil
}

// stop reports NOT_SERVING so balancers stop sending work, then lets
// in-flight calls finish within the deadline.
func (s *services) stop(ctx context.Context) {
	s.health.Shutdown()
	done := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.log.Warn("shutdown timeout: cancelling calls still running")
		s.grpc.Stop()
	}
}

// dialChunkService connects to a remote chunk service. The connection is
// lazy: a gateway starts while the chunk service is still coming up, and
// /readyz says when it is reachable.
func dialChunkService(addr string, sec securityFlags, token string) (*grpc.ClientConn, error) {
	creds, err := sec.clientCredentials()
	if err != nil {
		return nil, err
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessage), grpc.MaxCallSendMsgSize(maxMessage)),
		grpc.WithWriteBufferSize(hopBuffer), grpc.WithReadBufferSize(hopBuffer),
	}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(token)))
	}
	opts = append(opts, grpc.WithChainUnaryInterceptor(auth.ForwardUnary), grpc.WithChainStreamInterceptor(auth.ForwardStream))
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("--chunk-service %s: %w", addr, err)
	}
	return conn, nil
}

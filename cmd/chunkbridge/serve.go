package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/test/bufconn"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/gateway/rest"
	"github.com/chunkbridge/chunkbridge/services/admin"
	"github.com/chunkbridge/chunkbridge/services/chunk"
	"github.com/chunkbridge/chunkbridge/services/readiness"
)

type serveFlags struct {
	storeFlags
	grpcListen, httpListen string
	maxConcurrentChunks    int
	streamWindow           int
	presenceCache          int
	healthInterval         time.Duration
	shutdownTimeout        time.Duration
	logFormat, logLevel    string
}

func (f *serveFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.store, "store", "./data", "where chunks live: a directory, or s3://bucket[/prefix]")
	fs.StringVar(&f.s3Endpoint, "s3-endpoint", "", "S3 endpoint host[:port] (default AWS); credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
	fs.StringVar(&f.s3Region, "s3-region", "", "S3 region (default: discovered)")
	fs.BoolVar(&f.s3Insecure, "s3-insecure", false, "talk to the S3 endpoint over plain HTTP")
	fs.StringVar(&f.grpcListen, "grpc-listen", "127.0.0.1:9090", "address of the gRPC services (chunk, admin, health, reflection)")
	fs.StringVar(&f.httpListen, "http-listen", "127.0.0.1:8080", "address of REST, /openapi.json, /metrics, /healthz and /readyz")
	fs.IntVar(&f.maxConcurrentChunks, "max-concurrent-chunks", 0, "chunks verified, compressed or stored at once across the process; bounds memory to about 48 MiB each (default 4 × CPUs)")
	fs.IntVar(&f.streamWindow, "stream-window", 8, "chunks in flight per upload or download stream")
	fs.IntVar(&f.presenceCache, "presence-cache", 1<<18, "ids of stored chunks remembered to answer existence checks without storage (about 100 bytes each; 0 disables)")
	fs.DurationVar(&f.healthInterval, "health-interval", 2*time.Second, "how often storage reachability is probed for health")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 20*time.Second, "how long in-flight calls may finish after SIGTERM")
	fs.StringVar(&f.logFormat, "log-format", "json", "log format: json or text")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")
}

// serve runs "serve chunk" (the gRPC services, with operational HTTP
// endpoints) or "serve all" (the same plus the REST gateway).
func serve(ctx context.Context, mode string, args []string, stderr io.Writer) error {
	var f serveFlags
	fs := flag.NewFlagSet("chunkbridge serve "+mode, flag.ContinueOnError)
	fs.SetOutput(stderr)
	f.register(fs)
	bootLog := slog.New(slog.NewJSONHandler(stderr, nil))
	if err := parseFlags(fs, args, bootLog); err != nil {
		return err
	}
	log, err := newLogger(stderr, f.logFormat, f.logLevel)
	if err != nil {
		return err
	}
	log = log.With("service", "chunkbridge", "mode", mode)
	presence := f.presenceCache
	if presence == 0 {
		presence = -1
	}

	store, err := openStore(ctx, f.storeFlags)
	if err != nil {
		return err
	}
	defer store.Close()
	log.Info("store opened", "store", f.store)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	chunks, err := chunk.New(store, chunk.Config{MaxConcurrentChunks: f.maxConcurrentChunks, PresenceCacheSize: presence}, chunk.NewMetrics(reg))
	if err != nil {
		return err
	}

	grpcSrv, grpcMetrics := newGRPCServer(log, reg)
	chunkbridgev1.RegisterChunkServiceServer(grpcSrv, chunk.NewServer(chunks, f.streamWindow))
	chunkbridgev1.RegisterAdminServiceServer(grpcSrv, admin.New(store, chunks, 10*time.Second))
	healthSrv := health.NewServer()
	healthpb.RegisterHealthServer(grpcSrv, healthSrv)
	reflection.Register(grpcSrv)
	grpcMetrics.InitializeMetrics(grpcSrv)
	monitor := readiness.New(store, healthSrv, []string{
		chunkbridgev1.ChunkService_ServiceDesc.ServiceName,
		chunkbridgev1.AdminService_ServiceDesc.ServiceName,
	}, f.healthInterval, log)

	grpcLis, err := net.Listen("tcp", f.grpcListen)
	if err != nil {
		return fmt.Errorf("--grpc-listen %s: %w", f.grpcListen, err)
	}
	httpLis, err := net.Listen("tcp", f.httpListen)
	if err != nil {
		grpcLis.Close()
		return fmt.Errorf("--http-listen %s: %w", f.httpListen, err)
	}
	// The HTTP side reaches the services through real gRPC, as it does when
	// it runs as its own deployment; in one process over an in-memory pipe.
	loop := bufconn.Listen(1 << 20)
	conn, err := grpc.NewClient("passthrough:///chunkbridge",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return loop.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessage), grpc.MaxCallSendMsgSize(maxMessage)))
	if err != nil {
		return err
	}
	defer conn.Close()
	handler, err := rest.NewHandler(ctx, conn, rest.Options{API: mode == "all", Gatherer: reg, Log: log})
	if err != nil {
		return err
	}
	httpSrv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}

	log.Info("listening", "grpc", grpcLis.Addr().String(), "http", httpLis.Addr().String(), "rest", mode == "all")
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return grpcSrv.Serve(grpcLis) })
	g.Go(func() error { return grpcSrv.Serve(loop) })
	g.Go(func() error {
		if err := httpSrv.Serve(httpLis); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http server: %w", err)
		}
		return nil
	})
	g.Go(func() error { monitor.Run(gctx); return nil })
	g.Go(func() error {
		<-gctx.Done()
		log.Info("shutting down", "timeout", f.shutdownTimeout)
		// Report NOT_SERVING first so balancers stop sending new work, then
		// let in-flight calls finish within the timeout.
		healthSrv.Shutdown()
		sctx, cancel := context.WithTimeout(context.Background(), f.shutdownTimeout)
		defer cancel()
		httpSrv.Shutdown(sctx)
		done := make(chan struct{})
		go func() { grpcSrv.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-sctx.Done():
			log.Warn("shutdown timeout: cancelling calls still running")
			grpcSrv.Stop()
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

package main

import (
	"context"
	"crypto/tls"
	"log/slog"
	"strings"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/chunkbridge/chunkbridge/services/chunk"
)

// maxMessage fits one 16 MiB chunk plus its envelope.
const maxMessage = chunk.MaxSize + 1<<20

// hopBuffer is the write and read buffer of every gRPC connection, on both
// ends (gRPC's default is 32 KiB): a 64 KiB chunk is two flushes and two
// reads of the loopback hop at the default, and the responses of several
// reads in flight go out in one write at this size. gRPC lends these
// buffers from a pool while data is moving, so an idle connection holds
// neither.
const hopBuffer = 256 << 10

// newGRPCServer builds a server with the interceptor chain every service
// shares: logging outermost, then metrics, then panic recovery next to the
// handler so that a panic is logged and counted as Internal. maxStreams
// bounds the calls open at once on one connection.
func newGRPCServer(log *slog.Logger, reg prometheus.Registerer, acc *access, tlsConfig *tls.Config, maxStreams uint32) (*grpc.Server, *grpcprom.ServerMetrics) {
	metrics := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram())
	reg.MustRegister(metrics)
	panics := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "chunkbridge_grpc_panics_recovered_total",
		Help: "Panics in gRPC handlers turned into Internal errors.",
	})
	reg.MustRegister(panics)
	onPanic := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		panics.Inc()
		log.ErrorContext(ctx, "panic in gRPC handler", "panic", p)
		return status.Error(codes.Internal, "internal error")
	})
	authUnary, authStream := acc.interceptors()
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(maxMessage),
		grpc.MaxSendMsgSize(maxMessage),
		grpc.WriteBufferSize(hopBuffer), grpc.ReadBufferSize(hopBuffer),
		// Each stream costs goroutines and buffers whatever its chunks
		// take of --stream-memory-bytes: one connection may not open
		// without end.
		grpc.MaxConcurrentStreams(maxStreams),
		// Spread long-lived client connections over replicas behind a
		// Kubernetes Service: after 30 minutes a connection takes no new
		// calls. The calls still running keep it for up to 6 hours, so a
		// long GC or verify is not cut (shutdown has its own timeout).
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionAge: 30 * time.Minute, MaxConnectionAgeGrace: 6 * time.Hour}),
		grpc.ChainUnaryInterceptor(unaryLog(log), metrics.UnaryServerInterceptor(), authUnary, recovery.UnaryServerInterceptor(onPanic)),
		grpc.ChainStreamInterceptor(streamLog(log), metrics.StreamServerInterceptor(), authStream, recovery.StreamServerInterceptor(onPanic)),
	}
	if tlsConfig != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(tlsConfig)))
	}
	return grpc.NewServer(opts...), metrics
}

// quiet methods are polled by probes and not worth a log line each.
func quiet(method string) bool { return strings.HasPrefix(method, "/grpc.health.v1.") }

func logCall(ctx context.Context, log *slog.Logger, method string, start time.Time, err error) {
	code := status.Code(err)
	level := slog.LevelDebug
	switch code {
	case codes.OK, codes.NotFound, codes.Canceled:
	case codes.Internal, codes.Unknown, codes.DataLoss, codes.Unavailable:
		level = slog.LevelWarn
	default:
		level = slog.LevelInfo
	}
	if quiet(method) && code == codes.OK {
		return
	}
	attrs := []any{"method", method, "code", code.String(), "duration", time.Since(start)}
	if err != nil {
		attrs = append(attrs, "err", status.Convert(err).Message())
	}
	log.Log(ctx, level, "grpc call", attrs...)
}

func unaryLog(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		logCall(ctx, log, info.FullMethod, start, err)
		return resp, err
	}
}

func streamLog(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := time.Now()
		err := handler(srv, ss)
		logCall(ss.Context(), log, info.FullMethod, start, err)
		return err
	}
}

// Package rest is the HTTP edge: the grpc-gateway routes of the services,
// the OpenAPI document, casync's HTTP store (under /casync/), Prometheus metrics and health endpoints. It talks to
// the services through a gRPC connection (the store's chunks through the
// typed client, package client), so it runs the same in one process with
// them or as its own deployment.
package rest

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/encoding/protojson"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/client"
	"github.com/chunkbridge/chunkbridge/gateway/casync"
)

// Options choose what the handler serves.
type Options struct {
	// API mounts the REST routes and /openapi.json; without it only the
	// operational endpoints (/metrics, /healthz, /readyz) are served.
	API bool
	// Gatherer provides /metrics.
	Gatherer prometheus.Gatherer
	Log      *slog.Logger
	// Limits bounds the REST routes' bodies (MaxJSONBody); NewServer
	// applies its timeouts.
	Limits Limits
	// Chunks is the casync HTTP store's client of the chunk service
	// (default client.NewGRPC over conn; in the services' own process,
	// client.NewLocal).
	Chunks *client.Chunks
	// Version is the build's version, served as /openapi.json's
	// info.version (default "dev").
	Version string
}

// NewHandler returns the HTTP handler over conn.
func NewHandler(ctx context.Context, conn *grpc.ClientConn, opts Options) (http.Handler, error) {
	limits := opts.Limits.withDefaults()
	mux := http.NewServeMux()
	health := healthpb.NewHealthClient(conn)

	// Liveness: the process answers. Restarting it would not fix storage.
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	// Readiness: the services behind conn report SERVING, which they do
	// only while storage is reachable.
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		switch {
		case err != nil:
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: chunk service health check failed: %v\n", err)
		case resp.GetStatus() != healthpb.HealthCheckResponse_SERVING:
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: chunk service is %s (storage unreachable?)\n", resp.GetStatus())
		default:
			fmt.Fprintln(w, "ready")
		}
	})
	if opts.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{}))
	}
	if !opts.API {
		return mux, nil
	}

	doc, err := openAPI(opts.Version)
	if err != nil {
		return nil, err
	}
	mux.HandleFunc("GET /openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(doc)
	})
	gw := runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &runtime.JSONPb{
			// Empty lists are written as [] so clients need no special case.
			MarshalOptions:   protojson.MarshalOptions{EmitUnpopulated: true},
			UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: true},
		}),
		runtime.WithErrorHandler(errorHandler(limits.MaxJSONBody)),
		runtime.WithRoutingErrorHandler(routingErrorHandler),
	)
	if err := chunkbridgev1.RegisterChunkServiceHandler(ctx, gw, conn); err != nil {
		return nil, fmt.Errorf("register ChunkService routes: %w", err)
	}
	if err := chunkbridgev1.RegisterCatalogServiceHandler(ctx, gw, conn); err != nil {
		return nil, fmt.Errorf("register CatalogService routes: %w", err)
	}
	if err := chunkbridgev1.RegisterAdminServiceHandler(ctx, gw, conn); err != nil {
		return nil, fmt.Errorf("register AdminService routes: %w", err)
	}
	mux.Handle("/v1/", limitJSON(limits.MaxJSONBody, gw, gw))
	chunks := opts.Chunks
	if chunks == nil {
		chunks = client.NewGRPC(conn)
	}
	mux.Handle("/casync/", http.StripPrefix("/casync", &casync.HTTPStore{
		Chunks:  chunks,
		Catalog: client.NewCatalogGRPC(conn),
		Log:     opts.Log,
	}))
	return mux, nil
}

// openAPI returns the generated document with the title and version of
// this build: protoc-gen-openapiv2 names it after the first proto file
// and says "version not set", and the version is known only at build time.
func openAPI(version string) ([]byte, error) {
	if version == "" {
		version = "dev"
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(chunkbridgev1.OpenAPI, &doc); err != nil {
		return nil, fmt.Errorf("openapi document: %w", err)
	}
	info, err := json.Marshal(map[string]string{
		"title":       "chunkbridge",
		"version":     version,
		"description": "REST routes of chunkbridge's chunk, catalog and admin services (gRPC through grpc-gateway).",
	})
	if err != nil {
		return nil, err
	}
	doc["info"] = info
	return json.MarshalIndent(doc, "", "  ")
}

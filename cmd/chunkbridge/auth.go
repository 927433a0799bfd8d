package main

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// securityFlags are the optional bearer token and TLS settings shared by
// every listener and by connections to the chunk service.
type securityFlags struct {
	tokenFile        string
	tlsCert, tlsKey  string
	chunkServiceTLS  bool
	chunkServiceCA   string
	chunkServiceName string
}

// loadToken reads the token file; "" when auth is off.
func (f securityFlags) loadToken() (string, error) {
	if f.tokenFile == "" {
		return "", nil
	}
	b, err := os.ReadFile(f.tokenFile)
	if err != nil {
		return "", fmt.Errorf("--auth-token-file: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if len(token) < 16 {
		return "", fmt.Errorf("--auth-token-file %s: the token must have at least 16 characters", f.tokenFile)
	}
	return token, nil
}

// serverTLS returns the listeners' TLS config, or nil without --tls-cert.
func (f securityFlags) serverTLS() (*tls.Config, error) {
	if f.tlsCert == "" && f.tlsKey == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(f.tlsCert, f.tlsKey)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// clientCredentials are the transport credentials for the chunk service.
func (f securityFlags) clientCredentials() (credentials.TransportCredentials, error) {
	if !f.chunkServiceTLS {
		return insecure.NewCredentials(), nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: f.chunkServiceName}
	if f.chunkServiceCA != "" {
		pem, err := os.ReadFile(f.chunkServiceCA)
		if err != nil {
			return nil, fmt.Errorf("--chunk-service-ca: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--chunk-service-ca %s: no PEM certificate found", f.chunkServiceCA)
		}
	}
	return credentials.NewTLS(cfg), nil
}

// open paths need no token: probes and scrapers carry none.
func openPath(path string) bool {
	return path == "/healthz" || path == "/readyz" || path == "/metrics"
}

func tokenMatches(header, token string) bool {
	got, ok := strings.CutPrefix(header, "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1
}

// requireToken wraps an HTTP handler: 401 without the bearer token, except
// on the open paths.
func requireToken(token string, next http.Handler) http.Handler {
	if token == "" {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !openPath(r.URL.Path) && !tokenMatches(r.Header.Get("Authorization"), token) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="chunkbridge"`)
			http.Error(w, "unauthenticated: send Authorization: Bearer <token>", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

var errUnauthenticated = status.Error(codes.Unauthenticated, "unauthenticated: send the authorization metadata \"Bearer <token>\"")

func checkToken(ctx context.Context, method, token string) error {
	if token == "" || strings.HasPrefix(method, "/grpc.health.v1.") {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if tokenMatches(v, token) {
			return nil
		}
	}
	return errUnauthenticated
}

// tokenInterceptors require the token on every RPC but health checks.
func tokenInterceptors(token string) (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := checkToken(ctx, info.FullMethod, token); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}, func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := checkToken(ss.Context(), info.FullMethod, token); err != nil {
				return err
			}
			return h(srv, ss)
		}
}

// bearer sends the token with every call to the chunk service.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

// RequireTransportSecurity is false: the in-process loop and plain
// in-cluster connections carry the token too; TLS is the operator's choice.
func (b bearer) RequireTransportSecurity() bool { return false }

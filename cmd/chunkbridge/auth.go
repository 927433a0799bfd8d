package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/gateway/casync"
	"github.com/chunkbridge/chunkbridge/gateway/rest"
	"github.com/chunkbridge/chunkbridge/services/apierr"
)

// securityFlags are the optional bearer token and TLS settings shared by
// every listener and by connections to the chunk service.
type securityFlags struct {
	credentialsFile  string
	tokenFile        string
	tlsCert, tlsKey  string
	tlsClientCA      string
	chunkServiceTLS  bool
	chunkServiceCA   string
	chunkServiceName string
}

// readTokenFile reads a token from path, named by the flag or variable
// that gave it: the file's text without surrounding white space.
func readTokenFile(name, path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("%s %s is empty", name, path)
	}
	return token, nil
}

// loadToken reads the token file; "" when auth is off.
func (f securityFlags) loadToken() (string, error) {
	if f.tokenFile == "" {
		return "", nil
	}
	token, err := readTokenFile("--auth-token-file", f.tokenFile)
	if err != nil {
		return "", err
	}
	if len(token) < 16 {
		return "", fmt.Errorf("--auth-token-file %s: the token must have at least 16 characters", f.tokenFile)
	}
	return token, nil
}

// loadCAPool reads the PEM certificates of path, named by the flag that
// gave it.
func loadCAPool(flag, path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s %s: no PEM certificate found", flag, path)
	}
	return pool, nil
}

// serverTLS returns the listeners' TLS config, or nil without --tls-cert.
func (f securityFlags) serverTLS() (*tls.Config, error) {
	if f.tlsCert == "" && f.tlsKey == "" {
		if f.tlsClientCA != "" {
			return nil, usagef("--tls-client-ca needs --tls-cert and --tls-key: client certificates are sent only over TLS")
		}
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(f.tlsCert, f.tlsKey)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if f.tlsClientCA != "" {
		if cfg.ClientCAs, err = loadCAPool("--tls-client-ca", f.tlsClientCA); err != nil {
			return nil, err
		}
		// Optional: token callers need no certificate; one that is sent
		// must verify.
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return cfg, nil
}

// pmxTLS returns the PMXBCKUP listener's TLS config: --pmx-tls-cert,
// --pmx-tls-key and --pmx-tls-client-ca, each defaulting to its --tls-*
// flag; shared is the other listeners' config, used when none is given.
func (f serveFlags) pmxTLS(shared *tls.Config) (*tls.Config, error) {
	if f.pmxTLSCert == "" && f.pmxTLSKey == "" && f.pmxTLSClientCA == "" {
		return shared, nil
	}
	or := func(a, b string) string {
		if a != "" {
			return a
		}
		return b
	}
	sec := securityFlags{tlsCert: or(f.pmxTLSCert, f.tlsCert), tlsKey: or(f.pmxTLSKey, f.tlsKey), tlsClientCA: or(f.pmxTLSClientCA, f.tlsClientCA)}
	if sec.tlsCert == "" && sec.tlsKey == "" {
		return nil, usagef("--pmx-tls-client-ca needs TLS on the PMXBCKUP listener: give --pmx-tls-cert/--pmx-tls-key or --tls-cert/--tls-key")
	}
	cfg, err := sec.serverTLS()
	if err != nil {
		return nil, fmt.Errorf("PMXBCKUP listener (--pmx-tls-cert, --pmx-tls-key, --pmx-tls-client-ca): %w", err)
	}
	return cfg, nil
}

// pmxAuthenticate authenticates PMXBCKUP connections. The protocol has no
// credential, so the TLS client certificate, verified in the handshake
// against the client CA (withCA: one is configured), names the principal
// by its subject. The gateway answers a refusal with its reason and
// audits it.
func (a *access) pmxAuthenticate(withCA bool) func(*tls.ConnectionState) (auth.Principal, error) {
	return func(state *tls.ConnectionState) (auth.Principal, error) {
		switch {
		case state == nil:
			return auth.Principal{}, errors.New("PMXBCKUP clients authenticate with a TLS client certificate, and this gateway serves no TLS (--pmx-tls-cert/--pmx-tls-key)")
		case !withCA:
			return auth.Principal{}, errors.New("PMXBCKUP clients authenticate with a TLS client certificate, and this gateway has no client CA to verify one (--pmx-tls-client-ca)")
		case len(state.VerifiedChains) == 0 || len(state.VerifiedChains[0]) == 0:
			return auth.Principal{}, errors.New("no client certificate: connect with a certificate signed by the gateway's client CA whose subject is a principal's cert_subject (chunkbridge pmx --cert FILE --key FILE)")
		}
		subject := state.VerifiedChains[0][0].Subject.String()
		p, err := a.reg.Subject(subject)
		if err != nil {
			return p, fmt.Errorf("the client certificate's subject %q is no principal's cert_subject in the credentials file", subject)
		}
		return p, nil
	}
}

// clientCredentials are the transport credentials for the chunk service.
func (f securityFlags) clientCredentials() (credentials.TransportCredentials, error) {
	if !f.chunkServiceTLS {
		return insecure.NewCredentials(), nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: f.chunkServiceName}
	if f.chunkServiceCA != "" {
		var err error
		if cfg.RootCAs, err = loadCAPool("--chunk-service-ca", f.chunkServiceCA); err != nil {
			return nil, err
		}
	}
	return credentials.NewTLS(cfg), nil
}

// open paths need no credential: probes and scrapers carry none.
func openPath(path string) bool {
	return path == "/healthz" || path == "/readyz" || path == "/metrics"
}

// access is who may call this process's listeners, and the credential it
// sends to the chunk service.
type access struct {
	// reg authenticates callers; nil when no credentials are configured:
	// every caller is then auth.Anonymous (the single trusted user).
	reg *auth.Registry
	// hop is the token sent to the chunk service: an admin principal's,
	// so that a gateway may act for the clients it authenticated.
	hop string
	log *slog.Logger
}

// quotas are a tenant's quotas in the credentials file (read at each
// call: a reload takes effect at once); none without one.
func (a *access) quotas(tenant string) (logical, stored int64) {
	if a == nil || a.reg == nil {
		return 0, 0
	}
	t, _ := a.reg.Tenant(tenant)
	return t.LogicalQuota, t.StoredQuota
}

// tenants lists the credentials file's tenants; nil without one.
func (a *access) tenants() []auth.Tenant {
	if a == nil || a.reg == nil {
		return nil
	}
	return a.reg.Tenants()
}

// access builds the listeners' authentication from --credentials-file and
// --auth-token-file. The token file's token is an admin principal
// ("token-file"), and the token a gateway sends to the chunk service.
// With services in this process and no token, they get an internal one.
func (f securityFlags) access(log *slog.Logger, services bool) (*access, error) {
	token, err := f.loadToken()
	if err != nil {
		return nil, err
	}
	a := &access{hop: token, log: log}
	if f.credentialsFile != "" {
		if a.reg, err = auth.Load(f.credentialsFile, log); err != nil {
			return nil, fmt.Errorf("--credentials-file: %w", err)
		}
	}
	if token != "" {
		if a.reg == nil {
			a.reg = auth.Static(nil)
		}
		a.reg.AddToken(token, auth.Principal{Name: "token-file", Tenant: auth.DefaultTenant, Role: auth.RoleAdmin})
	}
	if a.reg != nil && a.hop == "" {
		if !services {
			return nil, fmt.Errorf("--credentials-file needs --auth-token-file too: the token of an admin principal this gateway uses to call the chunk service for its clients")
		}
		a.hop, _ = auth.NewToken()
		a.reg.AddToken(a.hop, auth.Principal{Name: "internal", Tenant: auth.DefaultTenant, Role: auth.RoleAdmin})
	}
	return a, nil
}

// token authenticates an Authorization header: "Bearer TOKEN", or HTTP
// Basic with the token as password (casync and desync can only send a
// URL's user:password). A Basic user name, when given, must be the
// principal's.
func (a *access) token(header string) (auth.Principal, error) {
	if tok, ok := strings.CutPrefix(header, "Bearer "); ok {
		return a.reg.Token(tok)
	}
	if b64, ok := strings.CutPrefix(header, "Basic "); ok {
		raw, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			return auth.Principal{}, fmt.Errorf("malformed Basic credentials")
		}
		user, pass, _ := strings.Cut(string(raw), ":")
		p, err := a.reg.Token(pass)
		if err != nil {
			return p, err
		}
		if user != "" && user != p.Name {
			return auth.Principal{}, fmt.Errorf("the user name %q is not the token's principal", user)
		}
		return p, nil
	}
	if header == "" {
		return auth.Principal{}, fmt.Errorf("no credential")
	}
	return auth.Principal{}, fmt.Errorf("unsupported Authorization scheme; send Bearer TOKEN, or Basic with the token as password")
}

// refused logs one audit line for a refused call; never the secret.
func (a *access) refused(listener, what, principal string, err error) {
	a.log.Warn("access refused", "listener", listener, "call", what, "principal", principal, "reason", err.Error())
}

// casync makes the casync TCP gateway authenticate the token of each
// preamble (version 2) and audit its refusals. Without credentials it
// serves every caller, as auth.Anonymous.
func (a *access) casync(srv *casync.Server) {
	a.casyncHandler(srv.Handler)
	if a.reg != nil {
		srv.Authenticate = a.reg.Token
		srv.Credentials = a.reg
	}
}

// casyncHandler audits the sessions h refuses.
func (a *access) casyncHandler(h *casync.Handler) {
	h.Audit = func(principal string, args casync.Args, err error) {
		a.refused("casync", casyncCall(args), principal, err)
	}
}

// casyncCall names a casync session in audit lines: "push images/x.caibx".
func casyncCall(args casync.Args) string {
	call := "pull"
	if args.Push {
		call = "push"
	}
	if args.Index != "" {
		call += " " + args.Index
	}
	return call
}

// remotePrincipal is the principal casync-remote acts as: the one named by
// --principal in the credentials file. With neither, the session acts
// with the hop token's own rights, as before credentials existed: whoever
// may run casync-remote may read that token anyway. A name without a
// file, a file without a name, and a name the file lacks are refused.
func (a *access) remotePrincipal(ctx context.Context, file, name string, args casync.Args) (context.Context, error) {
	call := casyncCall(args)
	var err error
	switch {
	case name == "" && file == "":
		return ctx, nil
	case file == "":
		err = fmt.Errorf("--principal %s needs %s, the credentials file that gives its tenant and role", name, envName("credentials-file"))
	case name == "":
		err = fmt.Errorf("%s is set, so name the principal this ssh key acts as: --principal NAME (in authorized_keys: command=\"chunkbridge-casync-remote --principal NAME\") or %s", envName("credentials-file"), envName("principal"))
	default:
		var p auth.Principal
		if p, err = a.reg.ByName(name); err == nil {
			return auth.NewContext(ctx, p), nil
		}
		err = fmt.Errorf("--principal %s: %w in %s", name, err, envName("credentials-file"))
	}
	a.refused("casync-remote", call, name, err)
	return nil, fmt.Errorf("casync-remote: %w", err)
}

// requireHTTP wraps an HTTP handler: 401 without a valid credential,
// except on the open paths; the principal travels in the request context.
func (a *access) requireHTTP(next http.Handler) http.Handler {
	if a.reg == nil {
		// Everyone is the admin: only a client that is no web page may
		// call. A browser marks the requests a page makes (Origin,
		// Sec-Fetch-Site), and a cross-site form POST to /v1/prune or a
		// DNS-rebound page would otherwise act as the admin.
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			site := r.Header.Get("Sec-Fetch-Site")
			if !openPath(r.URL.Path) && (r.Header.Get("Origin") != "" || (site != "" && site != "none")) {
				a.refused("http", r.Method+" "+r.URL.Path, "", errors.New("a request from a web page, without credentials configured"))
				http.Error(w, "forbidden: without credentials this server serves no requests made by web pages (Origin or Sec-Fetch-Site)", http.StatusForbidden)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if openPath(r.URL.Path) {
			next.ServeHTTP(w, r)
			return
		}
		p, err := a.token(r.Header.Get("Authorization"))
		if err != nil {
			a.refused("http", r.Method+" "+r.URL.Path, "", err)
			w.Header().Set("WWW-Authenticate", `Basic realm="chunkbridge", charset="UTF-8"`)
			w.Header().Add("WWW-Authenticate", `Bearer realm="chunkbridge"`)
			http.Error(w, "unauthenticated: send Authorization: Bearer <token>, or Basic auth with the token as password ("+err.Error()+")", http.StatusUnauthorized)
			return
		}
		// The credential stops here: the principal travels in the context
		// (and on to the services as auth.Forward metadata), never as a
		// second Authorization the REST routes would pass on.
		r = r.WithContext(auth.NewContext(r.Context(), p))
		r.Header = r.Header.Clone()
		r.Header.Del("Authorization")
		// grpc-gateway turns Grpc-Metadata-* headers into metadata: a
		// client must not add a credential or a principal that way.
		for k := range r.Header {
			if name, ok := strings.CutPrefix(strings.ToLower(k), "grpc-metadata-"); ok && (name == "authorization" || name == auth.ForwardKey) {
				r.Header.Del(k)
			}
		}
		next.ServeHTTP(w, r)
	})
}

// admitDoor is requireHTTP's decision for the chunk reads rest.Door
// answers itself: the same credential check, and false (net/http then
// answers, with the refusal and its audit line) wherever requireHTTP
// would refuse.
func (a *access) admitDoor(ctx context.Context, cred rest.DoorCredentials) (context.Context, bool) {
	if a.reg == nil {
		if cred.Origin != "" || (cred.SecFetchSite != "" && cred.SecFetchSite != "none") {
			return nil, false
		}
		return ctx, true
	}
	p, err := a.token(cred.Authorization)
	if err != nil {
		return nil, false
	}
	return auth.NewContext(ctx, p), true
}

// grpcPrincipal authenticates a call: a verified TLS client certificate,
// else the authorization metadata. An admin may name the principal it
// acts for (a gateway for its client).
func (a *access) grpcPrincipal(ctx context.Context) (auth.Principal, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	var p auth.Principal
	err := errors.New("no credential")
	if pr, ok := peer.FromContext(ctx); ok {
		if ti, ok := pr.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 && len(ti.State.VerifiedChains[0]) > 0 {
			p, err = a.reg.Subject(ti.State.VerifiedChains[0][0].Subject.String())
		}
	}
	if err != nil {
		if v := md.Get("authorization"); len(v) > 0 {
			p, err = a.token(v[len(v)-1])
		}
	}
	if err != nil {
		return p, status.Errorf(codes.Unauthenticated, "unauthenticated: send the authorization metadata \"Bearer <token>\" or a client certificate (%v)", err)
	}
	fwd, ok, ferr := auth.Forwarded(md)
	switch {
	case ferr != nil:
		return p, status.Error(codes.InvalidArgument, ferr.Error())
	case !ok:
		return p, nil
	case !p.Allows(auth.Admin):
		return p, status.Errorf(codes.PermissionDenied, "%s may not act for another principal: that needs the admin role", p.Name)
	}
	return fwd, nil
}

// authorize authenticates a gRPC call and puts its principal in the
// context. The services check each call's action themselves; the
// AdminService is for admins only, checked here. Health stays open.
func (a *access) authorize(ctx context.Context, method string) (context.Context, error) {
	if a.reg == nil || strings.HasPrefix(method, "/grpc.health.v1.") {
		return ctx, nil
	}
	p, err := a.grpcPrincipal(ctx)
	if err != nil {
		a.refused("grpc", method, p.Name, err)
		return nil, err
	}
	ctx = auth.NewContext(ctx, p)
	if strings.HasPrefix(method, "/chunkbridge.v1.AdminService/") {
		if err := auth.Check(ctx, auth.Admin, "the store"); err != nil {
			a.refused("grpc", method, p.Name, err)
			return nil, apierr.Status(err)
		}
		a.log.Info("admin call", "listener", "grpc", "call", method, "principal", p.Name, "tenant", p.Tenant)
	}
	return ctx, nil
}

type authedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s authedStream) Context() context.Context { return s.ctx }

// interceptors authenticate every RPC but health checks.
func (a *access) interceptors() (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			ctx, err := a.authorize(ctx, info.FullMethod)
			if err != nil {
				return nil, err
			}
			return h(ctx, req)
		}, func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			ctx, err := a.authorize(ss.Context(), info.FullMethod)
			if err != nil {
				return err
			}
			return h(srv, authedStream{ss, ctx})
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

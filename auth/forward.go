package auth

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// A gateway authenticates its own clients and calls the chunk service with
// its own (admin) credential; ForwardKey names the client it acts for, so
// that the services authorise the client, not the gateway. The services
// honour it only from an admin principal (see Forwarded).
const ForwardKey = "chunkbridge-principal"

// forward adds the principal ctx carries, if a listener authenticated
// one, to the outgoing metadata.
func forward(ctx context.Context) context.Context {
	p, ok := Authenticated(ctx)
	if !ok {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, ForwardKey, ForwardValue(p))
}

// ForwardValue is how p is named in the ForwardKey metadata, and in the
// principal field of a ReadChunks request.
func ForwardValue(p Principal) string {
	return p.Name + ";" + p.Tenant + ";" + p.Role.String() + ";" + p.DedupDomain()
}

// ForwardUnary and ForwardStream are client interceptors for connections
// to the chunk service: every call carries the principal it is made for.
func ForwardUnary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return invoker(forward(ctx), method, req, reply, cc, opts...)
}

// ForwardStream: see ForwardUnary.
func ForwardStream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return streamer(forward(ctx), desc, cc, method, opts...)
}

// Forwarded returns the principal a caller acts for, if it named one.
// The caller must be checked to be an admin before it is believed.
func Forwarded(md metadata.MD) (Principal, bool, error) {
	v := md.Get(ForwardKey)
	if len(v) == 0 {
		return Principal{}, false, nil
	}
	p, err := ParseForwarded(v[len(v)-1])
	return p, err == nil, err
}

// ParseForwarded reads a ForwardValue. The caller that sent it must be
// checked to be an admin before it is believed.
func ParseForwarded(v string) (Principal, error) {
	f := strings.Split(v, ";")
	if len(f) == 3 { // from a gateway that predates dedup domains
		if f[1] != DefaultTenant {
			// Its tenant's domain is unknown here: guessing would bind the
			// tenant to the wrong chunk space for good.
			return Principal{}, fmt.Errorf("%s metadata %q names no dedup domain for tenant %s: the gateway predates tenants; upgrade it", ForwardKey, v, f[1])
		}
		f = append(f, DefaultDomain)
	}
	if len(f) != 4 || !principalRE.MatchString(f[0]) || !nameRE.MatchString(f[1]) || !nameRE.MatchString(f[3]) {
		return Principal{}, fmt.Errorf("malformed %s metadata %q", ForwardKey, v)
	}
	role, err := ParseRole(f[2])
	if err != nil {
		return Principal{}, fmt.Errorf("%s metadata: %w", ForwardKey, err)
	}
	return Principal{Name: f[0], Tenant: f[1], Role: role, Domain: f[3]}, nil
}

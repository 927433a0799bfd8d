// Package auth is who may do what: principals with a role, read from one
// credentials file, and the checks every listener and service makes.
//
// A principal is authenticated by a listener (a bearer token, HTTP Basic
// with the token as password, the casync preamble's token, a TLS client
// certificate) and travels in the context. Services authorise each call
// with Check. Without a credentials file every caller is Anonymous, which
// may do everything: the trusted single-user setup (`make run`).
//
// docs/auth.md describes the file, the roles and each listener.
package auth

import (
	"context"
	"fmt"

	"github.com/chunkbridge/chunkbridge/services/apierr"
)

// Role is what a principal may do. Each role allows what the ones below
// it allow.
type Role uint8

// The roles, weakest first.
const (
	RoleNone Role = iota
	// RoleRead lists, pulls and restores.
	RoleRead
	// RoleAppend adds: new chunks, new indexes and snapshot files. It never
	// replaces or deletes, so ransomware holding a backup client's token
	// cannot destroy what was backed up.
	RoleAppend
	// RoleWrite also replaces and deletes indexes and snapshots.
	RoleWrite
	// RoleAdmin also collects garbage, verifies, prunes and reads the
	// store's statistics, and may act for another principal (gateways).
	RoleAdmin
)

var roleNames = [...]string{"none", "read", "append", "write", "admin"}

func (r Role) String() string {
	if int(r) < len(roleNames) {
		return roleNames[r]
	}
	return fmt.Sprintf("role(%d)", r)
}

// ParseRole reads a role's name.
func ParseRole(s string) (Role, error) {
	for i, n := range roleNames {
		if i > 0 && n == s {
			return Role(i), nil
		}
	}
	return RoleNone, fmt.Errorf("role %q: want read, append, write or admin", s)
}

// Action is what a call does, in the terms roles are defined in.
type Action uint8

// The actions; a role allows an action of its own rank or lower.
const (
	Read    Action = Action(RoleRead)
	Append  Action = Action(RoleAppend)
	Replace Action = Action(RoleWrite) // replace or delete
	Admin   Action = Action(RoleAdmin)
)

var actionNames = map[Action]string{Read: "read", Append: "add", Replace: "replace or delete", Admin: "administer"}

func (a Action) String() string { return actionNames[a] }

// Principal is an authenticated caller.
type Principal struct {
	Name   string
	Tenant string
	Role   Role
	// Domain is the tenant's dedup domain: the chunk space its uploads
	// go to and its files read from. Empty means DefaultDomain.
	Domain string
}

// DedupDomain is p's dedup domain, DefaultDomain when none is set.
func (p Principal) DedupDomain() string {
	if p.Domain == "" {
		return DefaultDomain
	}
	return p.Domain
}

// DefaultTenant owns everything stored before tenants existed, and is
// every principal's tenant when the file names none.
const DefaultTenant = "default"

// DefaultDomain is the dedup domain of the chunks stored before domains
// existed; the default tenant's, always.
const DefaultDomain = "default"

// Anonymous is the caller when no credentials file is configured.
var Anonymous = Principal{Name: "anonymous", Tenant: DefaultTenant, Role: RoleAdmin, Domain: DefaultDomain}

// Allows reports whether p may do a.
func (p Principal) Allows(a Action) bool { return p.Role >= Role(a) }

func (p Principal) String() string {
	return fmt.Sprintf("%s (tenant %s, role %s)", p.Name, p.Tenant, p.Role)
}

type ctxKey struct{}

// NewContext returns ctx carrying p.
func NewContext(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, ctxKey{}, p)
}

// FromContext returns the principal ctx carries, or Anonymous: a context
// no listener authenticated comes from inside the process (a test, the
// CLI's own services), where auth is off.
func FromContext(ctx context.Context) Principal {
	if p, ok := ctx.Value(ctxKey{}).(Principal); ok {
		return p
	}
	return Anonymous
}

// Check returns nil when the context's principal may do a to what, else
// an apierr.ErrPermission error naming both.
func Check(ctx context.Context, a Action, what string) error {
	p := FromContext(ctx)
	if p.Allows(a) {
		return nil
	}
	return fmt.Errorf("%w: %s may not %s %s: its role %s allows %s", apierr.ErrPermission, p.Name, a, what, p.Role, allowed(p.Role))
}

func allowed(r Role) string {
	switch r {
	case RoleRead:
		return "reading only"
	case RoleAppend:
		return "reading and adding, never replacing or deleting"
	case RoleWrite:
		return "reading, adding, replacing and deleting, not administration"
	}
	return "nothing"
}

// Authenticated returns the principal a listener put in ctx; false when
// none did.
func Authenticated(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(ctxKey{}).(Principal)
	return p, ok
}

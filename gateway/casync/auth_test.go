package casync_test

import (
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/format/caproto"
	"github.com/chunkbridge/chunkbridge/gateway/casync"
)

// dialToken is dial with a version 2 preamble carrying token, even "".
func (h *harness) dialToken(t *testing.T, token string, words ...string) *client {
	t.Helper()
	return h.dialWith(t, func(w io.Writer, words []string) error { return casync.WritePreamble2(w, token, words) }, words)
}

// With Authenticate set, a session needs a token the registry knows, and
// runs as its principal: a read principal may pull, not push; an append
// one may not replace an index. Each refusal is audited.
func TestGatewayAuthenticates(t *testing.T) {
	reg := auth.Static(map[string]auth.Principal{
		"read-token-0123456789":   {Name: "reader", Tenant: auth.DefaultTenant, Role: auth.RoleRead},
		"append-token-0123456789": {Name: "appender", Tenant: auth.DefaultTenant, Role: auth.RoleAppend},
		"write-token-0123456789":  {Name: "writer", Tenant: auth.DefaultTenant, Role: auth.RoleWrite},
	})
	var mu sync.Mutex
	var audited []string
	h := newHarnessWith(t, func(srv *casync.Server) {
		srv.Authenticate = reg.Token
		srv.Handler.Audit = func(principal string, args casync.Args, err error) {
			mu.Lock()
			audited = append(audited, principal+" "+args.Index)
			mu.Unlock()
		}
	})
	h.token = "append-token-0123456789"
	h.push(t, "present.caibx", makeChunks(2)) // a new index
	h.token = "write-token-0123456789"
	h.push(t, "present.caibx", makeChunks(3)) // replaced
	h.token = ""
	push := []string{"push", "-", "-", "new.caibx", "/default.castr"}

	h.dial(t, push...).expectAbort(syscall.EACCES, "set CHUNKBRIDGE_TOKEN")
	h.dialToken(t, "", push...).expectAbort(syscall.EACCES, "version 2 without a token")
	h.dialToken(t, "wrong-token-0123456789", push...).expectAbort(syscall.EACCES, "the token was refused")
	h.dialToken(t, "read-token-0123456789", push...).expectAbort(syscall.EACCES, "reader may not add")
	h.dialToken(t, "append-token-0123456789", "push", "-", "-", "present.caibx", "/default.castr").
		expectAbort(syscall.EEXIST, "present.caibx already exists, and appender may not replace it")

	// A read principal pulls.
	c := h.dialToken(t, "read-token-0123456789", "pull", "-", "-", "present.caibx", "/default.castr")
	c.send(&caproto.Hello{Features: caproto.PullIndex | caproto.PullChunks})
	if _, ok := c.next().(*caproto.Hello); !ok {
		t.Fatal("no HELLO for a read principal's pull")
	}
	if _, ok := c.next().(*caproto.Index); !ok {
		t.Fatal("no INDEX for a read principal's pull")
	}

	mu.Lock()
	defer mu.Unlock()
	if got := strings.Join(audited, ","); got != " new.caibx, new.caibx, new.caibx,reader new.caibx,appender present.caibx" {
		t.Errorf("audited %q", got)
	}
}

// A preamble of a later version gets an ABORT saying so.
func TestPreambleVersionRefused(t *testing.T) {
	h := newHarness(t)
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	c.Write([]byte("\x00CBP\x07whatever"))
	(&client{t: t, conn: c, r: caproto.NewReader(c, 0)}).expectAbort(syscall.EPROTONOSUPPORT, "preamble version 7")
}

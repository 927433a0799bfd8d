package main

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/chunkbridge/chunkbridge/auth"
)

// storeFiles maps every file under the store to its content.
func storeFiles(t *testing.T, store string) map[string][]byte {
	t.Helper()
	m := map[string][]byte{}
	filepath.WalkDir(store, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			m[p], _ = os.ReadFile(p)
		}
		return nil
	})
	return m
}

// Stock casync against both casync listeners with credentials on: over
// TCP (the token in the preamble, from CHUNKBRIDGE_TOKEN or
// CHUNKBRIDGE_TOKEN_FILE) and over ssh (casync-remote as a key's forced
// command naming the principal). Each case is served or refused with its
// reason on casync's stderr, and a refused push stores nothing.
func TestCasyncAccessControl(t *testing.T) {
	needCasync(t)
	dir := t.TempDir()
	creds, tok := principals(t, dir)
	hop := filepath.Join(dir, "hop-token")
	hopToken, _ := auth.NewToken()
	os.WriteFile(hop, []byte(hopToken+"\n"), 0o600)
	store := t.TempDir()
	p := start(t, nil, "serve", "all", "--store", store, "--credentials-file", creds, "--auth-token-file", hop)
	waitHealth(t, p.conn(t), healthpb.HealthCheckResponse_SERVING)
	tokenFile := filepath.Join(dir, "write-token")
	os.WriteFile(tokenFile, []byte(tok["write"]+"\n"), 0o600)
	wrong, _ := auth.NewToken()

	remote := filepath.Join(t.TempDir(), "chunkbridge-casync-remote")
	if err := os.Symlink(binary, remote); err != nil {
		t.Fatal(err)
	}
	type listener struct {
		name string
		as   func(t *testing.T, who string) *casyncEnv // who: a role, "none" or "wrong"
	}
	listeners := []listener{
		{"tcp", func(t *testing.T, who string) *casyncEnv {
			c := tcpCasync(t, p)
			switch who {
			case "none":
			case "wrong":
				c.env = append(c.env, "CHUNKBRIDGE_TOKEN="+wrong)
			case "write": // from a file
				c.env = append(c.env, "CHUNKBRIDGE_TOKEN_FILE="+tokenFile)
			default:
				c.env = append(c.env, "CHUNKBRIDGE_TOKEN="+tok[who])
			}
			return c
		}},
		{"ssh", func(t *testing.T, who string) *casyncEnv {
			forced := remote
			switch who {
			case "none":
			case "wrong":
				forced += " --principal nobody"
			default:
				forced += " --principal " + who + "-user"
			}
			return &casyncEnv{t: t, env: []string{"CASYNC_SSH_PATH=" + fakeSSH(t, forced),
				"CHUNKBRIDGE_CHUNK_SERVICE=" + p.grpc, "CHUNKBRIDGE_CREDENTIALS_FILE=" + creds, "CHUNKBRIDGE_AUTH_TOKEN_FILE=" + hop}}
		}},
	}
	first, second := blob(t, 11, 300_000), blob(t, 12, 300_000)
	for _, l := range listeners {
		t.Run(l.name, func(t *testing.T) {
			index := "srv:/" + l.name + "/a.caibx"
			other := "srv:/" + l.name + "/b.caibx"
			extract := func(who string) string {
				out := filepath.Join(t.TempDir(), "out")
				l.as(t, who).run("extract", index, out)
				return out
			}
			// refused runs a push that must fail saying say, and checks
			// that the store did not change.
			refused := func(who, name, src, say string) {
				t.Helper()
				before := storeFiles(t, store)
				out := l.as(t, who).runFail("make", name, src)
				if !strings.Contains(out, say) {
					t.Errorf("%s %s: push refused without the reason %q:\n%s", l.name, who, say, out)
				}
				after := storeFiles(t, store)
				if len(after) != len(before) {
					t.Errorf("%s %s: a refused push changed the store: %d files, then %d", l.name, who, len(before), len(after))
				}
				for f, b := range before {
					if !bytes.Equal(after[f], b) {
						t.Errorf("%s %s: a refused push changed %s", l.name, who, f)
					}
				}
				t.Logf("| %s | %s | push %s | refused: %q |", l.name, who, strings.TrimPrefix(name, "srv:/"), say)
			}
			served := func(who, what string) { t.Logf("| %s | %s | %s | served |", l.name, who, what) }

			l.as(t, "append").run("make", index, first)
			served("append", "push (new index)")
			refused("append", index, second, "may not replace it")
			sameFile(t, first, extract("read"))
			served("read", "pull")
			l.as(t, "write").run("make", index, second)
			served("write", "push (replace)")
			sameFile(t, second, extract("read"))
			refused("read", other, first, "read-user may not add")
			// Another tenant: the default tenant's index is not found, and
			// the same name is its own file.
			if out := l.as(t, "other").runFail("extract", index, filepath.Join(t.TempDir(), "out")); !strings.Contains(out, "No such file or directory") {
				t.Errorf("%s: another tenant's pull of %s: want not found:\n%s", l.name, index, out)
			}
			t.Logf("| %s | other tenant | pull %s | refused: not found |", l.name, strings.TrimPrefix(index, "srv:/"))
			l.as(t, "other").run("make", index, first)
			served("other tenant", "push (its own index of the same name)")
			sameFile(t, second, extract("read"))
			out := filepath.Join(t.TempDir(), "out")
			l.as(t, "other").run("extract", index, out)
			sameFile(t, first, out)
			served("other tenant", "pull (its own)")
			if l.name == "tcp" {
				refused("none", other, first, "needs a token: set CHUNKBRIDGE_TOKEN")
				refused("wrong", other, first, "the token was refused")
			} else {
				refused("none", other, first, "name the principal this ssh key acts as")
				refused("wrong", other, first, `no principal is named "nobody"`)
			}
		})
	}
	logs := p.logs()
	for _, want := range []string{`"listener":"casync","call":"push /tcp/b.caibx","principal":"read-user"`, `"listener":"casync","call":"push /tcp/a.caibx","principal":"append-user"`, `"listener":"casync","call":"push /tcp/b.caibx","principal":""`} {
		if !strings.Contains(logs, want) {
			t.Errorf("no audit line with %s", want)
		}
	}
	for _, secret := range tok {
		if strings.Contains(logs, secret) {
			t.Error("a token was logged")
		}
	}
}

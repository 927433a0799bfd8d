package pbs_test

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/chunkbridge/chunkbridge/auth"
	"github.com/chunkbridge/chunkbridge/gateway/pbs"
)

// Gateways given one ticket key accept each other's tickets (replicas, or
// one gateway after a restart); a gateway with another key, or with none
// (a key made at start), refuses them.
func TestTicketKeyIsShared(t *testing.T) {
	creds := auth.Static(map[string]auth.Principal{"s1": {Name: "reader@pbs!r", Tenant: "default", Role: auth.RoleRead}})
	with := func(key []byte) *harness {
		return newHarnessWith(t, func(s *pbs.Server) { s.Credentials, s.TicketKey = creds, key })
	}
	key := bytes.Repeat([]byte{7}, pbs.MinTicketKey)
	issuer, replica := with(key), with(bytes.Clone(key))
	other, none := with(bytes.Repeat([]byte{8}, pbs.MinTicketKey)), with(nil)

	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := hc.Post("https://"+issuer.addr+"/api2/json/access/ticket", "application/json", strings.NewReader(`{"username":"reader@pbs!r","password":"s1"}`))
	if err != nil {
		t.Fatal(err)
	}
	var login struct {
		Data struct{ Ticket, CSRFPreventionToken string }
	}
	json.NewDecoder(resp.Body).Decode(&login)
	resp.Body.Close()
	if resp.StatusCode != 200 || login.Data.Ticket == "" {
		t.Fatalf("login: %d %+v", resp.StatusCode, login)
	}
	list := func(h *harness) int {
		t.Helper()
		req, _ := http.NewRequest("GET", "https://"+h.addr+"/api2/json/admin/datastore/default/groups", nil)
		req.AddCookie(&http.Cookie{Name: "PBSAuthCookie", Value: login.Data.Ticket})
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, c := range []struct {
		name string
		h    *harness
		want int
	}{{"the issuer", issuer, 200}, {"a replica with the key", replica, 200}, {"a gateway with another key", other, 401}, {"a gateway with no key", none, 401}} {
		if st := list(c.h); st != c.want {
			t.Errorf("%s: %d, want %d", c.name, st, c.want)
		}
	}
	// So is the CSRF token: a delete at the replica gets past it to the
	// role check (403: a read principal), not 401.
	req, _ := http.NewRequest("DELETE", "https://"+replica.addr+"/api2/json/admin/datastore/default/snapshots?backup-type=host&backup-id=web1&backup-time=1", nil)
	req.AddCookie(&http.Cookie{Name: "PBSAuthCookie", Value: login.Data.Ticket})
	req.Header.Set("CSRFPreventionToken", login.Data.CSRFPreventionToken)
	resp, err = hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("a delete with the CSRF token at the replica: %s, want 403", resp.Status)
	}
}

// A ticket key shorter than MinTicketKey is refused at start.
func TestShortTicketKeyRefused(t *testing.T) {
	srv := &pbs.Server{TLS: &tls.Config{}, TicketKey: []byte("short")}
	if err := srv.Serve(nil); err == nil || !strings.Contains(err.Error(), "at least 32") {
		t.Fatalf("a short key: %v", err)
	}
}

package main

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// Without credentials every caller is the admin, so a web page the local
// user visits must not be able to drive the REST API from the browser
// (a cross-site "simple" POST to /v1/prune, or DNS rebinding): requests
// a browser made for a page are refused; clients without Origin or
// Sec-Fetch-Site (curl, casync, desync, the CLI) are served as before.
func TestAnonymousRESTRefusesBrowserRequests(t *testing.T) {
	served := 0
	h := (&access{log: slog.New(slog.NewTextHandler(io.Discard, nil))}).requireHTTP(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { served++ }))
	for _, c := range []struct {
		name string
		hdr  map[string]string
		path string
		want int
	}{
		{"curl", nil, "/v1/prune", http.StatusOK},
		{"typed in the address bar", map[string]string{"Sec-Fetch-Site": "none"}, "/v1/stats", http.StatusOK},
		{"cross-site form post", map[string]string{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}, "/v1/prune", http.StatusForbidden},
		{"old browser, Origin only", map[string]string{"Origin": "https://evil.example"}, "/v1/prune", http.StatusForbidden},
		{"DNS rebinding (same origin)", map[string]string{"Origin": "http://rebind.example:8080", "Sec-Fetch-Site": "same-origin"}, "/v1/indexes/x", http.StatusForbidden},
		{"rebinding GET", map[string]string{"Sec-Fetch-Site": "same-origin"}, "/casync/indexes/x.caibx", http.StatusForbidden},
		{"probe", map[string]string{"Origin": "https://evil.example"}, "/healthz", http.StatusOK},
	} {
		served = 0
		req := httptest.NewRequest("POST", "http://127.0.0.1:8080"+c.path, strings.NewReader(`{"keep_last":1}`))
		req.Header.Set("Content-Type", "text/plain")
		for k, v := range c.hdr {
			req.Header.Set(k, v)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != c.want || (c.want == http.StatusOK) != (served == 1) {
			t.Errorf("%s: status %d, served %d times; want %d", c.name, rec.Code, served, c.want)
		}
	}
}

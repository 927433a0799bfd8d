package s3_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chunkbridge/chunkbridge/storage"
	"github.com/chunkbridge/chunkbridge/storage/s3"
)

func TestParseEndpoint(t *testing.T) {
	on, off := true, false
	for _, tc := range []struct {
		in, host string
		tls      *bool
	}{
		{"minio.example:9000", "minio.example:9000", nil},
		{"s3.amazonaws.com", "s3.amazonaws.com", nil},
		{"[::1]:9000", "[::1]:9000", nil},
		{"http://127.0.0.1:9000", "127.0.0.1:9000", &off},
		{"http://127.0.0.1:9000/", "127.0.0.1:9000", &off},
		{"HTTPS://minio.example", "minio.example", &on},
	} {
		host, tls, err := s3.ParseEndpoint(tc.in)
		if err != nil || host != tc.host || (tls == nil) != (tc.tls == nil) || (tls != nil && *tls != *tc.tls) {
			t.Errorf("ParseEndpoint(%q) = %q, %v, %v; want %q, %v", tc.in, host, tls, err, tc.host, tc.tls)
		}
	}
	for _, bad := range []string{"", "ftp://h:1", "s3://bucket", "http://h:9000/bucket", "http://user@h", "h:port", "h:", "http://h?x=1", "h/path"} {
		if _, _, err := s3.ParseEndpoint(bad); err == nil || !strings.Contains(err.Error(), "http://HOST[:PORT]") {
			t.Errorf("ParseEndpoint(%q): %v; want a refusal naming the accepted forms", bad, err)
		}
	}
}

// fakeS3 answers every request with status (and an S3 error code when not
// 200), on loopback.
func fakeS3(t *testing.T, tls bool, status int, code string) *httptest.Server {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if status != http.StatusOK {
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(status)
			if r.Method != http.MethodHead {
				w.Write([]byte("<Error><Code>" + code + "</Code><Message>" + code + "</Message></Error>"))
			}
		}
	})
	srv := httptest.NewUnstartedServer(h)
	if tls {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	return srv
}

func openErr(cfg s3.Config) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg.Bucket, cfg.Region, cfg.MaxRetries = "bucket", "us-east-1", 1
	s, err := s3.Open(ctx, cfg)
	if err == nil {
		s.Close()
	}
	return err
}

// The endpoint's scheme decides TLS: http:// works against a plain server
// without --s3-insecure, https:// talks TLS (the test server's certificate
// is not trusted, which proves it).
func TestEndpointScheme(t *testing.T) {
	plain := fakeS3(t, false, http.StatusOK, "")
	if err := openErr(s3.Config{Endpoint: plain.URL, AccessKey: "k", SecretKey: "s"}); err != nil {
		t.Fatalf("%s: %v", plain.URL, err)
	}
	secure := fakeS3(t, true, http.StatusOK, "")
	if err := openErr(s3.Config{Endpoint: secure.URL, AccessKey: "k", SecretKey: "s"}); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("%s: %v; want a TLS certificate error", secure.URL, err)
	}
	if err := openErr(s3.Config{Endpoint: secure.URL, Insecure: true}); err == nil || !strings.Contains(err.Error(), "drop one") {
		t.Fatalf("https:// with Insecure: %v", err)
	}
}

// A refusal says where credentials were looked for and what was found.
func TestCredentialsErrorSaysWhatWasFound(t *testing.T) {
	srv := fakeS3(t, false, http.StatusForbidden, "AccessDenied")
	// No credentials anywhere; IAM is asked at a loopback address that
	// has none (its default is the instance metadata service).
	for _, v := range []string{"AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY", "AWS_SECRET_KEY", "AWS_SESSION_TOKEN",
		"AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"} {
		t.Setenv(v, "")
	}
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "")
	t.Setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", srv.URL+"/no-credentials")

	err := openErr(s3.Config{Endpoint: srv.URL})
	want := []string{"AWS_ACCESS_KEY_ID not set", "AWS_SECRET_ACCESS_KEY not set", filepath.Join(home, ".aws", "credentials") + " (profile default)", "credentials file not found", "IAM role"}
	if !errors.Is(err, storage.ErrPermission) {
		t.Fatalf("Open: %v; want a permission error", err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("Open: %v\ndoes not say %q", err, w)
		}
	}

	t.Setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
	err = openErr(s3.Config{Endpoint: srv.URL})
	if err == nil || !strings.Contains(err.Error(), "AWS_ACCESS_KEY_ID set, AWS_SECRET_ACCESS_KEY not set (both are needed)") {
		t.Fatalf("Open with only the key id: %v", err)
	}
}

package s3

import (
	"bufio"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// endpointForms names what ParseEndpoint accepts, for its errors.
const endpointForms = "want HOST, HOST:PORT, http://HOST[:PORT] or https://HOST[:PORT]"

// ParseEndpoint reads an S3 endpoint: HOST[:PORT], or the same after
// http:// or https://. It returns HOST[:PORT] and whether the scheme asks
// for TLS (tls is nil without a scheme). A path, query, user or any other
// scheme is refused: minio-go would refuse it later with a message that
// does not say what to write instead.
func ParseEndpoint(raw string) (hostport string, tls *bool, err error) {
	s := strings.TrimSpace(raw)
	if scheme, rest, ok := strings.Cut(s, "://"); ok {
		var on bool
		switch strings.ToLower(scheme) {
		case "https":
			on = true
		case "http":
		default:
			return "", nil, fmt.Errorf("S3 endpoint %q: unsupported scheme %q; %s", raw, scheme, endpointForms)
		}
		u, err := url.Parse(strings.ToLower(scheme) + "://" + rest)
		if err != nil {
			return "", nil, fmt.Errorf("S3 endpoint %q: %v; %s", raw, err, endpointForms)
		}
		if u.User != nil || strings.Trim(u.Path, "/") != "" || u.RawQuery != "" || u.Fragment != "" {
			return "", nil, fmt.Errorf("S3 endpoint %q: only a host and port may follow the scheme (put the bucket and prefix in s3://BUCKET/PREFIX); %s", raw, endpointForms)
		}
		s, tls = u.Host, &on
	}
	if s == "" || strings.ContainsAny(s, "/?#@ ") {
		return "", nil, fmt.Errorf("S3 endpoint %q: %s", raw, endpointForms)
	}
	if host, port, err := net.SplitHostPort(s); err == nil {
		if host == "" || port == "" || strings.Trim(port, "0123456789") != "" {
			return "", nil, fmt.Errorf("S3 endpoint %q: bad host or port; %s", raw, endpointForms)
		}
	} else if strings.Count(s, ":") == 1 {
		return "", nil, fmt.Errorf("S3 endpoint %q: bad port; %s", raw, endpointForms)
	}
	return s, tls, nil
}

// describeCredentials says where credentials were looked for and what was
// found there, for an error storage refused as forbidden: "Access Denied"
// alone does not tell a missing variable from a wrong key.
func describeCredentials(cfg Config) string {
	if cfg.AccessKey != "" || cfg.SecretKey != "" {
		return fmt.Sprintf("credentials: the configured access key %q was used (secret key %s)", cfg.AccessKey, setOrMissing(cfg.SecretKey != ""))
	}
	env := func(names ...string) (string, bool) {
		for _, n := range names {
			if os.Getenv(n) != "" {
				return n + " set", true
			}
		}
		return names[0] + " not set", false
	}
	id, hasID := env("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY")
	secret, hasSecret := env("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_KEY")
	file := os.Getenv("AWS_SHARED_CREDENTIALS_FILE")
	if file == "" {
		home, _ := os.UserHomeDir()
		file = filepath.Join(home, ".aws", "credentials")
	}
	profile := os.Getenv("AWS_PROFILE")
	if profile == "" {
		profile = "default"
	}
	var inFile string
	switch has, err := fileHasProfile(file, profile); {
	case err != nil && os.IsNotExist(err):
		inFile = "not found"
	case err != nil:
		inFile = "unreadable: " + err.Error()
	case has:
		inFile = "has profile [" + profile + "]"
	default:
		inFile = "has no profile [" + profile + "]"
	}
	found := "environment: " + id + ", " + secret
	if hasID != hasSecret {
		found += " (both are needed)"
	}
	return fmt.Sprintf("credentials looked for: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_ACCESS_KEY and AWS_SECRET_KEY), "+
		"then the AWS credentials file %s (profile %s), then an IAM role (instance metadata, ECS/EKS, web identity); found: %s; credentials file %s; "+
		"without any, requests are anonymous", file, profile, found, inFile)
}

func setOrMissing(set bool) string {
	if set {
		return "set"
	}
	return "missing"
}

// fileHasProfile reports whether an AWS credentials file has [profile].
func fileHasProfile(name, profile string) (bool, error) {
	f, err := os.Open(name)
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "["+profile+"]" {
			return true, nil
		}
	}
	return false, sc.Err()
}

package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	chunkbridgev1 "github.com/chunkbridge/chunkbridge/api/chunkbridge/v1"
	"github.com/chunkbridge/chunkbridge/pmxclient"
)

// restDefaultPort is the REST gateway's port (--http-listen).
const restDefaultPort = "8080"

// maxListResponse bounds the snapshot list read from the REST API.
const maxListResponse = 256 << 20

// pmxList runs `chunkbridge pmx list`. PMXBCKUP has no packet to list
// snapshots, so it asks the REST API named by --api (CHUNKBRIDGE_API, the
// profile's api): GET /v1/snapshots. It never guesses the API from
// --server: that address may be another server's.
func pmxList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("pmx list", stdout)
	var cf pmxConnFlags
	fs.StringVar(&cf.server, "server", "", "the PMXBCKUP gateway; not used by list, which needs --api (PMXBCKUP cannot list snapshots)")
	var rf restFlags
	rf.register(fs, "lists the snapshots (default http://127.0.0.1:"+restDefaultPort+" when no --server is set either)")
	typ := fs.String("type", "", "only snapshots of this type: vm, ct or host")
	id := fs.String("id", "", "only snapshots of this backup id")
	ns := fs.String("ns", "", "the PBS namespace to list, e.g. a/b (default: the root, where PMXBCKUP backs up)")
	maxDepth := fs.Int("max-depth", 0, "also list the namespaces up to this many levels below --ns (0 to 7)")
	fs.StringVar(&cf.tlsCA, "tls-ca", "", "PEM file of the CA that signed the REST API's certificate, for an https:// --api (default: system roots) (profile: tls_ca)")
	asJSON := fs.Bool("json", false, "print the snapshot list as JSON (the REST answer, protojson)")
	registerConfigFlags(fs)
	if _, err := parsePMXFlags(fs, args, stderr, 0, "no arguments"); err != nil {
		return err
	}
	if rf.api == "" {
		if cf.server != "" {
			return usagef("pmx list: PMXBCKUP has no packet that lists snapshots, so list asks the REST API, "+
				"and --server (CHUNKBRIDGE_SERVER, the profile's pmx_server) names only the PMXBCKUP gateway %s: "+
				"give that server's REST API with --api http[s]://HOST:PORT (or CHUNKBRIDGE_API, or api: in the config profile)", cf.server)
		}
		rf.api = "http://127.0.0.1:" + restDefaultPort // make run's REST gateway, beside PMXBCKUP on 127.0.0.1:8007
	}
	base, bearer, hc, err := rf.client(&cf, "pmx list")
	if err != nil {
		return err
	}
	resp, err := listSnapshots(ctx, hc, base, bearer, *ns, *maxDepth, *typ, *id)
	if err != nil {
		return fmt.Errorf("pmx list: %w", err)
	}
	if *asJSON {
		return printJSON(stdout, resp)
	}
	// One line per snapshot, then its files: a snapshot is kept, pruned
	// and restored whole.
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	n := 0
	for _, s := range resp.GetSnapshots() {
		var total int64
		for _, f := range s.GetFiles() {
			total += f.GetContentSize()
		}
		// No tab: the files of each snapshot align among themselves.
		if s.GetNamespace() != "" {
			fmt.Fprintf(tw, "ns %s: ", s.GetNamespace())
		}
		fmt.Fprintf(tw, "%s/%s/%s: %s, %s\n", s.GetType(), s.GetBackupId(), s.GetTime().AsTime().UTC().Format(time.RFC3339),
			plural(len(s.GetFiles()), "file"), pmxclient.FormatSize(total))
		for _, f := range s.GetFiles() {
			kind := "dynamic"
			if f.GetFixed() {
				kind = "fixed"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", f.GetName(), pmxclient.FormatSize(f.GetContentSize()), plural(int(f.GetChunkCount()), "chunk"), kind)
			n++
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if n == 0 {
		fmt.Fprintln(stderr, "pmx list: no snapshot files match")
	}
	return nil
}

// plural is "1 file", "2 files".
func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// restFlags name the REST API that pmx commands ask what PMXBCKUP cannot
// tell: which snapshots and files there are.
type restFlags struct {
	api, token, tokenFile string
}

func (f *restFlags) register(fs *flag.FlagSet, what string) {
	fs.StringVar(&f.api, "api", "", "the REST API that "+what+", http[s]://HOST[:PORT] (profile: api)")
	fs.StringVar(&f.token, "token", "", "bearer token of a principal with at least the read role, for a REST API with access control (better from CHUNKBRIDGE_TOKEN or --token-file: a command line is visible to other users)")
	fs.StringVar(&f.tokenFile, "token-file", "", "file holding the bearer token (profile: token_file)")
}

// client returns the API's base URL, the bearer token ("" for none) and
// the HTTP client, whose TLS settings are cf's (--tls-ca).
func (f *restFlags) client(cf *pmxConnFlags, cmd string) (string, string, *http.Client, error) {
	bearer := f.token
	if f.tokenFile != "" {
		if f.token != "" {
			return "", "", nil, usagef("%s: --token and --token-file (or their variables, or the profile's token_file) both set: give one", cmd)
		}
		var err error
		if bearer, err = readTokenFile(cmd+": --token-file", f.tokenFile); err != nil {
			return "", "", nil, err
		}
	}
	hc, err := restClient(cf)
	return f.api, bearer, hc, err
}

// restClient is the HTTP client of the REST API: system roots, or the CA
// of --tls-ca (cf.tlsConfig, as for the gateway).
func restClient(cf *pmxConnFlags) (*http.Client, error) {
	cfg, err := cf.tlsConfig()
	if err != nil || cfg == nil {
		return http.DefaultClient, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = cfg
	return &http.Client{Transport: tr}, nil
}

// listSnapshots asks base's REST API for the snapshots of a type and
// backup id (either may be empty for all) in namespace ns ("" the root)
// and those up to maxDepth levels below it, with token as the bearer
// credential if not empty.
func listSnapshots(ctx context.Context, hc *http.Client, base, token, ns string, maxDepth int, typ, id string) (*chunkbridgev1.ListSnapshotsResponse, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, usagef("--api %q: want http://HOST[:PORT] or https://HOST[:PORT]", base)
	}
	q := url.Values{}
	if ns != "" {
		q.Set("namespace", ns)
	}
	if maxDepth != 0 {
		q.Set("maxDepth", fmt.Sprint(maxDepth))
	}
	if typ != "" {
		q.Set("type", typ)
	}
	if id != "" {
		q.Set("backupId", id)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/v1/snapshots"
	u.RawQuery = q.Encode()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w (is the REST gateway running there? Set --api or CHUNKBRIDGE_API)", err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, maxListResponse))
	if err != nil {
		return nil, fmt.Errorf("GET %s: reading the response: %w", u, err)
	}
	if res.StatusCode != http.StatusOK {
		var e struct{ Message string }
		msg := strings.TrimSpace(string(body))
		if json.Unmarshal(body, &e) == nil && e.Message != "" {
			msg = e.Message
		}
		if len(msg) > 500 {
			msg = msg[:500] + "…"
		}
		if res.StatusCode == http.StatusUnauthorized {
			hint := "; send a token with --token or CHUNKBRIDGE_TOKEN"
			if token != "" {
				hint = "; the token (--token or CHUNKBRIDGE_TOKEN) names no principal"
			}
			msg += hint
		}
		return nil, fmt.Errorf("GET %s: %s: %s", u, res.Status, msg)
	}
	var out chunkbridgev1.ListSnapshotsResponse
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(body, &out); err != nil {
		return nil, fmt.Errorf("GET %s: not a snapshot list (is --api the REST gateway?): %w", u, err)
	}
	return &out, nil
}

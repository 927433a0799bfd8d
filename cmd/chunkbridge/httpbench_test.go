package main

import (
	"bytes"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// httpChunk is one chunk as a casync HTTP client sends and receives it.
type httpChunk struct {
	path string // chunks/<4 hex>/<64 hex>.cacnk
	body []byte // the .cacnk: one zstd frame
	raw  int    // uncompressed size
}

// httpChunks makes size bytes of distinct 64 KiB chunks (casync's average),
// each 4 KiB block half random and half text (about 2:1 under zstd), as
// .cacnk bodies.
func httpChunks(b *testing.B, seed uint64, size int) ([]httpChunk, int) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 11))
	text := []byte("the quick brown fox jumps over the lazy dog; ")
	const n = 64 << 10
	var out []httpChunk
	total := 0
	for total < size {
		data := make([]byte, n)
		for off := 0; off < n; off += 4096 {
			for i := off; i < off+2048; i += 8 {
				v := rng.Uint64()
				for j := range 8 {
					data[i+j] = byte(v >> (8 * j))
				}
			}
			for i := off + 2048; i < off+4096; i++ {
				data[i] = text[(i-off)%len(text)]
			}
		}
		sum := sha512.Sum512_256(data)
		id := hex.EncodeToString(sum[:])
		out = append(out, httpChunk{path: "chunks/" + id[:4] + "/" + id + ".cacnk", body: enc.EncodeAll(data, nil), raw: n})
		total += n
	}
	return out, total
}

// httpClient keeps 8 connections, one per request in flight.
func httpClient() *http.Client {
	return &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8, MaxConnsPerHost: 8, DisableCompression: true}}
}

// parallel runs do for every chunk with 8 requests in flight, like
// `desync extract -n 8`.
func parallel(b *testing.B, chunks []httpChunk, do func(c httpChunk) error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(chunks) {
					return
				}
				if err := do(chunks[i]); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
}

func httpGet(client *http.Client, base string) func(c httpChunk) error {
	buf := sync.Pool{New: func() any { return new(bytes.Buffer) }}
	return func(c httpChunk) error {
		resp, err := client.Get(base + c.path)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		w := buf.Get().(*bytes.Buffer)
		defer buf.Put(w)
		w.Reset()
		n, err := io.Copy(w, resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK || n != int64(len(c.body)) {
			return fmt.Errorf("GET %s: %s, %d bytes, want %d", c.path, resp.Status, n, len(c.body))
		}
		return nil
	}
}

func httpPut(client *http.Client, base string) func(c httpChunk) error {
	return func(c httpChunk) error {
		req, err := http.NewRequest(http.MethodPut, base+c.path, bytes.NewReader(c.body))
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			return fmt.Errorf("PUT %s: %s: %s", c.path, resp.Status, msg)
		}
		return nil
	}
}

// plainPutServer is the PUT baseline: an HTTP server that writes each body
// to its file as it comes, with no verification and no fsync. With
// durable, it is the floor of a server that acknowledges only what is
// durable: each body goes to a temporary file that is fsynced, renamed to
// its name, and the directory fsynced (no verification, no group commit),
// the least any such server does on this file system.
func plainPutServer(dir string, durable bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path := filepath.Join(dir, filepath.FromSlash(strings.TrimPrefix(r.URL.Path, "/")))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		name := path
		if durable {
			name += ".tmp"
		}
		f, err := os.Create(name)
		if err == nil {
			_, err = io.Copy(f, r.Body)
			if err == nil && durable {
				err = f.Sync()
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err == nil && durable {
			err = os.Rename(name, path)
			if err == nil {
				err = syncDir(filepath.Dir(path))
			}
		}
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		w.WriteHeader(http.StatusCreated)
	})
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// BenchmarkHTTPChunks measures the casync HTTP store with 8 requests in
// flight against baselines in the same run:
//
//   - get/nginx: Debian's nginx serving the directory store chunkbridge
//     wrote (the fs store is casync's layout), the static-file limit;
//   - get/all, get/separate: GET /casync/chunks/… from `serve all`, and
//     from `serve rest-gateway` in front of a separate `serve chunk`;
//   - put/plain: PUT of new chunks to a Go HTTP server that only writes
//     files (no verification, no fsync);
//   - put/durable: the same server acknowledging each chunk only once it
//     is durable (fsync, rename, directory fsync), the floor of any
//     server that promises durability here;
//   - put/all, put/separate: PUT of the same new chunks to chunkbridge,
//     which verifies each and acknowledges only once it is durable.
//
// The table after the run gives the ratios.
func BenchmarkHTTPChunks(b *testing.B) {
	size := 128 << 20
	if s := os.Getenv("BENCH_HTTP_MIB"); s != "" {
		fmt.Sscan(s, &size)
		size <<= 20
	}
	chunks, total := httpChunks(b, 5, size)
	client := httpClient()
	defer client.CloseIdleConnections()

	// Each server returns its base URL and its processes, whose CPU time
	// is measured too: unlike wall time, it barely moves when other work
	// shares the machine.
	all := func(b *testing.B, bin, dir string) (string, []int) {
		p := startBinary(b, bin, nil, "serve", "all", "--store", dir)
		waitHealth(b, p.conn(b), healthpb.HealthCheckResponse_SERVING)
		return "http://" + p.http + "/casync/", []int{p.cmd.Process.Pid}
	}
	separate := func(b *testing.B, bin, dir string) (string, []int) {
		c := startBinary(b, bin, nil, "serve", "chunk", "--store", dir)
		waitHealth(b, c.conn(b), healthpb.HealthCheckResponse_SERVING)
		p := startBinary(b, bin, nil, "serve", "rest-gateway", "--chunk-service", c.grpc)
		return "http://" + p.http + "/casync/", []int{c.cmd.Process.Pid, p.cmd.Process.Pid}
	}
	// BENCH_BEFORE_BIN names other chunkbridge builds (say, of earlier
	// commits) to measure in the same run: a path, measured as "…/before",
	// or comma-separated label=path pairs, measured as "…/label".
	builds := []struct{ suffix, bin string }{{"", binary}}
	for _, before := range strings.Split(os.Getenv("BENCH_BEFORE_BIN"), ",") {
		label, bin, ok := strings.Cut(before, "=")
		if !ok {
			label, bin = "before", before
		}
		if bin != "" {
			builds = append(builds, struct{ suffix, bin string }{"/" + label, bin})
		}
	}
	timed := func(b *testing.B, setup func(b *testing.B) (func(httpChunk) error, []int)) {
		b.SetBytes(int64(total))
		b.ResetTimer() // the servers and the stored chunks are set up untimed
		var cpu time.Duration
		for range b.N {
			b.StopTimer()
			do, pids := setup(b)
			before := cpuTime(b, pids)
			b.StartTimer()
			parallel(b, chunks, do)
			b.StopTimer()
			cpu += cpuTime(b, pids) - before
			b.StartTimer()
		}
		b.StopTimer()
		client.CloseIdleConnections()
		recordBench(b, total)
		if cpu > 0 {
			perChunk := float64(cpu.Microseconds()) / float64(b.N*len(chunks))
			b.ReportMetric(perChunk, "server-µs-cpu/chunk")
			serverCPU.Store(strings.TrimPrefix(b.Name(), "Benchmark"), perChunk)
		}
	}

	// The store every GET reads, written once through chunkbridge.
	// It and its server belong to the parent benchmark, so that they
	// outlive the sub-benchmark that writes them.
	parent := b
	var store string
	stored := func(b *testing.B) string {
		if store == "" {
			store = parent.TempDir()
			base, _ := all(parent, binary, store)
			parallel(b, chunks, httpPut(client, base))
			client.CloseIdleConnections()
		}
		return store
	}

	for _, durable := range []bool{false, true} {
		name := map[bool]string{false: "put/plain", true: "put/durable"}[durable]
		b.Run(name, func(b *testing.B) {
			timed(b, func(b *testing.B) (func(httpChunk) error, []int) {
				srv := &http.Server{Handler: plainPutServer(b.TempDir(), durable)}
				l := listenLoopback(b)
				go srv.Serve(l)
				b.Cleanup(func() { srv.Close() })
				return httpPut(client, "http://"+l.Addr().String()+"/"), nil // in the test process: no CPU figure
			})
		})
	}
	for _, v := range builds {
		b.Run("put/all"+v.suffix, func(b *testing.B) {
			timed(b, func(b *testing.B) (func(httpChunk) error, []int) {
				base, pids := all(b, v.bin, b.TempDir())
				return httpPut(client, base), pids
			})
		})
		b.Run("put/separate"+v.suffix, func(b *testing.B) {
			timed(b, func(b *testing.B) (func(httpChunk) error, []int) {
				base, pids := separate(b, v.bin, b.TempDir())
				return httpPut(client, base), pids
			})
		})
	}
	b.Run("get/nginx", func(b *testing.B) {
		addr := startNginx(b, stored(b))
		timed(b, func(b *testing.B) (func(httpChunk) error, []int) {
			return httpGet(client, "http://"+addr+"/"), nginxProcesses(addr)
		})
	})
	for _, v := range builds {
		b.Run("get/all"+v.suffix, func(b *testing.B) {
			base, pids := all(b, v.bin, stored(b))
			timed(b, func(b *testing.B) (func(httpChunk) error, []int) { return httpGet(client, base), pids })
		})
		b.Run("get/separate"+v.suffix, func(b *testing.B) {
			base, pids := separate(b, v.bin, stored(b))
			timed(b, func(b *testing.B) (func(httpChunk) error, []int) { return httpGet(client, base), pids })
		})
	}
}

// serverCPU is each benchmark's server CPU time per chunk, in µs.
var serverCPU sync.Map

// cpuTime is the time the processes' threads have spent on a CPU so far
// (schedstat: nanoseconds, where /proc/PID/stat counts 10 ms ticks).
func cpuTime(b *testing.B, pids []int) time.Duration {
	var ns int64
	for _, pid := range pids {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			b.Fatal(err)
		}
		for _, t := range tasks {
			stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
			if err != nil {
				continue // the thread ended
			}
			var n int64
			fmt.Sscan(string(stat), &n)
			ns += n
		}
	}
	return time.Duration(ns)
}

// nginxProcesses is the master serving addr and its workers.
func nginxProcesses(addr string) []int {
	v, ok := nginxMasters.Load(addr)
	if !ok {
		return nil
	}
	master := v.(int)
	pids := []int{master}
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		var pid int
		if _, err := fmt.Sscan(d.Name(), &pid); err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
		var ppid int
		if fmt.Sscan(f[1], &ppid); ppid == master {
			pids = append(pids, pid)
		}
	}
	return pids
}

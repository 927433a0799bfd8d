package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// BenchmarkCasync times real casync commands on the same data through
// chunkbridge and through three baselines, in one run:
//
//   - local: casync with a local directory store;
//   - remote: casync's own remote protocol, the real casync spawned locally
//     by a pass-through CASYNC_SSH_PATH;
//   - nginx: casync extract from Debian's nginx serving a local casync store;
//   - gateway-tcp: chunkbridge's casync gateway through chunkbridge-casync-ssh;
//   - gateway-http: casync extract from chunkbridge's HTTP store.
//
// Run it with `make bench` (or -bench Casync -benchtime 1x); the table after
// the run gives each gateway figure's ratio to its baseline.
func BenchmarkCasync(b *testing.B) {
	if _, err := exec.LookPath("casync"); err != nil {
		b.Skip("casync is not installed: apt-get install casync")
	}
	size := 256 << 20
	if s := os.Getenv("BENCH_CASYNC_MIB"); s != "" {
		fmt.Sscan(s, &size)
		size <<= 20
	}
	src := blob(b, 42, size)

	casync := func(b *testing.B, env []string, args ...string) {
		b.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "casync", args...)
		cmd.Env = append(os.Environ(), env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("casync %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	// timed runs one casync command per iteration, preparing each with
	// setup (untimed), which returns the command's environment and args.
	timed := func(b *testing.B, setup func(b *testing.B) ([]string, []string)) {
		b.SetBytes(int64(size))
		// What ran before (a casync make to extract from, a server) is
		// not part of the figure.
		b.ResetTimer()
		for range b.N {
			b.StopTimer()
			env, args := setup(b)
			b.StartTimer()
			casync(b, env, args...)
		}
		b.StopTimer()
		recordBench(b, size)
	}
	passThroughSSH := func(b *testing.B) string {
		p := filepath.Join(b.TempDir(), "local-ssh")
		os.WriteFile(p, []byte("#!/bin/sh\nshift\nexec \"$@\"\n"), 0o755)
		return p
	}

	b.Run("make/local", func(b *testing.B) {
		timed(b, func(b *testing.B) ([]string, []string) {
			d := b.TempDir()
			return nil, []string{"make", "--store=" + d + "/s.castr", d + "/x.caibx", src}
		})
	})
	b.Run("extract/local", func(b *testing.B) {
		d := b.TempDir()
		casync(b, nil, "make", "--store="+d+"/s.castr", d+"/x.caibx", src)
		timed(b, func(b *testing.B) ([]string, []string) {
			return nil, []string{"extract", "--store=" + d + "/s.castr", d + "/x.caibx", b.TempDir() + "/out"}
		})
	})
	b.Run("make/remote", func(b *testing.B) {
		ssh := passThroughSSH(b)
		timed(b, func(b *testing.B) ([]string, []string) {
			return []string{"CASYNC_SSH_PATH=" + ssh}, []string{"make", "srv:" + b.TempDir() + "/x.caibx", src}
		})
	})
	b.Run("extract/remote", func(b *testing.B) {
		ssh := passThroughSSH(b)
		env := []string{"CASYNC_SSH_PATH=" + ssh}
		idx := "srv:" + b.TempDir() + "/x.caibx"
		casync(b, env, "make", idx, src)
		timed(b, func(b *testing.B) ([]string, []string) {
			return env, []string{"extract", idx, b.TempDir() + "/out"}
		})
	})
	b.Run("extract/nginx", func(b *testing.B) {
		d := b.TempDir()
		casync(b, nil, "make", "--store="+d+"/s.castr", d+"/x.caibx", src)
		addr := startNginx(b, d)
		timed(b, func(b *testing.B) ([]string, []string) {
			return nil, []string{"extract", "--store=http://" + addr + "/s.castr", "http://" + addr + "/x.caibx", b.TempDir() + "/out"}
		})
	})
	gateway := func(b *testing.B) (*process, []string) {
		p := start(b, nil, "serve", "all", "--store", b.TempDir())
		waitHealth(b, p.conn(b), healthpb.HealthCheckResponse_SERVING)
		shim := filepath.Join(b.TempDir(), "chunkbridge-casync-ssh")
		os.Symlink(binary, shim)
		return p, []string{"CASYNC_SSH_PATH=" + shim, "CHUNKBRIDGE_CASYNC_ADDR=" + p.casync}
	}
	b.Run("make/gateway-tcp", func(b *testing.B) {
		timed(b, func(b *testing.B) ([]string, []string) {
			_, env := gateway(b) // a new, empty store each time
			return env, []string{"make", "srv:/x.caibx", src}
		})
	})
	b.Run("extract/gateway-tcp", func(b *testing.B) {
		_, env := gateway(b)
		casync(b, env, "make", "srv:/x.caibx", src)
		timed(b, func(b *testing.B) ([]string, []string) {
			return env, []string{"extract", "srv:/x.caibx", b.TempDir() + "/out"}
		})
	})
	b.Run("extract/gateway-http", func(b *testing.B) {
		p, env := gateway(b)
		casync(b, env, "make", "srv:/x.caibx", src)
		base := "http://" + p.http + "/casync"
		timed(b, func(b *testing.B) ([]string, []string) {
			return nil, []string{"extract", "--store=" + base + "/chunks", base + "/indexes/x.caibx", b.TempDir() + "/out"}
		})
	})
}

// startNginx serves dir on a free loopback port with Debian's nginx. It
// skips when nginx is missing, unless CI=true, where a missing baseline is a
// failure. nginx cannot bind port 0, so a port is picked and, if another
// process takes it first, picked again.
func startNginx(b *testing.B, dir string) string {
	bin, err := exec.LookPath("nginx")
	if err != nil {
		if _, err = os.Stat("/usr/sbin/nginx"); err != nil {
			if os.Getenv("CI") == "true" {
				b.Fatal("nginx is not installed (apt-get install nginx-light); CI needs it as the HTTP baseline")
			}
			b.Skip("nginx is not installed: apt-get install nginx-light")
		}
		bin = "/usr/sbin/nginx"
	}
	for attempt := 0; ; attempt++ {
		addr, log, err := tryNginx(b, bin, dir)
		if err == nil {
			return addr
		}
		if !strings.Contains(log, "Address already in use") || attempt == 10 {
			b.Fatalf("nginx on %s: %v\n%s", addr, err, log)
		}
	}
}

// tryNginx starts nginx on one free-looking port and returns once it
// accepts connections, or with its error log if it exits first.
func tryNginx(b *testing.B, bin, dir string) (addr, errorLog string, err error) {
	l := listenLoopback(b)
	addr = l.Addr().String()
	l.Close()
	prefix := b.TempDir()
	conf := filepath.Join(prefix, "nginx.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`daemon off;
user root; # the test's temporary folders are private to root
worker_processes 2;
error_log %[1]s/error.log;
pid %[1]s/nginx.pid;
events { worker_connections 256; }
http {
  access_log off;
  keepalive_requests 100000;
  client_body_temp_path %[1]s; proxy_temp_path %[1]s; fastcgi_temp_path %[1]s; uwsgi_temp_path %[1]s; scgi_temp_path %[1]s;
  server { listen %[2]s; root %[3]s; }
}
`, prefix, addr, dir)), 0o644)
	cmd := exec.Command(bin, "-p", prefix, "-c", conf)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	readLog := func() string { out, _ := os.ReadFile(filepath.Join(prefix, "error.log")); return string(out) }
	tick := time.NewTicker(10 * time.Millisecond) // poll interval of a readiness probe
	defer tick.Stop()
	deadline := time.After(10 * time.Second)
	for {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			// SIGQUIT, not SIGKILL: a killed master leaves its workers
			// running, still listening.
			b.Cleanup(func() { cmd.Process.Signal(syscall.SIGQUIT); <-exited })
			nginxMasters.Store(addr, cmd.Process.Pid)
			return addr, "", nil
		}
		select {
		case err := <-exited:
			return addr, readLog(), fmt.Errorf("exited: %v", err)
		case <-deadline:
			cmd.Process.Signal(syscall.SIGQUIT)
			<-exited
			return addr, readLog(), fmt.Errorf("did not listen within 10s")
		case <-tick.C:
		}
	}
}

// listenLoopback listens on a free loopback port.
func listenLoopback(b *testing.B) net.Listener {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	return l
}

var benchResults sync.Map

// nginxMasters maps each started nginx's address to its master's pid.
var nginxMasters sync.Map

func recordBench(b *testing.B, bytesPerOp int) {
	if s := b.Elapsed().Seconds(); s > 0 {
		name := strings.TrimPrefix(strings.TrimPrefix(b.Name(), "BenchmarkCasync/"), "Benchmark")
		benchResults.Store(name, float64(bytesPerOp)*float64(b.N)/s/1e6)
	}
}

// printCasyncTable prints MB/s per command and the ratios the casync
// gateway is measured by.
func printCasyncTable() {
	var names []string
	benchResults.Range(func(k, _ any) bool { names = append(names, k.(string)); return true })
	if len(names) == 0 {
		return
	}
	sort.Strings(names)
	get := func(n string) float64 { v, _ := benchResults.Load(n); f, _ := v.(float64); return f }
	fmt.Printf("\n| command | MB/s | ratio to its baseline (PMX: the SHA-256+zstd limit; HTTP GET: nginx; HTTP PUT: the plain file server) |\n|---|---:|---:|\n")
	for _, n := range names {
		ratio := ""
		base := map[string]string{"PMX/": "PMX/limit", "HTTPChunks/get/": "HTTPChunks/get/nginx", "HTTPChunks/put/": "HTTPChunks/put/plain"}
		for prefix, b := range base {
			if l := get(b); l > 0 && strings.HasPrefix(n, prefix) {
				ratio = fmt.Sprintf("%.2f×", get(n)/l)
			}
		}
		fmt.Printf("| %s | %.0f | %s |\n", n, get(n), ratio)
	}
	var cpuNames []string
	serverCPU.Range(func(k, _ any) bool { cpuNames = append(cpuNames, k.(string)); return true })
	sort.Strings(cpuNames)
	if len(cpuNames) > 0 {
		cpu := func(n string) float64 { v, _ := serverCPU.Load(n); f, _ := v.(float64); return f }
		fmt.Printf("\n| server CPU per 64 KiB chunk | µs | ratio to nginx |\n|---|---:|---:|\n")
		for _, n := range cpuNames {
			ratio := ""
			if l := cpu("HTTPChunks/get/nginx"); l > 0 && strings.HasPrefix(n, "HTTPChunks/get/") {
				ratio = fmt.Sprintf("%.1f×", cpu(n)/l)
			}
			fmt.Printf("| %s | %.0f | %s |\n", n, cpu(n), ratio)
		}
	}
	fmt.Printf("\n| ratio | value | target |\n|---|---:|---:|\n")
	for _, r := range []struct{ name, a, b, target string }{
		{"make: gateway-tcp / casync remote", "make/gateway-tcp", "make/remote", "≥ 1.5"},
		{"extract: gateway-tcp / casync remote", "extract/gateway-tcp", "extract/remote", "≥ 1.5"},
		{"extract: gateway-http / nginx", "extract/gateway-http", "extract/nginx", "≥ 0.9"},
		{"HTTP GET ×8: serve all / nginx", "HTTPChunks/get/all", "HTTPChunks/get/nginx", ""},
		{"HTTP GET ×8: separate processes / nginx", "HTTPChunks/get/separate", "HTTPChunks/get/nginx", ""},
		{"HTTP PUT ×8: serve all / plain file server", "HTTPChunks/put/all", "HTTPChunks/put/plain", ""},
		{"HTTP PUT ×8: separate processes / plain file server", "HTTPChunks/put/separate", "HTTPChunks/put/plain", ""},
		{"make: gateway-tcp / local store", "make/gateway-tcp", "make/local", ""},
		{"extract: gateway-tcp / local store", "extract/gateway-tcp", "extract/local", ""},
	} {
		if get(r.a) > 0 && get(r.b) > 0 {
			fmt.Printf("| %s | %.2f× | %s |\n", r.name, get(r.a)/get(r.b), r.target)
		}
	}
}

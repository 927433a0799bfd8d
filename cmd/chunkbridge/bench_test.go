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
	// setup (untimed), which returns the command's environment and args,
	// and, for a remote, a reading of its server's CPU time so far.
	timed := func(b *testing.B, setup func(b *testing.B) ([]string, []string, func() time.Duration)) {
		b.SetBytes(int64(size))
		// What ran before (a casync make to extract from, a server) is
		// not part of the figure.
		b.ResetTimer()
		var cpu time.Duration
		for range b.N {
			b.StopTimer()
			env, args, readCPU := setup(b)
			var before time.Duration
			if readCPU != nil {
				before = readCPU()
			}
			b.StartTimer()
			casync(b, env, args...)
			b.StopTimer()
			if readCPU != nil {
				cpu += readCPU() - before
			}
			b.StartTimer()
		}
		b.StopTimer()
		recordBench(b, size)
		if cpu > 0 {
			perChunk := float64(cpu.Microseconds()) / float64(b.N*chunkCount(b))
			b.ReportMetric(perChunk, "server-µs-cpu/chunk")
			serverCPU.Store(strings.TrimPrefix(b.Name(), "Benchmark"), perChunk)
		}
	}
	// The remote baseline is the real casync spawned by a pass-through
	// CASYNC_SSH_PATH, through this test binary (see init), which
	// appends the peer's CPU time (rusage) to a file when it exits.
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	passThroughSSH := func(b *testing.B) string {
		p := filepath.Join(b.TempDir(), "local-ssh")
		os.WriteFile(p, []byte("#!/bin/sh\nshift\nexec "+self+" \"$@\"\n"), 0o755)
		return p
	}
	// peer returns the remote's environment and its CPU time reading.
	peer := func(b *testing.B) ([]string, func() time.Duration) {
		cpuFile := filepath.Join(b.TempDir(), "peer-cpu")
		return []string{"CASYNC_SSH_PATH=" + passThroughSSH(b), benchPeerCPU + "=" + cpuFile},
			func() time.Duration { return peerCPU(b, cpuFile) }
	}

	// The local store, made once: the baseline of extract/local, and the
	// chunk count (server CPU is given per chunk).
	parent := b
	var local string
	made := func(b *testing.B) string {
		if local == "" {
			local = parent.TempDir()
			casync(b, nil, "make", "--store="+local+"/s.castr", local+"/x.caibx", src)
		}
		return local
	}
	chunks := 0
	chunkCount = func(b *testing.B) int {
		if chunks == 0 {
			filepath.WalkDir(made(b)+"/s.castr", func(_ string, d os.DirEntry, _ error) error {
				if d != nil && strings.HasSuffix(d.Name(), ".cacnk") {
					chunks++
				}
				return nil
			})
		}
		return chunks
	}

	b.Run("make/local", func(b *testing.B) {
		timed(b, func(b *testing.B) ([]string, []string, func() time.Duration) {
			d := b.TempDir()
			return nil, []string{"make", "--store=" + d + "/s.castr", d + "/x.caibx", src}, nil
		})
	})
	b.Run("extract/local", func(b *testing.B) {
		d := made(b)
		timed(b, func(b *testing.B) ([]string, []string, func() time.Duration) {
			return nil, []string{"extract", "--store=" + d + "/s.castr", d + "/x.caibx", b.TempDir() + "/out"}, nil
		})
	})
	b.Run("make/remote", func(b *testing.B) {
		timed(b, func(b *testing.B) ([]string, []string, func() time.Duration) {
			env, cpu := peer(b)
			return env, []string{"make", "srv:" + b.TempDir() + "/x.caibx", src}, cpu
		})
	})
	b.Run("extract/remote", func(b *testing.B) {
		env, cpu := peer(b)
		idx := "srv:" + b.TempDir() + "/x.caibx"
		casync(b, env, "make", idx, src)
		timed(b, func(b *testing.B) ([]string, []string, func() time.Duration) {
			return env, []string{"extract", idx, b.TempDir() + "/out"}, cpu
		})
	})
	b.Run("extract/nginx", func(b *testing.B) {
		d := b.TempDir()
		casync(b, nil, "make", "--store="+d+"/s.castr", d+"/x.caibx", src)
		addr := startNginx(b, d)
		timed(b, func(b *testing.B) ([]string, []string, func() time.Duration) {
			return nil, []string{"extract", "--store=http://" + addr + "/s.castr", "http://" + addr + "/x.caibx", b.TempDir() + "/out"}, nginxCPU(b, addr)
		})
	})
	// gateway is `serve all` with a new, empty store: its casync
	// environment and its CPU time reading (the casync-ssh shim is the
	// client side's relay, like ssh, and not counted).
	gateway := func(b *testing.B) (*process, []string, func() time.Duration) {
		p := start(b, nil, "serve", "all", "--store", b.TempDir())
		waitHealth(b, p.conn(b), healthpb.HealthCheckResponse_SERVING)
		shim := filepath.Join(b.TempDir(), "chunkbridge-casync-ssh")
		os.Symlink(binary, shim)
		return p, []string{"CASYNC_SSH_PATH=" + shim, "CHUNKBRIDGE_CASYNC_ADDR=" + p.casync},
			func() time.Duration { return cpuTime(b, []int{p.cmd.Process.Pid}) }
	}
	b.Run("make/gateway-tcp", func(b *testing.B) {
		timed(b, func(b *testing.B) ([]string, []string, func() time.Duration) {
			_, env, cpu := gateway(b) // a new, empty store each time
			return env, []string{"make", "srv:/x.caibx", src}, cpu
		})
	})
	b.Run("extract/gateway-tcp", func(b *testing.B) {
		_, env, cpu := gateway(b)
		casync(b, env, "make", "srv:/x.caibx", src)
		timed(b, func(b *testing.B) ([]string, []string, func() time.Duration) {
			return env, []string{"extract", "srv:/x.caibx", b.TempDir() + "/out"}, cpu
		})
	})
	b.Run("extract/gateway-http", func(b *testing.B) {
		p, env, cpu := gateway(b)
		casync(b, env, "make", "srv:/x.caibx", src)
		base := "http://" + p.http + "/casync"
		timed(b, func(b *testing.B) ([]string, []string, func() time.Duration) {
			return nil, []string{"extract", "--store=" + base + "/chunks", base + "/indexes/x.caibx", b.TempDir() + "/out"}, cpu
		})
	})
}

// chunkCount is the number of chunks BenchmarkCasync's input makes.
var chunkCount func(b *testing.B) int

// benchPeerCPU names the file to which this test binary, run as a
// command's wrapper (the remote end of BenchmarkCasync's pass-through
// ssh), appends the command's CPU time in ns.
const benchPeerCPU = "CHUNKBRIDGE_BENCH_PEER_CPU"

func init() {
	file := os.Getenv(benchPeerCPU)
	if file == "" || len(os.Args) < 2 || strings.HasPrefix(os.Args[1], "-") {
		return
	}
	cmd := exec.Command(os.Args[1], os.Args[2:]...)
	cmd.Env = slicesDelete(os.Environ(), benchPeerCPU)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	if cmd.ProcessState == nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(127)
	}
	if f, err := os.OpenFile(file, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
		fmt.Fprintln(f, int64(cmd.ProcessState.UserTime()+cmd.ProcessState.SystemTime()))
		f.Close()
	}
	os.Exit(cmd.ProcessState.ExitCode())
}

// slicesDelete is env without name's entry.
func slicesDelete(env []string, name string) []string {
	out := env[:0:0]
	for _, e := range env {
		if !strings.HasPrefix(e, name+"=") {
			out = append(out, e)
		}
	}
	return out
}

// peerCPU is the CPU time of the remote casync processes that have ended
// so far, as the wrapper recorded them.
func peerCPU(b *testing.B, file string) time.Duration {
	data, err := os.ReadFile(file)
	if err != nil && !os.IsNotExist(err) {
		b.Fatal(err)
	}
	var total time.Duration
	for _, line := range strings.Fields(string(data)) {
		var ns int64
		fmt.Sscan(line, &ns)
		total += time.Duration(ns)
	}
	return total
}

// nginxCPU reads the CPU time of the nginx serving addr.
func nginxCPU(b *testing.B, addr string) func() time.Duration {
	pids := nginxProcesses(addr)
	return func() time.Duration { return cpuTime(b, pids) }
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
	fmt.Printf("\n| command | MB/s | ratio to its baseline (PMX: the floor, SHA-256 + one write + fsync; HTTP GET: nginx; HTTP PUT: the plain file server) |\n|---|---:|---:|\n")
	for _, n := range names {
		ratio := ""
		base := map[string]string{"PMX/": "PMX/floor", "HTTPChunks/get/": "HTTPChunks/get/nginx", "HTTPChunks/put/": "HTTPChunks/put/plain"}
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
	cpu := func(n string) float64 { v, _ := serverCPU.Load(n); f, _ := v.(float64); return f }
	if len(cpuNames) > 0 {
		fmt.Printf("\n| server CPU per chunk (HTTP, casync: 64 KiB; PMX fixed: 4 MiB) | µs | ratio to its baseline (HTTP GET: nginx; casync: the casync remote peer) |\n|---|---:|---:|\n")
		for _, n := range cpuNames {
			ratio := ""
			base := map[string]string{"HTTPChunks/get/": "HTTPChunks/get/nginx", "Casync/make/": "Casync/make/remote", "Casync/extract/": "Casync/extract/remote"}
			for prefix, b := range base {
				if l := cpu(b); l > 0 && strings.HasPrefix(n, prefix) {
					ratio = fmt.Sprintf("%.2f×", cpu(n)/l)
				}
			}
			fmt.Printf("| %s | %.0f | %s |\n", n, cpu(n), ratio)
		}
	}
	fmt.Printf("\n| ratio | value | target |\n|---|---:|---:|\n")
	for _, r := range []struct {
		name, a, b, target string
		cpu                bool
	}{
		{"make: gateway-tcp / casync remote, MB/s", "make/gateway-tcp", "make/remote", "≥ 1.1", false},
		{"extract: gateway-tcp / casync remote, MB/s", "extract/gateway-tcp", "extract/remote", "≥ 1.1", false},
		{"make: gateway-tcp / casync remote, server CPU per chunk", "Casync/make/gateway-tcp", "Casync/make/remote", "≤ 0.5", true},
		{"extract: gateway-tcp / casync remote, server CPU per chunk", "Casync/extract/gateway-tcp", "Casync/extract/remote", "≤ 0.5", true},
		{"extract: gateway-http / nginx, MB/s", "extract/gateway-http", "extract/nginx", "≥ 0.9", false},
		{"PMX backup fixed, serve all / floor (SHA-256 + one write + fsync)", "PMX/backup/fixed/all", "PMX/floor", "≥ 0.6", false},
		{"PMX backup fixed, separate processes / floor", "PMX/backup/fixed/separate", "PMX/floor", "≥ 0.6", false},
		{"PMX backup fixed, serve all / SHA-256+zstd one core", "PMX/backup/fixed/all", "PMX/limit", "", false},
		{"PMX backup fixed, separate processes / SHA-256+zstd one core", "PMX/backup/fixed/separate", "PMX/limit", "", false},
		{"HTTP GET ×8: serve all / nginx", "HTTPChunks/get/all", "HTTPChunks/get/nginx", "", false},
		{"HTTP GET ×8: separate processes / nginx", "HTTPChunks/get/separate", "HTTPChunks/get/nginx", "", false},
		{"HTTP PUT ×8: serve all / plain file server", "HTTPChunks/put/all", "HTTPChunks/put/plain", "", false},
		{"HTTP PUT ×8: separate processes / plain file server", "HTTPChunks/put/separate", "HTTPChunks/put/plain", "", false},
		{"HTTP PUT ×8: durable floor (fsync, rename, dir fsync) / plain file server", "HTTPChunks/put/durable", "HTTPChunks/put/plain", "", false},
		{"HTTP PUT ×8: serve all / durable floor", "HTTPChunks/put/all", "HTTPChunks/put/durable", "", false},
		{"HTTP PUT ×8: separate processes / durable floor", "HTTPChunks/put/separate", "HTTPChunks/put/durable", "", false},
		{"make: gateway-tcp / local store", "make/gateway-tcp", "make/local", "", false},
		{"extract: gateway-tcp / local store", "extract/gateway-tcp", "extract/local", "", false},
	} {
		v := get
		if r.cpu {
			v = cpu
		}
		if v(r.a) > 0 && v(r.b) > 0 {
			fmt.Printf("| %s | %.2f× | %s |\n", r.name, v(r.a)/v(r.b), r.target)
		}
	}
}

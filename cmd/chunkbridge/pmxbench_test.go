package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/chunkbridge/chunkbridge/gateway/pbs"
	"github.com/chunkbridge/chunkbridge/gateway/pbs/pbstest"
)

// BenchmarkPMX backs up and restores a random image (fixed 4 MiB chunks)
// and stream (casync's chunker) through `serve all` and through a separate
// PMXBCKUP gateway in front of a separate chunk service, and reports MB/s
// next to the same run's floor (SHA-256 of the file and one write of it to
// the same file system, fsynced) and single-core SHA-256 + zstd limit, with
// the servers' CPU time per 4 MiB and the peak RSS of servers and client.
// BENCH_PMX_MIB sets the size (default 1024).
func BenchmarkPMX(b *testing.B) {
	size := 1024
	if s := os.Getenv("BENCH_PMX_MIB"); s != "" {
		fmt.Sscan(s, &size)
	}
	size <<= 20
	src := filepath.Join(b.TempDir(), "image")
	f, err := os.Create(src)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	buf := make([]byte, 1<<20)
	for written := 0; written < size; written += len(buf) {
		rand.Read(buf)
		w.Write(buf)
	}
	w.Flush()
	f.Close()

	b.Run("limit", func(b *testing.B) {
		enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderCRC(true), zstd.WithEncoderConcurrency(1))
		data := make([]byte, 4<<20)
		rand.Read(data) // random, like the input
		dst := make([]byte, 0, len(data)+len(data)/64)
		// 64 chunks an iteration: stable even when run once (-benchtime 1x).
		const per = 64
		b.SetBytes(per * int64(len(data)))
		for range b.N {
			for range per {
				_ = sha256.Sum256(data)
				dst = enc.EncodeAll(data, dst[:0])
			}
		}
		recordBench(b, per*len(data))
	})

	// The floor: what a fixed backup cannot avoid, SHA-256 of the file
	// and writing it once to the store's file system (b.TempDir, like
	// the stores below), fsynced at the end; one goroutine, 4 MiB reads.
	b.Run("floor", func(b *testing.B) {
		b.SetBytes(int64(size))
		buf := make([]byte, 4<<20)
		for range b.N {
			in, err := os.Open(src)
			if err != nil {
				b.Fatal(err)
			}
			out, err := os.Create(filepath.Join(b.TempDir(), "copy"))
			if err != nil {
				b.Fatal(err)
			}
			h := sha256.New()
			for {
				n, err := io.ReadFull(in, buf)
				if n > 0 {
					h.Write(buf[:n])
					if _, err := out.Write(buf[:n]); err != nil {
						b.Fatal(err)
					}
				}
				if err != nil {
					break
				}
			}
			_ = h.Sum(nil)
			if err := out.Sync(); err != nil {
				b.Fatal(err)
			}
			out.Close()
			in.Close()
		}
		recordBench(b, size)
	})

	var clientRSS int64
	run := func(b *testing.B, args ...string) string {
		b.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, binary, append([]string{"pmx"}, args...)...)
		out, err := cmd.Output()
		if err != nil {
			b.Fatalf("pmx %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok && ru.Maxrss > clientRSS {
			clientRSS = ru.Maxrss
		}
		return string(out)
	}
	// Both deployments: `serve all` (the gateway on the in-process
	// transport) and a separate gateway in front of a separate chunk
	// service (gRPC). Server CPU covers every server process.
	// `serve all` also serves PBS (no credentials: anonymous, datastore
	// "default"), so that today's protocol is measured on the same image
	// in the same run: pbstest's HTTP/2 client, 4 requests in flight, raw
	// DataBlobs, as clients send data zstd does not shrink.
	servers := []struct {
		name  string
		start func(b *testing.B) (addr, pbsAddr string, pids []int)
	}{
		{"all", func(b *testing.B) (string, string, []int) {
			cert, key := selfSigned(b)
			p := start(b, nil, "serve", "all", "--store", b.TempDir(), "--pbs-listen", "127.0.0.1:0", "--pbs-tls-cert", cert, "--pbs-tls-key", key)
			waitHealth(b, p.conn(b), healthpb.HealthCheckResponse_SERVING)
			return p.pmx, p.pbs, []int{p.cmd.Process.Pid}
		}},
		{"separate", func(b *testing.B) (string, string, []int) {
			c := start(b, nil, "serve", "chunk", "--store", b.TempDir())
			waitHealth(b, c.conn(b), healthpb.HealthCheckResponse_SERVING)
			gw := start(b, nil, "serve", "pmx-gateway", "--chunk-service", c.grpc)
			return gw.pmx, "", []int{c.cmd.Process.Pid, gw.cmd.Process.Pid}
		}},
	}
	var rss []string
	for _, srv := range servers {
		addr, pbsAddr, pids := srv.start(b)
		timedOp := func(b *testing.B, op func(i int) string) string {
			b.SetBytes(int64(size))
			var out string
			var cpu time.Duration
			for i := range b.N {
				before := cpuTime(b, pids)
				out = op(i)
				cpu += cpuTime(b, pids) - before
			}
			recordBench(b, size)
			// Per 4 MiB of input: a fixed chunk.
			perChunk := float64(cpu.Microseconds()) / float64(b.N) / float64(size>>22)
			b.ReportMetric(perChunk, "server-µs-cpu/4MiB")
			serverCPU.Store(strings.TrimPrefix(b.Name(), "Benchmark"), perChunk)
			return out
		}
		timed := func(b *testing.B, args func(i int) []string) string {
			return timedOp(b, func(i int) string { return run(b, args(i)...) })
		}
		for _, mode := range []struct{ name, flag string }{{"fixed", "--fixed"}, {"dynamic", ""}} {
			var snapshot string
			b.Run("backup/"+mode.name+"/"+srv.name, func(b *testing.B) {
				out := timed(b, func(i int) []string {
					args := []string{"backup", "--server", addr, "--type", "vm", "--id", fmt.Sprintf("bench-%s-%d-%d", mode.name, b.N, i), "--name", "image"}
					if mode.flag != "" {
						args = append(args, mode.flag)
					}
					return append(args, src)
				})
				m := snapshotRE.FindStringSubmatch(out)
				if m == nil {
					b.Fatal("no snapshot path")
				}
				snapshot = m[1]
			})
			b.Run("restore/"+mode.name+"/"+srv.name, func(b *testing.B) {
				timed(b, func(int) []string {
					return []string{"restore", "--server", addr, snapshot, filepath.Join(b.TempDir(), "out")}
				})
			})
		}
		if pbsAddr != "" {
			benchPBS(b, pbsAddr, src, int64(size), timedOp)
		}
		for _, pid := range pids {
			rss = append(rss, fmt.Sprintf("%s pid %d %d MiB", srv.name, pid, peakRSS(pid)>>10))
		}
	}
	b.ReportMetric(float64(clientRSS)/1024, "client-peak-MiB")
	fmt.Printf("\nPMXBCKUP peak RSS with a %d MiB input: servers %s; client %d MiB\n", size>>20, strings.Join(rss, ", "), clientRSS>>10)
}

// peakRSS reads VmHWM (KiB) of a running process.
func peakRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
			return kb
		}
	}
	return 0
}

// benchPBS backs the image src up through the PBS gateway at addr as a
// fixed archive, then restores it, each timed by timed.
func benchPBS(b *testing.B, addr, src string, size int64, timed func(*testing.B, func(int) string) string) {
	in, err := os.Open(src)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	epoch := time.Now().Add(-time.Hour).Unix()
	var last int64
	b.Run("backup/fixed/pbs-all", func(b *testing.B) {
		timed(b, func(i int) string {
			last = epoch + int64(i) + int64(b.N)*1000 // a new snapshot per run
			s, err := pbstest.Open(b, addr, "/api2/json/backup", pbs.BackupProtocol, "", pbstest.Query("default", "vm", "bench-pbs", last))
			if err != nil {
				b.Fatal(err)
			}
			if err := s.BackupFixed("image.img.fidx", "vm", "bench-pbs", last, in, size, 4); err != nil {
				b.Fatal(err)
			}
			return ""
		})
	})
	b.Run("restore/fixed/pbs-all", func(b *testing.B) {
		timed(b, func(int) string {
			r, err := pbstest.Open(b, addr, "/api2/json/reader", pbs.ReaderProtocol, "", pbstest.Query("default", "vm", "bench-pbs", last))
			if err != nil {
				b.Fatal(err)
			}
			out, err := os.Create(filepath.Join(b.TempDir(), "out"))
			if err != nil {
				b.Fatal(err)
			}
			defer out.Close()
			if n, err := r.RestoreFixed("image.img.fidx", out, 4); err != nil || n != size {
				b.Fatalf("restore: %d bytes, %v", n, err)
			}
			return ""
		})
	})
}

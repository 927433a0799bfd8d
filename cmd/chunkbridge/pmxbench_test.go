package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// BenchmarkPMX backs up and restores a random image (fixed 4 MiB chunks)
// and stream (casync's chunker) through a separate PMXBCKUP gateway
// process, and reports MB/s next to the same run's single-core
// SHA-256 + zstd limit, with the peak RSS of the gateway and the client.
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

	chunkSvc := start(b, nil, "serve", "chunk", "--store", b.TempDir())
	waitHealth(b, chunkSvc.conn(b), healthpb.HealthCheckResponse_SERVING)
	gw := start(b, nil, "serve", "pmx-gateway", "--chunk-service", chunkSvc.grpc)
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
	for _, mode := range []struct{ name, flag string }{{"fixed", "--fixed"}, {"dynamic", ""}} {
		var snapshot string
		b.Run("backup/"+mode.name, func(b *testing.B) {
			b.SetBytes(int64(size))
			for i := range b.N {
				args := []string{"backup", "--server", gw.pmx, "--type", "vm", "--id", fmt.Sprintf("bench-%s-%d-%d", mode.name, b.N, i), "--name", "image"}
				if mode.flag != "" {
					args = append(args, mode.flag)
				}
				m := snapshotRE.FindStringSubmatch(run(b, append(args, src)...))
				if m == nil {
					b.Fatal("no snapshot path")
				}
				snapshot = m[1]
			}
			recordBench(b, size)
		})
		b.Run("restore/"+mode.name, func(b *testing.B) {
			b.SetBytes(int64(size))
			for range b.N {
				run(b, "restore", "--server", gw.pmx, snapshot, filepath.Join(b.TempDir(), "out"))
			}
			recordBench(b, size)
		})
	}
	b.ReportMetric(float64(clientRSS)/1024, "client-peak-MiB")
	gwRSS := peakRSS(gw.cmd.Process.Pid)
	fmt.Printf("\nPMXBCKUP peak RSS with a %d MiB input: gateway %d MiB, client %d MiB\n", size>>20, gwRSS>>10, clientRSS>>10)
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

package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chunkbridge/chunkbridge/format/caproto"
	"github.com/chunkbridge/chunkbridge/format/pmxproto"
	"github.com/chunkbridge/chunkbridge/gateway/casync"
	"github.com/chunkbridge/chunkbridge/pmxclient"
)

// maxGatewayRSS is the bar every gateway process stays under, whatever its
// clients do (issue 9).
const maxGatewayRSS = 256 << 20

// procStatus reads a "Vm…: N kB" field of a process.
func procStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// hostileServer is a serve all under attack, and a well-behaved client
// that must still be served while the attack goes on.
type hostileServer struct {
	// gateways are the processes under attack: one serve all, or the
	// three gateway deployments in front of a separate serve chunk.
	gateways          []*process
	pmx, casync, http string
	digests           []pmxclient.Digest // big incompressible chunks already stored
}

// servesOthers is a well-behaved client's round trip on every protocol.
func (h *hostileServer) servesOthers(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	c, err := pmxclient.Dial(ctx, h.pmx, nil)
	if err != nil {
		t.Fatalf("a well-behaved PMXBCKUP client is not served during the attack: %v", err)
	}
	defer c.Close()
	data := []byte(fmt.Sprintf("still served %d", rand.Uint64()))
	d := sha256.Sum256(data)
	if err := c.Upload(ctx, d, data); err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(ctx); err != nil {
		t.Fatalf("upload during the attack: %v", err)
	}
	if err := c.Download(ctx, []pmxclient.Digest{d}, func(int, []byte) error { return nil }); err != nil {
		t.Fatalf("download during the attack: %v", err)
	}
	id := fmt.Sprintf("%x", h.digests[0][:])
	req, _ := http.NewRequestWithContext(ctx, http.MethodHead, "http://"+h.http+"/casync/chunks/"+id[:4]+"/"+id+".cacnk", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("the casync HTTP store is not served during the attack: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HEAD of a stored chunk during the attack: %s", resp.Status)
	}
}

// report checks every gateway process's peak RSS so far and logs it.
func (h *hostileServer) report(t *testing.T, attack string) {
	t.Helper()
	for _, p := range h.gateways {
		pid := p.cmd.Process.Pid
		rss, peak := procStatus(t, pid, "VmRSS"), procStatus(t, pid, "VmHWM")
		t.Logf("%s: %s: RSS %d MiB, peak %d MiB", attack, p.cmd.Args[2], rss>>20, peak>>20)
		if peak > maxGatewayRSS {
			t.Errorf("%s: %s: peak RSS %d MiB, more than %d MiB", attack, p.cmd.Args[2], peak>>20, maxGatewayRSS>>20)
		}
	}
}

// dialMany opens n connections to addr and returns them.
func dialMany(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("connection %d to %s: %v", len(conns), addr, err)
		}
		conns = append(conns, c)
	}
	return conns
}

// writeAll writes frames to c until they are all written or the server
// stops reading for long enough that the write deadline passes: either
// way the server has taken all the input it is going to take.
func writeAll(c net.Conn, frames ...[]byte) {
	c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	for _, f := range frames {
		if _, err := c.Write(f); err != nil {
			return
		}
	}
}

// newHostileServer starts serve all, or with separate the chunk service
// and the three gateways as their own processes, as on Kubernetes.
func newHostileServer(t *testing.T, separate bool) *hostileServer {
	h := &hostileServer{}
	if separate {
		chunk := start(t, nil, "serve", "chunk", "--store", t.TempDir())
		for _, mode := range []string{"pmx-gateway", "casync-gateway", "rest-gateway"} {
			h.gateways = append(h.gateways, start(t, nil, "serve", mode, "--chunk-service", chunk.grpc))
		}
		h.pmx, h.casync, h.http = h.gateways[0].pmx, h.gateways[1].casync, h.gateways[2].http
	} else {
		p := start(t, nil, "serve", "all", "--store", t.TempDir())
		h.gateways = []*process{p}
		h.pmx, h.casync, h.http = p.pmx, p.casync, p.http
	}
	ctx := t.Context()
	c, err := pmxclient.Dial(ctx, h.pmx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 4 {
		data := make([]byte, 4<<20)
		for j := range data {
			data[j] = byte(rand.Uint32())
		}
		d := sha256.Sum256(data)
		h.digests = append(h.digests, d)
		if err := c.Upload(ctx, d, data); err != nil {
			t.Fatalf("chunk %d: %v", i, err)
		}
	}
	if err := c.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	return h
}

// TestHostileClients runs each attack of issue 9 against its own serve all,
// and against its own separate gateway processes in front of a chunk
// service, and asserts, from the processes themselves, that memory stays
// bounded and that a well-behaved client is served while the attack goes on.
func TestHostileClients(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the chunkbridge binary")
	}
	// Each attack gets a fresh process, so that its peak RSS is its own.
	attack := func(name string, run func(t *testing.T, h *hostileServer)) {
		for _, separate := range []bool{false, true} {
			deployment := map[bool]string{false: "all", true: "separate"}[separate]
			t.Run(name+"/"+deployment, func(t *testing.T) {
				h := newHostileServer(t, separate)
				run(t, h)
				h.servesOthers(t)
				h.report(t, name)
			})
		}
	}
	attack("IdleConnections", func(t *testing.T, h *hostileServer) {
		for _, addr := range []string{h.casync, h.pmx, h.http} {
			dialMany(t, addr, 2000)
		}
	})

	attack("PipelinedDownloadsNeverRead", func(t *testing.T, h *hostileServer) {
		c := dialMany(t, h.pmx, 1)[0]
		var frames [][]byte
		for i := range 200 {
			frames = append(frames, (&pmxproto.DownloadChunks{ID: uint8(i), Digests: h.digests}).Encode(nil))
		}
		writeAll(c, frames...)
	})

	attack("ManyPipelinedDownloadsNeverRead", func(t *testing.T, h *hostileServer) {
		var frames [][]byte
		for i := range 200 {
			frames = append(frames, (&pmxproto.DownloadChunks{ID: uint8(i), Digests: h.digests}).Encode(nil))
		}
		var wg sync.WaitGroup
		for _, c := range dialMany(t, h.pmx, 20) {
			wg.Go(func() { writeAll(c, frames...) })
		}
		wg.Wait()
	})

	attack("StalledCasyncPulls", func(t *testing.T, h *hostileServer) {
		req := &caproto.Request{}
		for range 2000 {
			for _, d := range h.digests {
				req.IDs = append(req.IDs, d)
			}
		}
		var wg sync.WaitGroup
		for _, c := range dialMany(t, h.casync, 20) {
			wg.Go(func() {
				var pre strings.Builder
				casync.WritePreamble(&pre, []string{"casync", "pull", "-", "-", "-", "store"})
				writeAll(c, []byte(pre.String()), (&caproto.Hello{Features: caproto.PullChunks}).Encode(nil), req.Encode(nil))
			})
		}
		wg.Wait()
	})

	attack("StalledCasyncPushes", func(t *testing.T, h *hostileServer) {
		hello := (&caproto.Hello{Features: caproto.ReadableStore | caproto.PushIndex | caproto.PushChunks | caproto.PushIndexChunks}).Encode(nil)
		for _, c := range dialMany(t, h.casync, 20) {
			var pre strings.Builder
			casync.WritePreamble(&pre, []string{"casync", "push", "-", "-", "hostile.caibx", "store"})
			writeAll(c, []byte(pre.String()), hello)
		}
	})

	attack("SlowBodies", func(t *testing.T, h *hostileServer) {
		id := fmt.Sprintf("%x", sha256.Sum256([]byte("slow")))
		for _, c := range dialMany(t, h.http, 200) {
			fmt.Fprintf(c, "PUT /casync/chunks/%s/%s.cacnk HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\nx", id[:4], id, 8<<20)
		}
	})

	attack("HugeFixedCreateBackups", func(t *testing.T, h *hostileServer) {
		var wg sync.WaitGroup
		for n, c := range dialMany(t, h.pmx, 8) {
			wg.Go(func() {
				br := bufio.NewReader(c)
				var frames [][]byte
				for i := range 256 {
					frames = append(frames, (&pmxproto.CreateBackup{
						ID: uint8(i), BackupType: pmxproto.BackupHost, Timestamp: uint64(1700000000 + n*1000 + i),
						ChunkSize: 1, FileSize: 16 << 20, BackupID: "hostile", Name: fmt.Sprintf("f%d", i),
					}).Encode(nil))
				}
				writeAll(c, frames...)
				// Every CreateBackup is answered (created or refused) or the
				// connection ends: the server has acted on all of them.
				c.SetReadDeadline(time.Now().Add(60 * time.Second))
				r := pmxproto.NewReader(br)
				for range 257 { // Hello, then one reply each
					if _, err := r.ReadPacket(); err != nil && err != io.EOF {
						if _, body := err.(*pmxproto.BodyError); !body {
							return
						}
					}
				}
			})
		}
		wg.Wait()
	})
}

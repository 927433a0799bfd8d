package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/chunkbridge/chunkbridge/deployments/kubernetes"
)

// Images built by `make images`; nothing is ever pulled. `make e2e` builds
// them under a tag unique to its run and names them here, so that runs
// sharing a Docker engine never test each other's build.
var (
	image      = envOr("CHUNKBRIDGE_IMAGE", "chunkbridge:dev")
	minioImage = envOr("CHUNKBRIDGE_MINIO_IMAGE", "chunkbridge-minio:dev")
	// hostBinary is chunkbridge built for this machine: the casync-ssh shim
	// and the PMXBCKUP client run outside the containers, as users run them.
	hostBinary string
)

func envOr(k, v string) string {
	if s := os.Getenv(k); s != "" {
		return s
	}
	return v
}

// hostNet makes host networking the default: the engine runs without a
// bridge, and every container listens on 127.0.0.1 only.
type hostNet struct{}

func (hostNet) Initialize(context.Context) (testcontainers.RuntimeConfig, error) {
	return testcontainers.RuntimeConfig{DefaultBridgeNetwork: "host", PublishedHost: "127.0.0.1"}, nil
}

func TestMain(m *testing.M) {
	// testcontainers reads these once, before its first call.
	for k, v := range map[string]string{
		"TESTCONTAINERS_RYUK_DISABLED": "true",      // no reaper image to pull
		"TESTCONTAINERS_HOST_OVERRIDE": "127.0.0.1", // never ask Docker for a gateway address
		"TESTCONTAINERS_PROVIDER":      "hostnet",
	} {
		if _, ok := os.LookupEnv(k); !ok {
			os.Setenv(k, v)
		}
	}
	if err := testcontainers.RegisterProvider("hostnet", func() testcontainers.RuntimeProvider { return hostNet{} }); err != nil {
		panic(err)
	}
	dir, err := os.MkdirTemp("", "chunkbridge-e2e-")
	if err != nil {
		panic(err)
	}
	hostBinary = filepath.Join(dir, "chunkbridge")
	if out, err := exec.Command("go", "build", "-C", "..", "-o", hostBinary, "./cmd/chunkbridge").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build chunkbridge: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireDocker skips without a reachable engine and the images, except in
// CI, where that is a failure.
func requireDocker(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("e2e runs containers")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cli, err := testcontainers.NewDockerClientWithOpts(ctx)
	if err == nil {
		defer cli.Close()
		if _, err = cli.Ping(ctx, client.PingOptions{NegotiateAPIVersion: true}); err == nil {
			for _, img := range []string{image, minioImage} {
				if _, ierr := cli.ImageInspect(ctx, img); ierr != nil {
					err = fmt.Errorf("image %s is not built (run `make images`): %w", img, ierr)
					break
				}
			}
		}
	}
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI needs the Docker engine and the images: %v", err)
		}
		t.Skipf("skipping e2e: %v", err)
	}
}

// freePort picks a port the containers bind later, with host networking.
// A port from the kernel's ephemeral range (what binding port 0 returns)
// can be handed to any outgoing connection or port-0 listener on the
// machine before the container binds it; that failed a CI run once with
// "address already in use". So the port is picked below that range, where
// only explicit binds land, and checked free; picks are never repeated.
func freePort(t *testing.T) string {
	t.Helper()
	low := ephemeralLow()
	for range 200 {
		p := 10000 + rand.IntN(low-10000)
		if _, dup := picked.LoadOrStore(p, true); dup {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		l.Close()
		return fmt.Sprint(p)
	}
	t.Fatal("no free port below the ephemeral range")
	return ""
}

var picked sync.Map

// ephemeralLow is the first port of the kernel's ephemeral range.
func ephemeralLow() int {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 11000 {
				low = n
			}
		}
	}
	return low
}

// manifests is the dev overlay, rendered: the containers run with exactly
// its args and env, loopback addresses substituted for cluster ones.
type manifests struct {
	deployments map[string]*appsv1.Deployment
	sts         map[string]*appsv1.StatefulSet
	configMaps  map[string]*corev1.ConfigMap
	secrets     map[string]*corev1.Secret
}

func loadManifests(t *testing.T) *manifests {
	t.Helper()
	objs, err := kubernetes.Render("../deployments/kubernetes/overlays/dev")
	if err != nil {
		t.Fatal(err)
	}
	m := &manifests{map[string]*appsv1.Deployment{}, map[string]*appsv1.StatefulSet{}, map[string]*corev1.ConfigMap{}, map[string]*corev1.Secret{}}
	for _, o := range objs {
		switch o := o.(type) {
		case *appsv1.Deployment:
			m.deployments[o.Name] = o
		case *appsv1.StatefulSet:
			m.sts[o.Name] = o
		case *corev1.ConfigMap:
			m.configMaps[o.Name] = o
		case *corev1.Secret:
			m.secrets[o.Name] = o
		}
	}
	return m
}

// env resolves a container's environment from the rendered ConfigMaps and
// Secrets.
func (m *manifests) env(t *testing.T, c corev1.Container) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			for k, v := range m.configMaps[ef.ConfigMapRef.Name].Data {
				out[ef.Prefix+k] = v
			}
		case ef.SecretRef != nil:
			s := m.secrets[ef.SecretRef.Name]
			for k, v := range s.StringData {
				out[ef.Prefix+k] = v
			}
			for k, v := range s.Data {
				out[ef.Prefix+k] = string(v)
			}
		}
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			out[e.Name] = e.Value
		case e.ValueFrom.ConfigMapKeyRef != nil:
			out[e.Name] = m.configMaps[e.ValueFrom.ConfigMapKeyRef.Name].Data[e.ValueFrom.ConfigMapKeyRef.Key]
		case e.ValueFrom.SecretKeyRef != nil:
			s := m.secrets[e.ValueFrom.SecretKeyRef.Name]
			if s == nil {
				t.Fatalf("env %s: secret %s is not in the dev overlay", e.Name, e.ValueFrom.SecretKeyRef.Name)
			}
			v, ok := s.StringData[e.ValueFrom.SecretKeyRef.Key]
			if !ok {
				v = string(s.Data[e.ValueFrom.SecretKeyRef.Key])
			}
			out[e.Name] = v
		case e.ValueFrom.ResourceFieldRef != nil:
			// GOMEMLIMIT from the memory limit: not needed here.
		}
	}
	return out
}

// secretMounts writes the Secret volumes that c mounts (the credentials
// file, the admin token) to host directories, as the kubelet would, and
// returns their read-only bind mounts at the manifests' mount paths.
func (m *manifests) secretMounts(t *testing.T, spec corev1.PodSpec, c corev1.Container) []string {
	t.Helper()
	var binds []string
	for _, vm := range c.VolumeMounts {
		for _, v := range spec.Volumes {
			if v.Name != vm.Name || v.Secret == nil {
				continue
			}
			s := m.secrets[v.Secret.SecretName]
			if s == nil {
				t.Fatalf("volume %s: Secret %s is not in the dev overlay", v.Name, v.Secret.SecretName)
			}
			items := v.Secret.Items
			if len(items) == 0 {
				for k := range s.Data {
					items = append(items, corev1.KeyToPath{Key: k, Path: k})
				}
			}
			dir := t.TempDir()
			// The container runs as 65532, not as this user.
			if err := os.Chmod(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			for _, it := range items {
				data, ok := s.Data[it.Key]
				if !ok {
					t.Fatalf("volume %s: Secret %s has no key %s", v.Name, v.Secret.SecretName, it.Key)
				}
				if err := os.WriteFile(filepath.Join(dir, it.Path), data, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			binds = append(binds, dir+":"+vm.MountPath+":ro")
		}
	}
	return binds
}

// secretValue is a key of a rendered Secret; name may omit the suffix
// kustomize appends to a generated Secret's name.
func (m *manifests) secretValue(t *testing.T, name, key string) string {
	t.Helper()
	for n, s := range m.secrets {
		if n == name || strings.HasPrefix(n, name+"-") && len(n) == len(name)+11 {
			if v, ok := s.Data[key]; ok {
				return string(v)
			}
		}
	}
	t.Fatalf("the dev overlay has no Secret %s with key %s", name, key)
	return ""
}

// rewrite turns cluster addresses into loopback ones: replace maps an
// argument's or value's prefix (e.g. "--grpc-listen=0.0.0.0:9090" or
// "chunk:9090") to its replacement.
func rewrite(args []string, replace map[string]string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = a
		for from, to := range replace {
			if strings.Contains(a, from) {
				out[i] = strings.ReplaceAll(a, from, to)
			}
		}
	}
	return out
}

// service is one running container.
type service struct {
	name string
	ctr  *testcontainers.DockerContainer
	http string // 127.0.0.1:port of its /healthz, /readyz, /metrics
}

// run starts an image with host networking, a read-only root file system
// and a tmpfs /tmp (as the manifests mount an emptyDir), and waits for
// readiness on readyPath at readyPort.
func run(t *testing.T, name, img string, cmd []string, env map[string]string, readyPath, readyPort string, binds ...string) *service {
	t.Helper()
	// Only loopback: a cluster name or address left in the args or env
	// would send the container's traffic off this machine.
	for _, v := range append(append([]string{}, cmd...), values(env)...) {
		if addr := nonLoopback(v); addr != "" {
			t.Fatalf("%s: %q still names %q; only 127.0.0.1 may be used", name, v, addr)
		}
	}
	ctx := context.Background()
	ctr, err := testcontainers.Run(ctx, img,
		testcontainers.WithCmd(cmd...),
		testcontainers.WithEnv(env),
		testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
			hc.NetworkMode = "host"
			hc.ReadonlyRootfs = true
			hc.Tmpfs = map[string]string{"/tmp": "rw,size=256m,uid=65532,gid=65532"} // fsGroup 65532, as in the manifests
			hc.Binds = binds
		}),
		testcontainers.WithWaitStrategyAndDeadline(90*time.Second, wait.ForHTTP(readyPath).WithPort(readyPort+"/tcp")),
	)
	testcontainers.CleanupContainer(t, ctr)
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	return &service{name: name, ctr: ctr, http: "127.0.0.1:" + readyPort}
}

// hostPort finds host:port in an argument or value ("--x=h:p", "h:p",
// "s3://..." is not one).
var hostPort = regexp.MustCompile(`(?:^|=)([A-Za-z0-9.-]*):(\d+)$`)

// nonLoopback returns the address in v if it is not 127.0.0.1, such as
// "chunk:9090", "minio:9000", "0.0.0.0:8080" or ":9000".
func nonLoopback(v string) string {
	m := hostPort.FindStringSubmatch(v)
	if m == nil || m[1] == "127.0.0.1" {
		return ""
	}
	return m[1] + ":" + m[2]
}

func values(m map[string]string) []string {
	var out []string
	for k, v := range m {
		if k == "CHUNKBRIDGE_S3_ENDPOINT" && v == "" {
			out = append(out, "unset-s3-endpoint:0") // empty means AWS
		}
		out = append(out, v)
	}
	return out
}

// waitReady polls url until it answers want, as a readiness probe does.
func waitReady(t *testing.T, url string, want int) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		code := 0
		if err == nil {
			code = resp.StatusCode
			resp.Body.Close()
		}
		if code == want {
			return
		}
		time.Sleep(200 * time.Millisecond) // probe interval
	}
	t.Fatalf("%s did not answer %d within 90s", url, want)
}

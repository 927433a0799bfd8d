package kubernetes

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

// renderings lists every kustomization that can be built on its own, with
// what differs between them. TestEveryOverlayIsChecked keeps it complete.
var renderings = map[string]struct {
	pol policy
	// secrets: the Secrets the pods reference, all of which must be
	// created outside Git where the rendering does not carry them.
	secrets []string
}{
	"base": {
		pol:     policy{pmxTLSFromOverlay: true},
		secrets: []string{"chunkbridge-admin-token", "chunkbridge-credentials", "chunkbridge-pbs-ticket-key", "chunkbridge-pbs-tls", "chunkbridge-s3"},
	},
	"overlays/dev": {
		// Dev generates its Secrets, with public values, except PMXBCKUP's
		// certificate and key: a dev user makes them with openssl (README.md),
		// the e2e suite at test time.
		pol: policy{secretsInRender: true, externalSecrets: []string{"chunkbridge-pbs-tls", "chunkbridge-pmx-tls"}},
	},
	"overlays/production": {
		pol:     policy{imageTag: regexp.MustCompile(`^v\d+\.\d+\.\d+$`), requireAuth: true},
		secrets: []string{"chunkbridge-admin-token", "chunkbridge-credentials", "chunkbridge-pbs-ticket-key", "chunkbridge-pbs-tls", "chunkbridge-pmx-tls", "chunkbridge-s3"},
	},
}

func TestManifests(t *testing.T) {
	for dir, r := range renderings {
		t.Run(dir, func(t *testing.T) {
			t.Parallel()
			problems, secrets := check(renderObjects(t, dir), r.pol)
			for _, p := range problems {
				t.Error(p)
			}
			if !r.pol.secretsInRender && !slices.Equal(secrets, r.secrets) {
				t.Errorf("referenced Secrets %v, want %v (update README.md and this test together)", secrets, r.secrets)
			}
			for _, s := range r.pol.externalSecrets {
				if !slices.Contains(secrets, s) {
					t.Errorf("external Secret %s is referenced by no workload: drop it from externalSecrets", s)
				}
			}
		})
	}
}

// The Secrets production and dev expect from outside Git are documented
// for whoever creates them.
func TestReadmeNamesProductionSecrets(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range append(renderings["overlays/production"].secrets, renderings["overlays/dev"].pol.externalSecrets...) {
		if !bytes.Contains(readme, []byte(s)) {
			t.Errorf("README.md does not mention the Secret %s", s)
		}
	}
}

func TestEveryOverlayIsChecked(t *testing.T) {
	dirs, err := filepath.Glob("overlays/*/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		if _, ok := renderings[filepath.Dir(d)]; !ok {
			t.Errorf("%s is not in renderings: add it with its policy", filepath.Dir(d))
		}
	}
}

// A misspelt field must fail decoding, not vanish.
func TestStrictDecodeRejectsUnknownFields(t *testing.T) {
	docs, err := render("overlays/dev")
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(docs, func(d document) bool { return d.id == "Deployment/chunk" })
	if i < 0 {
		t.Fatal("no Deployment/chunk rendered")
	}
	for _, typo := range []struct{ from, to string }{
		{"readinessProbe:", "readinesProbe:"},                         // unknown field
		{"runAsNonRoot: true", "runAsNonRoot: \"true\""},              // wrong type
		{"terminationGracePeriodSeconds:", "terminationGracePeriod:"}, // unknown field
	} {
		doc := docs[i]
		if !bytes.Contains(doc.yaml, []byte(typo.from)) {
			t.Fatalf("rendered chunk Deployment has no %q", typo.from)
		}
		doc.yaml = bytes.Replace(doc.yaml, []byte(typo.from), []byte(typo.to), 1)
		if _, err := decode([]document{doc}); err == nil {
			t.Errorf("%s → %s: decoded without error", typo.from, typo.to)
		} else {
			t.Logf("%s → %s: %v", typo.from, typo.to, err)
		}
	}
}

// Each mutation breaks one rule in an otherwise clean dev rendering; the
// checker must name it.
func TestCheckerCatchesViolations(t *testing.T) {
	cases := []violation{
		{"no memory limit", func(objs []runtime.Object) []runtime.Object {
			delete(container(t, objs, "chunk").Resources.Limits, corev1.ResourceMemory)
			return objs
		}, "no memory limits"},
		{"latest tag", func(objs []runtime.Object) []runtime.Object {
			container(t, objs, "casync-gateway").Image = "chunkbridge:latest"
			return objs
		}, "uses :latest"},
		{"untagged image", func(objs []runtime.Object) []runtime.Object {
			container(t, objs, "pmx-gateway").Image = "chunkbridge"
			return objs
		}, "has no tag"},
		{"root user", func(objs []runtime.Object) []runtime.Object {
			deployment(t, objs, "rest-gateway").Spec.Template.Spec.SecurityContext.RunAsUser = ptr.To[int64](0)
			return objs
		}, "runAsUser must be 65532"},
		{"privilege escalation", func(objs []runtime.Object) []runtime.Object {
			container(t, objs, "chunk").SecurityContext.AllowPrivilegeEscalation = ptr.To(true)
			return objs
		}, "allowPrivilegeEscalation must be false"},
		{"writable root filesystem", func(objs []runtime.Object) []runtime.Object {
			container(t, objs, "pmx-gateway").SecurityContext.ReadOnlyRootFilesystem = nil
			return objs
		}, "readOnlyRootFilesystem must be true"},
		{"chunk readiness over HTTP", func(objs []runtime.Object) []runtime.Object {
			container(t, objs, "chunk").ReadinessProbe.ProbeHandler = corev1.ProbeHandler{
				HTTPGet: &corev1.HTTPGetAction{Path: "/readyz", Port: intstr.FromString("http")}}
			return objs
		}, "readiness probe must be a native grpc probe"},
		{"chunk liveness on storage health", func(objs []runtime.Object) []runtime.Object {
			container(t, objs, "chunk").LivenessProbe.ProbeHandler = corev1.ProbeHandler{
				GRPC: &corev1.GRPCAction{Port: 9090}}
			return objs
		}, "would restart every replica"},
		{"gateway without readiness", func(objs []runtime.Object) []runtime.Object {
			container(t, objs, "casync-gateway").ReadinessProbe = nil
			return objs
		}, "no readiness probe"},
		{"listen port not declared", func(objs []runtime.Object) []runtime.Object {
			replaceArg(t, container(t, objs, "casync-gateway"), "--casync-listen=", "--casync-listen=0.0.0.0:9999")
			return objs
		}, "port 9999 is not a containerPort"},
		{"listen on loopback", func(objs []runtime.Object) []runtime.Object {
			replaceArg(t, container(t, objs, "rest-gateway"), "--http-listen=", "--http-listen=127.0.0.1:8080")
			return objs
		}, "cannot reach a loopback address"},
		{"listen flag dropped", func(objs []runtime.Object) []runtime.Object {
			ctr := container(t, objs, "chunk")
			ctr.Args = slices.DeleteFunc(ctr.Args, func(a string) bool { return strings.HasPrefix(a, "--grpc-listen") })
			return objs
		}, "--grpc-listen not set"},
		{"wrong chunk service address", func(objs []runtime.Object) []runtime.Object {
			replaceArg(t, container(t, objs, "pmx-gateway"), "--chunk-service=", "--chunk-service=chunk:8080")
			return objs
		}, "but the chunk service's gRPC listens on 9090"},
		{"Service targets an undeclared port", func(objs []runtime.Object) []runtime.Object {
			svc := find[*corev1.Service](t, objs, "pmx-gateway")
			svc.Spec.Ports[0].TargetPort = intstr.FromString("pmx")
			return objs
		}, "targetPort pmx is not a containerPort"},
		{"Service selects nothing", func(objs []runtime.Object) []runtime.Object {
			find[*corev1.Service](t, objs, "chunk").Spec.Selector["app.kubernetes.io/component"] = "chunks"
			return objs
		}, "matches 0 workloads"},
		{"NetworkPolicy admits every pod on 9090", func(objs []runtime.Object) []runtime.Object {
			np := find[*networkingv1.NetworkPolicy](t, objs, "chunk")
			np.Spec.Ingress[0].From = append(np.Spec.Ingress[0].From, networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{}})
			return objs
		}, "also admits Deployment/chunk on port 9090"},
		{"NetworkPolicy forgets a gateway", func(objs []runtime.Object) []runtime.Object {
			np := find[*networkingv1.NetworkPolicy](t, objs, "chunk")
			np.Spec.Ingress[0].From = np.Spec.Ingress[0].From[:2]
			return objs
		}, "Deployment/rest-gateway: no NetworkPolicy rule lets it reach"},
		{"NetworkPolicy rule without ports", func(objs []runtime.Object) []runtime.Object {
			find[*networkingv1.NetworkPolicy](t, objs, "chunk").Spec.Ingress[1].Ports = nil
			return objs
		}, "ingress[1]: podSelector map[] also admits"},
		{"gateway without HPA", func(objs []runtime.Object) []runtime.Object {
			return slices.DeleteFunc(objs, func(o runtime.Object) bool {
				h, ok := o.(*autoscalingv2.HorizontalPodAutoscaler)
				return ok && h.Name == "pmx-gateway"
			})
		}, "Deployment/pmx-gateway: no HorizontalPodAutoscaler targets it"},
		{"gateway without PDB", func(objs []runtime.Object) []runtime.Object {
			return slices.DeleteFunc(objs, func(o runtime.Object) bool {
				return kindName(o) == "PodDisruptionBudget/casync-gateway"
			})
		}, "Deployment/casync-gateway: no PodDisruptionBudget"},
		{"Secret lacks a key", func(objs []runtime.Object) []runtime.Object {
			for _, o := range objs {
				if s, ok := o.(*corev1.Secret); ok {
					delete(s.Data, "AWS_SECRET_ACCESS_KEY")
				}
			}
			return objs
		}, `has no key "AWS_SECRET_ACCESS_KEY"`},
		{"grace period too short", func(objs []runtime.Object) []runtime.Object {
			deployment(t, objs, "chunk").Spec.Template.Spec.TerminationGracePeriodSeconds = ptr.To[int64](20)
			return objs
		}, "terminationGracePeriodSeconds (20s) must exceed preStop sleep + --shutdown-timeout (25s)"},
		{"no /tmp emptyDir", func(objs []runtime.Object) []runtime.Object {
			container(t, objs, "chunk").VolumeMounts = nil
			return objs
		}, "needs an emptyDir mounted at /tmp"},
		{"mkbucket makes another bucket", func(objs []runtime.Object) []runtime.Object {
			replaceArg(t, container(t, objs, "mkbucket"), "s3://", "s3://other")
			return objs
		}, `makes bucket "other"`},
	}
	runViolations(t, "overlays/dev", cases)
}

type violation struct {
	name   string
	mutate func(objs []runtime.Object) []runtime.Object
	want   string // in one of the problems
}

// runViolations applies each mutation to a fresh copy of the clean
// rendering of dir and expects a problem containing its want.
func runViolations(t *testing.T, dir string, cases []violation) {
	t.Helper()
	clean := renderObjects(t, dir)
	pol := renderings[dir].pol
	if problems, _ := check(clean, pol); len(problems) > 0 {
		t.Fatalf("%s rendering is not clean: %v", dir, problems)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			objs := make([]runtime.Object, len(clean))
			for i, o := range clean {
				objs[i] = o.DeepCopyObject()
			}
			problems, _ := check(tc.mutate(objs), pol)
			for _, p := range problems {
				if strings.Contains(p, tc.want) {
					t.Logf("caught: %s", p)
					return
				}
			}
			t.Errorf("no problem mentions %q; got %q", tc.want, problems)
		})
	}
}

// The GC and verify CronJobs: the workload rules, the CronJob rules, and
// GC's own (grace, target, no dry run).
func TestCheckerCatchesCronJobViolations(t *testing.T) {
	runViolations(t, "overlays/dev", []violation{
		{"concurrent GC runs allowed", func(objs []runtime.Object) []runtime.Object {
			cronJob(t, objs, "gc").Spec.ConcurrencyPolicy = batchv1.AllowConcurrent
			return objs
		}, `CronJob/gc: concurrencyPolicy must be Forbid, not "Allow"`},
		{"GC grace below the minimum", func(objs []runtime.Object) []runtime.Object {
			replaceArg(t, container(t, objs, "gc"), "--grace=", "--grace=1h")
			return objs
		}, "--grace=1h0m0s is below the minimum 24h0m0s"},
		{"GC grace 0 from the environment", func(objs []runtime.Object) []runtime.Object {
			ctr := container(t, objs, "gc")
			ctr.Args = slices.DeleteFunc(ctr.Args, func(a string) bool { return strings.HasPrefix(a, "--grace") })
			ctr.Env = append(ctr.Env, corev1.EnvVar{Name: "CHUNKBRIDGE_GRACE", Value: "0s"})
			return objs
		}, "--grace=0s is below the minimum"},
		{"GC grace unparsable", func(objs []runtime.Object) []runtime.Object {
			replaceArg(t, container(t, objs, "gc"), "--grace=", "--grace=1d")
			return objs
		}, "--grace=1d: time: unknown unit"},
		{"GC dry run", func(objs []runtime.Object) []runtime.Object {
			c := container(t, objs, "gc")
			c.Args = append(c.Args, "--dry-run")
			return objs
		}, "a scheduled gc that never deletes"},
		{"GC targets a Service port that does not exist", func(objs []runtime.Object) []runtime.Object {
			replaceArg(t, container(t, objs, "gc"), "--chunk-service=", "--chunk-service=chunk:9091")
			return objs
		}, `Service "chunk" has no port 9091`},
		{"GC targets the metrics port", func(objs []runtime.Object) []runtime.Object {
			replaceArg(t, container(t, objs, "gc"), "--chunk-service=", "--chunk-service=chunk:8080")
			return objs
		}, "reaches port 8080, but the chunk service's gRPC listens on 9090"},
		{"GC targets a gateway", func(objs []runtime.Object) []runtime.Object {
			replaceArg(t, container(t, objs, "gc"), "--chunk-service=", "--chunk-service=rest-gateway:8080")
			return objs
		}, "selects Deployment/rest-gateway, not the chunk service"},
		{"verify without --chunk-service", func(objs []runtime.Object) []runtime.Object {
			ctr := container(t, objs, "verify")
			ctr.Args = slices.DeleteFunc(ctr.Args, func(a string) bool { return strings.HasPrefix(a, "--chunk-service") })
			return objs
		}, "CronJob/verify container verify: --chunk-service not set"},
		{"GC sends no token the chunk service requires", func(objs []runtime.Object) []runtime.Object {
			c := container(t, objs, "gc")
			c.Args = slices.DeleteFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "--auth-token-file") })
			return objs
		}, "CronJob/gc container gc: --chunk-service chunk:9090 requires a bearer token"},
		{"verify sends another Secret's token", func(objs []runtime.Object) []runtime.Object {
			cronJob(t, objs, "verify").Spec.JobTemplate.Spec.Template.Spec.Volumes[0].Secret.SecretName = "chunkbridge-dev-tokens"
			return objs
		}, "CronJob/verify container verify: --chunk-service chunk:9090 sends the token in Secret/chunkbridge-dev-tokens key token, but Deployment/chunk accepts the one in Secret/chunkbridge-admin-token"},
		{"NetworkPolicy forgets the GC pods", func(objs []runtime.Object) []runtime.Object {
			np := find[*networkingv1.NetworkPolicy](t, objs, "chunk")
			np.Spec.Ingress[0].From = slices.DeleteFunc(np.Spec.Ingress[0].From, func(p networkingv1.NetworkPolicyPeer) bool {
				return p.PodSelector != nil && p.PodSelector.MatchLabels["app.kubernetes.io/component"] == "gc"
			})
			return objs
		}, "CronJob/gc: no NetworkPolicy rule lets it reach Deployment/chunk on port 9090"},
		{"GC pod labelled like nothing the policy admits", func(objs []runtime.Object) []runtime.Object {
			cronJob(t, objs, "gc").Spec.JobTemplate.Spec.Template.Labels["app.kubernetes.io/component"] = "collector"
			return objs
		}, "CronJob/gc: no NetworkPolicy rule lets it reach"},
		{"no startingDeadlineSeconds", func(objs []runtime.Object) []runtime.Object {
			cronJob(t, objs, "gc").Spec.StartingDeadlineSeconds = nil
			return objs
		}, "CronJob/gc: startingDeadlineSeconds must be set"},
		{"no activeDeadlineSeconds", func(objs []runtime.Object) []runtime.Object {
			cronJob(t, objs, "verify").Spec.JobTemplate.Spec.ActiveDeadlineSeconds = nil
			return objs
		}, "CronJob/verify: the job template must set activeDeadlineSeconds"},
		{"no backoffLimit", func(objs []runtime.Object) []runtime.Object {
			cronJob(t, objs, "gc").Spec.JobTemplate.Spec.BackoffLimit = nil
			return objs
		}, "CronJob/gc: no backoffLimit"},
		{"no failed history", func(objs []runtime.Object) []runtime.Object {
			cronJob(t, objs, "gc").Spec.FailedJobsHistoryLimit = ptr.To[int32](0)
			return objs
		}, "failedJobsHistoryLimit must be at least 1"},
		{"history deleted by a TTL", func(objs []runtime.Object) []runtime.Object {
			cronJob(t, objs, "gc").Spec.JobTemplate.Spec.TTLSecondsAfterFinished = ptr.To[int32](60)
			return objs
		}, "ttlSecondsAfterFinished would delete the history"},
		{"bad schedule", func(objs []runtime.Object) []runtime.Object {
			cronJob(t, objs, "gc").Spec.Schedule = "daily"
			return objs
		}, `schedule "daily": want five cron fields`},
		{"podFailurePolicy with OnFailure", func(objs []runtime.Object) []runtime.Object {
			cronJob(t, objs, "gc").Spec.JobTemplate.Spec.Template.Spec.RestartPolicy = corev1.RestartPolicyOnFailure
			return objs
		}, "podFailurePolicy requires restartPolicy Never"},
		{"podFailurePolicy names another container", func(objs []runtime.Object) []runtime.Object {
			container(t, objs, "verify").Name = "scrub"
			return objs
		}, `podFailurePolicy.rules[0] names container "verify"`},
		{"GC pod as root", func(objs []runtime.Object) []runtime.Object {
			cronJob(t, objs, "gc").Spec.JobTemplate.Spec.Template.Spec.SecurityContext.RunAsNonRoot = nil
			return objs
		}, "CronJob/gc: pod securityContext.runAsNonRoot must be true"},
		{"GC pod without seccomp", func(objs []runtime.Object) []runtime.Object {
			cronJob(t, objs, "gc").Spec.JobTemplate.Spec.Template.Spec.SecurityContext.SeccompProfile = nil
			return objs
		}, "CronJob/gc: pod securityContext.seccompProfile.type must be RuntimeDefault"},
		{"GC keeps its capabilities", func(objs []runtime.Object) []runtime.Object {
			container(t, objs, "gc").SecurityContext.Capabilities = nil
			return objs
		}, "CronJob/gc container gc: securityContext.capabilities.drop must contain ALL"},
		{"GC writable root filesystem", func(objs []runtime.Object) []runtime.Object {
			container(t, objs, "gc").SecurityContext.ReadOnlyRootFilesystem = ptr.To(false)
			return objs
		}, "CronJob/gc container gc: securityContext.readOnlyRootFilesystem must be true"},
		{"GC without a memory limit", func(objs []runtime.Object) []runtime.Object {
			delete(container(t, objs, "gc").Resources.Limits, corev1.ResourceMemory)
			return objs
		}, "CronJob/gc container gc: no memory limits"},
		{"GC on the default ServiceAccount", func(objs []runtime.Object) []runtime.Object {
			cronJob(t, objs, "gc").Spec.JobTemplate.Spec.Template.Spec.ServiceAccountName = ""
			return objs
		}, "CronJob/gc: runs as the default ServiceAccount"},
		{"GC on latest", func(objs []runtime.Object) []runtime.Object {
			container(t, objs, "gc").Image = "chunkbridge:latest"
			return objs
		}, "CronJob/gc container gc: image \"chunkbridge:latest\" uses :latest"},
	})
	// Production pins every image, the CronJobs' too.
	runViolations(t, "overlays/production", []violation{
		{"GC on a dev image in production", func(objs []runtime.Object) []runtime.Object {
			container(t, objs, "gc").Image = "chunkbridge:dev"
			return objs
		}, `CronJob/gc container gc: image "chunkbridge:dev": tag must match`},
	})
}

// Access control: serve starts only with a credential; in production
// every listener authenticates (credentials file from a Secret, admin token
// for the gateways, PMXBCKUP over mutual TLS) and nothing is anonymous.
func TestCheckerCatchesAccessViolations(t *testing.T) {
	dropArg := func(ctr *corev1.Container, prefix string) {
		n := len(ctr.Args)
		ctr.Args = slices.DeleteFunc(ctr.Args, func(a string) bool { return strings.HasPrefix(a, prefix) })
		if len(ctr.Args) == n {
			t.Fatalf("container %s has no argument %s…", ctr.Name, prefix)
		}
	}
	runViolations(t, "overlays/dev", []violation{
		{"serve without any credential", func(objs []runtime.Object) []runtime.Object {
			ctr := container(t, objs, "rest-gateway")
			dropArg(ctr, "--credentials-file")
			dropArg(ctr, "--auth-token-file")
			return objs
		}, "Deployment/rest-gateway container rest-gateway: no --credentials-file or --auth-token-file: serve refuses to listen beyond loopback"},
		{"gateway without the admin token", func(objs []runtime.Object) []runtime.Object {
			dropArg(container(t, objs, "casync-gateway"), "--auth-token-file")
			return objs
		}, "Deployment/casync-gateway container casync-gateway: --credentials-file without --auth-token-file"},
		{"credentials file baked into the image", func(objs []runtime.Object) []runtime.Object {
			replaceArg(t, container(t, objs, "chunk"), "--credentials-file=", "--credentials-file=/credentials.yaml")
			return objs
		}, "--credentials-file=/credentials.yaml is on no volume mount"},
		{"credentials file from an emptyDir", func(objs []runtime.Object) []runtime.Object {
			replaceArg(t, container(t, objs, "chunk"), "--credentials-file=", "--credentials-file=/tmp/credentials.yaml")
			return objs
		}, "--credentials-file=/tmp/credentials.yaml is on volume tmp, which is not a Secret"},
		{"credentials file not in its Secret volume", func(objs []runtime.Object) []runtime.Object {
			replaceArg(t, container(t, objs, "pmx-gateway"), "--credentials-file=", "--credentials-file=/etc/chunkbridge/credentials/creds.yaml")
			return objs
		}, "is not in volume credentials: it maps no key to creds.yaml"},
		{"credentials file by subPath", func(objs []runtime.Object) []runtime.Object {
			ctr := container(t, objs, "rest-gateway")
			for i := range ctr.VolumeMounts {
				if ctr.VolumeMounts[i].Name == "credentials" {
					ctr.VolumeMounts[i].MountPath += "/credentials.yaml"
					ctr.VolumeMounts[i].SubPath = "credentials.yaml"
				}
			}
			return objs
		}, "is mounted by subPath (volume credentials): a changed Secret never reaches the process"},
		// With credentials, a PMXBCKUP gateway without client certificates
		// refuses every client, dev's too.
		{"dev PMXBCKUP without client CA", func(objs []runtime.Object) []runtime.Object {
			dropArg(container(t, objs, "pmx-gateway"), "--pmx-tls-client-ca")
			return objs
		}, "Deployment/pmx-gateway container pmx-gateway: no --pmx-tls-client-ca (or --tls-client-ca): PMXBCKUP has no field for a token, so with access control"},
		{"dev PMXBCKUP without TLS", func(objs []runtime.Object) []runtime.Object {
			ctr := container(t, objs, "pmx-gateway")
			dropArg(ctr, "--pmx-tls-cert")
			dropArg(ctr, "--pmx-tls-key")
			return objs
		}, "no --pmx-tls-cert (or --tls-cert)"},
		{"dev PMXBCKUP certificate Secret without the client CA", func(objs []runtime.Object) []runtime.Object {
			d := deployment(t, objs, "pmx-gateway")
			for i, v := range d.Spec.Template.Spec.Volumes {
				if v.Name == "pmx-tls" {
					d.Spec.Template.Spec.Volumes[i].Secret.Items = v.Secret.Items[:2]
				}
			}
			return objs
		}, "--pmx-tls-client-ca=/etc/chunkbridge/pmx-tls/ca.crt is not in volume pmx-tls: it maps no key to ca.crt"},
	})
	runViolations(t, "overlays/production", []violation{
		{"gateway without credentials file", func(objs []runtime.Object) []runtime.Object {
			dropArg(container(t, objs, "casync-gateway"), "--credentials-file")
			return objs
		}, "Deployment/casync-gateway container casync-gateway: no --credentials-file: every listener must authenticate"},
		{"chunk service without credentials file", func(objs []runtime.Object) []runtime.Object {
			dropArg(container(t, objs, "chunk"), "--credentials-file")
			return objs
		}, "Deployment/chunk container chunk: no --credentials-file"},
		{"anonymous chunk service", func(objs []runtime.Object) []runtime.Object {
			c := container(t, objs, "chunk")
			c.Args = append(c.Args, "--allow-anonymous")
			return objs
		}, "Deployment/chunk container chunk: --allow-anonymous: every caller would be an admin"},
		{"anonymous from the environment", func(objs []runtime.Object) []runtime.Object {
			c := container(t, objs, "rest-gateway")
			c.Env = append(c.Env, corev1.EnvVar{Name: "CHUNKBRIDGE_ALLOW_ANONYMOUS", Value: "true"})
			return objs
		}, "Deployment/rest-gateway container rest-gateway: --allow-anonymous"},
		{"PMXBCKUP without client certificates", func(objs []runtime.Object) []runtime.Object {
			dropArg(container(t, objs, "pmx-gateway"), "--pmx-tls-client-ca")
			return objs
		}, "Deployment/pmx-gateway container pmx-gateway: no --pmx-tls-client-ca (or --tls-client-ca): PMXBCKUP has no field for a token"},
		{"PMXBCKUP without TLS", func(objs []runtime.Object) []runtime.Object {
			ctr := container(t, objs, "pmx-gateway")
			dropArg(ctr, "--pmx-tls-cert")
			dropArg(ctr, "--pmx-tls-key")
			return objs
		}, "no --pmx-tls-cert (or --tls-cert)"},
		{"PMXBCKUP key from a ConfigMap", func(objs []runtime.Object) []runtime.Object {
			d := deployment(t, objs, "pmx-gateway")
			for i, v := range d.Spec.Template.Spec.Volumes {
				if v.Name == "pmx-tls" {
					d.Spec.Template.Spec.Volumes[i].VolumeSource = corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
						LocalObjectReference: corev1.LocalObjectReference{Name: "chunkbridge-s3-config"}, Items: v.Secret.Items}}
				}
			}
			return objs
		}, "--pmx-tls-key=/etc/chunkbridge/pmx-tls/tls.key is on volume pmx-tls, which is not a Secret"},
		{"PBS tickets per replica", func(objs []runtime.Object) []runtime.Object {
			dropArg(container(t, objs, "pbs-gateway"), "--pbs-ticket-key-file")
			return objs
		}, "Deployment/pbs-gateway container pbs-gateway: no --pbs-ticket-key-file: PBS login tickets would work only at the replica that issued them"},
		{"PBS ticket key from a ConfigMap", func(objs []runtime.Object) []runtime.Object {
			d := deployment(t, objs, "pbs-gateway")
			for i, v := range d.Spec.Template.Spec.Volumes {
				if v.Name == "pbs-ticket-key" {
					d.Spec.Template.Spec.Volumes[i].VolumeSource = corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
						LocalObjectReference: corev1.LocalObjectReference{Name: "chunkbridge-s3-config"}, Items: v.Secret.Items}}
				}
			}
			return objs
		}, "--pbs-ticket-key-file=/etc/chunkbridge/pbs-ticket-key/key is on volume pbs-ticket-key, which is not a Secret"},
		{"verify without the admin token", func(objs []runtime.Object) []runtime.Object {
			dropArg(container(t, objs, "verify"), "--auth-token-file")
			return objs
		}, "CronJob/verify container verify: --chunk-service chunk:9090 requires a bearer token"},
	})
}

// The dev overlay's read and append principals: their tokens, in the Secret
// chunkbridge-dev-tokens, are in the credentials file the pods mount, with
// those roles; the admin token is the one the pods share. PMXBCKUP has
// certificate principals instead (the e2e suite signs their subjects), an
// append one at least.
func TestDevPrincipals(t *testing.T) {
	objs := renderObjects(t, "overlays/dev")
	secret := func(prefix string) *corev1.Secret {
		for _, o := range objs {
			if s, ok := o.(*corev1.Secret); ok && strings.HasPrefix(s.Name, prefix) {
				return s
			}
		}
		t.Fatalf("no Secret %s rendered", prefix)
		return nil
	}
	var file struct {
		Tenants []struct {
			Name        string
			DedupDomain string `json:"dedup_domain"`
			Quota       struct {
				LogicalBytes string `json:"logical_bytes"`
				StoredBytes  string `json:"stored_bytes"`
			}
		}
		Principals []struct {
			Name, Role, Tenant string
			TokenSHA256        string `json:"token_sha256"`
			CertSubject        string `json:"cert_subject"`
		}
	}
	if err := yaml.UnmarshalStrict(secret("chunkbridge-credentials-").Data["credentials.yaml"], &file); err != nil {
		t.Fatal(err)
	}
	tokens := find[*corev1.Secret](t, objs, "chunkbridge-dev-tokens")
	roles, certRoles := map[string]bool{}, map[string]bool{}
	withToken := 0
	for _, p := range file.Principals {
		if p.CertSubject != "" {
			certRoles[p.Role] = true
			continue
		}
		withToken++
		tok, ok := tokens.Data[p.Name]
		sum := sha256.Sum256(tok)
		if !ok || hex.EncodeToString(sum[:]) != p.TokenSHA256 {
			t.Errorf("principal %s: chunkbridge-dev-tokens has no token %s whose SHA-256 is in the credentials file", p.Name, p.Name)
		}
		roles[p.Role] = true
	}
	if !roles["read"] || !roles["append"] || len(tokens.Data) != withToken {
		t.Errorf("dev principals %+v with tokens for %d: want a read and an append principal, each with its token", file.Principals, len(tokens.Data))
	}
	// A second tenant shows tenants: it is listed, and one principal is
	// its own.
	tenants := map[string]bool{}
	for _, tn := range file.Tenants {
		tenants[tn.Name] = true
	}
	ofTenant := 0
	for _, p := range file.Principals {
		if p.Tenant != "" {
			if !tenants[p.Tenant] {
				t.Errorf("principal %s: tenant %s is not under tenants:", p.Name, p.Tenant)
			}
			ofTenant++
		}
	}
	if len(file.Tenants) == 0 || ofTenant == 0 {
		t.Errorf("dev credentials: want a tenant besides the default with a principal of its own (docs/tenants.md)")
	}
	if !certRoles["append"] {
		t.Errorf("dev principals %+v: want an append principal with a cert_subject, for PMXBCKUP clients", file.Principals)
	}
	if len(secret("chunkbridge-admin-token-").Data["token"]) < 16 {
		t.Error("the dev admin token is shorter than the 16 characters serve requires")
	}
}

// The production overlay runs GC daily with the documented grace, against
// the chunk Service, one run at a time.
func TestProductionRunsGC(t *testing.T) {
	objs := renderObjects(t, "overlays/production")
	cj := cronJob(t, objs, "gc")
	ctr := container(t, objs, "gc")
	if cj.Spec.Suspend != nil && *cj.Spec.Suspend {
		t.Error("CronJob/gc is suspended in production")
	}
	flags, positional := parseFlags(ctr.Args)
	if !slices.Equal(positional, []string{"gc"}) {
		t.Errorf("CronJob/gc runs %q, want gc", positional)
	}
	if flags["chunk-service"] != "chunk:9090" || flags["grace"] != "24h" {
		t.Errorf("CronJob/gc: --chunk-service=%s --grace=%s, want chunk:9090 and 24h (README.md)", flags["chunk-service"], flags["grace"])
	}
}

// --- helpers to find and change rendered objects --------------------------

// kindName is "Kind/name", as the strict decoder keeps apiVersion and kind.
func kindName(o runtime.Object) string {
	m, err := meta.Accessor(o)
	if err != nil {
		return ""
	}
	return o.GetObjectKind().GroupVersionKind().Kind + "/" + m.GetName()
}

func find[T runtime.Object](t *testing.T, objs []runtime.Object, name string) T {
	t.Helper()
	for _, o := range objs {
		if v, ok := o.(T); ok {
			if m, err := meta.Accessor(o); err == nil && m.GetName() == name {
				return v
			}
		}
	}
	var zero T
	t.Fatalf("no %T %q rendered", zero, name)
	return zero
}

func deployment(t *testing.T, objs []runtime.Object, name string) *appsv1.Deployment {
	return find[*appsv1.Deployment](t, objs, name)
}

func cronJob(t *testing.T, objs []runtime.Object, name string) *batchv1.CronJob {
	return find[*batchv1.CronJob](t, objs, name)
}

// container returns the first container of the workload called name.
func container(t *testing.T, objs []runtime.Object, name string) *corev1.Container {
	t.Helper()
	for _, o := range objs {
		if m, err := meta.Accessor(o); err != nil || m.GetName() != name {
			continue
		}
		switch w := o.(type) {
		case *appsv1.Deployment:
			return &w.Spec.Template.Spec.Containers[0]
		case *appsv1.StatefulSet:
			return &w.Spec.Template.Spec.Containers[0]
		case *batchv1.Job:
			return &w.Spec.Template.Spec.Containers[0]
		case *batchv1.CronJob:
			return &w.Spec.JobTemplate.Spec.Template.Spec.Containers[0]
		}
	}
	t.Fatalf("no workload %q rendered", name)
	return nil
}

// replaceArg replaces the first argument starting with prefix.
func replaceArg(t *testing.T, ctr *corev1.Container, prefix, with string) {
	t.Helper()
	for i, a := range ctr.Args {
		if strings.HasPrefix(a, prefix) {
			ctr.Args[i] = with
			return
		}
	}
	t.Fatalf("container %s has no argument %s…", ctr.Name, prefix)
}

package kubernetes

import (
	"fmt"
	"maps"
	"net"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The rules every rendering (base and each overlay) must meet. check
// returns one line per violation, naming the object; none means the
// manifests pass.

const (
	image       = "chunkbridge" // the one chunkbridge image, without tag
	uid         = 65532         // the non-root user the image runs as
	envPrefix   = "CHUNKBRIDGE_"
	nameLabel   = "app.kubernetes.io/name"
	compLabel   = "app.kubernetes.io/component"
	chunkRole   = "chunk"
	defaultStop = 20 * time.Second // the binary's --shutdown-timeout default

	// minGCGrace is the least --grace a scheduled "chunkbridge gc" may use.
	// GC is safe at any grace, 0 included (docs/gc.md): a commit that loses
	// a race with a delete is refused and publishes nothing. The grace
	// keeps the new chunks of backups still uploading, so that their
	// commits are not refused; it must exceed the longest backup session.
	// 24h is the binary's default (and Proxmox Backup Server's).
	minGCGrace = 24 * time.Hour
)

// adminCommands are the chunkbridge commands that are clients of the
// chunk service's AdminService: run from a Job or CronJob, they must be
// let through to its gRPC port, and only they and the gateways may.
var adminCommands = map[string]bool{"gc": true, "verify": true, "prune": true, "stats": true}

// listenFlags are the flags each "serve" mode must set explicitly: the
// binary's defaults listen on 127.0.0.1, unreachable from other pods.
var listenFlags = map[string][]string{
	"chunk":          {"grpc-listen", "http-listen"},
	"casync-gateway": {"casync-listen", "http-listen"},
	"pmx-gateway":    {"pmx-listen", "http-listen"},
	"pbs-gateway":    {"pbs-listen", "http-listen"},
	"rest-gateway":   {"http-listen"},
}

// boolFlags take no value when written as "--flag".
var boolFlags = map[string]bool{"s3-insecure": true, "allow-anonymous": true}

// fileFlags name the files of credentials and certificates: each must be
// mounted from a Secret (certificates may also come from a ConfigMap),
// never baked into the image, and never by subPath, which a changed Secret
// does not reach (the credentials file is re-read while serving).
var fileFlags = map[string]bool{
	"credentials-file": true, "auth-token-file": true, "tls-key": true, "pmx-tls-key": true, "pbs-tls-key": true, "pbs-ticket-key-file": true,
	"tls-cert": false, "tls-client-ca": false, "pmx-tls-cert": false, "pmx-tls-client-ca": false, "pbs-tls-cert": false,
}

// policy holds what differs between renderings.
type policy struct {
	// secretsInRender: the rendering brings its own Secrets (dev), so every
	// reference must resolve to one of them, key included, except those in
	// externalSecrets. Otherwise no Secret may be rendered at all: values
	// come from outside Git.
	secretsInRender bool
	// externalSecrets: where the rendering brings its own Secrets, those it
	// still expects to be created outside Git, such as dev's PMXBCKUP
	// certificate and key (a private key is never committed).
	externalSecrets []string
	// pmxTLSFromOverlay: the PMXBCKUP gateway may have credentials without
	// client certificates (base, whose overlays add components/pmx-mtls).
	// Everywhere else such a gateway would refuse every client.
	pmxTLSFromOverlay bool
	// imageTag, when set, is what every image tag must match.
	imageTag *regexp.Regexp
	// requireAuth: every listener authenticates its callers. The chunk
	// service and each gateway read --credentials-file, no workload allows
	// anonymous callers, and PMXBCKUP requires client certificates.
	requireAuth bool
}

// workload is a Deployment, StatefulSet, Job or CronJob, reduced to what
// the rules need.
type workload struct {
	kind, name  string
	meta        metav1.ObjectMeta
	podLabels   map[string]string
	selector    *metav1.LabelSelector
	spec        *corev1.PodSpec
	replicas    *int32
	longRunning bool                 // Deployment or StatefulSet: probes, Services
	serviceName string               // of a StatefulSet
	job         *batchv1.JobSpec     // of a Job, or a CronJob's job template
	cron        *batchv1.CronJobSpec // of a CronJob
	role        string               // "serve" mode of its chunkbridge container, or "" for anything else
	command     string               // the chunkbridge command of a workload that does not serve ("gc", "s3", …)
}

func (w *workload) String() string { return w.kind + "/" + w.name }

func (w *workload) isGateway() bool { return strings.HasSuffix(w.role, "-gateway") }

// isChunkClient: the gateways and the admin commands call the chunk
// service's gRPC API.
func (w *workload) isChunkClient() bool { return w.isGateway() || adminCommands[w.command] }

// index is a rendering sorted by kind.
type index struct {
	workloads       []*workload
	services        []*corev1.Service
	configMaps      map[string]*corev1.ConfigMap
	secrets         map[string]*corev1.Secret
	serviceAccounts map[string]*corev1.ServiceAccount
	pdbs            []*policyv1.PodDisruptionBudget
	hpas            []*autoscalingv2.HorizontalPodAutoscaler
	netpols         []*networkingv1.NetworkPolicy
}

type checker struct {
	index
	pol      policy
	problems []string
	// secretRefs collects the names of all referenced Secrets.
	secretRefs map[string]bool
}

func (c *checker) errorf(format string, args ...any) {
	c.problems = append(c.problems, fmt.Sprintf(format, args...))
}

// check applies every rule to one rendering.
func check(objs []runtime.Object, pol policy) (problems []string, secretRefs []string) {
	c := &checker{pol: pol, secretRefs: map[string]bool{}}
	c.configMaps = map[string]*corev1.ConfigMap{}
	c.secrets = map[string]*corev1.Secret{}
	c.serviceAccounts = map[string]*corev1.ServiceAccount{}
	for _, obj := range objs {
		c.add(obj)
	}
	for _, w := range c.workloads {
		c.checkWorkload(w)
	}
	for _, s := range c.services {
		c.checkService(s)
	}
	c.checkNetworkPolicies()
	c.checkScaling()
	if !pol.secretsInRender {
		for name := range c.secrets {
			c.errorf("Secret/%s: rendered, but this rendering expects its Secrets to be created outside Git", name)
		}
	}
	for _, name := range pol.externalSecrets {
		if c.secrets[name] != nil {
			c.errorf("Secret/%s: rendered, but this rendering expects it to be created outside Git", name)
		}
	}
	return c.problems, slices.Sorted(maps.Keys(c.secretRefs))
}

func (c *checker) add(obj runtime.Object) {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		c.workloads = append(c.workloads, newWorkload("Deployment", o.ObjectMeta, o.Spec.Selector, &o.Spec.Template, o.Spec.Replicas, true))
	case *appsv1.StatefulSet:
		w := newWorkload("StatefulSet", o.ObjectMeta, o.Spec.Selector, &o.Spec.Template, o.Spec.Replicas, true)
		w.serviceName = o.Spec.ServiceName
		c.workloads = append(c.workloads, w)
	case *batchv1.Job:
		w := newWorkload("Job", o.ObjectMeta, o.Spec.Selector, &o.Spec.Template, nil, false)
		w.job = &o.Spec
		c.workloads = append(c.workloads, w)
	case *batchv1.CronJob:
		jt := &o.Spec.JobTemplate
		w := newWorkload("CronJob", o.ObjectMeta, jt.Spec.Selector, &jt.Spec.Template, nil, false)
		w.job, w.cron = &jt.Spec, &o.Spec
		c.workloads = append(c.workloads, w)
	case *corev1.Service:
		c.services = append(c.services, o)
	case *corev1.ConfigMap:
		c.configMaps[o.Name] = o
	case *corev1.Secret:
		c.secrets[o.Name] = o
	case *corev1.ServiceAccount:
		c.serviceAccounts[o.Name] = o
	case *corev1.Namespace:
	case *policyv1.PodDisruptionBudget:
		c.pdbs = append(c.pdbs, o)
	case *autoscalingv2.HorizontalPodAutoscaler:
		c.hpas = append(c.hpas, o)
	case *networkingv1.NetworkPolicy:
		c.netpols = append(c.netpols, o)
	default:
		c.errorf("%T: a kind these rules do not cover; add rules for it", obj)
	}
}

func newWorkload(kind string, meta metav1.ObjectMeta, sel *metav1.LabelSelector, tpl *corev1.PodTemplateSpec, replicas *int32, longRunning bool) *workload {
	w := &workload{kind: kind, name: meta.Name, meta: meta, podLabels: tpl.Labels, selector: sel,
		spec: &tpl.Spec, replicas: replicas, longRunning: longRunning}
	for _, ctr := range tpl.Spec.Containers {
		if imageName(ctr.Image) != image || len(ctr.Args) == 0 {
			continue
		}
		if ctr.Args[0] == "serve" && len(ctr.Args) >= 2 {
			w.role = ctr.Args[1]
		} else if ctr.Args[0] != "serve" {
			w.command = ctr.Args[0]
		}
		break
	}
	return w
}

func (c *checker) serviceByName(name string) *corev1.Service {
	for _, s := range c.services {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// --- workloads -----------------------------------------------------------

func (c *checker) checkWorkload(w *workload) {
	for _, l := range []string{nameLabel, compLabel} {
		if w.meta.Labels[l] == "" {
			c.errorf("%s: no label %s", w, l)
		}
		if w.podLabels[l] == "" {
			c.errorf("%s: pod template has no label %s", w, l)
		}
	}
	if w.selector != nil {
		if sel, err := metav1.LabelSelectorAsSelector(w.selector); err != nil || !sel.Matches(labels.Set(w.podLabels)) {
			c.errorf("%s: selector does not match its own pod template labels", w)
		}
	}
	if w.kind == "StatefulSet" && c.serviceByName(w.serviceName) == nil {
		c.errorf("%s: serviceName %q is not a rendered Service", w, w.serviceName)
	}
	c.checkPodSecurity(w)
	for i := range w.spec.InitContainers {
		c.checkContainer(w, &w.spec.InitContainers[i], false)
	}
	for i := range w.spec.Containers {
		c.checkContainer(w, &w.spec.Containers[i], w.longRunning)
	}
	c.checkVolumes(w)
	if w.job != nil {
		c.checkJob(w)
	}
	if w.cron != nil {
		c.checkCronJob(w)
	}
}

// checkJob: a Job (or a CronJob's job) restarts within bounds and keeps
// its podFailurePolicy consistent, which only an API server would check.
func (c *checker) checkJob(w *workload) {
	j := w.job
	switch rp := w.spec.RestartPolicy; rp {
	case corev1.RestartPolicyNever, corev1.RestartPolicyOnFailure:
		if j.PodFailurePolicy != nil && rp != corev1.RestartPolicyNever {
			c.errorf("%s: podFailurePolicy requires restartPolicy Never, not %s", w, rp)
		}
	default:
		c.errorf("%s: restartPolicy must be Never or OnFailure, not %q", w, rp)
	}
	if j.BackoffLimit == nil {
		c.errorf("%s: no backoffLimit (the default retries 6 times)", w)
	}
	if pfp := j.PodFailurePolicy; pfp != nil {
		for i, r := range pfp.Rules {
			if oe := r.OnExitCodes; oe != nil && oe.ContainerName != nil &&
				!slices.ContainsFunc(w.spec.Containers, func(ctr corev1.Container) bool { return ctr.Name == *oe.ContainerName }) {
				c.errorf("%s: podFailurePolicy.rules[%d] names container %q, which the pod does not have", w, i, *oe.ContainerName)
			}
		}
	}
}

// checkCronJob: a scheduled job runs once at a time, within a deadline,
// and leaves its history to look at.
func (c *checker) checkCronJob(w *workload) {
	cj := w.cron
	if f := strings.Fields(cj.Schedule); len(f) != 5 && !strings.HasPrefix(cj.Schedule, "@") {
		c.errorf("%s: schedule %q: want five cron fields", w, cj.Schedule)
	}
	if cj.ConcurrencyPolicy != batchv1.ForbidConcurrent {
		c.errorf("%s: concurrencyPolicy must be Forbid, not %q: a run must not start while the last one runs", w, cj.ConcurrencyPolicy)
	}
	if s := cj.StartingDeadlineSeconds; s == nil || *s <= 0 {
		c.errorf("%s: startingDeadlineSeconds must be set: without it, more than 100 missed schedules stop the CronJob for good", w)
	}
	if h := cj.SuccessfulJobsHistoryLimit; h == nil {
		c.errorf("%s: successfulJobsHistoryLimit must be set", w)
	}
	if h := cj.FailedJobsHistoryLimit; h == nil || *h < 1 {
		c.errorf("%s: failedJobsHistoryLimit must be at least 1, to keep a failed run's pod and logs", w)
	}
	if d := w.job.ActiveDeadlineSeconds; d == nil || *d <= 0 {
		c.errorf("%s: the job template must set activeDeadlineSeconds, so that a hung run cannot block the next ones (concurrencyPolicy Forbid)", w)
	}
	if w.job.TTLSecondsAfterFinished != nil {
		c.errorf("%s: ttlSecondsAfterFinished would delete the history the CronJob keeps", w)
	}
}

func (c *checker) checkPodSecurity(w *workload) {
	s := w.spec
	if s.AutomountServiceAccountToken == nil || *s.AutomountServiceAccountToken {
		c.errorf("%s: pod must set automountServiceAccountToken: false", w)
	}
	switch sa := c.serviceAccounts[s.ServiceAccountName]; {
	case s.ServiceAccountName == "" || s.ServiceAccountName == "default":
		c.errorf("%s: runs as the default ServiceAccount; give it its own", w)
	case sa == nil:
		c.errorf("%s: ServiceAccount %q is not rendered", w, s.ServiceAccountName)
	case sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken:
		c.errorf("ServiceAccount/%s: must set automountServiceAccountToken: false", sa.Name)
	}
	if s.HostNetwork || s.HostPID || s.HostIPC {
		c.errorf("%s: uses host namespaces", w)
	}
	psc := s.SecurityContext
	if psc == nil {
		c.errorf("%s: no pod securityContext", w)
		return
	}
	if !isTrue(psc.RunAsNonRoot) {
		c.errorf("%s: pod securityContext.runAsNonRoot must be true", w)
	}
	for name, v := range map[string]*int64{"runAsUser": psc.RunAsUser, "runAsGroup": psc.RunAsGroup, "fsGroup": psc.FSGroup} {
		if v == nil || *v != uid {
			c.errorf("%s: pod securityContext.%s must be %d", w, name, uid)
		}
	}
	if psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		c.errorf("%s: pod securityContext.seccompProfile.type must be RuntimeDefault", w)
	}
}

func (c *checker) checkContainer(w *workload, ctr *corev1.Container, longRunning bool) {
	where := fmt.Sprintf("%s container %s", w, ctr.Name)

	// Image: tagged, never latest, and as the rendering demands.
	switch tag := imageTag(ctr.Image); {
	case tag == "" && !strings.Contains(ctr.Image, "@"):
		c.errorf("%s: image %q has no tag (that means :latest)", where, ctr.Image)
	case tag == "latest":
		c.errorf("%s: image %q uses :latest", where, ctr.Image)
	case c.pol.imageTag != nil && !c.pol.imageTag.MatchString(tag):
		c.errorf("%s: image %q: tag must match %s here", where, ctr.Image, c.pol.imageTag)
	}

	// Resources: requests and limits for CPU and memory, requests <= limits.
	for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, hasReq := ctr.Resources.Requests[res]
		lim, hasLim := ctr.Resources.Limits[res]
		if !hasReq {
			c.errorf("%s: no %s request", where, res)
		}
		if !hasLim {
			c.errorf("%s: no %s limits", where, res)
		}
		if hasReq && hasLim && req.Cmp(lim) > 0 {
			c.errorf("%s: %s request %s exceeds its limit %s", where, res, req.String(), lim.String())
		}
	}

	// Container securityContext: the restricted profile.
	if sc := ctr.SecurityContext; sc == nil {
		c.errorf("%s: no securityContext", where)
	} else {
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			c.errorf("%s: securityContext.allowPrivilegeEscalation must be false", where)
		}
		if !isTrue(sc.ReadOnlyRootFilesystem) {
			c.errorf("%s: securityContext.readOnlyRootFilesystem must be true", where)
		}
		if sc.Privileged == nil || *sc.Privileged {
			c.errorf("%s: securityContext.privileged must be false", where)
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			c.errorf("%s: securityContext.capabilities.drop must contain ALL", where)
		} else if len(sc.Capabilities.Add) > 0 {
			c.errorf("%s: securityContext.capabilities.add must be empty", where)
		}
	}

	c.checkEnv(where, ctr)
	flags := c.flagsOf(ctr)
	c.checkListen(where, ctr, flags)
	if imageName(ctr.Image) == image {
		c.checkChunkbridge(w, where, ctr, flags)
	}
	if longRunning {
		c.checkProbes(w, where, ctr, flags)
	}
}

// flagsOf returns the flags a container's process sees: its arguments,
// and for chunkbridge also CHUNKBRIDGE_<FLAG> variables from literal values
// and rendered ConfigMaps (the command line wins, as in the binary).
func (c *checker) flagsOf(ctr *corev1.Container) map[string]string {
	flags, _ := parseFlags(ctr.Args)
	if imageName(ctr.Image) != image {
		return flags
	}
	env := map[string]string{}
	for _, ef := range ctr.EnvFrom {
		if cm := ef.ConfigMapRef; cm != nil && c.configMaps[cm.Name] != nil {
			for k, v := range c.configMaps[cm.Name].Data {
				env[ef.Prefix+k] = v
			}
		}
	}
	for _, e := range ctr.Env {
		switch vf := e.ValueFrom; {
		case vf == nil:
			env[e.Name] = e.Value
		case vf.ConfigMapKeyRef != nil && c.configMaps[vf.ConfigMapKeyRef.Name] != nil:
			env[e.Name] = c.configMaps[vf.ConfigMapKeyRef.Name].Data[vf.ConfigMapKeyRef.Key]
		}
	}
	for k, v := range env {
		if name, ok := strings.CutPrefix(k, envPrefix); ok {
			f := strings.ToLower(strings.ReplaceAll(name, "_", "-"))
			if _, set := flags[f]; !set {
				flags[f] = v
			}
		}
	}
	return flags
}

// checkEnv checks every ConfigMap and Secret reference of the container's
// environment.
func (c *checker) checkEnv(where string, ctr *corev1.Container) {
	for _, ef := range ctr.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			c.configMap(where, ef.ConfigMapRef.Name, "", isTrue(ef.ConfigMapRef.Optional))
		case ef.SecretRef != nil:
			c.secret(where, ef.SecretRef.Name, "", isTrue(ef.SecretRef.Optional))
		}
	}
	for _, e := range ctr.Env {
		switch vf := e.ValueFrom; {
		case vf == nil:
		case vf.ConfigMapKeyRef != nil:
			c.configMap(where, vf.ConfigMapKeyRef.Name, vf.ConfigMapKeyRef.Key, isTrue(vf.ConfigMapKeyRef.Optional))
		case vf.SecretKeyRef != nil:
			c.secret(where, vf.SecretKeyRef.Name, vf.SecretKeyRef.Key, isTrue(vf.SecretKeyRef.Optional))
		case vf.ResourceFieldRef != nil:
			if _, ok := ctr.Resources.Limits[corev1.ResourceName(strings.TrimPrefix(vf.ResourceFieldRef.Resource, "limits."))]; strings.HasPrefix(vf.ResourceFieldRef.Resource, "limits.") && !ok {
				c.errorf("%s: env %s refers to %s, which is not set", where, e.Name, vf.ResourceFieldRef.Resource)
			}
		}
	}
}

// configMap returns the referenced ConfigMap, reporting it (or its key)
// missing. ConfigMaps are always part of the rendering.
func (c *checker) configMap(where, name, key string, optional bool) *corev1.ConfigMap {
	cm := c.configMaps[name]
	switch {
	case cm == nil && !optional:
		c.errorf("%s: ConfigMap %q is not rendered", where, name)
	case cm != nil && key != "" && !optional:
		if _, ok := cm.Data[key]; !ok {
			c.errorf("%s: ConfigMap %q has no key %q", where, name, key)
		}
	}
	return cm
}

// secret records a Secret reference and, where the rendering carries its
// Secrets, checks that it resolves.
func (c *checker) secret(where, name, key string, optional bool) {
	c.secretRefs[name] = true
	if !c.pol.secretsInRender || optional || slices.Contains(c.pol.externalSecrets, name) {
		return
	}
	s := c.secrets[name]
	if s == nil {
		c.errorf("%s: Secret %q is not rendered", where, name)
		return
	}
	if key == "" {
		return
	}
	_, inData := s.Data[key]
	_, inString := s.StringData[key]
	if !inData && !inString {
		c.errorf("%s: Secret %q has no key %q", where, name, key)
	}
}

func (c *checker) checkVolumes(w *workload) {
	for _, v := range w.spec.Volumes {
		switch {
		case v.HostPath != nil:
			c.errorf("%s: volume %s is a hostPath", w, v.Name)
		case v.Secret != nil:
			for _, it := range v.Secret.Items {
				c.secret(w.String()+" volume "+v.Name, v.Secret.SecretName, it.Key, isTrue(v.Secret.Optional))
			}
			if len(v.Secret.Items) == 0 {
				c.secret(w.String()+" volume "+v.Name, v.Secret.SecretName, "", isTrue(v.Secret.Optional))
			}
		case v.ConfigMap != nil:
			c.configMap(w.String()+" volume "+v.Name, v.ConfigMap.Name, "", isTrue(v.ConfigMap.Optional))
		}
	}
}

// checkListen: every address a container listens on ("--*-listen",
// MinIO's "--address") is a declared containerPort, on all interfaces.
func (c *checker) checkListen(where string, ctr *corev1.Container, flags map[string]string) {
	listened := map[int32]bool{}
	for f, v := range flags {
		if !strings.HasSuffix(f, "-listen") && f != "address" {
			continue
		}
		host, p, err := net.SplitHostPort(v)
		port, perr := strconv.Atoi(p)
		if err != nil || perr != nil {
			c.errorf("%s: --%s=%s is not host:port", where, f, v)
			continue
		}
		if host != "" && host != "0.0.0.0" && host != "::" {
			c.errorf("%s: --%s=%s listens on %s only; other pods and the kubelet cannot reach a loopback address", where, f, v, host)
		}
		if containerPort(ctr, intstr.FromInt32(int32(port))) == nil {
			c.errorf("%s: --%s=%s: port %d is not a containerPort", where, f, v, port)
		}
		listened[int32(port)] = true
	}
	if imageName(ctr.Image) != image {
		return
	}
	for _, p := range ctr.Ports {
		if !listened[p.ContainerPort] {
			c.errorf("%s: containerPort %s (%d) is not listened on by any --*-listen flag", where, p.Name, p.ContainerPort)
		}
	}
}

// checkChunkbridge holds the rules specific to the chunkbridge binary.
func (c *checker) checkChunkbridge(w *workload, where string, ctr *corev1.Container, flags map[string]string) {
	mode := ""
	if len(ctr.Args) >= 2 && ctr.Args[0] == "serve" {
		mode = ctr.Args[1]
	}
	if mode != "" {
		required, known := listenFlags[mode]
		if !known {
			c.errorf("%s: unknown mode \"serve %s\"", where, mode)
		}
		for _, f := range required {
			if _, ok := flags[f]; !ok {
				c.errorf("%s: --%s not set; the default listens on loopback only", where, f)
			}
		}
		// Termination: the pod must outlive the preStop sleep and the
		// binary's drain (--shutdown-timeout).
		budget := defaultStop
		if v, ok := flags["shutdown-timeout"]; ok {
			d, err := time.ParseDuration(v)
			if err != nil {
				c.errorf("%s: --shutdown-timeout=%s: %v", where, v, err)
			}
			budget = d
		}
		if lc := ctr.Lifecycle; lc != nil && lc.PreStop != nil && lc.PreStop.Sleep != nil {
			budget += time.Duration(lc.PreStop.Sleep.Seconds) * time.Second
		}
		grace := 30 * time.Second // the API default
		if g := w.spec.TerminationGracePeriodSeconds; g != nil {
			grace = time.Duration(*g) * time.Second
		}
		if grace <= budget {
			c.errorf("%s: terminationGracePeriodSeconds (%v) must exceed preStop sleep + --shutdown-timeout (%v)", w, grace, budget)
		}
	}

	c.checkAccess(w, where, ctr, mode, flags)

	cmd := ""
	if mode == "" && len(ctr.Args) > 0 {
		cmd = ctr.Args[0]
	}
	if adminCommands[cmd] {
		c.checkAdmin(w, where, cmd, flags)
	}

	// Where a gateway or an admin command finds the chunk service: a
	// rendered Service whose port reaches the chunk service's gRPC
	// listener, with the token it requires.
	if addr, ok := flags["chunk-service"]; ok {
		c.checkAddress(where, "--chunk-service", addr, func(t *workload, port int32) string {
			if t.role != chunkRole {
				return fmt.Sprintf("selects %s, not the chunk service", t)
			}
			if p := c.listenPort(t, "grpc-listen"); p != port {
				return fmt.Sprintf("reaches port %d, but the chunk service's gRPC listens on %d", port, p)
			}
			switch {
			case c.flagOf(t, "auth-token-file") == "" && c.flagOf(t, "credentials-file") == "":
			case flags["auth-token-file"] == "":
				return fmt.Sprintf("requires a bearer token (%s sets --auth-token-file or --credentials-file), but this client sends none", t)
			case c.flagOf(t, "auth-token-file") != "":
				// The token the chunk service accepts as admin is the one sent.
				want, got := c.secretFile(t, "auth-token-file"), c.secretFile(w, "auth-token-file")
				if want != "" && got != "" && want != got {
					return fmt.Sprintf("sends the token in %s, but %s accepts the one in %s", got, t, want)
				}
			}
			return ""
		})
	}
	// An S3 endpoint without a dot is an in-cluster Service (dev MinIO).
	if ep := flags["s3-endpoint"]; ep != "" && !strings.Contains(ep, ".") {
		c.checkAddress(where, "S3 endpoint", ep, func(*workload, int32) string { return "" })
	}

	switch {
	case mode == chunkRole:
		if !strings.HasPrefix(flags["store"], "s3://") {
			c.errorf("%s: --store=%s: must be s3://…; a directory would live in the pod and be lost", where, flags["store"])
		}
		// The root filesystem is read-only: Go's temporary files and the
		// spool need a writable emptyDir at /tmp.
		if !c.writable(w, ctr, "/tmp/x", true) {
			c.errorf("%s: needs an emptyDir mounted at /tmp (the root filesystem is read-only)", where)
		}
		if sd := flags["spool-dir"]; sd != "" && !c.writable(w, ctr, sd, false) {
			c.errorf("%s: --spool-dir=%s is not on a writable volume", where, sd)
		}
	case len(ctr.Args) >= 3 && ctr.Args[0] == "s3" && ctr.Args[1] == "mkbucket":
		// The bucket made must be the one the chunk service uses.
		bucket := strings.SplitN(strings.TrimPrefix(ctr.Args[2], "s3://"), "/", 2)[0]
		for _, t := range c.workloads {
			if t.role != chunkRole {
				continue
			}
			for i := range t.spec.Containers {
				tf := c.flagsOf(&t.spec.Containers[i])
				if store, ok := tf["store"]; ok && strings.SplitN(strings.TrimPrefix(store, "s3://"), "/", 2)[0] != bucket {
					c.errorf("%s: makes bucket %q, but %s uses --store=%s", where, bucket, t, store)
				}
			}
		}
	}
}

// checkAccess: serve starts only with a credential or --allow-anonymous
// (its listeners here are never loopback), a gateway with a credentials
// file has the admin token to call the chunk service with, credentials and
// keys come from Secrets, and where the rendering requires it every
// listener authenticates.
func (c *checker) checkAccess(w *workload, where string, ctr *corev1.Container, mode string, flags map[string]string) {
	anonymous := flags["allow-anonymous"] != "" && flags["allow-anonymous"] != "false"
	if mode != "" && flags["credentials-file"] == "" && flags["auth-token-file"] == "" && !anonymous {
		c.errorf("%s: no --credentials-file or --auth-token-file: serve refuses to listen beyond loopback without one (or --allow-anonymous, to serve everyone as admin)", where)
	}
	if strings.HasSuffix(mode, "-gateway") && flags["credentials-file"] != "" && flags["auth-token-file"] == "" {
		c.errorf("%s: --credentials-file without --auth-token-file: the gateway has no admin token to call the chunk service for its clients, and serve refuses to start", where)
	}
	for f, secretOnly := range fileFlags {
		p, ok := flags[f]
		if !ok {
			continue
		}
		if msg := c.mountedFile(w, ctr, p, secretOnly); msg != "" {
			c.errorf("%s: --%s=%s %s", where, f, p, msg)
		}
	}
	if mode == "pbs-gateway" && flags["pbs-ticket-key-file"] == "" {
		// Without it each pod signs tickets with its own key: a client that
		// logged in at one replica is refused at the next, and at every pod
		// after a rollout.
		c.errorf("%s: no --pbs-ticket-key-file: PBS login tickets would work only at the replica that issued them; mount a shared key from a Secret", where)
	}
	if mode == "pmx-gateway" && !anonymous && !c.pol.pmxTLSFromOverlay && (c.pol.requireAuth || flags["credentials-file"] != "" || flags["auth-token-file"] != "") {
		// With a credential, the PMXBCKUP gateway refuses every client
		// without a certificate: PMXBCKUP has no field for a token.
		for _, pair := range [][2]string{{"pmx-tls-cert", "tls-cert"}, {"pmx-tls-key", "tls-key"}, {"pmx-tls-client-ca", "tls-client-ca"}} {
			if flags[pair[0]] == "" && flags[pair[1]] == "" {
				c.errorf("%s: no --%s (or --%s): PMXBCKUP has no field for a token, so with access control its clients must authenticate by mutual TLS, and the gateway refuses every client without it", where, pair[0], pair[1])
			}
		}
	}
	if !c.pol.requireAuth {
		return
	}
	if anonymous {
		c.errorf("%s: --allow-anonymous: every caller would be an admin; nothing here may serve without authentication", where)
	}
	if mode == "" {
		return
	}
	if flags["credentials-file"] == "" {
		c.errorf("%s: no --credentials-file: every listener must authenticate its callers as principals here (docs/auth.md)", where)
	}
}

// mountedFile says what is wrong with the file p of ctr: "" when it lies
// in a directory mount of a Secret volume (or a ConfigMap's, unless
// secretOnly) that has it.
func (c *checker) mountedFile(w *workload, ctr *corev1.Container, p string, secretOnly bool) string {
	m, rel := mountOf(ctr, p)
	if m == nil {
		return "is on no volume mount: credentials and certificates come from a Secret"
	}
	if m.SubPath != "" {
		return fmt.Sprintf("is mounted by subPath (volume %s): a changed Secret never reaches the process", m.Name)
	}
	for _, v := range w.spec.Volumes {
		if v.Name != m.Name {
			continue
		}
		var items []corev1.KeyToPath
		switch {
		case v.Secret != nil:
			items = v.Secret.Items
		case v.ConfigMap != nil && !secretOnly:
			items = v.ConfigMap.Items
		default:
			return fmt.Sprintf("is on volume %s, which is not a Secret", m.Name)
		}
		if len(items) > 0 && !slices.ContainsFunc(items, func(it corev1.KeyToPath) bool { return path.Clean(it.Path) == rel }) {
			return fmt.Sprintf("is not in volume %s: it maps no key to %s", m.Name, rel)
		}
		return ""
	}
	return fmt.Sprintf("is on mount %s, which names no volume of the pod", m.Name)
}

// mountOf is the volume mount of ctr that holds p (the deepest one), and
// p's path inside it.
func mountOf(ctr *corev1.Container, p string) (*corev1.VolumeMount, string) {
	var best *corev1.VolumeMount
	rel := ""
	for i, m := range ctr.VolumeMounts {
		dir := path.Clean(m.MountPath)
		r, ok := strings.CutPrefix(path.Clean(p), dir+"/")
		if path.Clean(p) == dir { // a file mounted by subPath
			r, ok = "", true
		}
		if ok && (best == nil || len(dir) > len(path.Clean(best.MountPath))) {
			best, rel = &ctr.VolumeMounts[i], r
		}
	}
	return best, rel
}

// secretFile names the Secret key behind a file flag of w's chunkbridge
// container ("Secret/name key k"), or "" where it is not one.
func (c *checker) secretFile(w *workload, flag string) string {
	for i := range w.spec.Containers {
		ctr := &w.spec.Containers[i]
		if imageName(ctr.Image) != image {
			continue
		}
		m, rel := mountOf(ctr, c.flagsOf(ctr)[flag])
		if m == nil {
			return ""
		}
		for _, v := range w.spec.Volumes {
			if v.Name != m.Name || v.Secret == nil {
				continue
			}
			key := rel
			for _, it := range v.Secret.Items {
				if path.Clean(it.Path) == rel {
					key = it.Key
				}
			}
			return fmt.Sprintf("Secret/%s key %s", v.Secret.SecretName, key)
		}
	}
	return ""
}

// checkAdmin holds the rules for an AdminService client run from a Job or
// CronJob: it reaches the chunk service, and a scheduled gc deletes, with
// a grace no shorter than minGCGrace.
func (c *checker) checkAdmin(w *workload, where, cmd string, flags map[string]string) {
	if w.longRunning {
		c.errorf("%s: %q is a one-shot command; run it from a Job or CronJob", where, cmd)
	}
	if _, ok := flags["chunk-service"]; !ok {
		c.errorf("%s: --chunk-service not set; the default 127.0.0.1:9090 is this pod's own loopback", where)
	}
	if cmd != "gc" {
		return
	}
	if v, ok := flags["dry-run"]; ok && v != "false" {
		c.errorf("%s: --dry-run: a scheduled gc that never deletes collects nothing", where)
	}
	grace := 24 * time.Hour // the binary's default
	if v, ok := flags["grace"]; ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			c.errorf("%s: --grace=%s: %v", where, v, err)
			return
		}
		grace = d
	}
	if grace < minGCGrace {
		c.errorf("%s: --grace=%v is below the minimum %v: backups still uploading would have their new chunks deleted and their commits refused", where, grace, minGCGrace)
	}
}

// checkAddress resolves host:port to a rendered Service in this namespace
// and the workload behind it; ok says whether that workload is right.
func (c *checker) checkAddress(where, what, addr string, ok func(t *workload, port int32) string) {
	host, p, err := net.SplitHostPort(addr)
	port, perr := strconv.Atoi(p)
	if err != nil || perr != nil {
		c.errorf("%s: %s %q is not host:port", where, what, addr)
		return
	}
	svc := c.serviceByName(host)
	if svc == nil {
		c.errorf("%s: %s %s: no Service %q is rendered", where, what, addr, host)
		return
	}
	for _, sp := range svc.Spec.Ports {
		if sp.Port != int32(port) {
			continue
		}
		for _, t := range c.selected(svc.Spec.Selector) {
			target := sp.TargetPort
			if target.Type == intstr.Int && target.IntVal == 0 {
				target = intstr.FromInt32(sp.Port)
			}
			for i := range t.spec.Containers {
				if cp := containerPort(&t.spec.Containers[i], target); cp != nil {
					if msg := ok(t, cp.ContainerPort); msg != "" {
						c.errorf("%s: %s %s %s", where, what, addr, msg)
					}
				}
			}
		}
		return
	}
	c.errorf("%s: %s %s: Service %q has no port %d", where, what, addr, host, port)
}

// writable reports whether p lies on a writable volume mount of ctr (an
// emptyDir, if emptyDir is set).
func (c *checker) writable(w *workload, ctr *corev1.Container, p string, emptyDir bool) bool {
	for _, m := range ctr.VolumeMounts {
		if m.ReadOnly || !strings.HasPrefix(path.Clean(p)+"/", path.Clean(m.MountPath)+"/") {
			continue
		}
		for _, v := range w.spec.Volumes {
			if v.Name == m.Name && (!emptyDir || v.EmptyDir != nil) {
				return true
			}
		}
	}
	return false
}

// checkProbes: every long-running container has liveness and readiness
// probes on declared ports; the chunkbridge services use the right kind.
func (c *checker) checkProbes(w *workload, where string, ctr *corev1.Container, flags map[string]string) {
	probes := map[string]*corev1.Probe{"readiness": ctr.ReadinessProbe, "liveness": ctr.LivenessProbe, "startup": ctr.StartupProbe}
	for _, kind := range []string{"readiness", "liveness", "startup"} {
		pr := probes[kind]
		if pr == nil {
			if kind != "startup" {
				c.errorf("%s: no %s probe", where, kind)
			}
			continue
		}
		var port intstr.IntOrString
		switch {
		case pr.HTTPGet != nil:
			port = pr.HTTPGet.Port
		case pr.TCPSocket != nil:
			port = pr.TCPSocket.Port
		case pr.GRPC != nil:
			port = intstr.FromInt32(pr.GRPC.Port)
		default:
			c.errorf("%s: %s probe runs a command (the image has no shell)", where, kind)
			continue
		}
		if containerPort(ctr, port) == nil {
			c.errorf("%s: %s probe port %s is not a containerPort", where, kind, port.String())
		}
	}
	if imageName(ctr.Image) != image || len(ctr.Args) < 2 || ctr.Args[0] != "serve" {
		return
	}
	httpPort := portOf(flags["http-listen"])
	httpProbe := func(kind string, pr *corev1.Probe, path string) {
		if pr == nil {
			return
		}
		if pr.HTTPGet == nil || pr.HTTPGet.Path != path {
			c.errorf("%s: %s probe must be httpGet %s", where, kind, path)
			return
		}
		if cp := containerPort(ctr, pr.HTTPGet.Port); cp != nil && cp.ContainerPort != httpPort {
			c.errorf("%s: %s probe on port %d, but --http-listen is on %d", where, kind, cp.ContainerPort, httpPort)
		}
	}
	switch mode := ctr.Args[1]; {
	case mode == chunkRole:
		// Readiness is gRPC health (service ""), NOT_SERVING while S3 is
		// unreachable.
		rp := ctr.ReadinessProbe
		switch grpcPort := portOf(flags["grpc-listen"]); {
		case rp == nil:
		case rp.GRPC == nil:
			c.errorf("%s: readiness probe must be a native grpc probe on the gRPC port %d", where, grpcPort)
		case rp.GRPC.Port != grpcPort:
			c.errorf("%s: readiness grpc probe on port %d, but --grpc-listen is on %d", where, rp.GRPC.Port, grpcPort)
		case rp.GRPC.Service != nil && *rp.GRPC.Service != "":
			c.errorf("%s: readiness grpc probe must check service \"\" (the one tied to storage), not %q", where, *rp.GRPC.Service)
		}
		// Liveness must not follow storage, or an S3 outage restarts
		// every replica.
		if lp := ctr.LivenessProbe; lp != nil && lp.GRPC != nil && (lp.GRPC.Service == nil || *lp.GRPC.Service == "") {
			c.errorf("%s: liveness probe on gRPC health service \"\" goes NOT_SERVING when S3 is down and would restart every replica; use /healthz", where)
		} else {
			httpProbe("liveness", lp, "/healthz")
		}
	case strings.HasSuffix(mode, "-gateway"):
		httpProbe("readiness", ctr.ReadinessProbe, "/readyz")
		httpProbe("liveness", ctr.LivenessProbe, "/healthz")
	}
}

// --- Services ------------------------------------------------------------

// selected returns the long-running workloads whose pods sel matches.
func (c *checker) selected(sel map[string]string) []*workload {
	if len(sel) == 0 {
		return nil
	}
	var ws []*workload
	for _, w := range c.workloads {
		if w.longRunning && labels.SelectorFromSet(sel).Matches(labels.Set(w.podLabels)) {
			ws = append(ws, w)
		}
	}
	return ws
}

func (c *checker) checkService(s *corev1.Service) {
	where := "Service/" + s.Name
	for _, l := range []string{nameLabel, compLabel} {
		if s.Labels[l] == "" {
			c.errorf("%s: no label %s", where, l)
		}
	}
	if len(s.Spec.Selector) == 0 {
		c.errorf("%s: no selector", where)
		return
	}
	ws := c.selected(s.Spec.Selector)
	if len(ws) != 1 {
		names := make([]string, len(ws))
		for i, w := range ws {
			names[i] = w.String()
		}
		c.errorf("%s: selector %v matches %d workloads %v; want exactly one", where, s.Spec.Selector, len(ws), names)
		return
	}
	w := ws[0]
	for _, sp := range s.Spec.Ports {
		if sp.Name == "" {
			c.errorf("%s: port %d has no name", where, sp.Port)
		}
		target := sp.TargetPort
		if target.Type == intstr.Int && target.IntVal == 0 {
			target = intstr.FromInt32(sp.Port)
		}
		found := false
		for i := range w.spec.Containers {
			if containerPort(&w.spec.Containers[i], target) != nil {
				found = true
			}
		}
		if !found {
			c.errorf("%s: port %s targetPort %s is not a containerPort of %s", where, sp.Name, target.String(), w)
		}
	}
}

// --- NetworkPolicy -------------------------------------------------------

// checkNetworkPolicies: the chunk service's gRPC port is reachable from the
// gateway pods and the admin jobs' pods, and from nothing else.
func (c *checker) checkNetworkPolicies() {
	for _, chunk := range c.workloads {
		if chunk.role != chunkRole {
			continue
		}
		grpcPort := c.listenPort(chunk, "grpc-listen")
		allowed := map[*workload]bool{}
		selectedBy := 0
		for _, np := range c.netpols {
			sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
			if err != nil {
				c.errorf("NetworkPolicy/%s: podSelector: %v", np.Name, err)
				continue
			}
			if !sel.Matches(labels.Set(chunk.podLabels)) {
				continue
			}
			if len(np.Spec.PolicyTypes) > 0 && !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
				continue
			}
			selectedBy++
			for i, rule := range np.Spec.Ingress {
				where := fmt.Sprintf("NetworkPolicy/%s ingress[%d]", np.Name, i)
				if !rulePermitsPort(rule, chunk, grpcPort) {
					continue
				}
				if len(rule.From) == 0 {
					c.errorf("%s: opens gRPC port %d of %s to every source", where, grpcPort, chunk)
				}
				for _, peer := range rule.From {
					c.checkPeer(where, peer, grpcPort, allowed)
				}
			}
		}
		if selectedBy == 0 {
			c.errorf("%s: no NetworkPolicy selects its pods, so gRPC port %d is open to every pod", chunk, grpcPort)
			continue
		}
		for _, w := range c.workloads {
			if w.isChunkClient() && !allowed[w] {
				c.errorf("%s: no NetworkPolicy rule lets it reach %s on port %d", w, chunk, grpcPort)
			}
		}
	}
}

func (c *checker) checkPeer(where string, peer networkingv1.NetworkPolicyPeer, port int32, allowed map[*workload]bool) {
	switch {
	case peer.IPBlock != nil:
		c.errorf("%s: allows ipBlock %s on port %d; only gateway and admin job pods may call it", where, peer.IPBlock.CIDR, port)
		return
	case peer.NamespaceSelector != nil:
		c.errorf("%s: allows pods of other namespaces on port %d; only gateway and admin job pods may call it", where, port)
		return
	case peer.PodSelector == nil:
		return
	}
	sel, err := metav1.LabelSelectorAsSelector(peer.PodSelector)
	if err != nil {
		c.errorf("%s: podSelector: %v", where, err)
		return
	}
	clients := 0
	for _, w := range c.workloads {
		if !sel.Matches(labels.Set(w.podLabels)) {
			continue
		}
		if !w.isChunkClient() {
			c.errorf("%s: podSelector %v also admits %s on port %d; only gateway and admin job pods may call it", where, peer.PodSelector.MatchLabels, w, port)
			continue
		}
		clients++
		allowed[w] = true
	}
	if clients == 0 {
		c.errorf("%s: podSelector %v selects no gateway or admin job", where, peer.PodSelector.MatchLabels)
	}
}

// rulePermitsPort reports whether rule covers the given container port.
func rulePermitsPort(rule networkingv1.NetworkPolicyIngressRule, w *workload, port int32) bool {
	if len(rule.Ports) == 0 {
		return true
	}
	for _, p := range rule.Ports {
		switch {
		case p.Port == nil:
			return true
		case p.Port.Type == intstr.String:
			for i := range w.spec.Containers {
				if cp := containerPort(&w.spec.Containers[i], *p.Port); cp != nil && cp.ContainerPort == port {
					return true
				}
			}
		case p.EndPort != nil:
			if p.Port.IntVal <= port && port <= *p.EndPort {
				return true
			}
		case p.Port.IntVal == port:
			return true
		}
	}
	return false
}

// --- PDB and HPA ---------------------------------------------------------

// checkScaling: every gateway Deployment has a PodDisruptionBudget that
// lets a drain proceed and a CPU HorizontalPodAutoscaler that owns its
// replica count.
func (c *checker) checkScaling() {
	for _, w := range c.workloads {
		if w.kind != "Deployment" || !w.isGateway() {
			continue
		}
		hasPDB := false
		for _, pdb := range c.pdbs {
			sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
			if err != nil || !sel.Matches(labels.Set(w.podLabels)) {
				continue
			}
			hasPDB = true
			if mu := pdb.Spec.MaxUnavailable; mu != nil && (mu.String() == "0" || mu.String() == "0%") {
				c.errorf("PodDisruptionBudget/%s: maxUnavailable 0 blocks every node drain", pdb.Name)
			}
		}
		if !hasPDB {
			c.errorf("%s: no PodDisruptionBudget selects its pods", w)
		}
		var hpa *autoscalingv2.HorizontalPodAutoscaler
		for _, h := range c.hpas {
			ref := h.Spec.ScaleTargetRef
			if ref.Kind == "Deployment" && ref.Name == w.name && ref.APIVersion == "apps/v1" {
				hpa = h
			}
		}
		if hpa == nil {
			c.errorf("%s: no HorizontalPodAutoscaler targets it", w)
			continue
		}
		if w.replicas != nil {
			c.errorf("%s: sets replicas although HorizontalPodAutoscaler/%s owns the count", w, hpa.Name)
		}
		if hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas < 1 || *hpa.Spec.MinReplicas > hpa.Spec.MaxReplicas {
			c.errorf("HorizontalPodAutoscaler/%s: want 1 <= minReplicas <= maxReplicas", hpa.Name)
		}
		cpu := false
		for _, m := range hpa.Spec.Metrics {
			cpu = cpu || m.Type == autoscalingv2.ResourceMetricSourceType && m.Resource != nil && m.Resource.Name == corev1.ResourceCPU
		}
		if !cpu {
			c.errorf("HorizontalPodAutoscaler/%s: no CPU resource metric", hpa.Name)
		}
	}
	for _, h := range c.hpas {
		found := false
		for _, w := range c.workloads {
			found = found || w.kind == h.Spec.ScaleTargetRef.Kind && w.name == h.Spec.ScaleTargetRef.Name
		}
		if !found {
			c.errorf("HorizontalPodAutoscaler/%s: targets %s/%s, which is not rendered", h.Name, h.Spec.ScaleTargetRef.Kind, h.Spec.ScaleTargetRef.Name)
		}
	}
}

// --- helpers -------------------------------------------------------------

// parseFlags splits args into --flag values and positional arguments. A
// flag's value is "--f=v" or the next argument ("--f v"), except for
// boolean flags.
func parseFlags(args []string) (flags map[string]string, positional []string) {
	flags = map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			positional = append(positional, a)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !hasValue {
			if boolFlags[name] || i+1 == len(args) || strings.HasPrefix(args[i+1], "-") {
				value = "true"
			} else {
				i++
				value = args[i]
			}
		}
		flags[name] = value
	}
	return flags, positional
}

// listenPort is the port of a listen flag of w's chunkbridge container.
func (c *checker) listenPort(w *workload, flag string) int32 {
	return portOf(c.flagOf(w, flag))
}

// flagOf is a flag's value in w's chunkbridge container, "" if unset.
func (c *checker) flagOf(w *workload, flag string) string {
	for i := range w.spec.Containers {
		if imageName(w.spec.Containers[i].Image) == image {
			return c.flagsOf(&w.spec.Containers[i])[flag]
		}
	}
	return ""
}

func portOf(addr string) int32 {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(p)
	return int32(n)
}

// containerPort finds a port of ctr by name or number.
func containerPort(ctr *corev1.Container, p intstr.IntOrString) *corev1.ContainerPort {
	for i, cp := range ctr.Ports {
		if p.Type == intstr.String && cp.Name == p.StrVal || p.Type == intstr.Int && cp.ContainerPort == p.IntVal {
			return &ctr.Ports[i]
		}
	}
	return nil
}

// imageName is the image reference without tag or digest.
func imageName(ref string) string {
	ref, _, _ = strings.Cut(ref, "@")
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		return ref[:i]
	}
	return ref
}

// imageTag is the tag of an image reference, "" if it has none.
func imageTag(ref string) string {
	ref, _, _ = strings.Cut(ref, "@")
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		return ref[i+1:]
	}
	return ""
}

func isTrue(b *bool) bool { return b != nil && *b }

//! The Kubernetes backend (`--backend kubernetes`, cargo feature `kubernetes`): per step, a Job of
//! the step image in a cluster the controller reaches through its kubeconfig, with the step
//! context in a Secret mounted into the pod and the result framed in the pod's log (the stream
//! transport, [`opschain_runner::transport`]). Nothing is shared with the controller's disk; the step
//! image comes through the registry (`--registry`), built and pushed by the Docker backend's
//! pipeline on the controller's host.
//!
//! Per step, in this order (`docs/transport.md` shows the manifests):
//! 1. create the Job, suspended ([`job_manifest`]): no retries (`backoffLimit: 0`, `restartPolicy:
//!    Never`), `activeDeadlineSeconds` from the action's timeouts ([`active_deadline`]), removed
//!    `ttlSecondsAfterFinished` after it ends, uid 10001, non-root, no service account token;
//! 2. create the Secret ([`secret_manifest`]) owned by the Job (an ownerReference to its uid),
//!    so that deleting the Job, or its TTL, deletes the Secret too;
//! 3. resume the Job (`suspend: false`): its pod starts only once the Secret it mounts exists;
//! 4. wait for the pod's container to start, then follow its log into the change log, taking the
//!    result frame out of it ([`super::stream::FrameSink`]);
//! 5. read the container's exit code from the pod's status.
//!
//! `change cancel` deletes the Job (propagation `Foreground`): the kubelet sends the agent
//! SIGTERM, the agent runs its grace ladder (TERM to the action, KILL after the grace) and still
//! prints its result, which the log carries back; the pod's `terminationGracePeriodSeconds` is the
//! grace plus 10 s so the kubelet's own KILL comes after the agent's.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, KeyToPath, LocalObjectReference, Pod, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, Secret, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};

use super::docker::DockerBackend;
use super::stream::{nonce, FrameSink};
use super::{Backend, BackendError, LogSink, StepJob, StepOutput};
use opschain_runner::actions::Action;

/// The uid and gid the step's container runs as: the runner user of the runner images.
pub const RUNNER_UID: i64 = 10001;

/// Where the context Secret is mounted in the pod.
pub const CONTEXT_MOUNT: &str = "/var/run/opschain";

/// The key of the step context in the Secret (and its file name under [`CONTEXT_MOUNT`]).
pub const CONTEXT_KEY: &str = "step_context.json";

/// The name of the step's container in the pod.
pub const CONTAINER: &str = "step";

/// The label every object of the backend carries, to find (or delete) them all:
/// `app.kubernetes.io/managed-by=opschain`.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "opschain");

/// How the Kubernetes backend runs steps.
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// The namespace of the Jobs and Secrets (default `default`).
    pub namespace: String,
    /// The Secret the pods pull the step image with (default: none, the node's own access).
    pub image_pull_secret: Option<String>,
    /// The container's resource requests (`cpu=500m`, `memory=256Mi`; default: none).
    pub requests: BTreeMap<String, String>,
    /// The container's resource limits (default: none).
    pub limits: BTreeMap<String, String>,
    /// The pods' node selector (default: none).
    pub node_selector: BTreeMap<String, String>,
    /// Seconds a finished Job (and its Secret) is kept, for `kubectl logs` (default 600).
    pub ttl_after_finished: i32,
    /// Time allowed for a pod to start (scheduling and the image pull) before the step fails, and
    /// added to the action's timeouts in the Job's deadline (default 300 s).
    pub start_allowance: Duration,
    /// The agent's TERM-to-KILL grace (default 10 s).
    pub grace: Duration,
    /// The OpsChain folder of the repositories (`.opschain`, or MintPress's `.mintpress`),
    /// given to the agent as `OPSCHAIN_REPO_FOLDER`.
    pub folder: String,
}

impl Default for KubernetesConfig {
    fn default() -> KubernetesConfig {
        KubernetesConfig {
            namespace: "default".into(),
            image_pull_secret: None,
            requests: BTreeMap::new(),
            limits: BTreeMap::new(),
            node_selector: BTreeMap::new(),
            ttl_after_finished: 600,
            start_allowance: Duration::from_secs(300),
            grace: Duration::from_secs(10),
            folder: ".opschain".into(),
        }
    }
}

/// Why the Kubernetes backend failed.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// No cluster configuration was found (kubeconfig, in-cluster environment) or it is invalid.
    #[error("cannot configure the Kubernetes client (KUBECONFIG, ~/.kube/config or the in-cluster service account)")]
    Config(#[source] Box<kube::Error>),
    /// The async runtime of the client cannot be started.
    #[error("cannot start the Kubernetes client's runtime")]
    Runtime(#[source] std::io::Error),
    /// A call to the API server failed.
    #[error("cannot {op} {name} in namespace {namespace}")]
    Api {
        /// The operation.
        op: &'static str,
        /// The object.
        name: String,
        /// The namespace.
        namespace: String,
        /// The cause.
        #[source]
        source: Box<kube::Error>,
    },
    /// The step's pod did not start.
    #[error("the pod of Job {job} did not start: {reason}")]
    PodStart {
        /// The Job.
        job: String,
        /// What the pod's status says.
        reason: String,
    },
    /// A `--kube-*` setting is malformed.
    #[error("invalid setting {setting}: {reason}")]
    Setting {
        /// The setting.
        setting: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The registry is missing: the cluster pulls the step images from it.
    #[error("the Kubernetes backend needs --registry HOST:PORT: the cluster's nodes pull the step images from it")]
    NoRegistry,
}

/// Parses `key=value,key=value` (a `--kube-*` map setting); empty gives an empty map.
pub fn parse_map(setting: &'static str, text: &str) -> Result<BTreeMap<String, String>, KubernetesError> {
    let mut map = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| KubernetesError::Setting { setting, reason: format!("{pair:?} is not key=value") })?;
        if key.is_empty() {
            return Err(KubernetesError::Setting { setting, reason: format!("{pair:?} has an empty key") });
        }
        map.insert(key.trim().to_string(), value.trim().to_string());
    }
    Ok(map)
}

/// The name of a step's Job and Secret: `opschain-c<change>-s<step>-<10 hex digits of the
/// nonce>` (a DNS label of at most 63 characters, as the Job's pods' `job-name` label needs;
/// unique per run of the step).
pub fn job_name(change_id: i64, step_id: i64, nonce: &str) -> String {
    let tail: String = nonce.chars().filter(char::is_ascii_alphanumeric).take(10).collect::<String>().to_ascii_lowercase();
    format!("opschain-c{change_id}-s{step_id}-{tail}")
}

/// The labels of a step's objects.
fn labels(job: &StepJob) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        ("opschain.io/change".to_string(), job.change_id.to_string()),
        ("opschain.io/step".to_string(), job.step_id.to_string()),
    ])
}

/// The Job's `activeDeadlineSeconds`: the pod's start allowance plus, for every command the step
/// runs (its prerequisites, depth first, and its own), its `timeout_secs` and the grace. `None`
/// when one of them has no timeout (the step may then run as long as it takes, as on the other
/// backends), or the plan is unknown.
pub fn active_deadline(plan: &[(String, Action)], grace: Duration, start_allowance: Duration) -> Option<i64> {
    let mut total = start_allowance.as_secs();
    for (_, action) in plan.iter().filter(|(_, a)| a.run.is_some() || a.command.is_some()) {
        total = total.checked_add(action.timeout_secs? + grace.as_secs())?;
    }
    i64::try_from(total).ok()
}

fn quantities(map: &BTreeMap<String, String>) -> Option<BTreeMap<String, Quantity>> {
    (!map.is_empty()).then(|| map.iter().map(|(k, v)| (k.clone(), Quantity(v.clone()))).collect())
}

/// The step's Job, built from the official API types: suspended until its Secret exists, the
/// step image's agent run as `step --context-from <the mounted Secret> --result-frame NONCE`
/// (the nonce in `OPSCHAIN_RESULT_FRAME`, which the agent keeps from the action).
pub fn job_manifest(config: &KubernetesConfig, step: &StepJob, name: &str, image: &str, nonce: &str, deadline: Option<i64>) -> Job {
    let labels = labels(step);
    let container = Container {
        name: CONTAINER.into(),
        image: Some(image.into()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(vec!["step".into(), "--context-from".into(), format!("{CONTEXT_MOUNT}/{CONTEXT_KEY}")]),
        env: Some(vec![
            EnvVar { name: "OPSCHAIN_RESULT_FRAME".into(), value: Some(nonce.into()), ..EnvVar::default() },
            EnvVar { name: "OPSCHAIN_GRACE_SECS".into(), value: Some(config.grace.as_secs().to_string()), ..EnvVar::default() },
            EnvVar { name: "OPSCHAIN_REPO_FOLDER".into(), value: Some(config.folder.clone()), ..EnvVar::default() },
        ]),
        volume_mounts: Some(vec![VolumeMount { name: "step-context".into(), mount_path: CONTEXT_MOUNT.into(), read_only: Some(true), ..VolumeMount::default() }]),
        resources: (!config.requests.is_empty() || !config.limits.is_empty()).then(|| ResourceRequirements {
            requests: quantities(&config.requests),
            limits: quantities(&config.limits),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
            run_as_non_root: Some(true),
            run_as_user: Some(RUNNER_UID),
            run_as_group: Some(RUNNER_UID),
            ..SecurityContext::default()
        }),
        // The result travels in the log; the termination message (4 KB) gets the log's tail
        // only when the agent could not write one of its own.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };
    let pod = PodSpec {
        restart_policy: Some("Never".into()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        // The kubelet's KILL comes after the agent's own grace ladder has run.
        termination_grace_period_seconds: Some(config.grace.as_secs() as i64 + 10),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUNNER_UID),
            run_as_group: Some(RUNNER_UID),
            fs_group: Some(RUNNER_UID),
            ..PodSecurityContext::default()
        }),
        image_pull_secrets: config.image_pull_secret.as_ref().map(|s| vec![LocalObjectReference { name: s.clone() }]),
        node_selector: (!config.node_selector.is_empty()).then(|| config.node_selector.clone()),
        volumes: Some(vec![Volume {
            name: "step-context".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(name.into()),
                // Readable by the runner user (through fsGroup), by no one else.
                default_mode: Some(0o440),
                items: Some(vec![KeyToPath { key: CONTEXT_KEY.into(), path: CONTEXT_KEY.into(), mode: None }]),
                optional: Some(false),
            }),
            ..Volume::default()
        }]),
        containers: vec![container],
        ..PodSpec::default()
    };
    Job {
        metadata: ObjectMeta { name: Some(name.into()), namespace: Some(config.namespace.clone()), labels: Some(labels.clone()), ..ObjectMeta::default() },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: deadline,
            ttl_seconds_after_finished: Some(config.ttl_after_finished),
            suspend: Some(true),
            template: PodTemplateSpec { metadata: Some(ObjectMeta { labels: Some(labels), ..ObjectMeta::default() }), spec: Some(pod) },
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// The step's context Secret, owned by its Job (`job_uid`): the step context under
/// [`CONTEXT_KEY`], immutable.
pub fn secret_manifest(config: &KubernetesConfig, step: &StepJob, name: &str, job_uid: &str, context: &[u8]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(config.namespace.clone()),
            labels: Some(labels(step)),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "Job".into(),
                name: name.into(),
                uid: job_uid.into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        immutable: Some(true),
        data: Some(BTreeMap::from([(CONTEXT_KEY.to_string(), ByteString(context.to_vec()))])),
        ..Secret::default()
    }
}

/// The Kubernetes backend.
pub struct KubernetesBackend {
    config: KubernetesConfig,
    /// Builds the step images and pushes them to the registry.
    images: DockerBackend,
    client: kube::Client,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for KubernetesBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesBackend").field("config", &self.config).finish_non_exhaustive()
    }
}

/// How often the backend looks at the pod while it starts, and at the cancel flag (250 ms).
const POLL: Duration = Duration::from_millis(250);

/// How long the backend waits, once the log has ended, for the pod's status to show the
/// container's exit code (30 s).
const STATUS_WAIT: Duration = Duration::from_secs(30);

/// Container waiting reasons that do not resolve by themselves: the pod is given up on at once.
const FATAL_WAITING: &[&str] = &["InvalidImageName", "CreateContainerConfigError", "CreateContainerError"];

impl KubernetesBackend {
    /// A backend with a client from the kubeconfig (or the in-cluster service account) and
    /// `images` to build and push the step images (it must have a registry).
    pub fn new(config: KubernetesConfig, images: DockerBackend, has_registry: bool) -> Result<KubernetesBackend, KubernetesError> {
        if !has_registry {
            return Err(KubernetesError::NoRegistry);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("opschain-kube").enable_all().build().map_err(KubernetesError::Runtime)?;
        let client = runtime.block_on(kube::Client::try_default()).map_err(|e| KubernetesError::Config(Box::new(e)))?;
        Ok(KubernetesBackend { config, images, client, runtime })
    }

    /// A backend over a given client (for tests against a stand-in API server).
    pub fn with_client(config: KubernetesConfig, images: DockerBackend, client: kube::Client, runtime: tokio::runtime::Runtime) -> KubernetesBackend {
        KubernetesBackend { config, images, client, runtime }
    }

    /// Runs one step as a Job of `image` (see the module's doc).
    pub fn run_image(&self, job: &StepJob, image: &str, sink: &dyn LogSink, cancel: &AtomicBool) -> Result<StepOutput, KubernetesError> {
        self.runtime.block_on(self.run_job(job, image, sink, cancel))
    }

    async fn run_job(&self, step: &StepJob, image: &str, sink: &dyn LogSink, cancel: &AtomicBool) -> Result<StepOutput, KubernetesError> {
        let ns = self.config.namespace.as_str();
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), ns);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let nonce = nonce();
        let name = job_name(step.change_id, step.step_id, &nonce);
        let api_err = |op: &'static str, name: &str| {
            let name = name.to_string();
            move |source| KubernetesError::Api { op, name, namespace: ns.to_string(), source: Box::new(source) }
        };
        let actions_path = format!("{}/actions.toml", self.config.folder);
        let deadline = crate::repo::git(&step.repo, &["show", &format!("{}:{actions_path}", step.commit)])
            .ok()
            .and_then(|text| opschain_runner::actions::Actions::parse(std::path::Path::new(&actions_path), &text).ok())
            .and_then(|actions| actions.plan(&step.action).ok())
            .and_then(|plan| active_deadline(&plan, self.config.grace, self.config.start_allowance));

        let created =
            jobs.create(&PostParams::default(), &job_manifest(&self.config, step, &name, image, &nonce, deadline)).await.map_err(api_err("create the Job", &name))?;
        let uid = created.metadata.uid.unwrap_or_default();
        let mut context = Vec::new();
        step.context.write_to(&mut context).expect("writing to memory cannot fail");
        let secret = secrets.create(&PostParams::default(), &secret_manifest(&self.config, step, &name, &uid, &context)).await;
        let resumed = match secret {
            Ok(_) => jobs
                .patch(&name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"suspend": false}})))
                .await
                .map(drop)
                .map_err(api_err("resume the Job", &name)),
            Err(e) => Err(api_err("create the Secret", &name)(e)),
        };
        if let Err(e) = resumed {
            let _ = jobs.delete(&name, &DeleteParams::background()).await;
            return Err(e);
        }
        let deadline_text = deadline.map_or("none".to_string(), |d| format!("{d}s"));
        sink.line("stderr", &format!("opschain: Job {ns}/{name} created (image {image}, deadline {deadline_text})"));

        // Wait for the container to start (or end).
        let started = Instant::now();
        let selector = ListParams::default().labels(&format!("job-name={name}"));
        let mut said = String::new();
        let pod_name = loop {
            if cancel.load(Ordering::SeqCst) {
                let _ = jobs.delete(&name, &DeleteParams::foreground()).await;
                sink.line("stderr", &format!("opschain: cancelled before the pod started: Job {name} deleted"));
                return Ok(StepOutput { exit_status: 128 + libc::SIGTERM, result: None, result_error: Some("cancelled before the pod started".into()) });
            }
            let list = pods.list(&selector).await.map_err(api_err("list the pods of Job", &name))?;
            let mut waiting: Option<(String, String)> = None;
            let mut ready = None;
            for pod in &list.items {
                let state =
                    pod.status.as_ref().and_then(|s| s.container_statuses.as_ref()).and_then(|c| c.iter().find(|c| c.name == CONTAINER)).and_then(|c| c.state.clone());
                match state {
                    Some(s) if s.running.is_some() || s.terminated.is_some() => ready = pod.metadata.name.clone(),
                    Some(s) => {
                        if let Some(w) = s.waiting {
                            waiting = Some((w.reason.unwrap_or_default(), w.message.unwrap_or_default()));
                        }
                    }
                    None => {
                        let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
                        if phase == "Failed" {
                            let reason = pod.status.as_ref().and_then(|s| s.reason.clone().or(s.message.clone())).unwrap_or_else(|| "failed".into());
                            waiting = Some((reason, String::new()));
                        }
                    }
                }
            }
            if let Some(pod) = ready {
                break pod;
            }
            if let Some((reason, message)) = waiting {
                let text = format!("{reason} {message}");
                if text != said {
                    sink.line("stderr", &format!("opschain: pod of Job {name} waiting: {}", text.trim()));
                    said = text;
                }
                if FATAL_WAITING.contains(&reason.as_str()) || started.elapsed() > self.config.start_allowance {
                    let _ = jobs.delete(&name, &DeleteParams::background()).await;
                    return Err(KubernetesError::PodStart { job: name, reason: format!("{reason}: {message}") });
                }
            } else if started.elapsed() > self.config.start_allowance {
                let _ = jobs.delete(&name, &DeleteParams::background()).await;
                return Err(KubernetesError::PodStart { job: name, reason: format!("no pod running after {}s", self.config.start_allowance.as_secs()) });
            }
            tokio::time::sleep(POLL).await;
        };

        // Follow the log to its end, the frame taken out of it; a cancel deletes the Job and
        // keeps reading (the agent's last lines and its result come after the SIGTERM). A log
        // stream that breaks while the container runs is followed again from its last line.
        let frames = FrameSink::new(&nonce, self.images.max_result_bytes(), sink);
        let (cancelled, mut pod) = self.follow_log(&pods, &jobs, &pod_name, &name, &frames, cancel).await?;
        let (result, result_error) = frames.finish();

        // The exit code from the pod's status, which may lag the log's end.
        let waited = Instant::now();
        let exit_status = loop {
            match pod.as_ref().and_then(container_state).and_then(|s| s.terminated.as_ref()).map(|t| t.exit_code) {
                Some(code) => break code,
                // The pod is gone (a cancel, the deadline) or its status never came: the agent's
                // own account, else a SIGTERM's status.
                _ if pod.is_none() || waited.elapsed() > STATUS_WAIT => {
                    break result.as_ref().and_then(|r| r.runner.as_ref()).map_or(128 + libc::SIGTERM, |r| r.exit_status);
                }
                _ => {
                    tokio::time::sleep(POLL).await;
                    pod = pods.get_opt(&pod_name).await.map_err(api_err("read the pod", &pod_name))?;
                }
            }
        };
        if !cancelled {
            if let Ok(job) = jobs.get(&name).await {
                let failed = job.status.and_then(|s| s.conditions).unwrap_or_default().into_iter().find(|c| c.type_ == "Failed" && c.status == "True");
                if let Some(c) = failed {
                    sink.line("stderr", &format!("opschain: Job {name} failed: {} {}", c.reason.unwrap_or_default(), c.message.unwrap_or_default()));
                }
            }
        }
        Ok(StepOutput { exit_status, result, result_error })
    }
}

impl KubernetesBackend {
    /// Follows the log of the step's container into `frames` until the container has ended (or
    /// its pod is gone), and returns whether the step was cancelled meanwhile (the Job deleted)
    /// and the pod as last read (`None`: gone).
    /// Each line is asked for with its timestamp; when the stream ends or breaks while the
    /// container still runs, the log is asked for again from the second of the last line seen
    /// (`sinceTime`), and what was seen already is skipped ([`LogPosition`]): no line lost or
    /// sent twice. A line cut by the break is sent whole by the next stream. The API server may
    /// be unreachable for up to the start allowance before the step fails.
    async fn follow_log(
        &self,
        pods: &Api<Pod>,
        jobs: &Api<Job>,
        pod_name: &str,
        job_name: &str,
        frames: &FrameSink<'_>,
        cancel: &AtomicBool,
    ) -> Result<(bool, Option<Pod>), KubernetesError> {
        use futures::AsyncBufReadExt;
        let ns = self.config.namespace.as_str();
        let mut position = LogPosition::default();
        let mut cancelled = false;
        // Since when the API server has failed to give the log or the pod, if it has.
        let mut failing_since: Option<Instant> = None;
        loop {
            let params = LogParams { container: Some(CONTAINER.into()), follow: true, timestamps: true, since_time: position.since(), ..LogParams::default() };
            let mut partial = Vec::new();
            let broke = match pods.log_stream(pod_name, &params).await {
                Err(e) => Some(e.to_string()),
                Ok(stream) => {
                    let mut reader = std::pin::pin!(stream);
                    loop {
                        tokio::select! {
                            read = reader.read_until(b'\n', &mut partial) => match read {
                                Ok(0) => break None,
                                Ok(_) if partial.last() == Some(&b'\n') => {
                                    failing_since = None;
                                    let line = String::from_utf8_lossy(&partial[..partial.len() - 1]).into_owned();
                                    partial.clear();
                                    if let Some(text) = position.take(&line) {
                                        frames.line("stdout", text.trim_end_matches('\r'));
                                    }
                                }
                                // The end of the stream, in the middle of a line.
                                Ok(_) => break None,
                                Err(e) => break Some(e.to_string()),
                            },
                            _ = tokio::time::sleep(POLL), if !cancelled => {
                                if cancel.load(Ordering::SeqCst) {
                                    cancelled = true;
                                    frames.line("stderr", &format!("opschain: cancelling: deleting Job {job_name} (the pod gets SIGTERM)"));
                                    // A Job that ended meanwhile may be gone already: the log still
                                    // ends, and carries what the agent sent.
                                    if let Err(e) = jobs.delete(job_name, &DeleteParams::foreground()).await {
                                        frames.line("stderr", &format!("opschain: cannot delete Job {job_name}: {e}"));
                                    }
                                }
                            }
                        }
                    }
                }
            };
            // The stream ended or broke: over when the container has ended or its pod is gone.
            let (running, pod) = match pods.get_opt(pod_name).await {
                Ok(pod) => (pod.as_ref().is_some_and(|p| container_state(p).is_some_and(|s| s.terminated.is_none())), pod),
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > self.config.start_allowance {
                        return Err(KubernetesError::Api { op: "read the pod", name: pod_name.to_string(), namespace: ns.to_string(), source: Box::new(e) });
                    }
                    (true, None)
                }
            };
            if !running {
                // What the log's last line held without its newline is the log's end.
                if let Some(text) = (!partial.is_empty()).then(|| String::from_utf8_lossy(&partial).into_owned()).as_deref().and_then(|l| position.take(l)) {
                    frames.line("stdout", text.trim_end_matches('\r'));
                }
                return Ok((cancelled, pod));
            }
            if let Some(e) = broke {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > self.config.start_allowance {
                    frames.line(
                        "stderr",
                        &format!("opschain: the log of pod {pod_name} broke off and could not be followed again for {}s: {e}", self.config.start_allowance.as_secs()),
                    );
                    return Ok((cancelled, pod));
                }
                let from = position.last.map_or("its start".to_string(), |t| t.to_string());
                frames.line("stderr", &format!("opschain: the log of pod {pod_name} broke off ({e}); the container runs: following it again from {from}"));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The state of the step container of `pod`, when its status has one.
fn container_state(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerState> {
    pod.status.as_ref()?.container_statuses.as_ref()?.iter().find(|c| c.name == CONTAINER)?.state.as_ref()
}

/// How far a pod's log has been read, to follow it again after a break without losing or
/// repeating a line: the timestamp of the last line seen, and how many lines seen carried that
/// same timestamp. The API server takes `sinceTime` to the second, so a new stream starts at the
/// last line's second: its lines before the last one's timestamp are skipped, and of those with
/// that timestamp, as many as were seen.
#[derive(Debug, Default)]
struct LogPosition {
    /// The timestamp of the last line seen.
    last: Option<Timestamp>,
    /// How many lines seen carried `last`.
    at_last: usize,
    /// Of the lines carrying `last`, how many the current stream has given.
    again: usize,
}

impl LogPosition {
    /// The `sinceTime` to follow the log again from: the last line's second.
    fn since(&mut self) -> Option<Timestamp> {
        self.again = 0;
        self.last.and_then(|t| Timestamp::from_second(t.as_second()).ok())
    }

    /// Reads one line of a stream asked with timestamps (`<RFC 3339 time> <text>`): its text
    /// when it is new, `None` when it was seen already. A line without a timestamp is new.
    fn take<'a>(&mut self, line: &'a str) -> Option<&'a str> {
        let Some((stamp, text)) = line.split_once(' ').and_then(|(s, t)| s.parse::<Timestamp>().ok().map(|s| (s, t))) else { return Some(line) };
        match self.last {
            Some(last) if stamp < last => None,
            Some(last) if stamp == last => {
                self.again += 1;
                if self.again <= self.at_last {
                    return None;
                }
                self.at_last += 1;
                Some(text)
            }
            _ => {
                self.last = Some(stamp);
                self.at_last = 1;
                self.again = 1;
                Some(text)
            }
        }
    }
}

impl Backend for KubernetesBackend {
    fn builds_images(&self) -> bool {
        true
    }

    fn run(&self, job: &StepJob, sink: &dyn LogSink, cancel: &Arc<AtomicBool>) -> Result<StepOutput, BackendError> {
        let image = match self.images.image_for(job, sink, cancel) {
            Ok(Ok(image)) => image,
            Ok(Err(failed)) => return Ok(failed),
            Err(e) => return super::docker::cancelled_as_output(Err(e), cancel),
        };
        self.run_image(job, &image, sink, cancel).map_err(|source| BackendError::Kubernetes { step: job.step_id, source: Box::new(source) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn step() -> StepJob {
        StepJob {
            change_id: 7,
            step_id: 42,
            action: "deploy".into(),
            repo: "/nonexistent".into(),
            git_rev: "HEAD".into(),
            commit: "0".repeat(40),
            context: super::super::ContextDocument::from_texts(json!({}), "{}".into(), "{}".into(), None),
            build_secret_sets: Vec::new(),
        }
    }

    fn config() -> KubernetesConfig {
        KubernetesConfig {
            namespace: "steps".into(),
            image_pull_secret: Some("regcred".into()),
            requests: parse_map("--kube-requests", "cpu=250m, memory=128Mi").unwrap(),
            limits: parse_map("--kube-limits", "memory=1Gi").unwrap(),
            node_selector: parse_map("--kube-node-selector", "pool=steps,kubernetes.io/arch=amd64").unwrap(),
            ttl_after_finished: 900,
            start_allowance: Duration::from_secs(120),
            grace: Duration::from_secs(15),
            folder: ".mintpress".into(),
        }
    }

    #[test]
    fn the_job_holds_every_required_field() {
        let name = job_name(7, 42, "0123456789abcdef");
        assert_eq!(name, "opschain-c7-s42-0123456789");
        let job = job_manifest(&config(), &step(), &name, "127.0.0.1:5000/opschain-step:abc", "0123456789abcdef", Some(1234));
        // Through JSON, as the API server receives it.
        let v: Value = serde_json::to_value(&job).unwrap();
        assert_eq!(v["apiVersion"], "batch/v1");
        assert_eq!(v["kind"], "Job");
        assert_eq!(v["metadata"]["name"], name);
        assert_eq!(v["metadata"]["namespace"], "steps");
        assert_eq!(v["metadata"]["labels"]["app.kubernetes.io/managed-by"], "opschain");
        assert_eq!(v["metadata"]["labels"]["opschain.io/step"], "42");
        let spec = &v["spec"];
        assert_eq!(spec["backoffLimit"], 0);
        assert_eq!(spec["activeDeadlineSeconds"], 1234);
        assert_eq!(spec["ttlSecondsAfterFinished"], 900);
        assert_eq!(spec["suspend"], true);
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["enableServiceLinks"], false);
        assert_eq!(pod["terminationGracePeriodSeconds"], 25);
        assert_eq!(pod["securityContext"], json!({"runAsUser": 10001, "runAsGroup": 10001, "runAsNonRoot": true, "fsGroup": 10001}));
        assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
        assert_eq!(pod["nodeSelector"], json!({"pool": "steps", "kubernetes.io/arch": "amd64"}));
        assert_eq!(
            pod["volumes"],
            json!([{"name": "step-context", "secret": {"secretName": name, "defaultMode": 0o440, "optional": false, "items": [{"key": "step_context.json", "path": "step_context.json"}]}}])
        );
        assert_eq!(spec["template"]["metadata"]["labels"], v["metadata"]["labels"]);
        let containers = pod["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1);
        let c = &containers[0];
        assert_eq!(c["name"], "step");
        assert_eq!(c["image"], "127.0.0.1:5000/opschain-step:abc");
        assert_eq!(c["args"], json!(["step", "--context-from", "/var/run/opschain/step_context.json"]));
        assert_eq!(
            c["env"],
            json!([{"name": "OPSCHAIN_RESULT_FRAME", "value": "0123456789abcdef"}, {"name": "OPSCHAIN_GRACE_SECS", "value": "15"}, {"name": "OPSCHAIN_REPO_FOLDER", "value": ".mintpress"}])
        );
        assert_eq!(c["volumeMounts"], json!([{"name": "step-context", "mountPath": "/var/run/opschain", "readOnly": true}]));
        assert_eq!(c["resources"], json!({"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}}));
        assert_eq!(c["securityContext"]["runAsNonRoot"], true);
        assert_eq!(c["securityContext"]["runAsUser"], 10001);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["securityContext"]["capabilities"], json!({"drop": ["ALL"]}));
        assert!(c.get("command").is_none(), "the image's ENTRYPOINT (the agent) runs");
        // The agent's own parser accepts the arguments the Job gives it.
        use clap::Parser;
        let args: Vec<String> = c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect();
        let cli = opschain_runner::cli::Cli::try_parse_from(std::iter::once("opschain-runner".to_string()).chain(args)).unwrap();
        match cli.command {
            Some(opschain_runner::cli::Command::Step(s)) => assert_eq!(s.context_from.as_deref(), Some(std::path::Path::new("/var/run/opschain/step_context.json"))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn optional_settings_are_left_out_when_unset() {
        let job = job_manifest(&KubernetesConfig::default(), &step(), "n", "img", "0123456789abcdef", None);
        let v: Value = serde_json::to_value(&job).unwrap();
        let pod = &v["spec"]["template"]["spec"];
        for absent in ["imagePullSecrets", "nodeSelector"] {
            assert!(pod.get(absent).is_none(), "{absent}");
        }
        assert!(pod["containers"][0].get("resources").is_none());
        assert!(v["spec"].get("activeDeadlineSeconds").is_none());
        assert_eq!(v["metadata"]["namespace"], "default");
        assert_eq!(v["spec"]["ttlSecondsAfterFinished"], 600);
    }

    #[test]
    fn the_secret_is_owned_by_its_job_and_holds_the_context() {
        let context = br#"{"project": {"properties": {"a": 1}}}"#;
        let secret = secret_manifest(&config(), &step(), "opschain-c7-s42-x", "uid-123", context);
        let v: Value = serde_json::to_value(&secret).unwrap();
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["kind"], "Secret");
        assert_eq!(v["type"], "Opaque");
        assert_eq!(v["immutable"], true);
        assert_eq!(v["metadata"]["namespace"], "steps");
        assert_eq!(
            v["metadata"]["ownerReferences"],
            json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "opschain-c7-s42-x", "uid": "uid-123", "controller": true, "blockOwnerDeletion": true}])
        );
        use base64::Engine as _;
        let data = base64::engine::general_purpose::STANDARD.decode(v["data"]["step_context.json"].as_str().unwrap()).unwrap();
        assert_eq!(data, context);
    }

    #[test]
    fn the_deadline_adds_every_commands_timeout_and_grace_to_the_start_allowance() {
        let actions = opschain_runner::actions::Actions::parse(
            std::path::Path::new("actions.toml"),
            "[actions.a]\nrequires = [\"b\"]\nrun = \"x\"\ntimeout_secs = 100\n[actions.b]\nrun = \"y\"\ntimeout_secs = 20\n[actions.c]\nrun = \"z\"\n[actions.d]\nsteps = [\"a\"]\n[actions.e]\nrequires = [\"c\"]\nrun = \"y\"\ntimeout_secs = 5\n",
        )
        .unwrap();
        let deadline = |name: &str| active_deadline(&actions.plan(name).unwrap(), Duration::from_secs(10), Duration::from_secs(300));
        assert_eq!(deadline("a"), Some(300 + 100 + 10 + 20 + 10));
        assert_eq!(deadline("c"), None, "a command without a timeout");
        assert_eq!(deadline("e"), None, "a prerequisite without a timeout");
        assert_eq!(deadline("d"), Some(300), "only children: nothing runs");
    }

    #[test]
    fn map_settings_are_parsed_strictly() {
        assert_eq!(parse_map("s", "").unwrap(), BTreeMap::new());
        assert!(parse_map("s", "cpu").is_err());
        assert!(parse_map("s", "=1").is_err());
    }

    #[test]
    fn names_are_dns_labels() {
        let name = job_name(i64::MAX, i64::MAX, &nonce());
        assert!(name.len() <= 63, "{name}");
        assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
    }
}

//! The step image pipeline of the controller's image backends (Docker; any backend that runs a
//! step in an image can call it): [`StepImages::build_step_image`] works out a step's image with
//! [`step_image::plan`], reuses an image of the same key, and otherwise writes the build context with
//! [`step_image::write_planned`] (the very code `opschain-runner build-context` runs) and builds it with
//! BuildKit, its output streamed into the step's log as the agent's is, between the build phase's
//! start and finish lines.
//!
//! The image is tagged `opschain-step:<key>`, the key naming every input that can change what the
//! build gives: the commit, the Dockerfile, the base runner image and the env context (the env
//! properties and the project and environment context values). The base image is in the key by
//! name, and its id is checked against the label [`BASE_LABEL`] the step image was built with: a
//! base image rebuilt under the same name rebuilds the step image. Two steps of a change, or two
//! changes with the same env properties, share one image; a changed env property gives a new key,
//! and the build reruns only the layers from the first line that reads the context (the
//! `OPSCHAIN_CONTEXT_DIGEST` build arg). The build secret sets are in the key too, as a digest
//! of their names and values keyed by the controller's own key (the
//! `OPSCHAIN_BUILD_SECRETS_DIGEST` build arg): a changed `build_secrets` list or a rotated value
//! rebuilds the image and reruns its `RUN` lines, and no value reaches the image.
//!
//! With a registry, an image is taken from it only by the digest this controller recorded when it
//! pushed it, and only when the record's base image id is the current one
//! ([`crate::image::registry`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::engine::{self, EngineError, EngineTimeouts};
use crate::backend::{run_streamed, status_code, BackendError, LogSink, StepJob};
use crate::image::docker::Docker;
use crate::image::registry;
use opschain_runner::step_image::{self, BuildContextSpec, SecretSource};

/// How step images are built.
#[derive(Debug, Clone)]
pub struct ImageSettings {
    /// The docker CLI (a client that builds with BuildKit: Debian's `/usr/bin/docker`).
    pub docker: Docker,
    /// The base runner image (`OPSCHAIN_BASE_RUNNER`); it must exist locally.
    pub base_image: String,
    /// The OpsChain folder of the repositories (`.opschain`, or `.mintpress`).
    pub folder: String,
    /// TERM-to-KILL grace of a cancelled build.
    pub grace: Duration,
    /// Where each project's `repo.tar` of a commit is kept once made
    /// ([`BuildContextSpec::repo_tar_cache`]).
    /// Default: none, archived for every build.
    pub repo_tar_cache: Option<PathBuf>,

    /// The registry the images go through (default: none): an image of the same key there is
    /// pulled rather than built, and a built (or locally reused) one is pushed there; the
    /// reference to run is then the registry's ([`crate::image::registry`]).
    pub registry: Option<crate::image::registry::Registry>,
    /// The time limits of the calls to the engine.
    pub timeouts: EngineTimeouts,

    /// Where the digests of the images pushed to the registry are recorded
    /// ([`registry::Pushed`]): without a record of its own, the controller never pulls a step
    /// image. Default: none (every image is built or reused locally and pushed again).
    pub registry_records: Option<PathBuf>,

    /// The key of the build secrets digest ([`step_image::BuildContextSpec::secrets_key`]): with
    /// it, a rotated build secret value rebuilds the image. Default: none (the controller gives
    /// its state directory's, [`crate::private::secrets_key`]).
    pub secrets_key: Option<step_image::SecretsKey>,
}

/// A step image ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Its tag, `opschain-step:<key>`.
    pub tag: String,
    /// Its key ([`step_image::ImagePlan::key`]).
    pub key: String,
    /// Whether this call built it (false: an image of the same key was reused).
    pub built: bool,
}

/// What [`StepImages::build_step_image`] gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageOutcome {
    /// The image exists: built now or reused.
    Ready(ImageRef),
    /// `docker build` failed (or was cancelled) with this exit status; its output is in the log.
    Failed {
        /// The tag it was building.
        tag: String,
        /// The exit status of `docker build` (128+N for a signal).
        status: i32,
    },
}

/// Builds and reuses step images; shared by the steps of a change (it serialises the builds of
/// one key, so that parallel steps wait for one build rather than race several).
#[derive(Debug)]
pub struct StepImages {
    settings: ImageSettings,
    /// One lock per image key being built or checked.
    keys: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// The label a step image carries: the id of the base image it was built from. The image key
/// names the base image by name (so that one `docker image inspect` call checks both); a base
/// image rebuilt under the same name no longer matches the label, and the step image is rebuilt.
pub const BASE_LABEL: &str = "org.opschain.base-image-id";

/// The name of the build context directory inside a step's work directory.
const CONTEXT_DIR: &str = "context";

/// The name of the build secret bundle inside a step's work directory (outside the context).
const SECRETS_FILE: &str = "build-secrets.json";

impl StepImages {
    /// A builder with `settings`.
    pub fn new(settings: ImageSettings) -> StepImages {
        StepImages { settings, keys: Mutex::new(HashMap::new()) }
    }

    /// The settings.
    pub fn settings(&self) -> &ImageSettings {
        &self.settings
    }

    /// Runs `docker ARGS` within the quick calls' limit (stopped when `cancel` turns true) and
    /// returns its trimmed stdout; a failure is [`BackendError::Docker`].
    pub fn docker(&self, op: &'static str, args: &[&str], cancel: &AtomicBool) -> Result<String, BackendError> {
        let answer = engine::call(&self.settings.docker, args, &self.settings.timeouts.call_bound(engine::shown(args)), cancel)?;
        if !answer.success {
            return Err(BackendError::Docker { op, stderr: answer.stderr.trim().to_string() });
        }
        Ok(answer.stdout.trim().to_string())
    }

    /// The base image's id and, when the step image `tag` exists, the base image id it was built
    /// from ([`BASE_LABEL`]). Asked of the engine's Unix socket directly when the docker CLI would
    /// use it too ([`engine_socket`]: two small HTTP requests, a few milliseconds), else with one
    /// `docker image inspect` of both (tens of milliseconds: this is on every step's path). Both
    /// within the quick calls' limit, stopped by `cancel`: an engine that accepts the connection
    /// but does not answer is not asked again through the CLI.
    fn inspect(&self, tag: &str, cancel: &AtomicBool) -> Result<(String, Option<String>), BackendError> {
        let base = self.settings.base_image.as_str();
        if let Some(socket) = engine_socket() {
            let limit = Limit { within: self.settings.timeouts.call, cancel };
            match engine_inspect(&socket, base, tag, &limit) {
                Ok(found) => return found.ok_or_else(|| BackendError::NoBaseImage { image: self.settings.base_image.clone() }),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    let what = format!("docker image inspect {base} {tag} (GET /images/.../json on {})", socket.display());
                    return Err(EngineError::NoAnswer { what, within: limit.within, setting: "--docker-timeout-secs" }.into());
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    return Err(EngineError::Cancelled { what: format!("docker image inspect {base} {tag}") }.into());
                }
                Err(_) => {}
            }
        }
        // `with`: an image without labels has none to index (`index` of a nil map fails the call).
        let format = format!("{{{{with .Config.Labels}}}}{{{{index . \"{BASE_LABEL}\"}}}}{{{{end}}}}");
        let format = format!("{{{{.Id}}}} {format}");
        let args = ["image", "inspect", "--format", &format, base, tag];
        let answer = engine::call(&self.settings.docker, &args, &self.settings.timeouts.call_bound(format!("docker image inspect {base} {tag}")), cancel)?;
        let mut found = answer.stdout.lines().map(|l| l.split_once(' ').map_or((l.trim(), ""), |(id, label)| (id.trim(), label.trim())));
        let base_missing = answer.stderr.lines().any(|l| l.trim_end().ends_with(&format!("No such image: {base}")));
        match (answer.success, found.next(), found.next()) {
            (true, Some((base_id, _)), Some((_, label))) => Ok((base_id.to_string(), Some(label.to_string()))),
            (false, Some((base_id, _)), None) if !base_missing => Ok((base_id.to_string(), None)),
            _ if base_missing => Err(BackendError::NoBaseImage { image: base.to_string() }),
            _ => Err(BackendError::Docker { op: "inspect the base image", stderr: answer.stderr.trim().to_string() }),
        }
    }

    /// The image of `key` that this controller pushed to `registry`, by its digest, when its
    /// record says it was built from the base image `base_id` and the engine has it (locally, or
    /// pulled now by the digest) with that base image's label; `None` otherwise (the caller builds
    /// or reuses a local image and pushes). What was passed over, and why, goes to `sink`.
    fn pushed_image(
        &self,
        registry: &registry::Registry,
        key: &str,
        tag: &str,
        base_id: &str,
        sink: &dyn LogSink,
        cancel: &AtomicBool,
    ) -> Result<Option<String>, registry::RegistryError> {
        let Some(records) = &self.settings.registry_records else { return Ok(None) };
        let Some(pushed) = registry::Pushed::read(records, registry, key)? else { return Ok(None) };
        let reference = registry.digest_reference(tag, &pushed.digest);
        if pushed.base_image_id != base_id {
            sink.line("stderr", &format!("opschain: the registry's {reference} was built from another base image than {}: not using it", self.settings.base_image));
            return Ok(None);
        }
        if !registry::fetch(&self.settings.docker, &reference, sink, &self.settings.timeouts, cancel)? {
            sink.line("stderr", &format!("opschain: the registry no longer has {reference}: not using it"));
            return Ok(None);
        }
        match self.inspect(&reference, cancel) {
            Ok((_, Some(label))) if label == base_id => Ok(Some(reference)),
            _ => {
                sink.line("stderr", &format!("opschain: {reference} does not carry the base image's id: not using it"));
                Ok(None)
            }
        }
    }

    /// The build spec of `job`'s image, its context written under `work`.
    fn spec(&self, job: &StepJob, work: &Path) -> BuildContextSpec {
        let mut spec = BuildContextSpec::new(&job.repo, work.join(CONTEXT_DIR));
        spec.folder = self.settings.folder.clone();
        spec.git_rev = job.git_rev.clone();
        spec.commit = Some(job.commit.clone());
        spec.context = job.context.declaring_tree();
        spec.base_runner = self.settings.base_image.clone();
        spec.secrets = SecretSource::Sets(job.build_secret_sets.clone());
        spec.secrets_key = self.settings.secrets_key.clone();
        spec.secrets_file = Some(work.join(SECRETS_FILE));
        spec.repo_tar_cache = self.settings.repo_tar_cache.clone();
        spec.project = job.context.context.pointer("/project/code").and_then(serde_json::Value::as_str).map(str::to_string);
        spec
    }

    /// Gives the step image of `job`: an existing image of the same key, or one built now from a
    /// build context written under `work` (a private directory of the step; the context and the
    /// secret bundle are removed once the build ends). Logs the build phase's start and finish,
    /// with its duration, and streams `docker build`'s output to `sink`; `cancel` stops the build.
    pub fn build_step_image(&self, job: &StepJob, work: &Path, sink: &dyn LogSink, cancel: &AtomicBool) -> Result<ImageOutcome, BackendError> {
        let started = Instant::now();
        let short = &job.commit[..job.commit.len().min(12)];
        sink.line("stderr", &format!("opschain: phase build started: the step image of commit {short} ({}), FROM {}", self.settings.folder, self.settings.base_image));
        let outcome = self.build_or_reuse(job, work, sink, cancel, started);
        if let Err(e) = &outcome {
            let mut why = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                why.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            sink.line("stderr", &format!("opschain: phase build failed in {:.2}s: {why}", started.elapsed().as_secs_f64()));
        }
        outcome
    }

    /// [`StepImages::build_step_image`] after its start line.
    fn build_or_reuse(&self, job: &StepJob, work: &Path, sink: &dyn LogSink, cancel: &AtomicBool, started: Instant) -> Result<ImageOutcome, BackendError> {
        let spec = self.spec(job, work);
        let image_err = |source| BackendError::Image { step: job.step_id, source };
        let plan = step_image::plan(&spec).map_err(image_err)?;
        let tag = plan.tag();
        let lock = Arc::clone(self.keys.lock().unwrap_or_else(|e| e.into_inner()).entry(plan.key.clone()).or_default());
        let _building = lock.lock().unwrap_or_else(|e| e.into_inner());
        let finished = |what: &str| sink.line("stderr", &format!("opschain: phase build finished in {:.2}s: {what}", started.elapsed().as_secs_f64()));

        let registry_err = |source| BackendError::Registry { step: job.step_id, source };
        let (base_id, built_from) = self.inspect(&tag, cancel)?;
        if let Some(registry) = &self.settings.registry {
            if let Some(reference) = self.pushed_image(registry, &plan.key, &tag, &base_id, sink, cancel).map_err(registry_err)? {
                finished(&format!(
                    "image {reference} from the registry, as this controller pushed it (same commit, Dockerfile, base image, env properties and build secrets)"
                ));
                return Ok(ImageOutcome::Ready(ImageRef { tag: reference, key: plan.key, built: false }));
            }
        }
        // With a registry, the image goes there before any step runs it: a step may run on a
        // machine that has only the registry. It runs by the digest the push gave, never by tag.
        let publish = |tag: String| match &self.settings.registry {
            Some(registry) => {
                let digest = registry::publish(&self.settings.docker, &tag, registry, sink, &self.settings.timeouts, cancel).map_err(registry_err)?;
                if let Some(records) = &self.settings.registry_records {
                    registry::Pushed { digest: digest.clone(), base_image_id: base_id.clone() }.write(records, registry, &plan.key).map_err(registry_err)?;
                }
                Ok::<_, BackendError>(registry.digest_reference(&tag, &digest))
            }
            None => Ok(tag),
        };
        if built_from.as_deref() == Some(base_id.as_str()) {
            let tag = publish(tag)?;
            finished(&format!("reused image {tag} (same commit, Dockerfile, base image, env properties and build secrets)"));
            return Ok(ImageOutcome::Ready(ImageRef { tag, key: plan.key, built: false }));
        }
        let writing = Instant::now();
        let written = step_image::write_planned(&spec, &plan);
        let outcome = written.map_err(image_err).and_then(|context| {
            let sets = if context.secret_sets.is_empty() { "none".to_string() } else { context.secret_sets.join(", ") };
            let dockerfile = if context.custom_dockerfile { format!("{}/Dockerfile", self.settings.folder) } else { "the default Dockerfile".into() };
            sink.line(
                "stderr",
                &format!("opschain: building image {tag} with {dockerfile}; build secret sets: {sets}; build context written in {:.2}s", writing.elapsed().as_secs_f64()),
            );
            if !context.secrets_digest_declared {
                sink.line(
                    "stderr",
                    &format!(
                        "opschain: {dockerfile} does not declare ARG {}: building without the layer cache, so that no RUN line reuses a layer built with other build secrets (declare it before the RUN lines to keep the cache)",
                        step_image::SECRETS_DIGEST_ARG
                    ),
                );
            }
            let mut command = self.settings.docker.command();
            let mut args = context.docker_build_args(&tag);
            let dir = args.pop();
            args.extend(["--label".into(), format!("{BASE_LABEL}={base_id}").into()]);
            args.extend(dir);
            command.stdin(Stdio::null()).args(args);
            let bound = self.settings.timeouts.build_bound(format!("docker build of {tag}"));
            run_streamed(command, self.settings.docker.program.display().to_string(), sink, cancel, self.settings.grace, Some(&bound)).map(status_code)
        });
        // The secrets and the context go as soon as the build ends, however it ended.
        let _ = std::fs::remove_file(work.join(SECRETS_FILE));
        let _ = std::fs::remove_dir_all(work.join(CONTEXT_DIR));
        match outcome? {
            0 => {
                let tag = publish(tag)?;
                finished(&format!("built image {tag}"));
                Ok(ImageOutcome::Ready(ImageRef { tag, key: plan.key, built: true }))
            }
            status => {
                sink.line("stderr", &format!("opschain: phase build failed in {:.2}s: docker build exited with status {status}", started.elapsed().as_secs_f64()));
                Ok(ImageOutcome::Failed { tag, status })
            }
        }
    }
}

/// The Engine API socket the docker CLI uses when neither `DOCKER_HOST` (other than a `unix://`
/// one) nor `DOCKER_CONTEXT` points it elsewhere: `/var/run/docker.sock`. `None` when the CLI
/// would talk to another engine, or the socket is not there.
fn engine_socket() -> Option<PathBuf> {
    if std::env::var_os("DOCKER_CONTEXT").is_some_and(|c| !c.is_empty()) {
        return None;
    }
    let socket = match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => PathBuf::from(host.strip_prefix("unix://")?),
        _ => PathBuf::from("/var/run/docker.sock"),
    };
    socket.exists().then_some(socket)
}

/// How long a request over the engine's socket may take, and the flag that stops it.
struct Limit<'a> {
    within: Duration,
    cancel: &'a AtomicBool,
}

/// [`StepImages::inspect`] through the engine's socket: `Ok(None)` when the base image does not
/// exist; an error when the engine cannot be asked (the caller falls back to the CLI), of kind
/// `TimedOut` when it did not answer within the limit, `Interrupted` when `cancel` stopped it.
fn engine_inspect(socket: &Path, base: &str, tag: &str, limit: &Limit) -> std::io::Result<Option<(String, Option<String>)>> {
    let started = Instant::now();
    let Some(base) = engine_image(socket, base, started, limit)? else { return Ok(None) };
    let id = |image: &serde_json::Value| image.get("Id").and_then(serde_json::Value::as_str).map(str::to_string);
    let base_id = id(&base).ok_or_else(|| std::io::Error::other("the engine gave an image without an Id"))?;
    let built_from = engine_image(socket, tag, started, limit)?
        .map(|image| image.pointer("/Config/Labels").and_then(|l| l.get(BASE_LABEL)).and_then(serde_json::Value::as_str).unwrap_or_default().to_string());
    Ok(Some((base_id, built_from)))
}

/// `GET /images/<name>/json` of the Engine API over its Unix socket, as HTTP/1.0 (the engine
/// closes the connection after the answer, so the body is whatever follows the headers):
/// `Ok(None)` on 404, the parsed document on 200, an error otherwise. It must be answered by
/// `started + limit.within` (else `TimedOut`); `limit.cancel` is looked at while waiting (then
/// `Interrupted`).
fn engine_image(socket: &Path, name: &str, started: Instant, limit: &Limit) -> std::io::Result<Option<serde_json::Value>> {
    use std::io::{Read, Write};
    let mut path = String::new();
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~:/@".contains(&byte) {
            path.push(byte as char);
        } else {
            path.push_str(&format!("%{byte:02X}"));
        }
    }
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_write_timeout(Some(limit.within))?;
    stream.write_all(format!("GET /images/{path}/json HTTP/1.0\r\nHost: docker\r\n\r\n").as_bytes())?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if limit.cancel.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::from(std::io::ErrorKind::Interrupted));
        }
        let left = limit.within.checked_sub(started.elapsed()).filter(|d| !d.is_zero()).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::TimedOut))?;
        // Woken at least every CANCEL_CHECK to look at the cancel flag.
        stream.set_read_timeout(Some(left.min(crate::backend::CANCEL_CHECK)))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted) => continue,
            Err(e) => return Err(e),
        }
    }
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| std::io::Error::other("no HTTP header end in the engine's answer"))?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse::<u16>().ok()).ok_or_else(|| std::io::Error::other("no HTTP status in the engine's answer"))?;
    match status {
        200 => serde_json::from_slice(&answer[split + 4..]).map(Some).map_err(std::io::Error::other),
        404 => Ok(None),
        other => Err(std::io::Error::other(format!("the engine answered HTTP {other}"))),
    }
}

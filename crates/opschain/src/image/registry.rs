//! Step images through a registry (`--registry HOST:PORT`): the controller pushes each step image
//! it builds there, and steps run the registry's copy, so that an engine on another machine (a
//! Kubernetes node, a remote Docker engine) pulls the same image the controller built.
//!
//! A step image is pushed as `HOST:PORT/<local tag>` (`HOST:PORT/opschain-step:<key>`), and the
//! digest the registry gave it is recorded in the controller's state directory ([`Pushed`], one
//! file per registry and key), with the id of the base image it was built from. Steps run it by
//! that digest (`HOST:PORT/opschain-step@sha256:…`), never by the tag: anyone who can push to the
//! registry can move a tag, and an image pushed by someone else under the step image's name must
//! not run with the step's secrets. Before building, the controller looks for its own record of the
//! key: when the record's base image is the current one, the image is pulled by its digest (or
//! found locally under it) and its base image label checked again; otherwise (no record, another
//! base image, the digest gone from the registry) it builds, or reuses a checked local image, and
//! pushes. A controller with another state directory has no record, so it builds and pushes
//! rather than trust what it finds under the name. The engine talks to the registry (`docker
//! pull` and `docker push`), with the engine's credentials (`docker login HOST:PORT`); a registry
//! on a loopback address may be plain HTTP, any other needs TLS or the engine's
//! `insecure-registries`.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use crate::backend::engine::{self, EngineError, EngineTimeouts};
use crate::backend::{Bound, LogSink};
use crate::image::docker::Docker;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The `--registry` value is not `HOST[:PORT]`.
    #[error("invalid registry {0:?}: give HOST:PORT (no scheme, no path), e.g. 127.0.0.1:5000")]
    Invalid(String),
    /// The engine did not answer in time, the call was stopped by a cancel, or the docker CLI
    /// cannot be run.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The record of a pushed image cannot be read or written.
    #[error("cannot use the record of a pushed image {}", path.display())]
    Record {
        /// The record file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The engine gave no digest of this registry for an image just pushed.
    #[error("docker push {reference} gave no digest of the registry's copy (RepoDigests: {found})")]
    NoDigest {
        /// The image reference pushed.
        reference: String,
        /// The image's repo digests, as the engine gave them.
        found: String,
    },
    /// `docker tag`, `push` or `pull` failed for another reason than the image being absent.
    #[error("docker {op} {reference} failed: {stderr}")]
    Docker {
        /// The operation.
        op: &'static str,
        /// The image reference.
        reference: String,
        /// Its stderr.
        stderr: String,
    },
}

/// A registry that step images go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registry {
    host: String,
}

impl std::str::FromStr for Registry {
    type Err = RegistryError;

    /// `HOST` or `HOST:PORT`: a name or address of letters, digits, `.`, `-` (an IPv6 address in
    /// brackets), and a port of digits.
    fn from_str(s: &str) -> Result<Registry, RegistryError> {
        let invalid = || RegistryError::Invalid(s.to_string());
        let (host, port) = match s.rsplit_once(':') {
            Some((host, _)) if !host.ends_with(']') && host.contains(':') => (s, None), // bare IPv6: refused below
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        };
        let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            !inner.is_empty() && inner.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        } else {
            !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-') && !host.starts_with(['-', '.'])
        };
        let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.chars().all(|c| c.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|n| n > 0));
        if host_ok && port_ok {
            Ok(Registry { host: s.to_string() })
        } else {
            Err(invalid())
        }
    }
}

impl std::fmt::Display for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.host)
    }
}

impl Registry {
    /// The reference of a local image `tag` (`name:tag`) in this registry.
    pub fn reference(&self, tag: &str) -> String {
        format!("{}/{tag}", self.host)
    }
    /// The reference of the image `digest` (`sha256:…`) of the repository of the local image
    /// `tag` (`name:tag`) in this registry: `HOST:PORT/name@digest`.
    pub fn digest_reference(&self, tag: &str, digest: &str) -> String {
        let name = tag.split_once(':').map_or(tag, |(name, _)| name);
        format!("{}/{name}@{digest}", self.host)
    }

    /// The directory of this registry's records under `records` (its host with `:`, `[` and `]`
    /// made `_`, so that every registry has a plain directory name of its own).
    fn records_dir(&self, records: &Path) -> PathBuf {
        records.join(self.host.replace([':', '[', ']'], "_"))
    }
}

/// What the controller recorded when it pushed a step image: the registry's digest of it and the
/// id of the base image it was built from. Kept as `<records>/<registry>/<key>`, one line
/// `<digest> <base image id>`, mode 0600, replaced whole (written aside and renamed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The registry's digest of the image (`sha256:…`).
    pub digest: String,
    /// The id of the base image it was built from.
    pub base_image_id: String,
}

impl Pushed {
    /// The record of `key` pushed to `registry`, kept under `records`; `None` when there is none
    /// (or it is not one this controller wrote: a record it cannot read is not trusted).
    pub fn read(records: &Path, registry: &Registry, key: &str) -> Result<Option<Pushed>, RegistryError> {
        let path = registry.records_dir(records).join(key);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(RegistryError::Record { path, source }),
        };
        let mut words = text.split_whitespace();
        Ok(match (words.next(), words.next(), words.next()) {
            (Some(digest), Some(base), None) if is_digest(digest) => Some(Pushed { digest: digest.to_string(), base_image_id: base.to_string() }),
            _ => None,
        })
    }

    /// Records this push of `key` to `registry` under `records`.
    pub fn write(&self, records: &Path, registry: &Registry, key: &str) -> Result<(), RegistryError> {
        let dir = registry.records_dir(records);
        let fail = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RegistryError::Record { path, source }
        };
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), crate::private::DIR_MODE).create(&dir).map_err(fail(&dir))?;
        let path = dir.join(key);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let tmp = dir.join(format!(".{key}.{}-{nanos}", std::process::id()));
        crate::private::write_private(&tmp, format!("{} {}\n", self.digest, self.base_image_id).as_bytes()).map_err(fail(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(fail(&path)).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }
}

/// Whether `s` is an image digest as the registry gives it: `sha256:` and 64 lower-case hex digits.
fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// Runs `docker ARGS` quietly within `bound`, stopped by `cancel`; its stderr on failure.
fn docker(docker: &Docker, args: &[&str], bound: &Bound, cancel: &AtomicBool) -> Result<Result<(), String>, RegistryError> {
    let answer = engine::call(docker, args, bound, cancel)?;
    Ok(if answer.success { Ok(()) } else { Err(answer.stderr.trim().to_string()) })
}

/// Whether the engine's answer to a pull says the registry is reachable but has no such image
/// (rather than that the registry or the engine failed).
fn is_absent(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("manifest unknown") || s.contains("not found") || s.contains("name unknown")
}

/// Makes the image `reference` available to the engine without building it: true when it is
/// there already (pushed or pulled before) or the registry has it (pulled now, the time logged
/// to `sink`); false when the registry has no such image. An unreachable registry is an error: a
/// build could not be pushed there either. Each engine call is bounded by `timeouts` and stopped
/// by `cancel`.
pub fn fetch(docker_bin: &Docker, reference: &str, sink: &dyn LogSink, timeouts: &EngineTimeouts, cancel: &AtomicBool) -> Result<bool, RegistryError> {
    let inspect = ["image", "inspect", "--format", "{{.Id}}", reference];
    if docker(docker_bin, &inspect, &timeouts.call_bound(format!("docker image inspect {reference}")), cancel)?.is_ok() {
        return Ok(true);
    }
    let started = Instant::now();
    match docker(docker_bin, &["pull", "--quiet", reference], &timeouts.transfer_bound(format!("docker pull {reference}")), cancel)? {
        Ok(()) => {
            sink.line("stderr", &format!("opschain: pulled the step image {reference} in {:.3}s", started.elapsed().as_secs_f64()));
            Ok(true)
        }
        Err(stderr) if is_absent(&stderr) => Ok(false),
        Err(stderr) => Err(RegistryError::Docker { op: "pull", reference: reference.to_string(), stderr }),
    }
}

/// Tags the local image `local` as `registry`'s reference, pushes it and returns the registry's
/// digest of it (the engine's `RepoDigests` entry for the registry's repository, set by the push).
/// The push's time is logged to `sink`. Each engine call is bounded by `timeouts` and stopped by
/// `cancel`.
pub fn publish(docker_bin: &Docker, local: &str, registry: &Registry, sink: &dyn LogSink, timeouts: &EngineTimeouts, cancel: &AtomicBool) -> Result<String, RegistryError> {
    let reference = registry.reference(local);
    let tag = timeouts.call_bound(format!("docker tag {local} {reference}"));
    docker(docker_bin, &["tag", local, &reference], &tag, cancel)?.map_err(|stderr| RegistryError::Docker { op: "tag", reference: reference.clone(), stderr })?;
    let started = Instant::now();
    let push = timeouts.transfer_bound(format!("docker push {reference}"));
    docker(docker_bin, &["push", "--quiet", &reference], &push, cancel)?.map_err(|stderr| RegistryError::Docker { op: "push", reference: reference.clone(), stderr })?;
    sink.line("stderr", &format!("opschain: pushed the step image {reference} in {:.3}s", started.elapsed().as_secs_f64()));
    let format = ["image", "inspect", "--format", "{{range .RepoDigests}}{{println .}}{{end}}", &reference];
    let answer = engine::call(docker_bin, &format, &timeouts.call_bound(format!("docker image inspect {reference}")), cancel)?;
    if !answer.success {
        return Err(RegistryError::Docker { op: "image inspect", reference, stderr: answer.stderr.trim().to_string() });
    }
    let repository = registry.digest_reference(local, "");
    answer
        .stdout
        .lines()
        .filter_map(|line| line.trim().strip_prefix(repository.as_str()))
        .find(|digest| is_digest(digest))
        .map(str::to_string)
        .ok_or_else(|| RegistryError::NoDigest { reference, found: answer.stdout.split_whitespace().collect::<Vec<_>>().join(", ") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names() {
        for good in ["127.0.0.1:5000", "registry.example.com", "reg-1.internal:443", "[::1]:5000", "localhost:5000"] {
            let r: Registry = good.parse().unwrap_or_else(|e| panic!("{good}: {e}"));
            assert_eq!(r.reference("opschain-step:abc"), format!("{good}/opschain-step:abc"));
        }
        for bad in ["", "http://127.0.0.1:5000", "127.0.0.1:5000/path", "host:", "host:0", "host:99999", "host:5x", "::1", "-host", "ho st"] {
            assert!(bad.parse::<Registry>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_absent_image_is_told_from_a_failure() {
        assert!(is_absent("Error response from daemon: manifest for 127.0.0.1:5/x:y not found: manifest unknown: manifest unknown"));
        assert!(!is_absent("Error response from daemon: Get \"http://127.0.0.1:5/v2/\": dial tcp 127.0.0.1:5: connect: connection refused"));
    }

    #[test]
    fn digest_references_and_push_records() {
        let registry: Registry = "127.0.0.1:5000".parse().unwrap();
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(registry.digest_reference("opschain-step:k1", &digest), format!("127.0.0.1:5000/opschain-step@{digest}"));
        let records = tempfile::tempdir().unwrap();
        assert_eq!(Pushed::read(records.path(), &registry, "k1").unwrap(), None);
        let pushed = Pushed { digest: digest.clone(), base_image_id: "sha256:base".into() };
        pushed.write(records.path(), &registry, "k1").unwrap();
        assert_eq!(Pushed::read(records.path(), &registry, "k1").unwrap(), Some(pushed));
        let file = records.path().join("127.0.0.1_5000/k1");
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions()) & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(file.parent().unwrap()).unwrap().count(), 1, "no temporary file left");
        // Another registry, or a record that is not a digest and a base id, is no record.
        assert_eq!(Pushed::read(records.path(), &"127.0.0.1:5001".parse().unwrap(), "k1").unwrap(), None);
        std::fs::write(&file, "latest sha256:base\n").unwrap();
        assert_eq!(Pushed::read(records.path(), &registry, "k1").unwrap(), None);
    }
}

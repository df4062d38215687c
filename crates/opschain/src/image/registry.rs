//! Step images through a registry (`--registry HOST:PORT`): the controller pushes each step image
//! it builds there, and steps run the registry's copy, so that an engine on another machine (a
//! Kubernetes node, a remote Docker engine) pulls the same image the controller built.
//!
//! A step image's reference in the registry is `HOST:PORT/<local tag>`
//! (`HOST:PORT/opschain-step:<commit>-<base>-<version>`): the local tag already names every input
//! of the build, so one name means one image wherever it is pulled. Before building, the
//! controller asks for the image: present locally under that reference (pushed or pulled earlier),
//! else pulled from the registry, else built and pushed. The engine talks to the registry (`docker
//! pull` and `docker push`), with the engine's credentials (`docker login HOST:PORT`); a registry
//! on a loopback address may be plain HTTP, any other needs TLS or the engine's
//! `insecure-registries`.

use std::process::Stdio;
use std::time::Instant;

use crate::backend::LogSink;
use crate::image::docker::Docker;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The `--registry` value is not `HOST[:PORT]`.
    #[error("invalid registry {0:?}: give HOST:PORT (no scheme, no path), e.g. 127.0.0.1:5000")]
    Invalid(String),
    /// The docker CLI cannot be run.
    #[error("cannot run {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
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
}

/// Runs `docker ARGS` quietly; its stderr on failure.
fn docker(docker: &Docker, args: &[&str]) -> Result<Result<(), String>, RegistryError> {
    let out = docker.command().args(args).stdin(Stdio::null()).output().map_err(|source| RegistryError::Spawn { program: docker.program.display().to_string(), source })?;
    Ok(if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).trim().to_string()) })
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
/// build could not be pushed there either.
pub fn fetch(docker_bin: &Docker, reference: &str, sink: &dyn LogSink) -> Result<bool, RegistryError> {
    if docker(docker_bin, &["image", "inspect", "--format", "{{.Id}}", reference])?.is_ok() {
        return Ok(true);
    }
    let started = Instant::now();
    match docker(docker_bin, &["pull", "--quiet", reference])? {
        Ok(()) => {
            sink.line("stderr", &format!("opschain: pulled the step image {reference} in {:.3}s", started.elapsed().as_secs_f64()));
            Ok(true)
        }
        Err(stderr) if is_absent(&stderr) => Ok(false),
        Err(stderr) => Err(RegistryError::Docker { op: "pull", reference: reference.to_string(), stderr }),
    }
}

/// Tags the local image `local` as `registry`'s reference and pushes it; returns the reference.
/// The push's time is logged to `sink`.
pub fn publish(docker_bin: &Docker, local: &str, registry: &Registry, sink: &dyn LogSink) -> Result<String, RegistryError> {
    let reference = registry.reference(local);
    docker(docker_bin, &["tag", local, &reference])?.map_err(|stderr| RegistryError::Docker { op: "tag", reference: reference.clone(), stderr })?;
    let started = Instant::now();
    docker(docker_bin, &["push", "--quiet", &reference])?.map_err(|stderr| RegistryError::Docker { op: "push", reference: reference.clone(), stderr })?;
    sink.line("stderr", &format!("opschain: pushed the step image {reference} in {:.3}s", started.elapsed().as_secs_f64()));
    Ok(reference)
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
}

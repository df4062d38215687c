//! The files the controller writes into and reads from a step's sandbox, against a hostile
//! commit: a committed `.opschain/step_context.json` that links to a host file, a `.opschain`
//! that links to a host directory, a `step_result.json` that links to a FIFO or to `/dev/zero`,
//! and a result larger than `--max-result-bytes`. Each must be a clear step error with the host
//! untouched, the controller neither hanging nor exhausting its memory. On the process backend
//! and, where a Docker engine runs (`--ignored`), on the Docker backend with the bind mount.

use crate::common::git;
use crate::docker_base::{build_image_as, engine_runs, DOCKER};

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// An action the agent runs, and one in a separate file that the agent refuses before it writes
/// any result (an unknown key), so that whatever the commit put at `step_result.json` is what the
/// controller finds there.
const ACTIONS: &str = "[actions.ok]\nrun = \"echo ran ok\"\n";
const REFUSED_ACTIONS: &str = "[actions.ok]\nrun = \"echo ran ok\"\nbogus = 1\n";

/// The host side of the tests: a file and a directory outside every sandbox, and a FIFO.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("host-file"), "host data\n").unwrap();
        std::fs::create_dir(dir.path().join("host-dir")).unwrap();
        std::fs::write(dir.path().join("host-dir/actions.toml"), ACTIONS).unwrap();
        nix::unistd::mkfifo(&dir.path().join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        Host { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Nothing was written to the host's file or directory.
    fn assert_untouched(&self) {
        assert_eq!(std::fs::read_to_string(self.path("host-file")).unwrap(), "host data\n");
        let names: Vec<_> = std::fs::read_dir(self.path("host-dir")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["actions.toml"], "nothing written in the linked directory");
    }
}

/// One hostile commit: the repository's `.opschain` as the case lays it out.
#[derive(Clone, Copy, Debug)]
enum Case {
    ContextLinksToHostFile,
    FolderLinksToHostDir,
    ResultLinksToFifo,
    ResultLinksToDevZero,
    ResultLargerThanLimit,
}

impl Case {
    const ALL: [Case; 5] = [Case::ContextLinksToHostFile, Case::FolderLinksToHostDir, Case::ResultLinksToFifo, Case::ResultLinksToDevZero, Case::ResultLargerThanLimit];

    /// A repository (under `dir`) with this case committed.
    fn repo(self, dir: &Path, host: &Host) -> PathBuf {
        let repo = dir.join(format!("{self:?}"));
        let folder = repo.join(".opschain");
        std::fs::create_dir_all(&repo).unwrap();
        let link = |target: &Path, at: &str| std::os::unix::fs::symlink(target, repo.join(at)).unwrap();
        if let Case::FolderLinksToHostDir = self {
            link(&host.path("host-dir"), ".opschain");
        } else {
            std::fs::create_dir(&folder).unwrap();
        }
        match self {
            Case::ContextLinksToHostFile => {
                std::fs::write(folder.join("actions.toml"), ACTIONS).unwrap();
                link(&host.path("host-file"), ".opschain/step_context.json");
            }
            Case::FolderLinksToHostDir => {}
            Case::ResultLinksToFifo => {
                std::fs::write(folder.join("actions.toml"), REFUSED_ACTIONS).unwrap();
                link(&host.path("fifo"), ".opschain/step_result.json");
            }
            Case::ResultLinksToDevZero => {
                std::fs::write(folder.join("actions.toml"), REFUSED_ACTIONS).unwrap();
                link(Path::new("/dev/zero"), ".opschain/step_result.json");
            }
            Case::ResultLargerThanLimit => std::fs::write(folder.join("actions.toml"), ACTIONS).unwrap(),
        }
        git(&repo, &["init", "-q"]);
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", "hostile"]);
        repo
    }

    /// What the step's error message must say.
    fn says(self) -> &'static str {
        match self {
            Case::ContextLinksToHostFile => ".opschain/step_context.json is a symbolic link, not a regular file",
            Case::FolderLinksToHostDir => ".opschain is a symbolic link or not a directory",
            Case::ResultLinksToFifo | Case::ResultLinksToDevZero => ".opschain/step_result.json is a symbolic link, not a regular file",
            Case::ResultLargerThanLimit => ".opschain/step_result.json is larger than 200 bytes",
        }
    }
}

/// Runs `opschain change create` on `repo` with `extra` arguments, in `state`, with its address
/// space bounded (4 GiB: reading `/dev/zero` whole fails instead of taking the machine's memory)
/// and killed after 60 s; returns its exit status and output, and how long it took.
fn change_create(state: &Path, repo: &Path, extra: &[&str]) -> (Option<i32>, String, Duration) {
    crate::common::make_target(state, "p", "e");
    let started = Instant::now();
    let mut command = Command::new(env!("CARGO_BIN_EXE_opschain"));
    command
        .env("OPSCHAIN_STATE_DIR", state)
        .env("OPSCHAIN_RUNNER_BIN", crate::common::runner_bin())
        .env("OPSCHAIN_MAX_RESULT_BYTES", "200")
        .env_remove("OPSCHAIN_REPO_FOLDER")
        .env_remove("OPSCHAIN_BACKEND")
        .args(["change", "create", "-v", "-p", "p", "-e", "e", "-a", "ok", "--repo"])
        .arg(repo)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 4 << 30, rlim_max: 4 << 30 };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let readers = [std::thread::spawn(move || std::io::read_to_string(stdout).unwrap()), std::thread::spawn(move || std::io::read_to_string(stderr).unwrap())];
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = readers.map(|r| r.join().unwrap()).join("\n");
    (status, output, started.elapsed())
}

/// Runs every case with `extra` arguments and checks each gives a clear step error, quickly,
/// with the host untouched.
fn every_case_is_a_clear_step_error(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new();
    for case in Case::ALL {
        let repo = case.repo(dir.path(), &host);
        let state = dir.path().join(format!("state-{case:?}"));
        let (status, output, took) = change_create(&state, &repo, extra);
        assert_eq!(status, Some(1), "{case:?}: the change ends in error (not hung, not killed): {output}");
        assert!(output.contains(case.says()), "{case:?}: the error says what was refused: {output}");
        assert!(took < Duration::from_secs(50), "{case:?}: took {took:?}");
        host.assert_untouched();
        let sandboxes = state.join("sandboxes");
        let left: Vec<_> = std::fs::read_dir(&sandboxes)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("change-"))
                    .flat_map(|p| std::fs::read_dir(p).unwrap().flatten().map(|e| e.file_name()))
                    .filter(|n| n.to_string_lossy().starts_with("step-"))
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "{case:?}: the step's sandbox was removed: {left:?}");
    }
    // The same repository without the hostile parts runs: the limits refuse nothing ordinary.
    let plain = dir.path().join("plain");
    std::fs::create_dir_all(plain.join(".opschain")).unwrap();
    std::fs::write(plain.join(".opschain/actions.toml"), ACTIONS).unwrap();
    git(&plain, &["init", "-q"]);
    git(&plain, &["add", "-A"]);
    git(&plain, &["commit", "-q", "-m", "plain"]);
    let (status, output, _) = change_create(&dir.path().join("state-plain"), &plain, &[&["--max-result-bytes", "1000000"][..], extra].concat());
    assert_eq!(status, Some(0), "{output}");
    assert!(output.contains("ran ok"), "{output}");
}

#[test]
fn process_backend_follows_no_link_reads_no_fifo_and_caps_the_result() {
    every_case_is_a_clear_step_error(&[]);
}

/// Images removed when dropped, also when a test fails.
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for tag in &self.0 {
            let _ = Command::new(DOCKER).args(["rmi", "--force", tag]).output();
        }
    }
}

#[test]
#[ignore = "needs a Docker engine: cargo test -p opschain --test it sandbox_files:: -- --ignored"]
fn docker_backend_follows_no_link_reads_no_fifo_and_caps_the_result() {
    crate::common::required("a Docker engine", engine_runs());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let base = format!("fix-sandbox-files-base:{}-{nanos}", std::process::id());
    let _images = Images(vec![base.clone()]);
    build_image_as(crate::common::runner_bin(), &base, "sandbox-files");
    every_case_is_a_clear_step_error(&["--backend", "docker", "--docker-bin", DOCKER, "--docker-base-image", &base]);
    // The step images built from this base (their tags name it by key): removed with it.
    let out = Command::new(DOCKER).args(["images", "--filter", "label=org.opschain.base-image-id", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]).output().unwrap();
    let base_id = String::from_utf8_lossy(&Command::new(DOCKER).args(["image", "inspect", "--format", "{{.Id}}", &base]).output().unwrap().stdout).trim().to_string();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let tag = line.split_whitespace().next().unwrap_or_default();
        let label = Command::new(DOCKER).args(["image", "inspect", "--format", "{{index .Config.Labels \"org.opschain.base-image-id\"}}", tag]).output().unwrap();
        if String::from_utf8_lossy(&label.stdout).trim() == base_id {
            let _ = Command::new(DOCKER).args(["rmi", "--force", tag]).output();
        }
    }
}

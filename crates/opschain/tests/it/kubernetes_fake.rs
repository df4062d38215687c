//! The Kubernetes backend's calls against a stand-in API server (no cluster can be had here): a
//! small HTTP/1.1 server on loopback that answers the calls a step makes (create the Job, create
//! the Secret, resume the Job, list the pods, follow the log, read the pod, delete the Job) the
//! way an API server does, and plays the kubelet: when the log is asked for, it runs the real
//! agent with the Job's container arguments and environment, the Secret's data as the mounted
//! file, and streams the agent's stdout and stderr, merged, as the log; deleting the Job sends
//! the agent SIGTERM. What it checks: the sequence of calls and their bodies as the API server
//! gets them, the context reaching the agent through the Secret, the result coming back through
//! the log, and a cancel running the agent's grace ladder. What it cannot check: a real API
//! server's validation, scheduling, image pulls, a real kubelet (scripts/k8s-acceptance.sh does,
//! on a cluster).

use crate::common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use opschain::backend::docker::{DockerBackend, DockerConfig};
use opschain::backend::kubernetes::{KubernetesBackend, KubernetesConfig, CONTEXT_MOUNT};
use opschain::backend::{ContextDocument, LogSink, StepJob};

/// One call the fake API server received.
#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    query: String,
    body: Value,
}

/// The fake cluster's state.
#[derive(Default)]
struct Cluster {
    calls: Vec<Call>,
    job: Option<Value>,
    secret: Option<Value>,
    /// How many times the pods were listed (the first answer: still creating).
    lists: usize,
    /// The agent playing the container, once started.
    agent: Option<Child>,
    /// Its exit code, once it ended.
    exit: Option<i32>,
    deleted: bool,
    /// The container's log as the kubelet keeps it: each line (with its newline) and its time.
    log: Vec<(Timestamp, String)>,
    /// Whether the log has ended (the container exited; `exit` is set first).
    log_done: bool,
    /// For the n-th request of the log, after how many lines the connection is cut, in the middle
    /// of the next line, as a broken network would (none: the stream is served whole).
    cut_after: Vec<usize>,
    /// How many times the log was asked for.
    log_requests: usize,
}

struct FakeApi {
    port: u16,
    state: Arc<Mutex<Cluster>>,
    repo: PathBuf,
    _dir: tempfile::TempDir,
}

impl FakeApi {
    /// A fake API server whose "container" runs the agent in a copy of `repo`.
    fn start(repo: &Path) -> FakeApi {
        // The agent the kubelet stand-in runs, built now (when missing) rather than inside a
        // request, where its build time would count against the tests' deadlines.
        common::runner_bin();
        let dir = tempfile::tempdir().unwrap();
        common::copy_tree(repo, &dir.path().join("repo"));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(Cluster::default()));
        let root = dir.path().to_path_buf();
        std::thread::spawn({
            let state = state.clone();
            move || {
                for conn in listener.incoming().flatten() {
                    let (state, root) = (state.clone(), root.clone());
                    std::thread::spawn(move || serve(conn, &state, &root));
                }
            }
        });
        FakeApi { port, state, repo: dir.path().join("repo"), _dir: dir }
    }

    fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }
}

/// Reads one request: method, path, query, JSON body (null when empty).
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Call> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        if header == "\r\n" || header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let (path, query) = target.split_once('?').map_or((target.clone(), String::new()), |(p, q)| (p.to_string(), q.to_string()));
    let body = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap() };
    Some(Call { method, path, query, body })
}

fn respond(out: &mut TcpStream, status: u16, body: &Value) {
    let text = body.to_string();
    write!(out, "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}", text.len()).unwrap();
}

fn pod(name: &str, state: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "steps"},
           "status": {"phase": "Running", "containerStatuses": [{"name": "step", "image": "img", "imageID": "", "ready": true, "restartCount": 0, "state": state}]}})
}

/// Serves one connection's requests (HTTP/1.1 keep-alive) as an API server and kubelet would.
fn serve(conn: TcpStream, state: &Arc<Mutex<Cluster>>, root: &Path) {
    let mut out = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    while let Some(call) = read_request(&mut reader) {
        state.lock().unwrap().calls.push(call.clone());
        let m = call.method.as_str();
        let p = call.path.as_str();
        if m == "POST" && p == "/apis/batch/v1/namespaces/steps/jobs" {
            let mut job = call.body.clone();
            job["metadata"]["uid"] = json!("job-uid-1");
            state.lock().unwrap().job = Some(job.clone());
            respond(&mut out, 201, &job);
        } else if m == "POST" && p == "/api/v1/namespaces/steps/secrets" {
            state.lock().unwrap().secret = Some(call.body.clone());
            respond(&mut out, 201, &call.body);
        } else if m == "PATCH" && p.starts_with("/apis/batch/v1/namespaces/steps/jobs/") {
            let mut s = state.lock().unwrap();
            let job = s.job.as_mut().unwrap();
            job["spec"]["suspend"] = call.body["spec"]["suspend"].clone();
            respond(&mut out, 200, &job.clone());
        } else if m == "GET" && p == "/api/v1/namespaces/steps/pods" {
            let mut s = state.lock().unwrap();
            s.lists += 1;
            // Like a kubelet: nothing before the Job is resumed, then one pod creating, then running.
            let resumed = s.job.as_ref().is_some_and(|j| j["spec"]["suspend"] == json!(false));
            let items = match (resumed, s.lists) {
                (false, _) => vec![],
                (true, 1) => vec![pod("step-pod", json!({"waiting": {"reason": "ContainerCreating"}}))],
                _ => vec![pod("step-pod", json!({"running": {}}))],
            };
            respond(&mut out, 200, &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}));
        } else if m == "GET" && p == "/api/v1/namespaces/steps/pods/step-pod/log" {
            stream_log(&mut out, &call.query, state, root);
        } else if m == "GET" && p == "/api/v1/namespaces/steps/pods/step-pod" {
            let s = state.lock().unwrap();
            match (s.deleted, s.exit) {
                // Foreground deletion: the pod is gone once its container ended.
                (true, Some(_)) => respond(&mut out, 404, &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})),
                (_, Some(code)) => respond(&mut out, 200, &pod("step-pod", json!({"terminated": {"exitCode": code}}))),
                (_, None) => respond(&mut out, 200, &pod("step-pod", json!({"running": {}}))),
            }
        } else if m == "GET" && p.starts_with("/apis/batch/v1/namespaces/steps/jobs/") {
            let job = state.lock().unwrap().job.clone().unwrap();
            respond(&mut out, 200, &job);
        } else if m == "DELETE" && p.starts_with("/apis/batch/v1/namespaces/steps/jobs/") {
            let mut s = state.lock().unwrap();
            s.deleted = true;
            // The kubelet stops the container: SIGTERM to its PID 1.
            if let Some(agent) = &s.agent {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.id() as i32), nix::sys::signal::Signal::SIGTERM);
            }
            let job = s.job.clone().unwrap();
            respond(&mut out, 200, &job);
        } else {
            respond(&mut out, 404, &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}));
        }
    }
}

/// Starts the "container" once: writes the Secret's data where the Job mounts it, runs the agent
/// with the container's args and env, and keeps its merged output as the kubelet keeps a log,
/// each line stamped with the time it came; at its end, the exit code, then the log's end.
fn start_container(state: &Arc<Mutex<Cluster>>, root: &Path) {
    let (job, secret) = {
        let s = state.lock().unwrap();
        if s.agent.is_some() {
            return;
        }
        (s.job.clone().unwrap(), s.secret.clone().unwrap())
    };
    let volume = root.join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    for (key, data) in secret["data"].as_object().unwrap() {
        std::fs::write(volume.join(key), base64::engine::general_purpose::STANDARD.decode(data.as_str().unwrap()).unwrap()).unwrap();
    }
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().replace(CONTEXT_MOUNT, volume.to_str().unwrap())).collect();
    let (read, write) = nix::unistd::pipe().unwrap();
    let mut agent = Command::new(crate::common::runner_bin());
    agent
        .args(&args)
        .env("OPSCHAIN_REPO_DIR", root.join("repo"))
        .env("OPSCHAIN_FILES_ROOT", root.join("files"))
        .env("PATH", format!("{}:/usr/bin:/bin", common::bin_dir().display()));
    for var in container["env"].as_array().unwrap() {
        agent.env(var["name"].as_str().unwrap(), var["value"].as_str().unwrap());
    }
    let child = agent.stdin(Stdio::null()).stdout(Stdio::from(write.try_clone().unwrap())).stderr(Stdio::from(write)).spawn().unwrap();
    drop(agent);
    state.lock().unwrap().agent = Some(child);
    let state = state.clone();
    std::thread::spawn(move || {
        let mut pipe = BufReader::new(std::fs::File::from(read));
        loop {
            let mut line = Vec::new();
            if pipe.read_until(b'\n', &mut line).unwrap() == 0 {
                break;
            }
            state.lock().unwrap().log.push((Timestamp::now(), String::from_utf8(line).unwrap()));
        }
        let mut s = state.lock().unwrap();
        let status = s.agent.as_mut().unwrap().wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        s.exit = Some(status.code().unwrap_or_else(|| 128 + status.signal().unwrap()));
        s.log_done = true;
    });
}

/// The value of `name` in a query string, percent-decoded.
fn query_value(query: &str, name: &str) -> Option<String> {
    let raw = query.split('&').find_map(|pair| pair.strip_prefix(&format!("{name}=")))?;
    let mut out = Vec::new();
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(&raw[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(String::from_utf8(out).unwrap())
}

/// Plays the kubelet for `GET .../log?follow=true`: starts the container on the first request,
/// then sends its log as a chunked body, from `sinceTime` (to the second, as the API takes it)
/// when asked, each line stamped when `timestamps=true`, following it until it ends; or cuts the
/// connection in the middle of a line when the test asks for it.
fn stream_log(out: &mut TcpStream, query: &str, state: &Arc<Mutex<Cluster>>, root: &Path) {
    start_container(state, root);
    let since: Option<Timestamp> = query_value(query, "sinceTime").map(|t| t.parse().unwrap());
    let stamped = query_value(query, "timestamps").as_deref() == Some("true");
    let cut = {
        let mut s = state.lock().unwrap();
        s.log_requests += 1;
        s.cut_after.get(s.log_requests - 1).copied()
    };
    write!(out, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
    let (mut next, mut sent) = (0, 0);
    loop {
        let (lines, done) = {
            let s = state.lock().unwrap();
            let lines: Vec<(Timestamp, String)> = s.log[next..].to_vec();
            next = s.log.len();
            (lines, s.log_done)
        };
        for (at, line) in lines {
            if since.is_some_and(|since| at < since) {
                continue;
            }
            let text = if stamped { format!("{at} {line}") } else { line };
            if cut == Some(sent) {
                // Half a line, then the connection goes: no end of the chunked body.
                let half = &text.as_bytes()[..text.len() / 2];
                write!(out, "{:x}\r\n", half.len()).unwrap();
                out.write_all(half).unwrap();
                out.write_all(b"\r\n").unwrap();
                let _ = out.shutdown(std::net::Shutdown::Both);
                return;
            }
            write!(out, "{:x}\r\n", text.len()).unwrap();
            out.write_all(text.as_bytes()).unwrap();
            out.write_all(b"\r\n").unwrap();
            sent += 1;
        }
        if done && next == state.lock().unwrap().log.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    out.write_all(b"0\r\n\r\n").unwrap();
}

#[derive(Default)]
struct Lines(Mutex<Vec<String>>);

impl LogSink for Lines {
    fn line(&self, _stream: &'static str, line: &str) {
        self.0.lock().unwrap().push(line.to_string());
    }
}

fn backend(api: &FakeApi) -> KubernetesBackend {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let client = {
        let _in_runtime = runtime.enter();
        let config = kube::Config::new(format!("http://127.0.0.1:{}", api.port).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    };
    let config = KubernetesConfig { namespace: "steps".into(), grace: Duration::from_secs(2), start_allowance: Duration::from_secs(20), ..KubernetesConfig::default() };
    // The image is given to `run_image`: the Docker side is not used.
    let docker = DockerConfig {
        docker: "/usr/bin/docker".into(),
        base_image: "unused".into(),
        grace: Duration::from_secs(2),
        transport: Default::default(),
        registry: None,
        max_result_bytes: 1 << 26,
        timeouts: Default::default(),
    };
    KubernetesBackend::with_client(config, DockerBackend::new(docker, ".opschain".into(), api.repo.join("sandboxes")), client, runtime)
}

/// A repository with the test's actions.
fn repo(dir: &Path) -> PathBuf {
    let repo = dir.join("src");
    std::fs::create_dir_all(repo.join(".opschain")).unwrap();
    std::fs::write(
        repo.join(".opschain/actions.toml"),
        r#"[actions.hello]
run = '''
echo "hello $GREETING"
echo "to stderr" >&2
opschain-runner property set --environment greeted "$GREETING"
head -c 100000 /dev/zero | tr '\0' x > big.txt
opschain-runner property set --project big "$(cat big.txt)"
'''

[actions.chatty]
run = '''
i=1
while [ $i -le 200 ]; do
  echo "line $i"
  if [ $((i % 20)) -eq 0 ]; then sleep 0.15; fi
  i=$((i + 1))
done
opschain-runner property set --environment lines 200
'''

[actions.slow]
run = '''
trap 'echo got TERM; opschain-runner property set --environment stopped yes; exit 143' TERM
echo started
while true; do sleep 0.1; done
'''
"#,
    )
    .unwrap();
    repo
}

fn job(action: &str) -> StepJob {
    StepJob {
        change_id: 3,
        step_id: 9,
        action: action.into(),
        repo: "/nonexistent".into(),
        git_rev: "HEAD".into(),
        commit: "0".repeat(40),
        context: ContextDocument::from_texts(
            json!({"step": {"action": action}, "environment": {"code": "dev"}}),
            "{}".into(),
            r#"{"opschain": {"env": {"GREETING": "from the secret"}}}"#.into(),
            None,
        ),
        build_secret_sets: Vec::new(),
    }
}

#[test]
fn a_step_runs_as_a_job_with_its_context_in_a_secret_and_its_result_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start(&repo(dir.path()));
    let backend = backend(&api);
    let lines = Lines::default();
    let cancel = AtomicBool::new(false);
    let out = backend.run_image(&job("hello"), "registry.test:5000/opschain-step:abc", &lines, &cancel).unwrap();
    let lines = lines.0.into_inner().unwrap();
    assert_eq!(out.exit_status, 0, "{lines:?} {:?}", out.result_error);
    let result = out.result.unwrap_or_else(|| panic!("{:?} {lines:?}", out.result_error));
    let env_diff = serde_json::to_value(&result.environment.properties_diff).unwrap();
    assert_eq!(env_diff, json!([{"op": "add", "path": "/greeted", "value": "from the secret"}]));
    let project_diff = serde_json::to_value(&result.project.properties_diff).unwrap();
    assert_eq!(project_diff[0]["value"].as_str().unwrap().len(), 100_000, "a result of several frame lines");
    // The log: the action's lines (stdout and stderr merged, as a pod log is), no frame line.
    assert!(lines.iter().any(|l| l.contains("hello from the secret")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("to stderr")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("opschain: Job steps/opschain-c3-s9-")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("waiting: ContainerCreating")), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("opschain-result")), "{lines:?}");

    // The calls, in order, as the API server got them.
    let calls = api.calls();
    let seq: Vec<String> = calls.iter().map(|c| format!("{} {}", c.method, c.path)).collect();
    let name = calls[0].body["metadata"]["name"].as_str().unwrap().to_string();
    assert_eq!(seq[0], "POST /apis/batch/v1/namespaces/steps/jobs");
    assert_eq!(seq[1], "POST /api/v1/namespaces/steps/secrets");
    assert_eq!(seq[2], format!("PATCH /apis/batch/v1/namespaces/steps/jobs/{name}"));
    let log_at = seq.iter().position(|s| s == "GET /api/v1/namespaces/steps/pods/step-pod/log").unwrap();
    assert!(seq[3..log_at].iter().all(|s| s == "GET /api/v1/namespaces/steps/pods"), "{seq:?}");
    assert!(log_at >= 5, "the pod was listed until its container ran: {seq:?}");
    assert_eq!(&seq[log_at + 1..], ["GET /api/v1/namespaces/steps/pods/step-pod".to_string(), format!("GET /apis/batch/v1/namespaces/steps/jobs/{name}")]);
    assert!(calls[3].query.contains(&format!("labelSelector=job-name%3D{name}")), "{:?}", calls[3].query);
    assert!(calls[log_at].query.contains("follow=true") && calls[log_at].query.contains("container=step"), "{:?}", calls[log_at].query);
    // The Job went in suspended, and was resumed only after its Secret existed.
    assert_eq!(calls[0].body["spec"]["suspend"], true);
    assert_eq!(calls[0].body["spec"]["backoffLimit"], 0);
    assert_eq!(calls[0].body["spec"]["template"]["spec"]["containers"][0]["image"], "registry.test:5000/opschain-step:abc");
    assert_eq!(calls[2].body, json!({"spec": {"suspend": false}}));
    // The Secret is owned by the Job's uid as the API server gave it, and holds the context.
    let secret = &calls[1].body;
    assert_eq!(secret["metadata"]["name"], name);
    assert_eq!(secret["metadata"]["ownerReferences"][0]["uid"], "job-uid-1");
    let data = base64::engine::general_purpose::STANDARD.decode(secret["data"]["step_context.json"].as_str().unwrap()).unwrap();
    let mut sent = Vec::new();
    job("hello").context.write_to(&mut sent).unwrap();
    assert_eq!(data, sent);
    assert_eq!(serde_json::from_slice::<Value>(&data).unwrap()["environment"]["properties"]["opschain"]["env"]["GREETING"], "from the secret");
    // The nonce reached the agent through the Job, and the result frame used it.
    let env: BTreeMap<String, String> = calls[0].body["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap().into(), v["value"].as_str().unwrap().into()))
        .collect();
    assert_eq!(env["OPSCHAIN_RESULT_FRAME"].len(), 24);
    assert!(name.ends_with(&env["OPSCHAIN_RESULT_FRAME"][..10]));
}

#[test]
fn cancel_deletes_the_job_and_the_agents_result_still_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start(&repo(dir.path()));
    let backend = Arc::new(backend(&api));
    let lines = Arc::new(Lines::default());
    let cancel = Arc::new(AtomicBool::new(false));
    let runner = std::thread::spawn({
        let (backend, lines, cancel) = (backend.clone(), lines.clone(), cancel.clone());
        move || backend.run_image(&job("slow"), "img", lines.as_ref(), &cancel).unwrap()
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !lines.0.lock().unwrap().iter().any(|l| l.contains("started")) {
        assert!(std::time::Instant::now() < deadline, "{:?}", lines.0.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    cancel.store(true, Ordering::SeqCst);
    let out = runner.join().unwrap();
    let lines = lines.0.lock().unwrap().clone();
    assert!(lines.iter().any(|l| l.contains("got TERM")), "{lines:?}");
    let result = out.result.unwrap_or_else(|| panic!("{:?} {lines:?}", out.result_error));
    assert_eq!(serde_json::to_value(&result.environment.properties_diff).unwrap(), json!([{"op": "add", "path": "/stopped", "value": "yes"}]));
    // The pod was gone when its status was asked: the status is the agent's own account.
    assert_eq!(out.exit_status, 143, "{lines:?}");
    let calls = api.calls();
    let delete = calls.iter().find(|c| c.method == "DELETE").expect("the Job was deleted");
    assert_eq!(delete.body["propagationPolicy"], "Foreground", "{delete:?}");
    assert!(api.state.lock().unwrap().exit.is_some());
}

#[test]
fn a_broken_log_stream_is_followed_again_from_its_last_line_and_the_step_ends_with_the_jobs_result() {
    let dir = tempfile::tempdir().unwrap();
    let api = FakeApi::start(&repo(dir.path()));
    // The first three streams of the log are cut in the middle of a line, after 30, 50 and 40
    // lines: the action prints 200 numbered lines over about 1.5 s, so that many lines share a
    // second (the API's `sinceTime` is to the second) and the cuts fall while it runs.
    api.state.lock().unwrap().cut_after = vec![30, 50, 40];
    let backend = backend(&api);
    let lines = Lines::default();
    let cancel = AtomicBool::new(false);
    let out = backend.run_image(&job("chatty"), "img", &lines, &cancel).unwrap();
    let lines = lines.0.into_inner().unwrap();
    assert_eq!(out.exit_status, 0, "{lines:?} {:?}", out.result_error);
    let result = out.result.unwrap_or_else(|| panic!("the result came through the log: {:?} {lines:?}", out.result_error));
    assert_eq!(serde_json::to_value(&result.environment.properties_diff).unwrap(), json!([{"op": "add", "path": "/lines", "value": "200"}]));
    // Every line once, in order: none lost at a cut, none repeated by a new stream.
    let numbered: Vec<u32> = lines.iter().filter_map(|l| l.find("line ").and_then(|at| l[at + 5..].trim().parse().ok())).collect();
    assert_eq!(numbered, (1..=200).collect::<Vec<u32>>(), "{lines:?}");
    assert_eq!(lines.iter().filter(|l| l.contains("broke off")).count(), 3, "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("opschain-result")), "{lines:?}");
    // The log was asked for four times, each new stream from the last line's second.
    let logs: Vec<Call> = api.calls().into_iter().filter(|c| c.path.ends_with("/log")).collect();
    assert_eq!(logs.len(), 4, "{logs:?}");
    assert!(logs.iter().all(|c| c.query.contains("timestamps=true") && c.query.contains("follow=true")), "{logs:?}");
    assert!(!logs[0].query.contains("sinceTime"), "{logs:?}");
    assert!(logs[1..].iter().all(|c| c.query.contains("sinceTime=")), "{logs:?}");
}

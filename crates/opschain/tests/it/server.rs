//! `opschain server`: the real binary on a loopback port, driven by a real HTTP client (ureq):
//! every endpoint and error, users and roles, changes run by the workers, log lines and their
//! server-sent events, 50 clients at once, TLS, a graceful stop and a restart after a kill -9.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

/// `opschain` with its state in `state` and the test-built agent.
fn opschain(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_opschain"));
    c.env("OPSCHAIN_STATE_DIR", state)
        .env("OPSCHAIN_RUNNER_BIN", crate::common::runner_bin())
        .env("OPSCHAIN_GRACE_SECS", "2")
        .env_remove("OPSCHAIN_LISTEN")
        .env_remove("OPSCHAIN_REPO_FOLDER")
        .env_remove("OPSCHAIN_BACKEND");
    c
}

/// Adds user `name` (password `<name>-password`) with `role`.
fn add_user(state: &Path, name: &str, role: &str) {
    let mut child = opschain(state).args(["user", "add", name, "--password-stdin", "--role", role]).stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{name}-password").unwrap();
    assert!(child.wait().unwrap().success());
}

/// A running server and a client of it.
struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    url: String,
    agent: ureq::Agent,
}

impl Server {
    /// Starts `opschain server` on a free loopback port with `args`; returns once it listens.
    fn start(state: &Path, args: &[&str]) -> Server {
        Server::start_with(state, args, ureq_agent(None))
    }

    fn start_with(state: &Path, args: &[&str], agent: ureq::Agent) -> Server {
        let mut child = opschain(state)
            .args(["server", "--listen", "127.0.0.1:0", "--failed-login-delay-ms", "50"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let url = first.split_whitespace().find(|w| w.starts_with("http")).unwrap_or_else(|| panic!("no URL in {first:?}")).to_string();
        // Keep draining its output so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in stdout.lines() {});
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || for _ in BufReader::new(err).lines() {});
        Server { child, url, agent }
    }

    fn get(&self, user: Option<&str>, path: &str) -> (u16, Value) {
        let mut request = self.agent.get(format!("{}{path}", self.url));
        if let Some(user) = user {
            request = request.header("Authorization", basic(user, &format!("{user}-password")));
        }
        answer(request.call().unwrap())
    }

    fn send(&self, method: &str, user: Option<&str>, path: &str, body: &str) -> (u16, Value) {
        let url = format!("{}{path}", self.url);
        let mut request = match method {
            "POST" => self.agent.post(url),
            "PUT" => self.agent.put(url),
            other => panic!("{other}"),
        };
        request = request.header("Content-Type", "application/vnd.api+json");
        if let Some(user) = user {
            request = request.header("Authorization", basic(user, &format!("{user}-password")));
        }
        answer(request.send(body).unwrap())
    }

    fn post(&self, user: &str, path: &str, body: Value) -> (u16, Value) {
        self.send("POST", Some(user), path, &body.to_string())
    }

    /// Polls change `id` until its status is `status` (30 s at most); its attributes.
    fn wait_for(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, doc) = self.get(Some("ops"), &format!("/api/changes/{id}"));
            assert_eq!(code, 200, "{doc}");
            if doc["data"]["attributes"]["status"] == status {
                return doc["data"]["attributes"].clone();
            }
            assert!(Instant::now() < deadline, "change {id} never became {status}: {doc}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `signal` and waits for the process's end; its exit code.
    fn stop(mut self, signal: nix::sys::signal::Signal) -> Option<i32> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
        let status = self.child.wait().unwrap();
        status.code()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client that reads error statuses as answers, optionally trusting `root` (PEM).
fn ureq_agent(root: Option<&[u8]>) -> ureq::Agent {
    let mut config = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(60)));
    if let Some(pem) = root {
        let cert = ureq::tls::Certificate::from_pem(pem).unwrap();
        config = config.tls_config(ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![cert]))).build());
    }
    ureq::Agent::new_with_config(config.build())
}

/// The `Authorization` header of HTTP Basic.
fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

/// The status and document of a response (checked to be JSON:API).
fn answer(mut response: ureq::http::Response<ureq::Body>) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    if text.is_empty() {
        return (status, Value::Null);
    }
    let kind = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    assert_eq!(kind, "application/vnd.api+json", "{status} {text}");
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

/// The first error of an `errors` document: (status, pointer, detail).
fn error_of(doc: &Value) -> (String, Option<String>, String) {
    let e = &doc["errors"][0];
    (e["status"].as_str().unwrap().to_string(), e["source"]["pointer"].as_str().map(str::to_string), e["detail"].as_str().unwrap().to_string())
}

/// A git repository whose `.opschain/actions.toml` is `actions`.
fn repository(actions: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".opschain")).unwrap();
    std::fs::write(dir.path().join(".opschain/actions.toml"), actions).unwrap();
    std::fs::write(dir.path().join(".opschain/properties.json"), "{}").unwrap();
    for args in [&["init", "-q", "-b", "main"][..], &["add", "-A"], &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init"]] {
        assert!(Command::new("git").arg("-C").arg(dir.path()).args(args).status().unwrap().success());
    }
    dir
}

/// A directory private to its owner, as a state directory is.
fn private_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// A state directory with users `ops` (operator) and `view` (viewer).
fn state_with_users() -> tempfile::TempDir {
    let state = private_dir();
    add_user(state.path(), "ops", "operator");
    add_user(state.path(), "view", "viewer");
    state
}

/// Project `p`, environments `dev` and `prod`, git remote `origin` at `repo`.
fn set_up_project(server: &Server, repo: &Path) {
    assert_eq!(server.post("ops", "/api/projects", json!({"data": {"type": "projects", "attributes": {"code": "p", "name": "Project P"}}})).0, 201);
    for env in ["dev", "prod"] {
        assert_eq!(server.post("ops", "/api/projects/p/environments", json!({"data": {"type": "environments", "attributes": {"code": env}}})).0, 201);
    }
    let remote = json!({"data": {"type": "git_remotes", "attributes": {"name": "origin", "url": repo.to_str().unwrap()}}});
    assert_eq!(server.post("ops", "/api/projects/p/git_remotes", remote).0, 201);
}

/// Creates a change of `action` in `env`; its id.
fn create_change(server: &Server, env: &str, action: &str) -> String {
    let body = json!({"data": {"type": "changes", "attributes": {
        "project_code": "p", "environment_code": env, "action": action, "git_remote_name": "origin", "git_rev": "main", "metadata": {"ticket": "T-1"}}}});
    let (code, doc) = server.post("ops", "/api/changes", body);
    assert_eq!(code, 201, "{doc}");
    doc["data"]["id"].as_str().unwrap().to_string()
}

#[test]
fn every_endpoint_answers_json_api_and_refuses_what_it_must() {
    let state = state_with_users();
    let server = Server::start(state.path(), &["--body-limit", "2000"]);
    let repo = repository("[actions.hello]\nrun = \"echo hello\"\n");

    // No user needed for the health check only.
    assert_eq!(server.get(None, "/api/healthcheck").0, 200);
    let response = server.agent.get(format!("{}/api/projects", server.url)).call().unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().get("www-authenticate").unwrap().to_str().unwrap().starts_with("Basic"));
    let (code, doc) = answer(server.agent.get(format!("{}/api/projects", server.url)).header("Authorization", basic("ops", "wrong")).call().unwrap());
    assert_eq!((code, error_of(&doc).0.as_str()), (401, "401"), "a wrong password");
    let (code, _) = answer(server.agent.get(format!("{}/api/projects", server.url)).header("Authorization", basic("nobody", "nobody-password")).call().unwrap());
    assert_eq!(code, 401, "an unknown user");
    let (code, doc) = server.post("view", "/api/projects", json!({"data": {"type": "projects", "attributes": {"code": "v"}}}));
    assert_eq!((code, error_of(&doc).0.as_str()), (403, "403"), "a viewer writing: {doc}");

    // Projects, environments, git remotes.
    set_up_project(&server, repo.path());
    let (code, doc) = server.get(Some("view"), "/api/projects");
    assert_eq!(code, 200);
    assert_eq!(doc["data"][0]["attributes"]["name"], "Project P");
    let (code, doc) = server.post("ops", "/api/projects", json!({"data": {"type": "projects", "attributes": {"code": "p"}}}));
    assert_eq!((code, error_of(&doc).0.as_str()), (409, "409"));
    let (code, doc) = server.post("ops", "/api/projects", json!({"data": {"type": "projects", "attributes": {"code": "bad code"}}}));
    assert_eq!((code, error_of(&doc).1.as_deref()), (422, Some("/data/attributes/code")));
    let (code, doc) = server.post("ops", "/api/projects", json!({"data": {"type": "projects", "attributes": {"name": "no code"}}}));
    assert_eq!(code, 422, "{doc}");
    assert!(error_of(&doc).2.contains("code"), "{doc}");
    let (code, doc) = server.send("POST", Some("ops"), "/api/projects", "{\"data\": ");
    assert_eq!((code, error_of(&doc).0.as_str()), (400, "400"), "malformed JSON");
    let (code, _) = server.send("POST", Some("ops"), "/api/projects", "[1]");
    assert_eq!(code, 400, "JSON that is not a JSON:API document");
    let big = json!({"data": {"type": "projects", "attributes": {"code": "big", "name": "x".repeat(5000)}}});
    let (code, doc) = server.post("ops", "/api/projects", big);
    assert_eq!((code, error_of(&doc).0.as_str()), (413, "413"), "above the body limit");
    assert_eq!(server.get(Some("view"), "/api/projects/p/environments").1["data"].as_array().unwrap().len(), 2);
    assert_eq!(server.get(Some("view"), "/api/projects/nope/environments").0, 404);
    assert_eq!(server.get(Some("view"), "/api/projects/p/git_remotes").1["data"][0]["attributes"]["name"], "origin");

    // Properties: versions, and an edit made on an old version is refused.
    let (code, doc) = server.get(Some("view"), "/api/projects/p/properties");
    assert_eq!((code, &doc["data"]["attributes"]), (200, &json!({"data": {}, "version": 0})));
    let put = |path: &str, data: Value, version: i64| {
        server.send("PUT", Some("ops"), path, &json!({"data": {"type": "properties", "attributes": {"data": data, "version": version}}}).to_string())
    };
    let (code, doc) = put("/api/projects/p/properties", json!({"a": 1}), 0);
    assert_eq!((code, &doc["data"]["attributes"]["version"]), (200, &json!(1)), "{doc}");
    let (code, doc) = put("/api/projects/p/properties", json!({"a": 2}), 0);
    assert_eq!((code, error_of(&doc).1.as_deref()), (409, Some("/data/attributes/version")), "{doc}");
    assert_eq!(server.get(Some("view"), "/api/projects/p/properties").1["data"]["attributes"]["data"], json!({"a": 1}));
    assert_eq!(put("/api/projects/p/environments/dev/properties", json!({"e": true}), 0).0, 200);
    assert_eq!(server.get(Some("view"), "/api/projects/p/environments/dev/properties").1["data"]["attributes"]["data"], json!({"e": true}));
    assert_eq!(put("/api/projects/p/environments/none/properties", json!({}), 0).0, 404);
    // The properties limit is the agent's, not the body limit.
    let large = json!({"k": "v".repeat(10_000)});
    assert_eq!(put("/api/projects/p/properties", large, 1).0, 200);
    let (code, doc) = server.get(Some("view"), "/api/properties_versions?filter[project_code_eq]=p&filter[environment_code_eq]=dev");
    assert_eq!(code, 200);
    assert_eq!(doc["data"].as_array().unwrap().iter().map(|v| v["attributes"]["version"].as_i64().unwrap()).collect::<Vec<_>>(), [1, 0]);
    assert_eq!(server.get(Some("view"), "/api/properties_versions?page[size]=2").1["data"].as_array().unwrap().len(), 2);

    // Changes: invalid attributes name their field.
    let change = |attributes: Value| server.post("ops", "/api/changes", json!({"data": {"type": "changes", "attributes": attributes}}));
    let base = json!({"project_code": "p", "environment_code": "dev", "action": "hello", "git_remote_name": "origin", "git_rev": "main"});
    for (field, value, pointer) in [
        ("project_code", json!("nope"), "/data/attributes/project_code"),
        ("environment_code", json!("nope"), "/data/attributes/environment_code"),
        ("git_remote_name", json!("nope"), "/data/attributes/git_remote_name"),
        ("git_rev", json!("no-such-branch"), "/data/attributes/git_rev"),
        ("action", json!(7), "/data/attributes/action"),
    ] {
        let mut attributes = base.clone();
        attributes[field] = value;
        let (code, doc) = change(attributes);
        assert_eq!((code, error_of(&doc).1.as_deref()), (422, Some(pointer)), "{doc}");
    }
    let (code, doc) = server.send("POST", Some("ops"), "/api/changes", &json!({"data": {"type": "projects", "attributes": base}}).to_string());
    assert_eq!((code, error_of(&doc).1.as_deref()), (422, Some("/data/type")));
    let id = create_change(&server, "dev", "hello");
    let done = server.wait_for(&id, "success");
    assert_eq!((&done["created_by"], &done["metadata"], &done["git_remote_name"]), (&json!("ops"), &json!({"ticket": "T-1"}), &json!("origin")));
    assert_eq!(done["commit_sha"].as_str().unwrap().len(), 40);
    assert!(done["started_at"].is_string() && done["finished_at"].is_string());
    let (code, doc) = server.get(Some("view"), &format!("/api/changes/{id}?include=steps"));
    assert_eq!(code, 200);
    assert_eq!(doc["included"][0]["attributes"]["action"], "hello");
    assert_eq!(doc["included"][0]["attributes"]["status"], "success");
    let lines = server.get(Some("view"), &format!("/api/changes/{id}/log_lines")).1;
    assert!(lines["data"].as_array().unwrap().iter().any(|l| l["attributes"]["message"].as_str().unwrap().ends_with("hello")), "{lines}");
    assert_eq!(server.get(Some("view"), "/api/changes/999").0, 404);
    assert_eq!(server.get(Some("view"), "/api/changes/999/log_lines").0, 404);
    assert_eq!(server.post("ops", &format!("/api/changes/{id}/cancel"), json!(null)).0, 409, "an ended change");
    assert_eq!(server.post("ops", &format!("/api/changes/{id}/retry"), json!(null)).0, 409, "a change that succeeded");
    assert_eq!(server.post("view", &format!("/api/changes/{id}/retry"), json!(null)).0, 403);

    // Secret sets are written, never read back.
    let set = |body: Value| server.send("PUT", Some("ops"), "/api/secret_sets/deploy", &body.to_string());
    let (code, doc) = set(json!({"data": {"type": "secret_sets", "attributes": {"data": {"TOKEN": "s3cr3t-value"}}}}));
    assert_eq!((code, &doc["data"]["attributes"]), (200, &json!({"name": "deploy", "secret_names": ["TOKEN"]})));
    let (code, doc) = set(json!({"data": {"type": "secret_sets", "attributes": {"data": {"BAD NAME": "s3cr3t-value"}}}}));
    assert_eq!((code, error_of(&doc).1.as_deref()), (422, Some("/data/attributes/data/BAD NAME")));
    let (code, doc) = set(json!({"data": {"type": "secret_sets", "attributes": {"data": {"N": 5}}}}));
    assert_eq!((code, error_of(&doc).1.as_deref()), (422, Some("/data/attributes/data/N")));
    let (code, doc) = server.get(Some("view"), "/api/secret_sets");
    assert_eq!(code, 200);
    assert!(doc["data"].as_array().unwrap().iter().any(|s| s["id"] == "deploy"), "{doc}");
    let everything = format!("{doc}{}", server.get(Some("view"), "/api/events?page[size]=1000").1);
    assert!(!everything.contains("s3cr3t-value"), "a secret value left the server: {everything}");

    // Query parameters are checked.
    assert_eq!(server.get(Some("view"), "/api/changes?filter[status]=success").0, 400, "an unknown filter");
    assert_eq!(server.get(Some("view"), "/api/changes?filter[status_eq]=great").0, 400);
    assert_eq!(server.get(Some("view"), "/api/changes?page[size]=0").0, 400);
    assert_eq!(server.get(Some("view"), "/api/changes?page[size]=1001").0, 400);
    assert_eq!(server.get(Some("view"), "/api/changes/abc").0, 400);
    assert_eq!(server.get(Some("view"), "/api/nothing").0, 404);
    let (code, doc) = answer(server.agent.delete(format!("{}/api/projects", server.url)).header("Authorization", basic("ops", "ops-password")).call().unwrap());
    assert_eq!((code, error_of(&doc).0.as_str()), (405, "405"));

    // The audit trail: logins, failed logins, what was created and changed, by whom.
    let (code, doc) = server.get(Some("view"), "/api/events?page[size]=1000");
    assert_eq!(code, 200);
    let kinds: Vec<(String, String)> = doc["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["attributes"]["kind"].as_str().unwrap().to_string(), e["attributes"]["username"].as_str().unwrap_or("").to_string()))
        .collect();
    for expected in
        [("login.failed", "ops"), ("login.failed", "nobody"), ("login", "ops"), ("project.create", "ops"), ("properties.update", "ops"), ("change.create", "ops")]
    {
        assert!(kinds.contains(&(expected.0.to_string(), expected.1.to_string())), "{expected:?} not in {kinds:?}");
    }
    let failed = server.get(Some("view"), "/api/events?filter[kind_eq]=login.failed").1;
    assert_eq!(failed["data"].as_array().unwrap().len(), 2);
    assert!(!doc.to_string().contains("-password"), "no password in the audit trail");
}

#[test]
fn sessions_log_in_with_a_cookie_and_log_out() {
    let state = state_with_users();
    let server = Server::start(state.path(), &[]);
    let login = |password: &str| {
        let body = json!({"data": {"type": "sessions", "attributes": {"username": "ops", "password": password}}});
        server.agent.post(format!("{}/api/login", server.url)).header("Content-Type", "application/vnd.api+json").send(body.to_string()).unwrap()
    };
    assert_eq!(login("wrong").status(), 401);
    let response = login("ops-password");
    assert_eq!(response.status(), 201);
    let cookie = response.headers().get("set-cookie").unwrap().to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "no Secure over plain HTTP: {cookie}");
    let pair = cookie.split(';').next().unwrap().to_string();
    let with_cookie = |path: &str| answer(server.agent.get(format!("{}{path}", server.url)).header("Cookie", &pair).call().unwrap());
    let (code, doc) = with_cookie("/api/session");
    assert_eq!((code, &doc["data"]["attributes"]), (200, &json!({"username": "ops", "role": "operator"})));
    assert_eq!(with_cookie("/api/projects").0, 200);
    let out = server.agent.post(format!("{}/api/logout", server.url)).header("Cookie", &pair).send("").unwrap();
    assert_eq!(out.status(), 204);
    assert_eq!(with_cookie("/api/projects").0, 401, "the session ended");
    let forged = answer(server.agent.get(format!("{}/api/projects", server.url)).header("Cookie", "opschain_session=forged").call().unwrap());
    assert_eq!(forged.0, 401);
}

#[test]
fn changes_run_in_the_workers_one_at_a_time_per_environment_and_are_listed_cancelled_and_retried() {
    let state = state_with_users();
    let server = Server::start(state.path(), &[]);
    let repo = repository("[actions.slow]\nrun = \"sleep 1\"\n[actions.long]\nrun = \"sleep 60\"\n[actions.fail]\nrun = \"echo failing; exit 3\"\n");
    set_up_project(&server, repo.path());

    // Two changes in one environment run one after the other; another environment's at once.
    let first = create_change(&server, "dev", "slow");
    let second = create_change(&server, "dev", "slow");
    let other = create_change(&server, "prod", "slow");
    let (a, b, c) = (server.wait_for(&first, "success"), server.wait_for(&second, "success"), server.wait_for(&other, "success"));
    assert!(b["started_at"].as_str().unwrap() >= a["finished_at"].as_str().unwrap(), "one change at a time in dev: {a} {b}");
    assert!(c["started_at"].as_str().unwrap() < a["finished_at"].as_str().unwrap(), "prod's change did not wait for dev's: {a} {c}");

    // A change waiting behind a running one is cancelled at once; the running one stops.
    let long = create_change(&server, "dev", "long");
    server.wait_for(&long, "running");
    let waiting = create_change(&server, "dev", "slow");
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(server.get(Some("ops"), &format!("/api/changes/{waiting}")).1["data"]["attributes"]["status"], "pending");
    let (code, doc) = server.post("ops", &format!("/api/changes/{waiting}/cancel"), json!(null));
    assert_eq!((code, &doc["data"]["attributes"]["status"]), (200, &json!("cancelled")));
    assert_eq!(server.post("ops", &format!("/api/changes/{long}/retry"), json!(null)).0, 409, "a running change is not retried");
    assert_eq!(server.post("ops", &format!("/api/changes/{long}/cancel"), json!(null)).0, 200);
    server.wait_for(&long, "cancelled");

    // A failed change is retried from the same commit.
    let failed = create_change(&server, "prod", "fail");
    let attempt = server.wait_for(&failed, "error");
    std::fs::write(repo.path().join(".opschain/actions.toml"), "[actions.fail]\nrun = \"true\"\n").unwrap();
    let (code, doc) = server.post("ops", &format!("/api/changes/{failed}/retry"), json!(null));
    assert_eq!(code, 200, "{doc}");
    let retried = server.wait_for(&failed, "error");
    assert_eq!(retried["commit_sha"], attempt["commit_sha"]);

    // Lists: filters, sort, pages by number and by cursor.
    let list = |query: &str| server.get(Some("view"), &format!("/api/changes{query}")).1;
    let ids = |doc: &Value| doc["data"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().parse::<i64>().unwrap()).collect::<Vec<_>>();
    assert_eq!(ids(&list("?sort=created_at")), [1, 2, 3, 4, 5, 6]);
    assert_eq!(ids(&list("")), [6, 5, 4, 3, 2, 1], "newest first by default");
    assert_eq!(ids(&list("?filter[status_eq]=cancelled&sort=created_at")), [4, 5]);
    assert_eq!(ids(&list("?filter[environment_code_eq]=prod&filter[project_code_eq]=p&sort=created_at")), [3, 6]);
    assert_eq!(ids(&list("?page[size]=2&page[number]=2&sort=created_at")), [3, 4]);
    let page = list("?page[size]=4");
    assert_eq!(ids(&page), [6, 5, 4, 3]);
    let next = page["links"]["next"].as_str().unwrap().to_string();
    assert_eq!(ids(&server.get(Some("view"), &next).1), [2, 1], "the cursor of {next}");
    let events = server.get(Some("view"), "/api/events?page[size]=1000").1.to_string();
    for kind in ["change.cancel", "change.retry"] {
        assert!(events.contains(kind), "{kind} not in {events}");
    }
}

/// Reads server-sent events from `reader` until `stop` says so or the stream ends: (id, data).
fn read_events(reader: &mut dyn BufRead, mut stop: impl FnMut(&[(Option<i64>, String, Value)]) -> bool) -> Vec<(Option<i64>, String, Value)> {
    let mut events = Vec::new();
    let (mut id, mut kind, mut data) = (None, String::from("message"), String::new());
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            return events;
        }
        let line = line.trim_end_matches('\n');
        if line.is_empty() {
            if !data.is_empty() {
                events.push((id.take(), std::mem::replace(&mut kind, "message".into()), serde_json::from_str(&data).unwrap()));
                data.clear();
                if stop(&events) {
                    return events;
                }
            }
            continue;
        }
        if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.parse().unwrap());
        } else if let Some(v) = line.strip_prefix("event: ") {
            kind = v.to_string();
        } else if let Some(v) = line.strip_prefix("data: ") {
            data.push_str(v);
        }
    }
}

#[test]
fn a_log_stream_reaches_a_follower_while_the_step_runs_and_resumes_with_no_line_lost_or_repeated() {
    let state = state_with_users();
    let server = Server::start(state.path(), &[]);
    let repo = repository("[actions.count]\nrun = \"i=0; while [ $i -lt 400 ]; do echo n $i; i=$((i+1)); [ $((i % 10)) -eq 0 ] && sleep 0.1; done\"\n");
    set_up_project(&server, repo.path());
    let id = create_change(&server, "dev", "count");
    let open = |resume: Option<i64>| {
        let mut request = server.agent.get(format!("{}/api/changes/{id}/log_lines/stream", server.url)).header("Authorization", basic("view", "view-password"));
        if let Some(last) = resume {
            request = request.header("Last-Event-ID", last.to_string());
        }
        let response = request.call().unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers().get("content-type").unwrap(), "text/event-stream");
        BufReader::new(response.into_body().into_reader())
    };
    // The first connection takes 120 lines, and is dropped while the step still runs.
    let mut first = open(None);
    let counted = |events: &[(Option<i64>, String, Value)]| events.iter().filter(|e| e.2["message"].as_str().unwrap_or("").contains("stdout| n ")).count();
    let mut seen = read_events(&mut first, |events| counted(events) >= 1);
    assert_eq!(server.get(Some("view"), &format!("/api/changes/{id}")).1["data"]["attributes"]["status"], "running", "a line reached the follower while the step ran");
    let more = read_events(&mut first, |events| counted(events) >= 120);
    seen.extend(more);
    drop(first);
    let last = seen.last().unwrap().0.unwrap();
    let mut second = open(Some(last));
    seen.extend(read_events(&mut second, |_| false));
    let (end, lines) = seen.split_last().unwrap();
    assert_eq!((end.1.as_str(), &end.2), ("end", &json!({"status": "success"})));
    let ids: Vec<i64> = lines.iter().map(|e| e.0.unwrap()).collect();
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>(), "every id once, in order");
    let counted: Vec<String> = lines.iter().filter_map(|e| e.2["message"].as_str().unwrap().split_once("stdout| ").map(|(_, m)| m.to_string())).collect();
    assert_eq!(counted, (0..400).map(|i| format!("n {i}")).collect::<Vec<_>>());
    // The same lines as the pages of log_lines.
    let page = server.get(Some("view"), &format!("/api/changes/{id}/log_lines?filter[id_gt]={last}&page[size]=5")).1;
    assert_eq!(
        page["data"].as_array().unwrap().iter().map(|l| l["id"].as_str().unwrap().parse::<i64>().unwrap()).collect::<Vec<_>>(),
        (last + 1..=last + 5).collect::<Vec<_>>()
    );
    // A stream of an ended change sends what it has, then ends.
    let replay = read_events(&mut open(Some(ids.len() as i64 - 3)), |_| false);
    assert_eq!(replay.len(), 4);
}

#[test]
fn fifty_clients_at_once_are_all_answered() {
    let state = state_with_users();
    let server = Server::start(state.path(), &[]);
    let repo = repository("[actions.hello]\nrun = \"echo hello\"\n");
    set_up_project(&server, repo.path());
    let results: Vec<(u16, u16)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let server = &server;
                s.spawn(move || {
                    let read = server.get(Some(if i % 2 == 0 { "view" } else { "ops" }), "/api/projects").0;
                    let write = server.post("ops", "/api/projects", json!({"data": {"type": "projects", "attributes": {"code": format!("p{i}")}}})).0;
                    (read, write)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.iter().all(|&r| r == (200, 201)), "{results:?}");
    assert_eq!(server.get(Some("view"), "/api/projects").1["data"].as_array().unwrap().len(), 51);
}

#[test]
fn a_server_killed_and_restarted_loses_nothing_and_a_stopped_one_lets_its_change_end() {
    let state = state_with_users();
    let repo = repository("[actions.long]\nrun = \"sleep 60\"\n[actions.short]\nrun = \"echo short; sleep 1\"\n");
    let server = Server::start(state.path(), &[]);
    set_up_project(&server, repo.path());
    let running = create_change(&server, "dev", "long");
    server.wait_for(&running, "running");
    let waiting = create_change(&server, "dev", "short");
    assert_eq!(server.stop(nix::sys::signal::Signal::SIGKILL), None);

    // The change it ran is recorded as the work of a lost controller (an error, with the
    // reason); the waiting one runs.
    let server = Server::start(state.path(), &[]);
    server.wait_for(&running, "error");
    server.wait_for(&waiting, "success");
    let events = server.get(Some("view"), "/api/events?filter[kind_eq]=change.interrupted").1;
    assert_eq!(events["data"][0]["attributes"]["target"], format!("change/{running}"));
    assert!(events["data"][0]["attributes"]["detail"]["reason"].as_str().unwrap().contains("controller running it was lost"), "{events}");
    assert!(!state.path().join("sandboxes").join(format!("change-{running}")).exists(), "its sandboxes are removed");
    assert_eq!(server.get(Some("view"), "/api/projects/p/git_remotes").1["data"][0]["attributes"]["name"], "origin");

    // SIGTERM: no new work, the running change ends within the grace, then the server exits 0.
    let short = create_change(&server, "prod", "short");
    server.wait_for(&short, "running");
    assert_eq!(server.stop(nix::sys::signal::Signal::SIGTERM), Some(0));
    let server = Server::start(state.path(), &["--shutdown-grace-secs", "1"]);
    assert_eq!(server.get(Some("view"), &format!("/api/changes/{short}")).1["data"]["attributes"]["status"], "success");
    // A change still running after the grace is cancelled.
    let long = create_change(&server, "prod", "long");
    server.wait_for(&long, "running");
    let stopping = Instant::now();
    assert_eq!(server.stop(nix::sys::signal::Signal::SIGTERM), Some(0));
    assert!(stopping.elapsed() < Duration::from_secs(20), "{:?}", stopping.elapsed());
    let server = Server::start(state.path(), &[]);
    assert_eq!(server.get(Some("view"), &format!("/api/changes/{long}")).1["data"]["attributes"]["status"], "cancelled");
}

/// A self-signed certificate and key for 127.0.0.1 (openssl), in `dir`.
/// A certificate authority (its certificate is returned first) and a server certificate and key
/// for 127.0.0.1 it signed (openssl), in `dir`.
fn certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let openssl = |args: &[&str]| assert!(Command::new("openssl").args(args).stderr(Stdio::null()).status().unwrap().success(), "openssl {args:?}");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(&[&["req", "-x509"][..], &ec, &["-days", "1", "-subj", "/CN=test CA", "-keyout", &path("ca.key"), "-out", &path("ca.pem")]].concat());
    openssl(&[&["req"][..], &ec, &["-subj", "/CN=127.0.0.1", "-keyout", &path("key.pem"), "-out", &path("server.csr")]].concat());
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &path("server.csr"),
        "-CA",
        &path("ca.pem"),
        "-CAkey",
        &path("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &path("ext.cnf"),
        "-out",
        &path("cert.pem"),
    ]);
    (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"))
}

#[test]
fn tls_serves_https_with_secure_cookies_and_plain_http_off_loopback_warns() {
    let state = state_with_users();
    let (ca, cert, key) = certificate(state.path());
    let agent = ureq_agent(Some(&std::fs::read(&ca).unwrap()));
    let server = Server::start_with(state.path(), &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()], agent);
    assert!(server.url.starts_with("https://127.0.0.1:"), "{}", server.url);
    assert_eq!(server.get(Some("view"), "/api/projects").0, 200);
    let body = json!({"data": {"type": "sessions", "attributes": {"username": "view", "password": "view-password"}}});
    let response = server.agent.post(format!("{}/api/login", server.url)).header("Content-Type", "application/vnd.api+json").send(body.to_string()).unwrap();
    assert!(response.headers().get("set-cookie").unwrap().to_str().unwrap().contains("; Secure"));
    drop(server);

    let bad = opschain(state.path()).args(["server", "--listen", "127.0.0.1:0", "--tls-cert", key.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]).output().unwrap();
    assert_eq!(bad.status.code(), Some(66), "{}", String::from_utf8_lossy(&bad.stderr));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("certificate"), "{}", String::from_utf8_lossy(&bad.stderr));

    let mut open = opschain(state.path()).args(["server", "--listen", "0.0.0.0:0"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(open.stdout.take().unwrap()).read_line(&mut line).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(open.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = open.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("without TLS"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn user_commands_add_list_change_and_remove_users_with_their_exit_statuses() {
    let state = private_dir();
    let user = |args: &[&str], stdin: &str| {
        let mut child = opschain(state.path()).arg("user").args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    assert_eq!(user(&["add", "ann", "--password-stdin", "--role", "admin"], "long-enough\n").0, Some(0));
    assert_eq!(user(&["add", "ann", "--password-stdin"], "long-enough\n").0, Some(65), "exists");
    assert_eq!(user(&["add", "bob", "--password-stdin"], "short\n").0, Some(65), "a short password");
    assert_eq!(user(&["add", "bad:name", "--password-stdin"], "long-enough\n").0, Some(65));
    assert_eq!(user(&["add", "bob"], "").0, Some(64), "the password only from stdin");
    assert_eq!(user(&["add", "bob", "--password-stdin", "--role", "root"], "long-enough\n").0, Some(64));
    let (code, list) = user(&["list"], "");
    assert_eq!(code, Some(0));
    assert!(list.lines().any(|l| l.starts_with("ann") && l.contains("admin")), "{list}");
    assert!(!list.contains("argon2"), "no hash is shown: {list}");
    assert_eq!(user(&["passwd", "ann", "--password-stdin", "--role", "viewer"], "another-one\n").0, Some(0));
    assert!(user(&["list"], "").1.lines().any(|l| l.starts_with("ann") && l.contains("viewer")));
    assert_eq!(user(&["passwd", "zed", "--password-stdin"], "another-one\n").0, Some(67), "no such user");
    assert_eq!(user(&["remove", "ann"], "").0, Some(0));
    assert_eq!(user(&["remove", "ann"], "").0, Some(67));
}

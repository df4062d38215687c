//! Faults and hostile concurrency against the `opschain` controller, with the real binaries and a
//! state directory per test:
//!
//! * kill -9 of the controller at spread-out moments of the demo change, and at seeded random
//!   moments of a 100-step change (also during its retries): `change retry` completes the change,
//!   and the final properties and step tree equal an uninterrupted run's: no applied diff is lost,
//!   none is applied twice;
//! * several `change run` processes at once hammering one environment's properties: every diff is
//!   applied to the latest version exactly once, or its step fails with the conflict explained;
//!   the version history has no gap;
//! * several commands opening a new state directory's store at once all succeed.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

/// `opschain` with its state in `state`, the test-built agent, and its output discarded.
fn opschain(state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_opschain"));
    c.env("OPSCHAIN_STATE_DIR", state)
        .env("OPSCHAIN_RUNNER_BIN", crate::common::runner_bin())
        .env("DEMO_WORKER_SLEEP", "1")
        .env_remove("OPSCHAIN_REPO_FOLDER")
        .env_remove("OPSCHAIN_BACKEND")
        .env_remove("OPSCHAIN_WORKERS")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// Runs `opschain args` to its end and returns its output.
fn run(state: &Path, args: &[&str]) -> Output {
    common::make_target_of(state, args);
    opschain(state).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).output().unwrap()
}

/// The stdout and stderr of an output, for assertion messages.
fn text(o: &Output) -> String {
    format!("--- stdout\n{}\n--- stderr\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Runs `opschain args`, asserts that it succeeded, and returns its stdout.
fn run_ok(state: &Path, args: &[&str]) -> String {
    let out = run(state, args);
    assert!(out.status.success(), "opschain {args:?} failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The current properties of a project (`env` None) or of one of its environments.
fn props(state: &Path, args: &[&str]) -> Value {
    let out = opschain(state).args(["properties", "show"]).args(args).stdout(Stdio::piped()).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Sends SIGKILL to a child process (it may have exited already) and reaps it. Returns None when
/// the kill interrupted it, else the status it had exited with.
fn kill_9(child: &mut Child) -> Option<std::process::ExitStatus> {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL);
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    (status.signal() != Some(libc::SIGKILL)).then_some(status)
}

/// A git repository (one commit) whose `.opschain/actions.toml` is `actions`, with empty
/// repository properties.
fn project(actions: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".opschain")).unwrap();
    std::fs::write(dir.path().join(".opschain/actions.toml"), actions).unwrap();
    std::fs::write(dir.path().join(".opschain/properties.json"), "{}").unwrap();
    for args in [&["init", "-q"][..], &["add", "-A"], &["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init"]] {
        assert!(Command::new("git").arg("-C").arg(dir.path()).args(args).status().unwrap().success());
    }
    dir
}

/// One step as `change show` prints it.
#[derive(Debug, Clone)]
struct Step {
    /// The step id.
    id: i64,
    /// Its depth in the tree (the root is 1).
    depth: usize,
    /// Its action.
    action: String,
    /// Its status.
    status: String,
    /// Its failure message (the `| ` lines under an `error` step), else empty.
    message: String,
}

/// The steps of change `id` in tree order, parsed from `change show`; empty when the change (or
/// the store) does not exist yet.
fn steps(state: &Path, id: i64) -> Vec<Step> {
    let out = run(state, &["change", "show", &id.to_string()]);
    if !out.status.success() {
        return Vec::new();
    }
    let mut steps: Vec<Step> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().skip_while(|l| *l != "steps:").skip(1) {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix('|') {
            let step = steps.last_mut().expect("a message line follows its step");
            step.message.push_str(rest.strip_prefix(' ').unwrap_or(rest));
            step.message.push('\n');
            continue;
        }
        let (id, rest) = trimmed.split_once(" [").unwrap_or_else(|| panic!("unexpected line in change show: {line:?}"));
        let (action, rest) = rest.split_once("] ").unwrap_or_else(|| panic!("unexpected line in change show: {line:?}"));
        steps.push(Step {
            id: id.parse().unwrap_or_else(|_| panic!("unexpected line in change show: {line:?}")),
            depth: (line.len() - trimmed.len()) / 2,
            action: action.to_string(),
            status: rest.split_whitespace().next().unwrap_or_default().to_string(),
            message: String::new(),
        });
    }
    steps
}

/// One version of a level's properties as `properties history` prints it.
#[derive(Debug, Clone)]
struct Version {
    /// The version number.
    version: i64,
    /// The step whose diff made it; None for a user's edit.
    step: Option<i64>,
    /// The document.
    json: Value,
}

/// Every version of a project's (`args` = `--project P`) or environment's properties, oldest
/// first; asserts that each is a JSON object.
fn history(state: &Path, args: &[&str]) -> Vec<Version> {
    let out = run_ok(state, &[&["properties", "history"][..], args].concat());
    out.lines()
        .map(|line| {
            // v<N> <created_at> step <id>|user <json>
            let (version, rest) = line.split_once(' ').unwrap();
            let rest = rest.trim_start();
            let (_created, rest) = rest.split_once(' ').unwrap();
            let rest = rest.trim_start();
            let (step, json) = match rest.strip_prefix("user") {
                Some(json) => (None, json),
                None => {
                    let rest = rest.strip_prefix("step ").unwrap_or_else(|| panic!("unexpected history line {line:?}"));
                    let (id, json) = rest.split_once(' ').unwrap();
                    (Some(id.parse().unwrap()), json)
                }
            };
            let json: Value = serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("version {version} is not valid JSON ({e}): {line:?}"));
            assert!(json.is_object(), "version {version} is not a JSON object: {line:?}");
            Version { version: version.trim_start_matches('v').parse().unwrap(), step, json }
        })
        .collect()
}

/// Asserts that versions are numbered 0, 1, 2, ... with no gap and no repeat.
fn assert_gap_free(what: &str, versions: &[Version]) {
    let numbers: Vec<i64> = versions.iter().map(|v| v.version).collect();
    let expected: Vec<i64> = (0..versions.len() as i64).collect();
    assert_eq!(numbers, expected, "the {what} properties versions have a gap or a repeat");
}

/// The JSON document that follows the line `header` in a conflict message: the shortest run of
/// lines after it that parses (the documents are pretty-printed, so more text follows).
fn section(message: &str, header: &str) -> Value {
    let start = message.find(header).unwrap_or_else(|| panic!("no {header:?} in the conflict message:\n{message}")) + header.len();
    let lines: Vec<&str> = message[start..].lines().collect();
    (1..=lines.len())
        .find_map(|n| serde_json::from_str(&lines[..n].join("\n")).ok())
        .unwrap_or_else(|| panic!("{header:?} is not followed by a JSON document in:\n{message}"))
}

/// A small seeded random generator (SplitMix64): the same seed gives the same kill moments.
struct Rng(u64);

impl Rng {
    /// The next 64 random bits.
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `range` (inclusive).
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// The seed of a randomised test: `$FAULTS_SEED` when set (to reproduce a failure), else the
/// clock; printed either way.
fn seed(test: &str) -> u64 {
    let seed = match std::env::var("FAULTS_SEED") {
        Ok(s) => s.parse().unwrap_or_else(|_| panic!("FAULTS_SEED={s:?} is not a number")),
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
    };
    println!("{test}: seed {seed} (reproduce with FAULTS_SEED={seed})");
    seed
}

#[test]
fn kill_9_at_any_moment_then_retry_gives_the_uninterrupted_result() {
    let expected_env = json!({"web": {"version": "2.4.1"}, "worker": {"version": "2.4.1"}, "last_verified": "2.4.1"});
    let demo = common::fixture("demo");
    let mut interrupted = 0;
    for delay_ms in [150u64, 400, 700, 1000, 1300, 1700, 2200] {
        let state = tempfile::tempdir().unwrap();
        let secrets = state.path().join("s.json");
        std::fs::write(&secrets, r#"{"API_TOKEN": "t"}"#).unwrap();
        assert!(opschain(state.path()).args(["secrets", "set", "demo", "--file", secrets.to_str().unwrap()]).status().unwrap().success());
        common::make_target(state.path(), "demo", "dev");
        let mut controller = opschain(state.path())
            .args(["change", "run", "--repo", demo.to_str().unwrap(), "--project", "demo", "--environment", "dev", "--action", "deploy", "--secrets", "demo"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(controller.id() as i32), nix::sys::signal::Signal::SIGKILL);
        let status = controller.wait().unwrap();
        if status.success() {
            // Finished before the kill: nothing to retry.
        } else {
            interrupted += 1;
            let exists = opschain(state.path()).args(["change", "show", "1"]).status().unwrap().success();
            if !exists {
                continue; // killed before the change was recorded
            }
            let retried = opschain(state.path()).args(["change", "retry", "1"]).stdout(Stdio::piped()).stderr(Stdio::piped()).output().unwrap();
            // A kill after the change was recorded as succeeded (while the controller was still
            // on its way out) leaves nothing to retry: what the store holds is checked below.
            let finished_before_the_kill = String::from_utf8_lossy(&retried.stderr).contains("change 1 succeeded: nothing to retry");
            assert!(
                retried.status.success() || finished_before_the_kill,
                "retry after a kill at {delay_ms} ms failed:\n{}\n{}",
                String::from_utf8_lossy(&retried.stdout),
                String::from_utf8_lossy(&retried.stderr)
            );
        }
        assert_eq!(props(state.path(), &["--project", "demo"]), json!({"deploy_count": 1}), "kill at {delay_ms} ms");
        assert_eq!(props(state.path(), &["--project", "demo", "--environment", "dev"]), expected_env, "kill at {delay_ms} ms");
    }
    assert!(interrupted >= 3, "only {interrupted} runs were interrupted: the delays no longer fall inside a run");
}

// ---------------------------------------------------------------------------------------------
// Concurrent changes hammering one environment's properties.

/// How many `change run` processes run at once in the same environment.
const CHANGES: usize = 5;
/// How many contested children each change's root has: child `sK` removes token `tK` (every
/// change's `sK` the same one, at the same time).
const TOKENS: usize = 3;
/// How many free children each change's root has (`fJ`: no token).
const FREE: usize = 3;

/// The script of every child: with `id` its step id (from the step context), it prints the
/// environment properties it started with (`START {...}`), adds `own.s<id>` at both levels and
/// sets the shared `counter` to the one it started with plus one.
const HAMMER_STEP: &str = r#"
set -e
id=$(tr -d ' \n' < "$OPSCHAIN_STEP_CONTEXT" | sed -n 's/.*"step":{[^}]*"id":\([0-9]*\).*/\1/p')
test -n "$id"
echo "START $(tr -d '\n' < "$OPSCHAIN_ENVIRONMENT_PROPERTIES")"
opschain-runner property set --project --json "own.s$id" "$id"
opschain-runner property set --environment --json "own.s$id" "$id"
opschain-runner property set --environment --json counter "$(( $(opschain-runner property get counter) + 1 ))"
"#;

/// The end of a contested child `s{K}`'s script: it removes `tokens.t{K}` when it started with it,
/// then waits until a second step competing for the same token has arrived (the barrier under
/// `$FAULT_BARRIER`), so that at least two steps of different changes hold that token in their
/// starting properties before either ends.
const HAMMER_TOKEN: &str = r#"
if opschain-runner property get tokens.t{K} > /dev/null 2>&1; then
  opschain-runner property remove --environment tokens.t{K}
fi
mkdir -p "$FAULT_BARRIER/t{K}"
touch "$FAULT_BARRIER/t{K}/$id"
n=0
while [ "$(ls "$FAULT_BARRIER/t{K}" | wc -l)" -lt 2 ]; do
  n=$((n + 1))
  if [ "$n" -gt 1200 ]; then echo "BARRIER TIMEOUT"; break; fi
  sleep 0.05
done
"#;

/// actions.toml of the hammer test: `root` with the parallel children `s0`.. (contested) and
/// `f0`.. (free), interleaved.
fn hammer_actions() -> String {
    let names: Vec<String> = (0..TOKENS.max(FREE)).flat_map(|i| [(i < TOKENS).then(|| format!("\"s{i}\"")), (i < FREE).then(|| format!("\"f{i}\""))]).flatten().collect();
    let mut toml = format!("[actions.root]\nsteps = [{}]\nrun_as = \"parallel\"\n", names.join(", "));
    for k in 0..TOKENS {
        toml.push_str(&format!("\n[actions.s{k}]\nrun = '''{HAMMER_STEP}{}'''\n", HAMMER_TOKEN.replace("{K}", &k.to_string())));
    }
    for j in 0..FREE {
        toml.push_str(&format!("\n[actions.f{j}]\nrun = '''{HAMMER_STEP}'''\n"));
    }
    toml
}

/// The environment properties step `id` meant to leave, given those it started with: `own.s<id>`
/// added, `counter` one more than it started with, and for a contested child (`token` Some(k))
/// `tokens.t<k>` removed if it started with it.
fn intended(start: &Value, id: i64, token: Option<usize>) -> Value {
    let mut doc = start.clone();
    doc["own"][format!("s{id}")] = json!(id);
    doc["counter"] = json!(start["counter"].as_i64().unwrap() + 1);
    if let Some(k) = token {
        doc["tokens"].as_object_mut().unwrap().remove(&format!("t{k}"));
    }
    doc
}

/// The environment properties each step started with, from its `START {...}` log line.
fn starting_properties(state: &Path, change: i64) -> BTreeMap<i64, Value> {
    let logs = run_ok(state, &["change", "logs", &change.to_string()]);
    let mut starts = BTreeMap::new();
    for line in logs.lines() {
        let Some((_, json)) = line.split_once("START ") else { continue };
        let (_, step) = line.split_once('[').unwrap_or_else(|| panic!("unexpected log line {line:?}"));
        let id: i64 = step.split_whitespace().next().unwrap().parse().unwrap();
        let json: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("step {id} logged bad starting properties ({e}): {line:?}"));
        assert!(starts.insert(id, json).is_none(), "step {id} logged its starting properties twice");
    }
    starts
}

#[test]
fn concurrent_changes_on_one_environment_lose_no_diff_and_explain_every_conflict() {
    let state = tempfile::tempdir().unwrap();
    let state = state.path();
    let repo = project(&hammer_actions());
    let barrier = tempfile::tempdir().unwrap();
    common::make_target(state, "p", "dev");
    run_ok(state, &["project", "allow-parallel-changes", "p", "true"]);
    run_ok(state, &["properties", "set", "--project", "p", "--json", r#"{"own": {}}"#]);
    let tokens: Map<String, Value> = (0..TOKENS).map(|k| (format!("t{k}"), json!(true))).collect();
    let initial_env = json!({"counter": 0, "own": {}, "tokens": tokens});
    run_ok(state, &["properties", "set", "--project", "p", "--environment", "dev", "--json", &initial_env.to_string()]);

    // The changes, all at once; each runs all its children at once (so that every step reaches
    // its barrier), their output in files (a full pipe would stall a controller).
    let mut running: Vec<(Child, std::path::PathBuf)> = (0..CHANGES)
        .map(|i| {
            let out = state.join(format!("controller-{i}.out"));
            let file = std::fs::File::create(&out).unwrap();
            common::make_target(state, "p", "dev");
            let child = opschain(state)
                .args(["change", "run", "--repo", repo.path().to_str().unwrap(), "--project", "p", "--environment", "dev", "--action", "root"])
                .args(["--workers", &(TOKENS + FREE).to_string()])
                .env("FAULT_BARRIER", barrier.path())
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .unwrap();
            (child, out)
        })
        .collect();
    let mut exits = Vec::new();
    for (child, out) in &mut running {
        let status = child.wait().unwrap();
        let output = std::fs::read_to_string(&*out).unwrap();
        assert!(!output.contains("panicked"), "a controller panicked:\n{output}");
        assert!(matches!(status.code(), Some(0 | 1)), "a controller ended {status}:\n{output}");
        exits.push((status.code().unwrap(), output));
    }

    let env_history = history(state, &["--project", "p", "--environment", "dev"]);
    let project_history = history(state, &["--project", "p"]);
    assert_gap_free("environment", &env_history);
    assert_gap_free("project", &project_history);
    assert_eq!(
        &env_history.last().unwrap().json,
        &props(state, &["--project", "p", "--environment", "dev"]),
        "the current environment properties are not the last version"
    );
    assert_eq!(&project_history.last().unwrap().json, &props(state, &["--project", "p"]), "the current project properties are not the last version");
    // v0 (made with the owner) and v1 (the test's) are a user's; every later one is a step's.
    for (what, versions) in [("environment", &env_history), ("project", &project_history)] {
        assert!(versions.len() >= 2 && versions[..2].iter().all(|v| v.step.is_none()), "{what} history does not start with v0 and the initial set: {versions:?}");
        assert!(versions[2..].iter().all(|v| v.step.is_some()), "a later {what} version was not made by a step: {versions:?}");
    }
    let env_index: BTreeMap<i64, usize> = env_history.iter().enumerate().filter_map(|(i, v)| Some((v.step?, i))).collect();
    let project_index: BTreeMap<i64, usize> = project_history.iter().enumerate().filter_map(|(i, v)| Some((v.step?, i))).collect();
    assert_eq!(env_index.len(), env_history.len() - 2, "a step made two environment versions: {env_history:?}");
    assert_eq!(project_index.len(), project_history.len() - 2, "a step made two project versions: {project_history:?}");
    // Every environment version holds a new own key, so a starting document names one version.
    let version_of = |doc: &Value| env_history.iter().position(|v| &v.json == doc);

    let final_env = env_history.last().unwrap().json.clone();
    let final_project = project_history.last().unwrap().json.clone();
    let (mut succeeded, mut conflicts) = (0, 0);
    let mut children_seen = BTreeSet::new();
    // Per token: how many steps started with it, and how many of those succeeded.
    let mut holders = [(0usize, 0usize); TOKENS];
    for change in 1..=CHANGES as i64 {
        let tree = steps(state, change);
        let starts = starting_properties(state, change);
        assert_eq!(tree.len(), 1 + TOKENS + FREE, "change {change} has not a root and {} children: {tree:?}", TOKENS + FREE);
        assert_eq!((tree[0].action.as_str(), tree[0].status.as_str()), ("root", "success"), "change {change}'s root: {tree:?}");
        assert!(!env_index.contains_key(&tree[0].id) && !project_index.contains_key(&tree[0].id), "the root (no run) made a version");
        let mut failed = false;
        for step in &tree[1..] {
            assert!(children_seen.insert((change, step.action.clone())), "change {change} ran {} twice", step.action);
            let token: Option<usize> = step.action.strip_prefix('s').map(|k| k.parse().unwrap());
            assert!(token.is_some() || step.action.starts_with('f'), "unexpected step {step:?}");
            let id = step.id;
            let own = format!("s{id}");
            let start = starts.get(&id).unwrap_or_else(|| panic!("step {id} logged no starting properties (change {change})"));
            let started_at = version_of(start).unwrap_or_else(|| panic!("step {id} started from properties that are no stored version: {start}"));
            let had_token = token.is_some_and(|k| start["tokens"].get(format!("t{k}")).is_some());
            let meant = intended(start, id, token);
            if let (Some(k), true) = (token, had_token) {
                holders[k].0 += 1;
                holders[k].1 += usize::from(step.status == "success");
            }
            match step.status.as_str() {
                "success" => {
                    succeeded += 1;
                    // Its edit merged, once, into the latest version, keeping every other step's
                    // write: it made no value that no step wrote, so the counter it set was not
                    // changed otherwise meanwhile.
                    let at = *env_index.get(&id).unwrap_or_else(|| panic!("step {id} succeeded but made no environment version"));
                    let (before, after) = (&env_history[at - 1].json, &env_history[at].json);
                    assert!(at > started_at, "step {id}'s version v{at} is not after the one it started from, v{started_at}");
                    assert!(
                        before["counter"] == start["counter"] || before["counter"] == meant["counter"],
                        "step {id} set counter {} from {}, but v{} holds {}: a conflict, yet it succeeded",
                        meant["counter"],
                        start["counter"],
                        at - 1,
                        before["counter"]
                    );
                    let mut expected = before.clone();
                    expected["own"][&own] = json!(id);
                    expected["counter"] = meant["counter"].clone();
                    if let (Some(k), true) = (token, had_token) {
                        expected["tokens"].as_object_mut().unwrap().remove(&format!("t{k}"));
                    }
                    assert_eq!(after, &expected, "v{at} (step {id}) is not its edit merged into v{}", at - 1);
                    let at = *project_index.get(&id).unwrap_or_else(|| panic!("step {id} succeeded but made no project version"));
                    let mut expected = project_history[at - 1].json.clone();
                    expected["own"][&own] = json!(id);
                    assert_eq!(project_history[at].json, expected, "project v{at} (step {id}) is not its diff applied to v{}", at - 1);
                    // Nothing removes an own key, and a token a step removed stays removed.
                    assert_eq!(final_env["own"][&own], json!(id), "step {id}'s environment write is lost");
                    assert_eq!(final_project["own"][&own], json!(id), "step {id}'s project write is lost");
                }
                "error" => {
                    conflicts += 1;
                    failed = true;
                    let m = &step.message;
                    assert!(
                        m.contains(&format!("The environment properties changes of step {id} ({}) could not be applied", step.action)),
                        "step {id} failed without the conflict explained:\n{m}"
                    );
                    for needle in [
                        "changed by both, differently: /counter.",
                        "To resolve",
                        "opschain properties edit --project p --environment dev",
                        &format!("opschain change retry {change}"),
                    ] {
                        assert!(m.contains(needle), "no {needle:?} in step {id}'s conflict message:\n{m}");
                    }
                    assert_eq!(&section(m, "Original environment properties (when the step started):\n"), start, "step {id}'s conflict shows another original");
                    let patch: json_patch::Patch = serde_json::from_value(section(m, "Patch (RFC 6902) made by the step:\n")).unwrap();
                    let mut patched = start.clone();
                    json_patch::patch(&mut patched, &patch).unwrap_or_else(|e| panic!("step {id}'s patch does not apply to its own original: {e}"));
                    assert_eq!(patched, meant, "step {id}'s patch does not make what it meant to leave");
                    assert_eq!(section(m, "Patched original properties (what the step meant to leave):\n"), meant, "step {id}'s conflict shows another patched original");
                    // The conflict is real: another step set the counter to another value since.
                    let current = section(m, "Current environment properties:\n");
                    let at = version_of(&current).unwrap_or_else(|| panic!("step {id}'s current properties are no stored version: {current}"));
                    assert!(at > started_at, "step {id} (started from v{started_at}, ended at v{at}) met a conflict with no change since");
                    assert!(
                        current["counter"] != start["counter"] && current["counter"] != meant["counter"],
                        "step {id} conflicted although the counter merges: {current}"
                    );
                    // Nothing of it was applied, at either level.
                    assert!(!env_index.contains_key(&id) && !project_index.contains_key(&id), "step {id} failed but made a version");
                    for v in env_history.iter().chain(&project_history) {
                        assert!(v.json["own"].get(&own).is_none(), "v{} holds the own key of step {id}, which failed", v.version);
                    }
                }
                other => panic!("step {id} of change {change} ended {other}:\n{}", step.message),
            }
        }
        let shown = run_ok(state, &["change", "show", &change.to_string()]);
        let expected = if failed { "error" } else { "success" };
        // The first line is the status, and for a failed change why (`: step N [action]: ...`).
        let first = shown.lines().next().unwrap_or_default();
        let status = first.split_once(": ").map_or(first, |(status, _)| status);
        assert_eq!(status, format!("change {change} {expected}"), "change {change}'s status: {first}");
    }
    assert_eq!(children_seen.len(), CHANGES * (TOKENS + FREE), "not every change ran every child");
    // The controllers' exit statuses are in spawn order, not change order: compare the counts.
    let failures = exits.iter().filter(|(code, _)| *code == 1).count();
    let errored = (1..=CHANGES as i64).filter(|&c| run_ok(state, &["change", "show", &c.to_string()]).starts_with(&format!("change {c} error"))).count();
    assert_eq!(failures, errored, "the controllers' exit statuses disagree with the changes' statuses");
    assert_eq!(succeeded + 2, env_history.len(), "a successful step made no version, or a version has no step");
    let barrier_timeouts = (1..=CHANGES as i64).map(|c| run_ok(state, &["change", "logs", &c.to_string()]).matches("BARRIER TIMEOUT").count()).sum::<usize>();
    assert_eq!(barrier_timeouts, 0, "some steps waited 60 s at their barrier: the changes did not overlap");
    // At each barrier two steps started with the token, so it was removed concurrently: the same
    // edit, merged (it is a conflict only when it meets the counter's).
    for (k, (held, removed)) in holders.iter().enumerate() {
        assert!(*held >= 2, "only {held} step(s) started with t{k}: the barrier did not hold");
        assert!(*removed >= 1, "none of the {held} steps that started with t{k} succeeded");
    }
    assert_eq!(final_env["tokens"], json!({}), "every token was removed by some step");
    println!("{succeeded} steps applied their diffs, {conflicts} failed with a conflict; {} environment versions", env_history.len());
}

// ---------------------------------------------------------------------------------------------
// kill -9 at random moments of a 100-step change.

/// How many groups the 100-step change's root has (even ones run their leaves in parallel, odd
/// ones in sequence), and how many leaves each group has: 1 + 9 + 90 = 100 steps.
const GROUPS: usize = 9;
/// See [`GROUPS`].
const LEAVES: usize = 10;

/// actions.toml of the 100-step change. `root` makes the `leaves` and `par` objects and the
/// `seq_count` counter, then runs the groups in sequence. Every leaf sets its own
/// `leaves.g<i>l<j>` (environment); a leaf of a parallel group also sets its own `par.g<i>l<j>`
/// (project); a leaf of a sequential group increments `seq_count` (environment) and overwrites
/// `last_seq` (project). Parallel siblings write disjoint keys, so an uninterrupted run always
/// ends with the same properties.
fn hundred_step_actions() -> String {
    let groups: Vec<String> = (0..GROUPS).map(|i| format!("\"g{i}\"")).collect();
    let mut toml = format!(
        "[actions.root]\nrun = '''\nopschain-runner property set --environment --json leaves '{{}}'\n\
         opschain-runner property set --environment --json seq_count 0\n\
         opschain-runner property set --project --json par '{{}}'\n'''\nsteps = [{}]\n",
        groups.join(", ")
    );
    for i in 0..GROUPS {
        let parallel = i % 2 == 0;
        let leaves: Vec<String> = (0..LEAVES).map(|j| format!("\"g{i}l{j}\"")).collect();
        toml.push_str(&format!("\n[actions.g{i}]\nsteps = [{}]\nrun_as = \"{}\"\n", leaves.join(", "), if parallel { "parallel" } else { "sequential" }));
        for j in 0..LEAVES {
            let name = format!("g{i}l{j}");
            let own = if parallel {
                format!("opschain-runner property set --project --json par.{name} {j}")
            } else {
                format!(
                    "opschain-runner property set --environment --json seq_count \"$(( $(opschain-runner property get seq_count) + 1 ))\"\n\
                     opschain-runner property set --project last_seq {name}"
                )
            };
            toml.push_str(&format!("\n[actions.{name}]\nrun = '''\nopschain-runner property set --environment leaves.{name} done\n{own}\n'''\n"));
        }
    }
    toml
}

/// (depth, action, status) of every step of change 1, in tree order: the shape to compare.
fn tree_shape(state: &Path) -> Vec<(usize, String, String)> {
    steps(state, 1).into_iter().map(|s| (s.depth, s.action, s.status)).collect()
}

/// Starts `opschain args` with its stdout and stderr appended to the file `log`.
fn spawn_logged(state: &Path, args: &[&str], log: &Path) -> Child {
    common::make_target_of(state, args);
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    opschain(state).args(args).stdout(file.try_clone().unwrap()).stderr(file).spawn().unwrap()
}

/// Starts `opschain change run` of the 100-step change's `root` in project `p`, environment `dev`,
/// its output appended to `log`.
fn start_hundred(state: &Path, repo: &Path, log: &Path) -> Child {
    spawn_logged(state, &["change", "run", "--repo", repo.to_str().unwrap(), "--project", "p", "--environment", "dev", "--action", "root"], log)
}

/// Waits until change 1 has at least `target` successful steps or `controller` exited; returns
/// how many steps had succeeded. Panics after 5 minutes without either.
fn wait_for_successes(state: &Path, controller: &mut Child, target: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = steps(state, 1).iter().filter(|s| s.status == "success").count();
        if done >= target || controller.try_wait().unwrap().is_some() {
            return done;
        }
        assert!(Instant::now() < deadline, "change 1 made no progress past {done} successful steps in 5 minutes");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn kill_9_at_random_moments_of_a_100_step_change_then_retry_gives_the_uninterrupted_result() {
    let seed = seed("kill_9_at_random_moments_of_a_100_step_change");
    let mut rng = Rng(seed);
    let repo = project(&hundred_step_actions());

    let whole = tempfile::tempdir().unwrap();
    common::make_target(whole.path(), "p", "dev");
    let out = opschain(whole.path())
        .args(["change", "run", "--repo", repo.path().to_str().unwrap(), "--project", "p", "--environment", "dev", "--action", "root"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "the uninterrupted run failed:\n{}", text(&out));
    let expected_tree = tree_shape(whole.path());
    assert_eq!(expected_tree.len(), 1 + GROUPS + GROUPS * LEAVES, "the change has not 100 steps: {expected_tree:?}");
    assert!(expected_tree.iter().all(|s| s.2 == "success"), "the uninterrupted run: {expected_tree:?}");
    let expected_env = props(whole.path(), &["--project", "p", "--environment", "dev"]);
    let expected_project = props(whole.path(), &["--project", "p"]);
    assert_eq!(expected_env["seq_count"], json!((GROUPS / 2) * LEAVES), "the uninterrupted run's counter");
    let expected_versions = (history(whole.path(), &["--project", "p"]).len(), history(whole.path(), &["--project", "p", "--environment", "dev"]).len());

    // Kill the controller KILLS times, each when the change has a random number of successful
    // steps (at most 95 of 100; the targets in increasing order, to spread the kills over the
    // change) plus a random delay; a target already reached kills the retry a random delay after
    // it started. After each kill, retry (or run again when the kill came before the change was
    // recorded).
    const KILLS: usize = 5;
    let mut targets: Vec<usize> = (0..KILLS).map(|_| rng.between(1, 95) as usize).collect();
    targets.sort_unstable();
    let state = tempfile::tempdir().unwrap();
    let state = state.path();
    let log = state.join("controllers.log");
    let mut controller = start_hundred(state, repo.path(), &log);
    let mut interrupted = 0;
    let mut finished = false;
    for (kill, &target) in targets.iter().enumerate() {
        let delay = Duration::from_millis(rng.between(0, 400));
        let reached = wait_for_successes(state, &mut controller, target);
        std::thread::sleep(delay);
        let exited = kill_9(&mut controller);
        println!(
            "kill {kill}: {} at {reached} successful steps (target {target}) + {delay:?}",
            if exited.is_none() { "interrupted the controller" } else { "came after the controller ended" }
        );
        if let Some(status) = exited {
            // A controller that was not killed ran the change to its end: it must have succeeded.
            let output = std::fs::read_to_string(&log).unwrap();
            assert!(status.success(), "a controller that was not killed ended {status} (seed {seed}):\n{output}");
            assert!(run_ok(state, &["change", "show", "1"]).starts_with("change 1 success"), "the controller ended 0 but the change did not succeed (seed {seed})");
            finished = true;
            break;
        }
        interrupted += 1;
        let recorded = run(state, &["change", "show", "1"]).status.success();
        controller = if recorded { spawn_logged(state, &["change", "retry", "1"], &log) } else { start_hundred(state, repo.path(), &log) };
    }
    if !finished {
        // The retry after the last kill runs undisturbed: it completes the change.
        let status = controller.wait().unwrap();
        let output = std::fs::read_to_string(&log).unwrap();
        assert!(status.success(), "the retry after the last kill ended {status} (seed {seed}):\n{output}\n{}", run_ok(state, &["change", "show", "1"]));
    }
    assert!(interrupted >= 1, "no kill interrupted the controller (seed {seed})");
    let output = std::fs::read_to_string(&log).unwrap();
    assert!(!output.contains("panicked"), "a controller or agent panicked (seed {seed}):\n{output}");

    let tree = tree_shape(state);
    assert!(tree.iter().all(|s| s.2 == "success"), "not every step succeeded (seed {seed}):\n{}", run_ok(state, &["change", "show", "1"]));
    assert_eq!(tree, expected_tree, "the step tree differs from the uninterrupted run's (seed {seed})");
    assert_eq!(props(state, &["--project", "p", "--environment", "dev"]), expected_env, "environment properties differ from the uninterrupted run's (seed {seed})");
    assert_eq!(props(state, &["--project", "p"]), expected_project, "project properties differ from the uninterrupted run's (seed {seed})");
    // Exactly once: as many versions as the uninterrupted run, each made by a distinct step of
    // the final tree, numbered without a gap.
    let ids: BTreeSet<i64> = steps(state, 1).iter().map(|s| s.id).collect();
    for (what, args, expected) in
        [("project", &["--project", "p"][..], expected_versions.0), ("environment", &["--project", "p", "--environment", "dev"], expected_versions.1)]
    {
        let versions = history(state, args);
        assert_gap_free(what, &versions);
        assert_eq!(versions.len(), expected, "{what}: {} versions, the uninterrupted run made {expected} (seed {seed}): {versions:?}", versions.len());
        let by: Vec<i64> = versions.iter().skip(1).map(|v| v.step.unwrap_or_else(|| panic!("{what} v{} was made by no step", v.version))).collect();
        let distinct: BTreeSet<i64> = by.iter().copied().collect();
        assert_eq!(distinct.len(), by.len(), "a step made two {what} versions (its diff applied twice) (seed {seed}): {by:?}");
        assert!(distinct.is_subset(&ids), "a {what} version was made by a step no longer in the tree (seed {seed}): {by:?}");
    }
    println!("{interrupted} of {KILLS} kills interrupted the controller");
}

// ---------------------------------------------------------------------------------------------
// Several processes opening a new store at once.

#[test]
fn commands_opening_a_new_store_at_once_all_succeed() {
    // The first opener switches the new database to WAL; SQLite answers SQLITE_BUSY at once, with
    // no busy wait, to whoever opens it meanwhile. (The 100-step test met it as a `change run`
    // that failed because the test's first `change show` opened the store at the same moment.)
    const ROUNDS: usize = 50;
    const AT_ONCE: usize = 6;
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        let state = tempfile::tempdir().unwrap();
        let children: Vec<Child> = (0..AT_ONCE)
            .map(|i| opschain(state.path()).args(["project", "create", "--code", &format!("p{i}")]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap())
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            if !out.status.success() {
                failures.push(format!("round {round}: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {} commands failed to open a new store:\n{}", failures.len(), ROUNDS * AT_ONCE, failures.join("\n"));
}

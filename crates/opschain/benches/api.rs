//! `opschain server` against its own store, side by side in one run (BENCHMARKS.md; run by
//! `benches/api.sh`):
//! 1. a store of CHANGES changes (default 100,000) and LINES log lines (default 10,000,000: 1,000
//!    changes of 10,000 lines, in chunks of 100 as a running step stores them), written straight
//!    into SQLite;
//! 2. a page of 50 changes and a page of 1,000 log lines, ROUNDS times each (default 300), read
//!    directly from the store (in this process, the server's own code) and through the API (a
//!    keep-alive HTTP/1.1 connection to the release server): median and p99 of each;
//! 3. FOLLOWERS (default 100) clients following a change's log stream while its step prints
//!    RATE lines a second (default 1,000) for SECONDS (default 10), each line carrying the time
//!    it was printed (the step waits 3 s first, so that every follower is connected): the delay until each follower has it (p50, p99, max), lines lost or
//!    repeated, and the server's peak RSS.
//!
//! A raw HTTP/1.1 client (a few lines here) keeps the client's own cost out of the figures.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use opschain::store::{ChangeFilter, ChangeSort, Store};
use rusqlite::params;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Lines per chunk, as a step printing steadily stores them (a chunk per commit).
const CHUNK_LINES: usize = 100;
/// Lines of each change that has a log.
const LINES_PER_CHANGE: usize = 10_000;

/// Writes the store: CHANGES changes of one step, the log lines spread over changes of
/// [`LINES_PER_CHANGE`]; the ids of the changes with a log.
fn populate(dir: &Path, changes: usize, lines: usize) -> Vec<i64> {
    drop(Store::open(dir).expect("create the store"));
    let mut conn = rusqlite::Connection::open(dir.join("opschain.db")).unwrap();
    conn.execute_batch("PRAGMA synchronous = OFF").unwrap();
    let tx = conn.transaction().unwrap();
    tx.execute("INSERT INTO projects (code, name) VALUES ('bench', 'Bench')", []).unwrap();
    tx.execute("INSERT INTO properties (level, owner_id, version, json) VALUES ('project', 1, 0, '{}')", []).unwrap();
    for e in 0..100 {
        tx.execute("INSERT INTO environments (project_id, code) VALUES (1, ?1)", [format!("env{e}")]).unwrap();
        tx.execute("INSERT INTO properties (level, owner_id, version, json) VALUES ('environment', ?1, 0, '{}')", [e + 1]).unwrap();
    }
    let logged = (lines / LINES_PER_CHANGE).min(changes);
    let every = (changes / logged.max(1)).max(1);
    let mut with_logs = Vec::new();
    {
        let mut change = tx
            .prepare(
                "INSERT INTO changes (project_id, environment_id, action, repo, git_rev, commit_sha, backend, status, created_by, metadata, log_lines, created_at, started_at, finished_at)
                 VALUES (1, ?1, 'deploy', '/nonexistent', 'main', '0123456789abcdef0123456789abcdef01234567', 'process', ?2, 'bench', '{\"ticket\":\"T-1\"}', ?3, ?4, ?4, ?4)",
            )
            .unwrap();
        let mut step = tx.prepare("INSERT INTO steps (change_id, position, action, status, started_at, finished_at) VALUES (?1, 0, 'deploy', ?2, ?3, ?3)").unwrap();
        let mut chunk = tx.prepare("INSERT INTO step_log_chunks (step_id, lines, data, deflated, at, change_id, first_line) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)").unwrap();
        for i in 0..changes {
            let id = i as i64 + 1;
            let has_log = i % every == 0 && with_logs.len() < logged;
            let at = format!("2026-01-01T00:00:{:02}.{:03}Z", (i / 1000) % 60, i % 1000);
            let status = if i % 10 == 0 { "error" } else { "success" };
            change.execute(params![(i % 100) as i64 + 1, status, if has_log { LINES_PER_CHANGE as i64 } else { 0 }, at]).unwrap();
            step.execute(params![id, status, at]).unwrap();
            if has_log {
                with_logs.push(id);
                for c in 0..LINES_PER_CHANGE / CHUNK_LINES {
                    let mut data = String::with_capacity(CHUNK_LINES * 90);
                    for l in 0..CHUNK_LINES {
                        let n = c * CHUNK_LINES + l;
                        data.push_str(&format!("stdout\t2026-01-01T00:00:00.{n:06}Z deploy stdout| applying item {n} of change {id}: ok\n"));
                    }
                    let (bytes, deflated) = deflate(data.as_bytes());
                    chunk.execute(params![id, CHUNK_LINES as i64, bytes, deflated, at, id, (c * CHUNK_LINES + 1) as i64]).unwrap();
                }
            }
        }
    }
    tx.commit().unwrap();
    with_logs
}

/// `data` deflated as the store deflates a chunk.
fn deflate(data: &[u8]) -> (Vec<u8>, bool) {
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    (encoder.finish().unwrap(), true)
}

/// Median, p99 and max of `samples` in milliseconds (NaN when there is none: a follower that got
/// no line shows as such in the report rather than ending the run).
fn summary(samples: &mut [Duration]) -> (f64, f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (ms(at(0.5)), ms(at(0.99)), ms(*samples.last().unwrap()))
}

/// Times `f` `rounds` times (after a tenth as many unmeasured).
fn time(rounds: usize, mut f: impl FnMut()) -> Vec<Duration> {
    for _ in 0..rounds / 10 {
        f();
    }
    (0..rounds)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect()
}

/// A keep-alive HTTP/1.1 connection.
struct Http {
    stream: BufReader<TcpStream>,
    auth: String,
}

impl Http {
    fn connect(addr: &str, auth: &str) -> Http {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        Http { stream: BufReader::new(stream), auth: auth.to_string() }
    }

    /// Sends a request; the status line and headers (lower-cased names).
    fn request(&mut self, method: &str, path: &str, body: &str) -> (u16, Vec<(String, String)>) {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: {}\r\nContent-Type: application/vnd.api+json\r\nContent-Length: {}\r\n\r\n{body}",
            self.auth,
            body.len()
        );
        self.stream.get_mut().write_all(request.as_bytes()).unwrap();
        let mut line = String::new();
        self.stream.read_line(&mut line).unwrap();
        let status = line.split_whitespace().nth(1).unwrap_or_else(|| panic!("no status in {line:?}")).parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line).unwrap();
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                return (status, headers);
            }
            let (name, value) = trimmed.split_once(':').unwrap();
            headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
    }

    /// A whole request and response: the status and body.
    fn call(&mut self, method: &str, path: &str, body: &str) -> (u16, Vec<u8>) {
        let (status, headers) = self.request(method, path, body);
        let length: usize = headers.iter().find(|(n, _)| n == "content-length").map(|(_, v)| v.parse().unwrap()).unwrap_or(0);
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).unwrap();
        (status, body)
    }
}

/// The release binaries beside this one (target/release/deps/api-* -> target/release).
fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join(name)
}

/// Starts the server on `dir`; the process and its address.
fn start_server(dir: &Path) -> (Child, String) {
    let mut add = Command::new(bin("opschain"))
        .args(["--state-dir"])
        .arg(dir)
        .args(["user", "add", "bench", "--password-stdin", "--role", "operator"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    add.stdin.take().unwrap().write_all(b"bench-password\n").unwrap();
    add.wait().unwrap();
    let mut child = Command::new(bin("opschain"))
        .args(["--state-dir"])
        .arg(dir)
        .args(["server", "--listen", "127.0.0.1:0", "--runner-bin"])
        .arg(bin("opschain-runner"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    std::thread::spawn(move || for _ in out.lines() {});
    let url = first.split_whitespace().find(|w| w.starts_with("http://")).unwrap().trim_start_matches("http://").to_string();
    (child, url)
}

/// The process's peak RSS in MB (VmHWM).
fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    kb / 1024.0
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

/// Follows the log stream of `change` on `addr` to its end: per line, (id, delay from print to
/// arrival) of the lines that carry a print time.
fn follow(addr: &str, auth: &str, change: &str) -> Vec<(i64, Duration)> {
    let mut http = Http::connect(addr, auth);
    let (status, _) = http.request("GET", &format!("/api/changes/{change}/log_lines/stream"), "");
    assert_eq!(status, 200);
    let mut seen = Vec::new();
    let mut id = 0;
    let mut line = String::new();
    loop {
        line.clear();
        if http.stream.read_line(&mut line).unwrap() == 0 {
            return seen;
        }
        let arrived = now_ns();
        if let Some(v) = line.strip_prefix("id: ") {
            id = v.trim().parse().unwrap();
        } else if line.starts_with("event: end") {
            return seen;
        } else if let Some(data) = line.strip_prefix("data: ") {
            // HTTP/1.1 chunked framing lines are hex sizes: skipped above by the prefixes.
            if let Some(printed) = data.split("PRINTED ").nth(1).and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next()).and_then(|t| t.parse::<u128>().ok()) {
                seen.push((id, Duration::from_nanos(arrived.saturating_sub(printed) as u64)));
            }
        }
    }
}

fn main() {
    let changes = env_or("CHANGES", 100_000);
    let lines = env_or("LINES", 10_000_000);
    let rounds = env_or("ROUNDS", 300);
    let followers = env_or("FOLLOWERS", 100);
    let rate = env_or("RATE", 1000);
    let seconds = env_or("SECONDS", 10);
    let work = tempfile::Builder::new().prefix("opschain-api-bench").tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into())).unwrap();
    let dir = work.path().join("state");

    let started = Instant::now();
    let logged = populate(&dir, changes, lines);
    let db_mb = std::fs::metadata(dir.join("opschain.db")).unwrap().len() as f64 / 1e6;
    println!(
        "store: {changes} changes, {} log lines ({} changes of {LINES_PER_CHANGE}), {db_mb:.0} MB, written in {:.1} s",
        logged.len() * LINES_PER_CHANGE,
        logged.len(),
        started.elapsed().as_secs_f64()
    );
    let middle = logged[logged.len() / 2];
    let after = (LINES_PER_CHANGE / 2) as i64;

    // Directly on the store, in this process.
    let store = Store::open(&dir).unwrap();
    let mut direct_changes = time(rounds, || assert_eq!(store.change_page(&ChangeFilter::default(), ChangeSort::Newest, 50, 0).unwrap().len(), 50));
    let mut direct_lines = time(rounds, || assert_eq!(store.log_lines_after(middle, after, 1000).unwrap().len(), 1000));
    drop(store);

    // Through the API.
    let (mut server, addr) = start_server(&dir);
    let auth = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("bench:bench-password"));
    let mut http = Http::connect(&addr, &auth);
    let mut api_changes = time(rounds, || {
        let (status, body) = http.call("GET", "/api/changes?page[size]=50", "");
        assert!(status == 200 && body.len() > 50 * 300, "{status}");
    });
    let mut api_lines = time(rounds, || {
        let (status, body) = http.call("GET", &format!("/api/changes/{middle}/log_lines?filter[id_gt]={after}&page[size]=1000"), "");
        assert!(status == 200 && body.len() > 1000 * 100, "{status}");
    });
    println!("\n{:<44} {:>10} {:>10} {:>10}", "query", "median ms", "p99 ms", "max ms");
    for (name, samples) in [
        ("store: changes page of 50", &mut direct_changes),
        ("API:   GET /api/changes?page[size]=50", &mut api_changes),
        ("store: log lines page of 1,000", &mut direct_lines),
        ("API:   GET .../log_lines?page[size]=1000", &mut api_lines),
    ] {
        let (p50, p99, max) = summary(samples);
        println!("{name:<44} {p50:>10.2} {p99:>10.2} {max:>10.2}");
    }
    let ratio = |api: &mut [Duration], direct: &mut [Duration]| summary(api).0 / summary(direct).0;
    println!("API / store (medians): changes {:.2}x, log lines {:.2}x", ratio(&mut api_changes, &mut direct_changes), ratio(&mut api_lines, &mut direct_lines));
    let rss_queries = peak_rss_mb(server.id());

    // Live logs: FOLLOWERS followers of a step printing RATE lines a second.
    let repo = work.path().join("repo");
    std::fs::create_dir_all(repo.join(".opschain")).unwrap();
    let total = rate * seconds;
    let script = format!(
        "import time\ntime.sleep(3)\nstart = time.time()\nfor i in range({total}):\n    due = start + i / {rate}\n    pause = due - time.time()\n    if pause > 0:\n        time.sleep(pause)\n    print('line', i, 'PRINTED', time.time_ns(), flush=True)\n"
    );
    std::fs::write(repo.join("print.py"), script).unwrap();
    std::fs::write(repo.join(".opschain/actions.toml"), "[actions.print]\nrun = \"python3 -u print.py\"\n").unwrap();
    std::fs::write(repo.join(".opschain/properties.json"), "{}").unwrap();
    for args in [&["init", "-q", "-b", "main"][..], &["add", "-A"], &["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "bench"]] {
        assert!(Command::new("git").arg("-C").arg(&repo).args(args).status().unwrap().success());
    }
    let remote = format!("{{\"data\": {{\"type\": \"git_remotes\", \"attributes\": {{\"name\": \"origin\", \"url\": \"{}\"}}}}}}", repo.display());
    assert_eq!(http.call("POST", "/api/projects/bench/git_remotes", &remote).0, 201);
    let new = "{\"data\": {\"type\": \"changes\", \"attributes\": {\"project_code\": \"bench\", \"environment_code\": \"env0\", \"action\": \"print\", \"git_remote_name\": \"origin\", \"git_rev\": \"main\"}}}";
    // The environment is free once the queries' changes (all ended) are done with: start the
    // followers first, each on the change about to be created.
    let (status, body) = http.call("POST", "/api/changes", new);
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let change = doc["data"]["id"].as_str().unwrap().to_string();
    let results: Vec<Vec<(i64, Duration)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..followers).map(|_| s.spawn(|| follow(&addr, &auth, &change))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let rss_follow = peak_rss_mb(server.id());
    let mut delays: Vec<Duration> = Vec::new();
    let mut complete = 0;
    for got in &results {
        let ids: Vec<i64> = got.iter().map(|(id, _)| *id).collect();
        let mut unique = ids.clone();
        unique.dedup();
        if got.len() == total && unique.len() == ids.len() && ids.windows(2).all(|w| w[0] < w[1]) {
            complete += 1;
        }
        delays.extend(got.iter().map(|(_, d)| *d));
    }
    let (p50, p99, max) = summary(&mut delays);
    println!(
        "\nlive logs: {followers} followers, {rate} lines/s for {seconds} s: {complete}/{followers} got all {total} lines once, in order; delay print -> follower p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms"
    );
    println!("server peak RSS: {rss_queries:.0} MB after the queries, {rss_follow:.0} MB after the live logs");
    let _ = server.kill();
    let _ = server.wait();
}

//! Compares, in one run, `opschain_runner::diff::diff` with `json_patch::diff` and with a plain
//! `==` of the same two documents, on:
//!
//! * `properties_6mb_one_leaf`: a generated properties document of about 6 MB with one leaf
//!   changed, deep inside. Target: our diff within 2x of `==`, and at least 4x faster than
//!   `json_patch::diff`.
//! * `array_10k_prepend`: an array of 10,000 objects with one object inserted at the front.
//!
//! Python's `jsonpatch.make_patch`, the reference a user would otherwise script, is timed on the
//! same documents (written to temporary files) at the end of the run, beside our diff timed the
//! same way (median of a few runs, in this process, just before Python's).
//!
//! Run with `cargo bench --bench diff -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::{json, Map, Value};

/// A deterministic pseudo-random sequence (a 64-bit LCG), so every run diffs the same documents.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A host entry of an environment's properties.
fn host(rng: &mut Lcg, env: usize, i: usize) -> Value {
    let level = ["debug", "info", "warn"][rng.below(3) as usize];
    let tags: Vec<Value> = (0..rng.below(4)).map(|t| json!(format!("tag-{}", (t + rng.below(20))))).collect();
    json!({
        "name": format!("host-{env}-{i}"),
        "ip": format!("10.{}.{}.{}", env % 256, i / 256 % 256, i % 256),
        "port": 8000 + rng.below(1000),
        "enabled": rng.below(2) == 0,
        "weight": rng.below(1000) as f64 / 10.0,
        "tags": tags,
        "config": {
            "timeout_ms": 1000 + rng.below(9000),
            "retries": rng.below(5),
            "image": format!("registry.example/app-{}:{}.{}", rng.below(30), rng.below(10), rng.below(100)),
            "env": {
                "LOG_LEVEL": level,
                "REGION": format!("region-{}", rng.below(8)),
            },
        },
    })
}

/// A properties document of about 6 MB: a project with environments, each with settings and an
/// array of hosts.
fn properties() -> Value {
    let mut rng = Lcg(0x5eed);
    let mut environments = Map::new();
    for env in 0..40 {
        let hosts: Vec<Value> = (0..600).map(|i| host(&mut rng, env, i)).collect();
        let settings: Map<String, Value> = (0..50).map(|s| (format!("setting_{s}"), json!(format!("value-{}", rng.below(1_000_000))))).collect();
        environments.insert(format!("env-{env}"), json!({"hosts": hosts, "settings": settings, "owner": format!("team-{}", env % 7)}));
    }
    json!({
        "project": {"name": "bench", "repository": "https://git.example/bench.git", "version": 3},
        "environments": environments,
    })
}

fn bench(c: &mut Criterion) {
    let before = properties();
    let mut after = before.clone();
    if let Some(leaf) = after.pointer_mut("/environments/env-23/hosts/397/config/timeout_ms") {
        *leaf = json!(12_345);
    }
    assert_ne!(before, after, "the leaf to change is in the document");
    let size = serde_json::to_vec(&before).map_or(0, |bytes| bytes.len());
    eprintln!("properties document: {:.1} MB", size as f64 / 1e6);
    compare(c, "properties_6mb_one_leaf", &before, &after);
    // For reference: `==` stops at the first difference, so on this pair it walks only the part
    // of the document before the changed leaf; here it walks all of it.
    let copy = before.clone();
    c.bench_function("properties_6mb_one_leaf/eq_of_equal_copies", |b| b.iter(|| black_box(&before) == black_box(&copy)));

    let objects = |range: std::ops::Range<i64>| -> Value { range.map(|i| json!({"id": i, "name": format!("host-{i}"), "port": 8000 + i})).collect() };
    let (array_before, array_after) = (objects(0..10_000), objects(-1..10_000));
    compare(c, "array_10k_prepend", &array_before, &array_after);
    c.bench_function("array_10k_prepend/eq_of_equal_copies", |b| {
        let copy = array_before.clone();
        b.iter(|| black_box(&array_before) == black_box(&copy))
    });

    // Only when benchmarking: `cargo test --all-targets` runs this file once as a smoke test.
    if std::env::args().any(|a| a == "--bench") {
        python_peer("properties_6mb_one_leaf", &before, &after);
        python_peer("array_10k_prepend", &array_before, &array_after);
    }
}

/// How many times each side of the Python comparison runs; the median is reported.
const PEER_RUNS: usize = 5;

/// Times Python's `jsonpatch.make_patch` on `before` and `after` against our diff, each the median
/// of [`PEER_RUNS`] runs, and prints both and their ratio. Prints why when Python or its jsonpatch
/// module is missing (`scripts/test` installs it).
fn python_peer(name: &str, before: &Value, after: &Value) {
    let dir = std::env::temp_dir().join(format!("opschain-diff-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    let (a, b) = (dir.join("before.json"), dir.join("after.json"));
    std::fs::write(&a, serde_json::to_vec(before).expect("serialise")).expect("write before.json");
    std::fs::write(&b, serde_json::to_vec(after).expect("serialise")).expect("write after.json");
    let median = |mut times: Vec<f64>| {
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    };
    let ours = median(
        (0..PEER_RUNS)
            .map(|_| {
                let start = std::time::Instant::now();
                black_box(opschain_runner::diff::diff(black_box(before), black_box(after)));
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    let script = format!(
        "import json, statistics, sys, time, jsonpatch\n\
         a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))\n\
         times = []\n\
         for _ in range({PEER_RUNS}):\n\
         \x20   t = time.perf_counter(); p = jsonpatch.make_patch(a, b); times.append(time.perf_counter() - t)\n\
         print(statistics.median(times) * 1e3, len(p.patch))\n"
    );
    let output = std::process::Command::new("python3").arg("-c").arg(script).arg(&a).arg(&b).output();
    let _ = std::fs::remove_dir_all(&dir);
    match output {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let mut fields = text.split_whitespace();
            let python: f64 = fields.next().and_then(|f| f.parse().ok()).unwrap_or(f64::NAN);
            let ops = fields.next().unwrap_or("?");
            eprintln!("{name}: python jsonpatch.make_patch {python:.2} ms ({ops} ops), opschain_runner::diff {ours:.2} ms: {:.1}x faster", python / ours);
        }
        Ok(out) => eprintln!("{name}: python jsonpatch.make_patch not measured: {}", String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => eprintln!("{name}: python jsonpatch.make_patch not measured: cannot run python3: {e}"),
    }
}

/// Benchmarks the three ways of comparing `before` with `after` as one group.
fn compare(c: &mut Criterion, name: &str, before: &Value, after: &Value) {
    let ours = opschain_runner::diff::diff(before, after).0.len();
    let theirs = json_patch::diff(before, after).0.len();
    eprintln!("{name}: opschain_runner::diff gives {ours} ops, json_patch::diff {theirs}");
    let mut group = c.benchmark_group(name);
    group.bench_function("opschain_runner::diff", |b| b.iter(|| opschain_runner::diff::diff(black_box(before), black_box(after))));
    group.bench_function("json_patch::diff", |b| b.iter(|| json_patch::diff(black_box(before), black_box(after))));
    group.bench_function("eq", |b| b.iter(|| black_box(before) == black_box(after)));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

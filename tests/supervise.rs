//! Supervision with real processes: reaping, process groups, signals, timeouts, the
//! staged TERM/KILL of every descendant, and the streamed, masked, bounded output.
//!
//! Reaping and signal handlers are process-wide, so the tests of this file run one at a time
//! (`serial()`), and every process a test starts runs under its Supervisor: the supervisor reaps
//! every child of this process while it runs. The test threads that send signals to this process
//! stand in for `docker stop` and friends.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::getpid;
use opschain_runner::mask::Masker;
use opschain_runner::supervise::{Job, LineFormat, LogBuffer, Outcome, Reason, SuperviseError, SupervisePolicy, Supervisor};

static SERIAL: Mutex<()> = Mutex::new(());

/// One test at a time in this process; a failed test does not poison the others.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Everything written to `out`, kept in memory, with a way to wait for a piece of it.
#[derive(Clone, Default)]
struct Capture(Arc<(Mutex<Vec<u8>>, Condvar)>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (bytes, wrote) = &*self.0;
        bytes.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(buf);
        wrote.notify_all();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0 .0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }

    /// Waits until the log holds `needle`; true if it came within `timeout`.
    fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let (bytes, wrote) = &*self.0;
        let guard = bytes.lock().unwrap_or_else(PoisonError::into_inner);
        let (guard, _) = wrote.wait_timeout_while(guard, timeout, |b| !String::from_utf8_lossy(b).contains(needle)).unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&guard).contains(needle)
    }

    /// The text of the records of `stream`, in order (Text format).
    fn lines(&self, stream: &str) -> Vec<String> {
        let marker = format!(" {stream}| ");
        self.text().lines().filter_map(|l| l.split_once(&marker).map(|(_, t)| t.to_string())).collect()
    }
}

/// A short grace and reap wait, so that the tests that reach them stay quick.
fn policy() -> SupervisePolicy {
    SupervisePolicy { grace: Duration::from_millis(300), reap_wait: Duration::from_secs(3), ..SupervisePolicy::default() }
}

fn supervisor(policy: SupervisePolicy, secrets: &[&str]) -> (Supervisor, Capture) {
    let capture = Capture::default();
    let supervisor = Supervisor::new(policy, Masker::new(secrets.iter().copied()), Box::new(capture.clone())).expect("supervisor starts");
    (supervisor, capture)
}

/// A job running `script` through /bin/sh in `cwd`, with a minimal environment.
fn sh_in(cwd: &Path, script: &str) -> Job {
    Job {
        label: "test-action".into(),
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        cwd: cwd.to_path_buf(),
        env: vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())].into(),
        timeout: None,
    }
}

fn sh(script: &str) -> Job {
    sh_in(Path::new("/"), script)
}

/// The processes below this one, read straight from /proc (independently of the supervisor's own
/// walk): (pid, state) of each.
fn descendants_of_me() -> Vec<(i32, char)> {
    let mut table = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let Ok(entry) = entry else { continue };
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let state = fields[0].chars().next().unwrap_or('?');
        let ppid: i32 = fields[1].parse().expect("ppid");
        table.push((pid, ppid, state));
    }
    let mut below = Vec::new();
    let mut parents = HashSet::from([getpid().as_raw()]);
    loop {
        let found: Vec<_> = table.iter().filter(|(pid, ppid, _)| parents.contains(ppid) && !parents.contains(pid)).map(|&(pid, _, state)| (pid, state)).collect();
        if found.is_empty() {
            return below;
        }
        parents.extend(found.iter().map(|&(pid, _)| pid));
        below.extend(found);
    }
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Sends `signal` to this process once `capture` shows `ready`, from another thread (the test
/// thread is blocked in `run`).
fn signal_me_when(capture: &Capture, ready: &'static str, signal: Signal) -> std::thread::JoinHandle<bool> {
    let capture = capture.clone();
    std::thread::spawn(move || {
        let seen = capture.wait_for(ready, Duration::from_secs(10));
        kill(getpid(), signal).expect("signal this process");
        seen
    })
}

#[test]
fn exit_codes_and_killing_signals_become_the_exit_status() {
    let _serial = serial();
    let (mut sup, _log) = supervisor(policy(), &[]);

    let out = sup.run(&sh("exit 7")).expect("run");
    assert_eq!((out.reason, out.code, out.signal, out.exit_status), (Reason::Exited, Some(7), None, 7));
    assert!(!out.succeeded());

    let out = sup.run(&sh("kill -USR1 $$")).expect("run");
    assert_eq!((out.reason, out.code, out.signal, out.exit_status), (Reason::Signalled, None, Some(10), 138));

    let out = sup.run(&sh("kill -KILL $$")).expect("run");
    assert_eq!((out.reason, out.signal, out.exit_status), (Reason::Signalled, Some(9), 137));

    let out = sup.run(&sh("true")).expect("run");
    assert!(out.succeeded());
    assert_eq!(sup.cancelled(), None);
    assert_eq!(serde_json::to_string(&Reason::TimedOut).expect("json"), "\"timed_out\"");
}

#[test]
fn a_job_gets_exactly_its_environment_its_directory_and_no_stdin() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut sup, log) = supervisor(policy(), &[]);
    let mut job = sh_in(dir.path(), r#"echo "A=$A HOME=${HOME-unset} PWD=$(pwd)"; cat; echo "stdin done""#);
    job.env = [&job.env[..], &[("A".into(), "1".into())]].concat().into();
    let out = sup.run(&job).expect("run");
    assert_eq!(out.exit_status, 0);
    let canonical = dir.path().canonicalize().expect("canonical");
    assert_eq!(log.lines("stdout"), vec![format!("A=1 HOME=unset PWD={}", canonical.display()), "stdin done".to_string()]);
}

/// The state the job starts in, as its shell sees it in `/proc/$$`: a process group of its own,
/// SIGPIPE not ignored (the agent ignores it) and no signal blocked; of a name given twice, the
/// last value.
#[test]
fn a_job_starts_in_its_own_group_with_default_signals_and_the_last_value_of_a_variable() {
    let _serial = serial();
    let (mut sup, log) = supervisor(policy(), &[]);
    // The masks are read first, with builtins only: a shell waiting for a child it forked (as
    // for `$(...)`) blocks signals meanwhile.
    let script = r#"while read -r name value; do case $name in SigIgn:|SigBlk:) echo "$name $value";; esac; done < /proc/$$/status
        set -- $(sed 's/.*) //' /proc/$$/stat); echo "pid=$$ pgid=$3"; echo "TWICE=$TWICE""#;
    let mut job = sh(script);
    let twice = [("TWICE".into(), "first".into()), ("OTHER".into(), "x".into()), ("TWICE".into(), "second".into())];
    job.env = [&job.env[..], &twice].concat().into();
    let out = sup.run(&job).expect("run");
    assert_eq!(out.exit_status, 0, "{}", log.text());
    let lines = log.lines("stdout");
    let ids: Vec<&str> = lines[2].split(' ').map(|field| field.split_once('=').expect("name=value").1).collect();
    assert_eq!(ids[0], ids[1], "the job leads a process group of its own: {lines:?}");
    let mask = |name: &str| {
        let line = lines.iter().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in {lines:?}"));
        u64::from_str_radix(line.split_whitespace().nth(1).expect("a mask"), 16).expect("hex")
    };
    assert_eq!(mask("SigIgn:") & (1 << (libc::SIGPIPE - 1)), 0, "SIGPIPE is back to its default: {lines:?}");
    assert_eq!(mask("SigBlk:"), 0, "no signal is blocked: {lines:?}");
    assert_eq!(lines.last().map(String::as_str), Some("TWICE=second"));
}

#[test]
fn start_failures_are_errors_that_name_the_operation() {
    let _serial = serial();
    let (mut sup, _log) = supervisor(policy(), &[]);
    let mut job = sh("true");
    job.argv = vec!["/nonexistent/program".into()];
    match sup.run(&job) {
        Err(SuperviseError::Spawn { program, source, .. }) => {
            assert_eq!(program, OsString::from("/nonexistent/program"));
            assert_eq!(source.kind(), io::ErrorKind::NotFound);
        }
        other => panic!("expected a spawn error, got {other:?}"),
    }
    // A directory that cannot be entered, a file that cannot be executed, a NUL in an argument.
    let mut bad_dir = sh("true");
    bad_dir.cwd = "/nonexistent/directory".into();
    assert!(matches!(sup.run(&bad_dir), Err(SuperviseError::Spawn { source, .. }) if source.kind() == io::ErrorKind::NotFound));
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "#!/bin/sh\n").expect("write");
    job.argv = vec![plain.into()];
    assert!(matches!(sup.run(&job), Err(SuperviseError::Spawn { source, .. }) if source.kind() == io::ErrorKind::PermissionDenied));
    job.argv = vec!["/bin/sh".into(), "-c".into(), "true\0".into()];
    assert!(matches!(sup.run(&job), Err(SuperviseError::Spawn { source, .. }) if source.kind() == io::ErrorKind::InvalidInput));
    job.argv.clear();
    assert!(matches!(sup.run(&job), Err(SuperviseError::EmptyCommand { .. })));
    // Nothing was left behind by the failed starts.
    assert_eq!(descendants_of_me(), vec![]);
}

#[test]
fn orphans_and_zombies_are_reaped_while_the_job_runs() {
    let _serial = serial();
    let (mut sup, _log) = supervisor(policy(), &[]);
    // Three orphans come to us while the job still runs: a background sleep whose subshell
    // exits, and a double fork whose middle process (`sleep 0.2` after exec) never reaps its own
    // child, leaving a zombie that comes to us when it ends.
    let job = sh("(sleep 0.1 &); (sh -c 'sleep 0.05 & exec sleep 0.2' &); sleep 0.6");
    let probe = std::thread::spawn(|| {
        // By now every orphan has ended; each should have been reaped at once.
        std::thread::sleep(Duration::from_millis(400));
        descendants_of_me()
    });
    let out = sup.run(&job).expect("run");
    let during = probe.join().expect("probe");
    assert_eq!(out.exit_status, 0);
    assert_eq!(out.orphans_reaped, 3, "{out:?}");
    assert!(during.iter().all(|&(_, state)| state != 'Z'), "zombies during the job: {during:?}");
    assert_eq!(during.len(), 2, "only the job's shell and its sleep should run: {during:?}");
    assert_eq!(descendants_of_me(), vec![]);
}

#[test]
fn what_a_job_leaves_running_is_ended_and_reaped() {
    let _serial = serial();
    let (mut sup, log) = supervisor(policy(), &[]);
    let job = sh("(sleep 30 &); sleep 30 & exit 0");
    let out = sup.run(&job).expect("run");
    assert_eq!((out.reason, out.exit_status), (Reason::Exited, 0));
    assert_eq!(out.orphans_reaped, 2, "{out:?}");
    assert!(out.duration < Duration::from_secs(2), "SIGTERM should have ended them at once: {out:?}");
    assert!(log.text().contains("runner| the job ended and left 2 processes running: SIGTERM"), "{}", log.text());
    assert_eq!(descendants_of_me(), vec![]);
}

#[test]
fn a_timeout_kills_a_tree_that_ignores_sigterm_after_the_grace_period() {
    let _serial = serial();
    let (mut sup, log) = supervisor(policy(), &[]);
    let mut job = sh("trap '' TERM; sh -c 'sleep 30' & sleep 30; echo unreachable");
    job.timeout = Some(Duration::from_millis(200));
    let out = sup.run(&job).expect("run");
    assert_eq!((out.reason, out.exit_status, out.signal), (Reason::TimedOut, 124, Some(9)), "{out:?}");
    // 200 ms timeout + 300 ms grace, then SIGKILL.
    assert!(out.duration >= Duration::from_millis(500), "{out:?}");
    assert!(out.duration < Duration::from_secs(3), "{out:?}");
    assert_eq!(out.survivors, 0);
    let text = log.text();
    assert!(text.contains("runner| timed out after 200ms: SIGTERM to the job"), "{text}");
    assert!(text.contains("runner| grace period of 300ms over: SIGKILL"), "{text}");
    assert!(!text.contains("unreachable"));
    assert_eq!(descendants_of_me(), vec![]);
    assert_eq!(sup.cancelled(), None, "a timeout does not cancel the run");
}

#[test]
fn a_stopped_job_is_continued_to_handle_its_sigterm() {
    let _serial = serial();
    let policy = SupervisePolicy { grace: Duration::from_secs(3), ..policy() };
    let (mut sup, log) = supervisor(policy, &[]);
    let mut job = sh("trap 'echo got TERM; exit 3' TERM; kill -STOP $$; echo resumed");
    job.timeout = Some(Duration::from_millis(200));
    let out = sup.run(&job).expect("run");
    assert_eq!((out.reason, out.code), (Reason::TimedOut, Some(3)), "{out:?}");
    assert!(out.duration < Duration::from_secs(2), "it waited for SIGKILL: {out:?}");
    assert_eq!(log.lines("stdout"), vec!["got TERM"]);
}

#[test]
fn the_default_timeout_applies_to_a_job_without_one() {
    let _serial = serial();
    let policy = SupervisePolicy { default_timeout: Some(Duration::from_millis(100)), ..policy() };
    let (mut sup, _log) = supervisor(policy, &[]);
    let out = sup.run(&sh("sleep 30")).expect("run");
    assert_eq!((out.reason, out.exit_status, out.signal), (Reason::TimedOut, 124, Some(15)));
    assert!(out.duration < Duration::from_secs(2), "sleep ends at SIGTERM: {out:?}");
}

#[test]
fn a_setsid_escapee_is_killed_and_waited_for() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut sup, log) = supervisor(policy(), &[]);
    // The escapee leaves the job's session and group, and ignores SIGTERM: only the /proc walk
    // finds it, and only SIGKILL ends it.
    let job = sh_in(
        dir.path(),
        "setsid sh -c 'trap \"\" TERM; echo $$ > escapee.pid; exec sleep 100' & \
         while [ ! -s escapee.pid ]; do sleep 0.01; done; exit 0",
    );
    let out = sup.run(&job).expect("run");
    let pid: i32 = std::fs::read_to_string(dir.path().join("escapee.pid")).expect("pid file").trim().parse().expect("pid");
    assert_eq!((out.reason, out.exit_status), (Reason::Exited, 0));
    assert!(out.duration >= Duration::from_millis(300), "SIGKILL only after the grace: {out:?}");
    assert_eq!(out.orphans_reaped, 1, "{out:?}");
    assert!(!alive(pid), "the escapee {pid} outlived the job");
    assert!(log.text().contains("SIGKILL to the job's group and 1 processes"), "{}", log.text());
    assert_eq!(descendants_of_me(), vec![]);
}

#[test]
fn signals_to_the_agent_are_forwarded_to_the_job_group() {
    let _serial = serial();
    let (mut sup, log) = supervisor(policy(), &[]);
    let job = sh("trap 'echo got USR1; exit 5' USR1; echo ready; while :; do sleep 0.05; done");
    let sender = signal_me_when(&log, "stdout| ready", Signal::SIGUSR1);
    let out = sup.run(&job).expect("run");
    assert!(sender.join().expect("sender"), "the job never said ready");
    assert_eq!((out.reason, out.code), (Reason::Exited, Some(5)), "{out:?}");
    assert!(log.lines("stdout").contains(&"got USR1".to_string()), "{}", log.text());
    assert_eq!(sup.cancelled(), None, "only SIGTERM cancels");
}

/// Once the job's main process is reaped its pid, the id of the job's process group, is free and
/// may name another group; what the job left is then signalled process by process, and a
/// forwarded signal still reaches it.
#[test]
fn after_the_main_process_ends_signals_reach_what_it_left_by_pid() {
    let _serial = serial();
    let policy = SupervisePolicy { grace: Duration::from_secs(5), ..policy() };
    let (mut sup, log) = supervisor(policy, &[]);
    // The main process exits as soon as its child (same group) has set its traps (before, a
    // loaded machine could deliver the SIGTERM that follows first, and end the child); the child
    // ignores that SIGTERM and answers SIGUSR1, sent once the supervisor has reaped the main
    // process and said so.
    let dir = tempfile::tempdir().expect("tempdir");
    let job = sh_in(
        dir.path(),
        "(trap '' TERM; trap 'echo got USR1; exit 0' USR1; : > armed; while :; do sleep 0.05; done) & \
         while [ ! -e armed ]; do sleep 0.01; done; exit 0",
    );
    let sender = signal_me_when(&log, "the job ended and left", Signal::SIGUSR1);
    let out = sup.run(&job).expect("run");
    assert!(sender.join().expect("sender"), "the supervisor never reported the child: {}", log.text());
    assert_eq!((out.reason, out.exit_status), (Reason::Exited, 0), "{out:?}");
    assert!(log.lines("stdout").contains(&"got USR1".to_string()), "{}", log.text());
    assert!(out.duration < Duration::from_secs(2), "ended by the forwarded signal, not the grace period's SIGKILL: {out:?}");
    assert_eq!(descendants_of_me(), vec![]);
}

#[test]
fn a_signal_that_came_between_jobs_is_not_forwarded_to_the_next() {
    let _serial = serial();
    let (mut sup, log) = supervisor(policy(), &[]);
    assert!(sup.run(&sh("true")).expect("run").succeeded());
    kill(getpid(), Signal::SIGUSR1).expect("signal this process");
    std::thread::sleep(Duration::from_millis(100)); // the handler has long run by now
    let out = sup.run(&sh("trap 'echo got USR1' USR1; sleep 0.3; echo end")).expect("run");
    assert_eq!(out.exit_status, 0);
    assert_eq!(log.lines("stdout"), vec!["end"], "{}", log.text());
}

#[test]
fn sigterm_to_the_agent_cancels_the_job_and_every_later_one() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut sup, log) = supervisor(policy(), &[]);
    let job = sh("trap 'echo got TERM; exit 3' TERM; echo ready; sleep 30 & wait");
    let sender = signal_me_when(&log, "stdout| ready", Signal::SIGTERM);
    let out = sup.run(&job).expect("run");
    assert!(sender.join().expect("sender"), "the job never said ready");
    assert_eq!((out.reason, out.exit_status, out.code), (Reason::Cancelled, 143, Some(3)), "{out:?}");
    assert!(out.duration < Duration::from_secs(5), "{out:?}");
    assert!(log.lines("stdout").contains(&"got TERM".to_string()), "the group got no SIGTERM: {}", log.text());
    assert!(log.text().contains("runner| cancelled (SIGTERM)"));
    assert_eq!(sup.cancelled(), Some(15));
    assert_eq!(descendants_of_me(), vec![]);

    // The next job does not start.
    let next = sup.run(&sh_in(dir.path(), "touch started")).expect("run");
    assert_eq!((next.reason, next.exit_status, next.code), (Reason::Cancelled, 143, None));
    assert!(!dir.path().join("started").exists());
}

#[test]
fn sigterm_between_jobs_cancels_the_next_one_before_it_starts() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut sup, _log) = supervisor(policy(), &[]);
    assert!(sup.run(&sh("true")).expect("run").succeeded());
    kill(getpid(), Signal::SIGTERM).expect("signal this process");
    let deadline = Instant::now() + Duration::from_secs(2);
    while sup.cancelled().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(sup.cancelled(), Some(15), "cancellation is seen between jobs");
    let out = sup.run(&sh_in(dir.path(), "touch started")).expect("run");
    assert_eq!((out.reason, out.exit_status), (Reason::Cancelled, 143));
    assert!(!dir.path().join("started").exists());
}

/// Seconds since the epoch of a record's `2026-11-23T10:00:00.123456Z` stamp, checked digit by
/// digit.
fn parse_stamp(stamp: &str) -> Option<f64> {
    let b = stamp.as_bytes();
    let shape_ok = b.len() == 27
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            26 => c == b'Z',
            _ => c.is_ascii_digit(),
        });
    if !shape_ok {
        return None;
    }
    let n = |r: std::ops::Range<usize>| stamp[r].parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    // Days from civil (Hinnant), an independent check of the writer's inverse.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + n(11..13)? * 3600 + n(14..16)? * 60 + n(17..19)?;
    Some(secs as f64 + n(20..26)? as f64 / 1e6)
}

#[test]
fn records_are_stamped_labelled_and_in_arrival_order() {
    let _serial = serial();
    let (mut sup, log) = supervisor(policy(), &[]);
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
    let out = sup.run(&sh("echo one; sleep 0.05; echo two >&2; sleep 0.05; echo three")).expect("run");
    let after = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
    assert_eq!(out.exit_status, 0);
    let text = log.text();
    let records: Vec<&str> = text.lines().collect();
    assert_eq!(records.len(), 3, "{text}");
    let mut last = 0.0;
    for (record, expected) in records.iter().zip(["test-action stdout| one", "test-action stderr| two", "test-action stdout| three"]) {
        let (stamp, rest) = record.split_once(' ').expect("stamp");
        let at = parse_stamp(stamp).unwrap_or_else(|| panic!("bad stamp in {record:?}"));
        assert!(at >= before.as_secs_f64() - 1e-6 && at <= after.as_secs_f64() + 1e-6, "{record}");
        assert!(at >= last, "stamps go back: {text}");
        last = at;
        assert_eq!(rest, expected);
    }
}

#[test]
fn json_records_carry_the_same_facts() {
    let _serial = serial();
    let policy = SupervisePolicy { format: LineFormat::Json, max_line: 4, ..policy() };
    let (mut sup, log) = supervisor(policy, &[]);
    let mut job = sh("echo 'a \"quoted\" line'; echo err >&2");
    job.label = "deploy app".into();
    sup.run(&job).expect("run");
    let records: Vec<serde_json::Value> = log.text().lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    let pieces: Vec<(&str, bool, &str)> = records
        .iter()
        .map(|r| {
            assert_eq!(r["action"], "deploy app");
            assert!(parse_stamp(r["ts"].as_str().expect("ts")).is_some(), "{r}");
            (r["stream"].as_str().expect("stream"), r["cont"].as_bool().expect("cont"), r["line"].as_str().expect("line"))
        })
        .collect();
    assert_eq!(pieces, vec![("stdout", false, "a \"q"), ("stdout", true, "uote"), ("stdout", true, "d\" l"), ("stdout", true, "ine"), ("stderr", false, "err"),]);
}

#[test]
fn a_partial_line_is_released_after_idle_flush() {
    let _serial = serial();
    let policy = SupervisePolicy { idle_flush: Duration::from_millis(50), ..policy() };
    let (mut sup, log) = supervisor(policy, &[]);
    let watcher = {
        let log = log.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            log.wait_for("stdout| progress", Duration::from_secs(5)).then(|| start.elapsed())
        })
    };
    let out = sup.run(&sh("printf progress; sleep 1; echo ' done'")).expect("run");
    let seen_after = watcher.join().expect("watcher").expect("the partial line was never written");
    assert!(seen_after < Duration::from_millis(700), "held back {seen_after:?}");
    assert_eq!(out.exit_status, 0);
    let text = log.text();
    assert!(text.contains("stdout| progress\n") && text.contains("stdout+  done\n"), "{text}");
}

#[test]
fn a_secret_split_across_writes_is_masked() {
    let _serial = serial();
    // The pieces are 100 ms apart: the masker may hold the first one back that long.
    let policy = SupervisePolicy { idle_flush: Duration::from_millis(500), ..policy() };
    let (mut sup, log) = supervisor(policy, &["supersecret"]);
    let out = sup.run(&sh("printf 'sup'; sleep 0.1; printf 'ersecret\\n'; echo 'in one: supersecret.' >&2")).expect("run");
    assert_eq!(out.exit_status, 0);
    let text = log.text();
    assert!(!text.contains("supersecret") && !text.contains("ersecret"), "a secret leaked: {text}");
    assert_eq!(log.lines("stdout"), vec!["****"], "{text}");
    assert_eq!(log.lines("stderr"), vec!["in one: ****."], "{text}");
}

/// Counts the records a flood produces as they are written, keeping nothing but a partial line.
#[derive(Clone, Default)]
struct Tally(Arc<Mutex<TallyState>>);

#[derive(Default)]
struct TallyState {
    carry: Vec<u8>,
    records: HashMap<String, u64>,
    text_bytes: u64,
    longest: usize,
    dropped_noticed: u64,
    writes: u64,
    /// Sleep this long in each write: a slow log reader.
    delay: Duration,
}

impl Write for Tally {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        state.writes += 1;
        state.carry.extend_from_slice(buf);
        let end = state.carry.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let complete: Vec<u8> = state.carry.drain(..end).collect();
        for record in complete.split(|&b| b == b'\n').filter(|r| !r.is_empty()) {
            let record = String::from_utf8_lossy(record);
            let mut fields = record.splitn(4, ' ');
            let (_stamp, _label, stream, text) = (fields.next(), fields.next(), fields.next().unwrap_or(""), fields.next().unwrap_or(""));
            if stream == "runner|" {
                if let Some(count) = text.strip_suffix(" records dropped here: the log writer fell behind") {
                    state.dropped_noticed += count.parse::<u64>().expect("count");
                }
            }
            state.text_bytes += text.len() as u64;
            state.longest = state.longest.max(text.len());
            *state.records.entry(stream.to_string()).or_default() += 1;
        }
        let delay = state.delay;
        drop(state);
        std::thread::sleep(delay);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Tally {
    fn with_delay(delay: Duration) -> Tally {
        let tally = Tally::default();
        tally.0.lock().unwrap_or_else(PoisonError::into_inner).delay = delay;
        tally
    }

    fn count(&self, stream: &str) -> u64 {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).records.get(stream).copied().unwrap_or(0)
    }
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let line = status.lines().find(|l| l.starts_with(field)).expect("field");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("kB")
}

/// Runs `job` and returns its outcome with how far this process's peak memory (VmHWM, reset
/// first through clear_refs) rose above its resident memory before.
fn run_measured(sup: &mut Supervisor, job: &Job) -> (Outcome, u64) {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
    let before = status_kib("VmRSS:");
    let out = sup.run(job).expect("run");
    (out, status_kib("VmHWM:").saturating_sub(before))
}

/// 50 MB of output through a log reader slower than the job, when asked to drop rather than wait
/// (`--log-mode non-blocking`): the queue fills, records are dropped and counted, and memory stays within the bound (4 MiB queue, about twice that allocated, plus
/// the readers' buffers) where keeping everything would take over 60 MB.
#[test]
fn a_flood_of_lines_keeps_memory_bounded_and_counts_what_it_drops() {
    let _serial = serial();
    let tally = Tally::with_delay(Duration::from_millis(100));
    let policy = SupervisePolicy { log_buffer: LogBuffer::DropNewest { max_bytes: 4 * 1024 * 1024 }, ..policy() };
    let sup = Supervisor::new(policy, Masker::new(["secret-value"]), Box::new(tally.clone()));
    let mut sup = sup.expect("supervisor starts");
    let line = "x".repeat(99);
    let job = sh(&format!("yes {line} | head -n 500000"));
    let (out, grew_kib) = run_measured(&mut sup, &job);
    drop(sup); // waits for the writer to finish
    assert_eq!(out.exit_status, 0);
    assert!(out.lines_dropped > 0, "the slow writer should have made the queue overflow");
    assert_eq!(tally.count("stdout|") + out.lines_dropped, 500_000, "{out:?}");
    assert_eq!(tally.0.lock().unwrap_or_else(PoisonError::into_inner).dropped_noticed, out.lines_dropped);
    assert!(grew_kib < 24 * 1024, "peak memory rose by {grew_kib} KiB");
}

/// A 10 MB line without a newline is cut into max_line pieces, nothing lost, memory bounded.
#[test]
fn a_huge_line_without_newline_is_cut_into_continuations() {
    let _serial = serial();
    let tally = Tally::default();
    let policy = SupervisePolicy { log_buffer: LogBuffer::Backpressure { max_bytes: 1024 * 1024 }, ..policy() };
    let mut sup = Supervisor::new(policy, Masker::new(["secret-value"]), Box::new(tally.clone())).expect("supervisor");
    let job = sh("head -c 10485760 /dev/zero | tr '\\0' x");
    let (out, grew_kib) = run_measured(&mut sup, &job);
    drop(sup);
    assert_eq!((out.exit_status, out.lines_dropped), (0, 0));
    let state = tally.0.lock().unwrap_or_else(PoisonError::into_inner);
    assert_eq!(state.records.get("stdout|"), Some(&1));
    assert_eq!(state.records.get("stdout+"), Some(&159), "10 MiB in 64 KiB pieces");
    assert_eq!(state.text_bytes, 10_485_760);
    assert_eq!(state.longest, 64 * 1024);
    assert!(grew_kib < 16 * 1024, "peak memory rose by {grew_kib} KiB");
}

#[test]
fn backpressure_loses_nothing_with_a_slow_writer() {
    let _serial = serial();
    let capture = Capture::default();
    let slow = SlowWriter { inner: capture.clone(), delay: Duration::from_millis(2) };
    let policy = SupervisePolicy { log_buffer: LogBuffer::Backpressure { max_bytes: 16 * 1024 }, ..policy() };
    let mut sup = Supervisor::new(policy, Masker::default(), Box::new(slow)).expect("supervisor");
    let out = sup.run(&sh("seq 1 100000")).expect("run");
    drop(sup);
    assert_eq!((out.exit_status, out.lines_dropped), (0, 0));
    let expected: Vec<String> = (1..=100_000).map(|n| n.to_string()).collect();
    assert!(capture.lines("stdout") == expected, "lines lost or out of order");
}

/// A log reader that stalls: for `first` before its first write, and for `later` once `after`
/// bytes have been written (once each).
struct Stalling {
    inner: Capture,
    first: Option<Duration>,
    later: Option<(usize, Duration)>,
    written: usize,
}

impl Stalling {
    fn new(first: Duration, later: Option<(usize, Duration)>) -> (Stalling, Capture) {
        let inner = Capture::default();
        let writer = Stalling { inner: inner.clone(), first: Some(first), later, written: 0 };
        (writer, inner)
    }
}

impl Write for Stalling {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(stall) = self.first.take() {
            std::thread::sleep(stall);
        }
        if let Some((after, stall)) = self.later {
            if self.written >= after {
                self.later = None;
                std::thread::sleep(stall);
            }
        }
        self.written += buf.len();
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The default: a million numbered lines through a reader that stalls for a second at the start
/// and again near the end all arrive, each once, in order; the job waits for the log instead.
#[test]
fn by_default_a_stalling_reader_loses_none_of_a_million_lines() {
    let _serial = serial();
    // About 56 MB of records; the second stall comes with the last few MB still to write.
    let (stalling, capture) = Stalling::new(Duration::from_secs(1), Some((50_000_000, Duration::from_secs(1))));
    let policy = SupervisePolicy { reap_wait: Duration::from_millis(500), ..SupervisePolicy::default() };
    assert!(matches!(policy.log_buffer, LogBuffer::Backpressure { .. }));
    let mut sup = Supervisor::new(policy, Masker::new(["not-in-the-output"]), Box::new(stalling)).expect("supervisor");
    let out = sup.run(&sh("seq 1 1000000")).expect("run");
    drop(sup);
    assert_eq!((out.exit_status, out.lines_dropped), (0, 0), "{out:?}");
    let lines = capture.lines("stdout");
    assert_eq!(lines.len(), 1_000_000, "every line once");
    let first_wrong = lines.iter().enumerate().find(|(i, line)| line.parse::<usize>().ok() != Some(i + 1));
    assert_eq!(first_wrong, None, "lines in order, none lost or repeated");
    assert!(!capture.text().contains("dropped"));
}

/// Once the job's processes are gone, its pipes are read to their end even when the log writer
/// is stuck for longer than `reap_wait`: the output waiting in the pipe is not abandoned.
#[test]
fn the_pipes_are_drained_to_their_end_after_the_job_is_gone() {
    let _serial = serial();
    let (stalling, capture) = Stalling::new(Duration::from_secs(2), None);
    let policy = SupervisePolicy { reap_wait: Duration::from_millis(300), log_buffer: LogBuffer::Backpressure { max_bytes: 16 * 1024 }, ..policy() };
    let mut sup = Supervisor::new(policy, Masker::default(), Box::new(stalling)).expect("supervisor");
    // About 40 KB: the pipe takes it all, so `seq` is gone at once while the queue is full.
    let out = sup.run(&sh("seq 1 9000")).expect("run");
    drop(sup);
    assert_eq!((out.exit_status, out.lines_dropped), (0, 0), "{out:?}");
    let expected: Vec<String> = (1..=9000).map(|n| n.to_string()).collect();
    assert!(capture.lines("stdout") == expected, "{}", capture.text());
}

/// A background process that keeps the pipes open after the job's main process exited is ended
/// as the supervision rules say (SIGTERM, then SIGKILL after the grace), and every line it
/// printed before it was stopped is logged, in order, even though the log reader stalled.
#[test]
fn a_background_process_holding_the_pipe_is_stopped_and_its_output_kept() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let (stalling, capture) = Stalling::new(Duration::from_secs(2), None);
    let policy = SupervisePolicy { log_buffer: LogBuffer::Backpressure { max_bytes: 16 * 1024 }, ..policy() };
    let mut sup = Supervisor::new(policy, Masker::default(), Box::new(stalling)).expect("supervisor");
    // `echo` is a builtin: each line is one write(2), done (or not) before `count` is written.
    let job = sh_in(
        dir.path(),
        "(i=0; while [ $i -lt 1000000 ]; do i=$((i+1)); echo \"bg $i\"; echo $i >> count; done) & \
         sleep 0.5; echo main done",
    );
    let out = sup.run(&job).expect("run");
    drop(sup);
    assert_eq!((out.reason, out.exit_status, out.lines_dropped), (Reason::Exited, 0, 0), "{out:?}");
    let text = capture.text();
    assert!(text.contains("runner| the job ended and left"), "{text}");
    let lines = capture.lines("stdout");
    assert!(lines.contains(&"main done".to_string()), "{text}");
    let bg: Vec<&String> = lines.iter().filter(|l| l.starts_with("bg ")).collect();
    let expected: Vec<String> = (1..=bg.len()).map(|n| format!("bg {n}")).collect();
    assert!(bg.iter().copied().eq(expected.iter()), "the background lines have a gap");
    // The last number appended to `count`: the lines printed for sure.
    let counted: usize = std::fs::read_to_string(dir.path().join("count")).expect("count").lines().last().and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(bg.len() == counted || bg.len() == counted + 1, "printed {counted} lines (or one more), logged {}", bg.len());
    assert!(bg.len() < 1_000_000, "it was stopped, not finished");
}

struct SlowWriter {
    inner: Capture,
    delay: Duration,
}

impl Write for SlowWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        std::thread::sleep(self.delay);
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A log reader that hangs until released.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>, Capture);

impl Write for Gate {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (open, opened) = &*self.0;
        let guard = open.lock().unwrap_or_else(PoisonError::into_inner);
        drop(opened.wait_while(guard, |open| !*open).unwrap_or_else(PoisonError::into_inner));
        self.1.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_stuck_log_reader_never_stalls_the_job() {
    let _serial = serial();
    let gate = Gate::default();
    let policy = SupervisePolicy { log_buffer: LogBuffer::DropNewest { max_bytes: 64 * 1024 }, drain_wait: Duration::from_millis(200), ..policy() };
    let mut sup = Supervisor::new(policy, Masker::default(), Box::new(gate.clone())).expect("supervisor");
    let out = sup.run(&sh("seq 1 200000; echo done >&2")).expect("run");
    assert_eq!(out.exit_status, 0);
    assert!(out.duration < Duration::from_secs(5), "the job waited for the log: {out:?}");
    assert!(out.lines_dropped > 190_000, "{out:?}");
    // Let the reader go: what was queued comes out, with the count of what was not.
    *gate.0 .0.lock().unwrap_or_else(PoisonError::into_inner) = true;
    gate.0 .1.notify_all();
    drop(sup);
    let text = gate.1.text();
    let noticed: u64 = text
        .lines()
        .filter_map(|l| l.split_once("runner| ")?.1.strip_suffix(" records dropped here: the log writer fell behind"))
        .map(|n| n.parse::<u64>().expect("count"))
        .sum();
    assert_eq!(noticed, out.lines_dropped, "{text}");
    let kept = gate.1.lines("stdout").len() as u64 + gate.1.lines("stderr").len() as u64;
    assert_eq!(kept + out.lines_dropped, 200_001);
}

/// A log that cannot be written at all.
struct Broken;

impl Write for Broken {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::from(io::ErrorKind::BrokenPipe))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_broken_log_counts_every_record_as_dropped_and_the_job_still_runs() {
    let _serial = serial();
    let mut sup = Supervisor::new(policy(), Masker::default(), Box::new(Broken)).expect("supervisor");
    let out = sup.run(&sh("echo a; sleep 0.1; echo b >&2; exit 4")).expect("run");
    assert_eq!((out.reason, out.code, out.lines_dropped), (Reason::Exited, Some(4), 2));
}

/// The orphan test again, as PID 1 of a PID namespace of its own (where the supervisor does not
/// need to be a subreaper: orphans come to PID 1). Started by `as_pid_1_orphans_are_reaped_too`
/// through `unshare`; fails when run any other way.
#[test]
#[ignore = "runs as PID 1 of a new PID namespace, started by as_pid_1_orphans_are_reaped_too"]
fn pid_1_inner() {
    assert_eq!(getpid().as_raw(), 1, "run by as_pid_1_orphans_are_reaped_too, not by itself");
    let (mut sup, _log) = supervisor(policy(), &[]);
    let job = sh("(sleep 0.1 &); (sh -c 'sleep 0.05 & exec sleep 0.2' &); sleep 30 & sleep 0.4");
    let out = sup.run(&job).expect("run");
    assert_eq!((out.exit_status, out.orphans_reaped), (0, 4), "{out:?}");
    assert_eq!(descendants_of_me(), vec![]);
}

#[test]
fn as_pid_1_orphans_are_reaped_too() {
    let _serial = serial();
    let (mut sup, log) = supervisor(policy(), &[]);
    let exe = std::env::current_exe().expect("test binary");
    let mut job = sh("true");
    job.argv = ["unshare", "--pid", "--fork", "--mount-proc"]
        .into_iter()
        .map(OsString::from)
        .chain([exe.into_os_string()])
        .chain(["--exact", "pid_1_inner", "--ignored", "--test-threads=1"].map(OsString::from))
        .collect();
    let out = sup.run(&job).expect("run unshare");
    let text = log.text();
    assert_eq!(out.exit_status, 0, "{text}");
    assert!(text.contains("stdout| test result: ok. 1 passed"), "{text}");
}

//! A real PostgreSQL 15 for the tests, started once per test process and stopped when it exits:
//! `initdb` in a temporary directory (as the `postgres` user when the tests run as root: initdb
//! refuses root), a private socket directory, a free loopback port, `fsync` off (the tests do not
//! survive a power loss). Each test gets a database of its own ([`database`]).
//!
//! The server is a child of a guard shell that reads its standard input: when the test process
//! ends (however it ends), the pipe closes, and the guard stops the server (fast shutdown) and
//! removes the directory. Used by the library's unit tests (through `#[path]`) and by `tests/it`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Where Debian's PostgreSQL 15 binaries are.
pub const BIN: &str = "/usr/lib/postgresql/15/bin";

/// The running server: its port, socket directory and guard.
struct Server {
    port: u16,
    socket_dir: PathBuf,
    /// The guard shell; its stdin is held open for the life of the process.
    _guard: Mutex<Child>,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A free loopback port (bound then released: the server binds it just after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether this process runs as root (then PostgreSQL runs as `postgres`).
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `program` of [`BIN`], run as `postgres` when this process is root.
fn pg_command(program: &str) -> Command {
    let path = format!("{BIN}/{program}");
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(path)
    }
}

fn start() -> Server {
    assert!(std::path::Path::new(&format!("{BIN}/initdb")).exists(), "PostgreSQL 15 is not installed ({BIN}): `apt-get install postgresql` (scripts/test does it)");
    let dir = tempfile::Builder::new().prefix("opschain-pg-test-").tempdir().unwrap().keep();
    let (data, sock) = (dir.join("data"), dir.join("sock"));
    std::fs::create_dir(&sock).unwrap();
    if is_root() {
        assert!(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status().unwrap().success(), "chown the test cluster's directory");
    }
    let out = pg_command("initdb").args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "-D"]).arg(&data).output().unwrap();
    assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
    let port = free_port();
    let as_postgres = if is_root() { "runuser -u postgres -- " } else { "" };
    // The guard: the server in the background, stopped by pg_ctl (fast shutdown: the server
    // itself, not runuser, which passes no signal on) once stdin closes.
    let script = format!(
        "{as_postgres}{BIN}/postgres -D '{data}' -k '{sock}' -p {port} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200 >'{dir}/log' 2>&1 &
         pid=$!; cat >/dev/null; {as_postgres}{BIN}/pg_ctl -D '{data}' -m fast -w stop >/dev/null 2>&1; wait $pid; rm -rf '{dir}'",
        data = data.display(),
        sock = sock.display(),
        dir = dir.display(),
    );
    let guard = Command::new("sh").args(["-c", &script]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = Command::new(format!("{BIN}/pg_isready")).args(["-q", "-h"]).arg(&sock).args(["-p", &port.to_string()]).status().unwrap();
        if ready.success() {
            break;
        }
        assert!(Instant::now() < deadline, "PostgreSQL did not start: {}", std::fs::read_to_string(dir.join("log")).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(100));
    }
    Server { port, socket_dir: sock, _guard: Mutex::new(guard) }
}

/// The URL of the shared server's database `postgres` (the cluster's superuser).
fn admin_url(server: &Server) -> String {
    format!("host={} port={} user=postgres dbname=postgres", server.socket_dir.display(), server.port)
}

/// A new, empty database of the shared test server (started on first use): its connection
/// string (key=value, over the private socket).
pub fn database() -> String {
    let server = SERVER.get_or_init(start);
    let name = format!("t{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
    let out = Command::new(format!("{BIN}/psql")).args(["-q", "-v", "ON_ERROR_STOP=1", &admin_url(server), "-c", &format!("CREATE DATABASE {name}")]).output().unwrap();
    assert!(out.status.success(), "create database {name}: {}", String::from_utf8_lossy(&out.stderr));
    format!("host={} port={} user=postgres dbname={name}", server.socket_dir.display(), server.port)
}

/// `pg_dump` of the database of `url` (a [`database`] string), as SQL text.
pub fn dump(url: &str) -> Vec<u8> {
    let out = Command::new(format!("{BIN}/pg_dump")).args(["-d", url]).output().unwrap();
    assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

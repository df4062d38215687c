//! The process table as Linux shows it in `/proc`: the one reader of `/proc/<pid>/stat`, used by
//! the agent's supervision (descendants and their process groups), the controller's session sweep
//! and its check that a recorded controller still runs.

use std::io;

/// The fields of one `/proc/<pid>/stat` line that the crate reads: `pid (comm) state ppid pgrp
/// session ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// The process id.
    pub pid: i32,
    /// The state letter: `R` running, `S` sleeping, `Z` zombie (ended, not yet reaped), ...
    pub state: char,
    /// The parent's process id (0 for the kernel's own).
    pub ppid: i32,
    /// The process group id.
    pub pgrp: i32,
    /// The session id.
    pub session: i32,
}

impl Stat {
    /// Parses one `/proc/<pid>/stat` line; `None` when it is not of that shape. The command name
    /// in parentheses may hold spaces and parentheses itself, so the fields after it are counted
    /// from the last `)`.
    pub fn parse(line: &str) -> Option<Stat> {
        let (head, rest) = line.rsplit_once(')')?;
        let pid = head.split_once(" (")?.0.trim().parse().ok()?;
        let mut fields = rest.split_ascii_whitespace();
        let mut state = fields.next()?.chars();
        let (Some(state), None) = (state.next(), state.next()) else {
            return None;
        };
        let mut number = || fields.next()?.parse::<i32>().ok();
        Some(Stat { pid, state, ppid: number()?, pgrp: number()?, session: number()? })
    }

    /// Whether the process has ended and waits to be reaped.
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }
}

/// Reads `/proc/<pid>/stat`. `Ok(None)` when there is no such process (it may have ended between
/// a listing and the read: ENOENT, or ESRCH for one being torn down) or its line cannot be parsed;
/// any other failure to read is an error.
pub fn stat(pid: i32) -> io::Result<Option<Stat>> {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(line) => Ok(Stat::parse(&line)),
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The process ids listed in `/proc`, each as the directory listing yields it (an entry that
/// cannot be read is an error the caller may skip). Fails when `/proc` cannot be listed.
pub fn pids() -> io::Result<impl Iterator<Item = io::Result<i32>>> {
    Ok(std::fs::read_dir("/proc")?.filter_map(|entry| match entry {
        Ok(entry) => entry.file_name().to_str().and_then(|name| name.parse().ok()).map(Ok),
        Err(e) => Some(Err(e)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_counts_fields_from_the_last_parenthesis() {
        let stat = Stat::parse("42 (a) b) c) S 7 9 11 0 -1").unwrap();
        assert_eq!(stat, Stat { pid: 42, state: 'S', ppid: 7, pgrp: 9, session: 11 });
        assert_eq!(Stat::parse("1 (sh) Z 0 1 1 0\n").map(|s| s.is_zombie()), Some(true));
        assert_eq!(Stat::parse("1 (sh R 0 1 1"), None, "no closing parenthesis");
        assert_eq!(Stat::parse("1 (sh) R 0 1"), None, "no session");
        assert_eq!(Stat::parse("x (sh) R 0 1 1"), None, "no pid");
        assert_eq!(Stat::parse("1 (sh) RS 0 1 1"), None, "a state is one letter");
    }

    #[test]
    fn this_process_reads_as_itself() {
        let me = stat(std::process::id() as i32).unwrap().unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
        assert_eq!(me.ppid, nix::unistd::getppid().as_raw());
        assert_eq!(me.pgrp, nix::unistd::getpgrp().as_raw());
        assert_eq!(me.session, nix::unistd::getsid(None).unwrap().as_raw());
        assert!(!me.is_zombie());
    }

    #[test]
    fn an_ended_child_is_a_zombie_until_reaped_then_gone() {
        let mut child = std::process::Command::new("/bin/true").spawn().unwrap();
        let pid = child.id() as i32;
        // Wait for the end without reaping, so that the zombie stays.
        let flags = nix::sys::wait::WaitPidFlag::WEXITED | nix::sys::wait::WaitPidFlag::WNOWAIT;
        nix::sys::wait::waitid(nix::sys::wait::Id::Pid(nix::unistd::Pid::from_raw(pid)), flags).unwrap();
        assert!(stat(pid).unwrap().unwrap().is_zombie());
        assert!(pids().unwrap().any(|p| p.unwrap() == pid));
        child.wait().unwrap();
        assert_eq!(stat(pid).unwrap(), None);
    }
}

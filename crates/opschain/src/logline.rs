//! Reading a stored step log line back: what it is, in the agent's own formats.
//!
//! A step's log holds what its agent printed, line by line:
//! * the action's output, one record per line: `<time> <action> <stream>| <text>` (`+` for `|`
//!   when the record continues a line too long for one; see [`opschain_runner::supervise`]);
//! * the agent's phase records (tracing's text format): `<time>  INFO <message> key=value ...`,
//!   with `WARN`, `ERROR`, `DEBUG` or `TRACE` for `INFO`;
//! * the agent's own failure, the last thing it prints before it exits: `opschain-runner:
//!   <error>`;
//! * what the controller's backend adds (`opschain: checked out ...`, an image build's output).
//!
//! [`classify`] tells them apart, so that `change create` and `change show-logs` can print the
//! action's lines alone (the phase records at `--verbose`), each with at most one time, and a
//! failed step's summary can carry the agent's own error line.

/// What a stored log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind<'a> {
    /// A line of the action's output.
    Action {
        /// When the agent read it (RFC 3339, UTC).
        at: &'a str,
        /// The action's name.
        action: &'a str,
        /// `stdout` or `stderr` of the action.
        stream: &'a str,
        /// Whether it continues the previous record of its stream.
        cont: bool,
        /// The text.
        text: &'a str,
    },
    /// A phase record of the agent.
    Record {
        /// When it was written.
        at: &'a str,
        /// `INFO`, `WARN`, `ERROR`, `DEBUG` or `TRACE`.
        level: &'a str,
        /// The message and its fields.
        text: &'a str,
    },
    /// The agent's own failure (`opschain-runner: ` taken off).
    AgentError(&'a str),
    /// Anything else: the backend's own lines, an image build's output.
    Other(&'a str),
}

/// The agent's prefix of its own failure.
const AGENT_PREFIX: &str = "opschain-runner: ";

/// What `line` is.
pub fn classify(line: &str) -> Kind<'_> {
    if let Some(error) = line.strip_prefix(AGENT_PREFIX) {
        return Kind::AgentError(error);
    }
    let Some((at, rest)) = line.split_once(' ') else {
        return Kind::Other(line);
    };
    if !is_time(at) {
        return Kind::Other(line);
    }
    // An action's record first: an action may be named like a level, a level never has a
    // stream after it.
    if let Some((action, after)) = rest.split_once(' ') {
        for stream in ["stdout", "stderr"] {
            let Some(after) = after.strip_prefix(stream) else { continue };
            let (cont, text) = match after.as_bytes().first() {
                Some(b'|') => (false, &after[1..]),
                Some(b'+') => (true, &after[1..]),
                _ => continue,
            };
            let text = text.strip_prefix(' ').unwrap_or(text);
            return Kind::Action { at, action, stream, cont, text };
        }
    }
    // tracing pads the level to five characters: `  INFO msg`, ` ERROR msg`.
    let trimmed = rest.trim_start_matches(' ');
    for level in ["INFO", "WARN", "ERROR", "DEBUG", "TRACE"] {
        if let Some(text) = trimmed.strip_prefix(level).and_then(|t| t.strip_prefix(' ')) {
            return Kind::Record { at, level, text };
        }
    }
    Kind::Other(line)
}

/// Whether `s` looks like the agent's time stamp: `2026-01-02T03:04:05.678901Z`.
fn is_time(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20 && b[4] == b'-' && b[10] == b'T' && b.last() == Some(&b'Z') && b[..4].iter().all(u8::is_ascii_digit)
}

/// `text` with the step sandbox's path taken off every path in it: the agent names its files by
/// their absolute path in the sandbox (`/.../sandboxes/change-3/step-8-.../.opschain/actions.toml`),
/// which the user knows as `.opschain/actions.toml` of their repository.
pub fn without_sandbox(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("/sandboxes/change-") {
        let token_start = rest[..i].rfind(|c: char| c.is_whitespace() || c == '"' || c == '\'').map_or(0, |j| j + 1);
        let after = &rest[i..];
        let step = after.find("/step-").filter(|&s| !after[..s].contains(char::is_whitespace));
        let end = step.and_then(|s| after[s + 1..].find('/').map(|e| i + s + 1 + e + 1));
        match end {
            Some(end) => {
                out.push_str(&rest[..token_start]);
                rest = &rest[end..];
            }
            None => {
                out.push_str(&rest[..i + 1]);
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Rounds every `duration_ms=<number>` field of a phase record to a tenth of a millisecond:
/// the agent writes the float as it is (`duration_ms=13.603795999999999`).
pub fn round_durations(text: &str) -> String {
    const KEY: &str = "duration_ms=";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(KEY) {
        out.push_str(&rest[..i + KEY.len()]);
        rest = &rest[i + KEY.len()..];
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-')).unwrap_or(rest.len());
        match rest[..end].parse::<f64>() {
            Ok(ms) => out.push_str(&format!("{ms:.1}")),
            Err(_) => out.push_str(&rest[..end]),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_formats_are_told_apart() {
        assert_eq!(
            classify("2026-12-08T00:02:23.679314Z deploy stdout| deploying demo-app"),
            Kind::Action { at: "2026-12-08T00:02:23.679314Z", action: "deploy", stream: "stdout", cont: false, text: "deploying demo-app" }
        );
        assert_eq!(
            classify("2026-12-08T00:02:23.679314Z a stderr+ rest"),
            Kind::Action { at: "2026-12-08T00:02:23.679314Z", action: "a", stream: "stderr", cont: true, text: "rest" }
        );
        assert_eq!(
            classify("2026-12-08T00:02:23.670913Z  INFO phase started phase=\"start\""),
            Kind::Record { at: "2026-12-08T00:02:23.670913Z", level: "INFO", text: "phase started phase=\"start\"" }
        );
        assert_eq!(classify("2026-12-08T00:02:23.670913Z ERROR boom"), Kind::Record { at: "2026-12-08T00:02:23.670913Z", level: "ERROR", text: "boom" });
        assert_eq!(classify("opschain-runner: no action named \"x\""), Kind::AgentError("no action named \"x\""));
        assert_eq!(classify("opschain: checked out 753ca6d47fef in 0.014s"), Kind::Other("opschain: checked out 753ca6d47fef in 0.014s"));
        assert_eq!(classify("#5 [2/3] RUN true"), Kind::Other("#5 [2/3] RUN true"));
    }

    #[test]
    fn sandbox_paths_become_repository_paths() {
        assert_eq!(
            without_sandbox("/tmp/s/sandboxes/change-3/step-8-10396-1796/.opschain/actions.toml: no action named \"helo\""),
            ".opschain/actions.toml: no action named \"helo\""
        );
        assert_eq!(without_sandbox("see \"/x/sandboxes/change-1/step-2-3/a b\""), "see \"a b\"");
        assert_eq!(without_sandbox("no sandbox here"), "no sandbox here");
        assert_eq!(without_sandbox("/sandboxes/change-1 alone"), "/sandboxes/change-1 alone");
    }

    #[test]
    fn durations_are_rounded() {
        assert_eq!(round_durations("phase finished duration_ms=13.603795999999999 x=1"), "phase finished duration_ms=13.6 x=1");
        assert_eq!(round_durations("duration_ms=0.001"), "duration_ms=0.0");
    }
}

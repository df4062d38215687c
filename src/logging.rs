//! The agent's own log: phases, files, commands; text by default, JSON on request, on stderr.

use std::str::FromStr;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?} (expected text or json)")),
        }
    }
}

/// The time of each line: what tracing-subscriber's own `SystemTime` timer writes (RFC 3339, UTC,
/// microseconds: `2026-11-23T10:00:00.123456Z`), formatted through the supervisor's cached
/// [`Stamp`](crate::supervise::Stamp): the lines of one second share all but their microseconds,
/// where the stock timer formats every field of every line (BENCHMARKS.md, "design figures").
#[derive(Debug, Default)]
struct Clock(std::sync::Mutex<crate::supervise::Stamp>);

impl tracing_subscriber::fmt::time::FormatTime for Clock {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let mut stamp = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // The stamp is ASCII: digits, `-`, `:`, `.`, `T` and `Z`.
        w.write_str(std::str::from_utf8(stamp.format(std::time::SystemTime::now())).map_err(|_| std::fmt::Error)?)
    }
}

/// Installs the global subscriber writing to stderr. `quiet` keeps only warnings and errors.
pub fn init(format: LogFormat, quiet: bool) {
    let level = if quiet { tracing::Level::WARN } else { tracing::Level::INFO };
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_max_level(level).with_target(false).with_timer(Clock::default());
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

    use super::Clock;

    /// Formats a time with `timer` into a string.
    fn format(timer: &impl FormatTime) -> String {
        let mut out = String::new();
        timer.format_time(&mut Writer::new(&mut out)).expect("format");
        out
    }

    #[test]
    fn the_clock_writes_what_the_stock_timer_writes() {
        let clock = Clock::default();
        for _ in 0..3 {
            // Read between two readings of the stock timer: same shape, and (the same width,
            // most significant first) ordered between them as text.
            let before = format(&SystemTime);
            let ours = format(&clock);
            let after = format(&SystemTime);
            assert_eq!((ours.len(), after.len()), (before.len(), before.len()), "{before} {ours} {after}");
            assert!(before <= ours && ours <= after, "{before} {ours} {after}");
            assert!(ours.ends_with('Z') && ours.as_bytes()[19] == b'.', "{ours}");
            std::thread::sleep(std::time::Duration::from_millis(3));
        }
    }
}

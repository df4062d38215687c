//! `opschain gc`: removes what changes left in the state directory and no longer need.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use opschain::gc::{self, Retention};

use super::Ctx;

/// What `opschain gc` removes and keeps.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Print what would be removed, and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep what a retry needs of the last N changes.
    #[arg(long, value_name = "N", default_value_t = Retention::DEFAULT_KEEP_CHANGES)]
    pub keep_changes: usize,
    /// Keep what a retry needs of the changes younger than D days.
    #[arg(long, value_name = "D", default_value_t = Retention::DEFAULT_KEEP_DAYS)]
    pub keep_days: u64,
}

/// Collects (or, with `--dry-run`, lists) and prints each thing removed, its size and why, then
/// the total.
pub fn exec(args: GcArgs, ctx: &Ctx, out: &mut dyn Write) -> Result<ExitCode> {
    let retention = Retention { keep_changes: args.keep_changes, keep_days: args.keep_days };
    let removed = gc::collect(ctx.store()?, &ctx.state_dir, retention, args.dry_run)?;
    let verb = if args.dry_run { "would remove" } else { "removed" };
    for removal in &removed {
        writeln!(out, "{verb} {} ({}): {}", removal.path.display(), human_bytes(removal.bytes), removal.why)?;
    }
    let total: u64 = removed.iter().map(|r| r.bytes).sum();
    writeln!(
        out,
        "==> gc: {verb} {} item(s), {}; kept what running changes use and what a retry needs of the last {} changes and of changes younger than {} days",
        removed.len(),
        human_bytes(total),
        retention.keep_changes,
        retention.keep_days
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `bytes` for a person: `B`, `KiB`, `MiB` or `GiB`, one decimal above bytes.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 3] = ["KiB", "MiB", "GiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_a_person_reads_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(4 << 20), "4.0 MiB");
        assert_eq!(human_bytes(3 << 40), "3072.0 GiB");
    }
}

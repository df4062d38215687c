//! Arguments several commands share: the project and environment codes, the change id, the
//! confirmation flag.

use clap::{Args, ValueEnum};

use opschain::output::View;

/// `-p`: the project code, defaulting from $opschain_projectCode or `.opschainrc`.
#[derive(Debug, Args)]
pub struct ProjectCode {
    /// The project code. Default: $opschain_projectCode, else projectCode of .opschainrc.
    #[arg(short = 'p', long = "project-code", visible_alias = "project", value_name = "CODE")]
    pub project_code: Option<String>,
}

/// `-e`: the environment code, defaulting from $opschain_environmentCode or `.opschainrc`.
#[derive(Debug, Args)]
pub struct EnvironmentCode {
    /// The environment code. Default: $opschain_environmentCode, else environmentCode of
    /// .opschainrc.
    #[arg(short = 'e', long = "environment-code", visible_alias = "environment", value_name = "CODE")]
    pub environment_code: Option<String>,
}

/// `-y`: OpsChain's CLI asks before it writes unless given `--confirm`; this one never asks.
#[derive(Debug, Args)]
pub struct Confirm {
    /// Accepted as OpsChain's CLI takes it; this controller never asks for confirmation.
    #[arg(short = 'y', long = "confirm")]
    pub confirm: bool,
}

/// Which change: `ID`, or `-c ID` as OpsChain's CLI takes it.
#[derive(Debug, Args)]
pub struct ChangeId {
    /// The change id.
    #[arg(value_name = "ID", required_unless_present = "change_id", conflicts_with = "change_id")]
    pub id: Option<i64>,
    /// The change id (the same as ID).
    #[arg(short = 'c', long = "change-id", value_name = "ID")]
    pub change_id: Option<i64>,
}

impl ChangeId {
    /// The change id, given as ID or with `--change-id`.
    pub fn get(&self) -> i64 {
        self.id.or(self.change_id).expect("clap requires ID or --change-id")
    }
}

/// How a change's lines are printed (`change create`, `retry`, `show-logs`, `demo`).
#[derive(Debug, Args)]
pub struct ViewArgs {
    /// Also print the agent's phase records (`INFO phase started ...`, durations in
    /// milliseconds), its own error line, the backend's lines (`checked out ...`, an image
    /// build's output) and the controller's progress (a step started, how its children run).
    /// The log keeps every line either way.
    #[arg(short, long)]
    pub verbose: bool,
    /// Start each line with its time (RFC 3339, UTC): when the agent read the action's line,
    /// else when the controller wrote or stored it. Default: no time.
    #[arg(long)]
    pub timestamps: bool,
}

impl ViewArgs {
    /// The library's view of these flags.
    pub fn view(&self) -> View {
        View { verbose: self.verbose, timestamps: self.timestamps, silent: false }
    }
}

/// `-o`: how a list or show command prints.
#[derive(Debug, Args)]
pub struct OutputArg {
    /// `text` (for people: columns, a tree) or `json` (for programs: the fields documented in
    /// docs/cli-json.md, stable; a list is an array).
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text, value_name = "FORMAT")]
    pub output: Format,
}

impl OutputArg {
    /// Whether JSON was asked for.
    pub fn json(&self) -> bool {
        self.output == Format::Json
    }
}

/// The formats of `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Columns and trees, for people.
    Text,
    /// JSON, for programs.
    Json,
}

/// Prints `value` as pretty JSON, one document.
pub fn print_json(out: &mut dyn std::io::Write, value: &impl serde::Serialize) -> anyhow::Result<()> {
    // Whole, then written: a closed pipe is then the writer's io::Error, which ends the command
    // quietly.
    let text = serde_json::to_string_pretty(value)?;
    writeln!(out, "{text}")?;
    Ok(())
}

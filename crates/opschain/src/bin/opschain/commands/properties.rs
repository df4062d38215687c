//! `opschain properties`: show, set, edit and list the versions of a project's or an
//! environment's properties; the same as `project`/`environment show-properties`,
//! `set-properties` and `edit-properties`, which call the functions here.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::{Map, Value};

use opschain::catalog::{self, Lookup};
use opschain::edit;
use opschain::report;

use super::args::{print_json, Confirm, OutputArg, ProjectCode};
use super::{read_input, Ctx};

/// The new properties of `set-properties`: a JSON object from a file, stdin or the command line.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct NewProperties {
    /// The JSON file (`-` for stdin).
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The JSON file (the same as FILE).
    #[arg(short = 'f', long = "file-path", value_name = "FILE")]
    pub file_path: Option<PathBuf>,
    /// The JSON object itself.
    #[arg(long, value_name = "JSON")]
    pub json: Option<String>,
}

/// `--version N` of `show-properties`.
#[derive(Debug, Args)]
pub struct PropertiesVersion {
    /// A stored version instead of the current one (see `properties history`).
    #[arg(long, value_name = "N")]
    pub version: Option<i64>,
}

/// Which properties: a project's, or with `--environment-code` one of its environments'.
#[derive(Debug, Args)]
pub struct Owner {
    /// The project code.
    #[command(flatten)]
    pub project: ProjectCode,
    /// The environment code; without it, the project's properties (no default applies here).
    #[arg(short = 'e', long = "environment-code", visible_alias = "environment", value_name = "CODE")]
    pub environment: Option<String>,
}

/// The `opschain properties` commands.
#[derive(Debug, Subcommand)]
pub enum PropertiesCommand {
    /// Print the current properties (or `--version N`) as JSON: `project show-properties`,
    /// `environment show-properties`.
    Show {
        /// Whose properties: a project, or an environment of one.
        #[command(flatten)]
        owner: Owner,
        /// Which version of the properties.
        #[command(flatten)]
        version: PropertiesVersion,
    },
    /// Replace the properties with a JSON object from FILE (`-` for stdin) or `--json`:
    /// `project set-properties`, `environment set-properties`.
    Set {
        /// Whose properties: a project, or an environment of one.
        #[command(flatten)]
        owner: Owner,
        /// The new properties.
        #[command(flatten)]
        new: NewProperties,
        /// The confirmation a destructive command needs.
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Edit the properties in $VISUAL / $EDITOR (default vi); saved as a new version when changed:
    /// `project edit-properties`, `environment edit-properties`.
    Edit {
        /// Whose properties: a project, or an environment of one.
        #[command(flatten)]
        owner: Owner,
    },
    /// List every stored version: `vN TIME BY PROPERTIES` (BY: `step ID` that wrote it, or
    /// `user`).
    History {
        /// Whose properties: a project, or an environment of one.
        #[command(flatten)]
        owner: Owner,
        /// Text or JSON.
        #[command(flatten)]
        output: OutputArg,
    },
}

/// Runs an `opschain properties` command.
pub fn exec(command: PropertiesCommand, ctx: &Ctx, out: &mut dyn Write) -> Result<ExitCode> {
    match command {
        PropertiesCommand::Show { owner, version } => show(ctx, &ctx.project(&owner.project)?, owner.environment.as_deref(), version.version, out),
        PropertiesCommand::Set { owner, new, .. } => set(ctx, &ctx.project(&owner.project)?, owner.environment.as_deref(), new, out),
        PropertiesCommand::Edit { owner } => edit(ctx, &ctx.project(&owner.project)?, owner.environment.as_deref(), out),
        PropertiesCommand::History { owner, output } => history(ctx, &ctx.project(&owner.project)?, owner.environment.as_deref(), output.json(), out),
    }
}

/// Reads user-given properties with the crate's strict reader: an object, no duplicate key at any
/// depth, errors naming the JSON pointer and line (as every input of the agent).
fn parse_object(text: &str, what: &str) -> Result<Map<String, Value>> {
    let opschain_runner::json::StrictObject(map) = opschain_runner::json::parse(Path::new(what), text.as_bytes())?;
    Ok(map)
}

/// The JSON object `set-properties` is given.
fn read_new_properties(new: NewProperties) -> Result<Map<String, Value>> {
    match (new.file.or(new.file_path), new.json) {
        (_, Some(text)) => parse_object(&text, "--json"),
        (Some(path), None) => {
            let what = if path == Path::new("-") { "stdin".to_string() } else { path.display().to_string() };
            parse_object(&read_input(&path)?, &what)
        }
        (None, None) => unreachable!("clap requires FILE, --file-path or --json"),
    }
}

/// Prints the current properties (or version `version`) of a project or an environment.
pub fn show(ctx: &Ctx, project: &str, environment: Option<&str>, version: Option<i64>, out: &mut dyn Write) -> Result<ExitCode> {
    let store = ctx.catalog()?;
    let owner = catalog::owner(store, project, environment, Lookup::Existing)?;
    let json = match version {
        Some(v) => store.properties_version(owner.level, owner.id, v)?,
        None => store.properties(owner.level, owner.id)?.json,
    };
    writeln!(out, "{}", serde_json::to_string_pretty(&Value::Object(json))?)?;
    Ok(ExitCode::SUCCESS)
}

/// Replaces the properties of a project or an environment, creating them when new.
pub fn set(ctx: &Ctx, project: &str, environment: Option<&str>, new: NewProperties, out: &mut dyn Write) -> Result<ExitCode> {
    let map = read_new_properties(new)?;
    let store = ctx.catalog()?;
    let owner = catalog::owner(store, project, environment, Lookup::CreateWhenNew)?;
    if owner.created_project {
        eprintln!("opschain: project {project:?} created");
    }
    if owner.created_environment {
        eprintln!("opschain: environment {:?} created", environment.unwrap_or_default());
    }
    let version = store.set_properties(owner.level, owner.id, &map)?;
    writeln!(out, "{} properties saved as version {version}", owner.level.as_str())?;
    Ok(ExitCode::SUCCESS)
}

/// Edits the properties of a project or an environment in the user's editor.
pub fn edit(ctx: &Ctx, project: &str, environment: Option<&str>, out: &mut dyn Write) -> Result<ExitCode> {
    let store = ctx.catalog()?;
    let owner = catalog::owner(store, project, environment, Lookup::Existing)?;
    let current = store.properties(owner.level, owner.id)?;
    let before = serde_json::to_string_pretty(&Value::Object(current.json.clone()))? + "\n";
    let after = edit::edit(&before, "properties.json", &ctx.editor()?)?;
    let map = parse_object(&after, "the edited properties")?;
    if map == current.json {
        writeln!(out, "{} properties unchanged (version {})", owner.level.as_str(), current.version)?;
    } else {
        let version = store.set_properties(owner.level, owner.id, &map)?;
        writeln!(out, "{} properties saved as version {version}", owner.level.as_str())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Lists every stored version of the properties of a project or an environment.
pub fn history(ctx: &Ctx, project: &str, environment: Option<&str>, json: bool, out: &mut dyn Write) -> Result<ExitCode> {
    let store = ctx.catalog()?;
    let owner = catalog::owner(store, project, environment, Lookup::Existing)?;
    if json {
        let all: Vec<report::json::PropertiesVersionJson> = store.properties_history(owner.level, owner.id)?.into_iter().map(Into::into).collect();
        print_json(out, &all)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut failed = None;
    store.properties_history_each(owner.level, owner.id, &mut |v| {
        if failed.is_none() {
            let by = v.step_id.map(|s| format!("step {s}")).unwrap_or_else(|| "user".into());
            if let Err(e) = writeln!(out, "v{:<4} {} {:<10} {}", v.version, v.created_at, by, Value::Object(v.json)) {
                failed = Some(e);
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    Ok(ExitCode::SUCCESS)
}

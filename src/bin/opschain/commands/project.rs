//! `opschain project`: list and create projects; show, set and edit a project's properties;
//! allow parallel changes.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use opschain_runner::controller::catalog;

use super::args::{Confirm, ProjectCode};
use super::properties::{self, NewProperties, PropertiesVersion};
use super::Ctx;

/// The `opschain project` commands.
#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// List the projects.
    #[command(visible_alias = "ls")]
    List,
    /// Create a project (`change create` and `set-properties` also create the project they name).
    Create {
        /// The new project's code.
        #[arg(long, value_name = "CODE")]
        code: String,
        /// The confirmation a destructive command needs.
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Print the project's current properties (or `--version N`) as JSON.
    ShowProperties {
        /// The project code.
        #[command(flatten)]
        project: ProjectCode,
        /// Which version of the properties.
        #[command(flatten)]
        version: PropertiesVersion,
    },
    /// Replace the project's properties with a JSON object; creates the project when new.
    SetProperties {
        /// The project code.
        #[command(flatten)]
        project: ProjectCode,
        /// The new properties.
        #[command(flatten)]
        new: NewProperties,
        /// The confirmation a destructive command needs.
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Edit the project's properties in $VISUAL / $EDITOR (default vi); saved as a new version
    /// when changed.
    EditProperties {
        /// The project code.
        #[command(flatten)]
        project: ProjectCode,
    },
    /// Let (or stop letting) several changes of a project run at once in one environment.
    /// Default: one change at a time per environment; the others wait, `queued`.
    AllowParallelChanges {
        /// The project code.
        project: String,
        /// true or false.
        #[arg(action = clap::ArgAction::Set)]
        allow: bool,
    },
}

/// Runs an `opschain project` command.
pub fn exec(command: ProjectCommand, ctx: &Ctx, out: &mut dyn Write) -> Result<ExitCode> {
    match command {
        ProjectCommand::List => {
            writeln!(out, "{:<20} {:>12} {:>8} {:<9} created", "code", "environments", "changes", "parallel")?;
            for p in ctx.store()?.projects()? {
                writeln!(out, "{:<20} {:>12} {:>8} {:<9} {}", p.code, p.environments, p.changes, if p.allow_parallel_changes { "yes" } else { "no" }, p.created_at)?;
            }
        }
        ProjectCommand::Create { code, .. } => {
            let found = catalog::ensure_project(ctx.store()?, &code)?;
            writeln!(out, "project {code} {}", if found.created { "created" } else { "exists" })?;
        }
        ProjectCommand::ShowProperties { project, version } => return properties::show(ctx, &ctx.project(&project)?, None, version.version, out),
        ProjectCommand::SetProperties { project, new, .. } => return properties::set(ctx, &ctx.project(&project)?, None, new, out),
        ProjectCommand::EditProperties { project } => return properties::edit(ctx, &ctx.project(&project)?, None, out),
        ProjectCommand::AllowParallelChanges { project, allow } => {
            let store = ctx.store()?;
            let found = catalog::ensure_project(store, &project)?;
            if found.created {
                eprintln!("opschain: project {project:?} created");
            }
            store.set_allow_parallel_changes(found.id, allow)?;
            writeln!(out, "project {project}: parallel changes {}", if allow { "allowed" } else { "not allowed" })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

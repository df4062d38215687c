//! `opschain project`: list and create projects; show, set and edit a project's properties;
//! allow parallel changes.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use opschain::catalog;
use opschain::report;

use super::args::{print_json, Confirm, OutputArg, ProjectCode};
use super::properties::{self, NewProperties, PropertiesVersion};
use super::Ctx;

/// The `opschain project` commands.
#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// List the projects.
    #[command(visible_alias = "ls")]
    List {
        /// Text or JSON.
        #[command(flatten)]
        output: OutputArg,
    },
    /// Create a project (`set-properties` also creates the project it names; `change create`
    /// needs one that exists).
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
    /// Archive a project: it takes no new change (`change create` exits 65), its changes,
    /// properties and environments stay and are still shown. `unarchive` restores it.
    Archive {
        /// The project's code.
        #[arg(long, value_name = "CODE")]
        code: String,
        /// The confirmation a destructive command needs.
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Restore an archived project: it takes new changes again.
    Unarchive {
        /// The project's code.
        #[arg(long, value_name = "CODE")]
        code: String,
    },
    /// Delete a project that never had a change, with its environments and every version of
    /// their properties. One that had changes cannot be deleted (exit 65): archive it.
    Delete {
        /// The project's code.
        #[arg(long, value_name = "CODE")]
        code: String,
        /// The confirmation a destructive command needs.
        #[command(flatten)]
        confirm: Confirm,
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
        ProjectCommand::List { output } if output.json() => {
            let all: Vec<report::json::Project> = ctx.catalog()?.projects()?.iter().map(Into::into).collect();
            print_json(out, &all)?;
        }
        ProjectCommand::List { .. } => {
            writeln!(out, "{:<20} {:>12} {:>8} {:<9} {:<9} created", "code", "environments", "changes", "parallel", "archived")?;
            for p in ctx.catalog()?.projects()? {
                let yes = |b: bool| if b { "yes" } else { "no" };
                writeln!(out, "{:<20} {:>12} {:>8} {:<9} {:<9} {}", p.code, p.environments, p.changes, yes(p.allow_parallel_changes), yes(p.archived), p.created_at)?;
            }
        }
        ProjectCommand::Create { code, .. } => {
            let found = catalog::ensure_project(ctx.catalog()?, &code)?;
            writeln!(out, "project {code} {}", if found.created { "created" } else { "exists" })?;
        }
        ProjectCommand::ShowProperties { project, version } => return properties::show(ctx, &ctx.project(&project)?, None, version.version, out),
        ProjectCommand::SetProperties { project, new, .. } => return properties::set(ctx, &ctx.project(&project)?, None, new, out),
        ProjectCommand::EditProperties { project } => return properties::edit(ctx, &ctx.project(&project)?, None, out),
        ProjectCommand::Archive { code, .. } => {
            catalog::archive_project(ctx.catalog()?, &code, true)?;
            writeln!(out, "project {code} archived")?;
        }
        ProjectCommand::Unarchive { code } => {
            catalog::archive_project(ctx.catalog()?, &code, false)?;
            writeln!(out, "project {code} restored")?;
        }
        ProjectCommand::Delete { code, .. } => {
            catalog::delete_project(ctx.catalog()?, &code)?;
            writeln!(out, "project {code} deleted")?;
        }
        ProjectCommand::AllowParallelChanges { project, allow } => {
            let store = ctx.catalog()?;
            let id = catalog::find_project(store, &project)?;
            store.set_allow_parallel_changes(id, allow)?;
            writeln!(out, "project {project}: parallel changes {}", if allow { "allowed" } else { "not allowed" })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

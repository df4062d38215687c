//! `opschain environment`: list and create a project's environments; show, set and edit an
//! environment's properties.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use opschain::catalog;
use opschain::report;

use super::args::{print_json, Confirm, EnvironmentCode, OutputArg, ProjectCode};
use super::properties::{self, NewProperties, PropertiesVersion};
use super::Ctx;

/// The `opschain environment` commands.
#[derive(Debug, Subcommand)]
pub enum EnvironmentCommand {
    /// List a project's environments.
    #[command(visible_alias = "ls")]
    List {
        /// The project code.
        #[command(flatten)]
        project: ProjectCode,
        /// Text or JSON.
        #[command(flatten)]
        output: OutputArg,
    },
    /// Create an environment of a project (`set-properties` also creates the environment it
    /// names; `change create` needs one that exists).
    Create {
        /// The project code.
        #[command(flatten)]
        project: ProjectCode,
        /// The new environment's code.
        #[arg(long, value_name = "CODE")]
        code: String,
        /// The confirmation a destructive command needs.
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Archive an environment: it takes no new change (`change create` exits 65); its changes
    /// and properties stay. `unarchive` restores it.
    Archive {
        /// The project code.
        #[command(flatten)]
        project: ProjectCode,
        /// The environment's code.
        #[arg(long, value_name = "CODE")]
        code: String,
        /// The confirmation a destructive command needs.
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Restore an archived environment: it takes new changes again.
    Unarchive {
        /// The project code.
        #[command(flatten)]
        project: ProjectCode,
        /// The environment's code.
        #[arg(long, value_name = "CODE")]
        code: String,
    },
    /// Delete an environment that never had a change, with every version of its properties. One
    /// that had changes cannot be deleted (exit 65): archive it.
    Delete {
        /// The project code.
        #[command(flatten)]
        project: ProjectCode,
        /// The environment's code.
        #[arg(long, value_name = "CODE")]
        code: String,
        /// The confirmation a destructive command needs.
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Print the environment's current properties (or `--version N`) as JSON.
    ShowProperties {
        /// The project code.
        #[command(flatten)]
        project: ProjectCode,
        /// The environment code.
        #[command(flatten)]
        environment: EnvironmentCode,
        /// Which version of the properties.
        #[command(flatten)]
        version: PropertiesVersion,
    },
    /// Replace the environment's properties with a JSON object; creates the project and the
    /// environment when new.
    SetProperties {
        /// The project code.
        #[command(flatten)]
        project: ProjectCode,
        /// The environment code.
        #[command(flatten)]
        environment: EnvironmentCode,
        /// The new properties.
        #[command(flatten)]
        new: NewProperties,
        /// The confirmation a destructive command needs.
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Edit the environment's properties in $VISUAL / $EDITOR (default vi); saved as a new
    /// version when changed.
    EditProperties {
        /// The project code.
        #[command(flatten)]
        project: ProjectCode,
        /// The environment code.
        #[command(flatten)]
        environment: EnvironmentCode,
    },
}

/// Runs an `opschain environment` command.
pub fn exec(command: EnvironmentCommand, ctx: &Ctx, out: &mut dyn Write) -> Result<ExitCode> {
    match command {
        EnvironmentCommand::List { project, output } => {
            let store = ctx.catalog()?;
            let id = catalog::find_project(store, &ctx.project(&project)?)?;
            if output.json() {
                let all: Vec<report::json::Environment> = store.environments(id)?.iter().map(Into::into).collect();
                print_json(out, &all)?;
                return Ok(ExitCode::SUCCESS);
            }
            writeln!(out, "{:<20} {:>8} {:<9} created", "code", "changes", "archived")?;
            for e in store.environments(id)? {
                writeln!(out, "{:<20} {:>8} {:<9} {}", e.code, e.changes, if e.archived { "yes" } else { "no" }, e.created_at)?;
            }
        }
        EnvironmentCommand::Create { project, code, .. } => {
            let project = ctx.project(&project)?;
            let store = ctx.catalog()?;
            let id = catalog::find_project(store, &project)?;
            let found = catalog::ensure_environment(store, id, &code)?;
            writeln!(out, "environment {code} of project {project} {}", if found.created { "created" } else { "exists" })?;
        }
        EnvironmentCommand::Archive { project, code, .. } => {
            let project = ctx.project(&project)?;
            catalog::archive_environment(ctx.catalog()?, &project, &code, true)?;
            writeln!(out, "environment {code} of project {project} archived")?;
        }
        EnvironmentCommand::Unarchive { project, code } => {
            let project = ctx.project(&project)?;
            catalog::archive_environment(ctx.catalog()?, &project, &code, false)?;
            writeln!(out, "environment {code} of project {project} restored")?;
        }
        EnvironmentCommand::Delete { project, code, .. } => {
            let project = ctx.project(&project)?;
            catalog::delete_environment(ctx.catalog()?, &project, &code)?;
            writeln!(out, "environment {code} of project {project} deleted")?;
        }
        EnvironmentCommand::ShowProperties { project, environment, version } => {
            return properties::show(ctx, &ctx.project(&project)?, Some(&ctx.environment(&environment)?), version.version, out)
        }
        EnvironmentCommand::SetProperties { project, environment, new, .. } => {
            return properties::set(ctx, &ctx.project(&project)?, Some(&ctx.environment(&environment)?), new, out)
        }
        EnvironmentCommand::EditProperties { project, environment } => return properties::edit(ctx, &ctx.project(&project)?, Some(&ctx.environment(&environment)?), out),
    }
    Ok(ExitCode::SUCCESS)
}

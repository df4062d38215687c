//! `opschain secrets`: create, replace and list secret sets (values are never printed).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use opschain::change;

use super::args::{print_json, OutputArg};
use super::{Ctx, Failure};

/// The `opschain secrets` commands.
#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Create or replace (rotate) secret set NAME from a JSON file `{"NAME": "value"}`.
    Set {
        /// The set's name.
        name: String,
        /// The JSON file.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// List the secret sets (names only).
    List {
        /// Text or JSON (`[{"name": ...}]`).
        #[command(flatten)]
        output: OutputArg,
    },
}

/// Runs an `opschain secrets` command.
pub fn exec(command: SecretsCommand, ctx: &Ctx, out: &mut dyn Write) -> Result<ExitCode> {
    match command {
        SecretsCommand::Set { name, file } => {
            let set = change::read_secret_file(&file).map_err(|source| Failure::SecretFile { path: file.clone(), source })?;
            ctx.catalog()?.set_secrets(&name, &set)?;
            writeln!(out, "secret set {name} saved ({} secrets: {})", set.len(), set.keys().cloned().collect::<Vec<_>>().join(", "))?;
        }
        SecretsCommand::List { output } => {
            let names = ctx.catalog()?.secret_set_names()?;
            if output.json() {
                let all: Vec<serde_json::Value> = names.iter().map(|name| serde_json::json!({"name": name})).collect();
                print_json(out, &all)?;
            } else {
                for name in names {
                    writeln!(out, "{name}")?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

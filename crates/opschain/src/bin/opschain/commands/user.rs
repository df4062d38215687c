//! `opschain user`: the server's users (added, listed, their passwords set, removed) on the
//! store the server uses.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use opschain::server::accounts;
use opschain::store::Role;

use super::Ctx;

/// The `opschain user` commands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user; the password is read from standard input (its first line).
    Add {
        /// The login name.
        name: String,
        /// Read the password from standard input (the only way: never on the command line).
        #[arg(long, required = true)]
        password_stdin: bool,
        /// What the user may do: viewer (reads), operator (also creates and runs changes, edits
        /// properties), admin.
        #[arg(long, default_value = "viewer", value_parser = ["viewer", "operator", "admin"])]
        role: String,
    },
    /// List the users and their roles.
    List,
    /// Remove a user (their sessions end).
    Remove {
        /// The login name.
        name: String,
    },
    /// Set a user's password from standard input (their sessions end); --role changes the role.
    Passwd {
        /// The login name.
        name: String,
        /// Read the password from standard input.
        #[arg(long, required = true)]
        password_stdin: bool,
        /// A new role.
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: Option<String>,
    },
}

/// Runs an `opschain user` command.
pub fn exec(command: UserCommand, ctx: &Ctx, out: &mut dyn Write) -> Result<ExitCode> {
    let store = ctx.store()?;
    let role = |name: &str| Role::from_name(name).expect("clap allows only role names");
    match command {
        UserCommand::Add { name, role: r, .. } => {
            let password = accounts::read_password(&mut std::io::stdin().lock())?;
            accounts::add(store, &name, role(&r), &password)?;
            writeln!(out, "user {name} added ({r})")?;
        }
        UserCommand::List => {
            writeln!(out, "{:<24} {:<9} {:<24} UPDATED", "NAME", "ROLE", "CREATED")?;
            for u in accounts::list(store)? {
                writeln!(out, "{:<24} {:<9} {:<24} {}", u.name, u.role, u.created_at, u.updated_at)?;
            }
        }
        UserCommand::Remove { name } => {
            accounts::remove(store, &name)?;
            writeln!(out, "user {name} removed")?;
        }
        UserCommand::Passwd { name, role: r, .. } => {
            let password = accounts::read_password(&mut std::io::stdin().lock())?;
            accounts::set_password(store, &name, &password, r.as_deref().map(role))?;
            writeln!(out, "password of user {name} set")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

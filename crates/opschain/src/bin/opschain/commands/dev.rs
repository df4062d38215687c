//! `opschain dev`: tools for a project's repository.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use opschain::dev;
use opschain_runner::layout::DEFAULT_REPO_FOLDER;

/// The `opschain dev` commands.
#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Write the default step runner Dockerfile to <repo>/<folder>/Dockerfile, to customise it
    /// (the folder is created when missing). An existing Dockerfile is kept unless `--force`.
    CreateDockerfile {
        /// The project's repository.
        #[arg(long, default_value = ".", value_name = "DIR")]
        repo: PathBuf,
        /// The OpsChain folder inside the repository (MintPress uses .mintpress).
        #[arg(long, env = "OPSCHAIN_REPO_FOLDER", default_value = DEFAULT_REPO_FOLDER, value_name = "NAME")]
        folder: String,
        /// Replace an existing Dockerfile.
        #[arg(long)]
        force: bool,
    },
}

/// Runs an `opschain dev` command (none needs the store).
pub fn exec(command: DevCommand, out: &mut dyn Write) -> Result<ExitCode> {
    match command {
        DevCommand::CreateDockerfile { repo, folder, force } => {
            let path = dev::create_dockerfile(&repo, &folder, force)?;
            writeln!(out, "{} written: the default step runner Dockerfile, to customise and commit", path.display())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

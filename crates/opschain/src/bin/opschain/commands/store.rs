//! `opschain store`: maintain the store itself (its encryption key).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;

use opschain::store::{PgStore, Store};

use super::Ctx;

/// The `opschain store` commands.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Re-encrypt every property version and secret set under a new key, in one transaction,
    /// then write that key into the key file (--key-file, else the state directory's
    /// opschain.key; replaced atomically). NEW is made 0600 with a new random key when missing,
    /// and left in place as a copy. Stop every other opschain process of this database first:
    /// one still running would go on writing with the old key.
    RotateKey {
        /// The file of the new key (made when missing).
        #[arg(long, value_name = "NEW")]
        new_key_file: PathBuf,
    },
}

/// Runs an `opschain store` command.
pub fn exec(command: StoreCommand, ctx: &Ctx, out: &mut dyn Write) -> Result<ExitCode> {
    match command {
        StoreCommand::RotateKey { new_key_file } => {
            // A store of its own: rotation closes it (its key is no longer the database's).
            let count = match &ctx.database_url {
                Some(url) => PgStore::connect(url, &ctx.state_dir, &ctx.store_options)?.rotate_key(&new_key_file)?,
                None => Store::open_with(&ctx.state_dir, &ctx.store_options)?.rotate_key(&new_key_file)?,
            };
            writeln!(out, "{count} values re-encrypted; the key of {} is now in {}", new_key_file.display(), ctx.key_file().display())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

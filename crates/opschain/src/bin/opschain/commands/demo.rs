//! `opschain demo`: the demo change, end to end.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde_json::{Map, Value};

use opschain::catalog;
use opschain::change::NewChange;
use opschain::report;
use opschain::status::BackendKind;
use opschain::store::Level;

use super::args::ViewArgs;
use super::change::run_change;
use super::settings::{config, RunSettings};
use super::{exit_of, Ctx};

/// What `opschain demo` runs the demo change with.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The demo project directory.
    #[arg(long, default_value = concat!(env!("OPSCHAIN_WORKSPACE_DIR"), "/fixtures/demo"), value_name = "DIR")]
    pub repo: PathBuf,
    /// What the run prints.
    #[command(flatten)]
    pub view: ViewArgs,
    /// How the steps run: backend, workers, limits.
    #[command(flatten)]
    pub settings: RunSettings,
}

/// Runs the demo change, then prints its step tree and the properties it left.
pub fn exec(args: DemoArgs, ctx: &Ctx, out: &mut dyn Write) -> Result<ExitCode> {
    let config = config(&ctx.state_dir, &args.settings, args.view.view())?;
    let store = ctx.store()?;
    if store.secrets("demo")?.is_none() {
        let mut set = Map::new();
        set.insert("API_TOKEN".into(), Value::String("demo-token-5f1c9e".into()));
        store.set_secrets("demo", &set)?;
        writeln!(out, "==> secret set demo created (API_TOKEN)")?;
    }
    // The demo's project and environment are made for it, as a user makes theirs first.
    let project = catalog::ensure_project(store, "demo")?;
    catalog::ensure_environment(store, project.id, "dev")?;
    let new = NewChange {
        repo: args.repo,
        project: "demo".into(),
        environment: "dev".into(),
        action: "deploy".into(),
        git_rev: "HEAD".into(),
        backend: BackendKind::Process,
        secret_set: Some("demo".into()),
        metadata: None,
    };
    let (id, status) = run_change(store, &config, new, out)?;
    // What follows is a summary: a reader that went away does not change how the change ended.
    let _ = summary(ctx, id, out);
    Ok(exit_of(status))
}

fn summary(ctx: &Ctx, id: i64, out: &mut dyn Write) -> Result<()> {
    let store = ctx.store()?;
    writeln!(out, "\n==> step tree of change {id}")?;
    report::write_step_tree(out, &store.steps(id)?, None, 1)?;
    let project = store.project_id("demo")?;
    let env = store.environment_id(project, "dev")?;
    let p = store.properties(Level::Project, project)?;
    let e = store.properties(Level::Environment, env)?;
    writeln!(out, "==> project demo properties (v{}): {}", p.version, Value::Object(p.json))?;
    writeln!(out, "==> environment dev properties (v{}): {}", e.version, Value::Object(e.json))?;
    Ok(())
}

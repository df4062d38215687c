//! The commands through `opschain server` (`--api-url`, `opschain_apiBaseUrl` or `apiBaseUrl`
//! in `.opschainrc`): the same output and exit statuses as on the local store, the rows read
//! from the API's documents and printed by the same functions.

use std::process::ExitCode;

use anyhow::{bail, Result};
use serde_json::{json, Map, Value};

use opschain::cli::{ChangeCommand, Command, EnvironmentCommand, ProjectCommand, PropertiesCommand, SecretsCommand};
use opschain::rc::{Defaults, Which};
use opschain::remote::{ApiConfig, Client};
use opschain::status::{ChangeStatus, StepStatus};
use opschain::store::StepRow;

use super::{code, exit_of, print_tree, read_new_properties};

/// A string attribute of a resource ("" when absent).
fn text<'a>(resource: &'a Value, name: &str) -> &'a str {
    resource["attributes"][name].as_str().unwrap_or_default()
}

/// The steps of a change's `included`, as the store's rows.
fn steps(doc: &Value) -> Vec<StepRow> {
    let number = |v: &Value| v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_i64());
    doc["included"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["type"] == "steps")
        .map(|r| {
            let a = &r["attributes"];
            StepRow {
                id: number(&r["id"]).unwrap_or_default(),
                parent_id: a["parent_id"].as_i64(),
                position: a["position"].as_i64().unwrap_or_default(),
                action: text(r, "action").to_string(),
                status: StepStatus::parse(text(r, "status")),
                child_strategy: a["child_execution_strategy"].as_str().map(str::to_string),
                exit_status: a["exit_status"].as_i64(),
                message: a["message"].as_str().map(str::to_string),
                started_at: a["started_at"].as_str().map(str::to_string),
                finished_at: a["finished_at"].as_str().map(str::to_string),
                duration_secs: a["duration_secs"].as_f64(),
            }
        })
        .collect()
}

/// Prints a change's log lines from the server (following it to its end with `follow`), as
/// `change logs` prints them.
fn print_logs(client: &Client, id: i64, follow: bool) -> Result<ChangeStatus> {
    let doc = client.get(&format!("/api/changes/{id}?include=steps"))?;
    let actions: std::collections::HashMap<i64, String> = steps(&doc).into_iter().map(|s| (s.id, s.action)).collect();
    let print = |line: &Value| {
        let step = line["step_id"].as_i64().unwrap_or_default();
        let mark = if line["stream"] == "stderr" { "!" } else { " " };
        let action = actions.get(&step).map(String::as_str).unwrap_or("?");
        println!("{} [{step} {action}]{mark} {}", line["created_at"].as_str().unwrap_or_default(), line["message"].as_str().unwrap_or_default());
    };
    if follow {
        let status = client.follow(&format!("/api/changes/{id}/log_lines/stream"), 0, print)?;
        return Ok(ChangeStatus::parse(&status));
    }
    let mut after = 0;
    loop {
        let page = client.get(&format!("/api/changes/{id}/log_lines?filter[id_gt]={after}&page[size]=1000"))?;
        let lines = page["data"].as_array().cloned().unwrap_or_default();
        for line in &lines {
            print(&line["attributes"]);
            after = line["id"].as_str().and_then(|s| s.parse().ok()).unwrap_or(after);
        }
        if lines.len() < 1000 {
            return Ok(ChangeStatus::parse(text(&doc["data"], "status")));
        }
    }
}

/// Runs `command` through the server `api`.
pub fn run(command: Command, api: &ApiConfig, defaults: &Defaults) -> Result<ExitCode> {
    let client = Client::new(api);
    let project = |flag: Option<&str>| code(defaults, Which::Project, flag);
    let environment = |flag: Option<&str>| code(defaults, Which::Environment, flag);
    match command {
        Command::Change(ChangeCommand::Create(args)) => {
            let attributes = json!({
                "project_code": project(args.project.project_code.as_deref())?,
                "environment_code": environment(args.environment.environment_code.as_deref())?,
                "action": if args.action.is_empty() { "default".to_string() } else { args.action },
                "git_remote_name": args.git_remote_name.unwrap_or_else(|| "origin".into()),
                "git_rev": args.git_rev,
            });
            let doc = client.post("/api/changes", &json!({"data": {"type": "changes", "attributes": attributes}}))?;
            let id: i64 = doc["data"]["id"].as_str().and_then(|s| s.parse().ok()).unwrap_or_default();
            println!("==> change {id} created (server: {})", api.base_url);
            Ok(exit_of(print_logs(&client, id, true)?))
        }
        Command::Change(ChangeCommand::List { project: p, environment: e }) => {
            let mut query = vec!["sort=created_at".to_string(), "page[size]=1000".to_string()];
            if let Some(p) = defaults.resolve(Which::Project, p.project_code.as_deref())? {
                query.push(format!("filter[project_code_eq]={}", p.value));
            }
            if let Some(e) = defaults.resolve(Which::Environment, e.environment_code.as_deref())? {
                query.push(format!("filter[environment_code_eq]={}", e.value));
            }
            println!("{:>4}  {:<10} {:<12} {:<12} {:<20} {:<12} {:<8} created", "id", "status", "project", "environment", "action", "commit", "backend");
            let mut path = format!("/api/changes?{}", query.join("&"));
            loop {
                let page = client.get(&path)?;
                for c in page["data"].as_array().into_iter().flatten() {
                    let commit = text(c, "commit_sha");
                    println!(
                        "{:>4}  {:<10} {:<12} {:<12} {:<20} {:<12} {:<8} {}",
                        c["id"].as_str().unwrap_or_default(),
                        text(c, "status"),
                        text(c, "project_code"),
                        text(c, "environment_code"),
                        text(c, "action"),
                        &commit[..commit.len().min(12)],
                        text(c, "backend"),
                        text(c, "created_at")
                    );
                }
                match page["links"]["next"].as_str() {
                    Some(next) => path = next.to_string(),
                    None => return Ok(ExitCode::SUCCESS),
                }
            }
        }
        Command::Change(ChangeCommand::Show { id }) => {
            let doc = client.get(&format!("/api/changes/{}?include=steps", id.get()))?;
            let c = &doc["data"];
            println!("change {} {}", c["id"].as_str().unwrap_or_default(), text(c, "status"));
            println!("  project {}, environment {}, action {}", text(c, "project_code"), text(c, "environment_code"), text(c, "action"));
            println!("  commit {} ({}) from {}", text(c, "commit_sha"), text(c, "git_rev"), text(c, "git_remote_name"));
            let finished = c["attributes"]["finished_at"].as_str().unwrap_or("-");
            println!("  backend {}, created {}, finished {finished}", text(c, "backend"), text(c, "created_at"));
            println!("steps:");
            print_tree(&steps(&doc), None, 1);
            Ok(ExitCode::SUCCESS)
        }
        Command::Change(ChangeCommand::Logs { id, follow }) => {
            print_logs(&client, id.get(), follow)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Change(ChangeCommand::Retry { id, .. }) => {
            let id = id.get();
            client.post(&format!("/api/changes/{id}/retry"), &Value::Null)?;
            println!("==> change {id}: retrying the steps that did not succeed (server: {})", api.base_url);
            Ok(exit_of(print_logs(&client, id, true)?))
        }
        Command::Change(ChangeCommand::Cancel { id }) => {
            let id = id.get();
            let doc = client.post(&format!("/api/changes/{id}/cancel"), &Value::Null)?;
            match text(&doc["data"], "status") {
                "running" => println!("change {id}: cancel requested; its controller stops it"),
                status => println!("change {id} {status}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Project(ProjectCommand::List) => {
            println!("{:<20} created", "code");
            for p in client.get("/api/projects")?["data"].as_array().into_iter().flatten() {
                println!("{:<20} {}", text(p, "code"), text(p, "created_at"));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Project(ProjectCommand::Create { code, .. }) => {
            let body = json!({"data": {"type": "projects", "attributes": {"code": code}}});
            match client.post("/api/projects", &body) {
                Ok(_) => println!("project {code} created"),
                Err(opschain::remote::RemoteError::Refused { status: 409, .. }) => println!("project {code} exists"),
                Err(e) => return Err(e.into()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Environment(EnvironmentCommand::List { project: p }) => {
            let project = project(p.project_code.as_deref())?;
            println!("{:<20} created", "code");
            for e in client.get(&format!("/api/projects/{project}/environments"))?["data"].as_array().into_iter().flatten() {
                println!("{:<20} {}", text(e, "code"), text(e, "created_at"));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Environment(EnvironmentCommand::Create { project: p, code, .. }) => {
            let project = project(p.project_code.as_deref())?;
            let body = json!({"data": {"type": "environments", "attributes": {"code": code}}});
            match client.post(&format!("/api/projects/{project}/environments"), &body) {
                Ok(_) => println!("environment {code} of project {project} created"),
                Err(opschain::remote::RemoteError::Refused { status: 409, .. }) => println!("environment {code} of project {project} exists"),
                Err(e) => return Err(e.into()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Project(ProjectCommand::ShowProperties { project: p, version }) => show(&client, &project(p.project_code.as_deref())?, None, version.version),
        Command::Environment(EnvironmentCommand::ShowProperties { project: p, environment: e, version }) => {
            show(&client, &project(p.project_code.as_deref())?, Some(&environment(e.environment_code.as_deref())?), version.version)
        }
        Command::Properties(PropertiesCommand::Show { owner, version }) => {
            show(&client, &project(owner.project.project_code.as_deref())?, owner.environment.as_deref(), version.version)
        }
        Command::Project(ProjectCommand::SetProperties { project: p, new, .. }) => set(&client, &project(p.project_code.as_deref())?, None, read_new_properties(new)?),
        Command::Environment(EnvironmentCommand::SetProperties { project: p, environment: e, new, .. }) => {
            set(&client, &project(p.project_code.as_deref())?, Some(&environment(e.environment_code.as_deref())?), read_new_properties(new)?)
        }
        Command::Properties(PropertiesCommand::Set { owner, new, .. }) => {
            set(&client, &project(owner.project.project_code.as_deref())?, owner.environment.as_deref(), read_new_properties(new)?)
        }
        Command::Secrets(SecretsCommand::Set { name, file }) => {
            let set = opschain::change::read_secret_file(&file)?;
            client.put(&format!("/api/secret_sets/{name}"), &json!({"data": {"type": "secret_sets", "attributes": {"data": set}}}))?;
            println!("secret set {name} saved ({} secrets: {})", set.len(), set.keys().cloned().collect::<Vec<_>>().join(", "));
            Ok(ExitCode::SUCCESS)
        }
        Command::Secrets(SecretsCommand::List) => {
            for s in client.get("/api/secret_sets")?["data"].as_array().into_iter().flatten() {
                println!("{}", text(s, "name"));
            }
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("{} is not available through the server (--api-url): run it on the server's host", command_name(&other)),
    }
}

/// The path of properties of a project or an environment.
fn properties_path(project: &str, environment: Option<&str>) -> String {
    match environment {
        Some(env) => format!("/api/projects/{project}/environments/{env}/properties"),
        None => format!("/api/projects/{project}/properties"),
    }
}

/// `show-properties` through the server (the current version only).
fn show(client: &Client, project: &str, environment: Option<&str>, version: Option<i64>) -> Result<ExitCode> {
    if version.is_some() {
        bail!("--version is not available through the server (--api-url)");
    }
    let doc = client.get(&properties_path(project, environment))?;
    let data = doc["data"]["attributes"]["data"].as_object().cloned().unwrap_or_default();
    println!("{}", serde_json::to_string_pretty(&Value::Object(data))?);
    Ok(ExitCode::SUCCESS)
}

/// `set-properties` through the server.
fn set(client: &Client, project: &str, environment: Option<&str>, map: Map<String, Value>) -> Result<ExitCode> {
    let doc = client.put(&properties_path(project, environment), &json!({"data": {"type": "properties", "attributes": {"data": map}}}))?;
    let level = if environment.is_some() { "environment" } else { "project" };
    println!("{level} properties saved as version {}", doc["data"]["attributes"]["version"]);
    Ok(ExitCode::SUCCESS)
}

/// The command's name, for the message of one the server does not take.
fn command_name(command: &Command) -> String {
    format!("{command:?}").split(['(', ' ', '{']).next().unwrap_or_default().to_lowercase()
}

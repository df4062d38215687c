//! The printable plan of a step, for `opschain-runner validate`: what would run, what would be
//! written, which variables would be set. Values of variables are never shown.

use serde::Serialize;

use crate::actions::RunAs;
use crate::files::Format;
use crate::step::Prepared;

/// The plan of a prepared step.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The action the step runs.
    pub action: String,
    /// Its prerequisites, in the order they run.
    pub prerequisites: Vec<String>,
    /// Every command, in order.
    pub commands: Vec<PlannedCommand>,
    /// Children declared in actions.toml (the action may add more at run time).
    pub children: Vec<String>,
    /// How the children run; `null` with none.
    pub child_execution_strategy: Option<RunAs>,
    /// The files that would be written.
    pub files: Vec<PlannedFile>,
    /// The names of the variables the action would get from opschain.env.
    pub env: Vec<String>,
    /// The names of the runner secrets the action would get.
    pub secrets: Vec<String>,
}

/// One command of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedCommand {
    /// The action it belongs to.
    pub action: String,
    /// What runs.
    pub argv: Vec<String>,
    /// Its own time limit in seconds, if any.
    pub timeout_secs: Option<u64>,
}

/// One file of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedFile {
    /// Where it would be written.
    pub path: String,
    /// Its mode, as octal.
    pub mode: String,
    /// How its content was given.
    pub format: Format,
    /// Its size in bytes.
    pub bytes: usize,
}

impl Plan {
    /// The plan of `prepared`.
    pub fn of(prepared: &Prepared) -> Plan {
        let prerequisites = prepared.plan.iter().rev().skip(1).rev().map(|(n, _)| n.clone()).collect();
        let commands = prepared
            .plan
            .iter()
            .filter_map(|(name, action)| Some(PlannedCommand { action: name.clone(), argv: action.argv()?, timeout_secs: action.timeout_secs }))
            .collect();
        Plan {
            action: prepared.action.clone(),
            prerequisites,
            commands,
            children: prepared.declared_children.clone(),
            child_execution_strategy: (!prepared.declared_children.is_empty()).then_some(prepared.run_as),
            files: prepared
                .files
                .iter()
                .map(|f| PlannedFile { path: f.target.full_path().display().to_string(), mode: format!("{:04o}", f.mode), format: f.format, bytes: f.content.len() })
                .collect(),
            env: prepared.env.iter().map(|(n, _)| n.clone()).collect(),
            secrets: prepared.context.secrets.keys().cloned().collect(),
        }
    }

    /// The plan as text, for people.
    pub fn to_text(&self) -> String {
        let mut out = format!("action: {}\n", self.action);
        let list = |items: &[String]| if items.is_empty() { "(none)".to_string() } else { items.join(", ") };
        out += &format!("prerequisites: {}\n", list(&self.prerequisites));
        out += "commands:\n";
        if self.commands.is_empty() {
            out += "  (none: the action only declares children)\n";
        }
        for c in &self.commands {
            let timeout = c.timeout_secs.map(|t| format!(" (timeout {t}s)")).unwrap_or_default();
            out += &format!("  {}: {:?}{timeout}\n", c.action, c.argv);
        }
        let strategy = match self.child_execution_strategy {
            Some(RunAs::Parallel) => " (parallel)",
            Some(RunAs::Sequential) => " (sequential)",
            None => "",
        };
        out += &format!("children{strategy}: {}\n", list(&self.children));
        out += "files:\n";
        if self.files.is_empty() {
            out += "  (none)\n";
        }
        for f in &self.files {
            let format = serde_json::to_value(f.format).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            out += &format!("  {} {} ({format}, {} bytes)\n", f.mode, f.path, f.bytes);
        }
        out += &format!("env: {}\n", list(&self.env));
        out += &format!("secrets: {}\n", list(&self.secrets));
        out
    }
}

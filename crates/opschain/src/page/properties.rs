//! `/projects/{code}/properties` and `/projects/{code}/environments/{env}/properties`: a
//! level's current properties, its versions with who or what made each (a user's edit, or a
//! step of a change), and the difference between any two versions (`?from=N&to=M`; by default
//! the latest against the one before), as the changes an RFC 6902 patch makes, path by path.
//!
//! Secret values are never shown: every secret set's values are masked (`****`) in whatever
//! the page prints, as they are in the logs.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde_json::{Map, Value};

use super::session::PageUser;
use super::view::{self, Layout};
use super::{render, PageError};
use crate::server::AppState;
use crate::store::{Level, Store, StoreError};
use opschain_runner::mask::Masker;

/// How many versions the page lists, newest first (200).
pub const MAX_VERSIONS: usize = 200;

/// The query: the two versions to compare.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct DiffQuery {
    /// The older version.
    pub from: Option<i64>,
    /// The newer version.
    pub to: Option<i64>,
}

/// A version as the list shows it.
#[derive(Debug, Clone)]
pub struct VersionView {
    version: i64,
    created: String,
    /// Who made it: a user, a step (with its change), or the level's creation.
    by_user: String,
    by_step: Option<(i64, i64, String)>,
}

/// One path the diff changes.
#[derive(Debug, Clone)]
pub struct DiffRow {
    /// `add`, `remove`, `replace`, `move` or `copy`.
    op: String,
    path: String,
    before: String,
    after: String,
}

/// The page.
#[derive(askama::Template)]
#[template(path = "properties.html")]
struct PropertiesPage {
    layout: Layout,
    project: String,
    environment: Option<String>,
    environments: Vec<String>,
    current: String,
    version: i64,
    versions: Vec<VersionView>,
    from: i64,
    to: i64,
    diff: Vec<DiffRow>,
    /// Why there is no diff to show (fewer than two versions).
    no_diff: Option<String>,
}

/// `GET /projects/{code}/properties`.
pub async fn project(State(state): State<AppState>, user: PageUser, Path(code): Path<String>, Query(query): Query<DiffQuery>) -> Result<Response, PageError> {
    page(state, user, code, None, query).await
}

/// `GET /projects/{code}/environments/{env}/properties`.
pub async fn environment(
    State(state): State<AppState>,
    user: PageUser,
    Path((code, env)): Path<(String, String)>,
    Query(query): Query<DiffQuery>,
) -> Result<Response, PageError> {
    page(state, user, code, Some(env), query).await
}

/// What the page reads from the store, in one blocking call.
struct Read {
    current: Map<String, Value>,
    version: i64,
    versions: Vec<VersionView>,
    environments: Vec<String>,
    from: i64,
    to: i64,
    diff: Option<(Value, Value)>,
    masker: Masker,
}

/// The masker of every secret set's values.
fn secret_masker(store: &Store) -> Result<Masker, StoreError> {
    let mut values = Vec::new();
    for name in store.secret_set_names()? {
        for value in store.secrets(&name)?.unwrap_or_default().into_values() {
            values.push(match value {
                Value::String(s) => s,
                other => other.to_string(),
            });
        }
    }
    Ok(Masker::new(values.into_iter().filter(|v| !v.is_empty())))
}

/// Reads the page's data (`query`'s versions, checked to exist).
fn read(store: &Store, project: &str, environment: Option<&str>, query: &DiffQuery) -> Result<Read, StoreError> {
    let project_id = store.project_id(project)?;
    let (level, owner, target) = match environment {
        None => (Level::Project, project_id, format!("project/{project}/properties")),
        Some(env) => (Level::Environment, store.environment_id(project_id, env)?, format!("project/{project}/environment/{env}/properties")),
    };
    let current = store.properties(level, owner)?;
    let mut rows = store.properties_versions(Some(project), environment, usize::MAX >> 1)?;
    rows.retain(|v| v.level == level && v.environment_code.as_deref() == environment);
    rows.truncate(MAX_VERSIONS);
    let editors = store.property_editors(&target)?;
    let step_ids: Vec<i64> = rows.iter().filter_map(|v| v.step_id).collect();
    let origins = store.step_origins(&step_ids)?;
    let versions = rows
        .iter()
        .map(|v| VersionView {
            version: v.version,
            created: view::when(&v.created_at),
            by_user: editors.get(&v.version).cloned().unwrap_or_else(|| if v.step_id.is_none() && v.version == 0 { "(created empty)".into() } else { String::new() }),
            by_step: v.step_id.and_then(|s| origins.get(&s).map(|o| (s, o.change_id, o.action.clone()))),
        })
        .collect();
    let to = query.to.unwrap_or(current.version);
    let from = query.from.unwrap_or(to - 1);
    if let Some(missing) = [query.from, query.to].into_iter().flatten().find(|v| !(0..=current.version).contains(v)) {
        return Err(StoreError::NotFound(format!("{} properties version {missing}", level.as_str())));
    }
    let diff = if from >= 0 && to >= 0 && from != to && current.version > 0 {
        let older = store.properties_version(level, owner, from)?;
        let newer = store.properties_version(level, owner, to)?;
        Some((Value::Object(older), Value::Object(newer)))
    } else {
        None
    };
    let environments = store.named_environments(project_id)?.into_iter().map(|e| e.code).collect();
    Ok(Read { version: current.version, current: current.json, versions, environments, from, to, diff, masker: secret_masker(store)? })
}

/// The rows of the patch that turns `before` into `after`, values masked.
fn diff_rows(before: &Value, after: &Value, masker: &Masker) -> Vec<DiffRow> {
    let patch = serde_json::to_value(opschain_runner::diff::diff(before, after)).unwrap_or(Value::Null);
    let show = |v: Option<&Value>| v.map(|v| masker.mask(&serde_json::to_string_pretty(v).unwrap_or_default()).into_owned()).unwrap_or_default();
    patch
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|op| {
            let kind = op.get("op")?.as_str()?.to_string();
            let path = op.get("path")?.as_str()?.to_string();
            let from = op.get("from").and_then(Value::as_str);
            let (old, new) = match kind.as_str() {
                "add" => (None, op.get("value")),
                "remove" => (before.pointer(&path), None),
                "replace" => (before.pointer(&path), op.get("value")),
                "move" | "copy" => (from.and_then(|f| before.pointer(f)), after.pointer(&path)),
                _ => return None,
            };
            let path = match (kind.as_str(), from) {
                ("move" | "copy", Some(from)) => format!("{from} → {path}"),
                _ => path,
            };
            Some(DiffRow { op: kind, path: if path.is_empty() { "/".into() } else { path }, before: show(old), after: show(new) })
        })
        .collect()
}

/// Renders a level's page.
async fn page(state: AppState, user: PageUser, project: String, environment: Option<String>, query: DiffQuery) -> Result<Response, PageError> {
    let (p, e, q) = (project.clone(), environment.clone(), query.clone());
    let read = state.db(move |s| read(s, &p, e.as_deref(), &q)).await?;
    let (diff, no_diff) = match &read.diff {
        Some((before, after)) => (diff_rows(before, after, &read.masker), None),
        None => (Vec::new(), Some(if read.version == 0 { "There is only the first, empty version." } else { "Choose two different versions." }.to_string())),
    };
    let title = match &environment {
        Some(env) => format!("{project} / {env} properties"),
        None => format!("{project} properties"),
    };
    let current = read.masker.mask(&serde_json::to_string_pretty(&Value::Object(read.current)).unwrap_or_default()).into_owned();
    let page = PropertiesPage {
        layout: user.layout(title),
        project,
        environment,
        environments: read.environments,
        current,
        version: read.version,
        versions: read.versions,
        from: read.from,
        to: read.to,
        diff,
        no_diff,
    };
    render(&page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_diff_names_each_changed_path_with_both_values_and_masks_secrets() {
        let masker = Masker::new(["hunter2-secret"]);
        let before = json!({"app": {"version": "1.0", "old": true}, "db": {"password": "hunter2-secret"}});
        let after = json!({"app": {"version": "1.1", "new": [1]}, "db": {"password": "hunter2-secret-2"}});
        let rows = diff_rows(&before, &after, &masker);
        let find = |path: &str| rows.iter().find(|r| r.path == path).unwrap_or_else(|| panic!("no {path} in {rows:?}"));
        assert_eq!((find("/app/version").op.as_str(), find("/app/version").before.as_str(), find("/app/version").after.as_str()), ("replace", "\"1.0\"", "\"1.1\""));
        assert_eq!(find("/app/old").op, "remove");
        assert_eq!(find("/app/new").op, "add");
        let secret = find("/db/password");
        assert!(!secret.before.contains("hunter2") && !secret.after.contains("hunter2"), "{secret:?}");
    }
}

//! `/`: the changes, filtered by the query, kept live by the script polling `GET /api/changes`
//! with the same filters; and `/changes/{id}`: a change's header, its step tree (sequential
//! children drawn as a numbered track, parallel ones as side-by-side lanes), each step's
//! status, duration and log, and Cancel and Retry for those who may (done by the API's own
//! handlers, so the page and the API act alike and leave the same audit trail).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;

use super::session::{CsrfForm, PageUser};
use super::view::{self, Layout};
use super::{render, PageError};
use crate::server::auth::Operator;
use crate::server::jsonapi::ApiError;
use crate::server::{changes as api, AppState};
use crate::status::ChangeStatus;
use crate::store::{ChangeFilter, ChangeSort, ChangeSummary, StepRow};

/// How many changes a page of the list shows (50).
pub const PAGE_SIZE: usize = 50;

/// The statuses a change can have, in the order the filter offers them.
const STATUSES: [&str; 6] = ["pending", "queued", "running", "success", "error", "cancelled"];

/// The list's query: its filters and the page.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct ListQuery {
    /// Only this project's changes.
    #[serde(default)]
    pub project: String,
    /// Only this environment's.
    #[serde(default)]
    pub environment: String,
    /// Only changes of this status.
    #[serde(default)]
    pub status: String,
    /// Only changes whose id, action, creator, revision, commit, metadata, project or
    /// environment contains this text.
    #[serde(default)]
    pub q: String,
    /// Only changes older than this id (the next page).
    #[serde(default)]
    pub before: Option<i64>,
}

/// A change as a row of the list and the header of its page.
#[derive(Debug, Clone)]
pub struct ChangeView {
    id: i64,
    project: String,
    environment: String,
    action: String,
    status: &'static str,
    running: bool,
    created_by: String,
    created_at: String,
    created: String,
    started_at: String,
    started: String,
    finished_at: String,
    finished: String,
    duration: String,
    git_remote: String,
    git_rev: String,
    commit: String,
    short_commit: String,
    metadata: String,
}

impl ChangeView {
    /// The view of `c`.
    fn new(c: &ChangeSummary) -> ChangeView {
        ChangeView {
            id: c.id,
            project: c.project_code.clone(),
            environment: c.environment_code.clone(),
            action: c.action.clone(),
            status: c.status.as_str(),
            running: !c.status.is_final(),
            created_by: c.created_by.clone().unwrap_or_else(|| "(local CLI)".into()),
            created_at: c.created_at.clone(),
            created: view::when(&c.created_at),
            started_at: c.started_at.clone().unwrap_or_default(),
            started: c.started_at.as_deref().map(view::when).unwrap_or_default(),
            finished_at: c.finished_at.clone().unwrap_or_default(),
            finished: c.finished_at.as_deref().map(view::when).unwrap_or_default(),
            duration: view::span(c.started_at.as_deref(), if c.status.is_final() { c.finished_at.as_deref().or(c.started_at.as_deref()) } else { None }),
            git_remote: c.git_remote_name.clone().unwrap_or_default(),
            git_rev: c.git_rev.clone(),
            commit: c.commit_sha.clone(),
            short_commit: view::short_commit(&c.commit_sha).to_string(),
            metadata: if c.metadata.is_empty() { String::new() } else { serde_json::to_string_pretty(&c.metadata).unwrap_or_default() },
        }
    }
}

/// The list page.
#[derive(askama::Template)]
#[template(path = "changes.html")]
struct ListPage {
    layout: Layout,
    query: ListQuery,
    projects: Vec<String>,
    statuses: &'static [&'static str],
    changes: Vec<ChangeView>,
    older: Option<String>,
    /// The API query the script polls (the same filters), when this is the first page.
    live: String,
}

/// `value` percent-encoded for a query string.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET /`: the changes, newest first.
pub async fn list(State(state): State<AppState>, user: PageUser, Query(query): Query<ListQuery>) -> Result<Response, PageError> {
    let status = match query.status.as_str() {
        "" => None,
        s => Some(ChangeStatus::parse(s)).filter(|parsed| parsed.as_str() == s),
    };
    let nonempty = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
    let filter =
        ChangeFilter { status, project_code: nonempty(&query.project), environment_code: nonempty(&query.environment), cursor: query.before, text: nonempty(&query.q) };
    let (rows, projects) = state
        .db(move |s| {
            let page = s.change_page(&filter, ChangeSort::Newest, PAGE_SIZE, 0)?;
            Ok((page, s.named_projects()?))
        })
        .await?;
    let filters: Vec<(&str, &str)> =
        [("project", query.project.as_str()), ("environment", query.environment.as_str()), ("status", query.status.as_str()), ("q", query.q.as_str())]
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .collect();
    let older = rows.last().filter(|_| rows.len() == PAGE_SIZE).map(|last| {
        let mut pairs: Vec<String> = filters.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
        pairs.push(format!("before={}", last.id));
        format!("/?{}", pairs.join("&"))
    });
    let live = if query.before.is_none() {
        let api_names =
            [("project", "filter[project_code_eq]"), ("environment", "filter[environment_code_eq]"), ("status", "filter[status_eq]"), ("q", "filter[text_cont]")];
        let mut pairs: Vec<String> =
            filters.iter().map(|(k, v)| format!("{}={}", encode(api_names.iter().find(|(n, _)| n == k).map(|(_, a)| *a).unwrap_or(k)), encode(v))).collect();
        pairs.push(format!("page%5Bsize%5D={PAGE_SIZE}"));
        format!("/api/changes?{}", pairs.join("&"))
    } else {
        String::new()
    };
    let page = ListPage {
        layout: user.layout("Changes"),
        query,
        projects: projects.into_iter().map(|p| p.code).collect(),
        statuses: &STATUSES,
        changes: rows.iter().map(ChangeView::new).collect(),
        older,
        live,
    };
    render(&page)
}

/// One step as the tree shows it.
#[derive(Debug, Clone)]
pub struct StepView {
    id: i64,
    action: String,
    status: &'static str,
    running: bool,
    started_at: String,
    finished_at: String,
    duration: String,
    has_children: bool,
    message: String,
}

/// The step tree, flattened for the template: each step opens an item, its children (if any)
/// are a list drawn by their strategy, then the item closes.
#[derive(Debug, Clone)]
pub enum TreeItem {
    /// A step's item opens, with its card.
    Open(StepView),
    /// Its children's list opens: `true` when they run in parallel.
    Children(bool),
    /// The children's list closes.
    EndChildren(bool),
    /// The step's item closes.
    Close,
}

/// Flattens the tree under `parent` (`None`: the roots) into `out`.
fn flatten(children: &HashMap<Option<i64>, Vec<&StepRow>>, parent: Option<i64>, out: &mut Vec<TreeItem>) {
    for step in children.get(&parent).map(Vec::as_slice).unwrap_or_default() {
        let kids = children.get(&Some(step.id)).map(Vec::len).unwrap_or(0);
        out.push(TreeItem::Open(StepView {
            id: step.id,
            action: step.action.clone(),
            status: step.status.as_str(),
            running: step.started_at.is_some() && step.finished_at.is_none() && !step.status.is_final(),
            started_at: step.started_at.clone().unwrap_or_default(),
            finished_at: step.finished_at.clone().unwrap_or_default(),
            duration: view::span(step.started_at.as_deref(), step.finished_at.as_deref().or(if step.status.is_final() { step.started_at.as_deref() } else { None })),
            has_children: kids > 0,
            message: step.message.clone().unwrap_or_default(),
        }));
        if kids > 0 {
            let parallel = step.child_strategy.as_deref() == Some("parallel");
            out.push(TreeItem::Children(parallel));
            flatten(children, Some(step.id), out);
            out.push(TreeItem::EndChildren(parallel));
        }
        out.push(TreeItem::Close);
    }
}

/// The step tree of `steps` (parents before children, siblings by position).
pub fn tree(steps: &[StepRow]) -> Vec<TreeItem> {
    let mut children: HashMap<Option<i64>, Vec<&StepRow>> = HashMap::new();
    for step in steps {
        children.entry(step.parent_id).or_default().push(step);
    }
    for siblings in children.values_mut() {
        siblings.sort_by_key(|s| (s.position, s.id));
    }
    let mut out = Vec::with_capacity(steps.len() * 2);
    flatten(&children, None, &mut out);
    out
}

/// A change's page.
#[derive(askama::Template)]
#[template(path = "change.html")]
struct ChangePage {
    layout: Layout,
    change: ChangeView,
    tree: Vec<TreeItem>,
    can_cancel: bool,
    can_retry: bool,
}

/// `GET /changes/{id}`.
pub async fn show(State(state): State<AppState>, user: PageUser, Path(id): Path<i64>) -> Result<Response, PageError> {
    let (change, steps) = state.db(move |s| Ok((s.change_summary(id)?, s.steps(id)?))).await?;
    let running = state.workers.running().contains(&id);
    let can_write = user.user.role.can_write();
    let page = ChangePage {
        layout: user.layout(format!("Change {id}")),
        can_cancel: can_write && !change.status.is_final(),
        can_retry: can_write && change.status.is_final() && change.status != ChangeStatus::Success && !running,
        change: ChangeView::new(&change),
        tree: tree(&steps),
    };
    render(&page)
}

/// Runs one of the API's change actions for a page's form and goes back to the change.
async fn act(state: AppState, user: PageUser, id: i64, form: CsrfForm, retry: bool) -> Result<Response, PageError> {
    user.check_csrf(&form.csrf)?;
    if !user.user.role.can_write() {
        return Err(ApiError::forbidden(format!("user {:?} is a viewer: a viewer reads only", user.user.name)).into());
    }
    let operator = Operator(user.user);
    if retry {
        api::retry(State(state), operator, Path(id)).await?;
    } else {
        api::cancel(State(state), operator, Path(id)).await?;
    }
    Ok(Redirect::to(&format!("/changes/{id}")).into_response())
}

/// `POST /changes/{id}/cancel` (form field `csrf`).
pub async fn cancel(State(state): State<AppState>, user: PageUser, Path(id): Path<i64>, Form(form): Form<CsrfForm>) -> Result<Response, PageError> {
    act(state, user, id, form, false).await
}

/// `POST /changes/{id}/retry` (form field `csrf`).
pub async fn retry(State(state): State<AppState>, user: PageUser, Path(id): Path<i64>, Form(form): Form<CsrfForm>) -> Result<Response, PageError> {
    act(state, user, id, form, true).await
}

//! The log viewer (`/changes/{id}/logs`, a step's own at `/changes/{id}/steps/{step}/logs`,
//! `?children=1` with its descendants') and the raw text (`/changes/{id}/logs.txt`).
//!
//! The page itself holds no line: its script asks the API for the screen it shows (the last
//! lines on opening, the lines around `#L123` for a link, more as the reader scrolls, the
//! matches of a search) and keeps at most a few thousand lines in the document, so that a log
//! of a million lines opens and searches as quickly as a short one. New lines come through the
//! API's server-sent events.

use std::collections::{HashMap, HashSet};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::session::PageUser;
use super::view::Layout;
use super::{render, PageError};
use crate::server::jsonapi::ApiError;
use crate::server::AppState;
use crate::store::{LogQuery, StepRow};

/// How many lines the raw text reads from the store at once (10,000).
pub const RAW_PAGE: usize = 10_000;

/// The query of a log page.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct LogsQuery {
    /// With the step's descendants' lines (`1`, `true`).
    #[serde(default)]
    pub children: Option<String>,
    /// For the raw text: only this step's lines.
    #[serde(default)]
    pub step: Option<i64>,
}

impl LogsQuery {
    /// Whether the descendants' lines are asked for.
    fn with_children(&self) -> bool {
        matches!(self.children.as_deref(), Some("1" | "true" | "on" | "yes"))
    }
}

/// The log page.
#[derive(askama::Template)]
#[template(path = "logs.html")]
struct LogsPage {
    layout: Layout,
    change_id: i64,
    status: &'static str,
    running: bool,
    /// The step whose log this is, if one: its id and action.
    step: Option<(i64, String)>,
    /// Whether the step has children, and whether their lines are shown.
    has_children: bool,
    children: bool,
    /// The steps whose lines are shown (comma-separated ids; empty: every step's).
    step_ids: String,
    /// Each step's action by id (JSON), for the lines' labels.
    actions: String,
    /// The raw text's path.
    raw: String,
}

/// The ids of `root` and, with `children`, all its descendants.
pub fn subtree(steps: &[StepRow], root: i64, children: bool) -> Vec<i64> {
    let mut ids = vec![root];
    if children {
        let mut inside: HashSet<i64> = HashSet::from([root]);
        // Parents come before their children in id order (a child is made when its parent ends).
        for step in steps {
            if step.parent_id.is_some_and(|p| inside.contains(&p)) && inside.insert(step.id) {
                ids.push(step.id);
            }
        }
    }
    ids
}

/// Renders the log page of change `id`, of step `step` if given.
async fn page(state: AppState, user: PageUser, id: i64, step: Option<i64>, query: LogsQuery) -> Result<Response, PageError> {
    let (change, steps) = state.db(move |s| Ok((s.change_summary(id)?, s.steps(id)?))).await?;
    let actions: HashMap<String, &str> = steps.iter().map(|s| (s.id.to_string(), s.action.as_str())).collect();
    let children = query.with_children();
    let (step_view, has_children, step_ids, raw) = match step {
        None => (None, false, String::new(), format!("/changes/{id}/logs.txt")),
        Some(step_id) => {
            let Some(row) = steps.iter().find(|s| s.id == step_id) else {
                return Err(ApiError::not_found(format!("change {id} has no step {step_id}")).into());
            };
            let has_children = steps.iter().any(|s| s.parent_id == Some(step_id));
            let ids: Vec<String> = subtree(&steps, step_id, children).iter().map(i64::to_string).collect();
            let raw = format!("/changes/{id}/logs.txt?step={step_id}{}", if children { "&children=1" } else { "" });
            (Some((step_id, row.action.clone())), has_children, ids.join(","), raw)
        }
    };
    let title = match &step_view {
        Some((_, action)) => format!("Change {id}: {action} log"),
        None => format!("Change {id} log"),
    };
    let page = LogsPage {
        layout: user.layout(title),
        change_id: id,
        status: change.status.as_str(),
        running: !change.status.is_final(),
        step: step_view,
        has_children,
        children,
        step_ids,
        actions: serde_json::to_string(&actions).unwrap_or_else(|_| "{}".into()),
        raw,
    };
    render(&page)
}

/// `GET /changes/{id}/logs`: the whole change's log.
pub async fn change_logs(State(state): State<AppState>, user: PageUser, Path(id): Path<i64>) -> Result<Response, PageError> {
    page(state, user, id, None, LogsQuery::default()).await
}

/// `GET /changes/{id}/steps/{step}/logs` (`?children=1`: with its descendants').
pub async fn step_logs(State(state): State<AppState>, user: PageUser, Path((id, step)): Path<(i64, i64)>, Query(query): Query<LogsQuery>) -> Result<Response, PageError> {
    page(state, user, id, Some(step), query).await
}

/// `GET /changes/{id}/logs.txt` (`?step=N`, `&children=1`): the log's messages as plain text, a
/// line each, as a download; read from the store a page at a time while it is sent.
pub async fn raw(State(state): State<AppState>, _user: PageUser, Path(id): Path<i64>, Query(query): Query<LogsQuery>) -> Result<Response, PageError> {
    let steps = state.db(move |s| s.change_summary(id).and_then(|_| s.steps(id))).await?;
    let only = match query.step {
        Some(step) if steps.iter().any(|s| s.id == step) => Some(subtree(&steps, step, query.with_children())),
        Some(step) => return Err(ApiError::not_found(format!("change {id} has no step {step}")).into()),
        None => None,
    };
    let name = match query.step {
        Some(step) => format!("change-{id}-step-{step}.log"),
        None => format!("change-{id}.log"),
    };
    let start = (state, Some(0i64));
    let pages = futures::stream::unfold(start, move |(state, after)| {
        let only = only.clone();
        async move {
            let after = after?;
            let query = LogQuery { after, steps: only, ..LogQuery::default() };
            match state.db(move |s| s.log_lines_page(id, &query, RAW_PAGE)).await {
                Ok(lines) if lines.is_empty() => None,
                Ok(lines) => {
                    let next = (lines.len() == RAW_PAGE).then(|| lines.last().map(|l| l.id)).flatten();
                    let mut text = String::with_capacity(lines.iter().map(|l| l.message.len() + 1).sum());
                    for line in &lines {
                        text.push_str(&line.message);
                        text.push('\n');
                    }
                    Some((Ok::<_, std::io::Error>(text), (state, next)))
                }
                Err(e) => Some((Err(std::io::Error::other(e.detail)), (state, None))),
            }
        }
    });
    let mut response = Body::from_stream(pages).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::StepStatus;

    fn step(id: i64, parent: Option<i64>) -> StepRow {
        StepRow {
            id,
            parent_id: parent,
            position: 0,
            action: format!("a{id}"),
            status: StepStatus::Success,
            child_strategy: None,
            exit_status: None,
            message: None,
            started_at: None,
            finished_at: None,
            duration_secs: None,
        }
    }

    #[test]
    fn a_subtree_holds_the_step_and_with_children_every_descendant() {
        let steps = [step(1, None), step(2, Some(1)), step(3, Some(1)), step(4, Some(3)), step(5, Some(2)), step(6, Some(1))];
        assert_eq!(subtree(&steps, 3, false), [3]);
        assert_eq!(subtree(&steps, 3, true), [3, 4]);
        assert_eq!(subtree(&steps, 2, true), [2, 5]);
        assert_eq!(subtree(&steps, 1, true), [1, 2, 3, 4, 5, 6]);
    }
}

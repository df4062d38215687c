//! `GET /api/changes/{id}/log_lines` (pages of lines by id) and
//! `GET /api/changes/{id}/log_lines/stream` (server-sent events, one per line, `id:` the line's
//! id; `Last-Event-ID` resumes after it; the stream ends with an `end` event once the change has
//! ended and every line was sent).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::broadcast;

use super::auth::CurrentUser;
use super::jsonapi::{self, ApiError};
use super::log_feed::{Batch, Feed, FeedLine, READ_LINES};
use super::paging::{page_size, Params};
use super::state::AppState;
use crate::store::NumberedLine;

/// `GET /api/changes/{id}/log_lines`: `filter[id_gt]` (default 0), `page[size]` (default and at
/// most 1,000); `links.next` when the page is full; `meta.last_id` the id of the change's last
/// line so far.
pub async fn list(State(state): State<AppState>, _user: CurrentUser, Path(id): Path<i64>, Query(params): Query<HashMap<String, String>>) -> Result<Response, ApiError> {
    let params = Params::new(params, &["filter[id_gt]", "page[size]"])?;
    let after = params.number("filter[id_gt]")?.unwrap_or(0);
    let size = page_size(&params, READ_LINES)?;
    let (lines, last_id) = state.db(move |s| Ok((s.log_line_count(id)?, s.log_lines_after(id, after, size)?))).await.map(|(count, lines)| (lines, count))?;
    // Written straight from the lines (a page is up to 1,000 of them): no document tree built.
    let next =
        lines.last().filter(|_| lines.len() == size).map(|last| params.link(&format!("/api/changes/{id}/log_lines"), &[("filter[id_gt]", last.id.to_string())], &[]));
    let page = Page { data: lines.iter().map(LineResource::of).collect(), meta: Meta { last_id }, links: next.map(|next| Links { next }) };
    let body = serde_json::to_string(&page).map_err(|e| ApiError::internal(&e))?;
    let mut response = (axum::http::StatusCode::OK, body).into_response();
    response.headers_mut().insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static(jsonapi::MEDIA_TYPE));
    Ok(response)
}

/// A page of log lines, as `GET .../log_lines` answers it.
#[derive(serde::Serialize)]
struct Page<'a> {
    data: Vec<LineResource<'a>>,
    meta: Meta,
    #[serde(skip_serializing_if = "Option::is_none")]
    links: Option<Links>,
}

/// A log line resource.
#[derive(serde::Serialize)]
struct LineResource<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: String,
    attributes: LineAttributes<'a>,
}

/// A log line's attributes.
#[derive(serde::Serialize)]
struct LineAttributes<'a> {
    message: &'a str,
    step_id: i64,
    stream: &'a str,
    created_at: &'a str,
}

impl<'a> LineResource<'a> {
    fn of(line: &'a NumberedLine) -> LineResource<'a> {
        LineResource {
            kind: "log_lines",
            id: line.id.to_string(),
            attributes: LineAttributes { message: &line.message, step_id: line.step_id, stream: &line.stream, created_at: &line.created_at },
        }
    }
}

/// A page's `meta`.
#[derive(serde::Serialize)]
struct Meta {
    last_id: i64,
}

/// A page's `links`.
#[derive(serde::Serialize)]
struct Links {
    next: String,
}

/// Where a follower is.
struct Follower {
    state: AppState,
    change_id: i64,
    /// The id of the last line sent.
    after: i64,
    /// Held while following: keeps the change's feed running.
    _feed: Arc<Feed>,
    feed: broadcast::Receiver<Batch>,
    /// Lines to send.
    pending: VecDeque<FeedLine>,
    /// Whether the store has been read up to the feed (the broadcast then brings the rest).
    caught_up: bool,
    /// Set once the end event was sent.
    ended: bool,
}

impl Follower {
    /// The next event: a line, or the end; `None` after the end.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                self.after = line.id;
                return Some(Event::default().id(line.id.to_string()).data(&*line.data));
            }
            if self.ended {
                return None;
            }
            if !self.caught_up {
                let (change_id, after) = (self.change_id, self.after);
                let read = self
                    .state
                    .db(move |s| {
                        let status = s.change_summary(change_id)?.status;
                        Ok((s.log_lines_after(change_id, after, READ_LINES)?, status))
                    })
                    .await;
                let Ok((lines, status)) = read else { return None };
                if lines.is_empty() {
                    if status.is_final() {
                        self.ended = true;
                        return Some(Event::default().event("end").data(json!({"status": status.as_str()}).to_string()));
                    }
                    self.caught_up = true;
                }
                self.pending.extend(lines.iter().map(FeedLine::of));
                continue;
            }
            // Behind the broadcast, at the change's end, or a second without news (a feed that
            // ended as this follower joined it): the store has the rest.
            match tokio::time::timeout(Duration::from_secs(1), self.feed.recv()).await {
                Ok(Ok(batch)) if !batch.is_empty() => self.pending.extend(batch.iter().filter(|l| l.id > self.after).cloned()),
                _ => self.caught_up = false,
            }
        }
    }
}

/// `GET /api/changes/{id}/log_lines/stream`: server-sent events from the line after
/// `Last-Event-ID` (or `filter[id_gt]`; default: the first).
pub async fn stream(
    State(state): State<AppState>,
    _user: CurrentUser,
    Path(id): Path<i64>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let params = Params::new(params, &["filter[id_gt]"])?;
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(v.to_str().ok().and_then(|v| v.trim().parse::<i64>().ok()).ok_or_else(|| ApiError::bad_parameter("Last-Event-ID", "not a line id"))?),
        None => None,
    };
    let after = resume.or(params.number("filter[id_gt]")?).unwrap_or(0);
    state.db(move |s| s.change_summary(id)).await?;
    let feed = state.feeds.follow(&state.store, id);
    let follower = Follower { state, change_id: id, after, feed: feed.subscribe(), _feed: feed, pending: VecDeque::new(), caught_up: false, ended: false };
    let events = futures::stream::unfold(follower, |mut f| async move { f.next().await.map(|e| (Ok::<_, Infallible>(e), f)) });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

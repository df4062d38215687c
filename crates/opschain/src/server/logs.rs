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
use crate::store::{LogQuery, NumberedLine};

/// `GET /api/changes/{id}/log_lines`: `filter[id_gt]` (default 0) and `filter[id_lt]`;
/// `filter[step_id_eq]` or `filter[step_id_in]` (ids separated by commas): only those steps'
/// lines; `filter[message_cont]`: only the lines whose message contains the text (ASCII letters
/// in either case: a search); `sort` `id` (the default) or `-id` (newest first: a log's last
/// lines without reading the rest); `page[size]` (default and at most 1,000); `links.next` when
/// the page is full; `meta.last_id` the id of the change's last line so far.
pub async fn list(State(state): State<AppState>, _user: CurrentUser, Path(id): Path<i64>, Query(params): Query<HashMap<String, String>>) -> Result<Response, ApiError> {
    let params = Params::new(params, &["filter[id_gt]", "filter[id_lt]", "filter[step_id_eq]", "filter[step_id_in]", "filter[message_cont]", "sort", "page[size]"])?;
    let size = page_size(&params, READ_LINES)?;
    let query = log_query(&params)?;
    let descending = query.descending;
    let (lines, last_id) = state.db(move |s| Ok((s.log_line_count(id)?, s.log_lines_page(id, &query, size)?))).await.map(|(count, lines)| (lines, count))?;
    // Written straight from the lines (a page is up to 1,000 of them): no document tree built.
    let next = lines.last().filter(|_| lines.len() == size).map(|last| {
        let next = if descending { ("filter[id_lt]", last.id.to_string()) } else { ("filter[id_gt]", last.id.to_string()) };
        params.link(&format!("/api/changes/{id}/log_lines"), &[next], &[])
    });
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

/// The longest text `filter[message_cont]` takes (1,024 bytes).
pub const MAX_SEARCH: usize = 1024;

/// The [`LogQuery`] of a `log_lines` request's parameters; 400 for one that is not valid.
fn log_query(params: &Params) -> Result<LogQuery, ApiError> {
    let descending = match params.get("sort").unwrap_or("id") {
        "id" => false,
        "-id" => true,
        other => return Err(ApiError::bad_parameter("sort", format!("{other:?}: sort by id or -id"))),
    };
    let steps = match (params.get("filter[step_id_eq]"), params.get("filter[step_id_in]")) {
        (Some(_), Some(_)) => return Err(ApiError::bad_parameter("filter[step_id_in]", "give filter[step_id_eq] or filter[step_id_in], not both")),
        (Some(one), None) => Some(vec![one.trim().parse::<i64>().map_err(|_| ApiError::bad_parameter("filter[step_id_eq]", format!("{one:?} is not a step id")))?]),
        (None, Some(list)) => Some(
            list.split(',')
                .map(|s| s.trim().parse::<i64>().map_err(|_| ApiError::bad_parameter("filter[step_id_in]", format!("{s:?} is not a step id"))))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        (None, None) => None,
    };
    let contains = params.get("filter[message_cont]").filter(|t| !t.is_empty()).map(str::to_string);
    if contains.as_ref().is_some_and(|t| t.len() > MAX_SEARCH) {
        return Err(ApiError::bad_parameter("filter[message_cont]", format!("longer than {MAX_SEARCH} bytes")));
    }
    Ok(LogQuery { after: params.number("filter[id_gt]")?.unwrap_or(0), before: params.number("filter[id_lt]")?, descending, steps, contains })
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

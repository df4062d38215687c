//! Live log lines, read once per change and fanned out to every follower. A change's feed is a
//! task that wakes after each store commit, reads the lines committed since its last read, and
//! broadcasts them; it starts with the change's first follower and ends with its last, or with
//! the change. A follower subscribes first, then catches up from the store, then takes the
//! broadcast, skipping what it already has by line id; one that falls behind the broadcast
//! catches up from the store again. So a line reaches every follower once, in order, however
//! many follow, for one read of the store per commit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::store::{NumberedLine, Store};

/// How many batches of lines a feed holds for a slow follower before the follower must catch up
/// from the store (256).
pub const FEED_CAPACITY: usize = 256;

/// How many lines one read of the store takes at most (1,000).
pub const READ_LINES: usize = 1000;

/// A line as a follower sends it: its id, and its event's data, serialised once for every
/// follower.
#[derive(Debug, Clone)]
pub struct FeedLine {
    /// The line's id.
    pub id: i64,
    /// `{"message", "step_id", "stream", "created_at"}`.
    pub data: Arc<str>,
}

impl FeedLine {
    /// The feed's form of `line`.
    pub fn of(line: &NumberedLine) -> FeedLine {
        let data = serde_json::json!({"message": line.message, "step_id": line.step_id, "stream": line.stream, "created_at": line.created_at});
        FeedLine { id: line.id, data: data.to_string().into() }
    }
}

/// A batch of lines, shared by every follower; an empty one says the change ended.
pub type Batch = Arc<[FeedLine]>;

/// One change's feed.
pub struct Feed {
    sender: broadcast::Sender<Batch>,
    /// Cleared when its task ends: a new follower then starts a new feed.
    running: AtomicBool,
}

impl Feed {
    /// A receiver of the batches broadcast from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Batch> {
        self.sender.subscribe()
    }
}

/// Every change's feed.
#[derive(Default)]
pub struct Feeds {
    feeds: Mutex<HashMap<i64, Weak<Feed>>>,
}

impl Feeds {
    /// The feed of `change_id`, started when it has none. The caller holds the returned `Arc`
    /// while it follows; the feed's task ends once no one holds it.
    pub fn follow(&self, store: &Arc<Store>, change_id: i64) -> Arc<Feed> {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(feed) = feeds.get(&change_id).and_then(Weak::upgrade).filter(|f| f.running.load(Ordering::SeqCst)) {
            return feed;
        }
        feeds.retain(|_, f| f.strong_count() > 0);
        let (sender, _) = broadcast::channel(FEED_CAPACITY);
        let feed = Arc::new(Feed { sender: sender.clone(), running: AtomicBool::new(true) });
        feeds.insert(change_id, Arc::downgrade(&feed));
        tokio::spawn(pump(Arc::clone(store), change_id, sender, Arc::downgrade(&feed)));
        feed
    }
}

/// The feed's task: after each commit of the store, reads the change's new lines and broadcasts
/// them, until the feed has no follower or the change ended (and every line was sent).
async fn pump(store: Arc<Store>, change_id: i64, sender: broadcast::Sender<Batch>, feed: Weak<Feed>) {
    pump_lines(store, change_id, &sender, &feed).await;
    if let Some(feed) = feed.upgrade() {
        feed.running.store(false, Ordering::SeqCst);
    }
    // The end marker: followers read the store to its end (or see it did not end), then end.
    let _ = sender.send(Arc::from([]));
}

/// The loop of [`pump`].
async fn pump_lines(store: Arc<Store>, change_id: i64, sender: &broadcast::Sender<Batch>, feed: &Weak<Feed>) {
    let mut commits = store.subscribe_commits();
    let start = Arc::clone(&store);
    let Ok(Ok(mut after)) = tokio::task::spawn_blocking(move || start.log_line_count(change_id)).await else { return };
    loop {
        if feed.strong_count() == 0 {
            return;
        }
        commits.borrow_and_update();
        let reader = Arc::clone(&store);
        let read = tokio::task::spawn_blocking(move || -> Result<_, crate::store::StoreError> {
            let ended = reader.change_summary(change_id)?.status.is_final();
            Ok((reader.log_lines_after(change_id, after, READ_LINES)?, ended))
        })
        .await;
        let Ok(Ok((lines, ended))) = read else { return };
        if let Some(last) = lines.last() {
            after = last.id;
            let full = lines.len() == READ_LINES;
            let _ = sender.send(lines.iter().map(FeedLine::of).collect());
            if full {
                continue;
            }
        } else if ended {
            return;
        }
        // A commit, or now and then a look anyway (a change ended by another process).
        let _ = tokio::time::timeout(Duration::from_secs(1), commits.changed()).await;
    }
}

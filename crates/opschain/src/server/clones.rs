//! The server's clones of git remotes: one bare clone per project and remote under
//! `<state dir>/remotes/<project>/<remote>.git`, made when a change first uses the remote and
//! fetched (every branch and tag, pruned) before each change resolves its revision, so a change
//! runs the commit its revision names at the moment it is created.

use std::path::PathBuf;
use std::sync::Arc;

use super::jsonapi::{error_chain, ApiError};
use super::state::AppState;
use crate::repo;

/// Clones or fetches the remote `url` (named `remote` in project `project`) and resolves `rev`:
/// the clone's directory and the commit. 422 naming `git_remote_name` when git cannot fetch, or
/// `git_rev` when the revision names no commit.
pub async fn fetch_and_resolve(state: &AppState, project: &str, remote: &str, url: &str, rev: &str) -> Result<(PathBuf, String), ApiError> {
    let dir = state.controller.state_dir.join("remotes").join(project).join(format!("{remote}.git"));
    let lock = {
        let mut locks = state.remote_locks.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(locks.entry(dir.clone()).or_default())
    };
    let _held = lock.lock().await;
    let (url, rev) = (url.to_string(), rev.to_string());
    let task = tokio::task::spawn_blocking(move || {
        let fetched = if dir.join("HEAD").is_file() {
            repo::git(&dir, &["fetch", "--quiet", "--prune", "--force", "origin", "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]).map(drop)
        } else {
            let parent = dir.parent().expect("a clone's directory has a parent");
            std::fs::create_dir_all(parent)
                .map_err(|source| repo::RepoError::CreateDir { path: parent.to_path_buf(), source })
                .and_then(|()| repo::git(parent, &["clone", "--quiet", "--bare", "--", &url, &dir.to_string_lossy()]).map(drop))
        };
        if let Err(e) = fetched {
            return Err(ApiError::invalid("/data/attributes/git_remote_name", format!("cannot fetch the git remote {url}: {}", error_chain(&e))));
        }
        match repo::resolve(&dir, &rev) {
            Ok(commit) => Ok((dir, commit)),
            Err(_) => Err(ApiError::invalid("/data/attributes/git_rev", format!("{rev:?} names no commit of the git remote {url}"))),
        }
    });
    task.await.map_err(|e| ApiError::internal(&e))?
}

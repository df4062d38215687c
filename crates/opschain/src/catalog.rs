//! Projects and environments by code: the one a command names, found or (where a command may)
//! created. A code that names nothing is an error listing the known codes, the one closest to it
//! (`did you mean web?`) and the command that creates it, so that a typo never runs a change on a
//! project nobody meant to make.

use std::fmt;

use super::store::{Catalog, Level, Removal, StoreError};

/// Why a project or environment could not be found.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// No project has the code.
    #[error("project {code:?} does not exist ({known}); create it with `opschain project create --code {code}`")]
    UnknownProject {
        /// The code given.
        code: String,
        /// The codes that exist.
        known: Known,
    },
    /// The project has no environment with the code.
    #[error("environment {code:?} of project {project:?} does not exist ({known}); create it with `opschain environment create -p {project} --code {code}`")]
    UnknownEnvironment {
        /// The project code.
        project: String,
        /// The code given.
        code: String,
        /// The project's environment codes.
        known: Known,
    },
    /// A change names an archived project or environment.
    #[error("{what} is archived: it takes no new change (restore it with `opschain {noun} unarchive {args}`)")]
    Archived {
        /// `project "web"`, `environment "dev" of project "web"`.
        what: String,
        /// "project" or "environment".
        noun: &'static str,
        /// The arguments that name it.
        args: String,
    },
    /// A project or environment that had changes cannot be deleted (the changes' history would
    /// lose its owner).
    #[error("{what} had {changes} change(s): it cannot be deleted, only archived (`opschain {noun} archive {args}`)")]
    HasChanges {
        /// `project "web"`, `environment "dev" of project "web"`.
        what: String,
        /// "project" or "environment".
        noun: &'static str,
        /// The arguments that name it.
        args: String,
        /// How many changes it had.
        changes: i64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The codes that exist, shown in an error about one that does not: `known: a, b; did you mean
/// a?`, or `there are none`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// Every code, in the store's order.
    pub codes: Vec<String>,
    /// The code closest to the one given, when one is close enough to be a typo of it.
    pub suggestion: Option<String>,
}

impl Known {
    /// The known `codes`, with the one closest to `given` as the suggestion.
    pub fn new(given: &str, codes: Vec<String>) -> Known {
        let suggestion = closest(given, &codes).map(str::to_string);
        Known { codes, suggestion }
    }
}

impl fmt::Display for Known {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.codes.is_empty() {
            return f.write_str("there are none");
        }
        write!(f, "known: {}", self.codes.join(", "))?;
        if let Some(s) = &self.suggestion {
            write!(f, "; did you mean {s}?")?;
        }
        Ok(())
    }
}

/// The code of `codes` closest to `given` by edit distance, when it is close enough to be a typo:
/// at most a third of the longer code's characters differ (at least one may), as `git` and
/// `cargo` suggest commands.
pub fn closest<'a>(given: &str, codes: &'a [String]) -> Option<&'a str> {
    codes
        .iter()
        .map(|c| (edit_distance(given, c), c))
        .filter(|(d, c)| *d > 0 && *d <= (given.chars().count().max(c.chars().count()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.as_str())
}

/// The Damerau–Levenshtein (optimal string alignment) distance of `a` and `b`, in characters: a
/// swapped pair of neighbours (`mnie` for `mine`) counts as one edit.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The id of project `code`; an unknown code is [`CatalogError::UnknownProject`].
pub fn find_project(store: &dyn Catalog, code: &str) -> Result<i64, CatalogError> {
    match store.project_id(code) {
        Err(StoreError::NotFound(_)) => {
            let codes = store.projects()?.into_iter().map(|p| p.code).collect();
            Err(CatalogError::UnknownProject { code: code.to_string(), known: Known::new(code, codes) })
        }
        other => Ok(other?),
    }
}

/// The id of environment `code` of project `project` (id `project_id`); an unknown code is
/// [`CatalogError::UnknownEnvironment`].
pub fn find_environment(store: &dyn Catalog, project: &str, project_id: i64, code: &str) -> Result<i64, CatalogError> {
    match store.environment_id(project_id, code) {
        Err(StoreError::NotFound(_)) => {
            let codes = store.environments(project_id)?.into_iter().map(|e| e.code).collect();
            Err(CatalogError::UnknownEnvironment { project: project.to_string(), code: code.to_string(), known: Known::new(code, codes) })
        }
        other => Ok(other?),
    }
}

/// An id found or made: whether the command created the project or environment it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// The id.
    pub id: i64,
    /// Whether it was created just now.
    pub created: bool,
}

/// The id of project `code`, creating it when new.
pub fn ensure_project(store: &dyn Catalog, code: &str) -> Result<Found, CatalogError> {
    match store.project_id(code) {
        Err(StoreError::NotFound(_)) => Ok(Found { id: store.ensure_project(code)?, created: true }),
        other => Ok(Found { id: other?, created: false }),
    }
}

/// The id of environment `code` of a project, creating it when new.
pub fn ensure_environment(store: &dyn Catalog, project_id: i64, code: &str) -> Result<Found, CatalogError> {
    match store.environment_id(project_id, code) {
        Err(StoreError::NotFound(_)) => Ok(Found { id: store.ensure_environment(project_id, code)?, created: true }),
        other => Ok(Found { id: other?, created: false }),
    }
}

/// Whether a command may create the project or environment it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Only an existing one: an unknown code is an error (reads, and changes).
    Existing,
    /// An unknown code is created (`set-properties`).
    CreateWhenNew,
}

/// The owner of a properties document: its level and id, and which of the project and the
/// environment the lookup created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// Project or environment properties.
    pub level: Level,
    /// The project's or environment's id.
    pub id: i64,
    /// Whether the project was created by the lookup.
    pub created_project: bool,
    /// Whether the environment was created by the lookup.
    pub created_environment: bool,
}

/// The properties owner of `project` (with `environment`: of that environment of it).
pub fn owner(store: &dyn Catalog, project: &str, environment: Option<&str>, lookup: Lookup) -> Result<Owner, CatalogError> {
    let p = match lookup {
        Lookup::Existing => Found { id: find_project(store, project)?, created: false },
        Lookup::CreateWhenNew => ensure_project(store, project)?,
    };
    let Some(env) = environment else {
        return Ok(Owner { level: Level::Project, id: p.id, created_project: p.created, created_environment: false });
    };
    let e = match lookup {
        Lookup::Existing => Found { id: find_environment(store, project, p.id, env)?, created: false },
        Lookup::CreateWhenNew => ensure_environment(store, p.id, env)?,
    };
    Ok(Owner { level: Level::Environment, id: e.id, created_project: p.created, created_environment: e.created })
}

/// The project and environment a new change runs in, by id: both exist and neither is
/// archived.
pub fn change_target(store: &dyn Catalog, project: &str, environment: &str) -> Result<(i64, i64), CatalogError> {
    let project_id = find_project(store, project)?;
    if store.project_archived(project_id)? {
        return Err(CatalogError::Archived { what: format!("project {project:?}"), noun: "project", args: format!("--code {project}") });
    }
    let environment_id = find_environment(store, project, project_id, environment)?;
    if store.environment_archived(environment_id)? {
        return Err(CatalogError::Archived {
            what: format!("environment {environment:?} of project {project:?}"),
            noun: "environment",
            args: format!("-p {project} --code {environment}"),
        });
    }
    Ok((project_id, environment_id))
}

/// Archives (`archived`) or restores project `code`.
pub fn archive_project(store: &dyn Catalog, code: &str, archived: bool) -> Result<(), CatalogError> {
    let id = find_project(store, code)?;
    Ok(store.set_project_archived(id, archived)?)
}

/// Archives (`archived`) or restores environment `code` of `project`.
pub fn archive_environment(store: &dyn Catalog, project: &str, code: &str, archived: bool) -> Result<(), CatalogError> {
    let project_id = find_project(store, project)?;
    let id = find_environment(store, project, project_id, code)?;
    Ok(store.set_environment_archived(id, archived)?)
}

/// Deletes project `code`, its environments and their properties; refused when it had changes.
pub fn delete_project(store: &dyn Catalog, code: &str) -> Result<(), CatalogError> {
    let id = find_project(store, code)?;
    match store.delete_project(id)? {
        Removal::Removed => Ok(()),
        Removal::HasChanges(changes) => Err(CatalogError::HasChanges { what: format!("project {code:?}"), noun: "project", args: format!("--code {code}"), changes }),
    }
}

/// Deletes environment `code` of `project` and its properties; refused when it had changes.
pub fn delete_environment(store: &dyn Catalog, project: &str, code: &str) -> Result<(), CatalogError> {
    let project_id = find_project(store, project)?;
    let id = find_environment(store, project, project_id, code)?;
    match store.delete_environment(id)? {
        Removal::Removed => Ok(()),
        Removal::HasChanges(changes) => Err(CatalogError::HasChanges {
            what: format!("environment {code:?} of project {project:?}"),
            noun: "environment",
            args: format!("-p {project} --code {code}"),
            changes,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_code_is_suggested_and_a_far_one_is_not() {
        let codes: Vec<String> = ["web", "mine", "production"].map(String::from).to_vec();
        assert_eq!(closest("mnie", &codes), Some("mine"), "a swapped pair is one edit");
        assert_eq!(closest("wbe", &codes), Some("web"));
        assert_eq!(closest("prodution", &codes), Some("production"));
        assert_eq!(closest("database", &codes), None);
        assert_eq!(closest("web", &codes), None, "the code itself is no suggestion");
        assert_eq!(Known::new("x", vec![]).to_string(), "there are none");
        assert_eq!(Known::new("wbe", codes.clone()).to_string(), "known: web, mine, production; did you mean web?");
    }
}

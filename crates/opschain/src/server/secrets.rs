//! `/api/secret_sets`: secret sets are written through the API and never read back: a response
//! names a set and the names of its secrets, never a value.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::auth::{CurrentUser, Operator};
use super::jsonapi::{self, read_document, resource, ApiError, Request};
use super::state::AppState;
use crate::store::NewEvent;

/// The attributes a secret set is written with.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretSet {
    data: Map<String, Value>,
}

/// A secret set resource: its name and its secrets' names.
fn set_resource(name: &str, set: &Map<String, Value>) -> Value {
    resource("secret_sets", name, json!({"name": name, "secret_names": set.keys().collect::<Vec<_>>()}))
}

/// `GET /api/secret_sets`: every set, by name, with its secrets' names.
pub async fn list(State(state): State<AppState>, _user: CurrentUser) -> Result<Response, ApiError> {
    let sets = state
        .db(|s| {
            let mut sets = Vec::new();
            for name in s.secret_set_names()? {
                let set = s.secrets(&name)?.unwrap_or_default();
                sets.push(set_resource(&name, &set));
            }
            Ok(sets)
        })
        .await?;
    Ok(jsonapi::ok(Value::Array(sets)))
}

/// `PUT /api/secret_sets/{name}`: creates or replaces a set (`{"NAME": "value"}`: names
/// POSIX-portable, values strings); 422 naming the secret that is not one, never its value.
pub async fn put(State(state): State<AppState>, Operator(user): Operator, Path(name): Path<String>, body: Body) -> Result<Response, ApiError> {
    let request: Request<SecretSet> = read_document(body, state.settings.body_limit).await?;
    let set = request.data.expect_type("secret_sets")?.data;
    opschain_runner::exec::check_set_name(&name).map_err(|e| ApiError::not_found(format!("{name:?} cannot name a secret set: {e}")))?;
    for (key, value) in &set {
        let pointer = format!("/data/attributes/data/{}", key.replace('~', "~0").replace('/', "~1"));
        opschain_runner::env::check_name(key).map_err(|e| ApiError::invalid(&pointer, e))?;
        let Value::String(text) = value else { return Err(ApiError::invalid(&pointer, "a secret value must be a string")) };
        opschain_runner::env::check_value(text).map_err(|e| ApiError::invalid(&pointer, e))?;
    }
    let (stored, target) = (set.clone(), format!("secret_set/{name}"));
    let event_name = name.clone();
    state
        .db(move |s| {
            s.set_secrets(&event_name, &stored)?;
            let names: Vec<&String> = stored.keys().collect();
            s.record_event(&NewEvent { username: Some(&user.name), kind: "secret_set.update", target: Some(&target), detail: json!({"secret_names": names}) })
        })
        .await?;
    Ok(jsonapi::ok(set_resource(&name, &set)))
}

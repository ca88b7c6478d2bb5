//! The checks every client publish passes, whatever its transport (HTTP
//! `POST /v1/events`, `/ws`, Socket.IO), in this order:
//!
//! 1. the token may publish to the topic (`forbidden`);
//! 2. the topic and event type are not pgtide's own (`reserved_topic`, see
//!    [`pgtide_core::reserved`]); admins may only with `--allow-reserved-publish`;
//! 3. PostgreSQL can store every value (no NUL, numbers `numeric` holds; see
//!    [`pgtide_core::storable`]), reported with the JSON pointer in the request;
//! 4. the data matches the topic's active schema (`validation_failed`).
//!
//! pgtide's own events (webhook test sends, drop notices, CDC) do not come
//! through here, so they are never refused.

use axum::http::StatusCode;
use pgtide_core::Topic;
use pgtide_core::reserved::{
    Reserved, check_reserved, check_reserved_template, check_reserved_topic, check_reserved_type,
};
use pgtide_core::storable::{Unstorable, check_json, check_text, push_pointer};
use pgtide_store::ValidationIssue;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::session::Refusal;
use crate::{ApiError, AppState};

/// What a publish carries that ends up in the store, each with the JSON
/// pointer naming it in the client's request.
#[derive(Debug, Default)]
pub struct Draft<'a> {
    /// `(pointer, value)` of JSON values (`/data`, `/attributes`).
    pub json: Vec<(&'a str, &'a Value)>,
    /// `(pointer, text)` of plain strings (`/correlation_id`, attribute keys and values).
    pub texts: Vec<(String, &'a str)>,
}

/// Why a publish is refused.
#[derive(Debug)]
pub enum Refused {
    Forbidden(String),
    Reserved(Reserved),
    Unstorable(Unstorable),
    Invalid {
        topic: String,
        issues: Vec<ValidationIssue>,
    },
}

/// Runs the checks of this module for publishing `event_type` to `topic`.
pub fn check(
    state: &AppState,
    caller: &Caller,
    topic: &Topic,
    event_type: &str,
    data: &Value,
    draft: &Draft<'_>,
) -> Result<(), Refused> {
    if !caller.may_publish(topic.as_str()) {
        return Err(Refused::Forbidden(format!(
            "this token may not publish to {topic}"
        )));
    }
    if !(caller.admin && state.allow_reserved_publish) {
        check_reserved(topic, event_type).map_err(Refused::Reserved)?;
    }
    for (pointer, value) in &draft.json {
        check_json(pointer, value).map_err(Refused::Unstorable)?;
    }
    for (pointer, text) in &draft.texts {
        check_text(pointer, text).map_err(Refused::Unstorable)?;
    }
    if let Err(issues) = state.store.schemas().validate(topic.as_str(), data) {
        return Err(Refused::Invalid {
            topic: topic.as_str().to_owned(),
            issues,
        });
    }
    Ok(())
}

/// The checks of this module that apply to an API mapping a non-admin
/// creates, whose events it publishes in effect: its `topic` (a topic, or a
/// template whose every rendering counts) must be covered by the token's
/// `publish` claim (`forbidden`), and neither it nor its `event_type` may be
/// pgtide's own (`reserved_topic`; a template must start with a literal that
/// rules reserved first segments out, see
/// [`pgtide_core::reserved::check_reserved_template`]). A mapping without
/// `event_type` takes the operation's own type (`row.inserted`, …), which is
/// what the change was, so that default stays allowed. Texts that do not
/// parse are left to the mapping load, which refuses them for anyone.
pub fn check_mapping(
    caller: &Caller,
    topic: Option<&str>,
    event_type: Option<&str>,
) -> Result<(), Refused> {
    if let Some(text) = topic
        && let Some(reach) = pgtide_mapping::topic_reach(text)
    {
        if !caller.may_publish_all(&reach.pattern) {
            let what = match reach.template_literal {
                None => format!("to {}", reach.pattern),
                Some(_) => format!("to every topic of {text:?} ({})", reach.pattern),
            };
            let grants: Vec<&str> = caller
                .claims
                .publish
                .iter()
                .flatten()
                .map(pgtide_core::Pattern::as_str)
                .collect();
            return Err(Refused::Forbidden(format!(
                "this token may not publish {what} (its publish claim allows only {}); a mapping's events are its creator's publishes",
                if grants.is_empty() {
                    "nothing".to_owned()
                } else {
                    grants.join(", ")
                }
            )));
        }
        match &reach.template_literal {
            None => {
                if let Ok(topic) = Topic::parse(text) {
                    check_reserved_topic(&topic).map_err(Refused::Reserved)?;
                }
            }
            Some(literal) => {
                check_reserved_template(text, literal).map_err(Refused::Reserved)?;
            }
        }
    }
    if let Some(event_type) = event_type {
        check_reserved_type(event_type).map_err(Refused::Reserved)?;
    }
    Ok(())
}

/// The pointers and texts of a string map (HTTP `attributes`): keys and values.
pub fn string_map<'a>(
    pointer: &str,
    map: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Vec<(String, &'a str)> {
    map.into_iter()
        .flat_map(|(k, v)| {
            let here = push_pointer(pointer, k);
            [(here.clone(), k.as_str()), (here, v.as_str())]
        })
        .collect()
}

impl From<Refused> for ApiError {
    fn from(r: Refused) -> ApiError {
        match r {
            Refused::Forbidden(m) => crate::auth::forbidden(m),
            Refused::Reserved(r) => {
                ApiError::new(StatusCode::FORBIDDEN, "reserved_topic", r.to_string())
            }
            Refused::Unstorable(u) => {
                ApiError::bad_request(format!("{} cannot be stored: {}", u.pointer, u.problem))
                    .with_details(vec![
                        json!({"pointer": u.pointer, "message": u.problem.to_string()}),
                    ])
            }
            Refused::Invalid { topic, issues } => ApiError::invalid_payload(&topic, issues),
        }
    }
}

impl From<Refused> for Refusal {
    fn from(r: Refused) -> Refusal {
        match r {
            Refused::Forbidden(m) => ("forbidden", m),
            Refused::Reserved(r) => ("reserved_topic", r.to_string()),
            Refused::Unstorable(u) => (
                "invalid_message",
                format!("{} cannot be stored: {}", u.pointer, u.problem),
            ),
            Refused::Invalid { issues, .. } => {
                let text: Vec<String> = issues
                    .iter()
                    .map(|i| format!("{} (at {:?})", i.message, i.pointer))
                    .collect();
                ("validation_failed", text.join("; "))
            }
        }
    }
}

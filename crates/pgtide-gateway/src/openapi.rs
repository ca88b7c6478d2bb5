//! The OpenAPI 3 document served at `/v1/openapi.json`.
//!
//! Routes are registered through `utoipa_axum`'s router together with their
//! `#[utoipa::path]` annotations, so a route cannot exist without its entry in
//! the document. This module adds what is common to all of them: the bearer
//! scheme and the error responses every authenticated route can give.

use serde::Serialize;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, ResponseBuilder};
use utoipa::{OpenApi as _, ToSchema};

/// The contract's error body: `{"error": {"code", "message", "details"}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `bad_request`, `forbidden`.
    pub code: String,
    /// What is wrong and where.
    pub message: String,
    /// Per-field or per-issue detail; always present, possibly empty.
    #[schema(value_type = Vec<Object>)]
    pub details: Vec<serde_json::Value>,
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "pgtide",
        description = "Postgres change feeds and events: the HTTP API. Live delivery is on `/ws`, \
            `/ws/exactly-once` and Socket.IO v4 at `/socket.io/` (token in the handshake `auth: {token}`).",
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    tags(
        (name = "events", description = "Publish, query and replay events"),
        (name = "registry", description = "Topics, schemas, mappings, dead letters"),
        (name = "webhooks", description = "Signed, durable webhook endpoints and their deliveries"),
        (name = "realtime", description = "WebSocket endpoints and their figures"),
        (name = "health", description = "Liveness, readiness, metrics (no token needed)"),
    )
)]
struct Base;

/// Routes anyone may call without a token.
const PUBLIC: &[&str] = &["/healthz", "/readyz", "/metrics", "/v1/openapi.json"];

/// The document's frame, before the routes add their paths.
pub fn base() -> OpenApi {
    Base::openapi()
}

/// Adds the bearer scheme to every route but the public ones, with the 400,
/// 401 and 403 answers they can all give, and 404 to those naming a
/// resource in their path.
pub fn finish(mut api: OpenApi) -> OpenApi {
    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .build(),
        ),
    );
    for (path, item) in api.paths.paths.iter_mut() {
        if PUBLIC.contains(&path.as_str()) {
            continue;
        }
        let names_a_resource = path.contains('{');
        for operation in [
            &mut item.get,
            &mut item.post,
            &mut item.patch,
            &mut item.put,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            secure(operation);
            if names_a_resource {
                add_error(operation, "404", "No such resource (or another org's)");
            }
        }
    }
    api
}

fn secure(operation: &mut Operation) {
    operation
        .security
        .get_or_insert_with(Vec::new)
        .push(SecurityRequirement::new("bearer", Vec::<String>::new()));
    for (status, description) in [
        ("400", "Malformed request: the message names what is wrong"),
        ("401", "Missing, malformed or expired token"),
        ("403", "The token's role or patterns do not allow this"),
    ] {
        add_error(operation, status, description);
    }
}

/// Documents that `operation` may answer `status` with the error body,
/// unless its own annotation already says more.
fn add_error(operation: &mut Operation, status: &str, description: &str) {
    operation
        .responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
                .into()
        });
}

//! The claims of a verified token, read strictly, and the permission checks
//! every transport asks of them.
//!
//! Reading is strict on purpose: a claim with the wrong shape (a role we do
//! not know, a pattern that does not parse) refuses the token instead of being
//! ignored, because ignoring a restriction would widen what the caller may do.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use pgtide_core::Pattern;
use serde_json::{Map, Value};

use crate::{AuthError, Result};

/// How far `exp` and `nbf` may be off, so clocks a little apart between the
/// issuer and this server do not refuse fresh tokens.
pub const LEEWAY_SECS: i64 = 30;

/// Roles, in increasing power (so `Read < Operator < Admin`).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Subscribe and query; never publish unless the token's `publish` says so.
    #[default]
    Read,
    /// Also publish.
    Operator,
    /// Everything, across every org.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is none of `admin`, `operator`, `read`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected admin, operator or read")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(text: &str) -> Result<Role, UnknownRole> {
        match text {
            "read" => Ok(Role::Read),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(UnknownRole(other.to_owned())),
        }
    }
}

/// The verified claims of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    /// The tenant; `None` for tokens that belong to no org.
    pub org_id: Option<i64>,
    /// `read` when the token has no `role` claim.
    pub role: Role,
    /// `None`: no restriction (every topic of the org).
    pub subscribe: Option<Vec<Pattern>>,
    /// `None`: the role decides (read may not publish, operator and admin may
    /// publish anywhere). When present, the list decides for every role.
    pub publish: Option<Vec<Pattern>>,
    /// Whether SQL over WebSocket/WebRTC is allowed (and then only when the
    /// server has a `--sql-role`).
    pub sql: bool,
    /// Expiry, seconds since the Unix epoch.
    pub exp: Option<i64>,
}

impl Claims {
    /// The identity used with `--insecure-no-auth`: admin, no org, everything
    /// allowed.
    pub fn insecure() -> Claims {
        Claims {
            sub: "insecure".into(),
            org_id: None,
            role: Role::Admin,
            subscribe: None,
            publish: None,
            sql: true,
            exp: None,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether the token may subscribe to `pattern`: it must be covered by one
    /// of the token's `subscribe` patterns. A request wider than the grant is
    /// refused rather than silently narrowed, so a client never mistakes a
    /// partial stream for the whole one.
    pub fn may_subscribe(&self, pattern: &Pattern) -> bool {
        match &self.subscribe {
            None => true,
            Some(allowed) => allowed.iter().any(|grant| grant.covers(pattern)),
        }
    }

    /// Whether the token may read events of `topic` (dotted, valid): one of
    /// its `subscribe` patterns matches it.
    pub fn may_read_topic(&self, topic: &str) -> bool {
        match &self.subscribe {
            None => true,
            Some(allowed) => allowed.iter().any(|grant| grant.matches(topic)),
        }
    }

    /// Whether the token may publish to `topic`, a concrete topic in dotted
    /// form (as `pgtide_core::Topic` gives it).
    pub fn may_publish(&self, topic: &str) -> bool {
        match &self.publish {
            Some(allowed) => allowed.iter().any(|grant| grant.matches(topic)),
            None => self.role >= Role::Operator,
        }
    }

    /// Whether the token may publish to every topic `pattern` matches (what a
    /// mapping's topic template can render): one `publish` grant must cover
    /// the whole pattern; without a `publish` claim the role decides, as in
    /// [`Claims::may_publish`].
    pub fn may_publish_all(&self, pattern: &Pattern) -> bool {
        match &self.publish {
            Some(allowed) => allowed.iter().any(|grant| grant.covers(pattern)),
            None => self.role >= Role::Operator,
        }
    }

    /// Whether an event of `event_org` is visible: admins see all; others see
    /// their org's events and events with no org.
    pub fn may_see(&self, event_org: Option<i64>) -> bool {
        self.is_admin() || event_org.is_none() || event_org == self.org_id
    }

    /// The claims as a JSON object in canonical form: what [`crate::mint_hs256`]
    /// signs, and what SQL sessions get as `request.jwt.claims` so row-level
    /// security policies can read `org_id` and `role`. Absent claims are left
    /// out rather than written as `null`.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("sub".into(), Value::from(self.sub.as_str()));
        if let Some(org) = self.org_id {
            out.insert("org_id".into(), Value::from(org));
        }
        out.insert("role".into(), Value::from(self.role.as_str()));
        for (name, list) in [("subscribe", &self.subscribe), ("publish", &self.publish)] {
            if let Some(list) = list {
                let texts = list.iter().map(|p| Value::from(p.as_str())).collect();
                out.insert(name.into(), Value::Array(texts));
            }
        }
        if self.sql {
            out.insert("sql".into(), Value::Bool(true));
        }
        if let Some(exp) = self.exp {
            out.insert("exp".into(), Value::from(exp));
        }
        Value::Object(out)
    }

    /// Reads the claim set of a token whose signature has been checked, and
    /// enforces `exp` and `nbf` against `now` (seconds since the epoch), both
    /// with [`LEEWAY_SECS`]. With `require_exp`, a token without `exp` is
    /// refused.
    pub(crate) fn from_payload(
        payload: &Map<String, Value>,
        now: i64,
        require_exp: bool,
    ) -> Result<Claims> {
        let exp = numeric_date(payload, "exp")?;
        if require_exp && exp.is_none() {
            return Err(invalid(
                "exp is missing: this server accepts only tokens that expire (pgtide token sets exp; \
                 pgtide --allow-tokens-without-exp accepts tokens without)",
            ));
        }
        if exp.is_some_and(|exp| now > exp.saturating_add(LEEWAY_SECS)) {
            return Err(AuthError::Expired);
        }
        let nbf = numeric_date(payload, "nbf")?;
        if nbf.is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECS)) {
            return Err(invalid("the token is not valid yet (nbf is in the future)"));
        }
        let sub = match present(payload, "sub") {
            Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
            Some(Value::String(_)) => return Err(invalid("sub is empty")),
            Some(_) => return Err(invalid("sub must be a string")),
            None => return Err(invalid("sub is missing")),
        };
        let role = match present(payload, "role") {
            None => Role::Read,
            Some(Value::String(text)) => text
                .parse()
                .map_err(|e: UnknownRole| invalid(format!("role: {e}")))?,
            Some(_) => return Err(invalid("role must be a string")),
        };
        let sql = match present(payload, "sql") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(invalid("sql must be true or false")),
        };
        Ok(Claims {
            sub,
            org_id: org_id(payload)?,
            role,
            subscribe: patterns(payload, "subscribe")?,
            publish: patterns(payload, "publish")?,
            sql,
            exp,
        })
    }
}

/// Seconds since the Unix epoch, by this machine's clock.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn invalid(message: impl Into<String>) -> AuthError {
    AuthError::InvalidClaims(message.into())
}

/// A claim's value, treating an explicit `null` as absent.
fn present<'a>(payload: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    payload.get(name).filter(|v| !v.is_null())
}

/// A NumericDate (RFC 7519 §2): seconds since the epoch, possibly fractional,
/// which we floor.
fn numeric_date(payload: &Map<String, Value>, name: &str) -> Result<Option<i64>> {
    let Some(value) = present(payload, name) else {
        return Ok(None);
    };
    let Value::Number(n) = value else {
        return Err(invalid(format!("{name} must be a number of seconds")));
    };
    if let Some(secs) = n.as_i64() {
        return Ok(Some(secs));
    }
    match n.as_f64() {
        // `as` saturates, which is the right answer for absurdly far dates.
        Some(secs) if secs.is_finite() => Ok(Some(secs.floor() as i64)),
        _ => Err(invalid(format!("{name} must be a number of seconds"))),
    }
}

/// `org_id` as an integer, or a string holding one (some issuers put every
/// custom claim in a string).
fn org_id(payload: &Map<String, Value>) -> Result<Option<i64>> {
    let bad = || invalid("org_id must be an integer");
    match present(payload, "org_id") {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(bad),
        Some(Value::String(text)) => text.parse::<i64>().map(Some).map_err(|_| bad()),
        Some(_) => Err(bad()),
    }
}

/// A list claim of topic patterns (`/` read as `.`); the first bad entry is
/// named in the error.
fn patterns(payload: &Map<String, Value>, name: &str) -> Result<Option<Vec<Pattern>>> {
    let Some(value) = present(payload, name) else {
        return Ok(None);
    };
    let Value::Array(items) = value else {
        return Err(invalid(format!(
            "{name} must be an array of topic patterns"
        )));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(text) => {
                Pattern::parse(text).map_err(|e| invalid(format!("{name}[{i}]: {e}")))
            }
            _ => Err(invalid(format!("{name}[{i}] must be a string"))),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_700_000_000;

    fn read(payload: Value) -> Result<Claims> {
        let Value::Object(map) = payload else {
            panic!("test payload must be an object")
        };
        Claims::from_payload(&map, NOW, false)
    }

    fn pats(texts: &[&str]) -> Option<Vec<Pattern>> {
        Some(texts.iter().map(|t| Pattern::parse(t).unwrap()).collect())
    }

    fn invalid_message(payload: Value) -> String {
        match read(payload) {
            Err(AuthError::InvalidClaims(message)) => message,
            other => panic!("expected InvalidClaims, got {other:?}"),
        }
    }

    fn with_role(role: Role) -> Claims {
        Claims {
            sub: "u".into(),
            org_id: Some(7),
            role,
            subscribe: None,
            publish: None,
            sql: false,
            exp: None,
        }
    }

    #[test]
    fn reads_a_full_claim_set() {
        let claims = read(json!({
            "sub": "user-1",
            "org_id": 42,
            "role": "operator",
            "subscribe": ["orders/**", "jobs.*"],
            "publish": ["jobs.*"],
            "sql": true,
            "exp": NOW + 60,
            "nbf": NOW - 60,
            "iat": NOW - 60,
            "aud": "ignored",
        }))
        .unwrap();
        assert_eq!(
            claims,
            Claims {
                sub: "user-1".into(),
                org_id: Some(42),
                role: Role::Operator,
                subscribe: pats(&["orders.**", "jobs.*"]),
                publish: pats(&["jobs.*"]),
                sql: true,
                exp: Some(NOW + 60),
            }
        );
    }

    #[test]
    fn absent_and_null_claims_take_defaults() {
        let expected = Claims {
            sub: "s".into(),
            org_id: None,
            role: Role::Read,
            subscribe: None,
            publish: None,
            sql: false,
            exp: None,
        };
        assert_eq!(read(json!({"sub": "s"})).unwrap(), expected);
        let nulls = json!({"sub": "s", "org_id": null, "role": null, "subscribe": null,
            "publish": null, "sql": null, "exp": null, "nbf": null});
        assert_eq!(read(nulls).unwrap(), expected);
        // An empty list is a real restriction: nothing at all.
        let none = read(json!({"sub": "s", "subscribe": []})).unwrap();
        assert_eq!(none.subscribe, Some(vec![]));
        assert!(!none.may_subscribe(&Pattern::parse("a").unwrap()));
    }

    #[test]
    fn org_id_is_an_integer_or_a_numeric_string() {
        let org = |v: Value| read(json!({"sub": "s", "org_id": v}));
        assert_eq!(org(json!(7)).unwrap().org_id, Some(7));
        assert_eq!(org(json!(-3)).unwrap().org_id, Some(-3));
        assert_eq!(org(json!("12")).unwrap().org_id, Some(12));
        for bad in [
            json!(1.5),
            json!("12a"),
            json!(""),
            json!(true),
            json!([1]),
            json!(1e30),
        ] {
            assert_eq!(
                org(bad.clone()),
                Err(AuthError::InvalidClaims("org_id must be an integer".into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn role_must_be_known() {
        for (text, role) in [
            ("read", Role::Read),
            ("operator", Role::Operator),
            ("admin", Role::Admin),
        ] {
            assert_eq!(read(json!({"sub": "s", "role": text})).unwrap().role, role);
        }
        let message = invalid_message(json!({"sub": "s", "role": "root"}));
        assert!(message.contains("\"root\""), "{message}");
        let message = invalid_message(json!({"sub": "s", "role": "Admin"}));
        assert!(message.contains("unknown role"), "{message}");
        assert_eq!(
            invalid_message(json!({"sub": "s", "role": 1})),
            "role must be a string"
        );
    }

    #[test]
    fn pattern_lists_are_validated_and_the_bad_one_named() {
        let message = invalid_message(json!({"sub": "s", "subscribe": ["ok.*", "a..b"]}));
        assert!(
            message.starts_with("subscribe[1]: ") && message.contains("\"a..b\""),
            "{message}"
        );
        let message = invalid_message(json!({"sub": "s", "publish": ["a.**.b"]}));
        assert!(
            message.starts_with("publish[0]: ") && message.contains("a.**.b"),
            "{message}"
        );
        assert_eq!(
            invalid_message(json!({"sub": "s", "subscribe": "orders.*"})),
            "subscribe must be an array of topic patterns"
        );
        assert_eq!(
            invalid_message(json!({"sub": "s", "publish": [3]})),
            "publish[0] must be a string"
        );
    }

    #[test]
    fn sub_and_sql_have_fixed_shapes() {
        assert_eq!(invalid_message(json!({})), "sub is missing");
        assert_eq!(invalid_message(json!({"sub": ""})), "sub is empty");
        assert_eq!(invalid_message(json!({"sub": 5})), "sub must be a string");
        assert_eq!(
            invalid_message(json!({"sub": "s", "sql": "yes"})),
            "sql must be true or false"
        );
    }

    #[test]
    fn exp_is_required_unless_allowed() {
        let strict = |payload: Value| {
            let Value::Object(map) = payload else {
                panic!("test payload must be an object")
            };
            Claims::from_payload(&map, NOW, true)
        };
        assert!(matches!(
            strict(json!({"sub": "s"})),
            Err(AuthError::InvalidClaims(m)) if m.starts_with("exp is missing")
        ));
        assert!(matches!(
            strict(json!({"sub": "s", "exp": null})),
            Err(AuthError::InvalidClaims(m)) if m.starts_with("exp is missing")
        ));
        assert_eq!(
            strict(json!({"sub": "s", "exp": NOW + 1})).unwrap().exp,
            Some(NOW + 1)
        );
        assert_eq!(read(json!({"sub": "s"})).unwrap().exp, None);
    }

    #[test]
    fn exp_and_nbf_are_enforced_with_leeway() {
        let at = |exp: Value, nbf: Value| read(json!({"sub": "s", "exp": exp, "nbf": nbf}));
        assert!(at(json!(NOW + 1), Value::Null).is_ok());
        assert!(at(json!(NOW - LEEWAY_SECS), Value::Null).is_ok());
        assert_eq!(
            at(json!(NOW - LEEWAY_SECS - 1), Value::Null),
            Err(AuthError::Expired)
        );
        assert_eq!(at(json!(0), Value::Null), Err(AuthError::Expired));
        // Fractional NumericDates are allowed and floored.
        assert_eq!(
            at(json!(NOW as f64 + 0.5), Value::Null).unwrap().exp,
            Some(NOW)
        );
        assert!(at(Value::Null, json!(NOW + LEEWAY_SECS)).is_ok());
        assert!(matches!(
            at(Value::Null, json!(NOW + LEEWAY_SECS + 1)),
            Err(AuthError::InvalidClaims(m)) if m.contains("nbf")
        ));
        assert!(matches!(
            at(json!("tomorrow"), Value::Null),
            Err(AuthError::InvalidClaims(m)) if m.starts_with("exp ")
        ));
        // Expiry is checked before anything else about the token.
        assert_eq!(
            read(json!({"exp": NOW - 1000, "role": "nope"})),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn read_role_subscribes_but_does_not_publish() {
        let claims = with_role(Role::Read);
        assert!(claims.may_subscribe(&Pattern::parse("**").unwrap()));
        assert!(!claims.may_publish("jobs.a"));
        assert!(!claims.is_admin());
        // An explicit publish list grants what it names, even to a reader.
        let claims = Claims {
            publish: pats(&["jobs.*"]),
            ..with_role(Role::Read)
        };
        assert!(claims.may_publish("jobs.a"));
        assert!(!claims.may_publish("orders.a"));
    }

    #[test]
    fn operator_and_admin_publish_anywhere_unless_restricted() {
        for role in [Role::Operator, Role::Admin] {
            let claims = with_role(role);
            assert!(claims.may_publish("anything.at.all"));
            let restricted = Claims {
                publish: pats(&["jobs.**"]),
                ..with_role(role)
            };
            assert!(restricted.may_publish("jobs.a.b"));
            assert!(!restricted.may_publish("orders.a"));
            assert!(!restricted.may_publish("jobs"));
        }
        assert!(with_role(Role::Admin).is_admin());
        assert!(!with_role(Role::Operator).is_admin());
    }

    #[test]
    fn publishing_to_a_whole_pattern_needs_a_covering_grant() {
        let p = |t: &str| Pattern::parse(t).unwrap();
        let claims = Claims {
            publish: pats(&["orgdata.op2.**", "jobs.*"]),
            ..with_role(Role::Operator)
        };
        assert!(claims.may_publish_all(&p("orgdata.op2.*")));
        assert!(claims.may_publish_all(&p("orgdata.op2.x")));
        assert!(claims.may_publish_all(&p("jobs.*")));
        assert!(!claims.may_publish_all(&p("orgdata.*.x")));
        assert!(!claims.may_publish_all(&p("jobs.*.x")));
        assert!(!claims.may_publish_all(&p("*")));
        assert!(with_role(Role::Operator).may_publish_all(&p("**")));
        assert!(!with_role(Role::Read).may_publish_all(&p("a")));
    }

    #[test]
    fn reading_a_topic_needs_a_matching_subscribe_grant() {
        let claims = Claims {
            subscribe: pats(&["orgdata.op2.**"]),
            ..with_role(Role::Operator)
        };
        assert!(claims.may_read_topic("orgdata.op2.x"));
        assert!(!claims.may_read_topic("tables.docs.insert"));
        assert!(!claims.may_read_topic("orgdata.op2"));
        assert!(with_role(Role::Read).may_read_topic("tables.docs.insert"));
    }

    #[test]
    fn subscribe_grants_must_cover_the_request() {
        for role in [Role::Read, Role::Operator, Role::Admin] {
            let claims = Claims {
                subscribe: pats(&["orders.**", "jobs.*"]),
                ..with_role(role)
            };
            let may = |p: &str| claims.may_subscribe(&Pattern::parse(p).unwrap());
            assert!(may("orders.**"));
            assert!(may("orders.*"));
            assert!(may("orders/eu/created"));
            assert!(may("jobs.x"));
            assert!(may("jobs.*"));
            assert!(
                !may("jobs.**"),
                "wider than the grant: refused, not narrowed"
            );
            assert!(!may("**"));
            assert!(!may("*.x"));
            assert!(!may("orders"));
        }
    }

    #[test]
    fn visibility_follows_the_org() {
        let reader = with_role(Role::Read);
        assert!(reader.may_see(Some(7)));
        assert!(reader.may_see(None));
        assert!(!reader.may_see(Some(8)));
        let operator = with_role(Role::Operator);
        assert!(operator.may_see(Some(7)) && !operator.may_see(Some(8)));
        let admin = with_role(Role::Admin);
        assert!(admin.may_see(Some(7)) && admin.may_see(Some(8)) && admin.may_see(None));
        let orgless = Claims {
            org_id: None,
            ..with_role(Role::Read)
        };
        assert!(orgless.may_see(None));
        assert!(!orgless.may_see(Some(7)));
    }

    #[test]
    fn insecure_identity_may_do_everything() {
        let claims = Claims::insecure();
        assert!(claims.is_admin());
        assert!(claims.sql);
        assert_eq!(claims.org_id, None);
        assert!(claims.may_subscribe(&Pattern::parse("**").unwrap()));
        assert!(claims.may_publish("any.topic"));
        assert!(claims.may_see(Some(123)) && claims.may_see(None));
    }

    #[test]
    fn roles_parse_order_and_serialize() {
        assert!(Role::Read < Role::Operator && Role::Operator < Role::Admin);
        assert_eq!("admin".parse::<Role>(), Ok(Role::Admin));
        assert_eq!(
            "boss".parse::<Role>().unwrap_err().to_string(),
            "unknown role \"boss\": expected admin, operator or read"
        );
        assert_eq!(
            serde_json::to_string(&Role::Operator).unwrap(),
            "\"operator\""
        );
        assert_eq!(
            serde_json::from_str::<Role>("\"read\"").unwrap(),
            Role::Read
        );
        assert_eq!(Role::default(), Role::Read);
        assert_eq!(Role::Admin.to_string(), "admin");
    }

    #[test]
    fn to_json_reads_back_the_same_claims() {
        let claims = Claims {
            sub: "u".into(),
            org_id: Some(9),
            role: Role::Operator,
            subscribe: pats(&["a.**"]),
            publish: pats(&["a.b"]),
            sql: true,
            exp: Some(NOW + 5),
        };
        let json = claims.to_json();
        assert_eq!(
            json,
            json!({"sub": "u", "org_id": 9, "role": "operator", "subscribe": ["a.**"],
                "publish": ["a.b"], "sql": true, "exp": NOW + 5})
        );
        assert_eq!(read(json).unwrap(), claims);
        assert_eq!(
            Claims::insecure().to_json(),
            json!({"sub": "insecure", "role": "admin", "sql": true})
        );
    }
}

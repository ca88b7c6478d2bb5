//! Topics and event types that belong to pgtide itself: nobody may publish
//! to them, so a subscriber can trust that an event on `tables.**` came from
//! CDC, one on `meta.ws` from the socket layer, and so on.
//!
//! This is the one statement of the rule. Its SQL form is the check inside
//! `pgtide.publish()` (`sql/009_topic_owner.sql`), which a unit test of
//! `pgtide-store` keeps in step with these lists; the CDC pipeline applies
//! it again to `pgtide.publish` logical messages, which any role could emit
//! with `pg_logical_emit_message` directly.

use std::fmt;

use crate::Topic;

/// First topic segments reserved for pgtide's own events.
pub const RESERVED_TOPIC_PREFIXES: [&str; 6] = [
    "meta",
    "system",
    "connections",
    "tables",
    "presence",
    "sync",
];

/// First event type segments reserved for pgtide's own events (`row.inserted`,
/// `table.truncated`, `schema.changed`).
pub const RESERVED_TYPE_PREFIXES: [&str; 3] = ["row", "table", "schema"];

/// Why a publish is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// The topic starts with a reserved segment.
    Topic { topic: String, prefix: &'static str },
    /// The event type starts with a reserved segment.
    EventType {
        event_type: String,
        prefix: &'static str,
    },
    /// A topic template whose fixed start (`literal`, the text before its
    /// first hole) could still become a reserved first segment.
    TopicTemplate { template: String, literal: String },
}

impl fmt::Display for Reserved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reserved::Topic { topic, prefix } => write!(
                f,
                "topic {topic:?} is reserved: {prefix}.* topics carry pgtide's own events and cannot be published to"
            ),
            Reserved::EventType { event_type, prefix } => write!(
                f,
                "event type {event_type:?} is reserved: {prefix}.* types are pgtide's own and cannot be published"
            ),
            Reserved::TopicTemplate { template, literal } => write!(
                f,
                "topic template {template:?} could render a reserved topic: its fixed start {literal:?} \
                 does not rule out {}.*, which carry pgtide's own events; begin it with a literal first segment of your own",
                RESERVED_TOPIC_PREFIXES.join(".*, ")
            ),
        }
    }
}

fn first_segment(dotted: &str) -> &str {
    dotted.split('.').next().unwrap_or(dotted)
}

/// Whether publishing `event_type` to `topic` would forge one of pgtide's own
/// events. `event_type` is read like a topic (`/` as `.`); a type that is not
/// a well-formed name is checked on its first `.`/`/`-separated segment.
pub fn check_reserved(topic: &Topic, event_type: &str) -> Result<(), Reserved> {
    check_reserved_topic(topic)?;
    check_reserved_type(event_type)
}

/// The topic half of [`check_reserved`].
pub fn check_reserved_topic(topic: &Topic) -> Result<(), Reserved> {
    let first = first_segment(topic.as_str());
    if let Some(prefix) = RESERVED_TOPIC_PREFIXES.iter().find(|p| **p == first) {
        return Err(Reserved::Topic {
            topic: topic.as_str().to_owned(),
            prefix,
        });
    }
    Ok(())
}

/// The event type half of [`check_reserved`].
pub fn check_reserved_type(event_type: &str) -> Result<(), Reserved> {
    let dotted = event_type.replace('/', ".");
    let first = first_segment(&dotted);
    if let Some(prefix) = RESERVED_TYPE_PREFIXES.iter().find(|p| **p == first) {
        return Err(Reserved::EventType {
            event_type: event_type.to_owned(),
            prefix,
        });
    }
    Ok(())
}

/// The topic half of [`check_reserved`] for a topic template (`{{ … }}`
/// holes), whose topics are not known until a row renders them: `literal` is
/// the text before its first hole (`/` read as `.`). The template is refused
/// unless that text settles the first segment as a non-reserved one: it
/// holds a whole first segment that is not reserved, or a partial one that no
/// reserved segment starts with (`"ord"` may not become `tables`, `"ta"`
/// might). A template that starts with a hole could become anything.
pub fn check_reserved_template(template: &str, literal: &str) -> Result<(), Reserved> {
    let dotted = literal.replace('/', ".");
    let refused = || Reserved::TopicTemplate {
        template: template.to_owned(),
        literal: dotted.clone(),
    };
    match dotted.split_once('.') {
        Some((first, _)) => match RESERVED_TOPIC_PREFIXES.iter().find(|p| **p == first) {
            Some(_) => Err(refused()),
            None => Ok(()),
        },
        None if RESERVED_TOPIC_PREFIXES
            .iter()
            .any(|p| p.starts_with(dotted.as_str())) =>
        {
            Err(refused())
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(topic: &str, event_type: &str) -> Result<(), Reserved> {
        check_reserved(&Topic::parse(topic).unwrap(), event_type)
    }

    #[test]
    fn pgtides_own_topics_and_types_are_refused() {
        for topic in [
            "meta.ws",
            "meta",
            "system.webhook_test",
            "connections.abc.connected",
            "tables.docs.insert",
            "presence.room",
            "sync.x",
            "tables/docs/insert",
        ] {
            assert!(
                matches!(check(topic, "custom.x"), Err(Reserved::Topic { .. })),
                "{topic}"
            );
        }
        for event_type in [
            "row.inserted",
            "table.truncated",
            "schema.changed",
            "row/deleted",
            "row",
        ] {
            assert!(
                matches!(
                    check("orders.placed", event_type),
                    Err(Reserved::EventType { .. })
                ),
                "{event_type}"
            );
        }
    }

    #[test]
    fn look_alikes_are_not_reserved() {
        for (topic, event_type) in [
            ("metadata.x", "custom.x"),
            ("orders.tables", "rows.inserted"),
            ("Meta.ws", "Row.inserted"),
            ("my.system", "order.row"),
            ("tablesx", "schemas.changed"),
        ] {
            assert_eq!(check(topic, event_type), Ok(()), "{topic} {event_type}");
        }
    }

    #[test]
    fn templates_are_refused_unless_their_start_rules_reserved_out() {
        for literal in [
            "",
            "t",
            "ta",
            "tables",
            "tables.",
            "s",
            "sy",
            "m",
            "meta.",
            "p",
            "c",
            "con",
            "presence/",
        ] {
            assert!(
                matches!(
                    check_reserved_template("x", literal),
                    Err(Reserved::TopicTemplate { .. })
                ),
                "{literal:?}"
            );
        }
        for literal in [
            "orders.",
            "o",
            "ord",
            "tablesx",
            "x.tables.",
            "metadata",
            "orders/",
        ] {
            assert_eq!(check_reserved_template("x", literal), Ok(()), "{literal:?}");
        }
        let e = check_reserved_template("{{ new.kind }}.x", "")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("{{ new.kind }}.x") && e.contains("tables.*"),
            "{e}"
        );
        assert_eq!(check_reserved_type("orders.placed"), Ok(()));
        assert!(check_reserved_type("row/inserted").is_err());
    }

    #[test]
    fn messages_name_the_prefix() {
        let e = check("meta.ws", "x").unwrap_err().to_string();
        assert!(e.contains("\"meta.ws\"") && e.contains("meta.*"), "{e}");
        let e = check("a.b", "row.inserted").unwrap_err().to_string();
        assert!(e.contains("row.*"), "{e}");
    }
}

//! Topic templates: `session.{{ new.id }}.status`.
//!
//! A template is literal text with `{{ expr }}` holes. At load time the
//! literal parts are checked by putting a placeholder segment part in each
//! hole and validating the result as a topic, so a typo in the fixed part is
//! caught before any change arrives. At run time each hole's value must be a
//! piece of a segment (letters, digits, `_`, `-`): a value may fill a whole
//! segment or part of one, never add dots, so the shape of the topic stays
//! the one written in the file.

use pgtide_core::Topic;

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Fixed text, with `/` already read as `.`.
    Literal(String),
    /// The CEL source between `{{` and `}}`, trimmed.
    Hole(String),
}

/// Splits `text` into pieces. `Ok(None)` means it has no `{{` at all and is a
/// plain topic name.
pub(crate) fn parse(text: &str) -> Result<Option<Vec<Piece>>, String> {
    if !text.contains("{{") {
        if text.contains("}}") {
            return Err(format!(
                "topic `{text}` has `}}}}` without a matching `{{{{`"
            ));
        }
        return Ok(None);
    }
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let literal = &rest[..start];
        if literal.contains("}}") {
            return Err(format!(
                "topic template `{text}` has `}}}}` without a matching `{{{{`"
            ));
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal.replace('/', ".")));
        }
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(format!(
                "topic template `{text}` has `{{{{` without a closing `}}}}`"
            ));
        };
        let expr = after[..end].trim();
        if expr.is_empty() {
            return Err(format!("topic template `{text}` has an empty `{{{{ }}}}`"));
        }
        if expr.contains("{{") {
            return Err(format!(
                "topic template `{text}` has `{{{{` inside `{{{{ }}}}`"
            ));
        }
        pieces.push(Piece::Hole(expr.to_owned()));
        rest = &after[end + 2..];
    }
    if rest.contains("}}") {
        return Err(format!(
            "topic template `{text}` has `}}}}` without a matching `{{{{`"
        ));
    }
    if !rest.is_empty() {
        pieces.push(Piece::Literal(rest.replace('/', ".")));
    }
    Ok(Some(pieces))
}

/// Checks the fixed parts of a template: with a placeholder in every hole,
/// it must be a valid topic.
pub(crate) fn check_literals(text: &str, pieces: &[Piece]) -> Result<(), String> {
    let mut probe = String::with_capacity(text.len());
    for piece in pieces {
        match piece {
            Piece::Literal(s) => probe.push_str(s),
            Piece::Hole(_) => probe.push('x'),
        }
    }
    Topic::parse(&probe)
        .map(|_| ())
        .map_err(|e| format!("invalid topic template `{text}`: {e}"))
}

/// Whether a rendered hole value may stand in a topic segment. Runs for
/// every hole of every event, hence the table.
pub(crate) fn is_segment_text(value: &str) -> bool {
    value.bytes().all(|b| SEGMENT_BYTES[usize::from(b)])
}

/// Which bytes a topic segment may hold: ASCII letters, digits, `_`, `-`.
static SEGMENT_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
        b += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Piece {
        Piece::Literal(s.to_owned())
    }

    fn hole(s: &str) -> Piece {
        Piece::Hole(s.to_owned())
    }

    /// Plain names are not templates.
    #[test]
    fn plain_topic() {
        assert_eq!(parse("session.status"), Ok(None));
    }

    /// Holes may fill whole segments or parts, anywhere.
    #[test]
    fn pieces() {
        assert_eq!(
            parse("session.{{ new.id }}.status"),
            Ok(Some(vec![lit("session."), hole("new.id"), lit(".status")]))
        );
        assert_eq!(
            parse("{{a}}-{{ b }}"),
            Ok(Some(vec![hole("a"), lit("-"), hole("b")]))
        );
        assert_eq!(
            parse("jobs/{{ new.id }}"),
            Ok(Some(vec![lit("jobs."), hole("new.id")]))
        );
    }

    /// Broken braces are load errors.
    #[test]
    fn broken_braces() {
        assert_eq!(
            parse("a.{{ new.id"),
            Err("topic template `a.{{ new.id` has `{{` without a closing `}}`".into())
        );
        assert_eq!(
            parse("a.{{  }}"),
            Err("topic template `a.{{  }}` has an empty `{{ }}`".into())
        );
        assert_eq!(
            parse("a.b}}"),
            Err("topic `a.b}}` has `}}` without a matching `{{`".into())
        );
    }

    /// The fixed text must make a topic whatever fills the holes.
    #[test]
    fn literal_check() {
        let ok = parse("session.{{ new.id }}.status")
            .expect("parse")
            .expect("template");
        assert_eq!(check_literals("session.{{ new.id }}.status", &ok), Ok(()));
        let bad = parse("session..{{ new.id }}")
            .expect("parse")
            .expect("template");
        assert_eq!(
            check_literals("session..{{ new.id }}", &bad),
            Err("invalid topic template `session..{{ new.id }}`: \"session..x\" has an empty segment (two dots in a row, or a dot at an end)".into())
        );
    }

    #[test]
    fn segment_text() {
        assert!(is_segment_text("abc-1_2"));
        assert!(!is_segment_text("a.b"));
        assert!(!is_segment_text("a b"));
        for b in 0..=255u8 {
            let expected = b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
            assert_eq!(SEGMENT_BYTES[usize::from(b)], expected, "{b}");
        }
    }
}

/// What a mapping's `topic` text can become, for permission checks made
/// before it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicReach {
    /// A pattern every topic the text can render matches: the topic itself
    /// when it has no holes; otherwise each segment holding a hole is `*`
    /// (a hole never adds dots, so `orders.{{ new.status }}` is
    /// `orders.*`).
    pub pattern: pgtide_core::Pattern,
    /// For a template, its fixed start: the text before the first hole
    /// (`/` read as `.`), empty when it starts with one.
    pub template_literal: Option<String>,
}

/// The [`TopicReach`] of a mapping's `topic`, or `None` when the text is
/// not a valid topic or template (the load reports why).
pub fn topic_reach(text: &str) -> Option<TopicReach> {
    let Some(pieces) = parse(text).ok()? else {
        let topic = Topic::parse(text).ok()?;
        return Some(TopicReach {
            pattern: pgtide_core::Pattern::parse(topic.as_str()).ok()?,
            template_literal: None,
        });
    };
    check_literals(text, &pieces).ok()?;
    // A character no topic holds stands for each hole.
    const HOLE: char = '\u{0}';
    let mut probe = String::with_capacity(text.len());
    for piece in &pieces {
        match piece {
            Piece::Literal(s) => probe.push_str(s),
            Piece::Hole(_) => probe.push(HOLE),
        }
    }
    let segments: Vec<&str> = probe
        .split('.')
        .map(|s| if s.contains(HOLE) { "*" } else { s })
        .collect();
    let literal = match pieces.first() {
        Some(Piece::Literal(s)) => s.clone(),
        _ => String::new(),
    };
    Some(TopicReach {
        pattern: pgtide_core::Pattern::parse(&segments.join(".")).ok()?,
        template_literal: Some(literal),
    })
}

#[cfg(test)]
mod reach_tests {
    use super::*;

    fn reach(text: &str) -> Option<(String, Option<String>)> {
        topic_reach(text).map(|r| (r.pattern.as_str().to_owned(), r.template_literal))
    }

    #[test]
    fn a_template_reaches_its_holes_segments() {
        assert_eq!(
            reach("orders.created"),
            Some(("orders.created".into(), None))
        );
        assert_eq!(
            reach("orders/created"),
            Some(("orders.created".into(), None))
        );
        assert_eq!(
            reach("orders.{{ new.status }}"),
            Some(("orders.*".into(), Some("orders.".into())))
        );
        assert_eq!(
            reach("org.s{{ new.id }}x.done"),
            Some(("org.*.done".into(), Some("org.s".into())))
        );
        assert_eq!(
            reach("{{ new.kind }}.x/{{ new.id }}"),
            Some(("*.x.*".into(), Some(String::new())))
        );
        assert_eq!(reach("a..b"), None);
        assert_eq!(reach("a.{{ new.id"), None);
    }
}

//! Topic names and patterns.
//!
//! A topic is dot-separated segments of `[A-Za-z0-9_-]+`. Clients may write `/`
//! for `.` (so `jobs/**` works); we always emit the dotted form. In a pattern,
//! `*` matches one segment and a final `**` one or more; `**` alone matches all.

use std::fmt;

/// A topic or pattern that breaks the rules, with the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("{0:?} has an empty segment (two dots in a row, or a dot at an end)")]
    EmptySegment(String),
    #[error(
        "{text:?} has {ch:?} in segment {segment:?}; segments may hold only letters, digits, '_' and '-'"
    )]
    BadCharacter {
        text: String,
        segment: String,
        ch: char,
    },
    #[error("{0:?}: wildcards are not allowed in a topic name, only in subscription patterns")]
    Wildcard(String),
    #[error("{0:?}: '**' is allowed only as the last segment")]
    DoubleStarNotLast(String),
    #[error("{0:?} is {1} bytes long; topics are limited to 255")]
    TooLong(String, usize),
}

const MAX_LEN: usize = 255;

/// A validated topic name in dotted form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(String);

impl Topic {
    /// Validates a topic name, reading `/` as `.`.
    pub fn parse(text: &str) -> Result<Topic, TopicError> {
        let dotted = text.replace('/', ".");
        check_length(&dotted)?;
        for segment in dotted.split('.') {
            if segment == "*" || segment == "**" {
                return Err(TopicError::Wildcard(text.to_owned()));
            }
            check_segment(text, segment)?;
        }
        Ok(Topic(dotted))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    Literal(String),
    One,
    OneOrMore,
}

/// A validated subscription pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: String,
    segments: Vec<Segment>,
}

impl Pattern {
    /// Validates a pattern, reading `/` as `.`.
    pub fn parse(text: &str) -> Result<Pattern, TopicError> {
        let dotted = text.replace('/', ".");
        check_length(&dotted)?;
        let parts: Vec<&str> = dotted.split('.').collect();
        let last = parts.len() - 1;
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.into_iter().enumerate() {
            segments.push(match part {
                "*" => Segment::One,
                "**" if i == last => Segment::OneOrMore,
                "**" => return Err(TopicError::DoubleStarNotLast(text.to_owned())),
                _ => {
                    check_segment(text, part)?;
                    Segment::Literal(part.to_owned())
                }
            });
        }
        Ok(Pattern {
            text: dotted,
            segments,
        })
    }

    /// The dotted text of the pattern.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The leading literal segments, dotted (`orders.eu` of `orders.eu.*`;
    /// empty when the pattern starts with a wildcard). Every topic the
    /// pattern matches starts with these segments, so subscriptions can be
    /// indexed by them.
    pub fn literal_prefix(&self) -> &str {
        let literals = self
            .segments
            .iter()
            .take_while(|s| matches!(s, Segment::Literal(_)))
            .count();
        match literals {
            0 => "",
            n if n == self.segments.len() => &self.text,
            n => self
                .text
                .match_indices('.')
                .nth(n - 1)
                .map_or(&self.text, |(i, _)| &self.text[..i]),
        }
    }

    /// True when this pattern is `**`, matching every topic.
    pub fn matches_all(&self) -> bool {
        matches!(self.segments.as_slice(), [Segment::OneOrMore])
    }

    /// Whether `topic` (dotted, already valid) falls under this pattern.
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for (i, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::OneOrMore => {
                    debug_assert_eq!(i, self.segments.len() - 1);
                    return parts.next().is_some();
                }
                Segment::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(lit) => {
                    if parts.next() != Some(lit.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    /// Whether every topic `other` matches is also matched by `self` (set
    /// inclusion), so a grant like `orders.**` can be checked against a
    /// requested subscription like `orders.*` without enumerating topics.
    ///
    /// Walk both patterns segment by segment: a final `**` in `self` takes any
    /// non-empty rest; `*` takes one segment of any kind except a final `**`
    /// (which also stands for longer topics); a literal takes only the same
    /// literal. Otherwise both must end together.
    pub fn covers(&self, other: &Pattern) -> bool {
        for (i, mine) in self.segments.iter().enumerate() {
            let Some(theirs) = other.segments.get(i) else {
                // `other` is shorter, so it matches topics `self` cannot.
                return false;
            };
            let ok = match (mine, theirs) {
                (Segment::OneOrMore, _) => return true,
                (Segment::One, Segment::OneOrMore) => false,
                (Segment::One, _) => true,
                (Segment::Literal(a), Segment::Literal(b)) => a == b,
                (Segment::Literal(_), _) => false,
            };
            if !ok {
                return false;
            }
        }
        other.segments.len() == self.segments.len()
    }

    /// An anchored POSIX regular expression for the same set of topics, so the
    /// store can filter in SQL (`topic ~ regex`). Segments hold no regex
    /// metacharacters, so literals need no escaping.
    pub fn to_sql_regex(&self) -> String {
        let mut out = String::from("^");
        for (i, segment) in self.segments.iter().enumerate() {
            if i > 0 {
                out.push_str("\\.");
            }
            match segment {
                Segment::Literal(lit) => out.push_str(lit),
                Segment::One => out.push_str("[^.]+"),
                Segment::OneOrMore => out.push_str(".+"),
            }
        }
        out.push('$');
        out
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn check_length(dotted: &str) -> Result<(), TopicError> {
    if dotted.is_empty() {
        return Err(TopicError::Empty);
    }
    if dotted.len() > MAX_LEN {
        return Err(TopicError::TooLong(dotted.to_owned(), dotted.len()));
    }
    Ok(())
}

fn check_segment(text: &str, segment: &str) -> Result<(), TopicError> {
    if segment.is_empty() {
        return Err(TopicError::EmptySegment(text.to_owned()));
    }
    if let Some(ch) = segment
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(TopicError::BadCharacter {
            text: text.to_owned(),
            segment: segment.to_owned(),
            ch,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, topic: &str) -> bool {
        let p = Pattern::parse(pattern).unwrap();
        let by_fn = p.matches(topic);
        // The SQL form must agree with the in-memory matcher.
        let re = p.to_sql_regex();
        assert_eq!(
            by_fn,
            regex_lite_match(&re, topic),
            "{pattern} vs {topic} ({re})"
        );
        by_fn
    }

    /// A tiny matcher for the regexes `to_sql_regex` emits (literals, `\.`,
    /// `[^.]+`, `.+`), so the test needs no regex crate.
    fn regex_lite_match(re: &str, topic: &str) -> bool {
        let body = re.trim_start_matches('^').trim_end_matches('$');
        let tokens: Vec<&str> = body.split("\\.").collect();
        fn go(tokens: &[&str], parts: &[&str]) -> bool {
            match tokens.split_first() {
                None => parts.is_empty(),
                Some((&".+", _)) => !parts.is_empty(),
                Some((&"[^.]+", rest)) => !parts.is_empty() && go(rest, &parts[1..]),
                Some((lit, rest)) => parts.first() == Some(lit) && go(rest, &parts[1..]),
            }
        }
        let parts: Vec<&str> = topic.split('.').collect();
        go(&tokens, &parts)
    }

    #[test]
    fn seed_pattern_table() {
        assert!(matches("jobs/abc-123", "jobs.abc-123"));
        assert!(!matches("jobs/abc-123", "jobs.abc-124"));
        assert!(matches("jobs/*", "jobs.abc"));
        assert!(!matches("jobs/*", "jobs.abc.started"));
        assert!(!matches("jobs/*", "jobs"));
        assert!(matches("jobs/**", "jobs.abc"));
        assert!(matches("jobs/**", "jobs.abc.started.x"));
        assert!(!matches("jobs/**", "jobs"));
        assert!(!matches("jobs/**", "jobsx.abc"));
        assert!(matches("tables/users/**", "tables.users.insert"));
        assert!(!matches("tables/users/**", "tables.orders.insert"));
        assert!(matches("**", "anything"));
        assert!(matches("**", "a.b.c"));
        assert!(matches("*.orders.*", "tables.orders.update"));
        assert!(matches("tables.*.insert", "tables.users.insert"));
        assert!(!matches("tables.*.insert", "tables.users.delete"));
    }

    #[test]
    fn rejects_bad_patterns_and_topics() {
        assert_eq!(
            Pattern::parse("a.**.b").unwrap_err(),
            TopicError::DoubleStarNotLast("a.**.b".into())
        );
        assert!(matches!(
            Pattern::parse("a..b"),
            Err(TopicError::EmptySegment(_))
        ));
        assert!(matches!(Pattern::parse(""), Err(TopicError::Empty)));
        assert!(matches!(
            Pattern::parse("a.b c"),
            Err(TopicError::BadCharacter { ch: ' ', .. })
        ));
        assert!(matches!(
            Pattern::parse("a.*x"),
            Err(TopicError::BadCharacter { ch: '*', .. })
        ));
        assert!(matches!(Topic::parse("a.*"), Err(TopicError::Wildcard(_))));
        assert!(matches!(
            Topic::parse("a."),
            Err(TopicError::EmptySegment(_))
        ));
        assert!(matches!(
            Topic::parse(&"a".repeat(300)),
            Err(TopicError::TooLong(_, 300))
        ));
        let err = Topic::parse("orders.$x").unwrap_err().to_string();
        assert!(err.contains("'$'") && err.contains("\"$x\""), "{err}");
    }

    #[test]
    fn slashes_read_as_dots() {
        assert_eq!(
            Topic::parse("tables/users/insert").unwrap().as_str(),
            "tables.users.insert"
        );
        assert_eq!(Pattern::parse("jobs/**").unwrap().as_str(), "jobs.**");
        assert!(Pattern::parse("**").unwrap().matches_all());
        let prefix = |p: &str| Pattern::parse(p).unwrap().literal_prefix().to_owned();
        assert_eq!(prefix("orders.eu.*"), "orders.eu");
        assert_eq!(prefix("orders.**"), "orders");
        assert_eq!(prefix("orders.*.created"), "orders");
        assert_eq!(prefix("orders.created"), "orders.created");
        assert_eq!(prefix("*.created"), "");
        assert_eq!(prefix("**"), "");
    }

    fn covers(a: &str, b: &str) -> bool {
        Pattern::parse(a)
            .unwrap()
            .covers(&Pattern::parse(b).unwrap())
    }

    #[test]
    fn covers_examples() {
        for other in ["x", "a.b.c", "*", "*.*", "**", "a.**", "*.b.**"] {
            assert!(covers("**", other), "** covers {other}");
        }
        assert!(covers("orders.**", "orders.*"));
        assert!(covers("orders.**", "orders.a.b"));
        assert!(covers("orders.**", "orders.**"));
        assert!(covers("orders.**", "orders.*.**"));
        assert!(!covers("orders.**", "orders"));
        assert!(!covers("orders.**", "**"));
        assert!(!covers("orders.**", "*.x"));
        assert!(!covers("orders.*", "orders.**"));
        assert!(covers("orders.*", "orders.x"));
        assert!(covers("orders.*", "orders.*"));
        assert!(!covers("orders.*", "orders.x.y"));
        assert!(!covers("orders.*", "orders"));
        assert!(covers("*.x", "a.x"));
        assert!(covers("*.x", "*.x"));
        assert!(!covers("*.x", "a.y"));
        assert!(!covers("a.*", "*.*"));
        assert!(covers("*.*", "a.*"));
        assert!(!covers("*", "**"));
        assert!(covers("*.**", "a.**"));
        assert!(covers("*.**", "*.*.*"));
        assert!(!covers("*.**", "*"));
        assert!(covers("a.b", "a.b"));
        assert!(!covers("a.b", "a.c"));
        assert!(!covers("a.b", "a.b.c"));
        assert!(!covers("a.b.c", "a.b"));
        assert!(!covers("a.*.c", "a.**"));
        // `/` is read as `.` on both sides.
        assert!(covers("jobs/**", "jobs.abc/*"));
    }

    /// Every pattern of up to three segments over `a`, `b`, `*` (and a final
    /// `**`), checked against `matches` on every topic of up to four segments
    /// over `a`, `b`, `c`. `c` stands for "any other name" and the extra
    /// length for "longer topics", so any topic that separates two of these
    /// patterns has a representative here; the brute-force answer is exact.
    #[test]
    fn covers_agrees_with_matches_by_brute_force() {
        let mut patterns: Vec<String> = Vec::new();
        let mut prefixes: Vec<String> = vec![String::new()];
        for _ in 0..3 {
            let mut next = Vec::new();
            for prefix in &prefixes {
                for last in ["a", "b", "*", "**"] {
                    patterns.push(format!("{prefix}{last}"));
                }
                for seg in ["a", "b", "*"] {
                    next.push(format!("{prefix}{seg}."));
                }
            }
            prefixes = next;
        }
        let mut topics: Vec<String> = Vec::new();
        let mut level: Vec<String> = vec![String::new()];
        for _ in 0..4 {
            let mut next = Vec::new();
            for prefix in &level {
                for seg in ["a", "b", "c"] {
                    let topic = if prefix.is_empty() {
                        seg.to_owned()
                    } else {
                        format!("{prefix}.{seg}")
                    };
                    topics.push(topic.clone());
                    next.push(topic);
                }
            }
            level = next;
        }
        let parsed: Vec<Pattern> = patterns
            .iter()
            .map(|p| Pattern::parse(p).unwrap())
            .collect();
        assert_eq!(parsed.len(), 4 + 12 + 36);
        assert_eq!(topics.len(), 3 + 9 + 27 + 81);
        for big in &parsed {
            for small in &parsed {
                let brute = topics.iter().all(|t| !small.matches(t) || big.matches(t));
                assert_eq!(
                    big.covers(small),
                    brute,
                    "{big} covers {small}: brute force says {brute}"
                );
            }
        }
    }
}

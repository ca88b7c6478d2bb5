//! Reading mapping files: from YAML trees to checked, compiled mappings.
//!
//! Every check that needs no database happens here, and every failure is
//! collected rather than returned, each pointing at the key or value at
//! fault: `pgtide check` shows them all at once. A mapping with an error is
//! still registered by name (when its name is usable), so a duplicate name
//! further on is reported too.

use crate::engine::{Mapping, Op, TopicPart, TopicSpec};
use crate::error::{LoadError, Location};
use crate::expr::{self, Expr, Uses};
use crate::set::{MappingInfo, Places, TopicDecl};
use crate::template::{self, Piece};
use crate::yaml::{self, Node, Value};
use cel::Env;
use pgtide_core::Topic;
use std::collections::HashMap;
use std::path::Path;

const TOP_FIELDS: [&str; 2] = ["topics", "mappings"];
const TOPIC_FIELDS: [&str; 4] = ["name", "description", "schema", "compatibility"];
const MAPPING_FIELDS: [&str; 10] = [
    "name",
    "table",
    "operations",
    "changed",
    "when",
    "topic",
    "event_type",
    "payload",
    "org",
    "key",
];
const COMPATIBILITIES: [&str; 4] = ["backward", "none", "forward", "full"];
const DEFAULT_OPERATIONS: [Op; 3] = [Op::Insert, Op::Update, Op::Delete];
const MAX_EVENT_TYPE_LEN: usize = 255;

/// What a successful load produced.
pub(crate) struct Loaded {
    pub topics: Vec<TopicDecl>,
    pub mappings: Vec<Mapping>,
}

/// Reads the `*.yaml` / `*.yml` files of `dir` (not recursive, sorted by
/// name, names starting with `.` skipped) as `(path, contents)` pairs ready
/// for [`crate::MappingSet::load_sources`]. The path is `dir` joined with
/// the file name, as displayed in errors (`mappings/orders.yaml`): do not
/// join it with `dir` again. A missing directory has no files; a file that
/// cannot be read is a [`LoadError`] at its line 1, column 1.
pub fn read_dir(dir: &Path) -> Result<Vec<(String, String)>, Vec<LoadError>> {
    let whole = |message: String| {
        vec![LoadError {
            file: dir.display().to_string(),
            line: 1,
            column: 1,
            message,
        }]
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(whole(format!("cannot read the mappings directory: {e}"))),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| whole(format!("cannot read the mappings directory: {e}")))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if !is_yaml || name.starts_with('.') {
            continue;
        }
        if entry.path().is_file() {
            names.push(name);
        }
    }
    names.sort();

    let mut sources = Vec::with_capacity(names.len());
    let mut errors = Vec::new();
    for name in names {
        let path = dir.join(&name);
        let file = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => sources.push((file, text)),
            Err(e) => errors.push(LoadError {
                file,
                line: 1,
                column: 1,
                message: format!("cannot read the file: {e}"),
            }),
        }
    }
    if errors.is_empty() {
        Ok(sources)
    } else {
        Err(errors)
    }
}

/// Loads `sources` in order, collecting every error.
pub(crate) fn load(
    env: &Env,
    sources: &[(String, String)],
    base_dir: &Path,
) -> Result<Loaded, Vec<LoadError>> {
    let mut loader = Loader {
        env,
        base_dir,
        errors: Vec::new(),
        topics: Vec::new(),
        mappings: Vec::new(),
        topic_names: HashMap::new(),
        mapping_names: HashMap::new(),
    };
    for (file, text) in sources {
        let first_error = loader.errors.len();
        let mut file = FileLoader {
            loader: &mut loader,
            file,
        };
        file.load(text);
        // Within a file, report in reading order whatever order the checks ran.
        loader.errors[first_error..].sort_by_key(|e| (e.line, e.column));
    }
    if loader.errors.is_empty() {
        Ok(Loaded {
            topics: loader.topics,
            mappings: loader.mappings,
        })
    } else {
        Err(loader.errors)
    }
}

struct Loader<'a> {
    env: &'a Env,
    base_dir: &'a Path,
    errors: Vec<LoadError>,
    topics: Vec<TopicDecl>,
    mappings: Vec<Mapping>,
    topic_names: HashMap<String, Location>,
    mapping_names: HashMap<String, Location>,
}

/// The fields of a YAML mapping, after checking for unknown and repeated
/// keys: `(name, key node, value node)` in file order.
struct Fields<'n> {
    entries: Vec<(String, &'n Node, &'n Node)>,
    /// Allowed names that an unknown key was probably meant to be: a
    /// required field spelt wrong is reported once, as the unknown key.
    suggested: Vec<String>,
}

impl<'n> Fields<'n> {
    fn get(&self, name: &str) -> Option<(&'n Node, &'n Node)> {
        self.entries
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, k, v)| (*k, *v))
    }
}

/// A scalar string field's text and the node it came from.
struct Text<'n> {
    text: String,
    node: &'n Node,
}

struct FileLoader<'l, 'a> {
    loader: &'l mut Loader<'a>,
    file: &'l str,
}

impl FileLoader<'_, '_> {
    fn location(&self, node: &Node) -> Location {
        Location {
            file: self.file.to_owned(),
            line: node.line,
            column: node.column,
        }
    }

    fn error(&mut self, node: &Node, message: impl Into<String>) {
        let error = LoadError::at(&self.location(node), message);
        self.loader.errors.push(error);
    }

    fn load(&mut self, text: &str) {
        let root = match yaml::parse(text) {
            Ok(root) => root,
            Err(e) => {
                // `topic: {{ new.id }}.x` reads as a flow mapping and fails
                // to parse; say why.
                let near = text
                    .lines()
                    .skip(e.line.saturating_sub(2))
                    .take(2)
                    .any(|l| l.contains(": {{"));
                let hint = if near {
                    " (a value that starts with `{{` must be quoted: topic: \"{{ new.id }}.x\")"
                } else {
                    ""
                };
                self.loader.errors.push(LoadError {
                    file: self.file.to_owned(),
                    line: e.line,
                    column: e.column,
                    message: format!("YAML syntax error: {}{hint}", e.message),
                });
                return;
            }
        };
        if root.value == Value::Null {
            return;
        }
        if !matches!(root.value, Value::Map(_)) {
            let kind = root.value.kind();
            self.error(
                &root,
                format!(
                    "a mapping file must be a mapping with `topics:` and/or `mappings:`, found {kind}"
                ),
            );
            return;
        }
        let Some(fields) = self.fields(&root, "at the top level", &TOP_FIELDS) else {
            return;
        };
        if let Some((_, value)) = fields.get("topics") {
            for item in self.list(value, "topics") {
                self.topic(item);
            }
        }
        if let Some((_, value)) = fields.get("mappings") {
            for item in self.list(value, "mappings") {
                self.mapping(item);
            }
        }
    }

    /// The entries of a list field; null is an empty list.
    fn list<'n>(&mut self, value: &'n Node, field: &str) -> &'n [Node] {
        match &value.value {
            Value::Seq(items) => items,
            Value::Null => &[],
            other => {
                let kind = other.kind();
                self.error(value, format!("`{field}` must be a list, found {kind}"));
                &[]
            }
        }
    }

    /// Checks that `node` is a YAML mapping whose keys are all in `allowed`
    /// and none repeated; reports the problems and returns the fields.
    fn fields<'n>(&mut self, node: &'n Node, place: &str, allowed: &[&str]) -> Option<Fields<'n>> {
        let Value::Map(entries) = &node.value else {
            return None;
        };
        let mut fields = Fields {
            entries: Vec::with_capacity(entries.len()),
            suggested: Vec::new(),
        };
        let mut seen: HashMap<String, &Node> = HashMap::new();
        for (key, value) in entries {
            let Some(name) = key.value.scalar_text() else {
                let kind = key.value.kind();
                self.error(key, format!("expected a field name, found {kind}"));
                continue;
            };
            if let Some(first) = seen.get(&name) {
                let (line, column) = (first.line, first.column);
                self.error(
                    key,
                    format!("duplicate field `{name}` (first at line {line}, column {column})"),
                );
                continue;
            }
            seen.insert(name.clone(), key);
            if !allowed.contains(&name.as_str()) {
                let expected = allowed
                    .iter()
                    .map(|a| format!("`{a}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let suggestion = closest(&name, allowed);
                let hint = suggestion
                    .map(|c| format!(" (did you mean `{c}`?)"))
                    .unwrap_or_default();
                fields.suggested.extend(suggestion.map(str::to_owned));
                self.error(
                    key,
                    format!("unknown field `{name}` {place}; expected one of {expected}{hint}"),
                );
                continue;
            }
            fields.entries.push((name, key, value));
        }
        Some(fields)
    }

    /// A field that must be a non-empty string. A null value points at the
    /// key, where the reader will look.
    fn string<'n>(&mut self, fields: &Fields<'n>, name: &str) -> Option<Text<'n>> {
        let (key, value) = fields.get(name)?;
        match &value.value {
            Value::Str(s) if !s.trim().is_empty() => Some(Text {
                text: s.clone(),
                node: value,
            }),
            Value::Str(_) | Value::Null => {
                self.error(key, format!("`{name}` is empty"));
                None
            }
            other => {
                let kind = other.kind();
                self.error(value, format!("`{name}` must be a string, found {kind}"));
                None
            }
        }
    }

    /// A field holding a CEL expression. Scalars YAML read as numbers or
    /// bools (`when: true`, `org: 1`) are taken as their text.
    fn expression(&mut self, key: &Node, value: &Node, field: &str) -> Option<Expr> {
        let source = match &value.value {
            Value::Seq(_) | Value::Map(_) => {
                let kind = value.value.kind();
                self.error(
                    value,
                    format!("`{field}` must be a CEL expression (a string), found {kind}"),
                );
                return None;
            }
            v => v.scalar_text().filter(|s| !s.trim().is_empty()),
        };
        let Some(source) = source else {
            self.error(
                key,
                format!("`{field}` is empty; write a CEL expression or remove the field"),
            );
            return None;
        };
        if field == "when"
            && matches!(
                value.value,
                Value::Int(_) | Value::UInt(_) | Value::Float(_)
            )
        {
            self.error(
                value,
                format!("`when` must be a CEL expression that gives a bool (a string such as \"new.status == 'active'\"), found the number {source}"),
            );
            return None;
        }
        match expr::compile(self.loader.env, &source) {
            Ok(mut e) => match (field, e.non_bool_constant()) {
                ("when", Some(kind)) => {
                    self.error(
                        value,
                        format!("`when` must give a bool, but `{source}` is always {kind}"),
                    );
                    None
                }
                _ => {
                    e.at = Some(Box::new(self.location(value)));
                    Some(e)
                }
            },
            Err(message) => {
                self.error(value, format!("in `{field}`: {message}"));
                None
            }
        }
    }

    fn topic(&mut self, node: &Node) {
        if !matches!(node.value, Value::Map(_)) {
            let kind = node.value.kind();
            self.error(
                node,
                format!(
                    "each entry of `topics` must be a mapping with at least `name`, found {kind}"
                ),
            );
            return;
        }
        let Some(fields) = self.fields(node, "in a topic", &TOPIC_FIELDS) else {
            return;
        };
        let location = self.location(node);
        let mut ok = true;

        let name = match self.string(&fields, "name") {
            Some(name) => match Topic::parse(&name.text) {
                Ok(topic) => {
                    let topic = topic.into_string();
                    if let Some(first) = self.loader.topic_names.get(&topic) {
                        let first = first.clone();
                        self.error(
                            name.node,
                            format!("duplicate topic `{topic}`; first declared at {first}"),
                        );
                        ok = false;
                    } else {
                        self.loader
                            .topic_names
                            .insert(topic.clone(), location.clone());
                    }
                    Some(topic)
                }
                Err(e) => {
                    self.error(name.node, format!("invalid topic name: {e}"));
                    None
                }
            },
            None => {
                let suggested = fields.suggested.iter().any(|s| s == "name");
                if fields.get("name").is_none() && !suggested {
                    self.error(node, "topic is missing required field `name`");
                }
                None
            }
        };

        let description = match fields.get("description") {
            Some(_) => {
                let d = self.string(&fields, "description");
                ok &= d.is_some();
                d.map(|d| d.text)
            }
            None => None,
        };

        let schema = match fields.get("schema") {
            Some((key, value)) => {
                let s = self.schema(key, value);
                ok &= s.is_some();
                s
            }
            None => None,
        };

        let compatibility = match fields.get("compatibility") {
            Some(_) => match self.string(&fields, "compatibility") {
                Some(c) if COMPATIBILITIES.contains(&c.text.as_str()) => Some(c.text),
                Some(c) => {
                    self.error(
                        c.node,
                        format!(
                            "unknown compatibility `{}`; expected `backward`, `none`, `forward` or `full`",
                            c.text
                        ),
                    );
                    ok = false;
                    None
                }
                None => {
                    ok = false;
                    None
                }
            },
            None => None,
        };

        if let (true, Some(name)) = (ok, name) {
            self.loader.topics.push(TopicDecl {
                name,
                description,
                schema,
                compatibility,
                location,
            });
        }
    }

    /// A topic's schema: a path to a JSON file, relative to the mappings
    /// directory, or an inline mapping.
    fn schema(&mut self, key: &Node, value: &Node) -> Option<serde_json::Value> {
        match &value.value {
            Value::Map(_) => Some(value.value.to_json()),
            Value::Str(path) if !path.trim().is_empty() => {
                let full = self.loader.base_dir.join(path);
                let text = match std::fs::read_to_string(&full) {
                    Ok(text) => text,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        self.error(value, format!("schema file `{path}` not found"));
                        return None;
                    }
                    Err(e) => {
                        self.error(value, format!("cannot read schema file `{path}`: {e}"));
                        return None;
                    }
                };
                match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(json @ serde_json::Value::Object(_)) => Some(json),
                    Ok(other) => {
                        let kind = json_kind(&other);
                        self.error(
                            value,
                            format!("schema file `{path}` must hold a JSON object, found {kind}"),
                        );
                        None
                    }
                    Err(e) => {
                        self.error(
                            value,
                            format!("schema file `{path}` is not valid JSON: {e}"),
                        );
                        None
                    }
                }
            }
            Value::Str(_) | Value::Null => {
                self.error(
                    key,
                    "`schema` is empty; give a path or an inline JSON Schema",
                );
                None
            }
            other => {
                let kind = other.kind();
                self.error(
                    value,
                    format!(
                        "`schema` must be a path to a JSON file or an inline JSON Schema (a mapping), found {kind}"
                    ),
                );
                None
            }
        }
    }

    fn mapping(&mut self, node: &Node) {
        if !matches!(node.value, Value::Map(_)) {
            let kind = node.value.kind();
            self.error(
                node,
                format!(
                    "each entry of `mappings` must be a mapping with at least `name`, `table` and `topic`, found {kind}"
                ),
            );
            return;
        }
        let Some(fields) = self.fields(node, "in a mapping", &MAPPING_FIELDS) else {
            return;
        };
        let location = self.location(node);
        let errors_before = self.loader.errors.len();

        // name
        let name = self.string(&fields, "name");
        if let Some(name) = &name {
            if !valid_mapping_name(&name.text) {
                self.error(
                    name.node,
                    format!(
                        "invalid mapping name `{}`; use letters, digits, `_`, `-` and `.`",
                        name.text
                    ),
                );
            } else if let Some(first) = self.loader.mapping_names.get(&name.text) {
                let first = first.clone();
                self.error(
                    name.node,
                    format!(
                        "duplicate mapping name `{}`; first defined at {first}",
                        name.text
                    ),
                );
            } else {
                self.loader
                    .mapping_names
                    .insert(name.text.clone(), location.clone());
            }
        }
        let what = match &name {
            Some(n) => format!("mapping `{}`", n.text),
            None => "mapping".to_owned(),
        };
        for required in ["name", "table", "topic"] {
            if fields.get(required).is_none() && !fields.suggested.iter().any(|s| s == required) {
                self.error(
                    node,
                    format!("{what} is missing required field `{required}`"),
                );
            }
        }

        // table
        let table_text = self.string(&fields, "table");
        let table_at = table_text.as_ref().map(|t| self.location(t.node));
        let table = table_text.and_then(|t| match parse_table(&t.text) {
            Ok((schema, _)) if is_reserved_schema(&schema) => {
                self.error(t.node, reserved_table_message(&t.text, &schema));
                None
            }
            Ok(parsed) => Some(parsed),
            Err(message) => {
                self.error(t.node, message);
                None
            }
        });

        // operations
        let operations = match fields.get("operations") {
            Some((key, value)) => self.operations(key, value),
            None => Some(DEFAULT_OPERATIONS.to_vec()),
        };

        // changed
        let changed = fields
            .get("changed")
            .and_then(|(key, value)| self.changed(key, value, operations.as_deref()));

        // when
        let when = fields
            .get("when")
            .and_then(|(key, value)| self.expression(key, value, "when"));

        // topic
        let topic_text = match fields.get("topic") {
            // `topic: {{ new.id }}` parses as a flow mapping.
            Some((_, value)) if matches!(value.value, Value::Map(_)) => {
                self.error(
                    value,
                    "a topic template that starts with `{{` must be quoted, e.g. topic: \"{{ new.id }}.status\"",
                );
                None
            }
            _ => self.string(&fields, "topic"),
        };
        let topic = topic_text.as_ref().and_then(|t| self.topic_spec(t));

        // event_type
        let event_type =
            self.string(&fields, "event_type")
                .and_then(|t| match check_event_type(&t.text) {
                    Ok(()) => Some(t.text),
                    Err(message) => {
                        self.error(t.node, message);
                        None
                    }
                });

        // payload
        let payload = fields
            .get("payload")
            .and_then(|(key, value)| self.payload(key, value));

        let org = fields
            .get("org")
            .and_then(|(key, value)| self.expression(key, value, "org"));
        let key = fields
            .get("key")
            .and_then(|(key, value)| self.expression(key, value, "key"));

        // Every check above reports what it rejects, so from here on an
        // absent value is an absent field.
        if self.loader.errors.len() != errors_before {
            return;
        }
        let (Some(name), Some((schema, table)), Some(operations), Some(topic), Some(topic_text)) =
            (name, table, operations, topic, topic_text)
        else {
            return;
        };

        let mut mapping = Mapping {
            info: MappingInfo {
                name: name.text,
                table: format!("{schema}.{table}"),
                operations: Op::ALL
                    .into_iter()
                    .filter(|op| operations.contains(op))
                    .map(|op| op.as_str().to_owned())
                    .collect(),
                topic: topic_text.text,
                event_type: event_type.clone(),
                needs_old: false,
                changed: changed.clone().unwrap_or_default(),
                columns: Vec::new(),
                location,
                places: Places::default(),
            },
            schema,
            table,
            ops: operations.iter().fold(0, |bits, op| bits | op.bit()),
            changed,
            when,
            topic,
            event_type,
            payload,
            org,
            key,
        };
        let mut uses = Uses::default();
        let mut columns: Vec<String> = mapping.changed.clone().unwrap_or_default();
        // Every place that names a column or needs old values, to keep the
        // first of each in file order.
        let mut named: Vec<(String, Location)> = Vec::new();
        let mut old_uses: Vec<Location> = Vec::new();
        if let Some((key, value)) = fields.get("changed") {
            old_uses.push(self.location(key));
            if let Value::Seq(items) = &value.value {
                for item in items {
                    if let Some(column) = item.value.scalar_text() {
                        named.push((column, self.location(item)));
                    }
                }
            }
        }
        for e in mapping.expressions() {
            uses = uses.union(e.uses);
            columns.extend(e.columns.iter().map(|(_, c)| c.clone()));
            if let Some(at) = e.at.as_deref() {
                named.extend(e.columns.iter().map(|(_, c)| (c.clone(), at.clone())));
                if e.uses.old {
                    old_uses.push(at.clone());
                }
            }
        }
        columns.sort();
        columns.dedup();
        let first = |places: &mut dyn Iterator<Item = Location>| {
            places.min_by_key(|at| (at.line, at.column))
        };
        mapping.info.places = Places {
            table: table_at,
            columns: columns
                .iter()
                .filter_map(|c| {
                    let at = first(
                        &mut named
                            .iter()
                            .filter(|(n, _)| n == c)
                            .map(|(_, at)| at.clone()),
                    )?;
                    Some((c.clone(), at))
                })
                .collect(),
            old: first(&mut old_uses.into_iter()),
        };
        mapping.info.needs_old = mapping.changed.is_some() || uses.old;
        mapping.info.columns = columns;
        self.loader.mappings.push(mapping);
    }

    fn operations(&mut self, key: &Node, value: &Node) -> Option<Vec<Op>> {
        let items = match &value.value {
            Value::Seq(items) => items,
            Value::Str(s) => {
                self.error(
                    value,
                    format!(
                        "`operations` must be a list, found a string (write `operations: [{s}]`)"
                    ),
                );
                return None;
            }
            Value::Null => {
                self.error(key, "`operations` is empty; list at least one of `insert`, `update`, `delete`, `truncate`");
                return None;
            }
            other => {
                let kind = other.kind();
                self.error(value, format!("`operations` must be a list, found {kind}"));
                return None;
            }
        };
        if items.is_empty() {
            self.error(
                value,
                "`operations` is empty; list at least one of `insert`, `update`, `delete`, `truncate`",
            );
            return None;
        }
        let mut ops = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            let Value::Str(text) = &item.value else {
                let kind = item.value.kind();
                self.error(item, format!("an operation must be a string, found {kind}"));
                ok = false;
                continue;
            };
            match Op::parse(text) {
                Some(op) if ops.contains(&op) => {
                    self.error(item, format!("operation `{text}` is listed twice"));
                    ok = false;
                }
                Some(op) => ops.push(op),
                None => {
                    self.error(
                        item,
                        format!(
                            "unknown operation `{text}`; expected `insert`, `update`, `delete` or `truncate`"
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(ops)
    }

    fn changed(
        &mut self,
        key: &Node,
        value: &Node,
        operations: Option<&[Op]>,
    ) -> Option<Vec<String>> {
        let items = match &value.value {
            Value::Seq(items) if !items.is_empty() => items,
            Value::Seq(_) => {
                self.error(value, "`changed` is empty; list the columns whose change fires the mapping, or remove `changed`");
                return None;
            }
            Value::Null => {
                self.error(key, "`changed` is empty; list the columns whose change fires the mapping, or remove `changed`");
                return None;
            }
            other => {
                let kind = other.kind();
                self.error(
                    value,
                    format!("`changed` must be a list of column names, found {kind}"),
                );
                return None;
            }
        };
        let mut ok = true;
        if let Some(ops) = operations
            && !ops.contains(&Op::Update)
        {
            self.error(
                key,
                "`changed` only filters updates, but `operations` does not include `update`",
            );
            ok = false;
        }
        let mut columns: Vec<String> = Vec::with_capacity(items.len());
        for item in items {
            match item.value.scalar_text() {
                Some(column) if !column.is_empty() => {
                    if columns.contains(&column) {
                        self.error(item, format!("column `{column}` is listed twice"));
                        ok = false;
                    } else {
                        columns.push(column);
                    }
                }
                _ => {
                    let kind = item.value.kind();
                    self.error(
                        item,
                        format!("a column name must be a string, found {kind}"),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(columns)
    }

    fn topic_spec(&mut self, text: &Text<'_>) -> Option<TopicSpec> {
        let pieces = match template::parse(&text.text) {
            Ok(Some(pieces)) => pieces,
            Ok(None) => {
                return match Topic::parse(&text.text) {
                    Ok(topic) => Some(TopicSpec::Fixed(topic.into_string())),
                    Err(e) => {
                        self.error(text.node, format!("invalid topic: {e}"));
                        None
                    }
                };
            }
            Err(message) => {
                self.error(text.node, message);
                return None;
            }
        };
        let mut ok = true;
        if let Err(message) = template::check_literals(&text.text, &pieces) {
            self.error(text.node, message);
            ok = false;
        }
        let mut parts = Vec::with_capacity(pieces.len());
        for piece in pieces {
            match piece {
                Piece::Literal(s) => parts.push(TopicPart::Literal(s)),
                Piece::Hole(source) => match expr::compile(self.loader.env, &source) {
                    Ok(mut e) => {
                        e.at = Some(Box::new(self.location(text.node)));
                        parts.push(TopicPart::Hole(e));
                    }
                    Err(message) => {
                        self.error(
                            text.node,
                            format!("in topic template `{{{{ {source} }}}}`: {message}"),
                        );
                        ok = false;
                    }
                },
            }
        }
        ok.then_some(TopicSpec::Template(parts))
    }

    fn payload(&mut self, key: &Node, value: &Node) -> Option<Vec<(String, Expr)>> {
        let entries = match &value.value {
            Value::Map(entries) => entries,
            Value::Null => {
                self.error(key, "`payload` is empty; map field names to CEL expressions, or remove `payload` to send the whole row");
                return None;
            }
            other => {
                let kind = other.kind();
                self.error(
                    value,
                    format!("`payload` must be a mapping of field names to CEL expressions, found {kind}"),
                );
                return None;
            }
        };
        let mut fields: Vec<(String, Expr)> = Vec::with_capacity(entries.len());
        let mut seen: HashMap<String, &Node> = HashMap::new();
        let mut ok = true;
        for (k, v) in entries {
            let Some(name) = k.value.scalar_text().filter(|n| !n.is_empty()) else {
                let kind = k.value.kind();
                self.error(
                    k,
                    format!("a payload field name must be a string, found {kind}"),
                );
                ok = false;
                continue;
            };
            if let Some(first) = seen.get(&name) {
                let (line, column) = (first.line, first.column);
                self.error(
                    k,
                    format!(
                        "duplicate payload field `{name}` (first at line {line}, column {column})"
                    ),
                );
                ok = false;
                continue;
            }
            seen.insert(name.clone(), k);
            match self.expression(k, v, &format!("payload.{name}")) {
                Some(e) => fields.push((name, e)),
                None => ok = false,
            }
        }
        ok.then_some(fields)
    }
}

/// Whether tables of `schema` are out of every mapping's (and capture's)
/// reach: pgtide's own state (`pgtide`: webhook secrets, the event store,
/// which a mapping would also feed back into itself) and the system catalogs
/// (`information_schema`, and every `pg_` schema: `pg_catalog`, `pg_toast`,
/// temporary schemas; Postgres reserves the prefix for itself).
pub fn is_reserved_schema(schema: &str) -> bool {
    schema == "pgtide" || schema == "information_schema" || schema.starts_with("pg_")
}

fn reserved_table_message(text: &str, schema: &str) -> String {
    format!(
        "table `{text}` is in schema `{schema}`, which pgtide never maps: tables in `pgtide`, `pg_catalog`, `information_schema`, `pg_toast` (and other `pg_` schemas) are refused"
    )
}

/// Parses `table` or `schema.table` as Postgres would: unquoted names fold
/// to lower case, `"Quoted"` names are kept as written.
pub fn parse_table(text: &str) -> Result<(String, String), String> {
    let mut parts = Vec::new();
    let mut rest = text.trim();
    loop {
        let (part, after) = identifier(rest).ok_or_else(|| bad_table(text))?;
        parts.push(part);
        match after.strip_prefix('.') {
            Some(next) => rest = next,
            None if after.is_empty() => break,
            None => return Err(bad_table(text)),
        }
    }
    match <[String; 2]>::try_from(parts) {
        Ok([schema, table]) => Ok((schema, table)),
        Err(parts) if parts.len() == 1 => Ok(("public".to_owned(), parts.concat())),
        Err(_) => Err(format!(
            "invalid table `{text}`; expected `table` or `schema.table`, not more parts"
        )),
    }
}

fn bad_table(text: &str) -> String {
    format!(
        "invalid table `{text}`; expected `table` or `schema.table` made of SQL names (letters, digits, `_`, `$`); double-quote a name with other characters as in SQL, e.g. table: 'public.\"My Table\"'"
    )
}

/// One identifier at the start of `text`, and what follows it.
fn identifier(text: &str) -> Option<(String, &str)> {
    if let Some(quoted) = text.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if quoted[i + 1..].starts_with('"') {
                    name.push('"');
                    chars.next();
                } else {
                    return (!name.is_empty()).then(|| (name, &quoted[i + 1..]));
                }
            } else {
                name.push(c);
            }
        }
        return None;
    }
    let end = text
        .char_indices()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_' || *c == '$'))
        .map_or(text.len(), |(i, _)| i);
    let name = &text[..end];
    let first = name.chars().next()?;
    if !(first.is_alphabetic() || first == '_') {
        return None;
    }
    Some((name.to_lowercase(), &text[end..]))
}

fn valid_mapping_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn check_event_type(text: &str) -> Result<(), String> {
    if text.len() > MAX_EVENT_TYPE_LEN {
        return Err(format!(
            "`event_type` is {} bytes long; event types are limited to {MAX_EVENT_TYPE_LEN}",
            text.len()
        ));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "invalid `event_type` {text:?}; it may not contain spaces or control characters"
        ));
    }
    Ok(())
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The allowed name closest to a misspelt one, if it is close enough to be
/// what was meant.
fn closest<'a>(name: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|a| (edit_distance(name, a), *a))
        .filter(|(d, a)| *d <= 2 && *d < a.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables() {
        assert_eq!(
            parse_table("sessions"),
            Ok(("public".into(), "sessions".into()))
        );
        assert_eq!(
            parse_table("app.Sessions"),
            Ok(("app".into(), "sessions".into()))
        );
        assert_eq!(
            parse_table("\"App\".\"My \"\"T\"\"\""),
            Ok(("App".into(), "My \"T\"".into()))
        );
        assert!(parse_table("a.b.c").is_err());
        assert!(parse_table("a..b").is_err());
        assert!(parse_table("my table").is_err());
        assert!(parse_table("1abc").is_err());
        assert!(parse_table("\"unterminated").is_err());
    }

    #[test]
    fn reserved_schemas() {
        for schema in [
            "pgtide",
            "pg_catalog",
            "information_schema",
            "pg_toast",
            "pg_temp_3",
        ] {
            assert!(is_reserved_schema(schema), "{schema}");
        }
        for schema in ["public", "app", "pgtide_app", "PG_CATALOG"] {
            assert!(!is_reserved_schema(schema), "{schema}");
        }
    }

    #[test]
    fn suggestions() {
        assert_eq!(closest("tpoic", &MAPPING_FIELDS), Some("topic"));
        assert_eq!(closest("operation", &MAPPING_FIELDS), Some("operations"));
        assert_eq!(closest("zzz", &MAPPING_FIELDS), None);
    }
}

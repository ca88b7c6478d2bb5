//! Broken files: every problem is reported, each at its key or value, with
//! its exact message. `pgtide check` prints these lines as they are.

use crate::{LoadError, MappingSet};
use std::path::Path;

/// The errors of loading `files` (name, contents), as displayed.
fn errors_of(files: &[(&str, &str)], base: &Path) -> Vec<String> {
    let sources: Vec<(String, String)> = files
        .iter()
        .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
        .collect();
    match MappingSet::load_sources(&sources, base) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(LoadError::to_string).collect(),
    }
}

/// Loads one file `f.yaml` and compares its errors.
#[track_caller]
fn check(yaml: &str, expected: &[&str]) {
    let got = errors_of(&[("f.yaml", yaml)], Path::new("/nonexistent"));
    assert_eq!(got, expected, "for:\n{yaml}");
}

const FIELDS: &str = "`name`, `table`, `operations`, `changed`, `when`, `topic`, `event_type`, `payload`, `org`, `key`";

#[test]
fn yaml_syntax() {
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a\n   bad: [\n",
        &[
            "f.yaml:5:4: YAML syntax error: while parsing a block collection, did not find expected '-' indicator",
        ],
    );
    check(
        "mappings: [\n",
        &["f.yaml:1:11: YAML syntax error: unclosed bracket '['"],
    );
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a\n  - name: b\n  x\n",
        &["f.yaml:6:3: YAML syntax error: simple key expected ':'"],
    );
}

/// An unquoted template reads as a YAML flow mapping; the error says so.
#[test]
fn unquoted_template() {
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: {{ new.id }}.x\n",
        &[
            "f.yaml:4:24: YAML syntax error: while parsing a block mapping, did not find expected key (a value that starts with `{{` must be quoted: topic: \"{{ new.id }}.x\")",
        ],
    );
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: {{ new.id }}\n",
        &[
            "f.yaml:4:12: a topic template that starts with `{{` must be quoted, e.g. topic: \"{{ new.id }}.status\"",
        ],
    );
}

#[test]
fn top_level_shape() {
    check(
        "- a\n- b\n",
        &[
            "f.yaml:1:1: a mapping file must be a mapping with `topics:` and/or `mappings:`, found a list",
        ],
    );
    check(
        "topics: {}\n",
        &["f.yaml:1:9: `topics` must be a list, found a mapping"],
    );
    check(
        "mappings: 5\n",
        &["f.yaml:1:11: `mappings` must be a list, found a number"],
    );
    check(
        "topic:\n  - name: a\n",
        &[
            "f.yaml:1:1: unknown field `topic` at the top level; expected one of `topics`, `mappings` (did you mean `topics`?)",
        ],
    );
    check(
        "mappings:\n  - x\n  - 5\n",
        &[
            "f.yaml:2:5: each entry of `mappings` must be a mapping with at least `name`, `table` and `topic`, found a string",
            "f.yaml:3:5: each entry of `mappings` must be a mapping with at least `name`, `table` and `topic`, found a number",
        ],
    );
    // empty files and empty sections are fine
    check("", &[]);
    check("# nothing yet\n", &[]);
    check("topics:\nmappings:\n", &[]);
}

#[test]
fn unknown_and_duplicate_fields() {
    // a misspelt required field is reported once, as the unknown key
    check(
        "mappings:\n  - name: a\n    table: t\n    tpoic: a\n",
        &[&format!(
            "f.yaml:4:5: unknown field `tpoic` in a mapping; expected one of {FIELDS} (did you mean `topic`?)"
        )],
    );
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a\n    filter: new.x == 1\n",
        &[&format!(
            "f.yaml:5:5: unknown field `filter` in a mapping; expected one of {FIELDS}"
        )],
    );
    check(
        "mappings:\n  - name: a\n    name: b\n    table: t\n    topic: a\n",
        &["f.yaml:3:5: duplicate field `name` (first at line 2, column 5)"],
    );
    check(
        "topics:\n  - name: f\n    extra: 1\n",
        &[
            "f.yaml:3:5: unknown field `extra` in a topic; expected one of `name`, `description`, `schema`, `compatibility`",
        ],
    );
}

#[test]
fn missing_and_mistyped_fields() {
    check(
        "mappings:\n  - name: a\n    table: t\n",
        &["f.yaml:2:5: mapping `a` is missing required field `topic`"],
    );
    check(
        "mappings:\n  - table: t\n    topic: a\n",
        &["f.yaml:2:5: mapping is missing required field `name`"],
    );
    check(
        "mappings:\n  - when: 'true'\n",
        &[
            "f.yaml:2:5: mapping is missing required field `name`",
            "f.yaml:2:5: mapping is missing required field `table`",
            "f.yaml:2:5: mapping is missing required field `topic`",
        ],
    );
    check(
        "mappings:\n  - name: [a]\n    table: t\n    topic: a\n",
        &["f.yaml:2:11: `name` must be a string, found a list"],
    );
    check(
        "mappings:\n  - name: a\n    table:\n    topic: a\n",
        &["f.yaml:3:5: `table` is empty"],
    );
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a\n    when:\n",
        &["f.yaml:5:5: `when` is empty; write a CEL expression or remove the field"],
    );
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a\n    when: [1]\n",
        &["f.yaml:5:11: `when` must be a CEL expression (a string), found a list"],
    );
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a\n    payload: [a]\n",
        &[
            "f.yaml:5:14: `payload` must be a mapping of field names to CEL expressions, found a list",
        ],
    );
    check(
        "topics:\n  - description: x\n",
        &["f.yaml:2:5: topic is missing required field `name`"],
    );
}

#[test]
fn names() {
    check(
        "mappings:\n  - name: 'bad name'\n    table: t\n    topic: a\n",
        &["f.yaml:2:11: invalid mapping name `bad name`; use letters, digits, `_`, `-` and `.`"],
    );
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a\n  - name: a\n    table: t\n    topic: b\n",
        &["f.yaml:5:11: duplicate mapping name `a`; first defined at f.yaml:2:5"],
    );
    check(
        "topics:\n  - name: a\n  - name: a\n",
        &["f.yaml:3:11: duplicate topic `a`; first declared at f.yaml:2:5"],
    );
    // `a/b` and `a.b` are the same topic
    check(
        "topics:\n  - name: a.b\n  - name: a/b\n",
        &["f.yaml:3:11: duplicate topic `a.b`; first declared at f.yaml:2:5"],
    );
}

/// Duplicates across files point at the second and name the first.
#[test]
fn duplicates_across_files() {
    let got = errors_of(
        &[
            (
                "a.yaml",
                "mappings:\n  - name: m\n    table: t\n    topic: a\ntopics:\n  - name: t1\n",
            ),
            (
                "b.yaml",
                "topics:\n  - name: t1\nmappings:\n  - name: m\n    table: t\n    topic: b\n",
            ),
        ],
        Path::new("."),
    );
    assert_eq!(
        got,
        vec![
            "b.yaml:2:11: duplicate topic `t1`; first declared at a.yaml:6:5",
            "b.yaml:4:11: duplicate mapping name `m`; first defined at a.yaml:2:5",
        ]
    );
}

#[test]
fn topics() {
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a..b\n",
        &[
            "f.yaml:4:12: invalid topic: \"a..b\" has an empty segment (two dots in a row, or a dot at an end)",
        ],
    );
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: orders.*\n",
        &[
            "f.yaml:4:12: invalid topic: \"orders.*\": wildcards are not allowed in a topic name, only in subscription patterns",
        ],
    );
    check(
        "topics:\n  - name: a..b\n",
        &[
            "f.yaml:2:11: invalid topic name: \"a..b\" has an empty segment (two dots in a row, or a dot at an end)",
        ],
    );
}

#[test]
fn templates() {
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: \"a.{{ new. }}\"\n",
        &[
            "f.yaml:4:12: in topic template `{{ new. }}`: invalid CEL expression `new.`: Syntax error: no viable alternative at input '.' (column 5 of the expression)",
        ],
    );
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a.{{ new.id }\n",
        &["f.yaml:4:12: topic template `a.{{ new.id }` has `{{` without a closing `}}`"],
    );
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: \"a.{{ }}\"\n",
        &["f.yaml:4:12: topic template `a.{{ }}` has an empty `{{ }}`"],
    );
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: \"}}a\"\n",
        &["f.yaml:4:12: topic `}}a` has `}}` without a matching `{{`"],
    );
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a.b*{{ new.id }}\n",
        &[
            "f.yaml:4:12: invalid topic template `a.b*{{ new.id }}`: \"a.b*x\" has '*' in segment \"b*x\"; segments may hold only letters, digits, '_' and '-'",
        ],
    );
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a.{{ new.id }}..b\n",
        &[
            "f.yaml:4:12: invalid topic template `a.{{ new.id }}..b`: \"a.x..b\" has an empty segment (two dots in a row, or a dot at an end)",
        ],
    );
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a.{{ nw.id }}\n",
        &[
            "f.yaml:4:12: in topic template `{{ nw.id }}`: unknown variable `nw` in `nw.id`; expressions can use `new`, `old`, `op`, `table` and `tx`",
        ],
    );
}

#[test]
fn tables() {
    check(
        "mappings:\n  - name: a\n    table: a.b.c\n    topic: a\n",
        &["f.yaml:3:12: invalid table `a.b.c`; expected `table` or `schema.table`, not more parts"],
    );
    check(
        "mappings:\n  - name: a\n    table: Foo bar\n    topic: a\n",
        &[
            "f.yaml:3:12: invalid table `Foo bar`; expected `table` or `schema.table` made of SQL names (letters, digits, `_`, `$`); double-quote a name with other characters as in SQL, e.g. table: 'public.\"My Table\"'",
        ],
    );
}

#[test]
fn operations_and_changed() {
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a\n    operations: [insert, upsert]\n",
        &[
            "f.yaml:5:26: unknown operation `upsert`; expected `insert`, `update`, `delete` or `truncate`",
        ],
    );
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a\n    operations: insert\n",
        &[
            "f.yaml:5:17: `operations` must be a list, found a string (write `operations: [insert]`)",
        ],
    );
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a\n    operations: []\n",
        &[
            "f.yaml:5:17: `operations` is empty; list at least one of `insert`, `update`, `delete`, `truncate`",
        ],
    );
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a\n    operations: [insert, delete]\n    changed: [status]\n",
        &["f.yaml:6:5: `changed` only filters updates, but `operations` does not include `update`"],
    );
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a\n    changed: []\n",
        &[
            "f.yaml:5:14: `changed` is empty; list the columns whose change fires the mapping, or remove `changed`",
        ],
    );
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a\n    changed: [a, a]\n    operations: [update, update]\n",
        &[
            "f.yaml:5:18: column `a` is listed twice",
            "f.yaml:6:26: operation `update` is listed twice",
        ],
    );
}

#[test]
fn cel_errors() {
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a\n    when: new.status ==\n",
        &[
            "f.yaml:5:11: in `when`: invalid CEL expression `new.status ==`: Syntax error: mismatched input '<EOF>' expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER} (column 14 of the expression)",
        ],
    );
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a\n    when: neww.status == 1\n",
        &[
            "f.yaml:5:11: in `when`: unknown variable `neww` in `neww.status == 1`; expressions can use `new`, `old`, `op`, `table` and `tx`",
        ],
    );
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a\n    payload:\n      x: new.\n      y: old.id\n      z:\n",
        &[
            "f.yaml:6:10: in `payload.x`: invalid CEL expression `new.`: Syntax error: no viable alternative at input '.' (column 5 of the expression)",
            "f.yaml:8:7: `payload.z` is empty; write a CEL expression or remove the field",
        ],
    );
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a\n    org: 'new.org_id +'\n    key: '[1'\n",
        &[
            "f.yaml:5:10: in `org`: invalid CEL expression `new.org_id +`: Syntax error: mismatched input '<EOF>' expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER} (column 13 of the expression)",
            "f.yaml:6:10: in `key`: invalid CEL expression `[1`: Syntax error: mismatched input '<EOF>' expecting {']', ','} (column 3 of the expression)",
        ],
    );
    // a block scalar: the error points at the scalar, the CEL line inside it
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a\n    when: >-\n      new.a == 1 &&\n      new.b ==\n",
        &[
            "f.yaml:6:7: in `when`: invalid CEL expression `new.a == 1 && new.b ==`: Syntax error: mismatched input '<EOF>' expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER} (column 23 of the expression)",
        ],
    );
}

#[test]
fn event_type() {
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a\n    event_type: 'a b'\n",
        &[
            "f.yaml:5:17: invalid `event_type` \"a b\"; it may not contain spaces or control characters",
        ],
    );
}

#[test]
fn topic_declarations() {
    check(
        "topics:\n  - name: c\n    schema: 5\n  - name: d\n    compatibility: sideways\n  - name: e\n    schema: missing.json\n",
        &[
            "f.yaml:3:13: `schema` must be a path to a JSON file or an inline JSON Schema (a mapping), found a number",
            "f.yaml:5:20: unknown compatibility `sideways`; expected `backward`, `none`, `forward` or `full`",
            "f.yaml:7:13: schema file `missing.json` not found",
        ],
    );
}

/// Schema files must exist, be JSON, and hold an object; paths are relative
/// to the mappings directory.
#[test]
fn schema_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("broken.json"), "{\"type\": ").expect("write");
    std::fs::write(dir.path().join("list.json"), "[1, 2]").expect("write");
    std::fs::write(dir.path().join("ok.json"), "{\"type\": \"object\"}").expect("write");
    let got = errors_of(
        &[(
            "f.yaml",
            "topics:\n  - name: a\n    schema: broken.json\n  - name: b\n    schema: list.json\n  - name: c\n    schema: ok.json\n",
        )],
        dir.path(),
    );
    assert_eq!(
        got,
        vec![
            "f.yaml:3:13: schema file `broken.json` is not valid JSON: EOF while parsing a value at line 1 column 9",
            "f.yaml:5:13: schema file `list.json` must hold a JSON object, found an array",
        ]
    );
}

/// A directory reports every error of every file, in file order, with the
/// files named by their path.
#[test]
fn load_dir_reports_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("a.yaml"),
        "mappings:\n  - name: one\n    table: t\n    topic: a..b\n  - name: two\n    table: t\n    topic: ok\n    when: 'new.x =='\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("b.yml"), "mappings: [\n").expect("write");
    std::fs::write(
        dir.path().join("c.yaml"),
        "mappings:\n  - name: one\n    table: t\n    topic: c\n",
    )
    .expect("write");
    let errors = match MappingSet::load_dir(dir.path()) {
        Ok(_) => panic!("loaded a broken directory"),
        Err(errors) => errors,
    };
    let prefix = format!("{}/", dir.path().display());
    let got: Vec<String> = errors
        .iter()
        .map(|e| e.to_string().replace(&prefix, ""))
        .collect();
    assert_eq!(
        got,
        vec![
            "a.yaml:4:12: invalid topic: \"a..b\" has an empty segment (two dots in a row, or a dot at an end)",
            "a.yaml:8:11: in `when`: invalid CEL expression `new.x ==`: Syntax error: mismatched input '<EOF>' expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER} (column 9 of the expression)",
            "b.yml:1:11: YAML syntax error: unclosed bracket '['",
            "c.yaml:2:11: duplicate mapping name `one`; first defined at a.yaml:2:5",
        ]
    );
    assert_eq!(
        (errors[0].line, errors[0].column),
        (4, 12),
        "fields agree with the display"
    );
}

/// pgtide's own tables and the system catalogs are refused at the table's
/// value, however the schema is spelt.
#[test]
fn reserved_schemas_are_refused() {
    check(
        "mappings:\n  - name: a\n    table: pgtide.webhooks\n    topic: a\n  - name: b\n    table: PG_CATALOG.pg_authid\n    topic: b\n",
        &[
            "f.yaml:3:12: table `pgtide.webhooks` is in schema `pgtide`, which pgtide never maps: tables in `pgtide`, `pg_catalog`, `information_schema`, `pg_toast` (and other `pg_` schemas) are refused",
            "f.yaml:6:12: table `PG_CATALOG.pg_authid` is in schema `pg_catalog`, which pgtide never maps: tables in `pgtide`, `pg_catalog`, `information_schema`, `pg_toast` (and other `pg_` schemas) are refused",
        ],
    );
    check(
        "mappings:\n  - name: a\n    table: '\"pgtide_app\".t'\n    topic: a\n",
        &[],
    );
}

/// A `when` that is a constant other than a bool can never hold: refused at
/// its value, from YAML and from the API's JSON alike. `when: true` stays.
#[test]
fn when_must_give_a_bool() {
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a\n    when: 3\n",
        &[
            "f.yaml:5:11: `when` must be a CEL expression that gives a bool (a string such as \"new.status == 'active'\"), found the number 3",
        ],
    );
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a\n    when: \"'yes'\"\n",
        &["f.yaml:5:11: `when` must give a bool, but `'yes'` is always a string"],
    );
    check(
        r#"{"mappings": [{"name": "a", "table": "t", "topic": "a", "when": 3}]}"#,
        &[
            "f.yaml:1:65: `when` must be a CEL expression that gives a bool (a string such as \"new.status == 'active'\"), found the number 3",
        ],
    );
    check(
        "mappings:\n  - name: a\n    table: t\n    topic: a\n    when: true\n    org: 1\n",
        &[],
    );
}

/// The places the database checks point at: `table:`, the first place that
/// names each column (in file order), and the first use of old values.
#[test]
fn places_of_tables_columns_and_old_values() {
    let yaml = "mappings:\n  - name: a\n    table: t\n    operations: [update]\n    when: new.status == 'x'\n    topic: a\n    payload:\n      id: new.id\n      before: old.status\n    changed: [status]\n    key: new.k\n";
    let set =
        MappingSet::load_sources(&[("f.yaml".into(), yaml.into())], Path::new("/")).expect("loads");
    let info = &set.mappings()[0];
    let at = |l: &crate::Location| (l.line, l.column);
    assert_eq!(at(info.table_place()), (3, 12));
    assert_eq!(
        at(info.column_place("status")),
        (5, 11),
        "`when` comes first"
    );
    assert_eq!(at(info.column_place("id")), (8, 11));
    assert_eq!(at(info.column_place("k")), (11, 10));
    assert_eq!(at(info.old_place()), (9, 15), "old.status before changed:");
    assert_eq!(at(info.column_place("unknown")), (2, 5), "else the mapping");
}

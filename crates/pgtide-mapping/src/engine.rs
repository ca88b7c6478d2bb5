//! Turning one row change into the events of the mappings that match it.
//!
//! Everything here runs per change, so the work is arranged to be paid once:
//! mappings are indexed by table (a change on an unmapped table costs two
//! cheap hash lookups), cheap filters (operation, `changed:`) run before any
//! expression, the columns the table's mappings read (`changed:` included)
//! are looked up once, and the CEL variables are bound once per change and
//! shared by all of the table's mappings — lazily, so the CEL context is only
//! made when an expression actually reaches the interpreter, and a row is
//! only converted to a CEL map if an expression needs it whole. Plain column
//! reads and the everyday subset of CEL skip the interpreter (see
//! [`crate::expr`] and [`crate::fast`]).
//!
//! Building the events is most of what is left, and it allocates: a busy
//! table runs this for every change, so each payload object is laid out at
//! load (its keys cloned per event in one go rather than inserted one by
//! one) and topic holes are written straight into the topic.

use crate::MappingFailure;
use crate::expr::{Eval, Expr, Row};
use crate::fast::{Col, Lookup, Scope, V};
use crate::set::MappingInfo;
use crate::template;
use crate::value::{
    AbsentRow, cel_to_json, double_to_json, json_to_cel, object_to_cel, type_name, write_cel_text,
    write_json_text,
};
use cel::common::types::{CelBool, CelInt, CelMap, CelMapKey, CelNull, CelString, CelUInt};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::{Context, Env, Program, Value as CelValue};
use pgtide_core::Topic;
use serde_json::{Map, Value as Json};
use std::cell::OnceCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, OnceLock};

/// The longest topic pgtide-core accepts.
const MAX_TOPIC_LEN: usize = 255;

/// A row operation, as pgoutput reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Insert, Op::Update, Op::Delete, Op::Truncate];

    /// The name used in mapping files, in CEL's `op` and in `meta.op`.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
        }
    }

    /// Reads an operation name as written in a mapping file.
    pub fn parse(text: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.as_str() == text)
    }

    /// The event type of a mapping without `event_type`, the same as the
    /// default topics use.
    pub fn default_event_type(self) -> &'static str {
        match self {
            Op::Insert => "row.inserted",
            Op::Update => "row.updated",
            Op::Delete => "row.deleted",
            Op::Truncate => "table.truncated",
        }
    }

    pub(crate) fn bit(self) -> u8 {
        match self {
            Op::Insert => 1,
            Op::Update => 2,
            Op::Delete => 4,
            Op::Truncate => 8,
        }
    }
}

/// One decoded row change, borrowed from the caller's buffers.
///
/// `new` is the row after an insert or update; `old` the row before an
/// update or delete, when Postgres sent one (all columns under `REPLICA
/// IDENTITY FULL`, only the key under `DEFAULT`, and for an update only when
/// the key changed). `unchanged_columns` names the TOASTed columns Postgres
/// left out because they did not change (and that could not be filled in
/// from `old`).
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub op: Op,
    pub schema: &'a str,
    pub table: &'a str,
    pub new: Option<&'a Map<String, Json>>,
    pub old: Option<&'a Map<String, Json>>,
    pub unchanged_columns: &'a [String],
    pub xid: u32,
    pub commit_ts: &'a str,
    pub lsn: &'a str,
}

/// The event one mapping made of one change. The caller wraps it in the
/// envelope (id, seq, ts, meta with `mapping` and `key`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MappedEvent {
    pub mapping: String,
    pub topic: String,
    pub event_type: String,
    pub data: Json,
    pub org_id: Option<i64>,
    pub key: Option<String>,
}

/// Where a mapping sends its events.
#[derive(Debug)]
pub(crate) enum TopicSpec {
    /// A topic name, already in dotted form.
    Fixed(String),
    /// A template; holes are rendered per change.
    Template(Vec<TopicPart>),
}

#[derive(Debug)]
pub(crate) enum TopicPart {
    Literal(String),
    Hole(Expr),
}

/// A mapping ready to run: everything parsed, checked and compiled.
#[derive(Debug)]
pub(crate) struct Mapping {
    pub info: MappingInfo,
    /// The table, unquoted, as pgoutput names it.
    pub schema: String,
    pub table: String,
    /// Bits of [`Op::bit`].
    pub ops: u8,
    pub changed: Option<Vec<String>>,
    pub when: Option<Expr>,
    pub topic: TopicSpec,
    pub event_type: Option<String>,
    /// Field name and expression, in file order.
    pub payload: Option<Vec<(String, Expr)>>,
    pub org: Option<Expr>,
    pub key: Option<Expr>,
}

impl Mapping {
    /// Every expression of the mapping.
    pub fn expressions(&self) -> impl Iterator<Item = &Expr> {
        let holes = match &self.topic {
            TopicSpec::Fixed(_) => None,
            TopicSpec::Template(parts) => Some(parts.iter().filter_map(|p| match p {
                TopicPart::Hole(e) => Some(e),
                TopicPart::Literal(_) => None,
            })),
        };
        self.when
            .iter()
            .chain(holes.into_iter().flatten())
            .chain(self.payload.iter().flatten().map(|(_, e)| e))
            .chain(self.org.iter())
            .chain(self.key.iter())
    }

    /// Every expression of the mapping, to assign column slots.
    fn expressions_mut(&mut self) -> impl Iterator<Item = &mut Expr> {
        let holes = match &mut self.topic {
            TopicSpec::Fixed(_) => None,
            TopicSpec::Template(parts) => Some(parts.iter_mut().filter_map(|p| match p {
                TopicPart::Hole(e) => Some(e),
                TopicPart::Literal(_) => None,
            })),
        };
        self.when
            .iter_mut()
            .chain(holes.into_iter().flatten())
            .chain(self.payload.iter_mut().flatten().map(|(_, e)| e))
            .chain(self.org.iter_mut())
            .chain(self.key.iter_mut())
    }

    /// Whether the change passes the filters that need no CEL: the
    /// operation, and for updates the `changed:` columns (whose values are
    /// in `slots`, as `prepared` says).
    fn selects(&self, change: &Change<'_>, prepared: &Prepared, slots: &[Option<&Json>]) -> bool {
        if self.ops & change.op.bit() == 0 {
            return false;
        }
        match (&self.changed, change.op) {
            (Some(columns), Op::Update) => any_changed(columns, &prepared.changed, change, slots),
            _ => true,
        }
    }
}

/// Whether any of `columns` differs between the old and new row, given
/// the slots of each column in the new and the old row. A column Postgres
/// reported as an unchanged TOASTed value did not change; without an old
/// row (which the caller refuses at load for mappings with `changed:`),
/// every other column counts as changed.
fn any_changed(
    columns: &[String],
    slots: &[(usize, usize)],
    change: &Change<'_>,
    values: &[Option<&Json>],
) -> bool {
    columns.iter().zip(slots).any(|(column, &(new, old))| {
        if change.unchanged_columns.iter().any(|u| u == column) {
            return false;
        }
        match (change.new, change.old) {
            (Some(_), Some(_)) => values.get(new) != values.get(old),
            _ => true,
        }
    })
}

/// The columns of one row that a table's mappings read.
#[derive(Debug, Default)]
struct RowColumns {
    /// Name and slot.
    names: Vec<(String, usize)>,
    /// Bit `n % 64` is set when a name is `n` bytes long, so most other
    /// columns of a row are passed over after one test.
    lengths: u64,
}

impl RowColumns {
    fn add(&mut self, name: &str, slot: usize) {
        self.names.push((name.to_owned(), slot));
        self.lengths |= 1 << (name.len() % 64);
    }

    /// Puts the value of each column that `row` has in its slot. A few
    /// columns of a wide row are searched for one by one; otherwise one
    /// pass over the row compares names, cheapest test first (length,
    /// then bytes inline), which beats a search of the row's tree per
    /// column.
    fn find<'r>(&self, row: &'r Map<String, Json>, slots: &mut [Option<&'r Json>]) {
        const MAX_PAIRS: usize = 512;
        let wanted = self.names.len();
        if wanted == 0 {
            return;
        }
        if wanted * 16 <= row.len() || row.len().saturating_mul(wanted) > MAX_PAIRS {
            for (name, slot) in &self.names {
                if let Some(value) = slots.get_mut(*slot) {
                    *value = row.get(name);
                }
            }
            return;
        }
        let mut left = wanted;
        for (key, value) in row {
            let key = key.as_bytes();
            if self.lengths & (1 << (key.len() % 64)) == 0 {
                continue;
            }
            let found = self.names.iter().find(|(name, _)| {
                let name = name.as_bytes();
                name.len() == key.len() && name.iter().zip(key).all(|(a, b)| a == b)
            });
            if let Some((_, slot)) = found
                && let Some(place) = slots.get_mut(*slot)
            {
                *place = Some(value);
                left -= 1;
                if left == 0 {
                    return;
                }
            }
        }
    }
}

/// A mapping as its table runs it.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// Index into the set's mappings.
    pub index: usize,
    /// The slots of the `changed:` columns in the new and the old row, in
    /// the order of `changed:`.
    changed: Vec<(usize, usize)>,
    /// The payload object with every field null, cloned per event and then
    /// filled, and for each of its entries in its own order, the index of
    /// the payload field that fills it.
    object: Map<String, Json>,
    order: Vec<usize>,
}

/// The mappings of one table.
#[derive(Debug, Default)]
pub(crate) struct TableMappings {
    /// `schema.table`, the value of CEL's `table`.
    pub qualified: String,
    /// The table's mappings, in load order.
    pub mappings: Vec<Prepared>,
    /// Bits of [`Op::bit`] of every mapping together.
    ops: u8,
    /// The columns the mappings read by name, looked up once per change
    /// rather than once per expression (rows are ordered maps, where a
    /// lookup costs several string comparisons); a column's place here is
    /// its slot.
    pub columns: Vec<(Row, String)>,
    /// The same by row.
    new_columns: RowColumns,
    old_columns: RowColumns,
}

/// Hashes table names for the per-change lookup. Names come from mapping
/// files and the database's catalogue, not from untrusted input, so
/// FNV-1a serves: a tenth of SipHash's cost on short names.
#[derive(Clone, Copy)]
pub(crate) struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> NameHasher {
        NameHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Names<V> = HashMap<String, V, BuildHasherDefault<NameHasher>>;

/// The compiled mappings, indexed by schema then table.
pub(crate) struct Engine {
    pub env: Arc<Env>,
    pub mappings: Vec<Mapping>,
    pub by_table: Names<Names<TableMappings>>,
}

/// The number of column slots kept on the stack; a table whose mappings
/// read more columns gets a vector per change.
const STACK_SLOTS: usize = 16;

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("mappings", &self.mappings)
            .finish_non_exhaustive()
    }
}

impl Engine {
    pub fn new(env: Arc<Env>, mut mappings: Vec<Mapping>) -> Engine {
        let mut by_table: Names<Names<TableMappings>> = Names::default();
        for (index, m) in mappings.iter_mut().enumerate() {
            let entry = by_table
                .entry(m.schema.clone())
                .or_default()
                .entry(m.table.clone())
                .or_insert_with(|| TableMappings {
                    qualified: m.info.table.clone(),
                    ..TableMappings::default()
                });
            entry.ops |= m.ops;
            let columns = &mut entry.columns;
            let mut slot = |row: Row, name: &str| match columns
                .iter()
                .position(|(r, c)| *r == row && c == name)
            {
                Some(slot) => slot,
                None => {
                    columns.push((row, name.to_owned()));
                    columns.len() - 1
                }
            };
            let changed = m
                .changed
                .iter()
                .flatten()
                .map(|name| (slot(Row::New, name), slot(Row::Old, name)))
                .collect();
            for expr in m.expressions_mut() {
                expr.columns_mut(&mut |col: &mut Col| col.slot = slot(col.row, &col.name));
            }
            let mut object = Map::new();
            let fields = m.payload.as_deref().unwrap_or_default();
            for (name, _) in fields {
                object.insert(name.clone(), Json::Null);
            }
            let order = object
                .keys()
                .filter_map(|key| fields.iter().position(|(name, _)| name == key))
                .collect();
            entry.mappings.push(Prepared {
                index,
                changed,
                object,
                order,
            });
        }
        for entry in by_table.values_mut().flat_map(|tables| tables.values_mut()) {
            for (slot, (row, name)) in entry.columns.iter().enumerate() {
                let list = match row {
                    Row::New => &mut entry.new_columns,
                    Row::Old => &mut entry.old_columns,
                };
                list.add(name, slot);
            }
        }
        Engine {
            env,
            mappings,
            by_table,
        }
    }

    pub fn table(&self, schema: &str, table: &str) -> Option<&TableMappings> {
        self.by_table.get(schema).and_then(|t| t.get(table))
    }

    pub fn apply(&self, change: &Change<'_>) -> Vec<Result<MappedEvent, MappingFailure>> {
        let Some(entry) = self.table(change.schema, change.table) else {
            return Vec::new();
        };
        if entry.ops & change.op.bit() == 0 {
            return Vec::new();
        }
        let mut stack = [None; STACK_SLOTS];
        let mut heap: Vec<Option<&Json>>;
        let slots: &mut [Option<&Json>] = if entry.columns.len() <= STACK_SLOTS {
            &mut stack[..entry.columns.len()]
        } else {
            heap = vec![None; entry.columns.len()];
            &mut heap
        };
        if let Some(row) = change.new {
            entry.new_columns.find(row, slots);
        }
        if let Some(row) = change.old {
            entry.old_columns.find(row, slots);
        }
        let slots = &*slots;
        let vars = Vars::bind(change, &entry.qualified);
        let run = Run {
            change,
            scope: Scope {
                change,
                qualified: &entry.qualified,
                slots,
            },
            env: &self.env,
            vars: &vars,
            ctx: OnceCell::new(),
        };
        let mut out = Vec::new();
        for (n, prepared) in entry.mappings.iter().enumerate() {
            let mapping = &self.mappings[prepared.index];
            if !mapping.selects(change, prepared, slots) {
                continue;
            }
            if out.capacity() == 0 {
                out.reserve_exact(entry.mappings.len() - n);
            }
            run.mapping(mapping, prepared, &mut out);
        }
        out
    }
}

/// The CEL variables of one change, bound lazily: CEL asks for `new.status`
/// as a whole name before it asks for `new`, so a column read is answered
/// by converting that one column, and the whole row is only converted into
/// a CEL map when an expression uses it as a value (`has(new.x)`,
/// `'x' in new`, `new` in a payload, a missing column's error).
struct Vars<'a> {
    change: &'a Change<'a>,
    new: OnceLock<Box<dyn Val + 'a>>,
    old: OnceLock<Box<dyn Val + 'a>>,
    tx: OnceLock<Box<dyn Val + 'a>>,
    op: CelString<'static>,
    table: CelString<'a>,
    xid: CelInt,
    commit_ts: CelString<'a>,
    lsn: CelString<'a>,
}

impl<'a> Vars<'a> {
    fn bind(change: &'a Change<'a>, qualified: &'a str) -> Vars<'a> {
        Vars {
            change,
            new: OnceLock::new(),
            old: OnceLock::new(),
            tx: OnceLock::new(),
            op: CelString::from(change.op.as_str()),
            table: CelString::from(qualified),
            xid: CelInt::from(i64::from(change.xid)),
            commit_ts: CelString::from(change.commit_ts),
            lsn: CelString::from(change.lsn),
        }
    }

    fn row(&self, row: Row) -> &(dyn Val + 'a) {
        let (cell, map) = match row {
            Row::New => (&self.new, self.change.new),
            Row::Old => (&self.old, self.change.old),
        };
        cell.get_or_init(|| match map {
            Some(map) => Box::new(object_to_cel(map)),
            None => Box::new(AbsentRow),
        })
        .as_ref()
    }

    fn tx(&self) -> &(dyn Val + 'a) {
        self.tx
            .get_or_init(|| {
                let mut map: HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> = HashMap::with_capacity(3);
                map.insert(
                    CelMapKey::String(CelString::from("xid")),
                    Box::new(self.xid),
                );
                map.insert(
                    CelMapKey::String(CelString::from("commit_ts")),
                    Box::new(self.commit_ts.clone()),
                );
                map.insert(
                    CelMapKey::String(CelString::from("lsn")),
                    Box::new(self.lsn.clone()),
                );
                Box::new(CelMap::from(map))
            })
            .as_ref()
    }

    /// `new.col` or `old.col` as one name: the column alone, or `None` to
    /// let CEL select it from the whole row (a missing column, whose error
    /// CEL words).
    fn column<'b>(&'b self, row: Row, column: &str) -> Option<CowVal<'b, 'b>> {
        if column.contains('.') {
            return None;
        }
        let map = match row {
            Row::New => self.change.new,
            Row::Old => self.change.old,
        };
        match map {
            None => Some(CowVal::owned(CelNull)),
            Some(map) => map.get(column).map(|v| CowVal::Owned(json_to_cel(v))),
        }
    }
}

impl VariableResolver for Vars<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let value: &'b (dyn Val + 'b) = match variable {
            "new" => self.row(Row::New),
            "old" => self.row(Row::Old),
            "op" => &self.op,
            "table" => &self.table,
            "tx" => self.tx(),
            "tx.xid" => &self.xid,
            "tx.commit_ts" => &self.commit_ts,
            "tx.lsn" => &self.lsn,
            _ => {
                if let Some(column) = variable.strip_prefix("new.") {
                    return self.column(Row::New, column);
                }
                if let Some(column) = variable.strip_prefix("old.") {
                    return self.column(Row::Old, column);
                }
                return None;
            }
        };
        Some(CowVal::Borrowed(value))
    }
}

/// The result of one expression, before it is turned into what the field
/// needs.
enum Out<'c> {
    /// A column served from the JSON row.
    Json(&'c Json),
    /// A column of an absent row: null.
    Absent,
    /// A value of the native subset.
    Fast(V<'c>),
    Cel(CowVal<'c, 'c>),
}

/// One change being run through its table's mappings.
struct Run<'c, 'v> {
    change: &'c Change<'c>,
    scope: Scope<'c>,
    env: &'c Arc<Env>,
    vars: &'v Vars<'c>,
    /// Made the first time an expression needs the interpreter: most
    /// changes never get there.
    ctx: OnceCell<Context<'v, 'v>>,
}

impl Run<'_, '_> {
    /// Adds the mapping's event, or its failure, to `out`; nothing when its
    /// `when` is false.
    fn mapping(
        &self,
        m: &Mapping,
        prepared: &Prepared,
        out: &mut Vec<Result<MappedEvent, MappingFailure>>,
    ) {
        match self.event(m, prepared) {
            Ok(Some(event)) => out.push(Ok(event)),
            Ok(None) => {}
            Err(message) => out.push(Err(MappingFailure {
                mapping: m.info.name.clone(),
                message,
            })),
        }
    }

    /// The mapping's event, `None` when its `when` is false.
    #[inline(always)]
    fn event(&self, m: &Mapping, prepared: &Prepared) -> Result<Option<MappedEvent>, String> {
        if let Some(when) = &m.when
            && !self.truth(when)?
        {
            return Ok(None);
        }
        let topic = self.topic(&m.topic)?;
        let data = match &m.payload {
            Some(fields) => self.payload(fields, prepared)?,
            None => self.default_data(),
        };
        let org_id = match &m.org {
            Some(expr) => self.org(expr)?,
            None => None,
        };
        let key = match &m.key {
            Some(expr) => self.key(expr)?,
            None => None,
        };
        let event_type = m
            .event_type
            .clone()
            .unwrap_or_else(|| self.change.op.default_event_type().to_owned());
        Ok(Some(MappedEvent {
            mapping: m.info.name.clone(),
            topic,
            event_type,
            data,
            org_id,
            key,
        }))
    }

    #[inline(always)]
    fn eval<'s>(&'s self, expr: &'s Expr) -> Result<Out<'s>, String> {
        match &expr.eval {
            Eval::Column(col) => match self.scope.lookup(col) {
                Lookup::Absent => Ok(Out::Absent),
                Lookup::Found(value) => Ok(Out::Json(value)),
                Lookup::Missing => Err(format!("No such key: {}", col.name)),
            },
            Eval::Fast { fast, program } => match fast.eval(&self.scope) {
                Some(v) => Ok(Out::Fast(v)),
                None => self.cel(program),
            },
            Eval::Cel(program) => self.cel(program),
        }
    }

    fn cel<'s>(&'s self, program: &'s Program) -> Result<Out<'s>, String> {
        let ctx = self.ctx.get_or_init(|| {
            let mut ctx = Context::with_env(Arc::clone(self.env));
            ctx.set_variable_resolver(self.vars);
            ctx
        });
        CelValue::resolve_val(program.expression(), ctx)
            .map(Out::Cel)
            .map_err(|e| e.to_string())
    }

    /// The payload object: the prepared one with its values filled in. The
    /// fields are evaluated in the object's order; when one fails, they are
    /// run again in file order so the error is the first field's, as
    /// written.
    fn payload(&self, fields: &[(String, Expr)], prepared: &Prepared) -> Result<Json, String> {
        let mut object = prepared.object.clone();
        let mut failed = false;
        for (value, &field) in object.values_mut().zip(&prepared.order) {
            match fields.get(field).map(|(_, expr)| self.json(expr)) {
                Some(Ok(v)) => *value = v,
                _ => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            for (name, expr) in fields {
                if let Err(e) = self.json(expr) {
                    return Err(format!("in `payload.{name}`: {e}"));
                }
            }
        }
        Ok(Json::Object(object))
    }

    fn truth(&self, expr: &Expr) -> Result<bool, String> {
        let got = match self.eval(expr).map_err(|e| format!("in `when`: {e}"))? {
            Out::Json(Json::Bool(b)) => return Ok(*b),
            Out::Fast(V::Bool(b)) => return Ok(b),
            Out::Json(j) => json_type(j),
            Out::Fast(v) => v.type_name().to_owned(),
            Out::Absent => "null".to_owned(),
            Out::Cel(v) => match v.downcast_ref::<CelBool>() {
                Some(b) => return Ok(*b.inner()),
                None => type_name(v.as_ref()),
            },
        };
        Err(format!("`when` must be a bool, got {got}"))
    }

    fn json(&self, expr: &Expr) -> Result<Json, String> {
        match self.eval(expr)? {
            Out::Json(j) => Ok(j.clone()),
            Out::Absent => Ok(Json::Null),
            Out::Fast(v) => Ok(fast_to_json(v)),
            Out::Cel(v) => cel_to_json(v.as_ref()).map_err(|e| e.to_string()),
        }
    }

    /// Appends the value of `expr` as text to `out` (see
    /// [`crate::value::write_cel_text`]); the inner error is the type name of
    /// a value that has no text.
    fn write_text(&self, expr: &Expr, out: &mut String) -> Result<Result<(), String>, String> {
        // Writing to a String cannot fail.
        Ok(match self.eval(expr)? {
            Out::Json(j) => write_json_text(j, out).map_err(str::to_owned),
            Out::Absent | Out::Fast(V::Null) => Err("null".to_owned()),
            Out::Fast(V::Str(s)) => {
                out.push_str(s);
                Ok(())
            }
            Out::Fast(V::Int(i)) => Ok(_ = write!(out, "{i}")),
            Out::Fast(V::UInt(u)) => Ok(_ = write!(out, "{u}")),
            Out::Fast(V::Double(d)) => Ok(_ = write!(out, "{d}")),
            Out::Fast(V::Bool(b)) => Ok(_ = write!(out, "{b}")),
            Out::Cel(v) => write_cel_text(v.as_ref(), out),
        })
    }

    fn topic(&self, spec: &TopicSpec) -> Result<String, String> {
        let parts = match spec {
            TopicSpec::Fixed(topic) => return Ok(topic.clone()),
            TopicSpec::Template(parts) => parts,
        };
        let mut topic = String::with_capacity(64);
        let mut empty_hole = false;
        for part in parts {
            match part {
                TopicPart::Literal(s) => topic.push_str(s),
                TopicPart::Hole(expr) => {
                    let hole = || format!("topic template `{{{{ {} }}}}`", expr.source);
                    let start = topic.len();
                    self.write_text(expr, &mut topic)
                        .map_err(|e| format!("in {}: {e}", hole()))?
                        .map_err(|got| {
                            format!(
                                "{} gave {got}; it must give a string, a number or a bool",
                                hole()
                            )
                        })?;
                    let text = topic.get(start..).unwrap_or_default();
                    empty_hole |= text.is_empty();
                    if !template::is_segment_text(text) {
                        return Err(format!(
                            "{} gave {text:?}; it may hold only letters, digits, '_' and '-'",
                            hole()
                        ));
                    }
                }
            }
        }
        // The literal parts were checked at load with a segment character in
        // each hole, and holes hold only segment characters, so only an
        // empty hole or the length can break the topic; the full check runs
        // only to word the error.
        if !empty_hole && topic.len() <= MAX_TOPIC_LEN {
            return Ok(topic);
        }
        match Topic::parse(&topic) {
            Ok(t) => Ok(t.into_string()),
            Err(e) => Err(format!("rendered topic is invalid: {e}")),
        }
    }

    fn org(&self, expr: &Expr) -> Result<Option<i64>, String> {
        let got = match self.eval(expr).map_err(|e| format!("in `org`: {e}"))? {
            Out::Json(Json::Null) | Out::Absent | Out::Fast(V::Null) => return Ok(None),
            Out::Fast(V::Int(i)) => return Ok(Some(i)),
            Out::Fast(V::UInt(u)) => match i64::try_from(u) {
                Ok(i) => return Ok(Some(i)),
                Err(_) => format!("the uint {u}"),
            },
            Out::Fast(v) => v.type_name().to_owned(),
            Out::Json(Json::Number(n)) => match n.as_i64() {
                Some(i) => return Ok(Some(i)),
                None => format!("the number {n}"),
            },
            Out::Json(j) => json_type(j),
            Out::Cel(v) => {
                if let Some(i) = v.downcast_ref::<CelInt>() {
                    return Ok(Some(*i.inner()));
                }
                if let Some(u) = v.downcast_ref::<CelUInt>() {
                    match i64::try_from(*u.inner()) {
                        Ok(i) => return Ok(Some(i)),
                        Err(_) => format!("the uint {}", u.inner()),
                    }
                } else if v.downcast_ref::<CelNull>().is_some()
                    || v.downcast_ref::<AbsentRow>().is_some()
                {
                    return Ok(None);
                } else {
                    type_name(v.as_ref())
                }
            }
        };
        Err(format!(
            "`org` must be an int or null, got {got} (a numeric column arrives as a string: use int(...))"
        ))
    }

    fn key(&self, expr: &Expr) -> Result<Option<String>, String> {
        let mut text = String::new();
        match self
            .write_text(expr, &mut text)
            .map_err(|e| format!("in `key`: {e}"))?
        {
            Ok(()) => Ok(Some(text)),
            Err(got) if got == "null" => Ok(None),
            Err(got) => Err(format!(
                "`key` must be a string, a number, a bool or null, got {got}"
            )),
        }
    }

    /// The data of a mapping without `payload`: the new row, the old row
    /// for a delete, the table's name for a truncate.
    fn default_data(&self) -> Json {
        let row = match self.change.op {
            Op::Insert | Op::Update => self.change.new,
            Op::Delete => self.change.old,
            Op::Truncate => {
                let mut object = Map::new();
                object.insert(
                    "table".to_owned(),
                    Json::String(self.scope.qualified.to_owned()),
                );
                return Json::Object(object);
            }
        };
        row.map_or(Json::Null, |r| Json::Object(r.clone()))
    }
}

fn fast_to_json(v: V<'_>) -> Json {
    match v {
        V::Null => Json::Null,
        V::Bool(b) => Json::Bool(b),
        V::Int(i) => Json::from(i),
        V::UInt(u) => Json::from(u),
        V::Double(d) => double_to_json(d),
        V::Str(s) => Json::String(s.to_owned()),
    }
}

fn json_type(value: &Json) -> String {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "bool",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "list",
        Json::Object(_) => "map",
    }
    .to_owned()
}

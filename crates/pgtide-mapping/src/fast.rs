//! A native evaluator for the everyday subset of CEL in mappings.
//!
//! The CEL interpreter costs a few hundred nanoseconds per expression (name
//! resolution, overload lookup, a boxed value per node). Mapping filters are
//! mostly comparisons of columns with literals joined by `&&` and `||`, run
//! for every change of a busy table, so that subset is compiled to a small
//! tree evaluated directly on the JSON row.
//!
//! The rule that keeps this safe: the fast evaluator answers only when it is
//! certain to give what CEL gives, and otherwise says "don't know" (`None`),
//! in which case the expression is run through CEL. So anything unusual —
//! a type mismatch, a missing column, a list-valued column, a value that
//! fails to parse, NaN — goes to CEL, which produces the result or the error
//! message. Expressions outside the subset are never compiled here at all.
//! A differential test checks the two agree.
//!
//! The subset: literals (null, bool, int, uint, double, string), `new.col`,
//! `old.col`, `op`, `table`, `tx.xid`, `tx.lsn`, `tx.commit_ts`, `==`, `!=`,
//! `<`, `<=`, `>`, `>=`, `in` with a list literal, `&&`, `||`, `!`,
//! `c ? a : b`, `int(x)` and `double(x)`.

use crate::engine::Change;
use crate::expr::Row;
use cel::IdedExpr;
use cel::common::ast::operators::{
    CONDITIONAL, EQUALS, GREATER, GREATER_EQUALS, IN, LESS, LESS_EQUALS, LOGICAL_AND, LOGICAL_NOT,
    LOGICAL_OR, NOT_EQUALS,
};
use cel::common::ast::{Expr as Ast, LiteralValue};
use serde_json::Value as Json;
use std::cmp::Ordering;

/// A scalar value, borrowing strings from the change or the expression.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum V<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(&'a str),
}

impl V<'_> {
    /// The CEL type name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            V::Null => "null",
            V::Bool(_) => "bool",
            V::Int(_) => "int",
            V::UInt(_) => "uint",
            V::Double(_) => "double",
            V::Str(_) => "string",
        }
    }
}

/// Literal values owned by the compiled tree.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lit {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(String),
}

impl Lit {
    fn as_v(&self) -> V<'_> {
        match self {
            Lit::Null => V::Null,
            Lit::Bool(b) => V::Bool(*b),
            Lit::Int(i) => V::Int(*i),
            Lit::UInt(u) => V::UInt(*u),
            Lit::Double(d) => V::Double(*d),
            Lit::Str(s) => V::Str(s),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Var {
    Op,
    Table,
    Xid,
    CommitTs,
    Lsn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
}

/// A column read, `new.col` or `old.col`. `slot` indexes the columns its
/// table's mappings read, looked up once per change (see
/// [`crate::engine`]); `usize::MAX` until the engine assigns it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Col {
    pub row: Row,
    pub name: String,
    pub slot: usize,
}

impl Col {
    pub fn new(row: Row, name: &str) -> Col {
        Col {
            row,
            name: name.to_owned(),
            slot: usize::MAX,
        }
    }
}

/// What a column read found.
pub(crate) enum Lookup<'a> {
    /// The row itself is absent (`old` of an insert): the value is null.
    Absent,
    /// The row has no such column.
    Missing,
    Found(&'a Json),
}

/// A compiled expression of the subset.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Fast {
    Lit(Lit),
    Column(Col),
    Var(Var),
    Eq(Box<Fast>, Box<Fast>),
    Ne(Box<Fast>, Box<Fast>),
    Cmp(Cmp, Box<Fast>, Box<Fast>),
    In(Box<Fast>, Vec<Lit>),
    And(Box<Fast>, Box<Fast>),
    Or(Box<Fast>, Box<Fast>),
    Not(Box<Fast>),
    Cond(Box<Fast>, Box<Fast>, Box<Fast>),
    Int(Box<Fast>),
    Double(Box<Fast>),
}

/// Compiles `expr` if it lies wholly inside the subset.
pub(crate) fn compile(expr: &IdedExpr) -> Option<Fast> {
    match &expr.expr {
        Ast::Literal(lit) => Some(Fast::Lit(match lit {
            LiteralValue::Null => Lit::Null,
            LiteralValue::Boolean(b) => Lit::Bool(*b.inner()),
            LiteralValue::Int(i) => Lit::Int(*i.inner()),
            LiteralValue::UInt(u) => Lit::UInt(*u.inner()),
            LiteralValue::Double(d) => Lit::Double(*d.inner()),
            LiteralValue::String(s) => Lit::Str(s.inner().to_owned()),
            LiteralValue::Bytes(_) => return None,
        })),
        Ast::Ident(name) => match name.as_str() {
            "op" => Some(Fast::Var(Var::Op)),
            "table" => Some(Fast::Var(Var::Table)),
            _ => None,
        },
        Ast::Select(select) if !select.test => {
            let Ast::Ident(name) = &select.operand.expr else {
                return None;
            };
            match (name.as_str(), select.field.as_str()) {
                ("new", column) => Some(Fast::Column(Col::new(Row::New, column))),
                ("old", column) => Some(Fast::Column(Col::new(Row::Old, column))),
                ("tx", "xid") => Some(Fast::Var(Var::Xid)),
                ("tx", "commit_ts") => Some(Fast::Var(Var::CommitTs)),
                ("tx", "lsn") => Some(Fast::Var(Var::Lsn)),
                _ => None,
            }
        }
        Ast::Call(call) if call.target.is_none() => {
            let args = &call.args;
            let two = || -> Option<(Box<Fast>, Box<Fast>)> {
                match args.as_slice() {
                    [a, b] => Some((Box::new(compile(a)?), Box::new(compile(b)?))),
                    _ => None,
                }
            };
            let one = || -> Option<Box<Fast>> {
                match args.as_slice() {
                    [a] => Some(Box::new(compile(a)?)),
                    _ => None,
                }
            };
            match call.func_name.as_str() {
                EQUALS => two().map(|(a, b)| Fast::Eq(a, b)),
                NOT_EQUALS => two().map(|(a, b)| Fast::Ne(a, b)),
                LESS => two().map(|(a, b)| Fast::Cmp(Cmp::Lt, a, b)),
                LESS_EQUALS => two().map(|(a, b)| Fast::Cmp(Cmp::Le, a, b)),
                GREATER => two().map(|(a, b)| Fast::Cmp(Cmp::Gt, a, b)),
                GREATER_EQUALS => two().map(|(a, b)| Fast::Cmp(Cmp::Ge, a, b)),
                LOGICAL_AND => two().map(|(a, b)| Fast::And(a, b)),
                LOGICAL_OR => two().map(|(a, b)| Fast::Or(a, b)),
                LOGICAL_NOT => one().map(Fast::Not),
                "int" => one().map(Fast::Int),
                "double" => one().map(Fast::Double),
                CONDITIONAL => match args.as_slice() {
                    [c, a, b] => Some(Fast::Cond(
                        Box::new(compile(c)?),
                        Box::new(compile(a)?),
                        Box::new(compile(b)?),
                    )),
                    _ => None,
                },
                IN => match args.as_slice() {
                    [x, list] => {
                        let Ast::List(list) = &list.expr else {
                            return None;
                        };
                        if !list.optional_indices.is_empty() {
                            return None;
                        }
                        let mut items = Vec::with_capacity(list.elements.len());
                        for element in &list.elements {
                            match compile(element)? {
                                Fast::Lit(lit) => items.push(lit),
                                _ => return None,
                            }
                        }
                        Some(Fast::In(Box::new(compile(x)?), items))
                    }
                    _ => None,
                },
                _ => None,
            }
        }
        _ => None,
    }
}

/// The context of one evaluation.
pub(crate) struct Scope<'a> {
    pub change: &'a Change<'a>,
    pub qualified: &'a str,
    /// The columns the table's mappings read, by slot.
    pub slots: &'a [Option<&'a Json>],
}

impl<'a> Scope<'a> {
    pub fn lookup(&self, col: &Col) -> Lookup<'a> {
        let row = match col.row {
            Row::New => self.change.new,
            Row::Old => self.change.old,
        };
        let Some(map) = row else {
            return Lookup::Absent;
        };
        let found = match self.slots.get(col.slot) {
            Some(found) => *found,
            None => map.get(&col.name),
        };
        found.map_or(Lookup::Missing, Lookup::Found)
    }
}

impl Fast {
    /// Every column read of the tree, to assign slots.
    pub fn columns_mut(&mut self, f: &mut dyn FnMut(&mut Col)) {
        match self {
            Fast::Column(col) => f(col),
            Fast::Lit(_) | Fast::Var(_) => {}
            Fast::Eq(a, b)
            | Fast::Ne(a, b)
            | Fast::Cmp(_, a, b)
            | Fast::And(a, b)
            | Fast::Or(a, b) => {
                a.columns_mut(f);
                b.columns_mut(f);
            }
            Fast::In(a, _) | Fast::Not(a) | Fast::Int(a) | Fast::Double(a) => a.columns_mut(f),
            Fast::Cond(c, a, b) => {
                c.columns_mut(f);
                a.columns_mut(f);
                b.columns_mut(f);
            }
        }
    }

    /// [`Fast::eval`] with literals and columns, the usual operands of a
    /// comparison, read in place rather than through a call.
    #[inline(always)]
    fn operand<'a>(&'a self, scope: &Scope<'a>) -> Option<V<'a>> {
        match self {
            Fast::Lit(lit) => Some(lit.as_v()),
            Fast::Column(col) => match scope.lookup(col) {
                Lookup::Absent => Some(V::Null),
                Lookup::Missing => None,
                Lookup::Found(value) => json_scalar(value),
            },
            _ => self.eval(scope),
        }
    }

    /// The value, or `None` when CEL must decide.
    pub fn eval<'a>(&'a self, scope: &Scope<'a>) -> Option<V<'a>> {
        match self {
            Fast::Lit(lit) => Some(lit.as_v()),
            Fast::Column(col) => match scope.lookup(col) {
                Lookup::Absent => Some(V::Null),
                Lookup::Missing => None,
                Lookup::Found(value) => json_scalar(value),
            },
            Fast::Var(var) => Some(match var {
                Var::Op => V::Str(scope.change.op.as_str()),
                Var::Table => V::Str(scope.qualified),
                Var::Xid => V::Int(i64::from(scope.change.xid)),
                Var::CommitTs => V::Str(scope.change.commit_ts),
                Var::Lsn => V::Str(scope.change.lsn),
            }),
            Fast::Eq(a, b) => Some(V::Bool(equal(a.operand(scope)?, b.operand(scope)?)?)),
            Fast::Ne(a, b) => Some(V::Bool(!equal(a.operand(scope)?, b.operand(scope)?)?)),
            Fast::Cmp(cmp, a, b) => {
                let ordering = compare(a.operand(scope)?, b.operand(scope)?)?;
                Some(V::Bool(match cmp {
                    Cmp::Lt => ordering == Ordering::Less,
                    Cmp::Le => ordering != Ordering::Greater,
                    Cmp::Gt => ordering == Ordering::Greater,
                    Cmp::Ge => ordering != Ordering::Less,
                }))
            }
            Fast::In(x, items) => {
                let x = x.operand(scope)?;
                let mut found = false;
                for item in items {
                    // Every comparison must be certain, as CEL compares them all.
                    found |= equal(x, item.as_v())?;
                }
                Some(V::Bool(found))
            }
            // CEL's logic is commutative over errors: `false && error` and
            // `error && false` are both false. So the right side decides
            // unless the left one already has, and only then is it run.
            Fast::And(a, b) => match a.eval(scope) {
                Some(V::Bool(false)) => Some(V::Bool(false)),
                left => match (left, b.eval(scope)) {
                    (_, Some(V::Bool(false))) => Some(V::Bool(false)),
                    (Some(V::Bool(true)), Some(V::Bool(true))) => Some(V::Bool(true)),
                    _ => None,
                },
            },
            Fast::Or(a, b) => match a.eval(scope) {
                Some(V::Bool(true)) => Some(V::Bool(true)),
                left => match (left, b.eval(scope)) {
                    (_, Some(V::Bool(true))) => Some(V::Bool(true)),
                    (Some(V::Bool(false)), Some(V::Bool(false))) => Some(V::Bool(false)),
                    _ => None,
                },
            },
            Fast::Not(a) => match a.eval(scope)? {
                V::Bool(b) => Some(V::Bool(!b)),
                _ => None,
            },
            Fast::Cond(c, a, b) => match c.eval(scope)? {
                V::Bool(true) => a.eval(scope),
                V::Bool(false) => b.eval(scope),
                _ => None,
            },
            Fast::Int(a) => match a.operand(scope)? {
                V::Int(i) => Some(V::Int(i)),
                V::UInt(u) => i64::try_from(u).ok().map(V::Int),
                V::Str(s) => s.parse::<i64>().ok().map(V::Int),
                _ => None,
            },
            Fast::Double(a) => match a.eval(scope)? {
                V::Double(d) => Some(V::Double(d)),
                V::Int(i) => Some(V::Double(i as f64)),
                V::UInt(u) => Some(V::Double(u as f64)),
                V::Str(s) => s
                    .parse::<f64>()
                    .ok()
                    .filter(|d| d.is_finite())
                    .map(V::Double),
                _ => None,
            },
        }
    }
}

/// A JSON column as a scalar, the way it becomes a CEL value; lists and
/// maps are left to CEL.
fn json_scalar(value: &Json) -> Option<V<'_>> {
    match value {
        Json::Null => Some(V::Null),
        Json::Bool(b) => Some(V::Bool(*b)),
        Json::String(s) => Some(V::Str(s)),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(V::Int(i))
            } else if let Some(u) = n.as_u64() {
                Some(V::UInt(u))
            } else {
                n.as_f64().map(V::Double)
            }
        }
        Json::Array(_) | Json::Object(_) => None,
    }
}

/// CEL equality: values of different kinds are unequal, ints and uints
/// compare by value. Int or uint against a double is left to CEL.
fn equal(a: V<'_>, b: V<'_>) -> Option<bool> {
    Some(match (a, b) {
        (V::Null, V::Null) => true,
        (V::Bool(x), V::Bool(y)) => x == y,
        (V::Str(x), V::Str(y)) => x == y,
        (V::Int(x), V::Int(y)) => x == y,
        (V::UInt(x), V::UInt(y)) => x == y,
        (V::Int(x), V::UInt(y)) | (V::UInt(y), V::Int(x)) => i128::from(x) == i128::from(y),
        (V::Double(x), V::Double(y)) => x == y,
        (V::Double(_), V::Int(_) | V::UInt(_)) | (V::Int(_) | V::UInt(_), V::Double(_)) => {
            return None;
        }
        _ => false,
    })
}

/// CEL ordering for the pairs it certainly supports; NaN and anything else
/// is left to CEL (which reports the error).
fn compare(a: V<'_>, b: V<'_>) -> Option<Ordering> {
    match (a, b) {
        (V::Int(x), V::Int(y)) => Some(x.cmp(&y)),
        (V::UInt(x), V::UInt(y)) => Some(x.cmp(&y)),
        (V::Int(x), V::UInt(y)) => Some(i128::from(x).cmp(&i128::from(y))),
        (V::UInt(x), V::Int(y)) => Some(i128::from(x).cmp(&i128::from(y))),
        (V::Double(x), V::Double(y)) => x.partial_cmp(&y),
        (V::Str(x), V::Str(y)) => Some(x.cmp(y)),
        (V::Bool(x), V::Bool(y)) => Some(x.cmp(&y)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Op;
    use crate::value::{cel_to_json, object_to_cel};
    use cel::Context;
    use cel::common::types::{CelInt, CelMap, CelMapKey, CelString};
    use cel::common::value::Val;
    use serde_json::{Map, json};
    use std::collections::HashMap;
    use std::sync::Arc;

    fn v_to_json(v: V<'_>) -> Json {
        match v {
            V::Null => Json::Null,
            V::Bool(b) => Json::Bool(b),
            V::Int(i) => json!(i),
            V::UInt(u) => json!(u),
            V::Double(d) => json!(d),
            V::Str(s) => json!(s),
        }
    }

    type RowImage = Option<Map<String, Json>>;

    fn rows() -> Vec<(Op, RowImage, RowImage)> {
        let obj = |v: Json| match v {
            Json::Object(m) => Some(m),
            _ => None,
        };
        let a = json!({
            "s": "active", "e": "", "n": 5, "neg": -3, "big": u64::MAX, "f": 2.5,
            "one_f": 1.0, "t": true, "z": null, "num": "12", "bad": "1x",
            "list": [1, 2], "map": {"k": 1}, "fl": "2.5"
        });
        let b = json!({
            "s": "completed", "e": "x", "n": 7, "neg": 3, "big": 1, "f": -0.5,
            "one_f": 2.0, "t": false, "z": 1, "num": "-4", "bad": "", "list": [],
            "map": {}, "fl": "nan"
        });
        vec![
            (Op::Insert, obj(a.clone()), None),
            (Op::Update, obj(b.clone()), obj(a.clone())),
            (Op::Update, obj(a), obj(b.clone())),
            (Op::Delete, None, obj(b)),
        ]
    }

    const EXPRESSIONS: &[&str] = &[
        "new.s == 'active'",
        "new.s != 'active'",
        "new.s in ['active', 'completed']",
        "new.n in [5, 6u, 'x']",
        "new.n == 5 && new.s == 'active'",
        "new.n == 5 || new.s == 'active'",
        "new.n > 4",
        "new.n >= 5u",
        "new.neg < 0",
        "new.big > 1",
        "new.big == 18446744073709551615u",
        "new.f > 1.0",
        "new.f == 2.5",
        "new.one_f == 1",
        "new.n > 1.5",
        "new.t",
        "!new.t",
        "new.t && true",
        "new.z == null",
        "new.z != null",
        "old.s == null",
        "old.s == 'active'",
        "old.s != new.s",
        "new.s < 'b'",
        "new.e == ''",
        "int(new.num) > 10",
        "int(new.bad) > 10",
        "int(new.n) == 5",
        "int(new.big) > 0",
        "double(new.fl) > 2.0",
        "double(new.n) == 5.0",
        "new.missing == 1",
        "new.missing == 1 || true",
        "false && new.missing == 1",
        "new.missing == 1 && false",
        "new.s == 1",
        "new.s < 1",
        "new.list == [1, 2]",
        "new.list == 1",
        "new.map == 1",
        "new.t ? 'yes' : 'no'",
        "new.n ? 1 : 2",
        "new.s ? 1 : 2",
        "op == 'insert'",
        "op in ['update', 'delete'] && table == 'public.t'",
        "tx.xid == 42",
        "tx.lsn == '1/2' && tx.commit_ts > '2026'",
        "new.n && true",
        "true || new.n",
        "new.n || true",
        "1 == 1.0",
        "null < null",
        "new.s",
        "new.n",
        "new.f",
        "new.z",
        "old.n",
        "-1 < new.neg",
    ];

    /// Wherever the fast evaluator answers, CEL gives the same answer.
    #[test]
    fn agrees_with_cel() {
        let env = Arc::new(crate::set::cel_env());
        let mut answered = 0;
        for source in EXPRESSIONS {
            let program = env.compile(source).expect(source);
            let fast = compile(program.expression());
            for (op, new, old) in rows() {
                let change = Change {
                    op,
                    schema: "public",
                    table: "t",
                    new: new.as_ref(),
                    old: old.as_ref(),
                    unchanged_columns: &[],
                    xid: 42,
                    commit_ts: "2026-03-04T12:00:00Z",
                    lsn: "1/2",
                };
                let scope = Scope {
                    change: &change,
                    qualified: "public.t",
                    slots: &[],
                };
                let Some(got) = fast.as_ref().and_then(|f| f.eval(&scope)) else {
                    continue;
                };
                answered += 1;
                let mut ctx = Context::with_env(Arc::clone(&env));
                fn row(r: Option<&Map<String, Json>>) -> Box<dyn Val + '_> {
                    match r {
                        Some(m) => Box::new(object_to_cel(m)),
                        None => Box::new(crate::value::AbsentRow),
                    }
                }
                ctx.add_variable_as_val("new", row(new.as_ref()));
                ctx.add_variable_as_val("old", row(old.as_ref()));
                ctx.add_variable_as_val("op", Box::new(CelString::from(op.as_str())));
                ctx.add_variable_as_val("table", Box::new(CelString::from("public.t")));
                let mut tx: HashMap<CelMapKey<'_>, Box<dyn Val>> = HashMap::new();
                tx.insert(CelMapKey::String("xid".into()), Box::new(CelInt::from(42)));
                tx.insert(
                    CelMapKey::String("lsn".into()),
                    Box::new(CelString::from("1/2")),
                );
                tx.insert(
                    CelMapKey::String("commit_ts".into()),
                    Box::new(CelString::from("2026-03-04T12:00:00Z")),
                );
                ctx.add_variable_as_val("tx", Box::new(CelMap::from(tx)));
                let cel = cel::Value::resolve_val(program.expression(), &ctx)
                    .map(|v| cel_to_json(v.as_ref()));
                assert_eq!(
                    cel.map_err(|e| e.to_string()),
                    Ok(Ok(v_to_json(got))),
                    "`{source}` on {op:?} new={new:?} old={old:?}"
                );
            }
        }
        assert!(answered > 100, "only {answered} fast answers");
    }

    /// Macros, functions and maps stay with CEL.
    #[test]
    fn outside_the_subset() {
        let env = crate::set::cel_env();
        for source in [
            "has(new.s)",
            "new.s.startsWith('a')",
            "size(new.s) > 1",
            "new.list.exists(x, x > 1)",
            "new",
            "new.a.b == 1",
            "{'a': 1}.a == 1",
            "new.n + 1 == 2",
            "new.s in new.list",
            "b'x' == b'x'",
            "tx.other == 1",
            "string(new.n) == '5'",
        ] {
            let program = env.compile(source).expect(source);
            assert_eq!(compile(program.expression()), None, "{source}");
        }
    }
}

//! CEL expressions of a mapping, compiled once at load.
//!
//! Two things happen here beyond compiling. The variables an expression uses
//! are worked out from its syntax tree, so an unknown name (`neww.id`) is a
//! load error rather than a failure on every change, and so the engine knows
//! whether a table's mappings read `old` (the caller then checks `REPLICA
//! IDENTITY FULL`) and which variables are worth binding at all. And the
//! commonest expression, a plain column read such as `new.id`, is recognised
//! and later served straight from the JSON row without running CEL, which
//! is both faster and keeps numbers exactly as the row has them.

use crate::fast::{self, Col, Fast};
use cel::common::ast::operators::INDEX;
use cel::common::ast::{EntryExpr, Expr as Ast, LiteralValue};
use cel::{Env, IdedExpr, Program};

/// The variables CEL sees, as a set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Uses {
    pub new: bool,
    pub old: bool,
    pub tx: bool,
}

impl Uses {
    pub fn union(self, other: Uses) -> Uses {
        Uses {
            new: self.new || other.new,
            old: self.old || other.old,
            tx: self.tx || other.tx,
        }
    }
}

/// Which row a column read reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Row {
    New,
    Old,
}

/// How an expression is evaluated.
#[derive(Debug)]
pub(crate) enum Eval {
    /// `new.col` or `old.col`: a lookup in the JSON row.
    Column(Col),
    /// The native subset of [`crate::fast`], with the program to fall back
    /// on when the fast evaluator cannot decide.
    Fast { fast: Fast, program: Program },
    /// Anything else.
    Cel(Program),
}

/// A compiled expression and the source it came from.
#[derive(Debug)]
pub(crate) struct Expr {
    pub source: String,
    pub eval: Eval,
    pub uses: Uses,
    /// The row columns it reads by name, for the caller's check that they
    /// exist.
    pub columns: Vec<(Row, String)>,
    /// Where it is written, set by the loader (for the database checks).
    pub at: Option<Box<crate::error::Location>>,
}

/// Names CEL resolves as types rather than variables (`type(x) == int`).
const TYPE_NAMES: [&str; 13] = [
    "bool",
    "bytes",
    "double",
    "dyn",
    "google",
    "int",
    "list",
    "map",
    "null_type",
    "optional_type",
    "string",
    "type",
    "uint",
];

/// Compiles `source`; the error is a message for a [`crate::LoadError`].
pub(crate) fn compile(env: &Env, source: &str) -> Result<Expr, String> {
    let program = env.compile(source).map_err(|errors| {
        let parts: Vec<String> = errors
            .errors
            .iter()
            .map(|e| {
                let (line, column) = e.pos;
                if line > 1 {
                    format!("{} (line {line}, column {column} of the expression)", e.msg)
                } else {
                    format!("{} (column {column} of the expression)", e.msg)
                }
            })
            .collect();
        format!("invalid CEL expression `{source}`: {}", parts.join("; "))
    })?;

    let mut walker = Walker::default();
    walker.walk(program.expression());
    let mut uses = Uses::default();
    for name in walker.free {
        match name {
            "new" => uses.new = true,
            "old" => uses.old = true,
            "tx" => uses.tx = true,
            "op" | "table" => {}
            other if TYPE_NAMES.contains(&other) => {}
            other => {
                return Err(format!(
                    "unknown variable `{other}` in `{source}`; expressions can use `new`, `old`, `op`, `table` and `tx`"
                ));
            }
        }
    }

    let columns = walker.columns;
    let read = column_read(program.expression()).map(|(row, column)| (row, column.to_owned()));
    let eval = match read {
        Some((row, column)) => Eval::Column(Col::new(row, &column)),
        None => match fast::compile(program.expression()) {
            Some(fast) => Eval::Fast { fast, program },
            None => Eval::Cel(program),
        },
    };
    Ok(Expr {
        source: source.to_owned(),
        eval,
        uses,
        columns,
        at: None,
    })
}

impl Expr {
    /// What the expression always is, when it is a constant other than a
    /// bool (`3`, `'x'`, `[1]`): as a `when`, it can never hold or fail.
    pub fn non_bool_constant(&self) -> Option<&'static str> {
        let program = match &self.eval {
            Eval::Column(_) => return None,
            Eval::Fast { program, .. } | Eval::Cel(program) => program,
        };
        match &program.expression().expr {
            Ast::Literal(LiteralValue::Boolean(_)) => None,
            Ast::Literal(LiteralValue::String(_)) => Some("a string"),
            Ast::Literal(LiteralValue::Bytes(_)) => Some("bytes"),
            Ast::Literal(LiteralValue::Null) => Some("null"),
            Ast::Literal(_) => Some("a number"),
            Ast::List(_) => Some("a list"),
            Ast::Map(_) | Ast::Struct(_) => Some("a map"),
            _ => None,
        }
    }

    /// Every column read the engine serves itself, to assign slots.
    pub fn columns_mut(&mut self, f: &mut dyn FnMut(&mut Col)) {
        match &mut self.eval {
            Eval::Column(col) => f(col),
            Eval::Fast { fast, .. } => fast.columns_mut(f),
            Eval::Cel(_) => {}
        }
    }
}

/// `new.col` / `old.col`, the shape served without CEL.
fn column_read(expr: &IdedExpr) -> Option<(Row, &str)> {
    let Ast::Select(select) = &expr.expr else {
        return None;
    };
    if select.test {
        return None;
    }
    let Ast::Ident(name) = &select.operand.expr else {
        return None;
    };
    let row = match name.as_str() {
        "new" => Row::New,
        "old" => Row::Old,
        _ => return None,
    };
    Some((row, select.field.as_str()))
}

/// Walks a syntax tree for the identifiers not bound by a comprehension
/// (the variables of `all`, `exists`, `map`, `filter` and the accumulator),
/// and for the row columns read by name (`new.col`, `has(old.col)`,
/// `new['col']`).
#[derive(Default)]
struct Walker<'e> {
    bound: Vec<&'e str>,
    free: Vec<&'e str>,
    columns: Vec<(Row, String)>,
}

impl<'e> Walker<'e> {
    /// `expr` as the row variable `new` or `old`, if it is one.
    fn row(&self, expr: &'e IdedExpr) -> Option<Row> {
        let Ast::Ident(name) = &expr.expr else {
            return None;
        };
        if self.bound.contains(&name.as_str()) {
            return None;
        }
        match name.as_str() {
            "new" => Some(Row::New),
            "old" => Some(Row::Old),
            _ => None,
        }
    }

    fn column(&mut self, row: Row, name: &str) {
        if !self.columns.iter().any(|(r, c)| *r == row && c == name) {
            self.columns.push((row, name.to_owned()));
        }
    }

    fn walk(&mut self, expr: &'e IdedExpr) {
        match &expr.expr {
            Ast::Ident(name) => {
                if !self.bound.contains(&name.as_str()) {
                    self.free.push(name);
                }
            }
            Ast::Select(select) => {
                if let Some(row) = self.row(&select.operand) {
                    self.column(row, &select.field);
                }
                self.walk(&select.operand);
            }
            Ast::Call(call) => {
                if call.func_name == INDEX
                    && let [target, key] = call.args.as_slice()
                    && let (Some(row), Ast::Literal(LiteralValue::String(name))) =
                        (self.row(target), &key.expr)
                {
                    self.column(row, name.inner());
                }
                if let Some(target) = &call.target {
                    self.walk(target);
                }
                for arg in &call.args {
                    self.walk(arg);
                }
            }
            Ast::List(list) => {
                for element in &list.elements {
                    self.walk(element);
                }
            }
            Ast::Map(map) => {
                for entry in &map.entries {
                    self.entry(&entry.expr);
                }
            }
            Ast::Struct(st) => {
                for entry in &st.entries {
                    self.entry(&entry.expr);
                }
            }
            Ast::Comprehension(c) => {
                self.walk(&c.iter_range);
                self.walk(&c.accu_init);
                let depth = self.bound.len();
                self.bound.push(&c.iter_var);
                if let Some(second) = &c.iter_var2 {
                    self.bound.push(second);
                }
                self.bound.push(&c.accu_var);
                self.walk(&c.loop_cond);
                self.walk(&c.loop_step);
                self.walk(&c.result);
                self.bound.truncate(depth);
            }
            Ast::Literal(_) | Ast::Unspecified => {}
        }
    }

    fn entry(&mut self, entry: &'e EntryExpr) {
        match entry {
            EntryExpr::MapEntry(e) => {
                self.walk(&e.key);
                self.walk(&e.value);
            }
            EntryExpr::StructField(f) => self.walk(&f.value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        crate::set::cel_env()
    }

    /// Plain column reads skip CEL.
    #[test]
    fn column_reads_are_recognised() {
        let e = compile(&env(), "new.id").expect("compiles");
        assert!(matches!(e.eval, Eval::Column(ref c) if c.row == Row::New && c.name == "id"));
        assert_eq!(
            e.uses,
            Uses {
                new: true,
                ..Uses::default()
            }
        );
        let e = compile(&env(), "old.status").expect("compiles");
        assert!(matches!(e.eval, Eval::Column(ref c) if c.row == Row::Old));
        assert!(e.uses.old);
        let e = compile(&env(), "has(new.id)").expect("compiles");
        assert!(matches!(e.eval, Eval::Cel(_)));
    }

    /// Variables are found through macros, and macro variables are not
    /// mistaken for unknown names.
    #[test]
    fn variables_in_macros() {
        let e = compile(&env(), "new.tags.exists(t, t == old.tag) && tx.xid > 0").expect("ok");
        assert_eq!(
            e.uses,
            Uses {
                new: true,
                old: true,
                tx: true,
            }
        );
        let e = compile(&env(), "[1, 2].map(x, x * 2).size() > 0 && op == 'insert'").expect("ok");
        assert!(!e.uses.new && !e.uses.old);
        compile(&env(), "type(new.id) == int").expect("type names are fine");
    }

    /// Columns read by name are listed, whatever the syntax.
    #[test]
    fn columns_are_listed() {
        let e = compile(
            &env(),
            "has(new.a) && new['b'] == old.c && [1].exists(new, new > 0)",
        )
        .expect("ok");
        assert_eq!(
            e.columns,
            vec![
                (Row::New, "a".to_owned()),
                (Row::New, "b".to_owned()),
                (Row::Old, "c".to_owned())
            ]
        );
    }

    #[test]
    fn unknown_variables_are_errors() {
        assert_eq!(
            compile(&env(), "neww.id == 1").map(|_| ()),
            Err("unknown variable `neww` in `neww.id == 1`; expressions can use `new`, `old`, `op`, `table` and `tx`".into())
        );
    }

    #[test]
    fn syntax_errors_carry_cel_message() {
        assert_eq!(
            compile(&env(), "new.").map(|_| ()),
            Err("invalid CEL expression `new.`: Syntax error: no viable alternative at input '.' (column 5 of the expression)".into())
        );
    }
}

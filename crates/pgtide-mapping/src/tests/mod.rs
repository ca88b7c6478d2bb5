//! Tests of the whole crate through its public API: loading files and
//! running changes through them.

mod corpus;
mod eval;

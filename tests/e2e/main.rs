//! End-to-end tests: a real PostgreSQL, real logical replication, the real
//! `pgtide` binary over real sockets. Run them with `./scripts/test`.

mod api_errors;
mod auth;
mod cdc;
mod cli;
mod dev;
mod durability;
mod exactly_once;
mod faults;
mod harness;
mod http;
mod mappings;
mod registry;
mod security_api;
mod security_limits;
mod security_mappings;
mod security_sql;
mod sql_ws;
mod tls;
mod webhooks;
mod ws;

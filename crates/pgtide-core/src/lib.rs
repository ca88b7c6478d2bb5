//! pgtide's domain types, free of I/O.
//!
//! - [`topic`]: topic names and subscription patterns (`*`, `**`), the one
//!   vocabulary every transport, query and webhook filter shares.
//! - [`event`]: the event envelope as stored and delivered.
//! - [`reserved`]: the topics and event types only pgtide itself publishes.
//! - [`storable`]: what PostgreSQL can store of a JSON value (no NUL, numbers
//!   `numeric` can hold), with the JSON pointer of the first problem.

pub mod event;
pub mod reserved;
pub mod storable;
pub mod topic;

pub use event::{Event, EventSource, NewEvent, format_ts};
pub use topic::{Pattern, Topic, TopicError};

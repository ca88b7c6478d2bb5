//! pgtide's domain types, free of I/O.
//!
//! - [`topic`]: topic names and subscription patterns (`*`, `**`), the one
//!   vocabulary every transport, query and webhook filter shares.
//! - [`event`]: the event envelope as stored and delivered.

pub mod event;
pub mod topic;

pub use event::{Event, EventSource, NewEvent, format_ts};
pub use topic::{Pattern, Topic, TopicError};

//! Events this process has just committed, as the store returned them, kept
//! for the live delivery tailer: it takes the batch that follows the last
//! event it dispatched from here instead of reading it back with a query (a
//! round trip and a parse per event, on the path of every live delivery).
//! They are the stored rows (`RETURNING`), so they are exactly what a query
//! would have read. Anything not here (other nodes' events, `COPY` batches,
//! a batch whose writer has not put it here yet) is read from the store.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use pgtide_core::Event;

/// Batches kept at most; older ones are read from the store if still wanted.
const KEPT_BATCHES: usize = 256;

/// Recently committed batches by first `seq`, kept only while a tailer follows.
#[derive(Debug, Clone, Default)]
pub(crate) struct LiveBatches {
    following: Arc<AtomicBool>,
    batches: Arc<Mutex<BTreeMap<i64, Vec<Event>>>>,
}

impl LiveBatches {
    pub(crate) fn is_following(&self) -> bool {
        self.following.load(Ordering::Relaxed)
    }

    pub(crate) fn follow(&self) {
        self.following.store(true, Ordering::Relaxed);
    }

    /// Keeps a committed batch (consecutive seqs, ascending).
    pub(crate) fn keep(&self, events: Vec<Event>) {
        let Some(first) = events.first().map(|e| e.seq) else {
            return;
        };
        let mut batches = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
        batches.insert(first, events);
        while batches.len() > KEPT_BATCHES {
            batches.pop_first();
        }
    }

    /// The batch starting right after `last`, if kept; forgets older ones.
    pub(crate) fn take_after(&self, last: i64) -> Option<Vec<Event>> {
        let mut batches = self.batches.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(entry) = batches.first_entry() {
            if *entry.key() > last {
                break;
            }
            entry.remove();
        }
        let entry = batches.first_entry()?;
        (*entry.key() == last + 1).then(|| entry.remove())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgtide_core::{EventSource, NewEvent};
    use serde_json::json;

    fn batch(seqs: std::ops::RangeInclusive<i64>) -> Vec<Event> {
        seqs.map(|s| NewEvent::new("a", "a", EventSource::Http, json!({})).with_seq(s))
            .collect()
    }

    fn seqs(events: Option<Vec<Event>>) -> Option<Vec<i64>> {
        events.map(|b| b.iter().map(|e| e.seq).collect())
    }

    #[test]
    fn only_the_batch_right_after_the_last_dispatched_is_taken() {
        let live = LiveBatches::default();
        live.keep(batch(4..=5));
        live.keep(batch(1..=2));
        live.keep(batch(6..=6));
        // 3 was written elsewhere: the tailer must read it from the store.
        assert_eq!(seqs(live.take_after(2)), None);
        assert_eq!(seqs(live.take_after(3)), Some(vec![4, 5]));
        assert_eq!(seqs(live.take_after(5)), Some(vec![6]));
        assert_eq!(seqs(live.take_after(6)), None);
        // Batches the tailer already read from the store are forgotten.
        live.keep(batch(7..=8));
        live.keep(batch(9..=9));
        assert_eq!(seqs(live.take_after(8)), Some(vec![9]));
        assert!(live.batches.lock().unwrap().is_empty());
    }

    #[test]
    fn keeps_a_bounded_number_of_batches() {
        let live = LiveBatches::default();
        for s in 1..=(KEPT_BATCHES as i64 + 10) {
            live.keep(batch(s..=s));
        }
        assert_eq!(live.batches.lock().unwrap().len(), KEPT_BATCHES);
        assert_eq!(seqs(live.take_after(0)), None, "the oldest were let go");
        assert_eq!(seqs(live.take_after(10)), Some(vec![11]));
    }
}

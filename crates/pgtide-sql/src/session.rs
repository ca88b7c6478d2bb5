//! A socket's SQL, run beside the socket rather than inside its read loop:
//! requests queue to a task of their own, so the socket keeps being read
//! while a statement runs, and when it closes the running statement is
//! cancelled on the server and every open transaction rolled back at once.

use std::sync::Arc;

use pgtide_auth::Claims;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::access::SqlAccess;
use crate::transactions::{Operation, Outcome, SqlFailure, Transactions};

/// Requests one socket may have queued behind the running one.
const QUEUE: usize = 64;

/// A finished request, for the transport to format and send.
pub struct Reply {
    /// The request's `id`, echoed.
    pub id: Value,
    pub outcome: Outcome,
}

struct Job {
    id: Value,
    operation: Operation,
    data: Option<Value>,
}

/// One socket's SQL worker. Dropping it (the socket closed) cancels the
/// running statement and rolls back every open transaction.
pub struct SqlSession {
    jobs: mpsc::Sender<Job>,
    closed: CancellationToken,
}

impl SqlSession {
    /// Starts the worker; each request's reply is handed to `reply`, in order.
    pub fn spawn(
        access: Arc<SqlAccess>,
        claims: Claims,
        reply: impl Fn(Reply) + Send + 'static,
    ) -> SqlSession {
        let (jobs, mut queue) = mpsc::channel::<Job>(QUEUE);
        let closed = CancellationToken::new();
        let cancel = closed.clone();
        tokio::spawn(async move {
            let mut transactions = Transactions::new(access, claims);
            loop {
                let job = tokio::select! {
                    biased;
                    () = cancel.cancelled() => break,
                    job = queue.recv() => match job {
                        Some(job) => job,
                        None => break,
                    },
                };
                let outcome = transactions.handle(job.operation, job.data, &cancel).await;
                reply(Reply {
                    id: job.id,
                    outcome,
                });
            }
            transactions.close().await;
        });
        SqlSession { jobs, closed }
    }

    /// Queues a request; when too many are queued, its reply is returned
    /// now, as `busy`.
    pub fn submit(
        &self,
        id: Value,
        operation: Operation,
        data: Option<Value>,
    ) -> Result<(), Box<Reply>> {
        self.jobs
            .try_send(Job {
                id,
                operation,
                data,
            })
            .map_err(|e| {
                let job = match e {
                    mpsc::error::TrySendError::Full(job)
                    | mpsc::error::TrySendError::Closed(job) => job,
                };
                Box::new(Reply {
                    id: job.id,
                    outcome: crate::transactions::refused(
                        operation,
                        SqlFailure::new(
                            "busy",
                            format!("at most {QUEUE} SQL requests may wait on one connection"),
                        ),
                    ),
                })
            })
    }
}

impl Drop for SqlSession {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

//! A client session, whatever its transport (`/ws`, Socket.IO): its
//! subscriptions, its bounded outbox, and the subscribe / unsubscribe /
//! publish operations with their checks. Transports only parse frames and
//! format replies.

use std::collections::HashMap;
use std::sync::Arc;

use pgtide_core::{EventSource, NewEvent, Pattern, Topic};
use pgtide_store::EventQuery;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::auth::Caller;
use crate::hub::{Delivery, Filter, Outbox, SubscriptionHandle};

/// A refused request: the contract's error `code` and a message.
pub type Refusal = (&'static str, String);

/// The fields of subscribe / unsubscribe / publish, on every transport.
#[derive(Debug, Default, Deserialize)]
pub struct Request {
    pub topic: Option<String>,
    pub from_seq: Option<i64>,
    pub filter: Option<Value>,
    pub event_type: Option<String>,
    pub data: Option<Value>,
    pub attributes: Option<Map<String, Value>>,
}

/// A subscription whose stored events still have to be sent (`from_seq`).
pub struct PendingReplay {
    key: String,
    from: i64,
}

pub struct Session {
    pub state: AppState,
    pub caller: Caller,
    pub outbox: Arc<Outbox>,
    source: EventSource,
    subscriptions: HashMap<String, SubscriptionHandle>,
}

impl Session {
    pub fn new(state: AppState, caller: Caller, source: EventSource) -> Session {
        Session {
            state,
            caller,
            outbox: Arc::new(Outbox::default()),
            source,
            subscriptions: HashMap::new(),
        }
    }

    fn pattern(request: &Request) -> Result<Pattern, Refusal> {
        let topic = request
            .topic
            .as_deref()
            .ok_or(("invalid_message", "missing \"topic\"".to_owned()))?;
        Pattern::parse(topic).map_err(|e| ("invalid_topic", e.to_string()))
    }

    /// Registers a subscription; the reply data, and with `from_seq` a replay
    /// to run (after the reply is sent) with [`Session::replay`].
    pub fn subscribe(
        &mut self,
        request: &Request,
    ) -> Result<(Value, Option<PendingReplay>), Refusal> {
        let pattern = Self::pattern(request)?;
        if !self.caller.may_subscribe(&pattern) {
            return Err((
                "forbidden",
                format!("this token may not subscribe to {pattern}"),
            ));
        }
        let filter: Filter = match &request.filter {
            None | Some(Value::Null) => Filter::default(),
            Some(v) => {
                serde_json::from_value(v.clone()).map_err(|e| ("invalid_filter", e.to_string()))?
            }
        };
        if let Some(from) = request.from_seq
            && from < 0
        {
            return Err((
                "invalid_message",
                format!("from_seq {from} must not be negative"),
            ));
        }
        let key = pattern.as_str().to_owned();
        if let Some(old) = self.subscriptions.remove(&key) {
            self.state.hub.unsubscribe(&old);
        }
        let handle = self.state.hub.subscribe(
            pattern,
            filter,
            self.caller.visibility(),
            self.outbox.clone(),
            request.from_seq.is_some(),
        );
        self.subscriptions.insert(key.clone(), handle);
        let data = json!({"action": "subscribed", "topic": key});
        Ok((
            data,
            request.from_seq.map(|from| PendingReplay { key, from }),
        ))
    }

    /// Sends the stored events after `from_seq` that the subscription would
    /// see, waiting for room rather than dropping, then lets the live events
    /// held meanwhile follow: no gap, no duplicate.
    pub async fn replay(&self, pending: PendingReplay) {
        let Some(handle) = self.subscriptions.get(&pending.key) else {
            return;
        };
        let sub = &handle.subscription;
        let mut last = pending.from;
        loop {
            let query = EventQuery {
                topics: vec![sub.pattern.clone()],
                after_seq: Some(last),
                limit: 1000,
                org_scope: self.caller.org_scope(),
                ..EventQuery::default()
            };
            let events = match self.state.store.query(&query).await {
                Ok(events) => events,
                Err(e) => {
                    tracing::warn!(error = %e, "replay query failed");
                    break;
                }
            };
            let n = events.len();
            for event in events {
                last = event.seq;
                if sub.visibility.may_see(event.org_id) && sub.filter.matches(&event) {
                    self.outbox.wait_for_room().await;
                    self.outbox.push_event(Delivery::new(event));
                }
            }
            if n < 1000 {
                break;
            }
        }
        self.state.hub.finish_replay(handle, last);
    }

    pub fn unsubscribe(&mut self, request: &Request) -> Result<Value, Refusal> {
        let pattern = Self::pattern(request)?;
        match self.subscriptions.remove(pattern.as_str()) {
            Some(handle) => {
                self.state.hub.unsubscribe(&handle);
                Ok(json!({"action": "unsubscribed", "topic": pattern.as_str()}))
            }
            None => Err(("not_subscribed", format!("not subscribed to {pattern}"))),
        }
    }

    /// Publishes as the caller (its org, its publish permissions), validated
    /// against the topic's schema.
    pub async fn publish(&self, request: Request) -> Result<Value, Refusal> {
        let topic = request
            .topic
            .as_deref()
            .ok_or(("invalid_message", "missing \"topic\"".to_owned()))?;
        let topic = Topic::parse(topic).map_err(|e| ("invalid_topic", e.to_string()))?;
        let event_type = request
            .event_type
            .unwrap_or_else(|| topic.as_str().to_owned());
        Topic::parse(&event_type)
            .map_err(|e| ("invalid_message", format!("invalid event_type: {e}")))?;
        let data = request.data.unwrap_or(Value::Null);
        let attributes = request.attributes.map(Value::Object);
        let mut draft = crate::publish::Draft {
            json: vec![("/data", &data)],
            ..Default::default()
        };
        if let Some(attributes) = &attributes {
            draft.json.push(("/attributes", attributes));
        }
        crate::publish::check(
            &self.state,
            &self.caller,
            &topic,
            &event_type,
            &data,
            &draft,
        )?;
        let mut event = NewEvent::new(topic.into_string(), event_type, self.source, data);
        event.org_id = self.caller.org_id();
        if let Some(Value::Object(attributes)) = attributes {
            event.attributes = attributes
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => (k, s),
                    other => (k, other.to_string()),
                })
                .collect();
        }
        let stored = self
            .state
            .store
            .publish(vec![event])
            .await
            .map_err(|e| match e {
                pgtide_store::StoreError::Invalid(m) => ("invalid_message", m),
                e => {
                    tracing::error!(error = %e, "publish failed");
                    ("internal", "the event could not be stored".to_owned())
                }
            })?;
        let e = stored
            .first()
            .ok_or(("internal", "nothing stored".to_owned()))?;
        Ok(
            json!({"event_id": e.id, "event_type": e.event_type, "topic": e.topic, "seq": e.seq, "timestamp": e.ts}),
        )
    }

    /// Unregisters everything and closes the outbox.
    pub fn close(&mut self) {
        for handle in self.subscriptions.values() {
            self.state.hub.unsubscribe(handle);
        }
        self.subscriptions.clear();
        self.outbox.close();
    }
}

//! Test doubles for the core: a message builder, an engine and a poison sink that
//! record what they are given and answer as a test scripts them.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::Timestamp;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};

use crate::bulk::{BulkSink, ItemAttempt, ItemOutcome, RequestFailed};
use crate::dead_letter::{DeadLetterReason, PoisonCause, PoisonSink};
use crate::decode::Write;
use crate::retry::Interrupted;

/// Builds the messages unit tests consume, on topic `t`.
pub struct MessageBuilder {
    key: Vec<u8>,
    payload: Option<Vec<u8>>,
    partition: i32,
    offset: i64,
    timestamp: Timestamp,
    headers: Option<OwnedHeaders>,
}

impl MessageBuilder {
    pub fn new(key: &[u8], payload: Option<Vec<u8>>) -> Self {
        Self {
            key: key.to_vec(),
            payload,
            partition: 0,
            offset: 0,
            timestamp: Timestamp::NotAvailable,
            headers: None,
        }
    }

    /// A delete: decodes without a schema, the simplest valid message.
    pub fn tombstone(key: &str) -> Self {
        Self::new(key.as_bytes(), None)
    }

    /// Bytes that are no Avro event: a decode dead letter.
    pub fn garbage(key: &str) -> Self {
        Self::new(key.as_bytes(), Some(b"not avro".to_vec()))
    }

    pub fn at(mut self, partition: i32, offset: i64) -> Self {
        self.partition = partition;
        self.offset = offset;
        self
    }

    pub fn created_at_millis(mut self, millis: i64) -> Self {
        self.timestamp = Timestamp::CreateTime(millis);
        self
    }

    pub fn header(mut self, key: &str, value: &str) -> Self {
        let headers = self.headers.take().unwrap_or_default();
        self.headers = Some(headers.insert(Header {
            key,
            value: Some(value),
        }));
        self
    }

    pub fn build(self) -> OwnedMessage {
        OwnedMessage::new(
            self.payload,
            Some(self.key),
            "t".into(),
            self.timestamp,
            self.partition,
            self.offset,
            self.headers,
        )
    }
}

/// One answer of the fake engine to one bulk request.
pub enum Answer {
    /// The request fails as a whole.
    Fail(&'static str),
    /// Each item gets the attempt result the function gives it.
    Items(fn(&Write) -> ItemAttempt),
    /// Everything is accepted, after a while.
    Slowly(Duration),
}

/// An engine that answers bulk requests as scripted, then accepts everything, and
/// records each request's (key, version) pairs.
#[derive(Default)]
pub struct FakeEngine {
    answers: Mutex<VecDeque<Answer>>,
    requests: Mutex<Vec<Vec<(String, i64)>>>,
    /// The requests answered with success, in the order they were answered.
    answered: Mutex<Vec<Vec<(String, i64)>>>,
}

impl FakeEngine {
    pub fn answering(answers: impl IntoIterator<Item = Answer>) -> Self {
        Self {
            answers: Mutex::new(answers.into_iter().collect()),
            requests: Mutex::default(),
            answered: Mutex::default(),
        }
    }

    /// Every request, as (key, version) pairs.
    pub fn requests(&self) -> Vec<Vec<(String, i64)>> {
        self.requests.lock().unwrap().clone()
    }

    pub fn answered(&self) -> Vec<Vec<(String, i64)>> {
        self.answered.lock().unwrap().clone()
    }
}

pub fn accept(write: &Write) -> ItemAttempt {
    ItemAttempt::Done(if write.document.deleted {
        ItemOutcome::Deleted
    } else {
        ItemOutcome::Created
    })
}

impl BulkSink for FakeEngine {
    async fn send(&self, writes: &[&Write]) -> Result<Vec<ItemAttempt>, RequestFailed> {
        let pairs: Vec<_> = writes
            .iter()
            .map(|w| (w.key().to_owned(), w.version()))
            .collect();
        self.requests.lock().unwrap().push(pairs.clone());
        let answer = self.answers.lock().unwrap().pop_front();
        let attempts = match answer {
            Some(Answer::Fail(error)) => return Err(RequestFailed(error.to_owned())),
            Some(Answer::Items(judge)) => writes.iter().map(|w| judge(w)).collect(),
            Some(Answer::Slowly(delay)) => {
                tokio::time::sleep(delay).await;
                writes.iter().map(|w| accept(w)).collect()
            }
            None => writes.iter().map(|w| accept(w)).collect(),
        };
        self.answered.lock().unwrap().push(pairs);
        Ok(attempts)
    }
}

/// Records the poison it takes, in order: (key, offset, reason).
#[derive(Default)]
pub struct RecordedPoison {
    taken: Mutex<Vec<(String, i64, DeadLetterReason)>>,
}

impl RecordedPoison {
    pub fn taken(&self) -> Vec<(String, i64, DeadLetterReason)> {
        self.taken.lock().unwrap().clone()
    }
}

impl PoisonSink for RecordedPoison {
    async fn take(&self, message: &OwnedMessage, cause: &PoisonCause) -> Result<(), Interrupted> {
        use rdkafka::Message;
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        self.taken
            .lock()
            .unwrap()
            .push((key, message.offset(), cause.reason));
        Ok(())
    }
}

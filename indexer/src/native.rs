//! What librdkafka reports and the Rust client does not wrap, called through the C
//! bindings the client re-exports: a topic's id (Kafka 4 names each incarnation of
//! a topic with a UUID, so a topic deleted and recreated under the same name has a
//! new one) and a consumer's member id in its group.

use std::ffi::{CStr, CString};
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::bindings as rd;
use rdkafka::client::Client;
use rdkafka::consumer::ConsumerContext;

/// How long one `DescribeTopics` request may take.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The id of `topic` (base64, as Kafka's tools print it); `None` when the broker
/// reports none (brokers before Kafka 2.8).
///
/// Blocks until the broker answers: call it off the async workers.
pub fn topic_id<C: ConsumerContext>(
    client: &Client<C>,
    topic: &str,
) -> anyhow::Result<Option<String>> {
    let name = CString::new(topic).context("a topic name holds a NUL byte")?;
    let rk = client.native_ptr();
    // SAFETY: every object created here is destroyed before returning, on every
    // path (the guards below); pointers read from the result event are only used
    // while the event is alive, and strings are copied out before it is destroyed.
    unsafe {
        let mut names = [name.as_ptr()];
        let topics = Owned::new(
            rd::rd_kafka_TopicCollection_of_topic_names(names.as_mut_ptr(), names.len()),
            rd::rd_kafka_TopicCollection_destroy,
        );
        let options = Owned::new(
            rd::rd_kafka_AdminOptions_new(
                rk,
                rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
            ),
            rd::rd_kafka_AdminOptions_destroy,
        );
        let queue = Owned::new(rd::rd_kafka_queue_new(rk), rd::rd_kafka_queue_destroy);
        rd::rd_kafka_DescribeTopics(rk, topics.0, options.0, queue.0);
        let event = Owned::new(
            rd::rd_kafka_queue_poll(queue.0, DESCRIBE_TIMEOUT.as_millis() as i32),
            rd::rd_kafka_event_destroy,
        );
        if event.0.is_null() {
            bail!("no answer to DescribeTopics for {topic} within {DESCRIBE_TIMEOUT:?}");
        }
        if rd::rd_kafka_event_type(event.0) != rd::RD_KAFKA_EVENT_DESCRIBETOPICS_RESULT {
            bail!("unexpected answer to DescribeTopics for {topic}");
        }
        if rd::rd_kafka_event_error(event.0) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            bail!(
                "describing topic {topic}: {}",
                text(rd::rd_kafka_event_error_string(event.0))
            );
        }
        let result = rd::rd_kafka_event_DescribeTopics_result(event.0);
        let mut count = 0;
        let descriptions = rd::rd_kafka_DescribeTopics_result_topics(result, &mut count);
        if descriptions.is_null() || count == 0 {
            bail!("DescribeTopics answered nothing for {topic}");
        }
        let description = *descriptions;
        let error = rd::rd_kafka_TopicDescription_error(description);
        if !error.is_null()
            && rd::rd_kafka_error_code(error) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            bail!(
                "describing topic {topic}: {}",
                text(rd::rd_kafka_error_string(error))
            );
        }
        let id = rd::rd_kafka_TopicDescription_topic_id(description);
        if id.is_null()
            || (rd::rd_kafka_Uuid_most_significant_bits(id) == 0
                && rd::rd_kafka_Uuid_least_significant_bits(id) == 0)
        {
            return Ok(None);
        }
        Ok(Some(text(rd::rd_kafka_Uuid_base64str(id))))
    }
}

/// A librdkafka object destroyed when dropped.
struct Owned<T>(*mut T, unsafe extern "C" fn(*mut T));

impl<T> Owned<T> {
    fn new(pointer: *mut T, destroy: unsafe extern "C" fn(*mut T)) -> Self {
        Self(pointer, destroy)
    }
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from librdkafka's matching constructor and
            // is destroyed once, here.
            unsafe { (self.1)(self.0) }
        }
    }
}

/// Copies a C string librdkafka owns; empty when there is none.
///
/// SAFETY: `pointer` is null or a NUL-terminated string alive for this call.
unsafe fn text(pointer: *const std::ffi::c_char) -> String {
    if pointer.is_null() {
        return String::new();
    }
    // SAFETY: see above.
    unsafe { CStr::from_ptr(pointer) }
        .to_string_lossy()
        .into_owned()
}

/// The member id the group coordinator gave this consumer; `None` before it joined.
pub fn member_id<C: ConsumerContext>(client: &Client<C>) -> Option<String> {
    // SAFETY: librdkafka returns a copy the caller owns (or null), freed here with
    // its own allocator after it is copied out.
    unsafe {
        let id = rd::rd_kafka_memberid(client.native_ptr());
        if id.is_null() {
            return None;
        }
        let copied = text(id);
        rd::rd_kafka_mem_free(client.native_ptr(), id.cast());
        (!copied.is_empty()).then_some(copied)
    }
}

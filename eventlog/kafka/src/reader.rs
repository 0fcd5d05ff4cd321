//! `read`: one assigned consumer per (topic, partition), kept between calls
//! so a caller reading on from where it stopped (the control plane, every
//! 100 ms) finds the records already prefetched.

use crate::config::KafkaConfig;
use crate::context::LogContext;
use crate::error::KafkaLogError;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::time::{Duration, Instant};
use tollgate_eventlog::StoredRecord;

pub(crate) struct Cursor {
    consumer: BaseConsumer<LogContext>,
    /// Logical name, as callers use it.
    topic: String,
    physical: String,
    partition: u32,
    /// The offset the consumer will return next, when positioned.
    next: Option<u64>,
    /// The consumer reported the end of the partition and nothing since.
    at_end: bool,
}

pub(crate) fn to_record(topic: &str, m: &impl Message) -> StoredRecord {
    StoredRecord {
        topic: topic.to_owned(),
        partition: u32::try_from(m.partition()).unwrap_or_default(),
        offset: u64::try_from(m.offset()).unwrap_or_default(),
        key: m
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default(),
        payload: m
            .payload()
            .map(bytes::Bytes::copy_from_slice)
            .unwrap_or_default(),
        timestamp_ms: m.timestamp().to_millis().unwrap_or_default(),
        usage: None,
    }
}

impl Cursor {
    pub(crate) fn new(
        config: &KafkaConfig,
        topic: &str,
        partition: u32,
    ) -> Result<Cursor, KafkaLogError> {
        let consumer: BaseConsumer<LogContext> =
            config.reader_client().create_with_context(LogContext)?;
        Ok(Cursor {
            consumer,
            topic: topic.to_owned(),
            physical: config.physical_topic(topic).to_owned(),
            partition,
            next: None,
            at_end: false,
        })
    }

    /// Up to `max` records from `from` on. `known_end` is the offset after
    /// the last record this process had acknowledged on the partition: below
    /// it records certainly exist, so the read waits for them (bounded by
    /// `timeout`); otherwise it returns as soon as the partition's end is
    /// known.
    pub(crate) fn read(
        &mut self,
        from: u64,
        max: usize,
        known_end: Option<u64>,
        timeout: Duration,
        meta: &BaseConsumer<LogContext>,
    ) -> Result<Vec<StoredRecord>, KafkaLogError> {
        let partition =
            i32::try_from(self.partition).map_err(|_| KafkaLogError::UnknownPartition {
                topic: self.topic.clone(),
                partition: self.partition,
            })?;
        if self.next != Some(from) {
            let start = i64::try_from(from).map_err(|_| KafkaLogError::Offset(from))?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&self.physical, partition, Offset::Offset(start))?;
            self.consumer.assign(&tpl)?;
            self.next = Some(from);
            self.at_end = false;
        }
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut must_wait = known_end.is_some_and(|end| from < end);
        let mut checked_end = false;
        while out.len() < max {
            let wait = if out.is_empty() && must_wait {
                deadline
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(100))
            } else {
                Duration::ZERO
            };
            match self.consumer.poll(wait) {
                Some(Ok(m)) => {
                    let record = to_record(&self.topic, &m);
                    // Older fetches of a previous position are skipped.
                    if record.offset < from || record.partition != self.partition {
                        continue;
                    }
                    self.next = Some(record.offset + 1);
                    self.at_end = false;
                    out.push(record);
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    self.at_end = true;
                    if !must_wait {
                        break;
                    }
                }
                Some(Err(e)) => return Err(self.classify(e)),
                None => {
                    if !out.is_empty() {
                        break;
                    }
                    if !must_wait {
                        if self.at_end {
                            break;
                        }
                        if checked_end {
                            break;
                        }
                        // Not known yet whether anything lies beyond `from`.
                        checked_end = true;
                        // Asked on the metadata client's connection: this
                        // consumer's own may be held by a long-polling fetch.
                        let (_, high) = meta
                            .fetch_watermarks(&self.physical, partition, timeout)
                            .map_err(|e| self.classify(e))?;
                        if u64::try_from(high).unwrap_or_default() <= from {
                            break;
                        }
                        must_wait = true;
                    } else if Instant::now() >= deadline {
                        return Err(KafkaLogError::ReadTimeout {
                            topic: self.topic.clone(),
                            partition: self.partition,
                            from,
                            timeout_ms: timeout.as_millis() as u64,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    fn classify(&self, e: KafkaError) -> KafkaLogError {
        match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::UnknownTopicOrPartition)
            | Some(RDKafkaErrorCode::UnknownPartition) => KafkaLogError::UnknownPartition {
                topic: self.topic.clone(),
                partition: self.partition,
            },
            Some(RDKafkaErrorCode::UnknownTopic) => KafkaLogError::UnknownTopic(self.topic.clone()),
            _ => KafkaLogError::Kafka(e),
        }
    }
}

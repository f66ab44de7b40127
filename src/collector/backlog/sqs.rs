//! SQS queues, and the SNS topics that feed them, through the official AWS SDK for Rust (credentials by
//! the SDK's usual chain: environment, profile, web identity in EKS, instance metadata).
//!
//! Each poll: `ListQueues` (with `queue_name_prefix`, paged), one `GetQueueAttributes` per queue (SQS has
//! no batch form; 16 in flight), and with `sns` on, `ListTopics` and each topic's
//! `ListSubscriptionsByTopic` (SNS changes rarely: read every tenth poll).
//!
//! - **Backlog**: `ApproximateNumberOfMessages + ApproximateNumberOfMessagesNotVisible` (visible, and
//!   received but not yet deleted); delayed messages are reported apart, not counted (they cannot be
//!   consumed yet).
//! - **Age**: not exported. SQS's own API does not tell it; CloudWatch's `ApproximateAgeOfOldestMessage`
//!   does, at one-minute resolution and a price per call, and the only SQS implementation that installs
//!   here (moto) produces no CloudWatch metrics for SQS, so it could not be tested.
//! - **Dead-letter queues**: a queue named in another's `RedrivePolicy` is that queue's dead-letter
//!   queue: `eventscope_sqs_queue_dead_letter_messages{destination=<source queue>,dead_letter_queue=...}`.
//! - **Status**: SQS has no consumer registry and no consumed count. Messages in flight mean someone
//!   receives (one consumer at least); progress is the sum of the backlog's decreases. So a backlog with
//!   nothing in flight that has not shrunk for a window is STOP, one with messages in flight that has not
//!   shrunk is STALL.

use std::collections::{HashMap, HashSet};

use aws_sdk_sqs::types::QueueAttributeName;
use futures::StreamExt;

use super::{Broker, BrokerSnapshot, Row, Sample, Source, SourceError, Trend};
use crate::config::{CollectorConfig, SqsConfig};
use crate::telemetry::contract as m;

/// Queues read per poll at most, and `GetQueueAttributes` calls in flight.
const MAX_QUEUES: usize = 100_000;
const CONCURRENCY: usize = 16;
/// SNS subscriptions are read every this many polls.
const SNS_EVERY: u64 = 10;

/// One `[[sqs]]` entry.
pub struct Sqs {
    cfg: SqsConfig,
    settings: CollectorConfig,
    clients: Option<(aws_sdk_sqs::Client, aws_sdk_sns::Client)>,
    trend: Trend,
    /// Per queue: its backlog at the last poll and the sum of its decreases.
    progress: HashMap<String, (u64, i64)>,
    /// Queue ARN → the SNS topics (names) that feed it, and the poll they were read at.
    topics: HashMap<String, Vec<String>>,
    polls: u64,
}

struct Attributes {
    name: String,
    arn: String,
    visible: u64,
    in_flight: u64,
    delayed: u64,
    dead_letter_arn: Option<String>,
}

fn sdk_error<E: std::fmt::Debug + std::fmt::Display, R: std::fmt::Debug>(what: &str, e: aws_sdk_sqs::error::SdkError<E, R>) -> SourceError {
    use aws_sdk_sqs::error::SdkError;
    match &e {
        SdkError::TimeoutError(_) => SourceError::Timeout(std::time::Duration::ZERO),
        SdkError::DispatchFailure(d) => SourceError::Connect(format!("{what}: {d:?}")),
        SdkError::ResponseError(_) => SourceError::Protocol(format!("{what}: {e}")),
        SdkError::ServiceError(s) => {
            let text = format!("{what}: {}", s.err());
            let lower = text.to_ascii_lowercase();
            if lower.contains("accessdenied")
                || lower.contains("not authorized")
                || lower.contains("security token")
                || lower.contains("signature")
            {
                SourceError::Authorization(text)
            } else {
                SourceError::Broker(text)
            }
        }
        _ => SourceError::Broker(format!("{what}: {e}")),
    }
}

/// The last segment of an SQS queue URL or an ARN: the queue's (or topic's) name.
fn last_segment(s: &str) -> &str {
    s.rsplit(['/', ':']).next().unwrap_or(s)
}

impl Sqs {
    pub fn new(cfg: SqsConfig, settings: &CollectorConfig) -> Sqs {
        Sqs {
            trend: Trend::new(settings.status_window, settings.allowed_lag),
            settings: settings.clone(),
            cfg,
            clients: None,
            progress: HashMap::new(),
            topics: HashMap::new(),
            polls: 0,
        }
    }

    async fn clients(&mut self) -> (aws_sdk_sqs::Client, aws_sdk_sns::Client) {
        if let Some(c) = &self.clients {
            return c.clone();
        }
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(self.settings.request_timeout)
            .operation_timeout(self.settings.request_timeout)
            .build();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .timeout_config(timeouts)
            // A poll is repeated on the next interval: one retry at most, so that a poll stays short.
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(2));
        if !self.cfg.region.is_empty() {
            loader = loader.region(aws_config::Region::new(self.cfg.region.clone()));
        }
        if !self.cfg.endpoint_url.is_empty() {
            loader = loader.endpoint_url(self.cfg.endpoint_url.clone());
        }
        let shared = loader.load().await;
        let c = (aws_sdk_sqs::Client::new(&shared), aws_sdk_sns::Client::new(&shared));
        self.clients = Some(c.clone());
        c
    }

    async fn queue_urls(&self, sqs: &aws_sdk_sqs::Client) -> Result<Vec<String>, SourceError> {
        let mut urls = Vec::new();
        let mut token = None;
        loop {
            let mut req = sqs.list_queues().max_results(1000);
            if !self.cfg.queue_name_prefix.is_empty() {
                req = req.queue_name_prefix(&self.cfg.queue_name_prefix);
            }
            if let Some(t) = token.take() {
                req = req.next_token(t);
            }
            let out = req.send().await.map_err(|e| sdk_error("ListQueues", e))?;
            urls.extend(out.queue_urls.unwrap_or_default());
            match out.next_token {
                Some(t) if !t.is_empty() && urls.len() < MAX_QUEUES => token = Some(t),
                _ => break,
            }
        }
        Ok(urls)
    }

    async fn attributes(sqs: &aws_sdk_sqs::Client, url: String) -> Result<Attributes, SourceError> {
        let out = sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .attribute_names(QueueAttributeName::QueueArn)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(|e| sdk_error("GetQueueAttributes", e))?;
        let attrs = out.attributes.unwrap_or_default();
        let num = |k: QueueAttributeName| attrs.get(&k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let dead_letter_arn = attrs.get(&QueueAttributeName::RedrivePolicy).and_then(|p| {
            serde_json::from_str::<serde_json::Value>(p)
                .ok()?
                .get("deadLetterTargetArn")?
                .as_str()
                .map(str::to_string)
        });
        Ok(Attributes {
            name: last_segment(&url).to_string(),
            arn: attrs.get(&QueueAttributeName::QueueArn).cloned().unwrap_or_default(),
            visible: num(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: num(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: num(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
            dead_letter_arn,
        })
    }

    /// Queue ARN → the SNS topics that deliver to it.
    async fn subscriptions(sns: &aws_sdk_sns::Client) -> Result<HashMap<String, Vec<String>>, SourceError> {
        let mut topics = Vec::new();
        let mut token = None;
        loop {
            let mut req = sns.list_topics();
            if let Some(t) = token.take() {
                req = req.next_token(t);
            }
            let out = req.send().await.map_err(|e| sdk_error("ListTopics", e))?;
            topics.extend(out.topics.unwrap_or_default().into_iter().filter_map(|t| t.topic_arn));
            match out.next_token {
                Some(t) if !t.is_empty() && topics.len() < MAX_QUEUES => token = Some(t),
                _ => break,
            }
        }
        let mut by_queue: HashMap<String, Vec<String>> = HashMap::new();
        for topic in topics {
            let mut token = None;
            loop {
                let mut req = sns.list_subscriptions_by_topic().topic_arn(&topic);
                if let Some(t) = token.take() {
                    req = req.next_token(t);
                }
                let out = req.send().await.map_err(|e| sdk_error("ListSubscriptionsByTopic", e))?;
                for s in out.subscriptions.unwrap_or_default() {
                    if s.protocol.as_deref() == Some("sqs") {
                        if let Some(endpoint) = s.endpoint {
                            by_queue.entry(endpoint).or_default().push(last_segment(&topic).to_string());
                        }
                    }
                }
                match out.next_token {
                    Some(t) if !t.is_empty() => token = Some(t),
                    _ => break,
                }
            }
        }
        for v in by_queue.values_mut() {
            v.sort();
            v.dedup();
        }
        Ok(by_queue)
    }
}

impl Source for Sqs {
    async fn poll(&mut self, now_ms: i64) -> Result<BrokerSnapshot, SourceError> {
        let (sqs, sns) = self.clients().await;
        let urls = self.queue_urls(&sqs).await?;
        let urls: Vec<String> = urls.into_iter().take(MAX_QUEUES).collect();
        let sqs_ref = &sqs;
        let results: Vec<Result<Attributes, SourceError>> = futures::stream::iter(urls)
            .map(|url| Self::attributes(sqs_ref, url))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut queues = Vec::with_capacity(results.len());
        for r in results {
            match r {
                Ok(a) => queues.push(a),
                // Deleted between the list and the read: gone from this poll, not a failure.
                Err(SourceError::Broker(why)) if why.contains("NonExistentQueue") || why.contains("QueueDoesNotExist") => {}
                Err(e) => return Err(e),
            }
        }
        if self.cfg.sns() && self.polls.is_multiple_of(SNS_EVERY) {
            self.topics = Self::subscriptions(&sns).await?;
        }
        self.polls += 1;
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        let by_arn: HashMap<&str, &Attributes> = queues.iter().map(|q| (q.arn.as_str(), q)).collect();
        let cluster = self.cfg.name.clone();
        let mut rows = Vec::new();
        let mut samples = Vec::new();
        let mut seen = HashSet::new();
        for q in &queues {
            let labels = || vec![(m::L_CLUSTER, cluster.clone()), (m::L_DESTINATION, q.name.clone())];
            for (family, v) in [
                (&m::SQS_VISIBLE, q.visible),
                (&m::SQS_IN_FLIGHT, q.in_flight),
                (&m::SQS_DELAYED, q.delayed),
            ] {
                samples.push(Sample {
                    family,
                    labels: labels(),
                    value: v as f64,
                });
            }
            if let Some(dlq) = q.dead_letter_arn.as_deref().and_then(|arn| by_arn.get(arn)) {
                let mut l = labels();
                l.push((m::L_DEAD_LETTER_QUEUE, dlq.name.clone()));
                samples.push(Sample {
                    family: &m::SQS_DEAD_LETTER,
                    labels: l,
                    value: dlq.visible as f64,
                });
            }
            for topic in self.topics.get(&q.arn).into_iter().flatten() {
                let mut l = labels();
                l.push((m::L_SNS_TOPIC, topic.clone()));
                samples.push(Sample {
                    family: &m::SQS_SUBSCRIPTION,
                    labels: l,
                    value: 1.0,
                });
            }
            let messages = q.visible + q.in_flight;
            let (last, consumed) = self.progress.entry(q.name.clone()).or_insert((messages, 0));
            *consumed += last.saturating_sub(messages) as i64;
            *last = messages;
            let consumers = (q.in_flight > 0).then_some(1);
            let (status, drain_seconds) = self.trend.observe((&q.name, ""), *consumed, messages, consumers, now_ms);
            seen.insert((q.name.clone(), String::new()));
            rows.push(Row {
                destination: q.name.clone(),
                consumer: String::new(),
                messages,
                age_seconds: None,
                drain_seconds,
                status,
            });
        }
        self.trend.retain(&seen);
        self.progress.retain(|q, _| seen.contains(&(q.clone(), String::new())));
        Ok(BrokerSnapshot {
            broker: Broker::Sqs,
            cluster,
            taken_at_ms: now_ms,
            rows,
            samples,
            consistency: Vec::new(),
        })
    }

    fn failed(&mut self) {
        self.trend.clear();
        self.progress.clear();
        // Read SNS again on the next good poll.
        self.polls = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_urls_and_arns() {
        assert_eq!(last_segment("http://127.0.0.1:5000/123456789012/orders"), "orders");
        assert_eq!(last_segment("arn:aws:sns:eu-west-1:123456789012:order-events"), "order-events");
    }
}

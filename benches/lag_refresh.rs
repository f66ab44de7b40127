//! What the sidecar's lag refresh and a scrape of its per-partition series cost, by partitions tracked.
//!
//! The sidecar recomputes every tracked partition's lag, lag seconds and committed offset after each
//! commit it relays and once a second, and `/metrics` writes them. With many groups this is work per
//! commit times partitions, so it is measured here by the number of partitions: `BENCH_GROUPS` groups
//! (comma-separated, default `10,100,312`) each committing the `BENCH_PARTITIONS` partitions (default
//! 32) of one topic whose high watermarks are known, through the sidecar's own `Consumption` fed with
//! real OffsetCommit and Fetch frames. Per size: the mean time of a refresh, of one commit's whole
//! handling (decode, windows, refresh), and of a scrape of the sidecar's `/metrics` text, and its size.
//!
//! Run: `cargo bench --bench lag_refresh`. Results: docs/benchmarks.md.

use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, GroupId, OffsetCommitRequest, OffsetCommitResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};

use eventscope::sidecar::kafka::consume::{self, Consumption};
use eventscope::telemetry::kafka::ProxyMetrics;
use eventscope::telemetry::traces::{TraceMetrics, Tracer};

const FETCH_VERSION: i16 = 11;
const COMMIT_VERSION: i16 = 8;

/// A frame: length prefix, header, body.
fn framed(header: impl FnOnce(&mut BytesMut), body: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut f = BytesMut::new();
    f.extend_from_slice(&[0; 4]);
    header(&mut f);
    body(&mut f);
    let n = (f.len() - 4) as i32;
    f[..4].copy_from_slice(&n.to_be_bytes());
    f.freeze()
}

fn request_header(key: ApiKey, version: i16) -> impl FnOnce(&mut BytesMut) {
    move |f| {
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_client_id(Some(StrBytes::from_static_str("app")))
            .encode(f, key.request_header_version(version))
            .unwrap()
    }
}

fn response_header(key: ApiKey, version: i16) -> impl FnOnce(&mut BytesMut) {
    move |f| ResponseHeader::default().encode(f, key.response_header_version(version)).unwrap()
}

fn topic() -> TopicName {
    TopicName(StrBytes::from_static_str("orders"))
}

/// A Fetch of every partition and its response: no records, a high watermark of 1,000,000.
fn fetch(c: &Consumption, partitions: usize) {
    let request = FetchRequest::default().with_topics(vec![FetchTopic::default().with_topic(topic()).with_partitions(
        (0..partitions)
            .map(|p| FetchPartition::default().with_partition(p as i32))
            .collect(),
    )]);
    let frame = framed(request_header(ApiKey::Fetch, FETCH_VERSION), |f| {
        request.encode(f, FETCH_VERSION).unwrap()
    });
    let ask = consume::fetch_request(&frame, FETCH_VERSION).expect("a Fetch request");
    let response = FetchResponse::default().with_responses(vec![FetchableTopicResponse::default().with_topic(topic()).with_partitions(
        (0..partitions)
            .map(|p| {
                PartitionData::default()
                    .with_partition_index(p as i32)
                    .with_high_watermark(1_000_000)
            })
            .collect(),
    )]);
    let frame = framed(response_header(ApiKey::Fetch, FETCH_VERSION), |f| {
        response.encode(f, FETCH_VERSION).unwrap()
    });
    c.fetch_response(&frame, FETCH_VERSION, &ask, SystemTime::now());
}

/// One group's commit of every partition at `offset`: the request's ask and the response.
fn commit(group: usize, partitions: usize, offset: i64) -> (consume::CommitAsk, Bytes) {
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(format!("group-{group}"))))
        .with_topics(vec![OffsetCommitRequestTopic::default().with_name(topic()).with_partitions(
            (0..partitions)
                .map(|p| {
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(p as i32)
                        .with_committed_offset(offset)
                })
                .collect(),
        )]);
    let frame = framed(request_header(ApiKey::OffsetCommit, COMMIT_VERSION), |f| {
        request.encode(f, COMMIT_VERSION).unwrap()
    });
    let ask = consume::commit_request(&frame, COMMIT_VERSION).expect("an OffsetCommit request");
    let response =
        OffsetCommitResponse::default().with_topics(vec![OffsetCommitResponseTopic::default().with_name(topic()).with_partitions(
            (0..partitions)
                .map(|p| OffsetCommitResponsePartition::default().with_partition_index(p as i32))
                .collect(),
        )]);
    let frame = framed(response_header(ApiKey::OffsetCommit, COMMIT_VERSION), |f| {
        response.encode(f, COMMIT_VERSION).unwrap()
    });
    (ask, frame)
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let partitions: usize = env_or("BENCH_PARTITIONS", 32);
    let groups: Vec<usize> = std::env::var("BENCH_GROUPS")
        .unwrap_or_else(|_| "10,100,312".into())
        .split(',')
        .map(|g| g.trim().parse().expect("BENCH_GROUPS"))
        .collect();
    println!("# The sidecar's lag refresh and scrape, {partitions} partitions per group\n");
    println!("| groups | partitions tracked | refresh µs | commit handled µs | scrape µs | scrape bytes |");
    println!("|---|---|---|---|---|---|");
    for g in groups {
        let registry = prometheus::Registry::new();
        let metrics = ProxyMetrics::new(&registry);
        let tracer = Tracer::disabled(TraceMetrics::new(&registry));
        let c = Consumption::new(metrics.clone(), tracer, "bench".into(), 1 << 20, 1 << 20);
        fetch(&c, partitions);
        for group in 0..g {
            let (ask, frame) = commit(group, partitions, 1);
            c.commit_response(&frame, COMMIT_VERSION, ask, SystemTime::now());
        }
        let rounds = 200;
        let started = Instant::now();
        for _ in 0..rounds {
            c.refresh();
        }
        let refresh = started.elapsed().as_secs_f64() / rounds as f64;
        let commits: Vec<_> = (0..rounds).map(|i| commit(i % g, partitions, 2 + i as i64)).collect();
        let started = Instant::now();
        for (ask, frame) in commits {
            c.commit_response(&frame, COMMIT_VERSION, ask, SystemTime::now());
        }
        let handled = started.elapsed().as_secs_f64() / rounds as f64;
        let started = Instant::now();
        let mut bytes = 0;
        for _ in 0..rounds {
            let mut text = eventscope::telemetry::render_registry(&registry);
            metrics.consume.partitions.render(&mut text);
            bytes = text.len();
        }
        let scrape = started.elapsed().as_secs_f64() / rounds as f64;
        assert!(bytes > 0, "the partitions' series are written");
        println!(
            "| {g} | {} | {:.0} | {:.0} | {:.0} | {bytes} |",
            g * partitions,
            refresh * 1e6,
            handled * 1e6,
            scrape * 1e6
        );
    }
}

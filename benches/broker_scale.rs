//! The other brokers at scale, on real servers: 10,000 RabbitMQ queues (Debian's rabbitmq-server, one
//! message in every tenth) and 1,000 JetStream consumers (Debian's nats-server: 10 streams of 100 pull
//! consumers, each stream 100 messages, so every consumer lags and has its age read). For each, in the
//! same run:
//! - **eventscope** (the release binary as its own process, `poll_interval = 5s`): poll duration from its
//!   own histogram, resident memory, every queue and consumer reported; for RabbitMQ both as shipped and
//!   made to read every page (`max_unpaged_queues = 0`);
//! - **baseline**: the same data read bare, with nothing computed: the same paged `GET /api/queues`
//!   requests (ureq: the first page and one unpaged answer, as eventscope reads up to 20,000 queues;
//!   every page on two connections, as it reads more; every page in turn), and the JetStream stream and consumer lists (async-nats). The ratio
//!   is what eventscope's processing adds to the broker's own answer time.
//!
//! RabbitMQ is measured twice: with its default statistics interval (5 s) and with the tests' 1 s, under
//! which the node itself is busier.
//!
//! Run: `cargo bench --bench broker_scale` (BENCH_QUEUES, BENCH_CONSUMERS to change the sizes,
//! BENCH_STATISTICS_MS=5000,1000 the intervals). Results:
//! docs/benchmarks.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::brokers::{pika, NatsServer, Rabbitmq};
use support::*;

/// Polls until eventscope has done `polls` polls of `cluster`; returns (mean poll seconds, RSS bytes).
fn measure(es: &Eventscope, cluster: &str, polls: f64, check: impl Fn(&Metrics) -> bool) -> (f64, f64) {
    let started = Instant::now();
    loop {
        let m = es.scrape();
        let count = m
            .get("eventscope_collector_poll_duration_seconds_count", &[("cluster", cluster)])
            .unwrap_or(0.0);
        if count >= polls && check(&m) {
            let sum = m
                .get("eventscope_collector_poll_duration_seconds_sum", &[("cluster", cluster)])
                .unwrap();
            let rss = m.get("process_resident_memory_bytes", &[]).unwrap();
            return (sum / count, rss);
        }
        assert!(started.elapsed() < Duration::from_secs(900), "{cluster}: {count} polls");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn rabbitmq(queues: usize, smoke: bool, statistics_interval_ms: u32) {
    let rmq = Rabbitmq::start_with_statistics_every(statistics_interval_ms);
    let t0 = Instant::now();
    pika(&["declare", &rmq.amqp_port.to_string(), "task", &queues.to_string()]);
    println!("rabbitmq: {queues} queues declared in {:.1} s", t0.elapsed().as_secs_f64());
    wait_for(Duration::from_secs(300), "every queue in the management API", || {
        let (_, body) = rmq.api("/api/queues?page=1&page_size=1")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["total_count"].as_u64()? as usize == queues).then_some(())
    });
    let with_messages = queues.div_ceil(10) as f64;
    // eventscope as shipped (the first page, then one unpaged answer up to 20,000 queues), and forced
    // to read every page (on its default 2 connections).
    let run = |extra: &str| {
        let es = Eventscope::collector(&format!(
            "[collector]\npoll_interval = \"5s\"\n[[rabbitmq]]\nname = \"bench\"\nurl = \"http://{}\"\n{extra}",
            rmq.management()
        ));
        measure(&es, "bench", if smoke { 2.0 } else { 4.0 }, |m| {
            m.count("eventscope_backlog_messages", &[("cluster", "bench")]) == queues
                && m.samples
                    .iter()
                    .filter(|(n, l, _)| n == "eventscope_backlog_messages" && l.get("cluster").map(String::as_str) == Some("bench"))
                    .map(|(_, _, v)| *v)
                    .sum::<f64>()
                    == with_messages
        })
    };
    let (poll, rss) = run("");
    let (paged_poll, paged_rss) = run("max_unpaged_queues = 0\npage_size = 500\n");
    // Baselines, bare: the first page and one unpaged answer, as eventscope reads them by default; every
    // page on as many connections as eventscope uses (its default `concurrency`, 2); every page in turn.
    let columns = "name,vhost,type,messages_ready,messages_unacknowledged,consumers,consumer_utilisation,\
head_message_timestamp,message_stats.publish,message_stats.deliver_get,message_stats.ack,\
message_stats.deliver_no_ack,message_stats.redeliver";
    let page = |n: u64| {
        let (status, body) = rmq.api(&format!("/api/queues?page={n}&page_size=500&columns={columns}")).unwrap();
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["page_count"].as_u64().unwrap_or(0)
    };
    let rounds = 3;
    let timed = |f: &dyn Fn()| {
        let t0 = Instant::now();
        for _ in 0..rounds {
            f();
        }
        t0.elapsed().as_secs_f64() / rounds as f64
    };
    let sequential = timed(&|| {
        let pages = page(1);
        (2..=pages).for_each(|n| {
            page(n);
        });
    });
    let concurrent = timed(&|| {
        let pages = page(1);
        std::thread::scope(|s| {
            for first in [2, 3] {
                s.spawn(move || {
                    (first..=pages).step_by(2).for_each(|n| {
                        page(n);
                    })
                });
            }
        });
    });
    let unpaged = timed(&|| {
        page(1);
        let (status, _) = rmq.api(&format!("/api/queues?columns={columns}")).unwrap();
        assert_eq!(status, 200);
    });
    println!(
        "rabbitmq: {queues} queues, statistics every {statistics_interval_ms} ms | eventscope as shipped: poll \
         {poll:.3} s (of a 5 s interval), RSS {:.1} MB; bare first page + unpaged answer {unpaged:.3} s, ratio {:.2}",
        rss / 1e6,
        poll / unpaged,
    );
    println!(
        "rabbitmq: {queues} queues, statistics every {statistics_interval_ms} ms | eventscope in pages: poll \
         {paged_poll:.3} s, RSS {:.1} MB; bare pages on 2 connections {concurrent:.3} s, ratio {:.2}; bare pages in \
         turn {sequential:.3} s",
        paged_rss / 1e6,
        paged_poll / concurrent,
    );
}

fn nats(streams: usize, per_stream: usize, smoke: bool) {
    let server = NatsServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let url = server.url();
    rt.block_on(async {
        use async_nats::jetstream::{self, consumer::pull, stream};
        let js = jetstream::new(async_nats::connect(&url).await.unwrap());
        for s in 0..streams {
            let st = js
                .create_stream(stream::Config {
                    name: format!("S{s:03}"),
                    subjects: vec![format!("s{s:03}.*")],
                    ..Default::default()
                })
                .await
                .unwrap();
            for c in 0..per_stream {
                st.create_consumer(pull::Config {
                    durable_name: Some(format!("c{c:04}")),
                    ..Default::default()
                })
                .await
                .unwrap();
            }
            let mut acks = Vec::new();
            for i in 0..100 {
                acks.push(js.publish(format!("s{s:03}.{}", i % 5), "event".into()).await.unwrap());
            }
            for a in acks {
                a.await.unwrap();
            }
        }
    });
    let consumers = streams * per_stream;
    let es = Eventscope::collector(&format!(
        "[collector]\npoll_interval = \"5s\"\n[[nats]]\nname = \"bench\"\nservers = [\"{url}\"]\n"
    ));
    let (poll, rss) = measure(&es, "bench", if smoke { 2.0 } else { 4.0 }, |m| {
        m.count("eventscope_backlog_messages", &[("cluster", "bench")]) == consumers
            && m.count("eventscope_backlog_age_seconds", &[("cluster", "bench")]) == consumers
    });
    drop(es);
    // Baseline: the stream and consumer lists, bare.
    let rounds = 3;
    let baseline = rt.block_on(async {
        use futures::{StreamExt, TryStreamExt};
        let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
        let t0 = Instant::now();
        for _ in 0..rounds {
            let infos: Vec<async_nats::jetstream::stream::Info> = js.streams().try_collect().await.unwrap();
            let mut n = 0;
            for i in infos {
                let s = js.get_stream_no_info(&i.config.name).await.unwrap();
                n += s.consumers().map(|c| c.unwrap()).collect::<Vec<_>>().await.len();
            }
            assert_eq!(n, consumers);
        }
        t0.elapsed().as_secs_f64() / rounds as f64
    });
    println!(
        "nats: {consumers} consumers on {streams} streams | eventscope poll {:.3} s (of a 5 s interval), RSS {:.1} MB | bare lists {:.3} s | ratio {:.2}",
        poll,
        rss / 1e6,
        baseline,
        poll / baseline
    );
}

fn main() {
    // `cargo test --all-targets` runs this without `--bench`: a small smoke run keeps it working.
    let smoke = !std::env::args().any(|a| a == "--bench");
    if smoke {
        println!("(smoke run under cargo test; `cargo bench --bench broker_scale` for the real numbers)");
    }
    let queues = env_or("BENCH_QUEUES", if smoke { 30 } else { 10_000 });
    let consumers = env_or("BENCH_CONSUMERS", if smoke { 20 } else { 1_000 });
    let streams = if smoke { 2 } else { 10 };
    nats(streams, consumers / streams, smoke);
    // RabbitMQ's default statistics interval (5 s), and the tests' 1 s, which keeps the node busier.
    let intervals: Vec<u32> = std::env::var("BENCH_STATISTICS_MS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| if smoke { vec![1000] } else { vec![5000, 1000] });
    for ms in intervals {
        rabbitmq(queues, smoke, ms);
    }
}

//! Every byte from the network is untrusted. Endpoints posing as brokers answer the collector with a
//! 2-billion-element array, an oversized frame, garbage, or nothing; the collector stays up, counts each
//! failure by kind, and keeps reporting the real cluster (tansu) beside them exactly.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use kafka_protocol::protocol::Decodable;
use support::*;

#[derive(Clone, Copy)]
enum Hostility {
    /// A well-framed response whose first array claims i32::MAX elements.
    HugeArray,
    /// A frame length of 2 GiB.
    Oversized,
    /// Random bytes.
    Garbage,
    /// Reads requests, never answers.
    Silent,
}

/// Serves `hostility` to every connection on a fresh port; the thread ends with the test process.
fn hostile_endpoint(hostility: Hostility) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            thread::spawn(move || {
                let mut seed = 0x9e37_79b9u32;
                loop {
                    let mut len = [0u8; 4];
                    if s.read_exact(&mut len).is_err() {
                        return;
                    }
                    let mut req = vec![0u8; i32::from_be_bytes(len).clamp(0, 1 << 20) as usize];
                    if s.read_exact(&mut req).is_err() || req.len() < 8 {
                        return;
                    }
                    let correlation = &req[4..8];
                    let reply: Vec<u8> = match hostility {
                        Hostility::HugeArray => {
                            let mut body = correlation.to_vec();
                            body.extend_from_slice(&[0, 0]); // error code
                            body.extend_from_slice(&i32::MAX.to_be_bytes()); // array length
                            body.extend_from_slice(&[0, 0, 0, 0]);
                            let mut f = (body.len() as i32).to_be_bytes().to_vec();
                            f.extend(body);
                            f
                        }
                        Hostility::Oversized => i32::MAX.to_be_bytes().to_vec(),
                        Hostility::Garbage => (0..64)
                            .map(|_| {
                                seed ^= seed << 13;
                                seed ^= seed >> 17;
                                seed ^= seed << 5;
                                seed as u8
                            })
                            .collect(),
                        Hostility::Silent => Vec::new(),
                    };
                    if s.write_all(&reply).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn eight_bytes_do_not_abort_the_decoder() {
    // Without the vendored patch this asks for about 206 GB and aborts the process.
    let mut b = bytes::Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    assert!(kafka_protocol::messages::MetadataResponse::decode(&mut b, 1).is_err());
    let mut b = bytes::Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x0f]);
    assert!(kafka_protocol::messages::ApiVersionsResponse::decode(&mut b, 3).is_err());
}

#[test]
fn hostile_endpoints_do_not_take_the_collector_down() {
    let tansu = Tansu::start();
    tansu.create_topic("orders", 1);
    let p = producer(&tansu.bootstrap());
    produce(&p, "orders", 0, &[now_ms(); 4]);
    commit(&committer(&tansu.bootstrap(), "g"), "orders", &[(0, 1)]);

    let mut toml = String::from("[collector]\npoll_interval = \"300ms\"\nrequest_timeout = \"1s\"\n");
    toml.push_str(&format!(
        "[[clusters]]\nname = \"real\"\nkafka = {{ \"bootstrap.servers\" = \"{}\" }}\n",
        tansu.bootstrap()
    ));
    let hostile = [
        ("huge-array", Hostility::HugeArray, "protocol"),
        ("oversized", Hostility::Oversized, "protocol"),
        ("garbage", Hostility::Garbage, "protocol"),
        ("silent", Hostility::Silent, "timeout"),
    ];
    for (name, h, _) in hostile {
        toml.push_str(&format!(
            "[[clusters]]\nname = \"{name}\"\nkafka = {{ \"bootstrap.servers\" = \"127.0.0.1:{}\" }}\n",
            hostile_endpoint(h)
        ));
    }
    let es = Eventscope::collector(&toml);
    for (name, _, kind) in hostile {
        es.wait_metrics(&format!("{name}: {kind} errors"), |m| {
            (m.get("eventscope_collector_up", &[("cluster", name)]) == Some(0.0)
                && m.get("eventscope_collector_errors_total", &[("cluster", name), ("kind", kind)])
                    .is_some_and(|v| v >= 2.0))
            .then_some(())
        });
    }
    // Several polls later, the real cluster is reported exactly and the process is healthy.
    std::thread::sleep(Duration::from_secs(2));
    let m = es.scrape();
    assert_eq!(
        m.get("kafka_consumergroup_lag", &[("cluster", "real"), ("consumergroup", "g")]),
        Some(3.0)
    );
    assert_eq!(m.get("eventscope_collector_up", &[("cluster", "real")]), Some(1.0));
    assert_eq!(m.count("kafka_consumergroup_lag", &[("cluster", "huge-array")]), 0);
    assert_eq!(es.get("/healthz").map(|r| r.0), Some(200));
    // Memory stays bounded: nothing near the 2 GiB the endpoints asked for.
    let rss = m.get("process_resident_memory_bytes", &[]).unwrap();
    assert!(rss < 200e6, "RSS {rss}");
}

/// SIGTERM while a poll hangs on a broker that never answers: the process still ends within the grace
/// period (2 s in the test config), with exit code 0.
#[test]
fn sigterm_ends_within_the_grace_period_even_with_a_hung_poll() {
    let port = hostile_endpoint(Hostility::Silent);
    let es = Eventscope::collector(&format!(
        "[collector]\npoll_interval = \"500ms\"\nrequest_timeout = \"60s\"\n[[clusters]]\nname = \"hung\"\nkafka = {{ \"bootstrap.servers\" = \"127.0.0.1:{port}\" }}\n"
    ));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(es.get("/readyz").map(|r| r.0), Some(503), "never collected, so not ready");
    let (status, took) = es.terminate();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_millis(3500), "stopped after {took:?}");
}

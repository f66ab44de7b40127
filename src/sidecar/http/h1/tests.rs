//! The fast path's framing, parsing and hostile-input cases.
use super::*;

fn body_end(framing: Framing, input: &[u8], step: usize) -> Result<usize, ()> {
    let mut f = Framer::new(framing);
    let mut total = 0;
    for piece in input.chunks(step) {
        let n = f.feed(piece)?;
        total += n;
        if f.done() {
            break;
        }
        assert_eq!(n, piece.len(), "a body that is not done takes all it is given");
    }
    if !f.done() && !matches!(f, Framer::UntilClose) {
        return Err(());
    }
    Ok(total)
}

#[test]
fn chunked_bodies_end_where_the_last_chunk_and_trailers_end() {
    let body = b"4\r\nWiki\r\n5;name=value\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\n\r\n";
    let next = b"HTTP/1.1 200 OK\r\n";
    let input = [&body[..], next].concat();
    for step in [1, 2, 3, 7, 1000] {
        assert_eq!(body_end(Framing::Chunked, &input, step), Ok(body.len()), "step {step}");
    }
    let empty = b"0\r\n\r\n";
    assert_eq!(body_end(Framing::Chunked, empty, 1), Ok(empty.len()));
}

#[test]
fn broken_chunked_framing_is_an_error_not_a_guess() {
    for bad in [
        &b"zz\r\n"[..],
        b"4\r\nWikiXX",
        b"4\nWiki\r\n",
        b"\r\n",
        b"10000000000000000\r\n",
        b"0\r\nbad\nheader\r\n\r\n",
    ] {
        assert_eq!(body_end(Framing::Chunked, bad, 1), Err(()), "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn length_bodies_take_exactly_their_length() {
    assert_eq!(body_end(Framing::Length(5), b"helloHTTP", 3), Ok(5));
    assert_eq!(body_end(Framing::Empty, b"HTTP", 3), Ok(0));
}

#[test]
fn response_framing_follows_rfc_9112() {
    let parsed = |head: &str, head_request: bool| parse_response(head.as_bytes(), head_request).ok().flatten();
    let framing = |head: &str, head_request: bool| parsed(head, head_request).map(|h| (h.framing, h.app_closes));
    // What the client gets of a complete response head.
    let relayed = |head: &str| String::from_utf8(parsed(head, false).unwrap().out).unwrap();
    let ok = "HTTP/1.1 200 OK\r\n";
    assert_eq!(
        framing(&format!("{ok}Content-Length: 3\r\n\r\n"), false),
        Some((Framing::Length(3), false))
    );
    assert_eq!(
        framing(&format!("{ok}Content-Length: 3\r\n\r\n"), true),
        Some((Framing::Empty, false))
    );
    assert_eq!(
        framing(&format!("{ok}Transfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n"), false),
        Some((Framing::Chunked, false))
    );
    assert_eq!(framing(&format!("{ok}\r\n"), false), Some((Framing::UntilClose, true)));
    assert_eq!(framing("HTTP/1.1 204 No Content\r\n\r\n", false), Some((Framing::Empty, false)));
    assert_eq!(
        framing(&format!("{ok}Connection: close\r\nContent-Length: 0\r\n\r\n"), false),
        Some((Framing::Length(0), true))
    );
    assert_eq!(
        framing("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false),
        Some((Framing::Length(0), true))
    );
    assert!(parse_response(format!("{ok}Content-Length: 3\r\nContent-Length: 4\r\n\r\n").as_bytes(), false).is_err());
    assert!(parse_response(format!("{ok}Content-Length: -3\r\n\r\n").as_bytes(), false).is_err());
    // Hop-by-hop headers do not reach the client; the ones Connection names neither.
    assert_eq!(
        relayed(&format!(
            "{ok}Connection: x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: 2\r\nContent-Length: 0\r\n\r\n"
        )),
        "HTTP/1.1 200 OK\r\nX-Kept: 2\r\nContent-Length: 0\r\n\r\n"
    );
    // Chunked wins over Content-Length, which the client does not get.
    assert_eq!(
        relayed(&format!("{ok}Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")),
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
}

#[tokio::test]
async fn a_deadline_moved_within_the_slack_fires_at_the_new_time_not_the_old() {
    let started = tokio::time::Instant::now();
    let mut d = Deadline::new();
    d.set(Duration::from_millis(50));
    // Later by less than the slack: the timer stays armed at 50 ms, and moves on when it fires.
    d.set(Duration::from_millis(150));
    d.expired().await;
    assert!(started.elapsed() >= Duration::from_millis(150), "{:?}", started.elapsed());
    // Earlier: re-armed at once.
    d.set(Duration::from_secs(3600));
    d.set(Duration::from_millis(10));
    let again = tokio::time::Instant::now();
    d.expired().await;
    assert!(again.elapsed() < Duration::from_secs(60));
}

/// The application's bytes are untrusted too: arbitrary input never panics the response parser or
/// the chunked decoder (a deterministic stream of random and mutated well-formed inputs).
#[test]
fn arbitrary_response_bytes_never_panic() {
    let mut next = crate::testing::xorshift(0x9e37_79b9_7f4a_7c15u64);
    let seeds: [&[u8]; 3] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n",
        b"HTTP/1.0 103 Early\r\nConnection: close, x\r\nX: 1\r\n\r\n",
        b"ffffffffffffffff\r\n\r\n",
    ];
    for i in 0..20_000 {
        let mut input = seeds[i % seeds.len()].to_vec();
        for _ in 0..(next() % 8) {
            let at = (next() as usize) % input.len();
            match next() % 3 {
                0 => input[at] = next() as u8,
                1 => input.insert(at, next() as u8),
                _ => {
                    input.remove(at);
                }
            }
            if input.is_empty() {
                input.push(b'0');
            }
        }
        let _ = parse_response(&input, i % 2 == 0);
        let mut f = Framer::new(Framing::Chunked);
        for piece in input.chunks(1 + (next() as usize) % 7) {
            if f.feed(piece).is_err() || f.done() {
                break;
            }
        }
    }
}

#[test]
fn content_length_is_digits_only() {
    assert_eq!(parse_length(b"42"), Some(42));
    for bad in [&b""[..], b"+4", b"4 2", b"0x10", b"1,1", b"9999999999999999999"] {
        assert_eq!(parse_length(bad), None);
    }
}

//! Server-sent event streams as the tests read them: the demo agent's `/events` (one `tick`
//! every 100 ms), waited for and read to their end.

use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::body::Incoming;

/// Reads `body` to its end: the events seen, and whether it ended cleanly (not cut).
pub async fn read_events(body: &mut Incoming) -> (usize, bool) {
    let mut text = String::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    text.push_str(&String::from_utf8_lossy(data));
                }
            }
            Err(_) => return (text.matches("event: tick").count(), false),
        }
    }
    (text.matches("event: tick").count(), true)
}

/// Waits for the first event, so that the stream is known to be open end to end.
pub async fn first_event(body: &mut Incoming) {
    let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("an event within 10 s")
        .expect("a frame")
        .expect("not an error");
    assert!(frame.data_ref().is_some_and(|d| d.starts_with(b"id: 0")));
}

/// Waits for the next event of a stream that must go on: panics if it ends or fails first.
pub async fn next_event(body: &mut Incoming) {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("an event within 10 s")
            .expect("the stream goes on")
            .expect("not an error");
        if frame
            .data_ref()
            .is_some_and(|d| String::from_utf8_lossy(d).contains("event: tick"))
        {
            return;
        }
    }
}

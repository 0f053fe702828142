//! A plain HTTP/1.1 server on loopback that records what reaches it (each request's header
//! block and body) and gives every request the same answer: an agent's upstream, a webhook.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// What a [`RecordingServer`] received.
pub type Recorded<T> = Arc<Mutex<Vec<T>>>;

/// A running recorder.
#[derive(Debug, Clone)]
pub struct RecordingServer {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Each request's header block (request line included), names lower-cased (they are
    /// case-insensitive), values as they came.
    pub heads: Recorded<String>,
    /// Each request's body (as `content-length` gave it).
    pub bodies: Recorded<Vec<u8>>,
}

impl RecordingServer {
    /// Starts it; every request is answered `answer` (a whole HTTP/1.1 response, which should
    /// close the connection).
    pub fn start(answer: &'static [u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (heads, bodies) = (Recorded::default(), Recorded::default());
        let (record_head, record_body) = (Arc::clone(&heads), Arc::clone(&bodies));
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let mut reader = BufReader::new(stream);
                let (mut head, mut length) = (String::new(), 0);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let line = match line.split_once(':') {
                        Some((name, value)) => {
                            if name.eq_ignore_ascii_case("content-length") {
                                length = value.trim().parse().unwrap_or(0);
                            }
                            format!("{}:{value}", name.to_ascii_lowercase())
                        }
                        None => line,
                    };
                    head.push_str(&line);
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                record_head.lock().expect("lock").push(head);
                record_body.lock().expect("lock").push(body);
                let _ = reader.get_mut().write_all(answer);
            }
        });
        Self {
            addr,
            heads,
            bodies,
        }
    }
}

//! Filtering an MCP answer sent as server-sent events (the streamable HTTP transport): each
//! event is read whole, its data filtered as a JSON-RPC message, and passed on. The output is
//! written from what was read (`id`, `event`, `retry` and `data` fields; a comment as an empty
//! one), never copied line by line, so a line deputyd did not read as a field cannot carry a
//! list past it. Events stream: nothing waits for the end of the answer.

use super::BodyRefused;
use super::list::{Listed, MAX_LIST_BYTES, filter_message};
use crate::input::Mcp;

/// Filters a `text/event-stream` answer as it arrives.
#[derive(Debug, Default)]
pub struct SseFilter {
    /// Bytes not yet read as whole lines.
    pending: Vec<u8>,
    /// Whether the stream's start (and a byte-order mark there) has been passed.
    started: bool,
    /// The event being read: its fields other than `data`, as they will be written.
    fields: Vec<u8>,
    /// Its data lines' values, each followed by a line feed.
    data: Option<Vec<u8>>,
    /// Items listed and kept so far.
    pub listed: Listed,
}

impl SseFilter {
    /// A filter for one answer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads `chunk`; returns what may be passed on now.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        keep: &mut dyn FnMut(Mcp) -> bool,
    ) -> Result<Vec<u8>, BodyRefused> {
        self.pending.extend_from_slice(chunk);
        if !self.started {
            // An event stream may open with a byte-order mark, which its readers skip: it is
            // skipped here too, so the first field is read as they read it.
            if self.pending.len() < 3 && [0xEF, 0xBB, 0xBF].starts_with(&self.pending) {
                return Ok(Vec::new());
            }
            if self.pending.starts_with(&[0xEF, 0xBB, 0xBF]) {
                self.pending.drain(..3);
            }
            self.started = true;
        }
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(offset) = self.pending[start..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
        {
            let end = start + offset;
            let next = match self.pending[end] {
                // A carriage return may be the first half of CRLF: wait for the next byte.
                b'\r' if end + 1 == self.pending.len() => break,
                b'\r' if self.pending[end + 1] == b'\n' => end + 2,
                _ => end + 1,
            };
            let line = self.pending[start..end].to_vec();
            self.line(&line, keep, &mut out)?;
            start = next;
        }
        self.pending.drain(..start);
        if self.pending.len() > MAX_LIST_BYTES {
            return Err(BodyRefused(format!(
                "an event stream of an MCP answer sent a line longer than {MAX_LIST_BYTES} \
                 bytes, the most deputyd reads"
            )));
        }
        Ok(out)
    }

    /// The stream ended. An event it did not end is dropped, as its readers drop it; a
    /// carriage return held back ends its line.
    pub fn finish(&mut self, keep: &mut dyn FnMut(Mcp) -> bool) -> Result<Vec<u8>, BodyRefused> {
        let mut out = Vec::new();
        if self.pending.ends_with(b"\r") {
            let line = self.pending[..self.pending.len() - 1].to_vec();
            self.pending.clear();
            self.line(&line, keep, &mut out)?;
        }
        Ok(out)
    }

    fn line(
        &mut self,
        line: &[u8],
        keep: &mut dyn FnMut(Mcp) -> bool,
        out: &mut Vec<u8>,
    ) -> Result<(), BodyRefused> {
        if line.is_empty() {
            return self.dispatch(keep, out);
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        let written = match name {
            b"data" => {
                let data = self.data.get_or_insert_with(Vec::new);
                if data.len() + value.len() > MAX_LIST_BYTES {
                    return Err(too_long());
                }
                data.extend_from_slice(value);
                data.push(b'\n');
                return Ok(());
            }
            // A comment keeps a connection alive; its text is not passed on.
            b"" => b":\n".to_vec(),
            b"event" | b"id" | b"retry" => {
                if breaks_a_line_somewhere(value) {
                    // Some event-stream readers (httpx-sse before 0.4.2) split lines at these.
                    return Err(BodyRefused(
                        "an event of an MCP answer has a field holding a character some \
                         readers take for a line break; it is refused rather than read two ways"
                            .into(),
                    ));
                }
                [name, b": ", value, b"\n"].concat()
            }
            // A field no reader acts on is dropped.
            _ => return Ok(()),
        };
        if self.fields.len() + written.len() > MAX_LIST_BYTES {
            return Err(too_long());
        }
        self.fields.extend_from_slice(&written);
        Ok(())
    }

    /// A blank line ends the event: its data, filtered when it is a JSON-RPC message, and its
    /// other fields are passed on.
    fn dispatch(
        &mut self,
        keep: &mut dyn FnMut(Mcp) -> bool,
        out: &mut Vec<u8>,
    ) -> Result<(), BodyRefused> {
        let fields = std::mem::take(&mut self.fields);
        let Some(mut data) = self.data.take() else {
            if !fields.is_empty() {
                out.extend_from_slice(&fields);
                out.push(b'\n');
            }
            return Ok(());
        };
        data.pop();
        let filtered = if data.iter().all(u8::is_ascii_whitespace) {
            Ok(std::borrow::Cow::Borrowed(&data[..]))
        } else {
            filter_message(&data, keep, &mut self.listed)
        };
        // Whatever the event's type: data that could hold a list is read as a message (a
        // client may take any event's data for one), and data that cannot passes as it came
        // (`filter_message` passes it unparsed; an event's data is never over its bound).
        let data = filtered?.into_owned();
        out.extend_from_slice(&fields);
        // A line ending inside the data (the server's own JSON may hold any) starts a new data
        // line, which its readers join back with a line feed: JSON whitespace either way.
        for line in data.split(|&b| b == b'\n' || b == b'\r') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        out.push(b'\n');
        Ok(())
    }
}

/// Whether `value` holds a character `str.splitlines` breaks at besides CR and LF.
fn breaks_a_line_somewhere(value: &[u8]) -> bool {
    value.iter().any(|b| matches!(b, 0x0b | 0x0c | 0x1c..=0x1e))
        || String::from_utf8_lossy(value)
            .chars()
            .any(|c| matches!(c, '\u{85}' | '\u{2028}' | '\u{2029}'))
}

fn too_long() -> BodyRefused {
    BodyRefused(format!(
        "an event of an MCP answer is longer than {MAX_LIST_BYTES} bytes, the most deputyd \
         reads; it is refused rather than passed on unfiltered"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep_search(call: Mcp) -> bool {
        call.tool.as_deref() == Some("search_tickets")
    }

    const STREAM: &[u8] = b"\xEF\xBB\xBFid: prime\r\ndata:\r\n\r\n: keep-alive\n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\nid: 7\ndata: {\"jsonrpc\":\"2.0\",\"id\":2,\ndata: \"result\":{\"tools\":[{\"name\":\"refund\"},{\"name\":\"search_tickets\"}]}}\n\n";

    fn filtered(chunks: &[&[u8]]) -> String {
        let mut filter = SseFilter::new();
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(filter.feed(chunk, &mut keep_search).expect("read"));
        }
        out.extend(filter.finish(&mut keep_search).expect("ended"));
        assert_eq!(filter.listed, Listed { listed: 2, kept: 1 });
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn events_are_filtered_and_everything_else_passes() {
        let whole = filtered(&[STREAM]);
        // A comment passes as an empty one.
        assert!(whole.starts_with("id: prime\ndata: \n\n:\n\n"), "{whole}");
        assert!(whole.contains("notifications/progress"), "{whole}");
        assert!(whole.contains("id: 7\ndata: {"), "{whole}");
        assert!(whole.contains("search_tickets"), "{whole}");
        assert!(!whole.contains("refund"), "{whole}");
        for split in 1..STREAM.len() {
            assert_eq!(
                filtered(&[&STREAM[..split], &STREAM[split..]]),
                whole,
                "split at {split}"
            );
        }
    }

    #[test]
    fn lines_no_reader_acts_on_are_not_passed_on() {
        let mut filter = SseFilter::new();
        let out = filter
            .feed(
                b": +AAoACg-data: x\nfoo: bar\nretry: 5\ndata: {\"id\":1}\n\n",
                &mut keep_search,
            )
            .expect("read");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            ":\nretry: 5\ndata: {\"id\":1}\n\n"
        );
    }

    #[test]
    fn an_unreadable_event_refuses_the_answer_and_a_cut_one_is_dropped() {
        let mut filter = SseFilter::new();
        assert!(
            filter
                .feed(
                    b"data: {\"id\":1,\"result\":{\"tools\":5}}\n\n",
                    &mut keep_search
                )
                .is_err()
        );
        let mut filter = SseFilter::new();
        assert!(
            filter
                .feed(b"data: <html>tools</html>\n\n", &mut keep_search)
                .is_err()
        );
        let mut filter = SseFilter::new();
        assert!(
            filter
                .feed(
                    b"event: x\xE2\x80\xA8event: message\ndata: 1\n\n",
                    &mut keep_search
                )
                .is_err()
        );
        let mut filter = SseFilter::new();
        let fine = filter.feed(b"event: other\ndata: <html></html>\n\n", &mut keep_search);
        assert!(
            fine.is_ok(),
            "an event of another type that cannot hold a list passes"
        );
        let mut filter = SseFilter::new();
        let out = filter
            .feed(
                b"data: {\"id\":1,\"result\":{\"tools\":[{\"name\":\"refund\"}]}}\n",
                &mut keep_search,
            )
            .expect("read");
        assert!(out.is_empty());
        assert!(filter.finish(&mut keep_search).expect("ended").is_empty());
    }
}

//! CRI container log encoder (pure, no I/O).
//!
//! Format (kubelet's CRI logging design, as CRI-O's conmon and containerd write it): one record per
//! line, `<RFC3339Nano UTC> <stdout|stderr> <F|P> <text>\n`. `F` marks the last piece of a line,
//! `P` a partial piece; a reader joins `P` pieces with the following `F`.
//!
//! Rules berth follows:
//! - each newline-terminated line becomes one `F` record (an empty line becomes `... F \n`);
//! - a line longer than [`MAX_LINE`] bytes is cut into `P` records of [`MAX_LINE`] bytes, the
//!   rest of the line is the `F` record;
//! - an incomplete line still pending at EOF or container exit is written as an `F` record by
//!   [`LineBuffer::flush`]: the stream has ended, so the line is complete. A trailing `P` is a
//!   line never finished, which log shippers wait on (containerd 1.6 writes one,
//!   containerd/containerd#4813; conmon ends it with an empty `F` since conmon#592);
//! - one `\r` right before the `\n` is dropped (a tty writes `\r\n`; Go's `bufio.ReadLine`, which
//!   containerd's CRI logger uses, strips it the same way); any other `\r` is kept.
//! - bytes are copied as they are; no UTF-8 validation (the log is a byte stream).

/// Longest text of one record in bytes (16 KiB, conmon's and containerd's buffer size).
pub const MAX_LINE: usize = 16 * 1024;

/// Which container stream a record came from. With a tty everything is [`Stream::Stdout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// The stream's name in a CRI log record.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Appends one record `<ts> <stream> <F|P> <text>\n` to `out`; `ts` is nanoseconds since the epoch.
pub fn encode_record(out: &mut Vec<u8>, ts: i64, stream: Stream, partial: bool, text: &[u8]) {
    out.extend_from_slice(crate::util::rfc3339_nano(ts).as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(text);
    out.push(b'\n');
}

/// Turns one stream's byte chunks into CRI log records, holding an incomplete line between chunks.
#[derive(Debug)]
pub struct LineBuffer {
    stream: Stream,
    pending: Vec<u8>,
    /// `P` records of the held line are already out; its `F` record is still to come.
    mid_line: bool,
}

impl LineBuffer {
    /// An empty buffer for `stream`.
    pub fn new(stream: Stream) -> LineBuffer {
        LineBuffer { stream, pending: Vec::new(), mid_line: false }
    }

    /// The stream this buffer encodes.
    pub fn stream(&self) -> Stream {
        self.stream
    }

    /// Bytes of an incomplete line held back (at most [`MAX_LINE`]).
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Whether `P` records of the current line were written and its `F` record was not yet: the
    /// log is then in the middle of a line (the monitor defers a log reopen until it is not).
    pub fn mid_line(&self) -> bool {
        self.mid_line
    }

    /// Feeds a chunk read from the stream and appends the records it completes to `out`, all
    /// stamped `ts` (nanoseconds since the epoch).
    pub fn push(&mut self, data: &[u8], ts: i64, out: &mut Vec<u8>) {
        let mut rest = data;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = rest.split_at(nl);
            rest = &after[1..];
            self.mid_line = false;
            if self.pending.is_empty() {
                self.emit_line(line, ts, out);
            } else {
                let mut whole = std::mem::take(&mut self.pending);
                whole.extend_from_slice(line);
                self.emit_line(&whole, ts, out);
            }
        }
        self.pending.extend_from_slice(rest);
        self.emit_full_partials(ts, out);
    }

    /// Writes a held incomplete line as the `F` record that ends it (call at EOF or container
    /// exit only). No-op when nothing is held; `P` pieces always leave bytes held (see
    /// [`Self::emit_full_partials`]), so a line begun with `P` always gets its `F`.
    pub fn flush(&mut self, ts: i64, out: &mut Vec<u8>) {
        self.mid_line = false;
        if !self.pending.is_empty() {
            let text = std::mem::take(&mut self.pending);
            encode_record(out, ts, self.stream, false, &text);
        }
    }

    /// One complete line (without its `\n`): `P` pieces of MAX_LINE while more than MAX_LINE
    /// remain, then the `F` record.
    fn emit_line(&self, line: &[u8], ts: i64, out: &mut Vec<u8>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut rest = line;
        while rest.len() > MAX_LINE {
            let (piece, after) = rest.split_at(MAX_LINE);
            encode_record(out, ts, self.stream, true, piece);
            rest = after;
        }
        encode_record(out, ts, self.stream, false, rest);
    }

    /// While the held incomplete line is longer than MAX_LINE, writes its head as a `P` record.
    /// Exactly MAX_LINE bytes stay held, so a `\n` arriving next makes them an `F` record.
    fn emit_full_partials(&mut self, ts: i64, out: &mut Vec<u8>) {
        if self.pending.len() <= MAX_LINE {
            return;
        }
        let mut start = 0;
        while self.pending.len() - start > MAX_LINE {
            encode_record(out, ts, self.stream, true, &self.pending[start..start + MAX_LINE]);
            start += MAX_LINE;
            self.mid_line = true;
        }
        self.pending.drain(..start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mid_line_is_set_by_partials_and_cleared_by_the_line_end() {
        let mut b = LineBuffer::new(Stream::Stdout);
        let mut out = Vec::new();
        b.push(b"short", 1, &mut out);
        assert!(!b.mid_line(), "nothing written yet");
        b.push(&vec![b'x'; MAX_LINE + 10], 1, &mut out);
        assert!(b.mid_line());
        b.push(b"end\nnext", 1, &mut out);
        assert!(!b.mid_line());
        b.flush(1, &mut out);
        assert!(!b.mid_line());
    }

    const TS: i64 = 1_475_712_229_669_794_202;
    const STAMP: &str = "2016-10-06T00:03:49.669794202Z";

    fn records(out: &[u8]) -> Vec<(String, String, String)> {
        String::from_utf8(out.to_vec())
            .unwrap()
            .split_terminator('\n')
            .map(|l| {
                let mut it = l.splitn(4, ' ');
                assert_eq!(it.next(), Some(STAMP));
                (it.next().unwrap().into(), it.next().unwrap().into(), it.next().unwrap().into())
            })
            .collect()
    }

    fn r(s: &str, t: &str, x: &str) -> (String, String, String) {
        (s.into(), t.into(), x.into())
    }

    #[test]
    fn complete_lines_are_full_records() {
        let mut b = LineBuffer::new(Stream::Stdout);
        let mut out = Vec::new();
        b.push(b"hello\nworld\n", TS, &mut out);
        assert_eq!(String::from_utf8(out.clone()).unwrap(), format!("{STAMP} stdout F hello\n{STAMP} stdout F world\n"));
        assert_eq!(b.pending_len(), 0);
    }

    #[test]
    fn empty_lines_are_kept() {
        let mut b = LineBuffer::new(Stream::Stderr);
        let mut out = Vec::new();
        b.push(b"\n\nx\n", TS, &mut out);
        assert_eq!(records(&out), vec![r("stderr", "F", ""), r("stderr", "F", ""), r("stderr", "F", "x")]);
    }

    #[test]
    fn partial_lines_join_across_chunks_and_flush_as_f() {
        let mut b = LineBuffer::new(Stream::Stdout);
        let mut out = Vec::new();
        b.push(b"hel", TS, &mut out);
        assert!(out.is_empty());
        b.push(b"lo\nta", TS, &mut out);
        b.push(b"il", TS, &mut out);
        assert_eq!(records(&out), vec![r("stdout", "F", "hello")]);
        b.flush(TS, &mut out);
        assert_eq!(records(&out), vec![r("stdout", "F", "hello"), r("stdout", "F", "tail")], "the stream ended: the line is complete");
        let before = out.len();
        b.flush(TS, &mut out);
        assert_eq!(out.len(), before, "a second flush writes nothing");
    }

    #[test]
    fn long_lines_are_split_into_p_then_f() {
        let mut b = LineBuffer::new(Stream::Stdout);
        let mut out = Vec::new();
        let mut line = vec![b'a'; MAX_LINE];
        line.extend(vec![b'b'; MAX_LINE]);
        line.extend(b"cc\n");
        b.push(&line, TS, &mut out);
        let recs = records(&out);
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0], r("stdout", "P", &"a".repeat(MAX_LINE)));
        assert_eq!(recs[1], r("stdout", "P", &"b".repeat(MAX_LINE)));
        assert_eq!(recs[2], r("stdout", "F", "cc"));
    }

    #[test]
    fn long_line_in_small_chunks_holds_at_most_max() {
        let mut b = LineBuffer::new(Stream::Stdout);
        let mut out = Vec::new();
        for _ in 0..(2 * MAX_LINE / 1000 + 1) {
            b.push(&[b'x'; 1000], TS, &mut out);
            assert!(b.pending_len() <= MAX_LINE);
        }
        b.push(b"\n", TS, &mut out);
        let recs = records(&out);
        let total: usize = recs.iter().map(|x| x.2.len()).sum();
        assert_eq!(total, (2 * MAX_LINE / 1000 + 1) * 1000);
        assert!(recs[..recs.len() - 1].iter().all(|x| x.1 == "P" && x.2.len() == MAX_LINE));
        assert_eq!(recs.last().unwrap().1, "F");
    }

    #[test]
    fn long_line_cut_by_exit_ends_with_f() {
        let mut b = LineBuffer::new(Stream::Stderr);
        let mut out = Vec::new();
        b.push(&vec![b'z'; 2 * MAX_LINE + 5], TS, &mut out);
        b.flush(TS, &mut out);
        let recs = records(&out);
        let tags: Vec<&str> = recs.iter().map(|x| x.1.as_str()).collect();
        assert_eq!(tags, ["P", "P", "F"], "every P run ends in an F");
        assert_eq!(recs[2].2.len(), 5);
    }

    #[test]
    fn exactly_max_is_one_full_record() {
        let mut b = LineBuffer::new(Stream::Stdout);
        let mut out = Vec::new();
        b.push(&[b'z'; MAX_LINE], TS, &mut out);
        assert!(out.is_empty());
        b.push(b"\n", TS, &mut out);
        assert_eq!(records(&out), vec![r("stdout", "F", &"z".repeat(MAX_LINE))]);
    }

    #[test]
    fn crlf_loses_cr_but_inner_cr_stays() {
        let mut b = LineBuffer::new(Stream::Stdout);
        let mut out = Vec::new();
        b.push(b"tty line\r\nprogress 10%\rprogress 20%\r\n\r\n", TS, &mut out);
        assert_eq!(records(&out), vec![r("stdout", "F", "tty line"), r("stdout", "F", "progress 10%\rprogress 20%"), r("stdout", "F", "")]);
        // A CR split from its LF across chunks is still dropped.
        let mut out = Vec::new();
        b.push(b"a\r", TS, &mut out);
        b.push(b"\n", TS, &mut out);
        assert_eq!(records(&out), vec![r("stdout", "F", "a")]);
    }
}

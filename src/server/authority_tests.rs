use super::*;
use tokio::io::AsyncReadExt;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Yields its input `chunk` bytes per read, as a slow socket would.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    chunk: usize,
}

impl AsyncRead for Chunked {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = this.chunk.min(this.data.len() - this.pos).min(buf.remaining());
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    write_frame_header(&mut v, payload.len(), kind, flags, stream_id);
    v.extend_from_slice(payload);
    v
}

async fn run(input: &[u8], chunk: usize) -> io::Result<Vec<u8>> {
    let mut conn = NormalizeAuthority::new(Chunked { data: input.to_vec(), pos: 0, chunk });
    let mut out = Vec::new();
    conn.read_to_end(&mut out).await?;
    Ok(out)
}

struct Frame {
    kind: u8,
    flags: u8,
    stream_id: u32,
    payload: Vec<u8>,
}

fn split_frames(bytes: &[u8]) -> Vec<Frame> {
    assert_eq!(&bytes[..24], PREFACE, "the preface passes through");
    let mut at = 24;
    let mut v = Vec::new();
    while at < bytes.len() {
        let h = &bytes[at..at + 9];
        let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
        assert!(len <= MAX_FRAME_LEN, "frame of {len} bytes written");
        v.push(Frame {
            kind: h[3],
            flags: h[4],
            stream_id: u32::from_be_bytes([h[5], h[6], h[7], h[8]]),
            payload: bytes[at + 9..at + 9 + len].to_vec(),
        });
        at += 9 + len;
    }
    v
}

type Fields = Vec<(String, String)>;

/// Decodes the header blocks of `frames` the way h2 would, one decoder for the connection:
/// (stream id, HEADERS flags, fields) per block.
fn decode_blocks(frames: &[Frame]) -> Vec<(u32, u8, Fields)> {
    let mut dec = Decoder::new();
    let mut blocks = Vec::new();
    let mut cur: Option<(u32, u8, Vec<u8>)> = None;
    for f in frames {
        match f.kind {
            TYPE_HEADERS => {
                assert!(cur.is_none());
                let skip = if f.flags & FLAG_PRIORITY != 0 { 5 } else { 0 };
                assert_eq!(f.flags & FLAG_PADDED, 0, "padding is dropped");
                cur = Some((f.stream_id, f.flags, f.payload[skip..].to_vec()));
            }
            TYPE_CONTINUATION => cur.as_mut().expect("CONTINUATION after HEADERS").2.extend_from_slice(&f.payload),
            _ => continue,
        }
        if f.flags & FLAG_END_HEADERS != 0 {
            let (sid, flags, block) = cur.take().unwrap();
            let fields = dec
                .decode(&block)
                .unwrap()
                .into_iter()
                .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
                .collect();
            blocks.push((sid, flags, fields));
        }
    }
    assert!(cur.is_none(), "a block was left open");
    blocks
}

fn grpc_request(authority: Option<&str>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut v: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b":method".to_vec(), b"POST".to_vec()),
        (b":scheme".to_vec(), b"http".to_vec()),
        (b":path".to_vec(), b"/runtime.v1.RuntimeService/Version".to_vec()),
    ];
    if let Some(a) = authority {
        v.push((b":authority".to_vec(), a.as_bytes().to_vec()));
    }
    v.push((b"content-type".to_vec(), b"application/grpc".to_vec()));
    v.push((b"te".to_vec(), b"trailers".to_vec()));
    v
}

fn encode(enc: &mut Encoder<'_>, fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    enc.encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice())))
}

fn authority_of(fields: &Fields) -> Option<&str> {
    fields.iter().find(|(n, _)| n == ":authority").map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn rfc7541_huffman_blocks_keep_their_fields() {
    // RFC 7541 C.4.1 and C.4.2: Huffman-coded, the second refers to the dynamic table entry
    // (62, :authority www.example.com) the first added.
    let c41 = [0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff];
    let c42 = [0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf];
    let mut input = PREFACE.to_vec();
    input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &c41));
    input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 3, &c42));
    let blocks = decode_blocks(&split_frames(&run(&input, 4096).await.unwrap()));
    assert_eq!(blocks.len(), 2);
    let want1: Fields = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    assert_eq!(blocks[0].2, want1);
    let mut want2 = want1.clone();
    want2.push(("cache-control".into(), "no-cache".into()));
    assert_eq!(blocks[1].2, want2);
    assert_eq!(blocks[1].1 & FLAG_END_STREAM, FLAG_END_STREAM, "END_STREAM kept");
}

#[tokio::test]
async fn socket_path_authority_replaced_also_when_indexed() {
    // Like grpc-go 1.49 (kubelet 1.26): the path as authority, added to the dynamic table by the
    // first request and referred to by index in the next ones.
    let fields = grpc_request(Some("/run/berth/berth.sock"));
    let mut first = vec![0x83, 0x86, 0x04, 34];
    first.extend_from_slice(b"/runtime.v1.RuntimeService/Version");
    first.extend_from_slice(&[0x41, 21]); // literal with incremental indexing, name :authority
    first.extend_from_slice(b"/run/berth/berth.sock");
    let tail = [&[0x0f, 0x10, 16][..], b"application/grpc", &[0x00, 2], b"te", &[8], b"trailers"].concat();
    first.extend_from_slice(&tail);
    let mut second = vec![0x83, 0x86, 0x04, 34];
    second.extend_from_slice(b"/runtime.v1.RuntimeService/Version");
    second.push(0x80 | 62); // the :authority the first block added
    second.extend_from_slice(&tail);
    let mut input = PREFACE.to_vec();
    for (sid, block) in [(1, &first), (3, &second), (5, &second)] {
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, sid, block));
        input.extend(frame(0x0, FLAG_END_STREAM, sid, &[0, 0, 0, 0, 0]));
    }
    for chunk in [1, 7, 4096] {
        let out = run(&input, chunk).await.unwrap();
        let frames = split_frames(&out);
        let blocks = decode_blocks(&frames);
        assert_eq!(blocks.len(), 3, "chunk {chunk}");
        for (sid, _, f) in &blocks {
            assert_eq!(authority_of(f), Some("localhost"), "stream {sid}, chunk {chunk}");
            assert_eq!(f.len(), fields.len());
            assert_eq!(f[2], (":path".to_string(), "/runtime.v1.RuntimeService/Version".to_string()));
        }
        let data: Vec<_> = frames.iter().filter(|f| f.kind == 0).map(|f| (f.stream_id, f.flags, f.payload.clone())).collect();
        assert_eq!(data, vec![(1, 1, vec![0; 5]), (3, 1, vec![0; 5]), (5, 1, vec![0; 5])], "DATA frames byte-exact");
    }
}

#[tokio::test]
async fn empty_percent_encoded_and_unix_authorities_replaced_valid_ones_kept() {
    let cases: [(Option<&str>, Option<&str>); 7] = [
        (Some(""), Some("localhost")),
        (Some("%2Frun%2Fberth%2Fberth.sock"), None), // whatever h2 decides; checked below
        (Some("unix:/run/berth/berth.sock"), Some("localhost")),
        (Some("unix:///run/berth/berth.sock"), Some("localhost")),
        (Some("localhost"), Some("localhost")),
        (Some("berth.invalid:50051"), Some("berth.invalid:50051")),
        (None, None),
    ];
    for (sent, want) in cases {
        let mut enc = Encoder::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS | FLAG_END_STREAM, 1, &encode(&mut enc, &grpc_request(sent))));
        let blocks = decode_blocks(&split_frames(&run(&input, 4096).await.unwrap()));
        let got = authority_of(&blocks[0].2).map(str::to_string);
        match (sent, want) {
            (Some(s), None) => {
                // Kept exactly when h2 accepts it, else replaced.
                let expect = if acceptable_authority(s.as_bytes()) { s } else { "localhost" };
                assert_eq!(got.as_deref(), Some(expect), "sent {s:?}");
            }
            _ => assert_eq!(got.as_deref(), want, "sent {sent:?}"),
        }
        assert!(got.as_deref().is_none_or(|a| acceptable_authority(a.as_bytes())));
    }
}

#[tokio::test]
async fn padding_priority_and_continuation_handled() {
    let mut enc = Encoder::new();
    let block = encode(&mut enc, &grpc_request(Some("/run/berth/berth.sock")));
    let (a, b) = block.split_at(block.len() / 2);
    let priority = [0x80, 0, 0, 1, 15]; // exclusive dependency on stream 1, weight 16
    let mut payload = vec![3u8]; // pad length
    payload.extend_from_slice(&priority);
    payload.extend_from_slice(a);
    payload.extend_from_slice(&[0, 0, 0]);
    let mut input = PREFACE.to_vec();
    input.extend(frame(TYPE_HEADERS, FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM, 3, &payload));
    input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, b));
    let frames = split_frames(&run(&input, 1).await.unwrap());
    assert_eq!(frames.len(), 1, "one HEADERS frame once the block fits");
    assert_eq!(frames[0].flags, FLAG_PRIORITY | FLAG_END_STREAM | FLAG_END_HEADERS);
    assert_eq!(&frames[0].payload[..5], &priority);
    let blocks = decode_blocks(&frames);
    assert_eq!(authority_of(&blocks[0].2), Some("localhost"));
}

#[tokio::test]
async fn large_block_resplit_into_continuation_frames() {
    let mut fields = grpc_request(Some("/run/berth/berth.sock"));
    fields.push((b"x-large".to_vec(), vec![b'v'; 40_000]));
    let block = encode(&mut Encoder::new(), &fields);
    let mut input = PREFACE.to_vec();
    let mut parts = block.chunks(MAX_FRAME_LEN).peekable();
    let mut kind = TYPE_HEADERS;
    while let Some(p) = parts.next() {
        let flags = if parts.peek().is_none() { FLAG_END_HEADERS } else { 0 };
        input.extend(frame(kind, flags, 1, p));
        kind = TYPE_CONTINUATION;
    }
    let frames = split_frames(&run(&input, 5000).await.unwrap());
    assert!(frames.len() >= 3);
    assert_eq!(frames[0].kind, TYPE_HEADERS);
    assert!(frames[1..].iter().all(|f| f.kind == TYPE_CONTINUATION));
    assert!(frames[..frames.len() - 1].iter().all(|f| f.flags & FLAG_END_HEADERS == 0));
    let blocks = decode_blocks(&frames);
    assert_eq!(authority_of(&blocks[0].2), Some("localhost"));
    assert_eq!(blocks[0].2.last().unwrap().1.len(), 40_000);
}

#[tokio::test]
async fn broken_framing_closes_the_connection() {
    let block = encode(&mut Encoder::new(), &grpc_request(Some("localhost")));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("oversized HEADERS", frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &vec![0x82; MAX_FRAME_LEN + 1])),
        ("stray CONTINUATION", frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &block)),
        ("DATA inside a header block", [frame(TYPE_HEADERS, 0, 1, &block), frame(0, 0, 1, b"x")].concat()),
        (
            "CONTINUATION of another stream",
            [frame(TYPE_HEADERS, 0, 1, &block), frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &[0x82])].concat(),
        ),
        ("padding longer than the frame", frame(TYPE_HEADERS, FLAG_END_HEADERS | FLAG_PADDED, 1, &[9, 0x82])),
        ("index beyond both tables", frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0xff, 0x7f])),
        ("table size update over 4096", frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0x3f, 0xe1, 0xff, 0x03, 0x82])),
    ];
    for (what, frames) in cases {
        let mut input = PREFACE.to_vec();
        input.extend(frames);
        let err = run(&input, 4096).await.expect_err(what);
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{what}: {err}");
    }
}

#[tokio::test]
async fn other_frames_pass_byte_exact_and_truncated_input_reaches_the_server() {
    let mut input = PREFACE.to_vec();
    input.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])); // SETTINGS
    input.extend(frame(0x8, 0, 0, &[0, 1, 0, 0])); // WINDOW_UPDATE
    input.extend(frame(0x0, 0, 1, &vec![7u8; 40_000])); // DATA longer than one read
    input.extend(frame(0x6, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8])); // PING
    input.extend_from_slice(&[0, 0, 20, TYPE_HEADERS, 4, 0]); // a cut-off frame header
    for chunk in [1, 3, 16_384, 100_000] {
        assert_eq!(run(&input, chunk).await.unwrap(), input, "chunk {chunk}");
    }
}

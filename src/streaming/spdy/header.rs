//! SPDY/3 name/value header blocks (SPDY/3 draft §2.6.10) and their zlib compression.
//!
//! Block layout (uncompressed): `count(32) | { name-len(32) | name | value-len(32) | value }*`.
//! A value may hold several values separated by NUL; they are returned as separate pairs with
//! the same name (as Go's framer turns them into `http.Header` entries). Names are lowercased.
//!
//! Compression: one zlib stream per direction per connection, primed with
//! [`SPDY3_DICTIONARY`]; every block ends with a sync flush, so the stream continues across
//! frames and a block decompresses on its own once the earlier ones did.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::dictionary::{SPDY3_DICTIONARY, SPDY3_DICTIONARY_ID};

/// Largest decompressed header block accepted (bytes).
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// Most name/value pairs accepted in one block (counting NUL-separated values).
pub const MAX_HEADER_PAIRS: usize = 1024;

/// Errors of header block coding. Any decompression error leaves the connection's zlib stream
/// unusable: the session must end (GOAWAY PROTOCOL_ERROR).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// zlib rejected the compressed bytes.
    #[error("SPDY header block: bad zlib data: {0}")]
    Zlib(String),
    /// The stream asked for a dictionary other than the SPDY/3 one.
    #[error("SPDY header block: zlib asks for dictionary {0:#010x}, expected the SPDY/3 dictionary 0xe3c6a7c2")]
    WrongDictionary(u32),
    /// Decompressed block longer than [`MAX_HEADER_BLOCK`].
    #[error("SPDY header block: decompresses to more than {MAX_HEADER_BLOCK} bytes")]
    TooLarge,
    /// More than [`MAX_HEADER_PAIRS`] pairs.
    #[error("SPDY header block: {0} name/value pairs, at most {MAX_HEADER_PAIRS} allowed")]
    TooManyPairs(usize),
    /// The block's structure is wrong (lengths past the end, empty name, trailing bytes).
    #[error("SPDY header block: {0}")]
    Malformed(&'static str),
    /// A name or value is not UTF-8.
    #[error("SPDY header block: header {0:?} is not UTF-8")]
    NotUtf8(String),
}

/// Serializes `headers` into an uncompressed block (names lowercased). Pairs with the same
/// name are joined into one entry with NUL-separated values, as the draft requires.
pub fn encode_block(headers: &[(String, String)]) -> Vec<u8> {
    let mut joined: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (n, v) in headers {
        let n = n.to_ascii_lowercase();
        match joined.iter_mut().find(|(jn, _)| *jn == n) {
            Some((_, jv)) => {
                jv.push('\0');
                jv.push_str(v);
            }
            None => joined.push((n, v.clone())),
        }
    }
    let mut out = Vec::new();
    out.extend_from_slice(&(joined.len() as u32).to_be_bytes());
    for (n, v) in &joined {
        out.extend_from_slice(&(n.len() as u32).to_be_bytes());
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// Parses an uncompressed block; see the module doc for the layout and limits.
pub fn decode_block(block: &[u8]) -> Result<Vec<(String, String)>, HeaderError> {
    fn take<'a>(b: &mut &'a [u8], n: usize, what: &'static str) -> Result<&'a [u8], HeaderError> {
        if b.len() < n {
            return Err(HeaderError::Malformed(what));
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Ok(h)
    }
    fn len32(b: &mut &[u8], what: &'static str) -> Result<usize, HeaderError> {
        let s = take(b, 4, what)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize)
    }
    let mut b = block;
    let count = len32(&mut b, "missing pair count")?;
    if count > MAX_HEADER_PAIRS {
        return Err(HeaderError::TooManyPairs(count));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let nl = len32(&mut b, "truncated name length")?;
        let name = take(&mut b, nl, "name runs past the end of the block")?;
        if name.is_empty() {
            return Err(HeaderError::Malformed("empty header name"));
        }
        let name =
            std::str::from_utf8(name).map_err(|_| HeaderError::NotUtf8(String::from_utf8_lossy(name).into_owned()))?.to_ascii_lowercase();
        let vl = len32(&mut b, "truncated value length")?;
        let value = take(&mut b, vl, "value runs past the end of the block")?;
        let value = std::str::from_utf8(value).map_err(|_| HeaderError::NotUtf8(name.clone()))?;
        for v in value.split('\0') {
            if out.len() >= MAX_HEADER_PAIRS {
                return Err(HeaderError::TooManyPairs(out.len() + 1));
            }
            out.push((name.clone(), v.to_string()));
        }
    }
    if !b.is_empty() {
        return Err(HeaderError::Malformed("trailing bytes after the last pair"));
    }
    Ok(out)
}

/// The sending side of a connection's header compression (one per connection).
pub struct HeaderCompressor {
    z: Compress,
}

impl HeaderCompressor {
    /// A zlib stream (best compression, as Go's framer) primed with the SPDY/3 dictionary.
    pub fn new() -> Result<Self, HeaderError> {
        let mut z = Compress::new(Compression::best(), true);
        z.set_dictionary(&SPDY3_DICTIONARY).map_err(|e| HeaderError::Zlib(e.to_string()))?;
        Ok(Self { z })
    }

    /// Encodes and compresses `headers`, ending with a sync flush; returns the bytes to put in
    /// the frame.
    pub fn compress(&mut self, headers: &[(String, String)]) -> Result<Vec<u8>, HeaderError> {
        let block = encode_block(headers);
        let mut out = Vec::with_capacity(block.len() / 2 + 64);
        let mut consumed = 0usize;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(block.len().max(256));
            }
            let before_in = self.z.total_in();
            let before_out = self.z.total_out();
            self.z.compress_vec(&block[consumed..], &mut out, FlushCompress::Sync).map_err(|e| HeaderError::Zlib(e.to_string()))?;
            consumed += (self.z.total_in() - before_in) as usize;
            let produced = (self.z.total_out() - before_out) as usize;
            // Done when all input is in and the flush left room to spare in `out`.
            if consumed == block.len() && out.len() < out.capacity() {
                break;
            }
            if produced == 0 && consumed == block.len() && out.len() < out.capacity() {
                break;
            }
        }
        Ok(out)
    }
}

/// The receiving side of a connection's header compression (one per connection).
pub struct HeaderDecompressor {
    z: Decompress,
    buf: Vec<u8>,
}

impl HeaderDecompressor {
    /// A fresh zlib inflater; the SPDY/3 dictionary is supplied when the stream asks for it.
    pub fn new() -> Self {
        Self { z: Decompress::new(true), buf: Vec::new() }
    }

    /// Inflates one frame's compressed header block (continuing the connection's stream) and
    /// decodes it. Stops inflating as soon as more than [`MAX_HEADER_BLOCK`] bytes come out, so
    /// a zip bomb costs at most that much memory.
    pub fn decompress(&mut self, input: &[u8]) -> Result<Vec<(String, String)>, HeaderError> {
        self.buf.clear();
        let mut chunk = [0u8; 16 * 1024];
        let mut consumed = 0usize;
        loop {
            let before_in = self.z.total_in();
            let before_out = self.z.total_out();
            let res = self.z.decompress(&input[consumed..], &mut chunk, FlushDecompress::Sync);
            consumed += (self.z.total_in() - before_in) as usize;
            let produced = (self.z.total_out() - before_out) as usize;
            if self.buf.len() + produced > MAX_HEADER_BLOCK {
                return Err(HeaderError::TooLarge);
            }
            self.buf.extend_from_slice(&chunk[..produced]);
            match res {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {
                    if consumed >= input.len() && produced < chunk.len() {
                        break;
                    }
                    if produced == 0 && consumed >= input.len() {
                        break;
                    }
                }
                Err(e) => match e.needs_dictionary() {
                    Some(SPDY3_DICTIONARY_ID) => {
                        self.z.set_dictionary(&SPDY3_DICTIONARY).map_err(|e| HeaderError::Zlib(e.to_string()))?;
                    }
                    Some(other) => return Err(HeaderError::WrongDictionary(other)),
                    None => return Err(HeaderError::Zlib(e.to_string())),
                },
            }
        }
        decode_block(&self.buf)
    }
}

impl Default for HeaderDecompressor {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn dictionary_is_the_spdy3_one() {
        let (mut a, mut b) = (1u32, 0u32);
        for &x in SPDY3_DICTIONARY.iter() {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, SPDY3_DICTIONARY_ID);
    }

    #[test]
    fn compressed_prefix_names_the_dictionary() {
        // zlib header for level 9 with FDICT, then DICTID 0xe3c6a7c2: the bytes every SPDY/3
        // capture starts its first header block with (Go's framer uses BestCompression too).
        let mut c = HeaderCompressor::new().expect("compressor");
        let out = c.compress(&h(&[("streamtype", "error")])).expect("compress");
        assert_eq!(&out[..6], &[0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2]);
    }

    #[test]
    fn round_trip_across_many_frames() {
        let mut c = HeaderCompressor::new().expect("compressor");
        let mut d = HeaderDecompressor::new();
        for i in 0..500 {
            let hs = h(&[("streamtype", "stdout"), ("port", &i.to_string()), ("requestid", "0"), ("x-big", &"v".repeat(i * 7))]);
            let wire = c.compress(&hs).expect("compress");
            assert_eq!(d.decompress(&wire).expect("decompress"), hs, "frame {i}");
        }
    }

    #[test]
    fn names_lowercased_and_multi_values_split() {
        let mut c = HeaderCompressor::new().expect("compressor");
        let mut d = HeaderDecompressor::new();
        let wire = c.compress(&h(&[("StreamType", "a"), ("streamtype", "b")])).expect("compress");
        assert_eq!(d.decompress(&wire).expect("decompress"), h(&[("streamtype", "a"), ("streamtype", "b")]));
    }

    #[test]
    fn node_zlib_vector_decodes() {
        // node's zlib (spdy-transport settings: dictionary, windowBits 11, Z_SYNC_FLUSH),
        // block {"streamtype": "stdin", "port": "8080"} then {"a": "b"} on the same stream.
        let first: &[u8] = &NODE_VECTOR_1;
        let second: &[u8] = &NODE_VECTOR_2;
        let mut d = HeaderDecompressor::new();
        assert_eq!(d.decompress(first).expect("first"), h(&[("streamtype", "stdin"), ("port", "8080")]));
        assert_eq!(d.decompress(second).expect("second"), h(&[("a", "b")]));
    }

    include!("header_vectors.rs");

    #[test]
    fn hostile_blocks_are_errors() {
        let mut d = HeaderDecompressor::new();
        assert!(matches!(d.decompress(b"not zlib at all"), Err(HeaderError::Zlib(_))));
        // a valid zlib stream with the wrong dictionary id
        let mut d = HeaderDecompressor::new();
        let mut z = Compress::new(Compression::best(), true);
        z.set_dictionary(b"other dictionary").expect("dict");
        let mut out = Vec::with_capacity(256);
        z.compress_vec(&encode_block(&h(&[("a", "b")])), &mut out, FlushCompress::Sync).expect("compress");
        assert!(matches!(d.decompress(&out), Err(HeaderError::WrongDictionary(_))));
        // structure
        assert!(decode_block(&[0, 0, 0, 1, 0, 0, 0, 9, b'a']).is_err());
        assert!(decode_block(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(matches!(decode_block(&[0, 0, 0x10, 0]), Err(HeaderError::TooManyPairs(4096))));
        assert!(decode_block(&[0, 0, 0, 0, 1]).is_err());
        assert!(decode_block(&[0, 0]).is_err());
    }

    #[test]
    fn zip_bomb_is_refused_with_bounded_memory() {
        // 100 MiB of zeros after a block header claiming one huge value, primed like a peer would.
        let mut z = Compress::new(Compression::best(), true);
        z.set_dictionary(&SPDY3_DICTIONARY).expect("dict");
        let mut wire = Vec::with_capacity(1 << 20);
        let zeros = vec![0u8; 1 << 20];
        let mut head = vec![0, 0, 0, 1, 0, 0, 0, 1, b'a'];
        head.extend_from_slice(&(100u32 << 20).to_be_bytes());
        z.compress_vec(&head, &mut wire, FlushCompress::None).expect("compress");
        for _ in 0..100 {
            let mut done = 0;
            while done < zeros.len() {
                let before = z.total_in();
                if wire.capacity() - wire.len() < 4096 {
                    wire.reserve(1 << 20);
                }
                z.compress_vec(&zeros[done..], &mut wire, FlushCompress::None).expect("compress");
                done += (z.total_in() - before) as usize;
            }
        }
        wire.reserve(1 << 16);
        z.compress_vec(&[], &mut wire, FlushCompress::Sync).expect("flush");
        assert!(wire.len() < 1 << 20, "bomb is small: {}", wire.len());
        let mut d = HeaderDecompressor::new();
        assert_eq!(d.decompress(&wire), Err(HeaderError::TooLarge));
        assert!(d.buf.capacity() <= MAX_HEADER_BLOCK * 2, "buffer stayed bounded: {}", d.buf.capacity());
    }

    #[test]
    fn random_input_never_panics() {
        let mut x: u64 = 88172645463325252;
        for _ in 0..2000 {
            let mut d = HeaderDecompressor::new();
            let len = (x % 64) as usize;
            let mut buf = vec![0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2];
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(x as u8);
            }
            let _ = d.decompress(&buf);
            let _ = decode_block(&buf[6..]);
        }
    }
}

//! A small base64 codec (RFC 4648): the standard alphabet with padding, for the
//! `base64.channel.k8s.io` WebSocket variants (apimachinery wsstream encodes each message with
//! Go's `base64.StdEncoding`), and the URL-safe alphabet without padding (§5), for stream tokens.

const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A byte that is not in the alphabet, or a length that no encoding produces.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Base64Error {
    /// `byte` at offset `at` is not a base64 character (standard alphabet, `=` only at the end).
    #[error("base64: invalid byte 0x{byte:02x} at offset {at}")]
    InvalidByte {
        /// Offset in the input.
        at: usize,
        /// The byte found.
        byte: u8,
    },
    /// The input length (after padding is stripped) leaves 1 dangling character.
    #[error("base64: input length {0} is not a valid encoding length")]
    InvalidLength(usize),
}

fn encode_with(alpha: &[u8; 64], data: &[u8], pad: bool) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..4 {
            if i < chars {
                out.push(alpha[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

/// Standard alphabet with `=` padding (Go `base64.StdEncoding`).
pub fn encode_std(data: &[u8]) -> String {
    encode_with(STD, data, true)
}

/// URL-safe alphabet, no padding (Go `base64.RawURLEncoding`).
pub fn encode_url(data: &[u8]) -> String {
    encode_with(URL, data, false)
}

/// Decodes standard-alphabet base64; padding is optional, whitespace is not accepted.
pub fn decode_std(text: &[u8]) -> Result<Vec<u8>, Base64Error> {
    let mut end = text.len();
    while end > 0 && text[end - 1] == b'=' && text.len() - end < 2 {
        end -= 1;
    }
    let body = &text[..end];
    if body.len() % 4 == 1 {
        return Err(Base64Error::InvalidLength(body.len()));
    }
    let mut out = Vec::with_capacity(body.len() / 4 * 3 + 2);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for (at, &byte) in body.iter().enumerate() {
        let v = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(Base64Error::InvalidByte { at, byte }),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors() {
        let cases =
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")];
        for (plain, enc) in cases {
            assert_eq!(encode_std(plain.as_bytes()), enc);
            assert_eq!(decode_std(enc.as_bytes()).unwrap(), plain.as_bytes());
        }
        assert_eq!(encode_url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn all_bytes_round_trip_and_errors() {
        let data: Vec<u8> = (0..=255u8).collect();
        assert_eq!(decode_std(encode_std(&data).as_bytes()).unwrap(), data);
        assert_eq!(decode_std(b"Zm9v!A"), Err(Base64Error::InvalidByte { at: 4, byte: b'!' }));
        assert_eq!(decode_std(b"Zm9vY"), Err(Base64Error::InvalidLength(5)));
    }
}

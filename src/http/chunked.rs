//! A strict, incremental decoder of `Transfer-Encoding: chunked` bodies (RFC 9112 7.1).
//!
//! Strict where lenient parsers disagree (the ground of request smuggling): chunk sizes are 1 to
//! 16 hex digits and nothing else (no sign, no `0x`, no spaces), every line ends in CRLF (a bare
//! LF is refused), chunk data is followed by exactly CRLF, and size lines, extensions and
//! trailers are bounded. Trailer fields are read and dropped.

/// The longest chunk-size line (extensions included) or trailer line.
const MAX_LINE: usize = 4096;
/// The most bytes of trailer fields.
const MAX_TRAILERS: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkError {
    Malformed(&'static str),
    /// The decoded body would exceed the limit.
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
    Done,
}

/// Decodes one chunked body; feed it bytes as they arrive.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    body: Vec<u8>,
    max: usize,
    trailer_bytes: usize,
}

impl ChunkedDecoder {
    pub fn new(max: usize) -> Self {
        ChunkedDecoder {
            state: State::Size,
            body: Vec::new(),
            max,
            trailer_bytes: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The decoded body, once [`is_done`](Self::is_done).
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// Consumes what it can of `input` and returns how many bytes it used; stops at the end of
    /// the body (what follows belongs to the next request).
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, ChunkError> {
        let mut pos = 0;
        loop {
            match self.state {
                State::Done => return Ok(pos),
                State::Size | State::Trailer => {
                    let Some(line) = next_line(&input[pos..])? else {
                        return Ok(pos);
                    };
                    pos += line.len() + 2;
                    if self.state == State::Size {
                        let size = chunk_size(line)?;
                        if size > (self.max - self.body.len()) as u64 {
                            return Err(ChunkError::TooLarge);
                        }
                        self.state = if size == 0 {
                            State::Trailer
                        } else {
                            State::Data(size)
                        };
                    } else if line.is_empty() {
                        self.state = State::Done;
                    } else {
                        self.trailer_bytes += line.len() + 2;
                        if self.trailer_bytes > MAX_TRAILERS {
                            return Err(ChunkError::Malformed("the trailer section is too large"));
                        }
                        if !line.contains(&b':') {
                            return Err(ChunkError::Malformed("a trailer line is not a field"));
                        }
                    }
                }
                State::Data(left) => {
                    let available = input.len() - pos;
                    if available == 0 {
                        return Ok(pos);
                    }
                    let take = (left.min(available as u64)) as usize;
                    self.body.extend_from_slice(&input[pos..pos + take]);
                    pos += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                }
                State::DataEnd => {
                    let rest = &input[pos..];
                    if rest.len() < 2 {
                        if rest.first().is_some_and(|b| *b != b'\r') {
                            return Err(ChunkError::Malformed(
                                "chunk data is not followed by CRLF",
                            ));
                        }
                        return Ok(pos);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(ChunkError::Malformed("chunk data is not followed by CRLF"));
                    }
                    pos += 2;
                    self.state = State::Size;
                }
            }
        }
    }
}

/// The line at the start of `input` without its CRLF; `None` when it is not complete yet.
fn next_line(input: &[u8]) -> Result<Option<&[u8]>, ChunkError> {
    match input.iter().position(|b| *b == b'\n') {
        Some(end) => {
            if end == 0 || input[end - 1] != b'\r' {
                return Err(ChunkError::Malformed("a line ends in a bare LF"));
            }
            let line = &input[..end - 1];
            if line.len() > MAX_LINE {
                return Err(ChunkError::Malformed("a chunk line is too long"));
            }
            if line.contains(&b'\r') {
                return Err(ChunkError::Malformed("a chunk line holds a bare CR"));
            }
            Ok(Some(line))
        }
        None if input.len() > MAX_LINE => Err(ChunkError::Malformed("a chunk line is too long")),
        None => Ok(None),
    }
}

/// `1*16HEXDIG [ ";" extensions ]`.
fn chunk_size(line: &[u8]) -> Result<u64, ChunkError> {
    let (digits, extension) = match line.iter().position(|b| *b == b';') {
        Some(at) => (&line[..at], Some(&line[at + 1..])),
        None => (line, None),
    };
    if digits.is_empty() || digits.len() > 16 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(ChunkError::Malformed("a chunk size is not a hex number"));
    }
    if let Some(extension) = extension {
        if extension
            .iter()
            .any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f)
        {
            return Err(ChunkError::Malformed(
                "a chunk extension holds control bytes",
            ));
        }
    }
    let text = std::str::from_utf8(digits).map_err(|_| ChunkError::Malformed("bad chunk size"))?;
    u64::from_str_radix(text, 16).map_err(|_| ChunkError::Malformed("bad chunk size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], max: usize) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut decoder = ChunkedDecoder::new(max);
        let used = decoder.feed(input)?;
        assert!(decoder.is_done(), "not done after {input:?}");
        Ok((decoder.into_body(), used))
    }

    #[test]
    fn decodes_and_stops_at_the_end() {
        let input = b"5\r\nhello\r\n6;name=v\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1";
        let (body, used) = decode_all(input, 100).unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(&input[used..], b"GET / HTTP/1.1");
    }

    #[test]
    fn byte_by_byte_gives_the_same() {
        let input = b"a\r\n0123456789\r\n1\r\nx\r\n0\r\n\r\n";
        let mut decoder = ChunkedDecoder::new(100);
        let mut pending = Vec::new();
        for byte in input {
            pending.push(*byte);
            let used = decoder.feed(&pending).unwrap();
            pending.drain(..used);
        }
        assert!(decoder.is_done());
        assert_eq!(decoder.into_body(), b"0123456789x");
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        for bad in [
            &b"+5\r\nhello\r\n0\r\n\r\n"[..],
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"-1\r\n",
            b"\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"g\r\n",
            b"11111111111111111\r\n",
            b"5;\x01\r\nhello\r\n0\r\n\r\n",
            b"0\r\nno-colon\r\n\r\n",
        ] {
            let mut decoder = ChunkedDecoder::new(1 << 20);
            assert!(
                matches!(decoder.feed(bad), Err(ChunkError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn limits() {
        let mut decoder = ChunkedDecoder::new(4);
        assert_eq!(decoder.feed(b"5\r\n"), Err(ChunkError::TooLarge));
        let mut decoder = ChunkedDecoder::new(4);
        assert_eq!(
            decoder.feed(b"3\r\nabc\r\n2\r\n"),
            Err(ChunkError::TooLarge)
        );
        let mut decoder = ChunkedDecoder::new(4);
        assert_eq!(
            decoder.feed(b"ffffffffffffffff\r\n"),
            Err(ChunkError::TooLarge)
        );
        let long = vec![b'1'; MAX_LINE + 1];
        assert!(ChunkedDecoder::new(4).feed(&long).is_err());
        let exactly = decode_all(b"4\r\nabcd\r\n0\r\n\r\n", 4).unwrap();
        assert_eq!(exactly.0, b"abcd");
    }
}

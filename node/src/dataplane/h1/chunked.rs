//! Where a chunked body ends (RFC 9112 §7.1). The proxy forwards chunked
//! bodies byte for byte; it only has to know where one ends, to keep the
//! connection for the next message. Pure: fed slices, keeps its state.

/// Longest chunk-size line (size and extensions) and trailer section
/// accepted: a peer cannot make the proxy scan forever for a line end.
const MAX_LINE: u32 = 4096;
const MAX_TRAILERS: u32 = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk size is not hexadecimal")]
    BadSize,
    #[error("chunk size overflows")]
    SizeOverflow,
    #[error("chunk size line too long")]
    LineTooLong,
    #[error("chunk data not followed by CRLF")]
    MissingCrlf,
    #[error("trailer section too long")]
    TrailersTooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size; `digits` read so far.
    Size {
        value: u64,
        digits: u8,
    },
    /// Extensions or whitespace after the size, up to LF.
    SizeLine {
        value: u64,
        len: u32,
    },
    Data(u64),
    /// CR (optional) then LF after chunk data.
    DataEnd {
        saw_cr: bool,
    },
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// CR of the final empty line seen.
    FinalLf,
    Done,
}

#[derive(Debug)]
pub struct ChunkedEnd {
    state: State,
    trailer_bytes: u32,
}

impl Default for ChunkedEnd {
    fn default() -> Self {
        Self {
            state: State::Size { value: 0, digits: 0 },
            trailer_bytes: 0,
        }
    }
}

impl ChunkedEnd {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Scans the next bytes of the body: `Some(n)` when the body ends
    /// after the first `n` bytes of `bytes`, `None` when all of them belong
    /// to it and more are to come.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, ChunkError> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.state = match self.state {
                State::Done => return Ok(Some(i)),
                State::Size { value, digits } => match hex(b) {
                    Some(d) => {
                        if digits >= 16 {
                            return Err(ChunkError::SizeOverflow);
                        }
                        State::Size {
                            value: value << 4 | u64::from(d),
                            digits: digits + 1,
                        }
                    }
                    None if digits == 0 => return Err(ChunkError::BadSize),
                    None => self.size_line(value, 0, b)?,
                },
                State::SizeLine { value, len } => self.size_line(value, len, b)?,
                State::Data(left) => {
                    let take = left.min((bytes.len() - i) as u64);
                    // `take` fits in usize: it is at most the slice's length.
                    i += take as usize;
                    self.state = if take == left {
                        State::DataEnd { saw_cr: false }
                    } else {
                        State::Data(left - take)
                    };
                    continue;
                }
                State::DataEnd { saw_cr } => match b {
                    b'\r' if !saw_cr => State::DataEnd { saw_cr: true },
                    b'\n' => State::Size { value: 0, digits: 0 },
                    _ => return Err(ChunkError::MissingCrlf),
                },
                State::TrailerStart => match b {
                    b'\r' => State::FinalLf,
                    b'\n' => State::Done,
                    _ => self.trailer_byte(State::Trailer)?,
                },
                State::Trailer => match b {
                    b'\n' => self.trailer_byte(State::TrailerStart)?,
                    _ => self.trailer_byte(State::Trailer)?,
                },
                State::FinalLf => match b {
                    b'\n' => State::Done,
                    _ => return Err(ChunkError::MissingCrlf),
                },
            };
            i += 1;
        }
        Ok(self.is_done().then_some(i))
    }

    fn size_line(&self, value: u64, len: u32, b: u8) -> Result<State, ChunkError> {
        if b == b'\n' {
            return Ok(if value == 0 {
                State::TrailerStart
            } else {
                State::Data(value)
            });
        }
        if len >= MAX_LINE {
            return Err(ChunkError::LineTooLong);
        }
        Ok(State::SizeLine { value, len: len + 1 })
    }

    fn trailer_byte(&mut self, next: State) -> Result<State, ChunkError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > MAX_TRAILERS {
            return Err(ChunkError::TrailersTooLong);
        }
        Ok(next)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in pieces of `step` bytes; where the body ended, as an
    /// offset into `body`.
    fn end_of(body: &[u8], step: usize) -> Result<Option<usize>, ChunkError> {
        let mut c = ChunkedEnd::default();
        let mut offset = 0;
        for piece in body.chunks(step) {
            if let Some(n) = c.feed(piece)? {
                return Ok(Some(offset + n));
            }
            offset += piece.len();
        }
        Ok(None)
    }

    #[test]
    fn finds_the_end_however_the_bytes_are_split() {
        let body = b"5\r\nhello\r\n1A;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for step in 1..=body.len() {
            assert_eq!(end_of(body, step), Ok(Some(end)), "step {step}");
        }
    }

    #[test]
    fn an_empty_body_and_bare_line_feeds() {
        assert_eq!(end_of(b"0\r\n\r\n", 100), Ok(Some(5)));
        assert_eq!(end_of(b"3\nabc\n0\n\n", 100), Ok(Some(9)));
    }

    #[test]
    fn an_unfinished_body_wants_more() {
        assert_eq!(end_of(b"5\r\nhel", 100), Ok(None));
        assert_eq!(end_of(b"5\r\nhello\r\n0\r\n", 100), Ok(None));
        assert_eq!(end_of(b"0\r\nx: 1\r\n", 100), Ok(None));
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert_eq!(end_of(b"zz\r\n", 100), Err(ChunkError::BadSize));
        assert_eq!(end_of(b"11111111111111111\r\n", 100), Err(ChunkError::SizeOverflow));
        assert_eq!(end_of(b"2\r\nabX", 100), Err(ChunkError::MissingCrlf));
        let long = [b"1;".as_slice(), &[b'x'; 5000]].concat();
        assert_eq!(end_of(&long, 100), Err(ChunkError::LineTooLong));
        let trailers = [b"0\r\n".as_slice(), &[b'x'; 20_000]].concat();
        assert_eq!(end_of(&trailers, 100), Err(ChunkError::TrailersTooLong));
    }
}

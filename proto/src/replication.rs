//! The sticky-table replication protocol, spoken over QUIC between nodes.
//!
//! A connection's dialer sends; the acceptor applies and acknowledges.
//! Frames are length-prefixed (u32, little endian) bincode 2, decoded with
//! a size limit so a hostile length cannot make a node allocate. Entries
//! carry a version (hybrid logical clock, node); everywhere the higher
//! version wins, so every node converges whatever the arrival order.

use serde::{Deserialize, Serialize};

/// ALPN of the replication protocol.
pub const ALPN: &[u8] = b"shoal-repl/1";
/// Largest frame accepted, in bytes.
pub const MAX_FRAME: usize = 1 << 20;
/// Bounds on decoded fields.
pub const MAX_NAME: usize = 64;
pub const MAX_KEY: usize = 4096;
pub const MAX_ENTRIES_PER_FRAME: usize = 10_000;

/// Orders writes to one key: hybrid logical clock first, then the writer's
/// node (a hash of its id) to break ties deterministically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Version {
    pub hlc: u64,
    pub node: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub pool: String,
    pub key: Vec<u8>,
    /// The bound backend; `None` deletes the binding.
    pub backend: Option<String>,
    /// Wall-clock expiry, milliseconds since the Unix epoch.
    pub expires_unix_ms: u64,
    pub version: Version,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// First frame of a connection, from the dialer.
    Hello {
        protocol: u16,
        cluster: String,
        node: String,
    },
    /// A full snapshot follows (after a connect or an overflow).
    SyncBegin {
        seq: u64,
    },
    /// Entries: part of a snapshot between `SyncBegin` and `SyncEnd`, or
    /// live changes.
    Batch {
        seq: u64,
        entries: Vec<Entry>,
    },
    SyncEnd {
        seq: u64,
        entries: u64,
    },
    /// From the acceptor: everything up to `seq` is applied.
    Ack {
        seq: u64,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("frame field out of bounds: {0}")]
    OutOfBounds(&'static str),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// The frame with its length prefix.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, CodecError> {
    let body = bincode::serde::encode_to_vec(frame, config()).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(CodecError::TooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// The body length a prefix announces, if acceptable.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, CodecError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(CodecError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes and checks one frame body (without its prefix).
pub fn decode(body: &[u8]) -> Result<Frame, CodecError> {
    let (frame, used): (Frame, usize) =
        bincode::serde::decode_from_slice(body, config()).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Malformed(format!("{} trailing bytes", body.len() - used)));
    }
    check(&frame)?;
    Ok(frame)
}

fn check(frame: &Frame) -> Result<(), CodecError> {
    match frame {
        Frame::Hello { cluster, node, .. } => {
            if cluster.len() > MAX_NAME || node.len() > MAX_NAME {
                return Err(CodecError::OutOfBounds("hello names"));
            }
        }
        Frame::Batch { entries, .. } => {
            if entries.len() > MAX_ENTRIES_PER_FRAME {
                return Err(CodecError::OutOfBounds("entries per frame"));
            }
            for e in entries {
                if e.pool.len() > MAX_NAME
                    || e.key.len() > MAX_KEY
                    || e.backend.as_ref().is_some_and(|b| b.len() > MAX_NAME)
                {
                    return Err(CodecError::OutOfBounds("entry field"));
                }
            }
        }
        Frame::SyncBegin { .. } | Frame::SyncEnd { .. } | Frame::Ack { .. } => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u8) -> Entry {
        Entry {
            pool: "web".into(),
            key: vec![i; 8],
            backend: Some(format!("web-{i}")),
            expires_unix_ms: 1_800_000_000_000 + u64::from(i),
            version: Version { hlc: 7 << 16, node: 42 },
        }
    }

    fn body(bytes: &[u8]) -> &[u8] {
        &bytes[4..]
    }

    #[test]
    fn frames_round_trip() -> Result<(), CodecError> {
        let frames = [
            Frame::Hello {
                protocol: 1,
                cluster: "edge".into(),
                node: "lb1".into(),
            },
            Frame::SyncBegin { seq: 1 },
            Frame::Batch {
                seq: 2,
                entries: (0..50).map(entry).collect(),
            },
            Frame::Batch {
                seq: 3,
                entries: vec![Entry {
                    backend: None,
                    ..entry(1)
                }],
            },
            Frame::SyncEnd { seq: 4, entries: 50 },
            Frame::Ack { seq: 4 },
        ];
        for f in frames {
            let bytes = encode(&f)?;
            assert_eq!(frame_len(bytes[..4].try_into().unwrap_or([0; 4]))?, bytes.len() - 4);
            assert_eq!(decode(body(&bytes))?, f);
        }
        Ok(())
    }

    #[test]
    fn truncated_garbage_and_oversized_input_is_refused() -> Result<(), CodecError> {
        let bytes = encode(&Frame::Batch {
            seq: 9,
            entries: (0..20).map(entry).collect(),
        })?;
        for cut in [0, 1, 5, bytes.len() / 2, bytes.len() - 5] {
            assert!(
                decode(&body(&bytes)[..cut.min(bytes.len() - 4)]).is_err(),
                "cut at {cut}"
            );
        }
        let mut trailing = body(&bytes).to_vec();
        trailing.push(0);
        assert!(matches!(decode(&trailing), Err(CodecError::Malformed(_))));
        for junk in [
            &b"\xff\xff\xff\xff\xff\xff\xff\xff"[..],
            b"\x02\xff\xff\xff\xff\x0f",
            b"hello world",
        ] {
            assert!(decode(junk).is_err());
        }
        assert_eq!(
            frame_len(u32::MAX.to_le_bytes()),
            Err(CodecError::TooLarge(u32::MAX as usize))
        );
        // A length bomb: a Batch (variant 2, seq 1) whose entry vector
        // claims ~2^60 elements (varint marker 253 = u64 follows). The
        // decode limit refuses it instead of allocating.
        let bomb = [2u8, 1, 253, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(matches!(decode(&bomb), Err(CodecError::Malformed(_))));
        Ok(())
    }

    #[test]
    fn out_of_bounds_fields_are_refused() -> Result<(), CodecError> {
        let long_key = Frame::Batch {
            seq: 1,
            entries: vec![Entry {
                key: vec![0; MAX_KEY + 1],
                ..entry(1)
            }],
        };
        let bytes = encode(&long_key)?;
        assert_eq!(decode(body(&bytes)), Err(CodecError::OutOfBounds("entry field")));
        let long_name = Frame::Hello {
            protocol: 1,
            cluster: "x".repeat(MAX_NAME + 1),
            node: "lb1".into(),
        };
        assert_eq!(
            decode(body(&encode(&long_name)?)),
            Err(CodecError::OutOfBounds("hello names"))
        );
        Ok(())
    }

    #[test]
    fn versions_order_by_clock_then_node() {
        let a = Version { hlc: 5, node: 9 };
        let b = Version { hlc: 6, node: 1 };
        let c = Version { hlc: 6, node: 2 };
        assert!(a < b && b < c);
    }
}

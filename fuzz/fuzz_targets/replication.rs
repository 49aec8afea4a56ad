//! Replication frames from a peer: any bytes decode to a frame or an
//! error within the frame limit, and a frame that decodes encodes back
//! (length prefix, then body) to a body that decodes to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_proto::replication::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode(data) {
        let bytes = encode(&frame).expect("a decoded frame encodes");
        let (prefix, body) = bytes.split_at(4);
        assert_eq!(u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize, body.len());
        assert_eq!(decode(body).expect("an encoded frame decodes"), frame);
    }
});

//! Shoal's own HTTP/1.1 path on whatever clients and backends send: a
//! request head it takes must come out as exactly one well-formed head
//! for the backend, a response head as exactly one for the client (no
//! injected line survives the rewrite), and the chunked-body scanner
//! must find the same end however the bytes are split. The first input
//! byte chooses where to split for the scanner.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use shoal_node::dataplane::h1::chunked::ChunkedEnd;
use shoal_node::dataplane::h1::head::{
    ClientAddr, MAX_HEADERS, Parsed, header_slots, parse_request, parse_response, write_backend_request,
    write_client_response,
};

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };

    let mut slots = header_slots();
    if let Parsed::Complete(head) = parse_request(rest, &mut slots) {
        let mut out = Vec::new();
        write_backend_request(&head, &ClientAddr::new(IpAddr::from([10, 0, 0, 1])), "http", b"id", &mut out);
        assert_one_head(&out, true);
    }

    for is_head in [false, true] {
        let mut slots = header_slots();
        if let Ok(Some(resp)) = parse_response(rest, &mut slots, is_head) {
            let mut out = Vec::new();
            write_client_response(&resp, b"id", Some(b"s=1"), true, &mut out);
            assert_one_head(&out, false);
        }
    }

    let whole = ChunkedEnd::default().feed(rest);
    let at = usize::from(split).min(rest.len());
    let mut parts = ChunkedEnd::default();
    let pieced = match parts.feed(&rest[..at]) {
        Ok(Some(n)) => Ok(Some(n)),
        Ok(None) => parts.feed(&rest[at..]).map(|end| end.map(|n| at + n)),
        Err(e) => Err(e),
    };
    assert_eq!(whole, pieced, "split at {at}");
});

/// `out` parses as one complete head that ends where `out` ends.
fn assert_one_head(out: &[u8], request: bool) {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS + 8];
    let parsed = if request {
        httparse::Request::new(&mut slots).parse(out)
    } else {
        httparse::Response::new(&mut slots).parse(out)
    };
    match parsed {
        Ok(httparse::Status::Complete(len)) => assert_eq!(len, out.len(), "{:?}", String::from_utf8_lossy(out)),
        other => panic!("{other:?}: {:?}", String::from_utf8_lossy(out)),
    }
}

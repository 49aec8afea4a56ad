//! Sticky cookies as clients and backends send them: the request's Cookie
//! headers (the session key, `insert_cookie`'s backend token) and a
//! backend's Set-Cookie headers (`learn_cookie`). The first input byte
//! splits the rest into headers.
#![no_main]

use std::sync::Arc;

use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use shoal_node::affinity::Sticky;
use shoal_node::config::{StickyConfig, StickyMode};
use shoal_node::dataplane::http::cookie_value;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let mut request = HeaderMap::new();
    let mut response = HeaderMap::new();
    for part in rest.split(|&b| b == split) {
        if let Ok(v) = HeaderValue::from_bytes(part) {
            request.append(COOKIE, v.clone());
            response.append(SET_COOKIE, v);
        }
    }
    let backends: Vec<Arc<str>> = vec![Arc::from("b1"), Arc::from("b2")];
    for mode in [StickyMode::InsertCookie, StickyMode::LearnCookie] {
        let cfg = StickyConfig {
            mode,
            cookie: Some("sid".into()),
            header: None,
            ttl: shoal_node::config::Dur::from_secs(60),
            max_entries: 1000,
        };
        let sticky = Sticky::new(&cfg, "web", &backends);
        if let Some(value) = cookie_value(&request, "sid") {
            let _ = sticky.backend_for_token(value);
        }
        let _ = sticky.request_key(&request, std::net::Ipv4Addr::LOCALHOST.into());
        let _ = sticky.learned(&response);
    }
});

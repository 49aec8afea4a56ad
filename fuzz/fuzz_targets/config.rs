//! Config files: any text parses to a config or to located errors, never
//! a panic (paths resolve under a directory that does not exist, so file
//! references fail cleanly).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = shoal_node::config::parse(text, "fuzz.toml", Path::new("/nonexistent-shoal-fuzz")) {
            // Rendering the errors with their source lines must not panic.
            let _ = e.to_string();
        }
    }
});

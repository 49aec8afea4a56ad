//! Harness for black-box tests of the `shoal` binary: start nodes and demo
//! backends as real processes on loopback, talk to them over real sockets,
//! and poll for conditions with deadlines.

pub mod browser;
pub mod client;
pub mod config;
pub mod netns;
pub mod viplab;

pub mod procs;
pub mod wait;

pub use client::{HttpResponse, get, request, tcp_get};
pub use procs::{Backend, Node, free_port, free_ports, run_shoal, shoal_bin};
pub use wait::wait_until;

/// Whether this kernel lets the calling process create an io_uring (the
/// `[node] io = "io_uring"` tests need one); if not, prints a loud SKIP
/// line for `test`.
pub fn io_uring_available(test: &str) -> bool {
    match io_uring::IoUring::new(2) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("\n!!!!! SKIPPED {test} on io_uring: this kernel refuses io_uring ({e}) !!!!!\n");
            false
        }
    }
}

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

/// Whether this kernel lets the calling process create an io_uring with
/// the node's flags (single issuer, deferred task work: Linux 6.1+), as
/// the `[node] io = "io_uring"` tests need; if not, prints a loud SKIP
/// line for `test`.
pub fn io_uring_available(test: &str) -> bool {
    let mut ring = io_uring::IoUring::<io_uring::squeue::Entry>::builder();
    ring.setup_single_issuer().setup_defer_taskrun();
    match ring.build(2) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("\n!!!!! SKIPPED {test} on io_uring: this kernel refuses io_uring ({e}) !!!!!\n");
            false
        }
    }
}

/// Which `[node] io` a test runs its node with.
#[derive(Clone, Copy, Debug)]
pub enum Io {
    Epoll,
    IoUring,
}

impl Io {
    /// The value of `[node] io`, and of `node.tcp_io` in `/status`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Epoll => "epoll",
            Self::IoUring => "io_uring",
        }
    }

    /// The `[node]` line that asks for this interface.
    pub fn config(self) -> String {
        format!("io = \"{}\"", self.name())
    }
}

/// Each test (a function taking an [`Io`]) once per I/O interface, as
/// `epoll::test` and `io_uring::test`; io_uring's skip, loudly, where this
/// kernel refuses io_uring to the test itself.
#[macro_export]
macro_rules! on_both_io {
    ($($test:ident),* $(,)?) => {
        mod epoll {
            $(
                #[test]
                fn $test() -> anyhow::Result<()> {
                    super::$test($crate::Io::Epoll)
                }
            )*
        }
        mod io_uring {
            $(
                #[test]
                fn $test() -> anyhow::Result<()> {
                    if !$crate::io_uring_available(stringify!($test)) {
                        return Ok(());
                    }
                    super::$test($crate::Io::IoUring)
                }
            )*
        }
    };
}

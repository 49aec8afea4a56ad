//! `uring`: the same user-space copy loop as the forwarder yardstick (read
//! into a 16 KiB buffer, write it out of the other socket), but with its
//! system calls batched through io_uring. Each worker thread (one per core,
//! each with its own SO_REUSEPORT listener and ring) submits every recv and
//! send that fell due and waits for the next completions in a single
//! io_uring_enter, where an epoll loop makes one system call per read, per
//! write and per wait. The bytes are still copied through user space; what
//! changes is how often the proxy enters the kernel.
//!
//! This module is the crate's only unsafe code: io_uring's submission queue
//! takes raw pointers. Each buffer and socket an operation names lives in
//! its connection's slot, and a slot is freed only when none of its
//! operations is still in flight.

#![allow(unsafe_code)]

use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};

use anyhow::{Context, Result};
use io_uring::{IoUring, cqueue, opcode, squeue, types};

use crate::per_core;

/// A copy loop's buffer: HAProxy's, Shoal's and the forwarder's size.
const BUFFER: usize = 16 * 1024;

/// `user_data` of the listener's accept; every other operation's is
/// `slot << 2 | direction << 1 | is_send`.
const ACCEPT: u64 = u64::MAX;

/// How a worker drives its ring.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN.
    pub defer_taskrun: bool,
    /// Each pair's sockets registered with the ring, named by index
    /// (IOSQE_FIXED_FILE): no file lookup and reference count per
    /// operation.
    pub fixed_files: bool,
    /// Receives flagged IORING_RECVSEND_POLL_FIRST: a proxy's receive is
    /// queued right after its send, before the answer can be there, so the
    /// first attempt to read would find nothing.
    pub poll_first: bool,
}

/// Serves with a hand-driven ring per core.
pub fn serve(listen: SocketAddr, backends: Vec<SocketAddr>, options: Options) -> Result<()> {
    let what = format!("io_uring ({options:?})");
    per_core::serve(listen, backends, &what, move |l, b, i| {
        Worker::new(l, b, i, options)?.run()
    })
}

/// Registered descriptors per ring: two per pair.
const FIXED_FILES: u32 = 8192;

/// IORING_RECVSEND_POLL_FIRST (io_uring.h), a receive's `ioprio` flag.
const RECVSEND_POLL_FIRST: u16 = 1;

/// A client connection and its backend connection. Direction 0 reads the
/// client and writes the backend; direction 1 the other way.
struct Pair {
    /// `[client, backend]`.
    sockets: [TcpStream; 2],
    /// `buffers[d]` holds what direction `d` read and has yet to write.
    buffers: [Box<[u8]>; 2],
    /// Bytes read into `buffers[d]`, and how many of them are written.
    filled: [usize; 2],
    written: [usize; 2],
    /// Operations submitted and not yet completed: the slot must outlive them.
    in_flight: u32,
    /// Directions whose reading side ended (and whose end was passed on).
    ended: [bool; 2],
    /// An error on either socket: both are shut down, so that what is in
    /// flight completes, and the pair is dropped once nothing is.
    broken: bool,
}

struct Worker {
    ring: IoUring,
    listener: std::net::TcpListener,
    backends: Vec<SocketAddr>,
    turn: usize,
    pairs: Vec<Option<Pair>>,
    free: Vec<usize>,
    completions: Vec<(u64, i32)>,
    /// Submit after every this many completions handled, not only when
    /// the round's completions are all handled (URING_SUBMIT_EVERY; 0,
    /// the default: once per round).
    submit_every: usize,
    options: Options,
}

impl Worker {
    fn new(
        listener: std::net::TcpListener,
        backends: Vec<SocketAddr>,
        worker: usize,
        options: Options,
    ) -> Result<Worker> {
        // With deferred task work the ring is entered only by this thread,
        // and completions are wanted only when it asks for them: the kernel
        // can then run the work that completes them in that io_uring_enter
        // call instead of interrupting the thread.
        let mut builder = IoUring::builder();
        if options.defer_taskrun {
            builder.setup_single_issuer().setup_defer_taskrun();
        }
        let ring = builder
            .build(1024)
            .context("creating an io_uring (kernel 6.1 or later, io_uring not disabled)")?;
        if options.fixed_files {
            ring.submitter()
                .register_files_sparse(FIXED_FILES)
                .context("registering a sparse file table")?;
        }
        Ok(Worker {
            ring,
            listener,
            backends,
            turn: worker,
            pairs: Vec::new(),
            free: Vec::new(),
            completions: Vec::new(),
            submit_every: std::env::var("URING_SUBMIT_EVERY")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            options,
        })
    }

    fn run(mut self) -> Result<()> {
        self.accept()?;
        loop {
            match self.ring.submit_and_wait(1) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                entered => entered.context("io_uring_enter")?,
            };
            let mut completions = std::mem::take(&mut self.completions);
            completions.extend(
                self.ring
                    .completion()
                    .map(|c: cqueue::Entry| (c.user_data(), c.result())),
            );
            for (i, &(user_data, result)) in completions.iter().enumerate() {
                if user_data == ACCEPT {
                    self.accepted(result)?;
                } else {
                    self.completed(user_data, result)?;
                }
                if self.submit_every > 0 && (i + 1) % self.submit_every == 0 {
                    self.ring.submit().context("io_uring_enter")?;
                }
            }
            completions.clear();
            self.completions = completions;
        }
    }

    fn push(&mut self, entry: squeue::Entry) -> Result<()> {
        loop {
            // SAFETY: every entry pushed names either the listener (which
            // lives as long as the worker) or a pair's socket and buffer,
            // whose slot is kept until the entry's completion is seen.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit().context("io_uring_enter")?;
        }
    }

    fn accept(&mut self) -> Result<()> {
        let entry = opcode::Accept::new(
            types::Fd(self.listener.as_raw_fd()),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
        .flags(libc::SOCK_CLOEXEC)
        .build()
        .user_data(ACCEPT);
        self.push(entry)
    }

    fn accepted(&mut self, result: i32) -> Result<()> {
        self.accept()?;
        if result < 0 {
            eprintln!("kernel-relay: accept: {}", io::Error::from_raw_os_error(-result));
            return Ok(());
        }
        // SAFETY: the descriptor was just created by accept and nothing
        // else owns it.
        let client = unsafe { TcpStream::from_raw_fd(result) };
        let backend = self.backends[self.turn % self.backends.len()];
        self.turn += 1;
        // A blocking connect: on loopback it completes within the call, and
        // a keep-alive benchmark connects only at its start.
        let upstream = match TcpStream::connect(backend) {
            Ok(upstream) => upstream,
            Err(e) => {
                eprintln!("kernel-relay: {backend}: {e}");
                return Ok(());
            }
        };
        // A client gone already (reset) is that pair's end, not the worker's.
        if let Err(e) = client.set_nodelay(true).and_then(|()| upstream.set_nodelay(true)) {
            eprintln!("kernel-relay: TCP_NODELAY: {e}");
            return Ok(());
        }
        let pair = Pair {
            sockets: [client, upstream],
            buffers: [vec![0; BUFFER].into(), vec![0; BUFFER].into()],
            filled: [0; 2],
            written: [0; 2],
            in_flight: 0,
            ended: [false; 2],
            broken: false,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.pairs[slot] = Some(pair);
                slot
            }
            None => {
                self.pairs.push(Some(pair));
                self.pairs.len() - 1
            }
        };
        if self.options.fixed_files {
            let pair = self.pair(slot)?;
            let fds = [pair.sockets[0].as_raw_fd(), pair.sockets[1].as_raw_fd()];
            let registered = u32::try_from(2 * slot)
                .ok()
                .filter(|&i| i + 1 < FIXED_FILES)
                .context("more pairs than the file table holds")
                .and_then(|i| {
                    self.ring
                        .submitter()
                        .register_files_update(i, &fds)
                        .context("registering a pair's sockets")
                });
            if let Err(e) = registered {
                eprintln!("kernel-relay: {e:#}");
                self.pairs[slot] = None;
                self.free.push(slot);
                return Ok(());
            }
        }
        self.recv(slot, 0)?;
        self.recv(slot, 1)
    }

    fn pair(&mut self, slot: usize) -> Result<&mut Pair> {
        self.pairs
            .get_mut(slot)
            .and_then(Option::as_mut)
            .with_context(|| format!("a completion for the free slot {slot}"))
    }

    /// Reads what direction `d` brings into its empty buffer.
    fn recv(&mut self, slot: usize, d: usize) -> Result<()> {
        let pair = self.pair(slot)?;
        pair.in_flight += 1;
        let buffer = pair.buffers[d].as_mut_ptr();
        let fd = pair.sockets[d].as_raw_fd();
        let options = self.options;
        let recv = if options.fixed_files {
            opcode::Recv::new(types::Fixed((2 * slot + d) as u32), buffer, BUFFER as u32)
        } else {
            opcode::Recv::new(types::Fd(fd), buffer, BUFFER as u32)
        };
        let entry = recv
            .ioprio(if options.poll_first { RECVSEND_POLL_FIRST } else { 0 })
            .build()
            .user_data((slot as u64) << 2 | (d as u64) << 1);
        self.push(entry)
    }

    /// Writes what direction `d` read and has not written yet.
    fn send(&mut self, slot: usize, d: usize) -> Result<()> {
        let pair = self.pair(slot)?;
        pair.in_flight += 1;
        let (from, to) = (pair.written[d], pair.filled[d]);
        let rest = &pair.buffers[d][from..to];
        let (buffer, len) = (rest.as_ptr(), rest.len() as u32);
        let fd = pair.sockets[1 - d].as_raw_fd();
        let send = if self.options.fixed_files {
            opcode::Send::new(types::Fixed((2 * slot + 1 - d) as u32), buffer, len)
        } else {
            opcode::Send::new(types::Fd(fd), buffer, len)
        };
        let entry = send
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data((slot as u64) << 2 | (d as u64) << 1 | 1);
        self.push(entry)
    }

    fn completed(&mut self, user_data: u64, result: i32) -> Result<()> {
        let slot = (user_data >> 2) as usize;
        let d = ((user_data >> 1) & 1) as usize;
        let is_send = user_data & 1 == 1;
        let pair = self.pair(slot)?;
        pair.in_flight -= 1;
        if pair.broken {
            // What was in flight when the pair broke: nothing to go on with.
        } else if result < 0 {
            pair.broken = true;
            for socket in &pair.sockets {
                let _ = socket.shutdown(Shutdown::Both);
            }
        } else if is_send {
            pair.written[d] += result as usize;
            if pair.written[d] < pair.filled[d] {
                return self.send(slot, d);
            }
            return self.recv(slot, d);
        } else if result == 0 {
            pair.ended[d] = true;
            let _ = pair.sockets[1 - d].shutdown(Shutdown::Write);
        } else {
            pair.filled[d] = result as usize;
            pair.written[d] = 0;
            return self.send(slot, d);
        }
        let pair = self.pair(slot)?;
        if pair.in_flight == 0 && (pair.broken || pair.ended == [true; 2]) {
            if self.options.fixed_files {
                // The table holds the sockets open: let them go first.
                self.ring
                    .submitter()
                    .register_files_update((2 * slot) as u32, &[-1, -1])
                    .context("unregistering a pair's sockets")?;
            }
            self.pairs[slot] = None;
            self.free.push(slot);
        }
        Ok(())
    }
}

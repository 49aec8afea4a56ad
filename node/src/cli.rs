//! The `shoal` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::config::{self, ConfigError, Dur};
use crate::dataplane::listener;
use crate::demo;
use crate::server;

#[derive(Debug, Parser)]
#[command(name = "shoal", version, about = "A highly available load-balancer cluster")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node.
    Run {
        /// Config file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a config file: exit 0 if valid, 2 with the problems if not.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// A local node with three demo backends, printing URLs to try.
    Demo {
        /// Use 13 consecutive ports from this one instead of the defaults
        /// (8080-8083, 9901-9902, 9001-9003, and 7946-7947, 7956-7957 UDP).
        #[arg(long)]
        port_base: Option<u16>,
    },
    /// The cluster as a node sees it: peers, VIPs, backends × node health.
    Status {
        /// The node's admin address.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// Print the raw /status JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a cluster CA, node certificates and the gossip key into DIR
    /// (existing files are kept; the CA is reused).
    Certs {
        #[arg(long)]
        dir: PathBuf,
        /// Node ids, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
    },
    /// A demo HTTP backend that names itself in every response.
    Backend {
        /// Address to listen on.
        #[arg(long)]
        bind: SocketAddr,
        /// Name reported in the X-Backend header and the body.
        #[arg(long)]
        name: String,
        /// Delay before every response except /health, e.g. "20ms".
        #[arg(long, default_value = "0s")]
        delay: Dur,
        /// Answer every request except /health with this HTTP status.
        #[arg(long, value_parser = parse_status)]
        fail_with: Option<http::StatusCode>,
    },
    /// A bounded client load (for chaos runs): GETs at a fixed rate, each
    /// on a fresh connection, optionally carrying sticky sessions made
    /// first through `/session`; prints a JSON summary (sent, failed,
    /// longest outage, sessions kept).
    Probe {
        /// Address to send to, e.g. a VIP's listener.
        #[arg(long)]
        target: SocketAddr,
        /// Requests per second (1-1000).
        #[arg(long, default_value_t = 50)]
        rate: u32,
        #[arg(long, default_value = "10s")]
        duration: Dur,
        /// Sticky sessions to create and rotate through (learned `sid`
        /// cookies; the pool must be sticky by that cookie).
        #[arg(long, default_value_t = 0)]
        sessions: u32,
        /// Per request.
        #[arg(long, default_value = "1s")]
        timeout: Dur,
    },
}

/// Exit status for an invalid config, as `shoal check` documents.
pub const EXIT_INVALID_CONFIG: u8 = 2;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => {
            let cfg = match config::load(&config) {
                Ok(cfg) => cfg,
                Err(e) => return config_error(&e),
            };
            // The data plane runs on its own threads (node.workers); this
            // runtime carries the control plane: admin, gossip, health
            // checks, replication, VIPs.
            exit(runtime(Some(CONTROL_THREADS)).and_then(|rt| rt.block_on(server::run(cfg, config))))
        }
        Command::Certs { dir, nodes } => certs(&dir, &nodes),
        Command::Probe {
            target,
            rate,
            duration,
            sessions,
            timeout,
        } => exit(runtime(None).and_then(|rt| {
            let summary = rt.block_on(crate::probe::run(crate::probe::ProbeSpec {
                target,
                rate,
                duration: duration.get(),
                sessions,
                timeout: timeout.get(),
            }))?;
            println!("{}", serde_json::to_string(&summary)?);
            Ok(())
        })),
        Command::Status { admin, json } => exit(runtime(Some(1)).and_then(|rt| {
            let status = rt.block_on(fetch_status(&admin))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", crate::admin::table::render(&status));
            }
            Ok(())
        })),
        Command::Demo { port_base } => {
            let ports = match port_base {
                None => demo::DemoPorts::DEFAULT,
                Some(base) => match demo::DemoPorts::from_base(base) {
                    Some(p) => p,
                    None => {
                        eprintln!("error: --port-base {base} leaves no room for the demo's ports");
                        return ExitCode::from(EXIT_INVALID_CONFIG);
                    }
                },
            };
            exit(runtime(None).and_then(|rt| rt.block_on(demo::run(ports))))
        }
        Command::Backend {
            bind,
            name,
            delay,
            fail_with,
        } => exit(runtime(None).and_then(|rt| {
            rt.block_on(async {
                let sock = listener::bind(bind).with_context(|| format!("cannot listen on {bind}"))?;
                tracing::info!(%bind, %name, "demo backend listening");
                let cancel = tokio_util::sync::CancellationToken::new();
                let serve = demo::backend::serve(
                    sock,
                    demo::backend::DemoBackend {
                        name,
                        delay: delay.get(),
                        fail_with,
                    },
                    cancel.clone(),
                );
                tokio::select! {
                    () = serve => {}
                    r = tokio::signal::ctrl_c() => { r.context("waiting for Ctrl-C")?; cancel.cancel(); }
                }
                Ok(())
            })
        })),
    }
}

fn certs(dir: &std::path::Path, nodes: &[String]) -> ExitCode {
    let mut ids = Vec::new();
    for n in nodes {
        match shoal_proto::NodeId::new(n.clone()) {
            Ok(id) => ids.push(id),
            Err(e) => {
                eprintln!("error: {n:?}: {e}");
                return ExitCode::from(EXIT_INVALID_CONFIG);
            }
        }
    }
    match crate::certs::generate(dir, &ids) {
        Ok(out) => {
            for p in &out.created {
                println!("created {}", p.display());
            }
            for p in &out.kept {
                println!("kept    {}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// GETs `/status` from a node's admin address.
async fn fetch_status(admin: &str) -> Result<serde_json::Value> {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(admin))
        .await
        .with_context(|| format!("connecting to {admin} timed out"))?
        .with_context(|| format!("cannot connect to the admin address {admin} (is the node running? try --admin)"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::get("/status")
        .header(http::header::HOST, admin)
        .body(Empty::<bytes::Bytes>::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .context("the node did not answer within 5s")??;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    anyhow::ensure!(status.is_success(), "{admin} answered {status}");
    serde_json::from_slice(&body).context("the node's /status is not JSON")
}

fn parse_status(s: &str) -> Result<http::StatusCode, String> {
    s.parse::<u16>()
        .ok()
        .and_then(|c| http::StatusCode::from_u16(c).ok())
        .ok_or_else(|| format!("{s:?} is not an HTTP status code"))
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(cfg) => {
            let backends: usize = cfg.pools.iter().map(|p| p.backends.len()).sum();
            println!(
                "{}: OK ({} listeners, {} pools, {} backends)",
                path.display(),
                cfg.listeners.len(),
                cfg.pools.len(),
                backends
            );
            ExitCode::SUCCESS
        }
        Err(e) => config_error(&e),
    }
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("error: invalid config\n{e}");
    ExitCode::from(EXIT_INVALID_CONFIG)
}

fn exit(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Threads of a node's control-plane runtime.
const CONTROL_THREADS: usize = 2;

fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.enable_all().thread_name("shoal-control");
    if let Some(n) = workers {
        b.worker_threads(n);
    }
    b.build().context("starting the async runtime")
}

/// Logs go to stderr; `SHOAL_LOG` takes a tracing filter (default "info").
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

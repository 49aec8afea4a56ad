//! `GET /metrics`: the node's counters in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::balance::Candidate;
use crate::dataplane::stats::HistogramCounts;
use crate::server::NodeState;

/// Label values are our own names (restricted charset) or addresses; still,
/// escape as the format requires.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn help(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", esc(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// `_bucket`, `_sum` and `_count` samples of one histogram.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramCounts) {
        let bucket = format!("{name}_bucket");
        for (le, n) in h.cumulative() {
            let le = if le.is_infinite() {
                "+Inf".to_string()
            } else {
                le.to_string()
            };
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, n);
        }
        self.sample(&format!("{name}_sum"), labels, h.sum_seconds());
        self.sample(&format!("{name}_count"), labels, h.count());
    }
}

pub fn render(state: &NodeState) -> String {
    let mut o = Out(String::with_capacity(8192));
    let current = state.current.load_full();
    let view = state.cluster.as_ref().map(|c| c.view()).unwrap_or_default();

    o.help("shoal_uptime_seconds", "gauge", "Seconds since the node started.");
    o.sample("shoal_uptime_seconds", &[], state.started.elapsed().as_secs());

    // Summed over the workers once per listener.
    let listeners: Vec<_> = current.listeners.iter().map(|l| (l, l.stats.totals())).collect();
    o.help(
        "shoal_listener_connections_total",
        "counter",
        "Client connections accepted.",
    );
    for (l, t) in &listeners {
        o.sample("shoal_listener_connections_total", &[("listener", &l.name)], t.accepted);
    }
    o.help(
        "shoal_listener_active_connections",
        "gauge",
        "Client connections open now.",
    );
    for (l, t) in &listeners {
        o.sample("shoal_listener_active_connections", &[("listener", &l.name)], t.active);
    }
    o.help("shoal_requests_total", "counter", "HTTP requests received.");
    for (l, t) in &listeners {
        o.sample("shoal_requests_total", &[("listener", &l.name)], t.requests);
    }
    o.help(
        "shoal_responses_total",
        "counter",
        "HTTP responses sent, by status class.",
    );
    for (l, t) in &listeners {
        for (class, n) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().zip(t.responses) {
            o.sample("shoal_responses_total", &[("listener", &l.name), ("class", class)], n);
        }
    }
    o.help(
        "shoal_rate_limited_total",
        "counter",
        "Requests or connections refused by the rate limit.",
    );
    for (l, t) in &listeners {
        o.sample("shoal_rate_limited_total", &[("listener", &l.name)], t.rate_limited);
    }
    o.help(
        "shoal_refused_connections_total",
        "counter",
        "Connections closed unserved because the listener was at max_connections.",
    );
    for (l, t) in &listeners {
        o.sample("shoal_refused_connections_total", &[("listener", &l.name)], t.refused);
    }
    o.help(
        "shoal_unserved_connections_total",
        "counter",
        "TCP connections closed for want of a backend.",
    );
    for (l, t) in &listeners {
        o.sample("shoal_unserved_connections_total", &[("listener", &l.name)], t.unserved);
    }
    o.help(
        "shoal_request_duration_seconds",
        "histogram",
        "Time from a request's arrival to its response headers.",
    );
    for (l, t) in &listeners {
        o.histogram("shoal_request_duration_seconds", &[("listener", &l.name)], &t.latency);
    }

    type Getter = fn(&crate::pool::Backend) -> u64;
    let per_backend: [(&str, &str, &str, Getter); 9] = [
        (
            "shoal_backend_active_connections",
            "gauge",
            "Connections or in-flight requests on this node.",
            |b| b.active(),
        ),
        (
            "shoal_backend_cluster_connections",
            "gauge",
            "The same, summed over live cluster nodes.",
            |b| b.active().saturating_add(b.cluster_load()),
        ),
        (
            "shoal_backend_healthy",
            "gauge",
            "1 if this node's health checks pass.",
            |b| u64::from(b.is_healthy()),
        ),
        ("shoal_backend_usable", "gauge", "1 if eligible for new traffic.", |b| {
            u64::from(b.usable())
        }),
        (
            "shoal_backend_ejected",
            "gauge",
            "1 while ejected by passive health.",
            |b| u64::from(b.is_ejected()),
        ),
        (
            "shoal_backend_requests_total",
            "counter",
            "Requests or connections sent.",
            |b| b.sent(),
        ),
        (
            "shoal_backend_connect_failures_total",
            "counter",
            "Failed connection attempts.",
            |b| b.counters.connect_failures.load(Ordering::Relaxed),
        ),
        (
            "shoal_backend_failures_total",
            "counter",
            "Requests failed after connecting.",
            |b| b.counters.failures.load(Ordering::Relaxed),
        ),
        (
            "shoal_backend_rejected_total",
            "counter",
            "Refused at the connection limits.",
            |b| b.counters.rejected.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, get) in per_backend {
        o.help(name, kind, help);
        for pool in current.pools() {
            for b in pool.backends() {
                o.sample(name, &[("pool", &pool.name), ("backend", &b.name)], get(b));
            }
        }
    }
    o.help(
        "shoal_pool_retries_total",
        "counter",
        "Retries granted, and denied by the retry budget.",
    );
    for pool in current.pools() {
        o.sample(
            "shoal_pool_retries_total",
            &[("pool", &pool.name), ("result", "granted")],
            pool.budget.granted.load(Ordering::Relaxed),
        );
        o.sample(
            "shoal_pool_retries_total",
            &[("pool", &pool.name), ("result", "denied")],
            pool.budget.denied.load(Ordering::Relaxed),
        );
    }
    o.help("shoal_sticky_entries", "gauge", "Sticky bindings in the table.");
    o.sample("shoal_sticky_entries", &[], state.affinity.len());
    o.help(
        "shoal_replication_entries_total",
        "counter",
        "Sticky entries sent, received, applied, ignored and evicted.",
    );
    let t = &state.affinity.stats;
    let r = state.replication.as_deref();
    let rs = |f: fn(&crate::affinity::replication::ReplicationStats) -> &std::sync::atomic::AtomicU64| {
        r.map_or(0, |r| f(&r.stats).load(Ordering::Relaxed))
    };
    for (what, n) in [
        ("sent", rs(|s| &s.entries_sent)),
        ("received", rs(|s| &s.entries_received)),
        ("applied", t.applied.load(Ordering::Relaxed)),
        ("ignored", t.ignored.load(Ordering::Relaxed)),
        ("evicted", t.evicted.load(Ordering::Relaxed)),
    ] {
        o.sample("shoal_replication_entries_total", &[("result", what)], n);
    }
    o.help(
        "shoal_replication_rejected_total",
        "counter",
        "Replication connections or frames refused.",
    );
    o.sample("shoal_replication_rejected_total", &[], rs(|s| &s.rejected));
    o.help(
        "shoal_replication_resyncs_total",
        "counter",
        "Full resyncs after a peer fell behind.",
    );
    o.sample("shoal_replication_resyncs_total", &[], rs(|s| &s.resyncs));
    if let Some(r) = r {
        o.help(
            "shoal_replication_delay_seconds",
            "histogram",
            "From a live sticky write on a peer to its application here.",
        );
        o.histogram("shoal_replication_delay_seconds", &[], &r.stats.delay.counts());
        o.help(
            "shoal_replication_lag_seconds",
            "gauge",
            "Age of the oldest unacknowledged batch, per peer.",
        );
        for (peer, link) in r.links() {
            o.sample(
                "shoal_replication_lag_seconds",
                &[("peer", &peer)],
                link.lag.as_secs_f64(),
            );
        }
    }
    if let Some(c) = &state.cluster {
        o.help("shoal_peers", "gauge", "Other cluster nodes, by state.");
        let alive = view.alive_peers();
        o.sample("shoal_peers", &[("state", "alive")], alive);
        o.sample("shoal_peers", &[("state", "dead")], view.peers.len() - alive);
        o.help(
            "shoal_gossip_messages_total",
            "counter",
            "Gossip datagrams sent, received, and rejected (bad tag).",
        );
        for (dir, n) in [
            ("sent", &c.stats.sent),
            ("received", &c.stats.received),
            ("rejected", &c.stats.rejected),
        ] {
            o.sample(
                "shoal_gossip_messages_total",
                &[("direction", dir)],
                n.load(Ordering::Relaxed),
            );
        }
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut o = Out(String::new());
        o.sample("m", &[("a", "x\"y\\z")], 1);
        assert_eq!(o.0, "m{a=\"x\\\"y\\\\z\"} 1\n");
    }
}

//! Monitoring against real processes: `[node] metrics_listen` scraped over
//! HTTP from a primary with a sync and an async peer, linted by promtool,
//! its values checked against status and against what was written; the
//! alert rules and the Grafana dashboard checked to name only metrics the
//! daemon exports; `driftless events` following the same run; and a real
//! Prometheus that scrapes a primary and its DR peer, sees the lag rise
//! when the DR link is cut, and fires the RPO alert, which resolves once
//! the link returns.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::cluster::{free_port, wait_caught_up, with_peer, Site, MIB, STOP_LIMIT};
use harness::process::{require_tool, run, Proc};
use harness::proxy::{Protocol, ProxyProc};
use node::config::NbdSection;
use replication::{PeerMode, TransportKind};

/// `GET path` on `addr` (HTTP/1.0): (status line, body).
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

fn scrape(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    body
}

/// Series of a scrape: `name{labels}` → value.
fn series(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("name value");
            (k.to_owned(), v.parse().expect("a number"))
        })
        .collect()
}

fn value(s: &BTreeMap<String, f64>, key: &str) -> f64 {
    *s.get(key)
        .unwrap_or_else(|| panic!("no series {key} in {:#?}", s.keys().collect::<Vec<_>>()))
}

/// The sample names a scrape exports: every series' name (histograms as
/// `_bucket`, `_sum`, `_count`; counters with `_total`).
fn names(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            l.split(['{', ' '])
                .next()
                .expect("a series name")
                .to_owned()
        })
        .collect()
}

fn metrics_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()))
}

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// Every `driftless_…` metric name in a PromQL expression (and `up`).
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let word = &expr[start..i];
            // Label names never start with driftless_; functions and
            // keywords neither.
            if word.starts_with("driftless_") {
                out.push(word.to_owned());
            }
        } else if c == b'"' {
            // Skip a string literal (label values, legend text).
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += 1;
            }
            i += 1;
        } else {
            i += 1;
        }
    }
    out
}

/// The `expr` strings anywhere in a JSON document.
fn exprs_in_json(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    ("query", serde_json::Value::String(q)) if q.contains("driftless_") => {
                        out.push(q.clone())
                    }
                    _ => exprs_in_json(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs_in_json(v, out)),
        _ => {}
    }
}

/// `expr:` lines of a rules file (single-line or folded block scalars).
fn exprs_in_rules(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("expr:") {
            let indent = line.len() - t.len();
            let mut expr = rest.trim().trim_start_matches(['|', '>', '-']).to_owned();
            while let Some(next) = lines.peek() {
                let nt = next.trim_start();
                if nt.is_empty() || next.len() - nt.len() > indent {
                    expr.push(' ');
                    expr += nt;
                    lines.next();
                } else {
                    break;
                }
            }
            out.push(expr);
        }
    }
    out
}

fn qemu_io(uri: &str, cmds: &[&str]) -> std::process::Output {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    run(c.arg(uri), Duration::from_secs(60)).unwrap()
}

/// `promtool check metrics` (the linter Prometheus ships) over a scrape.
/// It reads the classic text format, where a counter's HELP names its
/// `_total` sample; OpenMetrics (what the daemon serves, and what
/// Prometheus asks for) names the family without `_total`. That finding,
/// and only that one, is accepted, and only where the family's own HELP and
/// `TYPE … counter` lines are there.
fn promtool_check_metrics(site: &Site, body: &str) {
    let file = site.path("scrape.txt");
    std::fs::write(&file, body).unwrap();
    let out = run(
        Command::new("sh")
            .arg("-c")
            .arg(format!("promtool check metrics < {}", file.display())),
        Duration::from_secs(30),
    )
    .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let findings: Vec<&str> = said.lines().filter(|l| !l.trim().is_empty()).collect();
    for finding in &findings {
        let family = finding
            .strip_suffix(" no help text")
            .and_then(|n| n.strip_suffix("_total"))
            .unwrap_or_else(|| panic!("promtool check metrics: {finding}\n{said}\n{body}"));
        assert!(
            body.contains(&format!("# HELP {family} "))
                && body.contains(&format!("# TYPE {family} counter\n")),
            "{finding}: no HELP and TYPE counter for {family}\n{body}"
        );
    }
    assert_eq!(
        out.status.success(),
        findings.is_empty(),
        "promtool check metrics: {said}"
    );
}

#[test]
fn scrapes_rules_dashboard_and_events_of_a_primary_with_sync_and_async_peers() {
    require_tool("promtool");
    require_tool("qemu-io");
    let site = Site::temp().unwrap();
    let size = 64 * MIB;
    let (metro_metrics, dr_metrics, primary_metrics) =
        (metrics_addr(), metrics_addr(), metrics_addr());
    let mut metro_v = site.secondary_volume("metro", size, TransportKind::Tcp);
    // A secondary's export answers writes with EPERM: an NBD error to count.
    metro_v.nbd = Some(NbdSection {
        unix: Some(site.nbd_socket("metro")),
        listen: None,
        export: None,
    });
    let mut metro_cfg = site.config("metro", metro_v).unwrap();
    metro_cfg.node.metrics_listen = Some(metro_metrics);
    let metro = site.start(&metro_cfg).unwrap();
    let mut dr_cfg = site
        .config("dr", site.secondary_volume("dr", size, TransportKind::Quic))
        .unwrap();
    dr_cfg.node.metrics_listen = Some(dr_metrics);
    let mut dr = site.start(&dr_cfg).unwrap();
    let mut v = with_peer(
        site.primary_volume("primary", size),
        "metro",
        PeerMode::Sync,
        TransportKind::Tcp,
        metro.tcp.expect("metro listens on TCP"),
    );
    v = with_peer(
        v,
        "dr",
        PeerMode::Async,
        TransportKind::Quic,
        dr.quic.expect("dr listens on QUIC"),
    );
    v.peers[1].rpo_target = Some(Duration::from_secs(1));
    let mut cfg = site.config("primary", v).unwrap();
    cfg.node.metrics_listen = Some(primary_metrics);
    let mut primary = site.start(&cfg).unwrap();
    let limit = Duration::from_secs(60);
    wait_caught_up(&primary, &["metro", "dr"], &[&metro, &dr], limit).unwrap();

    let events_out = site.path("events.jsonl");
    let mut events = Proc::spawn(
        {
            let mut c = Command::new(harness::driftless_bin());
            c.args(["events", "--json", "--socket"])
                .arg(site.control("primary"));
            c
        },
        &site.dir,
        "events",
    )
    .unwrap();

    let uri = primary.nbd_uri.clone().unwrap();
    let out = qemu_io(&uri, &["write -P 7 0 1M", "flush"]);
    assert!(out.status.success(), "qemu-io: {out:?}");
    wait_caught_up(&primary, &["metro", "dr"], &[&metro, &dr], limit).unwrap();

    let body = scrape(primary_metrics);
    promtool_check_metrics(&site, &body);
    let s = series(&body);
    let dr_l = r#"volume="vol0",peer="dr",mode="async",transport="quic""#;
    let metro_l = r#"volume="vol0",peer="metro",mode="sync",transport="tcp""#;
    let vol = r#"volume="vol0""#;
    for (key, want) in [
        (
            format!("driftless_volume_role{{{vol},state=\"primary\"}}"),
            1.0,
        ),
        (
            format!("driftless_volume_role{{{vol},state=\"secondary\"}}"),
            0.0,
        ),
        (format!("driftless_volume_failed{{{vol}}}"), 0.0),
        (
            format!("driftless_peer_connection_state{{{dr_l},state=\"connected\"}}"),
            1.0,
        ),
        (
            format!("driftless_peer_disk_state{{{dr_l},state=\"up-to-date\"}}"),
            1.0,
        ),
        (
            format!("driftless_peer_sync_gate{{{metro_l},state=\"in-sync\"}}"),
            1.0,
        ),
        (format!("driftless_peer_lag_records{{{dr_l}}}"), 0.0),
        (format!("driftless_peer_rpo_target_seconds{{{dr_l}}}"), 1.0),
        (format!("driftless_peer_rpo_breached{{{dr_l}}}"), 0.0),
        (
            format!("driftless_peer_job_running{{{dr_l},kind=\"resync\"}}"),
            0.0,
        ),
        (format!("driftless_peer_reconnects_total{{{dr_l}}}"), 0.0),
        (
            format!("driftless_peer_refusals_total{{{dr_l},reason=\"tls\"}}"),
            0.0,
        ),
        // Exactly what qemu-io wrote.
        (
            format!("driftless_nbd_request_bytes_total{{{vol},command=\"write\"}}"),
            MIB as f64,
        ),
    ] {
        assert_eq!(value(&s, &key), want, "{key}\n{body}");
    }
    assert!(
        !s.keys()
            .any(|k| k.starts_with("driftless_peer_rpo_target_seconds") && k.contains("metro")),
        "metro has no rpo_target, so no series"
    );
    let st = primary.volume().unwrap();
    assert_eq!(
        value(
            &s,
            &format!("driftless_volume_lsn{{{vol},kind=\"written\"}}")
        ),
        st.written_lsn as f64
    );
    for peer in [dr_l, metro_l] {
        let shipped = value(&s, &format!("driftless_peer_shipped_bytes_total{{{peer}}}"));
        assert!(shipped >= MIB as f64, "{peer}: shipped {shipped}");
    }
    for key in [
        format!("driftless_nbd_request_seconds_count{{{vol},command=\"write\"}}"),
        format!("driftless_nbd_request_seconds_count{{{vol},command=\"flush\"}}"),
        format!("driftless_journal_fdatasync_seconds_count{{{vol}}}"),
        format!("driftless_journal_batch_records_count{{{vol}}}"),
        format!("driftless_journal_written_bytes_total{{{vol}}}"),
    ] {
        assert!(value(&s, &key) >= 1.0, "{key}\n{body}");
    }
    let age = value(
        &s,
        &format!("driftless_journal_checkpoint_age_seconds{{{vol}}}"),
    );
    assert!((0.0..60.0).contains(&age), "checkpoint age {age}");

    // A write to the secondary's export is refused and counted there.
    let metro_uri = format!(
        "nbd+unix:///vol0?socket={}",
        site.nbd_socket("metro").display()
    );
    let out = qemu_io(&metro_uri, &["write -P 1 0 4k"]);
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("Operation not permitted"), "{said}");
    let metro_body = scrape(metro_metrics);
    let m = series(&metro_body);
    assert_eq!(
        value(
            &m,
            &format!("driftless_nbd_errors_total{{{vol},command=\"write\",error=\"eperm\"}}")
        ),
        1.0,
        "{metro_body}"
    );
    let dr_body = scrape(dr_metrics);
    promtool_check_metrics(&site, &dr_body);
    let d = series(&dr_body);
    assert_eq!(
        value(
            &d,
            &format!("driftless_volume_role{{{vol},state=\"secondary\"}}")
        ),
        1.0
    );
    assert_eq!(
        value(
            &d,
            r#"driftless_upstream_connected{volume="vol0",primary="primary"}"#
        ),
        1.0
    );
    assert!(
        value(
            &d,
            &format!("driftless_upstream_received_bytes_total{{{vol}}}")
        ) >= MIB as f64
    );
    assert_eq!(get(primary_metrics, "/other").0, "HTTP/1.1 404 Not Found");

    // Every metric the alert rules and the dashboard query is exported by
    // a primary or a secondary.
    let mut exported = names(&body);
    exported.extend(names(&metro_body));
    exported.extend(names(&dr_body));
    let rules = std::fs::read_to_string(deploy("prometheus/driftless.rules.yml")).unwrap();
    let rule_exprs = exprs_in_rules(&rules);
    assert!(rule_exprs.len() >= 10, "{rule_exprs:?}");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/driftless.json")).unwrap())
            .unwrap();
    let mut panel_exprs = Vec::new();
    exprs_in_json(&dashboard, &mut panel_exprs);
    assert!(panel_exprs.len() >= 10, "{panel_exprs:?}");
    let mut queried = BTreeSet::new();
    for (what, expr) in rule_exprs
        .iter()
        .map(|e| ("rule", e))
        .chain(panel_exprs.iter().map(|e| ("dashboard", e)))
    {
        for name in metrics_in(expr) {
            assert!(
                exported.contains(&name),
                "{what} query names {name}, which no node exports: {expr}\nexported: {exported:#?}"
            );
            queried.insert(name);
        }
    }
    eprintln!(
        "{} rule and {} dashboard queries name {} metrics, all exported: {queried:?}",
        rule_exprs.len(),
        panel_exprs.len(),
        queried.len()
    );
    for lag in [
        "driftless_peer_lag_seconds",
        "driftless_peer_rpo_target_seconds",
    ] {
        assert!(queried.contains(lag), "the dashboard shows {lag}");
    }

    // The DR site goes away; writes go on: the lag grows past the RPO.
    dr.kill9();
    let out = qemu_io(&uri, &["write -P 8 1M 1M", "flush"]);
    assert!(out.status.success(), "qemu-io: {out:?}");
    let breached = |s: &BTreeMap<String, f64>| {
        s.get(&format!(
            "driftless_peer_connection_state{{{dr_l},state=\"connected\"}}"
        )) == Some(&0.0)
            && s.get(&format!("driftless_peer_lag_records{{{dr_l}}}"))
                .is_some_and(|v| *v > 0.0)
            && s.get(&format!("driftless_peer_rpo_breached{{{dr_l}}}")) == Some(&1.0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !breached(&series(&scrape(primary_metrics))) {
        assert!(
            Instant::now() < deadline,
            "the scrape never showed dr disconnected and past its RPO: {}",
            scrape(primary_metrics)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let st = primary.volume().unwrap();
    let p = st.peer("dr").unwrap();
    assert!(p.rpo_breached && p.lag_seconds > 1.0, "{p:?}");
    let s = series(&scrape(primary_metrics));
    assert_eq!(
        value(
            &s,
            &format!("driftless_nbd_request_bytes_total{{{vol},command=\"write\"}}")
        ),
        2.0 * MIB as f64
    );
    let table = run(
        Command::new(harness::driftless_bin())
            .args(["status", "--socket"])
            .arg(site.control("primary")),
        Duration::from_secs(30),
    )
    .unwrap();
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(
        table.contains("1s BREACHED") && table.contains("RPO BREACHED: lag"),
        "{table}"
    );

    // A clean stop ends the event stream with node-stopping, exit 0.
    primary.stop().unwrap();
    let exit = events.terminate(STOP_LIMIT).ok();
    let text = std::fs::read_to_string(&events.stdout).unwrap();
    std::fs::write(&events_out, &text).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let has = |f: &dyn Fn(&serde_json::Value) -> bool| lines.iter().any(f);
    assert!(
        has(&|e| e["type"] == "exists"
            && e["what"] == "peer-connection"
            && e["peer"] == "dr"
            && e["connection"] == "connected"),
        "{text}"
    );
    assert!(
        has(&|e| e["type"] == "change"
            && e["what"] == "peer-connection"
            && e["peer"] == "dr"
            && e["connection"] != "connected"),
        "{text}"
    );
    assert!(
        has(&|e| e["what"] == "rpo" && e["peer"] == "dr" && e["breached"] == true),
        "{text}"
    );
    assert_eq!(
        lines.last().map(|e| e["what"].clone()),
        Some("node-stopping".into()),
        "{text}"
    );
    assert!(
        exit.is_some_and(|e| e.success()),
        "driftless events: {exit:?}\n{}",
        events.log_tail(10)
    );
}

/// Percent-encodes a query parameter.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A `prometheus` server on loopback with its own storage.
struct Prometheus {
    proc: Proc,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(site: &Site, targets: &[SocketAddr]) -> Prometheus {
        let addr = metrics_addr();
        let rules = deploy("prometheus/driftless.rules.yml")
            .canonicalize()
            .unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = site.path("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - '{}'\n\
                 scrape_configs:\n  - job_name: driftless\n    static_configs:\n      - targets: [{}]\n",
                rules.display(),
                targets.join(", ")
            ),
        )
        .unwrap();
        let mut c = Command::new("prometheus");
        c.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                site.path("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"));
        let proc = Proc::spawn(c, &site.dir, "prometheus").unwrap();
        let p = Prometheus { proc, addr };
        p.wait("Prometheus ready", Duration::from_secs(60), || {
            std::net::TcpStream::connect(addr).is_ok() && get(addr, "/-/ready").0.contains("200")
        });
        p
    }

    /// Polls `cond` every 250 ms until it holds.
    fn wait(&self, what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}\n{}",
                self.proc.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn api(&self, path: &str) -> serde_json::Value {
        let (status, body) = get(self.addr, path);
        assert!(status.contains("200"), "{path}: {status}\n{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{body}");
        v["data"].clone()
    }

    /// An instant query's values.
    fn query(&self, q: &str) -> Vec<f64> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(q)));
        data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["value"][1].as_str().unwrap().parse().unwrap())
            .collect()
    }

    /// The state of alert `name` (pending, firing), if it is active.
    fn alert(&self, name: &str) -> Option<(String, serde_json::Value)> {
        let data = self.api("/api/v1/alerts");
        data["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["labels"]["alertname"] == name)
            .map(|a| (a["state"].as_str().unwrap().to_owned(), a["labels"].clone()))
    }
}

#[test]
fn prometheus_sees_the_lag_rise_and_the_rpo_alert_fire_and_resolve() {
    require_tool("prometheus");
    require_tool("qemu-io");
    let site = Site::temp().unwrap();
    let size = 64 * MIB;
    let quick = |mut v: node::config::VolumeSection| {
        v.keepalive_interval = Duration::from_millis(200);
        v.peer_timeout = Duration::from_secs(1);
        v
    };
    let dr_metrics = metrics_addr();
    let mut dr_cfg = site
        .config(
            "dr",
            quick(site.secondary_volume("dr", size, TransportKind::Quic)),
        )
        .unwrap();
    dr_cfg.node.metrics_listen = Some(dr_metrics);
    dr_cfg.quic = harness::cluster::quick_quic();
    let dr = site.start(&dr_cfg).unwrap();
    let proxy = ProxyProc::start(&site.dir, Protocol::Udp, dr.quic.unwrap(), None).unwrap();
    let mut v = with_peer(
        quick(site.primary_volume("primary", size)),
        "dr",
        PeerMode::Async,
        TransportKind::Quic,
        proxy.addr,
    );
    v.peers[0].rpo_target = Some(Duration::from_secs(2));
    let primary_metrics = metrics_addr();
    let mut cfg = site.config("primary", v).unwrap();
    cfg.node.metrics_listen = Some(primary_metrics);
    cfg.quic = harness::cluster::quick_quic();
    let primary = site.start(&cfg).unwrap();
    wait_caught_up(&primary, &["dr"], &[&dr], Duration::from_secs(60)).unwrap();

    let prom = Prometheus::start(&site, &[primary_metrics, dr_metrics]);
    prom.wait("both targets up", Duration::from_secs(30), || {
        prom.query(r#"up{job="driftless"} == 1"#).len() == 2
    });
    let lag = r#"driftless_peer_lag_seconds{volume="vol0",peer="dr"}"#;
    prom.wait("a lag sample", Duration::from_secs(30), || {
        prom.query(lag) == [0.0]
    });
    assert!(prom.alert("DriftlessRpoBreached").is_none());

    let cut_at = Instant::now();
    proxy.cut();
    let uri = primary.nbd_uri.clone().unwrap();
    let out = qemu_io(&uri, &["write -P 9 0 1M", "flush"]);
    assert!(out.status.success(), "qemu-io: {out:?}");
    prom.wait(
        "the lag past the 2 s target",
        Duration::from_secs(30),
        || prom.query(lag).first().is_some_and(|l| *l > 2.0),
    );
    let mut pending_seen = false;
    prom.wait(
        "the RPO alert firing",
        Duration::from_secs(60),
        || match prom.alert("DriftlessRpoBreached") {
            Some((state, labels)) => {
                assert_eq!(labels["peer"], "dr", "{labels}");
                assert_eq!(labels["volume"], "vol0", "{labels}");
                pending_seen |= state == "pending";
                state == "firing"
            }
            None => false,
        },
    );
    let fired_after = cut_at.elapsed();
    assert!(
        pending_seen,
        "the alert went firing without being pending first"
    );
    // `for: 15s` after the lag passed 2 s.
    assert!(
        fired_after >= Duration::from_secs(15),
        "fired after {fired_after:?}"
    );

    proxy.restore();
    prom.wait("the RPO alert resolved", Duration::from_secs(90), || {
        prom.alert("DriftlessRpoBreached").is_none()
    });
    assert_eq!(
        prom.query(r#"driftless_peer_rpo_breached{peer="dr"}"#),
        [0.0]
    );
    let st = primary.volume().unwrap();
    let p = st.peer("dr").unwrap();
    assert!(!p.rpo_breached && p.reconnects >= 1, "{p:?}");
    eprintln!(
        "RPO alert: firing {:.1} s after the cut, resolved {:.1} s after it",
        fired_after.as_secs_f64(),
        cut_at.elapsed().as_secs_f64()
    );
}

#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    require_tool("promtool");
    let dir = deploy("prometheus");
    for args in [
        vec!["check", "rules", "driftless.rules.yml"],
        vec!["test", "rules", "driftless.rules.test.yml"],
        vec!["check", "config", "prometheus.yml"],
    ] {
        let out = run(
            Command::new("promtool").args(&args).current_dir(&dir),
            Duration::from_secs(60),
        )
        .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {}: {text}", args.join(" "));
        assert!(
            text.contains("SUCCESS"),
            "promtool {}: {text}",
            args.join(" ")
        );
    }
}

//! `[node] metrics_listen`: a real primary and DR peer scraped over HTTP;
//! the text is checked by promtool and its values against the nodes' own
//! status, before and after the DR link is lost.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use harness::cluster::{free_port, wait_caught_up, NodeProc, Site, MIB};
use harness::process::{require_tool, run};
use replication::{PeerMode, TransportKind};

/// `GET /metrics` on `addr`: (status line, body).
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to metrics_listen");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
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

fn metrics_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()))
}

#[test]
fn scrape_shows_lag_and_states_checked_by_promtool() {
    require_tool("promtool");
    require_tool("qemu-io");
    let site = Site::temp().unwrap();
    let size = 64 * MIB;
    let dr_metrics = metrics_addr();
    let mut dr_cfg = site
        .config("dr", site.secondary_volume("dr", size, TransportKind::Quic))
        .unwrap();
    dr_cfg.node.metrics_listen = Some(dr_metrics);
    let mut dr = site.start(&dr_cfg).unwrap();
    let primary_metrics = metrics_addr();
    let v = harness::cluster::with_peer(
        site.primary_volume("primary", size),
        "dr",
        PeerMode::Async,
        TransportKind::Quic,
        dr.quic.expect("dr listens on QUIC"),
    );
    let mut cfg = site.config("primary", v).unwrap();
    cfg.node.metrics_listen = Some(primary_metrics);
    let primary = site.start(&cfg).unwrap();
    wait_caught_up(&primary, &["dr"], &[&dr], Duration::from_secs(60)).unwrap();

    let (status, body) = get(primary_metrics, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    // promtool reads the text as Prometheus would and lints it.
    let file = site.path("scrape.txt");
    std::fs::write(&file, &body).unwrap();
    let out = run(
        Command::new("sh")
            .arg("-c")
            .arg(format!("promtool check metrics < {}", file.display())),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let peer = r#"volume="vol0",peer="dr",mode="async",transport="quic""#;
    let s = series(&body);
    assert_eq!(
        value(
            &s,
            r#"driftless_volume_role{volume="vol0",state="primary"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            r#"driftless_volume_role{volume="vol0",state="secondary"}"#
        ),
        0.0
    );
    assert_eq!(
        value(
            &s,
            &format!(r#"driftless_peer_connection_state{{{peer},state="connected"}}"#)
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            &format!(r#"driftless_peer_disk_state{{{peer},state="up-to-date"}}"#)
        ),
        1.0
    );
    assert_eq!(
        value(&s, &format!("driftless_peer_lag_records{{{peer}}}")),
        0.0
    );
    let st = primary.volume().unwrap();
    assert_eq!(
        value(&s, r#"driftless_volume_lsn{volume="vol0",kind="written"}"#),
        st.written_lsn as f64
    );
    assert!(value(&s, r#"driftless_journal_capacity_bytes{volume="vol0"}"#) > 0.0);
    assert_eq!(get(primary_metrics, "/other").0, "HTTP/1.1 404 Not Found");

    let (_, dr_body) = get(dr_metrics, "/metrics");
    let d = series(&dr_body);
    assert_eq!(
        value(
            &d,
            r#"driftless_volume_role{volume="vol0",state="secondary"}"#
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

    // The DR site goes away; writes go on: the scrape shows the lag grow.
    dr.kill9();
    let uri = primary.nbd_uri.clone().unwrap();
    let out = run(
        Command::new("qemu-io")
            .args(["-f", "raw", "-c", "write -P 7 0 1M", "-c", "flush"])
            .arg(&uri),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(out.status.success(), "qemu-io: {out:?}");
    let behind = |s: &BTreeMap<String, f64>| {
        s.get(&format!(
            r#"driftless_peer_connection_state{{{peer},state="connected"}}"#
        )) == Some(&0.0)
            && s.get(&format!("driftless_peer_lag_records{{{peer}}}"))
                .is_some_and(|v| *v > 0.0)
            && s.get(&format!("driftless_peer_lag_seconds{{{peer}}}"))
                .is_some_and(|v| *v > 0.0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !behind(&series(&get(primary_metrics, "/metrics").1)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the scrape never showed dr disconnected and behind: {}",
            get(primary_metrics, "/metrics").1
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let st = primary.volume().unwrap();
    let s = series(&get(primary_metrics, "/metrics").1);
    let p = st.peer("dr").unwrap();
    assert_eq!(
        value(&s, &format!("driftless_peer_lag_records{{{peer}}}")),
        p.lag_records as f64,
        "the scrape and status agree"
    );
    drop::<NodeProc>(primary);
}

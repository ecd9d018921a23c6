//! The Grafana dashboard and the Prometheus alert rules in `monitoring/` name only metrics a
//! real daemon exports, cover what an operator watches, and pass `promtool`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::support::{new_csr_pem, run_ok, Gateway};

fn monitoring_file(name: &str) -> (PathBuf, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("monitoring")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (path, text)
}

/// Every `enrollgate_...` name in a text (PromQL expressions, descriptions).
fn named_metrics(text: &str) -> BTreeSet<String> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("enrollgate_") {
        if text[..i].chars().next_back().is_some_and(is_name) {
            continue;
        }
        let name: String = text[i..].chars().take_while(|&c| is_name(c)).collect();
        names.insert(name);
    }
    names
}

/// Every metric family and series name in a Prometheus text scrape: `# TYPE` names
/// (`enrollgate_commit_duration_seconds`) and sample names (`..._bucket`, `..._sum`).
fn exported_metrics(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        let name = match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split_whitespace().next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        };
        if let Some(n) = name.filter(|n| !n.is_empty()) {
            names.insert(n.to_owned());
        }
    }
    names
}

/// Every PromQL expression of the dashboard's panels.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().expect("title").to_owned();
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            assert!(!expr.trim().is_empty(), "panel {title:?}: empty query");
            out.push((title.clone(), expr.to_owned()));
        }
    }
    out
}

#[test]
fn the_dashboard_and_the_alerts_name_only_metrics_the_daemon_exports() {
    let gw = Gateway::start();
    // Histograms and error codes appear with their first event: one enrollment that
    // succeeds (a handshake, a signing batch, a group commit) and one that is refused.
    let (_, _, token) = gw.create_identity("metrics-probe", "Device", false);
    let ok = gw.request(
        "POST",
        &format!("/edge/client/v1/enroll?method=ott&token={token}"),
        &[("Content-Type", "application/x-pem-file")],
        &new_csr_pem(),
    );
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    let refused = gw.request(
        "POST",
        &format!("/edge/client/v1/enroll?method=ott&token={token}"),
        &[("Content-Type", "application/x-pem-file")],
        &new_csr_pem(),
    );
    assert_eq!(refused.status, 400, "a used token is refused");

    let scrape = gw.metrics_text();
    let exported = exported_metrics(&scrape);
    assert!(
        exported.contains("enrollgate_enrollment_duration_seconds_bucket"),
        "the scrape lacks what one enrollment records:\n{scrape}"
    );

    let (_, dashboard_text) = monitoring_file("enrollgate-dashboard.json");
    let (_, alerts_text) = monitoring_file("enrollgate-alerts.yml");
    for (file, text) in [
        ("enrollgate-dashboard.json", &dashboard_text),
        ("enrollgate-alerts.yml", &alerts_text),
    ] {
        let named = named_metrics(text);
        assert!(named.len() >= 5, "{file} names only {named:?}");
        let unknown: Vec<_> = named.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics the daemon does not export: {unknown:?}\nexported: {exported:?}"
        );
    }
}

#[test]
fn the_dashboard_shows_what_operators_watch() {
    let (_, text) = monitoring_file("enrollgate-dashboard.json");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let exprs = dashboard_exprs(&dashboard);
    let has = |what: &str, pred: &dyn Fn(&str) -> bool| {
        assert!(
            exprs.iter().any(|(_, e)| pred(e)),
            "no panel shows {what}; queries: {exprs:#?}"
        );
    };
    has("enrollments per second by method and result", &|e| {
        e.contains("rate(enrollgate_enrollments_total") && e.contains("by (method, result)")
    });
    has("refusals by code", &|e| {
        e.contains("enrollgate_enrollments_total") && e.contains("result!=\"ok\"")
    });
    for p in ["0.5", "0.9", "0.99"] {
        has(&format!("enrollment latency p{p}"), &|e| {
            e.contains(&format!("histogram_quantile({p},"))
                && e.contains("enrollgate_enrollment_duration_seconds_bucket")
        });
    }
    has("the commit queue", &|e| {
        e.contains("enrollgate_commit_queue_depth")
    });
    has("the sign queue", &|e| {
        e.contains("enrollgate_sign_queue_depth")
    });
    has("commit latency", &|e| {
        e.contains("histogram_quantile(") && e.contains("enrollgate_commit_duration_seconds_bucket")
    });
    has("connections pushed out", &|e| {
        e.contains("rate(enrollgate_connections_pushed_out_total")
    });
    has("the store refusing writes", &|e| {
        e.contains("enrollgate_store_refusing_writes")
    });
    for within in ["7d", "30d"] {
        has(&format!("certificates expiring within {within}"), &|e| {
            e.contains("enrollgate_certificates_expiring")
                && e.contains(&format!("within=\"{within}\""))
        });
    }
    // Each panel's queries follow the instance picker.
    for (title, expr) in &exprs {
        assert!(
            expr.contains("instance=~\"$instance\""),
            "panel {title:?} ignores the instance variable: {expr}"
        );
    }
}

#[test]
fn promtool_accepts_the_rules_and_each_alert_fires_in_its_unit_test() {
    let (rules, text) = monitoring_file("enrollgate-alerts.yml");
    let (tests, _) = monitoring_file("enrollgate-alerts.test.yml");
    let which = Command::new("promtool").arg("--version").output();
    assert!(
        which.is_ok_and(|o| o.status.success()),
        "promtool is missing: scripts/install-deps installs it (Debian package prometheus)"
    );
    let out = run_ok(
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(&rules),
    );
    assert!(out.contains("SUCCESS"), "{out}");
    // The unit tests hold an expectation for every alert the rules define.
    let (_, test_text) = monitoring_file("enrollgate-alerts.test.yml");
    for line in text.lines() {
        if let Some(alert) = line.trim().strip_prefix("- alert: ") {
            assert!(
                test_text.contains(&format!(
                    "alertname: {alert}\n        exp_alerts:\n          - exp_labels"
                )),
                "no unit test sees {alert} fire"
            );
        }
    }
    let out = run_ok(
        Command::new("promtool")
            .args(["test", "rules"])
            .arg(&tests)
            .current_dir(rules.parent().expect("monitoring/")),
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_dashboard_lays_out_distinct_panels_on_its_own_data_source() {
    let (_, text) = monitoring_file("enrollgate-dashboard.json");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(
        variables.contains(&"datasource") && variables.contains(&"instance"),
        "{variables:?}"
    );
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("id")),
            "{title}: id reused"
        );
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{title}: not on the dashboard's data source"
            );
        }
        let pos = |k: &str| panel["gridPos"][k].as_u64().expect("gridPos");
        let (x, y, w, h) = (pos("x"), pos("y"), pos("w"), pos("h"));
        assert!(x + w <= 24 && w > 0 && h > 0, "{title}: outside the grid");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title}: overlaps another panel");
            }
        }
    }
}

//! The operator's artefacts stay true to the gateway: every metric the Grafana dashboard
//! (`deploy/grafana/splicegate.json`) and the alerting rules (`deploy/prometheus/alerts.yml`)
//! name exists on a running gateway's `/metrics`, and `promtool` accepts the rules and passes
//! their unit tests (`deploy/prometheus/alerts.test.yml`).
//!
//! Names are taken from the PromQL of every `expr` (panel targets, annotations, alert rules) and
//! of the dashboard's template queries: every identifier outside label matchers, strings and
//! ranges that is not a PromQL function, aggregation or keyword is a metric name. A name exists
//! when `/metrics` has its family (`# TYPE`), or is its family plus a suffix the family's type
//! allows (`_total` for a counter, `_bucket`/`_sum`/`_count` for a histogram).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Series made by Prometheus or another exporter, not by the gateway: `up` (the scrape itself)
/// and `probe_success` (the blackbox exporter probing `/readyz`).
const EXTERNAL: [&str; 2] = ["up", "probe_success"];

/// PromQL functions, aggregations and keywords (the identifiers that are not metric names).
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "changes",
    "resets",
    "histogram_quantile",
    "abs",
    "ceil",
    "floor",
    "round",
    "clamp_min",
    "clamp_max",
    "clamp",
    "label_replace",
    "label_join",
    "vector",
    "scalar",
    "time",
    "timestamp",
    "absent",
    "absent_over_time",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "quantile_over_time",
    "predict_linear",
    "sort",
    "sort_desc",
    "inf",
    "nan",
];

/// The metric names an expression uses.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Grafana's `label_values(metric, label)`: only the first argument is a metric.
    let expr = match expr.trim().strip_prefix("label_values(") {
        Some(rest) => rest.split([',', ')']).next().unwrap_or_default().to_owned(),
        None => expr.to_owned(),
    };
    let mut names = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut skip_group = false;
    while i < chars.len() {
        let c = chars[i];
        let close = match c {
            '{' => Some('}'),
            '[' => Some(']'),
            '"' | '\'' | '`' => Some(c),
            '(' if skip_group => Some(')'),
            _ => None,
        };
        if let Some(close) = close {
            skip_group = false;
            i += 1;
            while i < chars.len() && chars[i] != close {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
        if ident_start(c)
            && (i == 0 || !(chars[i - 1].is_ascii_alphanumeric() || chars[i - 1] == '$'))
        {
            let start = i;
            while i < chars.len() && (ident_start(chars[i]) || chars[i].is_ascii_digit()) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if matches!(
                word.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                skip_group = true;
            } else if !PROMQL_WORDS.contains(&word.as_str()) {
                names.insert(word);
            }
            continue;
        }
        if !c.is_whitespace() {
            skip_group = false;
        }
        i += 1;
    }
    names
}

/// Families exposed in a `/metrics` text, by name, with their type.
fn families(metrics: &str) -> BTreeMap<String, String> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some((name.to_owned(), kind.trim().to_owned()))
        })
        .collect()
}

/// Whether `name` is exposed: a family, or a family plus a suffix its type allows.
fn exposes(families: &BTreeMap<String, String>, name: &str) -> bool {
    if families.contains_key(name) {
        return true;
    }
    let allowed: &[(&str, &[&str])] = &[
        ("counter", &["_total", "_created"]),
        ("histogram", &["_bucket", "_sum", "_count", "_created"]),
        ("summary", &["_sum", "_count", "_created"]),
    ];
    allowed.iter().any(|(kind, suffixes)| {
        suffixes.iter().any(|s| {
            name.strip_suffix(s)
                .and_then(|family| families.get(family))
                .is_some_and(|k| k == kind)
        })
    })
}

/// Every PromQL expression in a Grafana dashboard: `expr` keys anywhere, and the queries of the
/// template variables.
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) if s.contains('(') => out.push(s.clone()),
                    _ => dashboard_exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| dashboard_exprs(x, out)),
        _ => {}
    }
}

fn load_dashboard() -> Value {
    let path = Path::new(ROOT).join("deploy/grafana/splicegate.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `(alert name, expr)` of every rule in `alerts.yml`.
fn alert_exprs() -> Vec<(String, String)> {
    let path = Path::new(ROOT).join("deploy/prometheus/alerts.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let v: Value = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("alerts.yml: {e}"));
    let mut out = Vec::new();
    for group in v["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .unwrap_or("?");
            let expr = rule["expr"].as_str().expect("every rule has an expr");
            out.push((name.to_owned(), expr.to_owned()));
        }
    }
    out
}

/// The names in `used` that `/metrics` text does not expose, without the external ones.
fn missing(used: &BTreeSet<String>, metrics: &str) -> BTreeSet<String> {
    let fams = families(metrics);
    used.iter()
        .filter(|n| !EXTERNAL.contains(&n.as_str()) && !exposes(&fams, n))
        .cloned()
        .collect()
}

#[test]
fn promql_names_are_extracted() {
    let e = r#"sum by (instance, le) (rate(splicegate_bytes_total{instance=~"$instance", direction="up"}[$__rate_interval])) / on(instance) group_left process_max_fds offset 1d > 0.5 * up"#;
    let names: Vec<String> = metric_names(e).into_iter().collect();
    assert_eq!(names, ["process_max_fds", "splicegate_bytes_total", "up"]);
    let t = "label_values(splicegate_workers_alive, instance)";
    let names: Vec<String> = metric_names(t).into_iter().collect();
    assert_eq!(names, ["splicegate_workers_alive"]);
    let q = "histogram_quantile(0.95, sum by (le) (rate(splicegate_x_bucket[5m])))";
    assert_eq!(
        metric_names(q).into_iter().collect::<Vec<_>>(),
        ["splicegate_x_bucket"]
    );
}

/// The check can fail: a made-up name, a wrong suffix and a suffix of the wrong type are caught.
#[test]
fn drift_is_detected() {
    let metrics = "# HELP splicegate_bytes Bytes.\n# TYPE splicegate_bytes counter\n\
        splicegate_bytes_total{direction=\"up\"} 0\n# TYPE splicegate_workers_alive gauge\n\
        splicegate_workers_alive 2\n# TYPE splicegate_lat_seconds histogram\n\
        splicegate_lat_seconds_count 0\n# TYPE splicegate_rule counter\n";
    let used: BTreeSet<String> = [
        "splicegate_bytes_total",
        "splicegate_workers_alive",
        "splicegate_lat_seconds_bucket",
        "splicegate_rule_total",
        "up",
        "splicegate_made_up_total",
        "splicegate_bytes_bucket",
        "splicegate_workers_alive_total",
        "splicegate_bytes_total_total",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let m: Vec<String> = missing(&used, metrics).into_iter().collect();
    assert_eq!(
        m,
        [
            "splicegate_bytes_bucket",
            "splicegate_bytes_total_total",
            "splicegate_made_up_total",
            "splicegate_workers_alive_total",
        ]
    );
}

#[test]
fn dashboard_and_alerts_use_only_metrics_the_gateway_exposes() {
    let up = Upstream::echo();
    let cfg = Config::new().upstream("ops.example", up.port());
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    // One tunnel through the gateway, so the per-rule families (labelled by the allowlist entries
    // used) have series.
    let mut t = open_tunnel(gw.addr(), &format!("ops.example:{}", up.port()));
    echo_roundtrip(&mut t, b"drift");
    drop(t);
    gw.wait_metric("splicegate_tunnels_active", |v| v == 0.0, IO_TIMEOUT);
    let metrics = gw.metrics();

    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut exprs = Vec::new();
    dashboard_exprs(&load_dashboard(), &mut exprs);
    assert!(exprs.len() >= 30, "the dashboard's expressions: {exprs:?}");
    for e in &exprs {
        for n in metric_names(e) {
            used.entry(n).or_default().insert(format!("dashboard: {e}"));
        }
    }
    let alerts = alert_exprs();
    assert!(alerts.len() >= 8, "{alerts:?}");
    for (name, e) in &alerts {
        for n in metric_names(e) {
            used.entry(n).or_default().insert(format!("alert {name}"));
        }
    }
    let names: BTreeSet<String> = used.keys().cloned().collect();
    let fams = families(&metrics);
    let absent = missing(&names, &metrics);
    let report: Vec<String> = absent
        .iter()
        .map(|n| format!("{n} (used by {:?})", used[n]))
        .collect();
    assert!(
        report.is_empty(),
        "metrics used but not exposed by the gateway:\n{}\n\nexposed families: {:?}",
        report.join("\n"),
        fams.keys().collect::<Vec<_>>()
    );
    // The artefacts cover what the issue asks for.
    for must in [
        "splicegate_active_client_connections",
        "splicegate_connected_clients",
        "splicegate_errors_total",
        "splicegate_rejections_total",
        "splicegate_tunnels_active",
        "splicegate_bytes_total",
        "splicegate_tls_sessions_verified_total",
        "splicegate_dns_queries_total",
        "splicegate_workers_alive",
        "process_open_fds",
        "splicegate_config_reloads_total",
        "splicegate_tunnels_total",
        "splicegate_rule_bytes_total",
    ] {
        assert!(names.contains(must), "nothing uses {must}");
    }
}

#[test]
fn dashboard_shape() {
    let d = load_dashboard();
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter().any(|v| v["type"] == "datasource"
            && v["query"] == "prometheus"
            && v["name"] == "datasource"),
        "the Prometheus datasource is a variable"
    );
    let panels = d["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate panel id {}",
            p["id"]
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
    // On top, the Windows gateway's four performance counters.
    let top: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] != "row" && p["gridPos"]["y"].as_u64() == Some(1))
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        top,
        [
            "Active Client Connection",
            "Connected Client",
            "Error Count",
            "Rejection Count"
        ]
    );
    let rows: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] == "row")
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for want in ["Tunnels", "Bandwidth", "TLS", "DNS", "Refusals and errors"] {
        assert!(rows.contains(&want), "no row {want}: {rows:?}");
    }
}

fn have_promtool() -> bool {
    Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run_promtool(args: &[&str]) -> (bool, String) {
    let o = Command::new("promtool")
        .args(args)
        .current_dir(Path::new(ROOT).join("deploy/prometheus"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

#[test]
fn promtool_checks_and_tests_the_rules() {
    if !have_promtool() {
        eprintln!("SKIP: promtool not installed (Debian package `prometheus`, see scripts/install-test-deps.sh)");
        return;
    }
    let (ok, out) = run_promtool(&["check", "rules", "alerts.yml"]);
    assert!(ok, "promtool check rules: {out}");
    let (ok, out) = run_promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(ok, "promtool test rules: {out}");

    // promtool itself fails a broken rule and a wrong expectation.
    let dir = TempDir::new("promtool");
    let bad = dir.write(
        "bad.yml",
        "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(rate(up[5m])\n",
    );
    let (ok, out) = run_promtool(&["check", "rules", bad.to_str().unwrap()]);
    assert!(!ok, "a rule with unbalanced parentheses passes: {out}");
    let alerts = Path::new(ROOT).join("deploy/prometheus/alerts.yml");
    let wrong = dir.write(
        "wrong.test.yml",
        &format!(
            "rule_files: [{alerts:?}]\ntests:\n  - interval: 1m\n    input_series:\n\
             \x20     - series: 'up{{job=\"splicegate\", instance=\"a\"}}'\n        values: \"1 1 1 1 1\"\n\
             \x20   alert_rule_test:\n      - eval_time: 4m\n        alertname: GatewayDown\n\
             \x20       exp_alerts:\n          - exp_labels: {{ severity: critical, job: splicegate, instance: a }}\n"
        ),
    );
    let (ok, out) = run_promtool(&["test", "rules", wrong.to_str().unwrap()]);
    assert!(
        !ok,
        "an alert expected while the gateway is up passes: {out}"
    );
}

/// docs/operations.md explains every event ID of `src/events.rs` and every alert.
#[test]
fn operations_guide_covers_every_event_and_alert() {
    let guide = std::fs::read_to_string(Path::new(ROOT).join("docs/operations.md")).unwrap();
    let events = std::fs::read_to_string(Path::new(ROOT).join("src/events.rs")).unwrap();
    let ids: Vec<&str> = events
        .lines()
        .filter_map(|l| l.strip_prefix("pub const ")?.split_once(": u16 = "))
        .map(|(_, v)| v.trim_end_matches(';'))
        .collect();
    assert!(ids.len() >= 12, "event IDs in src/events.rs: {ids:?}");
    for id in ids {
        assert!(
            guide.contains(&format!("| **{id}** |")),
            "docs/operations.md has no troubleshooting row for event {id}"
        );
    }
    for (alert, _) in alert_exprs() {
        assert!(
            guide.contains(&format!("`{alert}`")),
            "docs/operations.md does not say what to do for {alert}"
        );
    }
}

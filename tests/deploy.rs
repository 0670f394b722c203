//! The deployment examples under `deploy/` parse, and agree with each other and with the
//! gateway: the Kubernetes manifests (the ConfigMap's configuration passes `check-config`, the
//! probes ask its `health_listen` port, the grace period outlasts `drain_grace` +
//! `drain_timeout`),
//! the keepalived pair (`keepalived -t`, one virtual router seen from both sides) and the
//! HAProxy configuration (`haproxy -c`; tests/ha.rs runs it). A tool that is missing skips its
//! check with a printed reason.

mod support;

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &str) -> String {
    let p = deploy(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn yaml(path: &str) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

fn has_tool(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
}

/// `30s`, `2m`, `500ms` as the gateway's configuration writes them.
fn duration(s: &str) -> Duration {
    let num = |t: &str| {
        t.parse::<u64>()
            .unwrap_or_else(|e| panic!("duration {s:?}: {e}"))
    };
    if let Some(ms) = s.strip_suffix("ms") {
        Duration::from_millis(num(ms))
    } else if let Some(m) = s.strip_suffix('m') {
        Duration::from_secs(60 * num(m))
    } else {
        Duration::from_secs(num(s.trim_end_matches('s')))
    }
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

#[test]
fn kubernetes_manifests_agree_with_the_gateway() {
    let cm = yaml("kubernetes/configmap.yaml");
    let config = cm["data"]["splicegate.yaml"]
        .as_str()
        .expect("the ConfigMap carries splicegate.yaml");
    let dir = support::TempDir::new("k8s");
    let path = dir.write("splicegate.yaml", config);
    let out = support::run_cli(
        &["check-config", &path.display().to_string()],
        Duration::from_secs(20),
    );
    assert!(
        out.status.success(),
        "the ConfigMap's configuration passes check-config:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg: Value = serde_saphyr::from_str(config).expect("the ConfigMap's configuration");
    let limit = |key: &str| {
        duration(
            cfg["limits"][key]
                .as_str()
                .unwrap_or_else(|| panic!("limits.{key} is set")),
        )
    };
    let drain = limit("drain_grace") + limit("drain_timeout");
    let probe_port = port_of(
        cfg["health_listen"]
            .as_str()
            .expect("the configuration serves the probes on health_listen"),
    );

    let dep = yaml("kubernetes/deployment.yaml");
    let spec = &dep["spec"]["template"]["spec"];
    let grace = spec["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        Duration::from_secs(grace) > drain,
        "terminationGracePeriodSeconds ({grace}) must outlast drain_grace + drain_timeout ({drain:?})"
    );
    let c = &spec["containers"][0];
    let named_port = |name: &str| {
        c["ports"]
            .as_array()
            .expect("container ports")
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port named {name:?}"))
    };
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe} path");
        let port = match &get["port"] {
            Value::String(name) => named_port(name),
            other => other.as_u64().expect("a probe port"),
        };
        assert_eq!(
            port, probe_port,
            "{probe} asks the port /readyz is served on"
        );
    }
    assert_eq!(named_port("proxy"), port_of("0.0.0.0:8080"));
    assert_eq!(
        dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0,
        "a rollout never has fewer Ready gateways than replicas"
    );
    let replicas = dep["spec"]["replicas"].as_u64().expect("replicas");

    let pdb = yaml("kubernetes/pdb.yaml");
    let min = pdb["spec"]["minAvailable"].as_u64().expect("minAvailable");
    assert!(
        min >= 1 && min < replicas,
        "the PodDisruptionBudget keeps one gateway and still lets a node drain"
    );
    let svc = yaml("kubernetes/service.yaml");
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert_eq!(
        svc["spec"]["externalTrafficPolicy"], "Local",
        "the agents' own addresses reach the gateways"
    );
    let labels = &dep["spec"]["selector"]["matchLabels"];
    assert_eq!(
        &svc["spec"]["selector"], labels,
        "the Service selects the pods"
    );
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
}

/// The value after `key` on the first line that starts with it, in a keepalived file.
fn keyword<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(key).map(str::trim))
        .unwrap_or_else(|| panic!("no `{key}` in the keepalived file"))
}

/// The single address inside `unicast_peer { ... }`.
fn unicast_peer(text: &str) -> &str {
    let after = &text[text.find("unicast_peer").expect("unicast_peer block")..];
    after
        .lines()
        .nth(1)
        .map(str::trim)
        .expect("one peer address")
}

#[test]
fn keepalived_pair_is_one_virtual_router() {
    let (a, b) = (read("keepalived/lb1.conf"), read("keepalived/lb2.conf"));
    for key in ["virtual_router_id", "advert_int", "state"] {
        assert_eq!(
            keyword(&a, key),
            keyword(&b, key),
            "{key} is the same on both"
        );
    }
    let vip = |t: &str| {
        let after = &t[t.find("virtual_ipaddress").expect("virtual_ipaddress")..];
        after
            .lines()
            .nth(1)
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(vip(&a), vip(&b), "both hold the same virtual address");
    assert_ne!(keyword(&a, "priority"), keyword(&b, "priority"));
    assert_eq!(unicast_peer(&a), keyword(&b, "unicast_src_ip"));
    assert_eq!(unicast_peer(&b), keyword(&a, "unicast_src_ip"));
    if !has_tool("keepalived") {
        eprintln!(
            "SKIP `keepalived -t`: keepalived is not installed (scripts/install-test-deps.sh)"
        );
        return;
    }
    for f in ["keepalived/lb1.conf", "keepalived/lb2.conf"] {
        let out = Command::new("keepalived")
            .args(["-t", "-l", "-f"])
            .arg(deploy(f))
            .output()
            .expect("run keepalived -t");
        assert!(
            out.status.success(),
            "keepalived -t -f deploy/{f}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn haproxy_config_passes_haproxy_check() {
    if !has_tool("haproxy") {
        eprintln!("SKIP: haproxy is not installed (scripts/install-test-deps.sh)");
        return;
    }
    let out = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(deploy("haproxy.cfg"))
        .output()
        .expect("run haproxy -c");
    assert!(
        out.status.success(),
        "haproxy -c -f deploy/haproxy.cfg: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

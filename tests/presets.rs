//! Cloud presets and workspaces: `check-config` prints the expansion, invalid values are
//! refused with key and line, the policy allows the expanded hosts, and `allowed-host list`
//! shows them apart from the local ones.

mod support;

use std::time::Duration;
use support::*;

const T: Duration = Duration::from_secs(20);
const WS: &str = "5e1f3a52-7b1d-4c2e-9a0b-1234567890ab";
const WS2: &str = "0A1B2C3D-4E5F-4061-8A9B-ABCDEFABCDEF";

fn check(yaml: &str) -> (i32, String, String) {
    let dir = TempDir::new("presets");
    let path = dir.write("splicegate.yaml", yaml);
    let o = run_cli(&["check-config", path.to_str().unwrap()], T);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The reference tables (../shared/reference/peers-and-presets.md, §5.1 and §5.2), per cloud.
fn reference(cloud: &str) -> (Vec<String>, Vec<String>) {
    let (az, blob, auto, arm) = match cloud {
        "public" => (
            "azure.com",
            "blob.core.windows.net",
            "azure-automation.net",
            "management.azure.com",
        ),
        "usgov" => (
            "azure.us",
            "blob.core.usgovcloudapi.net",
            "azure-automation.us",
            "management.usgovcloudapi.net",
        ),
        _ => (
            "azure.cn",
            "blob.core.chinacloudapi.cn",
            "azure-automation.cn",
            "management.chinacloudapi.cn",
        ),
    };
    let ama = vec![
        format!("global.handler.control.monitor.{az}"),
        format!("westeurope.handler.control.monitor.{az}"),
        format!("{WS}.ods.opinsights.{az}"),
        format!("*.ingest.monitor.{az}"),
        arm.to_owned(),
        format!("westeurope.monitoring.{az}"),
    ];
    let la = vec![
        format!("{WS}.ods.opinsights.{az}"),
        format!("{WS}.oms.opinsights.{az}"),
        format!("*.{blob}"),
        format!("*.{auto}"),
    ];
    (ama, la)
}

#[test]
fn check_config_prints_the_expansion_for_each_cloud() {
    for cloud in ["public", "usgov", "china"] {
        let yaml = format!(
            "cloud: {cloud}\npresets: [azure-monitor-agent, log-analytics-agent]\n\
             workspaces: [\"{WS}\"]\nregions: [westeurope]\n"
        );
        let (code, out, err) = check(&yaml);
        assert_eq!(code, 0, "{cloud}: {err}");
        let (ama, la) = reference(cloud);
        for h in ama.iter().chain(&la) {
            assert!(
                out.lines().any(|l| l.contains(h.as_str())),
                "{cloud}: {h} missing from check-config output:\n{out}"
            );
        }
        assert!(out.contains("preset azure-monitor-agent"), "{out}");
        assert!(out.contains("preset log-analytics-agent"), "{out}");
        assert!(out.contains(&format!("cloud: {cloud}")), "{out}");
    }
}

#[test]
fn invalid_preset_keys_are_refused_with_key_and_line() {
    let eleven: Vec<String> = (0..11)
        .map(|i| format!("\"00000000-0000-4000-8000-0000000000{i:02}\""))
        .collect();
    for (yaml, key) in [
        ("cloud: mars\n".to_owned(), "cloud"),
        (
            "presets: [azure-monitor-agent, nope]\n".to_owned(),
            "presets[1]",
        ),
        (
            "presets: [azure-monitor-agent]\nworkspaces: [\"not-a-guid\"]\n".to_owned(),
            "workspaces[0]",
        ),
        (
            format!(
                "presets: [azure-monitor-agent]\nworkspaces: [{}]\n",
                eleven.join(", ")
            ),
            "workspaces",
        ),
        (
            "presets: [azure-monitor-agent]\nregions: [\"West Europe\"]\n".to_owned(),
            "regions[0]",
        ),
        (format!("workspaces: [\"{WS}\"]\n"), "workspaces"),
    ] {
        let (code, _, err) = check(&yaml);
        assert_eq!(code, 2, "{yaml}: {err}");
        assert!(err.contains(key), "{yaml}: error should name {key}: {err}");
        assert!(
            err.contains("line "),
            "{yaml}: error should give the line: {err}"
        );
    }
}

#[test]
fn the_policy_allows_preset_hosts_and_the_cli_marks_them() {
    let up = Upstream::echo();
    let ws_host = format!("{WS}.ods.opinsights.azure.com");
    let cfg = Config::new()
        .map_host(&ws_host, "127.0.0.1")
        .map_host("other.example.com", "127.0.0.1")
        .port(up.port())
        .loopback_networks()
        .allow_host("local.example.com")
        .raw(&format!(
            "presets: [azure-monitor-agent]\nworkspaces: [\"{}\"]\n",
            WS2
        ));
    let Some(gw) = Gateway::start(cfg.clone()) else {
        return;
    };
    let (_s, r) = connect_request(gw.addr(), &format!("{ws_host}:{}", up.port()));
    assert_eq!(r.status, 403, "a workspace not configured is refused");
    let (_s, r) = connect_request(gw.addr(), &format!("other.example.com:{}", up.port()));
    assert_eq!(r.status, 403);

    // Reload with the workspace: its host is allowed for new tunnels.
    let text = cfg.render().replace(WS2, &format!("{WS2}\", \"{WS}"));
    std::fs::write(gw.config_path(), text).unwrap();
    gw.signal(libc::SIGHUP);
    gw.expect_event(
        100,
        |e| field_str(e, "changes").is_some_and(|c| c.contains(&ws_host)),
        Duration::from_secs(10),
        "reload adding the workspace",
    );
    let mut s = open_tunnel(gw.addr(), &format!("{ws_host}:{}", up.port()));
    echo_roundtrip(&mut s, b"through a preset host");

    let o = run_cli(
        &[
            "allowed-host",
            "list",
            "--config",
            gw.config_path().to_str().unwrap(),
            "--json",
        ],
        T,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["local"], serde_json::json!(["local.example.com"]));
    let presets = j["presets"].as_array().unwrap();
    assert!(
        presets.iter().any(|p| p["host"] == ws_host.as_str()
            && p["from"] == format!("preset azure-monitor-agent, workspace {WS}").as_str()),
        "{j}"
    );
    // Removing a preset host is refused with a pointer to the preset.
    let o = run_cli(
        &[
            "allowed-host",
            "remove",
            &ws_host,
            "--config",
            gw.config_path().to_str().unwrap(),
            "--no-reload",
        ],
        T,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("preset azure-monitor-agent"));
}

#[test]
fn init_with_workspaces_writes_presets() {
    let dir = TempDir::new("init-presets");
    let out = dir.path().join("splicegate.yaml");
    let o = run_cli(
        &[
            "init",
            "--port",
            "8080",
            "--cloud",
            "usgov",
            "--workspace",
            WS,
            "--region",
            "usgovvirginia",
            "--output",
            out.to_str().unwrap(),
        ],
        T,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (code, text, err) = check(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains(&format!("{WS}.ods.opinsights.azure.us")),
        "{text}"
    );
    assert!(
        text.contains("usgovvirginia.handler.control.monitor.azure.us"),
        "{text}"
    );
    // The presets replace the public-cloud defaults.
    assert!(!text.contains("*.ods.opinsights.azure.com"), "{text}");
}

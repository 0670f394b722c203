//! Packaging: the systemd unit verifies, and the Debian package (cargo deb) has the right files,
//! conffiles and maintainer scripts, which run correctly against stubbed system tools.
//!
//! Needs `cargo-deb` (`cargo install cargo-deb`), `dpkg-deb` and `systemd-analyze`; each test
//! skips with a printed reason when its tool is missing. The package is built from the debug
//! binary the test run already has (`--profile dev --no-build`); `SPLICEGATE_DEB_RELEASE=1`
//! builds the release package instead (slow: a full release build). The package test is
//! `#[ignore]`d (it takes 15-60 s): `cargo test --test package -- --ignored` runs it.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn have(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn unit_file_verifies() {
    if !have("systemd-analyze", "--version") {
        eprintln!("SKIP: systemd-analyze not installed (Debian package `systemd`)");
        return;
    }
    let unit = std::fs::read_to_string(Path::new(ROOT).join("systemd/splicegate.service")).unwrap();
    for must in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=splicegate",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE\n",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=",
        "io_uring_setup io_uring_enter io_uring_register",
        "LimitNOFILE=",
        "Restart=on-failure",
        "RuntimeDirectory=splicegate",
        "ConfigurationDirectory=splicegate",
        "--pid-file /run/splicegate/splicegate.pid",
    ] {
        assert!(unit.contains(must), "unit lacks {must:?}");
    }
    assert!(!unit.contains("DynamicUser=yes"));
    // `systemctl reload` validates before it signals, so a refused file fails the reload.
    let reloads: Vec<&str> = unit
        .lines()
        .filter(|l| l.starts_with("ExecReload="))
        .collect();
    assert_eq!(
        reloads,
        [
            "ExecReload=/usr/bin/splicegate check-config /etc/splicegate/splicegate.yaml",
            "ExecReload=/bin/kill -HUP $MAINPID",
        ],
        "ExecReload must run check-config, then SIGHUP"
    );
    // systemd-analyze checks that ExecStart's binary exists: point it at the one under test.
    let dir = TempDir::new("unit");
    let path = dir.write(
        "splicegate.service",
        &unit.replace("/usr/bin/splicegate", bin()),
    );
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "systemd-analyze verify: {err}");
    assert!(
        !err.contains("splicegate.service:"),
        "systemd-analyze warns about the unit: {err}"
    );
}

/// Build the .deb into `out` and return its path: the steps of `scripts/deb.sh` (generate the
/// man pages and completions into `target/assets`, then `cargo deb`) on the binary under test.
fn build_deb(out: &Path) -> PathBuf {
    let assets = Path::new(ROOT).join("target/assets");
    let _ = std::fs::remove_dir_all(&assets);
    run(Command::new(bin()).arg("generate").arg(&assets));
    let mut cmd = Command::new("cargo");
    cmd.current_dir(ROOT)
        .arg("deb")
        .arg("-q")
        .arg("-o")
        .arg(out);
    if std::env::var_os("SPLICEGATE_DEB_RELEASE").is_none() {
        // bin() is target/<profile>/splicegate of this test build.
        let profile = Path::new(bin())
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_owned();
        let profile = if profile == "debug" {
            "dev".to_owned()
        } else {
            profile
        };
        cmd.args(["--profile", &profile, "--no-build", "--no-strip"]);
    }
    run(&mut cmd);
    std::fs::read_dir(out)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("cargo deb wrote no .deb")
}

/// A directory of stub commands that log their arguments to `log` and exit with `status`.
fn stubs(dir: &Path, log: &Path, tools: &[(&str, i32)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, status) in tools {
        let p = dir.join(name);
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\necho \"{name} $*\" >> '{}'\nexit {status}\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn run_script(script: &Path, arg: &str, stub_dir: &Path) {
    let o = Command::new("/bin/sh")
        .arg(script)
        .arg(arg)
        .env("PATH", stub_dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{} {arg}: {}",
        script.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
#[ignore = "builds a .deb (15-60 s) and needs cargo-deb; run by scripts/test.sh with --ignored"]
fn debian_package_contents_and_maintainer_scripts() {
    let cargo_deb = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !cargo_deb {
        eprintln!("SKIP: cargo-deb not installed (`cargo install cargo-deb`)");
        return;
    }
    if !have("dpkg-deb", "--version") {
        eprintln!("SKIP: dpkg-deb not installed");
        return;
    }
    let scratch = TempDir::new("deb");
    let out = scratch.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let deb = build_deb(&out);

    // Control fields and conffiles.
    let info = run(Command::new("dpkg-deb").arg("-f").arg(&deb));
    assert!(info.contains("Package: splicegate"), "{info}");
    let depends = info
        .lines()
        .find(|l| l.starts_with("Depends:"))
        .unwrap_or_default();
    assert!(depends.contains("adduser"), "{info}");
    let ctl = scratch.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&ctl));
    let conffiles = std::fs::read_to_string(ctl.join("conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/splicegate/splicegate.yaml");

    // Files, extracted into a scratch root.
    let root = scratch.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let binary = root.join("usr/bin/splicegate");
    let mode = std::fs::metadata(&binary).unwrap().permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "the binary is executable");
    let unit = ["lib/systemd/system", "usr/lib/systemd/system"]
        .iter()
        .map(|d| root.join(d).join("splicegate.service"))
        .find(|p| p.exists())
        .expect("the unit is installed under (usr/)lib/systemd/system");
    assert_eq!(
        std::fs::read_to_string(&unit).unwrap(),
        std::fs::read_to_string(Path::new(ROOT).join("systemd/splicegate.service")).unwrap()
    );
    // The socket unit ships as an example for an operator to install, never as a unit.
    assert_eq!(
        std::fs::read_to_string(root.join("usr/share/doc/splicegate/examples/splicegate.socket"))
            .unwrap_or_default(),
        std::fs::read_to_string(Path::new(ROOT).join("deploy/systemd/splicegate.socket")).unwrap(),
        "splicegate.socket is among the examples"
    );
    assert!(
        !unit.with_file_name("splicegate.socket").exists(),
        "splicegate.socket is not installed as a unit"
    );
    let conf = root.join("etc/splicegate/splicegate.yaml");
    let mode = std::fs::metadata(&conf).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "the config is not world-readable");
    // The packaged binary accepts the packaged configuration.
    let o = Command::new(&binary)
        .arg("check-config")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "check-config of the packaged default: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // The man pages (gzipped by cargo deb) and the shell completions, generated from the CLI.
    let man = root.join("usr/share/man/man1");
    for page in [
        "splicegate.1.gz",
        "splicegate-run.1.gz",
        "splicegate-check-config.1.gz",
    ] {
        let path = man.join(page);
        let text = run(Command::new("gzip").arg("-dc").arg(&path));
        assert!(text.contains(".TH splicegate"), "{page}: {text}");
        assert!(text.contains(".SH NAME"), "{page}: {text}");
    }
    let top = run(Command::new("gzip")
        .arg("-dc")
        .arg(man.join("splicegate.1.gz")));
    for sub in ["run", "check\\-config", "allowed\\-host", "user"] {
        assert!(top.contains(sub), "splicegate(1) lists {sub}: {top}");
    }
    assert!(
        !man.join("splicegate-generate.1.gz").exists(),
        "the hidden generate command has no page"
    );
    if have("man", "--version") {
        let o = Command::new("man")
            .arg("-l")
            .arg(man.join("splicegate-run.1.gz"))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && text.contains("--config"),
            "man -l: {text}"
        );
    }
    for (path, must) in [
        (
            "usr/share/bash-completion/completions/splicegate",
            "complete -F _splicegate",
        ),
        (
            "usr/share/zsh/vendor-completions/_splicegate",
            "#compdef splicegate",
        ),
        (
            "usr/share/fish/vendor_completions.d/splicegate.fish",
            "complete -c splicegate",
        ),
    ] {
        let text = std::fs::read_to_string(root.join(path)).unwrap_or_default();
        assert!(text.contains(must), "{path} lacks {must:?}: {text:.200}");
        assert!(
            text.contains("check-config"),
            "{path} completes the subcommands"
        );
    }
    if have("bash", "--version") {
        let script = root.join("usr/share/bash-completion/completions/splicegate");
        run(Command::new("bash").arg("-n").arg(&script));
    }
    for example in ["prometheus-alerts.yml", "grafana-dashboard.json"] {
        let p = root.join("usr/share/doc/splicegate/examples").join(example);
        assert!(p.exists(), "{example} is installed");
    }

    // Maintainer scripts: syntax, then a run against stubbed system tools.
    for s in ["postinst", "prerm", "postrm"] {
        let p = ctl.join(s);
        assert!(p.exists(), "{s} missing");
        run(Command::new("sh").arg("-n").arg(&p));
        assert!(
            !std::fs::read_to_string(&p).unwrap().contains("#DEBHELPER#"),
            "{s}: #DEBHELPER# was not replaced"
        );
    }
    let tools = [
        "adduser",
        "deluser",
        "delgroup",
        "chown",
        "chmod",
        "rm",
        "deb-systemd-helper",
        "deb-systemd-invoke",
        "systemctl",
    ];
    // Fresh install: no user yet.
    let log = scratch.path().join("install.log");
    let bin_dir = scratch.path().join("stubs-install");
    let mut set: Vec<(&str, i32)> = tools.iter().map(|t| (*t, 0)).collect();
    set.push(("getent", 2));
    stubs(&bin_dir, &log, &set);
    run_script(&ctl.join("postinst"), "configure", &bin_dir);
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        calls
            .lines()
            .any(|l| l.starts_with("adduser --system --group") && l.ends_with(" splicegate")),
        "postinst creates the system user: {calls}"
    );
    assert!(
        calls.contains("deb-systemd-helper enable splicegate.service")
            || calls.contains("deb-systemd-helper update-state splicegate.service")
            || calls.contains("deb-systemd-helper unmask splicegate.service"),
        "postinst enables the unit: {calls}"
    );
    // ... but never the socket unit: its addresses must first match an existing `listen`.
    assert!(
        !calls.contains("splicegate.socket"),
        "postinst leaves splicegate.socket alone: {calls}"
    );
    // Purge: the user exists; config and user go.
    let log = scratch.path().join("purge.log");
    let bin_dir = scratch.path().join("stubs-purge");
    let mut set: Vec<(&str, i32)> = tools.iter().map(|t| (*t, 0)).collect();
    set.push(("getent", 0));
    stubs(&bin_dir, &log, &set);
    run_script(&ctl.join("prerm"), "remove", &bin_dir);
    run_script(&ctl.join("postrm"), "remove", &bin_dir);
    let removed = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !removed.contains("rm -rf /etc/splicegate") && !removed.contains("deluser"),
        "remove keeps the configuration and the user: {removed}"
    );
    run_script(&ctl.join("postrm"), "purge", &bin_dir);
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(calls.contains("rm -rf /etc/splicegate"), "{calls}");
    assert!(
        calls.contains("deluser --system --quiet splicegate"),
        "{calls}"
    );
}

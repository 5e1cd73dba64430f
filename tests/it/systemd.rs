//! The shipped systemd units, checked by systemd's own tools: `verify`
//! must print nothing and `security --offline=yes` must rate each unit 2.5
//! or better (OK). `/usr/bin/heistd` is pointed at the binary under test.
//! The README's install steps are run against a temporary root and held to
//! the units and the install config.

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
#[ignore = "needs systemd-analyze (Debian's systemd package)"]
fn units_verify_cleanly_and_rate_ok_for_exposure() {
    let directory = tempfile::tempdir().expect("temp dir");
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/systemd");
    let mut copies = Vec::new();
    for name in ["heistd.service", "heistd-services.service"] {
        let text = std::fs::read_to_string(units.join(name)).expect("unit");
        let copy = directory.path().join(name);
        std::fs::write(
            &copy,
            text.replace("/usr/bin/heistd", env!("CARGO_BIN_EXE_heistd")),
        )
        .expect("copy");
        copies.push(copy);
    }
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .args(&copies)
        .output()
        .expect(
            "this test needs systemd-analyze: install Debian's systemd package (.ci/run does), \
             or leave out the ignored tests (plain `cargo test`)",
        );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );

    for copy in &copies {
        let security = Command::new("systemd-analyze")
            .args(["security", "--offline=yes"])
            .arg(copy)
            .output()
            .expect("runs");
        let report = String::from_utf8_lossy(&security.stdout).to_string();
        let score: f64 = report
            .lines()
            .find_map(|line| line.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(": ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|score| score.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
        assert!(
            score <= 2.5,
            "{}: exposure {score} > 2.5\n{report}",
            copy.display()
        );
    }
}

/// The README's install steps, run against a temporary root: every file
/// they name exists and lands where the units look for it, the installed
/// config passes the units' quiet `ExecStartPre` check, and an operator's
/// `heistd sessions list` on it looks where the daemon writes.
#[test]
fn the_readme_install_steps_put_everything_where_the_units_and_the_config_expect_it() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(manifest.join("README.md")).expect("README");
    let block = readme
        .split("Installing it under systemd")
        .nth(1)
        .and_then(|rest| rest.split("```sh\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("the install block");
    let root = tempfile::tempdir().expect("temp root");
    let root_path = root.path().to_str().expect("utf-8");
    for directory in ["usr/bin", "etc/systemd/system"] {
        std::fs::create_dir_all(root.path().join(directory)).expect("mkdir");
    }
    let steps: Vec<String> = block
        .lines()
        .flat_map(|line| line.split("&&"))
        .map(|step| step.split('#').next().unwrap_or_default().trim())
        .filter_map(|step| {
            // `install` steps, and the loop that makes the credentials.
            step.strip_prefix("sudo install ")
                .or_else(|| step.starts_with("for ").then_some(step))
        })
        .map(|arguments| {
            // Owners need the `heistd` user, which the test does not create.
            let arguments = arguments
                .replace("-o root -g heistd ", "")
                .replace("target/release/heistd", env!("CARGO_BIN_EXE_heistd"));
            let rooted = ["/etc/", "/usr/"].iter().fold(arguments, |text, prefix| {
                text.replace(&format!(" {prefix}"), &format!(" {root_path}{prefix}"))
            });
            match rooted.strip_prefix("for ") {
                Some(_) => rooted.replace("sudo install ", "install "),
                None => format!("install {rooted}"),
            }
        })
        .collect();
    assert!(steps.len() >= 6, "{steps:?}");
    for step in &steps {
        let output = Command::new("sh")
            .args(["-c", step])
            .current_dir(manifest)
            .output()
            .expect("sh runs");
        assert!(
            output.status.success(),
            "{step}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let installed = |path: &str| root.path().join(path);
    for path in [
        "usr/bin/heistd",
        "etc/heistd/heistd.toml",
        "etc/heistd/heistd.env",
        "usr/share/doc/heistd/dashboards/heistd.json",
        "usr/share/doc/heistd/dashboards/alerts.yml",
        "etc/systemd/system/heistd.service",
        "etc/systemd/system/heistd-services.service",
    ] {
        assert!(installed(path).is_file(), "{path} not installed");
    }
    let unit =
        std::fs::read_to_string(installed("etc/systemd/system/heistd.service")).expect("unit");
    let documentation = unit
        .lines()
        .find_map(|line| line.strip_prefix("Documentation=file://"))
        .expect("Documentation=");
    assert!(
        installed(documentation.trim_start_matches('/')).is_file(),
        "Documentation={documentation} is not installed"
    );
    assert!(unit.contains("StateDirectory=heistd\n") && !unit.contains("HEISTD_STORE__PATH"));
    credentials_are_installed_for_every_load_credential(&installed);
    assert!(unit.contains("ExecReload=/usr/bin/heistd reload --pid $MAINPID"));

    let config = installed("etc/heistd/heistd.toml");
    let config = config.to_str().expect("utf-8");
    let heistd = |arguments: &[&str]| {
        Command::new(installed("usr/bin/heistd"))
            .args(arguments)
            .env_remove("HEISTD_STORE__PATH")
            .output()
            .expect("heistd runs")
    };
    let check = heistd(&["config", "check", "--quiet", "--config", config]);
    // Quiet prints errors and warnings only, and there are none: the
    // installed config reads every secret from the credentials the install
    // steps made (beside it, outside systemd), so no built-in secret is used.
    assert!(
        check.status.success() && check.stdout.is_empty() && check.stderr.is_empty(),
        "config check --quiet: {:?}\n{}{}",
        check.status,
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // The store is in the StateDirectory, where the daemon writes.
    let sessions = heistd(&["sessions", "--config", config, "list"]);
    let machine_has_a_store = Path::new("/var/lib/heistd/heistd.db").exists();
    assert!(
        machine_has_a_store
            || String::from_utf8_lossy(&sessions.stderr).contains("/var/lib/heistd/heistd.db"),
        "{}",
        String::from_utf8_lossy(&sessions.stderr)
    );
}

/// Every active `LoadCredential=` of both units names a file the install
/// steps made: root-only (0600 in a 0700 directory), not empty, and each
/// different. The example config's `*_file` names are loaded by a unit.
fn credentials_are_installed_for_every_load_credential(installed: &dyn Fn(&str) -> PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| {
        std::fs::metadata(path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&installed("etc/heistd/credentials")), 0o700);
    let mut loaded = std::collections::BTreeMap::new();
    let mut loaded_by_unit = Vec::new();
    for unit in ["heistd.service", "heistd-services.service"] {
        let text = std::fs::read_to_string(installed(&format!("etc/systemd/system/{unit}")))
            .expect("unit");
        let credentials: Vec<(String, String)> = text
            .lines()
            .filter_map(|line| line.strip_prefix("LoadCredential="))
            .map(|value| {
                let (name, path) = value.split_once(':').expect("name:path");
                (name.to_string(), path.to_string())
            })
            .collect();
        assert!(credentials.len() >= 2, "{unit} loads no credentials");
        let mut names = std::collections::BTreeSet::new();
        for (name, path) in credentials {
            assert_eq!(path, format!("/etc/heistd/credentials/{name}"), "{unit}");
            let file = installed(path.trim_start_matches('/'));
            assert_eq!(mode(&file), 0o600, "{}", file.display());
            let secret = std::fs::read_to_string(&file).expect("credential");
            assert!(secret.trim().len() >= 32, "{name} is too short a secret");
            names.insert(name.clone());
            loaded.insert(name, secret);
        }
        loaded_by_unit.push((unit, names));
    }
    let distinct: std::collections::BTreeSet<&String> = loaded.values().collect();
    assert_eq!(
        distinct.len(),
        loaded.len(),
        "each credential its own secret"
    );
    // Both units read the one install config, which names a credential for
    // every secret: each unit must load every one it names (a missing file
    // fails the start), the model server's optional key aside.
    let example = std::fs::read_to_string(installed("etc/heistd/heistd.toml")).expect("config");
    let named: Vec<&str> = example
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.split("_file = \"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    for name in [
        "oauth-signing-key",
        "admin-token",
        "heistd",
        "planner",
        "operator",
    ] {
        assert!(
            named.contains(&name),
            "the install config does not name {name}"
        );
    }
    for (unit, names) in &loaded_by_unit {
        for name in named
            .iter()
            .filter(|name| !name.starts_with('/') && **name != "llm-api-key")
        {
            assert!(
                names.contains(*name),
                "{unit} does not load `{name}`, which the install config names"
            );
        }
    }
}

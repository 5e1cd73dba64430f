//! The shipped systemd units, checked by systemd's own tools: `verify`
//! must print nothing and `security --offline=yes` must rate each unit 2.5
//! or better (OK). `/usr/bin/heistd` is pointed at the binary under test.

use std::path::Path;
use std::process::Command;

#[test]
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
        .expect("systemd-analyze runs (.ci/run installs systemd if it is missing)");
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

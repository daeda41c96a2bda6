//! The Django example's test (examples/django/test_outbox.py): psycopg
//! writes a user and its event in one transaction, and in a second one that
//! rolls back; only the first event arrives through `warren relay`.

use std::process::Command;

#[test]
fn the_django_examples_test_passes() {
    let has_psycopg = Command::new("python3")
        .args(["-c", "import psycopg"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_psycopg,
        "the Django example's test needs python3 with psycopg: pip install 'psycopg[binary]' (.ci/run does)"
    );
    let out = Command::new("python3")
        .args(["-m", "unittest", "-v", "test_outbox"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/django"))
        .env("WARREN_BIN", env!("CARGO_BIN_EXE_warren"))
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "examples/django/test_outbox.py failed:\n{stderr}");
    assert!(stderr.contains("Ran 1 test"), "{stderr}");
}

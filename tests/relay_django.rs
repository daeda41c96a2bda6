//! The Django example's tests (examples/django/test_outbox.py): datetimes
//! written as RFC 3339 and naive ones refused; the migration's DDL equal to
//! `warren relay schema`; a throwaway Django 5.2 project migrating forward
//! and back from another directory; psycopg writing a user and its event in
//! one transaction and in a second one that rolls back, of which only the
//! first event arrives through `warren relay`.

use std::process::Command;

#[test]
fn the_django_examples_tests_pass() {
    let has_modules = Command::new("python3")
        .args([
            "-c",
            "import django, psycopg; assert django.VERSION[:2] == (5, 2), django.__version__",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_modules,
        "the Django example's tests need python3 with Django 5.2 and psycopg: \
         pip install 'django>=5.2,<5.3' 'psycopg[binary]' (.ci/run does)"
    );
    let out = Command::new("python3")
        .args(["-m", "unittest", "-v", "test_outbox"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/django"))
        .env("WARREN_BIN", env!("CARGO_BIN_EXE_warren"))
        .env("PYTHONDONTWRITEBYTECODE", "1") // no __pycache__ left in the tree
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "examples/django/test_outbox.py failed:\n{stderr}");
    assert!(stderr.contains("Ran 6 tests"), "{stderr}");
}

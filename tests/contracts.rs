//! The contracts warren hands to other teams' tools, checked with those
//! tools: `warren schema` with Python's `jsonschema` (contracts/schema.rs), and
//! `warren asyncapi` with the AsyncAPI parser from npm (contracts/asyncapi.rs).
//! A missing tool fails the test with the command that installs it.

#[path = "contracts/asyncapi.rs"]
mod asyncapi;
#[path = "contracts/schema.rs"]
mod schema;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A path inside the repository.
pub(crate) fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Runs `warren ARGS` with no settings but the defaults; panics unless it succeeds.
pub(crate) fn warren(args: &[&str]) -> String {
    warren_with(args, &[])
}

/// Runs `warren ARGS` with only `env` set; panics unless it succeeds.
pub(crate) fn warren_with(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .current_dir(std::env::temp_dir())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("run warren");
    assert!(out.status.success(), "warren {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `program args` with `stdin`; panics naming `install` when the program is missing.
pub(crate) fn run_tool(program: &str, args: &[&str], stdin: &str, install: &str) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): {install}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

/// A file in a fresh temporary directory holding `content`.
pub(crate) fn temp_file(name: &str, content: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warren-contracts-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write temp file");
    path
}

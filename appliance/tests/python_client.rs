//! The official Python client (aerospike 19.x) against a fresh ospreyd: runs
//! `tests/clients/python_client_test.py` and requires it to pass.
//!
//! The interpreter is `$OSPREY_PYTHON`, else `target/python-venv/bin/python3`
//! in the workspace, which `scripts/install-deps.sh` creates.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use support::{python, run_bounded, Server};

/// The script runs ~25 checks (one sleeps 3 s for a TTL); it normally takes
/// a few seconds.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

#[test]
fn python_client_end_to_end() {
    let python = python();
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/python_client_test.py");
    let mut server = Server::start(0);
    let (out, timed_out) = run_bounded(
        Command::new(&python)
            .arg(&script)
            .args(["--host", "127.0.0.1", "--port"])
            .arg(server.port().to_string())
            .env("PYTHONUNBUFFERED", "1"),
        SCRIPT_TIMEOUT,
    );
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(
        !timed_out,
        "the Python client script did not finish within {SCRIPT_TIMEOUT:?}; killed it\n{report}"
    );
    assert!(
        out.status.success(),
        "the Python client script failed ({}):\n{report}",
        out.status
    );
    assert!(
        server.is_running(),
        "ospreyd exited during the Python checks"
    );
    server.stop_clean();
}

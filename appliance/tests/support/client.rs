//! What the tests that drive ospreyd with the official Rust client share:
//! a bounded connect, a bounded test body, and a result-code check.

use std::future::Future;
use std::time::Duration;

use aerospike::{Client, ClientPolicy, ResultCode};

use super::Server;

/// Bound on one test's client work.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Connects the Rust client (no credentials) within 30 s, or fails the
/// test with the server's log.
pub async fn connect(server: &Server) -> Client {
    let policy = ClientPolicy {
        timeout: 5_000,
        ..ClientPolicy::default()
    };
    let addr = server.addr();
    match tokio::time::timeout(Duration::from_secs(30), Client::new(&policy, &addr)).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => panic!("Client::new({addr}) failed: {e}\n{}", server.log_text()),
        Err(_) => panic!("Client::new({addr}) did not return within 30 s"),
    }
}

/// Runs a test body, failing it past [`TEST_TIMEOUT`].
pub async fn bounded<F: Future<Output = ()>>(body: F) {
    if tokio::time::timeout(TEST_TIMEOUT, body).await.is_err() {
        panic!("test body did not finish within {TEST_TIMEOUT:?}");
    }
}

/// Requires `r` to fail with the server result code `code`.
pub fn expect_code<T: std::fmt::Debug>(r: aerospike::Result<T>, code: ResultCode, what: &str) {
    match r {
        Ok(v) => panic!("{what}: succeeded with {v:?}, want result code {code:?}"),
        Err(e) => assert_eq!(
            e.server_result_code(),
            Some(code),
            "{what}: got error {e} (result code {}), want {code:?} ({})",
            e.result_code(),
            u8::from(code)
        ),
    }
}

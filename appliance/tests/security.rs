//! Security end to end: a real ospreyd with `[security] enabled = true`,
//! driven by the official Rust client, the official Python client
//! (`tests/clients/python_security_test.py`) and raw frames for the exact
//! result codes a client library would hide or never send (a data command
//! or info before login, a replayed expired token, a forged token).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use aerospike::{
    as_bin, AdminPolicy, AuthMode, Bins, Client, ClientPolicy, Key, ReadPolicy, ResultCode,
    WritePolicy,
};
use osprey_appliance::security::password::client_hash;
use support::client::{bounded, expect_code};
use support::{python, run_bounded, Options, Server, NAMESPACE as NS};

const ADMIN: &str = "admin";
const ADMIN_PASSWORD: &str = "s3cret-admin";
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes the admin password file and returns options that enable
/// security (the `[security]` table rides in after `[service]`).
fn secure_options(tag: &str, session_ttl_s: u32) -> Options {
    let file = password_file(tag);
    std::fs::write(&file, format!("{ADMIN_PASSWORD}\n")).expect("write password file");
    Options {
        service_extra: format!(
            "\n[security]\nenabled = true\nsession-ttl = {session_ttl_s}\n\
             admin-password-file = {:?}\nlogin-failure-delay-ms = 50\n\
             login-failure-max-delay-ms = 400\n",
            file.display().to_string()
        ),
        ..Options::default()
    }
}

/// Starts a server with security on. The password file is needed only
/// for the first start (it creates the store), so it is removed at once.
fn start_secure(test_id: u32, tag: &str, session_ttl_s: u32) -> Server {
    let options = secure_options(tag, session_ttl_s);
    let server = Server::start_with(test_id, options);
    let _ = std::fs::remove_file(password_file(tag));
    server
}

fn password_file(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "osprey-security-test-{}-{tag}.pw",
        std::process::id()
    ))
}

fn store_path(server: &Server) -> PathBuf {
    server.dir().join("osprey-security.dat")
}

// ---------------------------------------------------------------------------
// Raw frames.

fn raw_connect(server: &Server) -> TcpStream {
    let stream = TcpStream::connect(server.addr()).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let header = (2u64 << 56) | (u64::from(kind) << 48) | body.len() as u64;
    let mut out = header.to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// Sends a frame and reads one reply frame: (type, body).
fn call(stream: &mut TcpStream, kind: u8, body: &[u8]) -> (u8, Vec<u8>) {
    stream.write_all(&frame(kind, body)).expect("send");
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).expect("read reply header");
    let len = (u64::from_be_bytes(header) & ((1 << 48) - 1)) as usize;
    let mut reply = vec![0u8; len];
    stream.read_exact(&mut reply).expect("read reply body");
    (header[1], reply)
}

fn admin_body(command: u8, fields: &[(u8, &[u8])]) -> Vec<u8> {
    let mut body = vec![0u8; 16];
    body[2] = command;
    body[3] = fields.len() as u8;
    for (id, data) in fields {
        body.extend_from_slice(&(data.len() as u32 + 1).to_be_bytes());
        body.push(*id);
        body.extend_from_slice(data);
    }
    body
}

/// LOGIN: (result, session token if any).
fn raw_login(stream: &mut TcpStream, user: &str, password: &str) -> (u8, Option<Vec<u8>>) {
    let credential = client_hash(password);
    let (kind, body) = call(
        stream,
        2,
        &admin_body(20, &[(0, user.as_bytes()), (3, credential.as_bytes())]),
    );
    assert_eq!(kind, 2, "LOGIN reply type");
    let result = body[1];
    let mut token = None;
    let mut at = 16;
    for _ in 0..body[3] {
        let size = u32::from_be_bytes(body[at..at + 4].try_into().unwrap()) as usize;
        if body[at + 4] == 5 {
            token = Some(body[at + 5..at + 4 + size].to_vec());
        }
        at += 4 + size;
    }
    (result, token)
}

fn raw_authenticate(stream: &mut TcpStream, user: &str, token: &[u8]) -> u8 {
    let (_, body) = call(
        stream,
        2,
        &admin_body(0, &[(0, user.as_bytes()), (5, token)]),
    );
    body[1]
}

fn raw_info(stream: &mut TcpStream, command: &str) -> String {
    let (kind, body) = call(stream, 1, format!("{command}\n").as_bytes());
    assert_eq!(kind, 1);
    String::from_utf8_lossy(&body).into_owned()
}

/// The §11 put of ('test', 'demo', 'key1') {'a': 1}: its result code.
fn raw_put(stream: &mut TcpStream) -> u8 {
    // header size, info1..3, unused, result, generation, record ttl,
    // transaction ttl (1000 ms), 3 fields, 1 op.
    let mut body = vec![0x16, 0x00, 0x01, 0x00, 0, 0];
    body.extend_from_slice(&[0; 8]);
    body.extend_from_slice(&[0x00, 0x00, 0x03, 0xe8, 0x00, 0x03, 0x00, 0x01]);
    assert_eq!(body.len(), 22);
    body.extend_from_slice(&[0, 0, 0, 5, 0]);
    body.extend_from_slice(b"test");
    body.extend_from_slice(&[0, 0, 0, 5, 1]);
    body.extend_from_slice(b"demo");
    body.extend_from_slice(&[0, 0, 0, 0x15, 4]);
    body.extend_from_slice(&[
        0xec, 0x91, 0x19, 0x2d, 0x4b, 0x7f, 0x8c, 0xe3, 0x5d, 0x5d, 0x78, 0xd3, 0x4b, 0xca, 0x65,
        0xcb, 0xaa, 0xaa, 0xc9, 0x60,
    ]);
    body.extend_from_slice(&[0, 0, 0, 0x0d, 2, 1, 0, 1, b'a', 0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(body.len(), 0x52);
    let (kind, reply) = call(stream, 3, &body);
    assert_eq!(kind, 3);
    reply[5]
}

// ---------------------------------------------------------------------------
// Rust client.

fn policy(user: &str, password: &str) -> ClientPolicy {
    ClientPolicy {
        timeout: 5_000,
        auth_mode: AuthMode::Internal(user.to_string(), password.to_string()),
        ..ClientPolicy::default()
    }
}

async fn connect_as(server: &Server, user: &str, password: &str) -> aerospike::Result<Client> {
    match tokio::time::timeout(
        Duration::from_secs(30),
        Client::new(&policy(user, password), &server.addr()),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => panic!("Client::new as {user} did not return within 30 s"),
    }
}

async fn must_connect(server: &Server, user: &str, password: &str) -> Client {
    connect_as(server, user, password)
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
}

fn wp() -> WritePolicy {
    let mut p = WritePolicy::default();
    p.base_policy.total_timeout = 5_000;
    p
}

fn rp() -> ReadPolicy {
    let mut p = ReadPolicy::default();
    p.base_policy.total_timeout = 5_000;
    p
}

fn ap() -> AdminPolicy {
    AdminPolicy::default()
}

fn key(set: &str, k: i64) -> Key {
    Key::new(NS, set, k.into()).unwrap()
}

async fn put_get(client: &Client, k: &Key, v: i64) {
    client
        .put(&wp(), k, &[as_bin!("v", v)])
        .await
        .unwrap_or_else(|e| panic!("put: {e}"));
    let record = client
        .get(&rp(), k, Bins::All)
        .await
        .unwrap_or_else(|e| panic!("get: {e}"));
    assert_eq!(record.bins.get("v"), Some(&aerospike::Value::from(v)));
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_sockets_get_80_and_logins_are_checked() {
    let server = start_secure(1, "raw", 86_400);
    bounded(async {
        let mut s = raw_connect(&server);
        assert_eq!(
            raw_info(&mut s, "node"),
            "node\tERROR:80:not authenticated\n"
        );
        assert_eq!(raw_put(&mut s), 80, "AS_MSG before login");

        assert_eq!(raw_login(&mut s, ADMIN, "wrong").0, 65, "wrong password");
        assert_eq!(raw_login(&mut s, "nobody", "x").0, 60, "unknown user");
        assert_eq!(raw_put(&mut s), 80, "a failed login authenticates nothing");
        let (result, token) = raw_login(&mut s, ADMIN, ADMIN_PASSWORD);
        assert_eq!(result, 0);
        let token = token.expect("LOGIN success carries a session token");
        assert!(raw_info(&mut s, "node").starts_with("node\t"));
        assert!(!raw_info(&mut s, "node").contains("ERROR"));
        assert_eq!(raw_put(&mut s), 0, "admin writes after login");

        // The token authenticates another socket; a forged one does not.
        let mut other = raw_connect(&server);
        assert_eq!(raw_authenticate(&mut other, ADMIN, &token), 0);
        assert_eq!(raw_put(&mut other), 0);
        let mut forged = token.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let mut third = raw_connect(&server);
        assert_eq!(raw_authenticate(&mut third, ADMIN, &forged), 65);
        assert_eq!(raw_authenticate(&mut third, "nobody", &token), 65);
        assert_eq!(raw_put(&mut third), 80);
        // Admin commands before login: 80.
        let (_, body) = call(&mut third, 2, &admin_body(9, &[]));
        assert_eq!(body[1], 80);
    })
    .await;
    server.expect_log("login failed: user \"admin\" from 127.0.0.1");
    server.expect_log("login: user \"admin\" from 127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_users_roles_and_violations() {
    let server = start_secure(2, "rust", 86_400);
    bounded(async {
        let admin = must_connect(&server, ADMIN, ADMIN_PASSWORD).await;
        put_get(&admin, &key("demo", 1), 1).await;
        admin
            .create_user(&ap(), "reader", "reader-pw", &["read"])
            .await
            .expect("create reader");
        admin
            .create_user(&ap(), "writer", "writer-pw", &["read-write"])
            .await
            .expect("create writer");
        expect_code(
            admin.create_user(&ap(), "reader", "x", &["read"]).await,
            ResultCode::UserAlreadyExists,
            "create an existing user",
        );
        expect_code(
            admin
                .create_user(&ap(), "ghost", "x", &["no-such-role"])
                .await,
            ResultCode::InvalidRole,
            "create with an unknown role",
        );
        let users = admin.query_users(&ap(), None).await.expect("query users");
        let names: Vec<&str> = users.iter().map(|u| u.user.as_str()).collect();
        assert!(
            names.contains(&"reader") && names.contains(&"admin"),
            "{names:?}"
        );
        let reader_info = admin
            .query_users(&ap(), Some("reader"))
            .await
            .expect("query reader");
        assert_eq!(reader_info.len(), 1);
        assert_eq!(reader_info[0].roles, vec!["read".to_string()]);

        // Wrong password and unknown user: the client cannot connect.
        assert!(connect_as(&server, "reader", "nope").await.is_err());
        assert!(connect_as(&server, "nobody", "nope").await.is_err());

        let reader = must_connect(&server, "reader", "reader-pw").await;
        let record = reader.get(&rp(), &key("demo", 1), Bins::All).await;
        assert!(record.is_ok(), "reader reads: {record:?}");
        expect_code(
            reader.put(&wp(), &key("demo", 2), &[as_bin!("v", 2)]).await,
            ResultCode::RoleViolation,
            "reader writes",
        );
        expect_code(
            reader.delete(&wp(), &key("demo", 1)).await,
            ResultCode::RoleViolation,
            "reader deletes",
        );
        expect_code(
            reader.create_user(&ap(), "x", "y", &["read"]).await,
            ResultCode::RoleViolation,
            "reader administers users",
        );
        // A reader may query itself, not others.
        assert!(reader.query_users(&ap(), Some("reader")).await.is_ok());
        expect_code(
            reader.query_users(&ap(), None).await,
            ResultCode::RoleViolation,
            "reader lists users",
        );

        let writer = must_connect(&server, "writer", "writer-pw").await;
        put_get(&writer, &key("demo", 3), 3).await;

        // Granting a role takes effect on connections already open.
        admin
            .grant_roles(&ap(), "reader", &["write"])
            .await
            .expect("grant write");
        reader
            .put(&wp(), &key("demo", 4), &[as_bin!("v", 4)])
            .await
            .expect("reader writes after the grant");

        // Dropping a user ends its access and its logins.
        admin.drop_user(&ap(), "writer").await.expect("drop writer");
        expect_code(
            writer.put(&wp(), &key("demo", 5), &[as_bin!("v", 5)]).await,
            ResultCode::NotAuthenticated,
            "dropped user writes",
        );
        let mut s = raw_connect(&server);
        assert_eq!(raw_login(&mut s, "writer", "writer-pw").0, 60);
        admin.close().await.ok();
        reader.close().await.ok();
        writer.close().await.ok();
    })
    .await;
    server.expect_log("create user \"reader\"");
    server.expect_log("role violation: user \"reader\"");
    server.expect_log("drop user \"writer\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_and_clients_carry_on() {
    let server = start_secure(3, "ttl", 2);
    bounded(async {
        let client = must_connect(&server, ADMIN, ADMIN_PASSWORD).await;
        put_get(&client, &key("ttl", 1), 1).await;
        let mut s = raw_connect(&server);
        let (result, token) = raw_login(&mut s, ADMIN, ADMIN_PASSWORD);
        assert_eq!(result, 0);
        let token = token.unwrap();
        let mut fresh = raw_connect(&server);
        assert_eq!(raw_authenticate(&mut fresh, ADMIN, &token), 0);
        tokio::time::sleep(Duration::from_millis(3_100)).await;
        let mut late = raw_connect(&server);
        assert_eq!(
            raw_authenticate(&mut late, ADMIN, &token),
            66,
            "expired token"
        );
        // The client logs in again by itself when it needs a new socket.
        put_get(&client, &key("ttl", 2), 2).await;
        let again = must_connect(&server, ADMIN, ADMIN_PASSWORD).await;
        put_get(&again, &key("ttl", 3), 3).await;
        client.close().await.ok();
        again.close().await.ok();
    })
    .await;
}

#[test]
fn failed_logins_are_slowed_per_address() {
    let server = start_secure(4, "throttle", 86_400);
    let mut s = raw_connect(&server);
    for _ in 0..4 {
        assert_eq!(raw_login(&mut s, ADMIN, "wrong").0, 65);
    }
    // After four failures the next attempt waits 50 ms x 2^3 = 400 ms
    // (the configured cap), right password or not.
    let started = Instant::now();
    assert_eq!(raw_login(&mut s, ADMIN, ADMIN_PASSWORD).0, 0);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "a login after 4 failures answered in {waited:?}"
    );
    // The success cleared the address.
    let started = Instant::now();
    assert_eq!(raw_login(&mut s, ADMIN, ADMIN_PASSWORD).0, 0);
    assert!(started.elapsed() < Duration::from_millis(300));
}

/// Runs `ospreyd` on the fixture's config without waiting for `ready`:
/// (exit success, everything printed).
fn run_daemon_expecting_exit(server: &Server) -> (bool, String) {
    let (out, timed_out) = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_ospreyd"))
            .arg("--config")
            .arg(server.config_path())
            .env_remove("OSPREY_ADMIN_PASSWORD"),
        Duration::from_secs(60),
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!timed_out, "ospreyd did not exit within 60 s:\n{text}");
    (out.status.success(), text)
}

#[test]
fn damaged_store_and_missing_admin_password_stop_the_start() {
    let mut server = start_secure(5, "store", 86_400);
    server.stop_clean();
    let store = store_path(&server);
    let mut bytes = std::fs::read(&store).expect("the store exists after the first start");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x20;
    std::fs::write(&store, &bytes).unwrap();
    let (ok, text) = run_daemon_expecting_exit(&server);
    assert!(!ok, "ospreyd started on a damaged store:\n{text}");
    assert!(
        text.contains(&store.display().to_string()) && text.contains("checksum"),
        "the error names the store and the damage:\n{text}"
    );

    // No store and no admin password: refused, saying how to give one.
    std::fs::remove_file(&store).unwrap();
    let config = std::fs::read_to_string(server.config_path()).unwrap();
    let without: String = config
        .lines()
        .filter(|l| !l.starts_with("admin-password-file"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(server.config_path(), without).unwrap();
    let (ok, text) = run_daemon_expecting_exit(&server);
    assert!(!ok, "ospreyd started without an admin password:\n{text}");
    assert!(
        text.contains("admin-password-file") && text.contains("OSPREY_ADMIN_PASSWORD"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_off_accepts_clients_with_credentials() {
    let server = Server::start(6);
    bounded(async {
        let mut s = raw_connect(&server);
        assert_eq!(raw_login(&mut s, "anyone", "anything").0, 52);
        assert_eq!(raw_put(&mut s), 0);
        let client = must_connect(&server, "anyone", "anything").await;
        put_get(&client, &key("off", 1), 1).await;
        expect_code(
            client.create_user(&ap(), "u", "p", &["read"]).await,
            ResultCode::SecurityNotEnabled,
            "user admin with security off",
        );
        client.close().await.ok();
    })
    .await;
}

// ---------------------------------------------------------------------------
// Python client, then the users it made from the Rust client across restarts.

fn run_python(server: &Server, mode: &str) {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/python_security_test.py");
    let (out, timed_out) = run_bounded(
        Command::new(python())
            .arg(&script)
            .args(["--host", "127.0.0.1", "--port"])
            .arg(server.port().to_string())
            .args(["--mode", mode, "--admin-password", ADMIN_PASSWORD])
            .env("PYTHONUNBUFFERED", "1"),
        Duration::from_secs(300),
    );
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(!timed_out, "the Python security script timed out\n{report}");
    assert!(
        out.status.success(),
        "the Python security script failed ({}):\n{report}",
        out.status
    );
}

/// The users the Python script made, from the Rust client.
async fn check_python_users(server: &Server, round: &str) {
    let client = must_connect(server, "pyuser", "pyuser-pw").await;
    put_get(&client, &key("py", 1), 7).await;
    let reader = must_connect(server, "pyreader", "pyreader-pw").await;
    expect_code(
        reader.put(&wp(), &key("py", 2), &[as_bin!("v", 1)]).await,
        ResultCode::RoleViolation,
        round,
    );
    client.close().await.ok();
    reader.close().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_users_log_in_from_rust_and_survive_restarts() {
    let mut server = start_secure(7, "python", 2);
    run_python(&server, "secure");
    bounded(check_python_users(&server, "before restart")).await;
    // Warm restart.
    server.restart();
    bounded(check_python_users(&server, "after a warm restart")).await;
    // Cold restart: the index segments go, the store file stays.
    server.stop_clean();
    assert!(server.remove_segments() > 0);
    server.restart();
    assert_eq!(server.start_kind(), Some(support::StartKind::Cold));
    bounded(check_python_users(&server, "after a cold restart")).await;
    server.stop_clean();
}

#[test]
fn python_client_with_credentials_and_security_off() {
    let server = Server::start(8);
    run_python(&server, "insecure");
}

#[test]
fn osprey_cli_administers_users_and_roles() {
    let server = start_secure(9, "cli", 86_400);
    let port = server.port().to_string();
    let osprey = |args: &[&str], new_password: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_osprey"));
        cmd.args(args)
            .args(["-p", &port, "--user", ADMIN])
            .env("OSPREY_PASSWORD", ADMIN_PASSWORD)
            .env_remove("OSPREY_NEW_PASSWORD");
        if let Some(p) = new_password {
            cmd.env("OSPREY_NEW_PASSWORD", p);
        }
        let (out, timed_out) = run_bounded(&mut cmd, Duration::from_secs(60));
        assert!(!timed_out, "osprey {args:?} timed out");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = osprey(&["role", "create", "demo-rw", "read-write:test:demo"], None);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = osprey(&["user", "create", "carol", "demo-rw"], Some("carol-pw"));
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = osprey(&["user", "list"], None);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("carol: demo-rw"), "{out}");
    let (code, out, _) = osprey(&["role", "list", "demo-rw"], None);
    assert_eq!(code, Some(0));
    assert_eq!(out.trim(), "demo-rw: read-write:test:demo");
    let (code, _, err) = osprey(&["user", "create", "carol"], Some("x"));
    assert_eq!(code, Some(1));
    assert!(err.contains("exists"), "{err}");
    let (code, _, _) = osprey(&["user", "grant", "carol", "read"], None);
    assert_eq!(code, Some(0));
    let mut s = raw_connect(&server);
    assert_eq!(raw_login(&mut s, "carol", "carol-pw").0, 0);
    assert_eq!(raw_put(&mut s), 0, "demo-rw covers test.demo");
    let (code, _, _) = osprey(&["user", "password", "carol"], Some("carol-pw2"));
    assert_eq!(code, Some(0));
    assert_eq!(
        raw_login(&mut raw_connect(&server), "carol", "carol-pw").0,
        65
    );
    assert_eq!(
        raw_login(&mut raw_connect(&server), "carol", "carol-pw2").0,
        0
    );
    let (code, _, _) = osprey(&["user", "drop", "carol"], None);
    assert_eq!(code, Some(0));
    let (code, _, _) = osprey(&["role", "drop", "demo-rw"], None);
    assert_eq!(code, Some(0));
    // Info through the CLI logs in too; without --user it gets 80.
    let (code, out, _) = osprey(&["info", "namespaces"], None);
    assert_eq!((code, out.trim()), (Some(0), "test"));
    let (out, _) = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_osprey")).args(["info", "-p", &port, "namespaces"]),
        Duration::from_secs(60),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ERROR:80:not authenticated"
    );
}

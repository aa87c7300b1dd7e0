//! The official Rust client (crate `aerospike` 3.0) against ospreyd: every
//! single-record command and its result codes, TTLs, batch reads, scans,
//! truncate and info, each test on its own fresh server.
//!
//! Everything in the Python test's list has a Rust client call, except
//! `operate_ordered` (the Rust client always gets positional results, which
//! `operate` checks instead). Like the C client, the Rust client refuses bin
//! names over 15 bytes before sending; the server's own answer to one (21) is
//! checked with a raw frame.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aerospike::operations;
use aerospike::{
    as_bin, as_geo, as_list, as_map, as_val, AdminPolicy, BatchOperation, BatchPolicy,
    BatchReadPolicy, Bin, Bins, Client, Expiration, GenerationPolicy, Key, PartitionFilter,
    QueryPolicy, ReadPolicy, Record, RecordExistsAction, ResultCode, Statement, Value, WritePolicy,
};
use support::client::{bounded, connect, expect_code};
use support::{run_bounded, Server, NAMESPACE as NS};

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

fn key(set: &str, user_key: impl Into<Value>) -> Key {
    Key::new(NS, set, user_key.into()).unwrap()
}

async fn get(client: &Client, k: &Key) -> Record {
    client
        .get(&rp(), k, Bins::All)
        .await
        .unwrap_or_else(|e| panic!("get {k:?}: {e}"))
}

async fn missing(client: &Client, k: &Key) -> bool {
    match client.get(&rp(), k, Bins::All).await {
        Ok(_) => false,
        Err(e) if e.server_result_code() == Some(ResultCode::KeyNotFoundError) => true,
        Err(e) => panic!("get {k:?}: {e}"),
    }
}

async fn put(client: &Client, k: &Key, bins: &[Bin]) {
    client
        .put(&wp(), k, bins)
        .await
        .unwrap_or_else(|e| panic!("put {k:?}: {e}"));
}

fn bins_of(r: &Record) -> HashMap<String, Value> {
    r.bins.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn bin_map(bins: &[Bin]) -> HashMap<String, Value> {
    bins.iter()
        .map(|b| (b.name.clone(), b.value.clone()))
        .collect()
}

fn ttl_secs(r: &Record) -> Option<u64> {
    r.time_to_live().map(|d| d.as_secs())
}

/// Sends a put of `{bin: 1}` (namespace test, set "rawbin", a made-up
/// digest) as a raw AS_MSG frame and returns the reply's result code.
fn raw_put_result(server: &Server, bin: &str) -> u8 {
    use std::io::{Read, Write};
    let mut fields = Vec::new();
    for (kind, data) in [
        (0u8, NS.as_bytes()),
        (1, b"rawbin".as_slice()),
        (4, &[7u8; 20]),
    ] {
        fields.extend_from_slice(&(data.len() as u32 + 1).to_be_bytes());
        fields.push(kind);
        fields.extend_from_slice(data);
    }
    let mut body = vec![22, 0, 1, 0, 0, 0]; // header size, info1, info2 = WRITE, info3, info4, rc
    body.extend_from_slice(&[0; 8]); // generation, ttl
    body.extend_from_slice(&1000u32.to_be_bytes()); // transaction ttl
    body.extend_from_slice(&3u16.to_be_bytes()); // fields
    body.extend_from_slice(&1u16.to_be_bytes()); // ops
    body.extend(fields);
    body.extend_from_slice(&(4 + bin.len() as u32 + 8).to_be_bytes());
    body.extend_from_slice(&[2, 1, 0, bin.len() as u8]); // WRITE, integer
    body.extend_from_slice(bin.as_bytes());
    body.extend_from_slice(&1i64.to_be_bytes());
    let mut frame = ((2u64 << 56) | (3u64 << 48) | body.len() as u64)
        .to_be_bytes()
        .to_vec();
    frame.extend(body);

    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port())).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&frame).expect("send raw put");
    let mut head = [0u8; 8];
    s.read_exact(&mut head).expect("raw put: reply header");
    let word = u64::from_be_bytes(head);
    assert_eq!(
        (word >> 56, (word >> 48) & 0xFF),
        (2, 3),
        "raw put: reply version/type"
    );
    let size = (word & 0xFFFF_FFFF_FFFF) as usize;
    assert!((22..1 << 20).contains(&size), "raw put: reply size {size}");
    let mut reply = vec![0u8; size];
    s.read_exact(&mut reply).expect("raw put: reply body");
    reply[5]
}

/// All rows of a scan (a query without a filter) of `set` ("" = the whole
/// namespace).
async fn scan(client: &Client, set: &str, bins: Bins) -> Vec<Record> {
    let mut policy = QueryPolicy::default();
    policy.base_policy.total_timeout = 20_000;
    let rows = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let (rows2, errors2) = (rows.clone(), errors.clone());
    let mut handle = client
        .query_foreach(
            &policy,
            PartitionFilter::all(),
            Statement::new(NS, set, bins),
            move |res| {
                match res {
                    Ok(rec) => rows2.lock().unwrap().push(rec),
                    Err(e) => errors2.lock().unwrap().push(e.to_string()),
                }
                std::future::ready(true)
            },
        )
        .await
        .unwrap_or_else(|e| panic!("scan of set {set:?}: {e}"));
    handle
        .wait()
        .await
        .unwrap_or_else(|e| panic!("scan of set {set:?}: {e}"));
    let errors = errors.lock().unwrap();
    assert!(errors.is_empty(), "scan of set {set:?}: errors {errors:?}");
    let rows = std::mem::take(&mut *rows.lock().unwrap());
    rows
}

/// (set, user key) of each scan row, requiring stored keys and no repeats.
fn scan_keys(rows: &[Record]) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for r in rows {
        let k = r.key.as_ref().expect("scan row without a key");
        assert_eq!(k.namespace(), NS);
        let uk = k
            .user_key()
            .unwrap_or_else(|| panic!("scan row {k:?} has no stored key (written with send_key)"));
        assert!(
            out.insert((k.set_name().to_string(), uk.to_string())),
            "scan returned {k:?} twice"
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_info() {
    let mut server = Server::start(1);
    let client = connect(&server).await;
    bounded(async {
        assert!(client.is_connected());
        let names = client.node_names();
        assert_eq!(names.len(), 1, "nodes: {names:?}");

        let info = client
            .info(
                &AdminPolicy::default(),
                &["build", "namespaces", "statistics", "node"],
            )
            .await
            .expect("info");
        let build = info.get("build").expect("no build in the info reply");
        let parts: Vec<&str> = build.split('.').collect();
        assert!(
            parts.len() >= 4 && parts[..3].iter().all(|p| p.parse::<u32>().is_ok()),
            "build {build:?}"
        );
        let namespaces = info.get("namespaces").expect("namespaces");
        assert!(
            namespaces.split(';').any(|n| n == NS),
            "namespaces {namespaces:?}"
        );
        let stats = info.get("statistics").expect("statistics");
        assert!(!stats.is_empty(), "statistics is empty");
        for pair in stats.split(';').filter(|p| !p.is_empty()) {
            assert!(
                pair.split_once('=').is_some_and(|(k, _)| !k.is_empty()),
                "statistics entry {pair:?} is not name=value"
            );
        }
        assert_eq!(info.get("node"), Some(&names[0]), "node id");

        // A second client sees the first one's writes.
        let other = connect(&server).await;
        let k = key("connect", 1);
        put(&other, &k, &[as_bin!("a", 1)]).await;
        assert_eq!(get(&client, &k).await.bins.get("a"), Some(&Value::Int(1)));
        other.close().await.expect("close");
    })
    .await;

    // The osprey CLI, when it has been built.
    if let Some(cli) = option_env!("CARGO_BIN_EXE_osprey") {
        let (out, timed_out) = run_bounded(
            Command::new(cli).args([
                "info",
                "-h",
                "127.0.0.1",
                "-p",
                &server.port().to_string(),
                "build",
            ]),
            Duration::from_secs(30),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !timed_out && out.status.success() && text.contains('.'),
            "osprey info build: {} {text} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    client.close().await.expect("close");
    server.stop_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bin_types_select_exists_touch() {
    let mut server = Server::start(2);
    let client = connect(&server).await;
    bounded(async {
        let geo = r#"{"type": "Point", "coordinates": [-122.25, 37.5]}"#;
        let k = key("types", "all");
        let bins = vec![
            as_bin!("int", 42),
            as_bin!("neg", -7),
            as_bin!("max", i64::MAX),
            as_bin!("min", i64::MIN),
            as_bin!("float", 3.25),
            as_bin!("str", "héllo wörld"),
            as_bin!("empty", ""),
            as_bin!("blob", vec![0u8, 1, 0xfe, 0xff]),
            as_bin!("true", true),
            as_bin!("false", false),
            as_bin!(
                "list",
                as_list!(1, "two", 3.5, vec![4u8], as_list!(5, as_list!(6)))
            ),
            as_bin!(
                "map",
                as_map!("a" => 1, "b" => as_list!(1, 2), "c" => as_map!("d" => "e"), 7 => "int key")
            ),
            Bin::new("geo", as_geo!(geo)),
        ];
        put(&client, &k, &bins).await;
        let rec = get(&client, &k).await;
        assert_eq!(rec.generation, 1, "gen after the first put");
        assert_eq!(ttl_secs(&rec), None, "a default-ttl 0 record never expires");
        let mut got = bins_of(&rec);
        let mut want = bin_map(&bins);
        // GeoJSON text may come back re-formatted; compare it without blanks.
        let strip = |v: Option<Value>| match v {
            Some(Value::GeoJson(s)) => s.split_whitespace().collect::<String>(),
            other => panic!("geo bin came back as {other:?}"),
        };
        assert_eq!(strip(got.remove("geo")), strip(want.remove("geo")));
        assert_eq!(got, want, "bins read back");
        assert_eq!(got.get("true"), Some(&Value::Bool(true)), "bool bin");

        // big values
        let big_s = "x".repeat(100_000);
        let big_b: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + 3) as u8).collect();
        put(
            &client,
            &k,
            &[
                as_bin!("bigs", big_s.clone()),
                as_bin!("bigb", big_b.clone()),
            ],
        )
        .await;
        let rec = get(&client, &k).await;
        assert_eq!(rec.generation, 2);
        assert_eq!(rec.bins.get("bigs"), Some(&Value::String(big_s)));
        assert_eq!(rec.bins.get("bigb"), Some(&Value::Blob(big_b)));
        assert_eq!(
            rec.bins.get("int"),
            Some(&Value::Int(42)),
            "earlier bins survive an update"
        );

        // int, string and blob user keys are different records
        put(&client, &key("types", 1), &[as_bin!("k", "int")]).await;
        put(&client, &key("types", "1"), &[as_bin!("k", "str")]).await;
        put(&client, &key("types", vec![b'1']), &[as_bin!("k", "blob")]).await;
        for (uk, want) in [
            (Value::from(1), "int"),
            (Value::from("1"), "str"),
            (Value::from(vec![b'1']), "blob"),
        ] {
            let rec = get(&client, &key("types", uk)).await;
            assert_eq!(rec.bins.get("k"), Some(&Value::from(want)));
        }
        // a record without a set
        let no_set = Key::new(NS, "", Value::from("no-set")).unwrap();
        put(&client, &no_set, &[as_bin!("a", 1)]).await;
        assert_eq!(get(&client, &no_set).await.bins.len(), 1);

        // select
        let k = key("select", 1);
        put(
            &client,
            &k,
            &[as_bin!("a", 1), as_bin!("b", "two"), as_bin!("c", 3.0)],
        )
        .await;
        let rec = client.get(&rp(), &k, ["a", "c"]).await.expect("select");
        assert_eq!(
            bins_of(&rec),
            bin_map(&[as_bin!("a", 1), as_bin!("c", 3.0)]),
            "select a, c"
        );
        let rec = client.get(&rp(), &k, ["b", "nope"]).await.expect("select");
        assert_eq!(bins_of(&rec), bin_map(&[as_bin!("b", "two")]));
        let rec = client.get(&rp(), &k, Bins::None).await.expect("header");
        assert!(
            rec.bins.is_empty(),
            "header read returned bins {:?}",
            rec.bins
        );
        assert_eq!(rec.generation, 1);
        expect_code(
            client.get(&rp(), &key("select", "missing"), ["a"]).await,
            ResultCode::KeyNotFoundError,
            "select of a missing record",
        );

        // exists
        assert!(client.exists(&rp(), &k).await.expect("exists"));
        assert!(!client
            .exists(&rp(), &key("exists", "missing"))
            .await
            .expect("exists"));

        // touch
        let k = key("touch", 1);
        put(&client, &k, &[as_bin!("a", 1)]).await;
        let mut touch = wp();
        touch.expiration = Expiration::Seconds(100);
        client.touch(&touch, &k).await.expect("touch");
        let rec = get(&client, &k).await;
        assert_eq!(rec.generation, 2, "gen after touch");
        let ttl = ttl_secs(&rec).expect("ttl after touch(100)");
        assert!((95..=100).contains(&ttl), "ttl after touch(100): {ttl}");
        expect_code(
            client.touch(&touch, &key("touch", "missing")).await,
            ResultCode::KeyNotFoundError,
            "touch of a missing record",
        );
    })
    .await;
    client.close().await.expect("close");
    server.stop_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operate() {
    let mut server = Server::start(3);
    let client = connect(&server).await;
    bounded(async {
        let k = key("operate", 1);
        put(
            &client,
            &k,
            &[
                as_bin!("n", 10),
                as_bin!("s", "mid"),
                as_bin!("f", 1.5),
                as_bin!("gone", "x"),
                as_bin!("b", vec![2u8]),
            ],
        )
        .await;
        let ops = [
            operations::add(&as_bin!("n", 5)),
            operations::add(&as_bin!("f", 0.25)),
            operations::append(&as_bin!("s", ">")),
            operations::prepend(&as_bin!("s", "<")),
            operations::append(&as_bin!("b", vec![3u8])),
            operations::prepend(&as_bin!("b", vec![1u8])),
            operations::put(&as_bin!("w", "new")),
            operations::put(&as_bin!("gone", None)),
            operations::add(&as_bin!("fresh", 7)),
            operations::get_bin("n"),
            operations::get_bin("s"),
        ];
        let rec = client.operate(&wp(), &k, &ops).await.expect("operate");
        assert_eq!(rec.generation, 2, "gen after operate");
        // Reads see the values after the earlier ops.
        assert_eq!(rec.operation_result(9), Some(&Value::Int(15)), "{rec:?}");
        assert_eq!(
            rec.operation_result(10),
            Some(&Value::from("<mid>")),
            "{rec:?}"
        );
        let rec = get(&client, &k).await;
        assert_eq!(
            bins_of(&rec),
            bin_map(&[
                as_bin!("n", 15),
                as_bin!("s", "<mid>"),
                as_bin!("f", 1.75),
                as_bin!("b", vec![1u8, 2, 3]),
                as_bin!("w", "new"),
                as_bin!("fresh", 7),
            ]),
            "record after operate"
        );

        // the single-op wrappers
        client
            .add(&wp(), &k, &[as_bin!("n", -20)])
            .await
            .expect("add");
        client
            .append(&wp(), &k, &[as_bin!("s", "!")])
            .await
            .expect("append");
        client
            .prepend(&wp(), &k, &[as_bin!("s", "¡")])
            .await
            .expect("prepend");
        let rec = get(&client, &k).await;
        assert_eq!(rec.bins.get("n"), Some(&Value::Int(-5)));
        assert_eq!(rec.bins.get("s"), Some(&Value::from("¡<mid>!")));
        assert_eq!(rec.generation, 5);

        // read-only operate, and a touch in operate
        let rec = client
            .operate(&wp(), &k, &[operations::get_bin("w")])
            .await
            .expect("operate read");
        assert_eq!(rec.bins.get("w"), Some(&Value::from("new")));
        let mut touch = wp();
        touch.expiration = Expiration::Seconds(200);
        client
            .operate(&touch, &k, &[operations::touch()])
            .await
            .expect("operate touch");
        let rec = get(&client, &k).await;
        assert_eq!(rec.generation, 6);
        let ttl = ttl_secs(&rec).expect("ttl after touch");
        assert!((195..=200).contains(&ttl), "ttl {ttl}");

        // delete the record through operate
        client
            .operate(&wp(), &k, &[operations::delete()])
            .await
            .expect("operate delete");
        assert!(
            missing(&client, &k).await,
            "record present after operate delete"
        );

        // operate on a missing record creates it; deleting its only bin removes it
        let k2 = key("operate", 2);
        let rec = client
            .operate(
                &wp(),
                &k2,
                &[operations::add(&as_bin!("c", 1)), operations::get_bin("c")],
            )
            .await
            .expect("operate on a missing record");
        assert_eq!(rec.generation, 1);
        assert_eq!(rec.operation_result(1), Some(&Value::Int(1)));
        client
            .operate(&wp(), &k2, &[operations::put(&as_bin!("c", None))])
            .await
            .expect("delete the only bin");
        assert!(
            missing(&client, &k2).await,
            "record without bins still present"
        );
        expect_code(
            client
                .operate(
                    &wp(),
                    &key("operate", "missing"),
                    &[operations::get_bin("a")],
                )
                .await,
            ResultCode::KeyNotFoundError,
            "read-only operate of a missing record",
        );
    })
    .await;
    client.close().await.expect("close");
    server.stop_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_exists_policies_and_generation() {
    let mut server = Server::start(4);
    let client = connect(&server).await;
    bounded(async {
        // remove
        let k = key("remove", 1);
        put(&client, &k, &[as_bin!("a", 1)]).await;
        assert!(
            client.delete(&wp(), &k).await.expect("delete"),
            "delete of a present record"
        );
        assert!(missing(&client, &k).await);
        assert!(
            !client
                .delete(&wp(), &k)
                .await
                .expect("delete of a missing record"),
            "delete of a missing record returned true"
        );
        put(&client, &k, &[as_bin!("a", 2)]).await;
        assert_eq!(
            get(&client, &k).await.generation,
            1,
            "re-created record's gen"
        );

        // durable delete
        let mut durable = wp();
        durable.durable_delete = true;
        assert!(client.delete(&durable, &k).await.expect("durable delete"));
        assert!(
            missing(&client, &k).await,
            "record present after durable delete"
        );
        put(&client, &k, &[as_bin!("a", 3)]).await;
        assert_eq!(get(&client, &k).await.bins.get("a"), Some(&Value::Int(3)));

        // exists actions
        let k = key("policy", 1);
        let mut create = wp();
        create.record_exists_action = RecordExistsAction::CreateOnly;
        client
            .put(&create, &k, &[as_bin!("a", 1)])
            .await
            .expect("create");
        expect_code(
            client.put(&create, &k, &[as_bin!("a", 2)]).await,
            ResultCode::KeyExistsError,
            "create-only on an existing record",
        );
        assert_eq!(get(&client, &k).await.bins.get("a"), Some(&Value::Int(1)));
        let mut update_only = wp();
        update_only.record_exists_action = RecordExistsAction::UpdateOnly;
        let mut replace_only = wp();
        replace_only.record_exists_action = RecordExistsAction::ReplaceOnly;
        let mut replace = wp();
        replace.record_exists_action = RecordExistsAction::Replace;
        expect_code(
            client
                .put(&update_only, &key("policy", "m1"), &[as_bin!("a", 1)])
                .await,
            ResultCode::KeyNotFoundError,
            "update-only on a missing record",
        );
        expect_code(
            client
                .put(&replace_only, &key("policy", "m2"), &[as_bin!("a", 1)])
                .await,
            ResultCode::KeyNotFoundError,
            "replace-only on a missing record",
        );
        assert!(missing(&client, &key("policy", "m1")).await);
        assert!(missing(&client, &key("policy", "m2")).await);
        client
            .put(&update_only, &k, &[as_bin!("b", 2)])
            .await
            .expect("update-only");
        assert_eq!(
            bins_of(&get(&client, &k).await),
            bin_map(&[as_bin!("a", 1), as_bin!("b", 2)])
        );
        client
            .put(&replace_only, &k, &[as_bin!("c", 3)])
            .await
            .expect("replace-only");
        assert_eq!(
            bins_of(&get(&client, &k).await),
            bin_map(&[as_bin!("c", 3)])
        );
        client
            .put(&replace, &k, &[as_bin!("d", 4)])
            .await
            .expect("replace");
        assert_eq!(
            bins_of(&get(&client, &k).await),
            bin_map(&[as_bin!("d", 4)])
        );
        client
            .put(&replace, &key("policy", "m3"), &[as_bin!("e", 5)])
            .await
            .expect("replace on a missing record");
        assert_eq!(get(&client, &key("policy", "m3")).await.generation, 1);

        // generation checks
        let k = key("gen", 1);
        put(&client, &k, &[as_bin!("a", 1)]).await;
        let mut gen_eq = wp();
        gen_eq.generation_policy = GenerationPolicy::ExpectGenEqual;
        gen_eq.generation = 5;
        expect_code(
            client.put(&gen_eq, &k, &[as_bin!("a", 2)]).await,
            ResultCode::GenerationError,
            "write with a wrong expected generation",
        );
        let rec = get(&client, &k).await;
        assert_eq!(
            (rec.generation, rec.bins.get("a")),
            (1, Some(&Value::Int(1)))
        );
        gen_eq.generation = 1;
        client
            .put(&gen_eq, &k, &[as_bin!("a", 3)])
            .await
            .expect("write with the right generation");
        assert_eq!(get(&client, &k).await.generation, 2);
        expect_code(
            client.delete(&gen_eq, &k).await,
            ResultCode::GenerationError,
            "delete with a wrong expected generation",
        );
        let mut gen_gt = wp();
        gen_gt.generation_policy = GenerationPolicy::ExpectGenGreater;
        gen_gt.generation = 2;
        expect_code(
            client.put(&gen_gt, &k, &[as_bin!("a", 4)]).await,
            ResultCode::GenerationError,
            "GEN_GT write with an equal generation",
        );
        gen_gt.generation = 3;
        client
            .put(&gen_gt, &k, &[as_bin!("a", 4)])
            .await
            .expect("GEN_GT write");
        assert_eq!(get(&client, &k).await.generation, 3);
    })
    .await;
    client.close().await.expect("close");
    server.stop_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_codes() {
    let mut server = Server::start(5);
    let client = connect(&server).await;
    bounded(async {
        expect_code(
            client.get(&rp(), &key("get", "missing"), Bins::All).await,
            ResultCode::KeyNotFoundError,
            "get of a missing record",
        );

        // record too big for a 1 MiB write block
        let k = key("big", 1);
        put(&client, &k, &[as_bin!("small", 1)]).await;
        let blob = vec![7u8; 2 * 1024 * 1024];
        expect_code(
            client
                .put(&wp(), &k, &[as_bin!("blob", blob.clone())])
                .await,
            ResultCode::RecordTooBig,
            "2 MiB bin on an existing record",
        );
        expect_code(
            client
                .put(&wp(), &key("big", 2), &[as_bin!("blob", blob)])
                .await,
            ResultCode::RecordTooBig,
            "2 MiB bin on a new record",
        );
        let rec = get(&client, &k).await;
        assert_eq!(
            (rec.generation, rec.bins.len()),
            (1, 1),
            "record after a refused write"
        );
        assert!(missing(&client, &key("big", 2)).await);
        put(&client, &k, &[as_bin!("blob", vec![7u8; 512 * 1024])]).await;

        // bin names: 15 bytes is the limit. The Rust client refuses a longer
        // name itself (a client-side invalid-argument error, nothing sent);
        // the server's own answer, BIN_NAME_TOO_LONG (21), is checked with a
        // raw frame.
        let k = key("binname", 1);
        put(&client, &k, &[as_bin!("x".repeat(15), 1)]).await;
        match client.put(&wp(), &k, &[as_bin!("y".repeat(16), 1)]).await {
            Ok(()) => panic!("a 16-byte bin name was accepted"),
            Err(e) => assert!(
                e.server_result_code().is_none()
                    || e.server_result_code() == Some(ResultCode::BinNameTooLong),
                "16-byte bin name: {e}"
            ),
        }
        assert_eq!(
            raw_put_result(&server, &"y".repeat(16)),
            21,
            "server result for a 16-byte bin name"
        );
        assert_eq!(
            raw_put_result(&server, &"y".repeat(15)),
            0,
            "server result for a 15-byte bin name"
        );
        assert_eq!(
            bins_of(&get(&client, &k).await),
            bin_map(&[as_bin!("x".repeat(15), 1)])
        );

        // incompatible types
        let k = key("incompat", 1);
        put(&client, &k, &[as_bin!("s", "text"), as_bin!("n", 1)]).await;
        expect_code(
            client.add(&wp(), &k, &[as_bin!("s", 1)]).await,
            ResultCode::BinTypeError,
            "add to a string bin",
        );
        expect_code(
            client
                .operate(&wp(), &k, &[operations::add(&as_bin!("s", 1))])
                .await,
            ResultCode::BinTypeError,
            "operate add to a string bin",
        );
        expect_code(
            client.append(&wp(), &k, &[as_bin!("n", "x")]).await,
            ResultCode::BinTypeError,
            "append to an integer bin",
        );
        expect_code(
            client.add(&wp(), &k, &[as_bin!("n", 1.5)]).await,
            ResultCode::BinTypeError,
            "add a float to an integer bin",
        );
        assert_eq!(
            get(&client, &k).await.generation,
            1,
            "refused ops changed the record"
        );
    })
    .await;
    client.close().await.expect("close");
    server.stop_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl() {
    let mut server = Server::start(6);
    let client = connect(&server).await;
    bounded(async {
        let k = key("ttl", "short");
        let mut short = wp();
        short.expiration = Expiration::Seconds(1);
        client
            .put(&short, &k, &[as_bin!("a", 1)])
            .await
            .expect("put ttl 1");
        let ttl = ttl_secs(&get(&client, &k).await).expect("a ttl 1 record has a ttl");
        assert!(ttl <= 1, "ttl {ttl}");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            missing(&client, &k).await,
            "ttl 1 record readable after 3 s"
        );
        assert!(!client.exists(&rp(), &k).await.expect("exists"));
        let mut update_only = wp();
        update_only.record_exists_action = RecordExistsAction::UpdateOnly;
        expect_code(
            client.put(&update_only, &k, &[as_bin!("a", 2)]).await,
            ResultCode::KeyNotFoundError,
            "update-only of an expired record",
        );
        let mut create = wp();
        create.record_exists_action = RecordExistsAction::CreateOnly;
        client
            .put(&create, &k, &[as_bin!("a", 2)])
            .await
            .expect("create over an expired record");
        assert_eq!(get(&client, &k).await.generation, 1);

        // never expire
        let k = key("ttl", "never");
        let mut p = wp();
        p.expiration = Expiration::Seconds(50);
        client.put(&p, &k, &[as_bin!("a", 1)]).await.expect("put");
        let ttl = ttl_secs(&get(&client, &k).await).expect("ttl 50");
        assert!((45..=50).contains(&ttl), "ttl {ttl}");
        p.expiration = Expiration::Never;
        client.put(&p, &k, &[as_bin!("a", 2)]).await.expect("put");
        let rec = get(&client, &k).await;
        assert_eq!((ttl_secs(&rec), rec.expiration()), (None, 0), "TTL never");

        // don't update
        let k = key("ttl", "keep");
        p.expiration = Expiration::Seconds(1000);
        client.put(&p, &k, &[as_bin!("a", 1)]).await.expect("put");
        p.expiration = Expiration::DontUpdate;
        client.put(&p, &k, &[as_bin!("a", 2)]).await.expect("put");
        let rec = get(&client, &k).await;
        let ttl = ttl_secs(&rec).expect("ttl kept");
        assert!((990..=1000).contains(&ttl), "ttl after DontUpdate: {ttl}");
        assert_eq!(rec.generation, 2);
        let k = key("ttl", "keep-new");
        client.put(&p, &k, &[as_bin!("a", 1)]).await.expect("put");
        assert_eq!(
            ttl_secs(&get(&client, &k).await),
            None,
            "DontUpdate on a new record"
        );

        // namespace default (0 = never)
        let k = key("ttl", "default");
        p.expiration = Expiration::Seconds(60);
        client.put(&p, &k, &[as_bin!("a", 1)]).await.expect("put");
        p.expiration = Expiration::NamespaceDefault;
        client.put(&p, &k, &[as_bin!("a", 1)]).await.expect("put");
        assert_eq!(
            ttl_secs(&get(&client, &k).await),
            None,
            "namespace default ttl"
        );
    })
    .await;
    client.close().await.expect("close");
    server.stop_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_read() {
    let mut server = Server::start(7);
    let client = connect(&server).await;
    bounded(async {
        for i in 0..10 {
            put(
                &client,
                &key("batch", i),
                &[as_bin!("i", i), as_bin!("s", i.to_string())],
            )
            .await;
        }
        // hits are ints 0..10, misses ints 100..104
        let order: Vec<i64> = vec![0, 100, 1, 2, 101, 102, 3, 4, 5, 6, 7, 8, 9, 103];
        let brp = BatchReadPolicy::default();
        let mut bp = BatchPolicy::default();
        bp.base_policy.total_timeout = 5_000;

        let mut ops: Vec<BatchOperation> = order
            .iter()
            .map(|i| BatchOperation::read(&brp, key("batch", *i), Bins::All))
            .collect();
        client.batch(&bp, &mut ops).await.expect("batch");
        for (i, op) in order.iter().zip(&ops) {
            if *i < 100 {
                assert_eq!(op.result_code(), Some(ResultCode::Ok), "row {i}");
                let rec = op.record().unwrap_or_else(|| panic!("row {i}: no record"));
                assert_eq!(
                    bins_of(rec),
                    bin_map(&[as_bin!("i", *i), as_bin!("s", i.to_string())]),
                    "row {i}"
                );
                assert_eq!(rec.generation, 1);
            } else {
                assert_eq!(
                    op.result_code(),
                    Some(ResultCode::KeyNotFoundError),
                    "row {i} (missing)"
                );
                assert!(op.record().is_none(), "row {i}: record for a missing key");
            }
        }

        // selected bins and header-only rows
        let mut ops = vec![
            BatchOperation::read(&brp, key("batch", 1), Bins::from(["s"])),
            BatchOperation::read(&brp, key("batch", 2), Bins::None),
            BatchOperation::read(&brp, key("batch", 100), Bins::from(["s"])),
        ];
        client.batch(&bp, &mut ops).await.expect("batch");
        assert_eq!(
            bins_of(ops[0].record().expect("row 0")),
            bin_map(&[as_bin!("s", "1")])
        );
        let header = ops[1].record().expect("row 1");
        assert!(header.bins.is_empty(), "header row bins {:?}", header.bins);
        assert_eq!(header.generation, 1);
        assert_eq!(ops[2].result_code(), Some(ResultCode::KeyNotFoundError));

        // the client sends a batch of one key per node as a single-record read
        let mut ops = vec![BatchOperation::read(&brp, key("batch", 100), Bins::All)];
        client.batch(&bp, &mut ops).await.expect("batch of one");
        assert_eq!(ops[0].result_code(), Some(ResultCode::KeyNotFoundError));
    })
    .await;
    client.close().await.expect("close");
    server.stop_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_and_truncate() {
    let mut server = Server::start(8);
    let client = connect(&server).await;
    bounded(async {
        let mut send_key = wp();
        send_key.send_key = true;
        for i in 0..30 {
            client
                .put(
                    &send_key,
                    &key("scanA", i),
                    &[as_bin!("i", i), as_bin!("s", format!("a{i}"))],
                )
                .await
                .expect("put");
        }
        for i in 0..20 {
            client
                .put(
                    &send_key,
                    &key("scanB", format!("b{i}")),
                    &[as_bin!("i", i)],
                )
                .await
                .expect("put");
        }

        let rows = scan(&client, "scanA", Bins::All).await;
        let keys = scan_keys(&rows);
        assert_eq!(
            keys,
            (0..30)
                .map(|i| ("scanA".to_string(), i.to_string()))
                .collect(),
            "keys of a scan of scanA"
        );
        for r in &rows {
            let i = match r.key.as_ref().unwrap().user_key() {
                Some(Value::Int(i)) => *i,
                other => panic!("user key {other:?}"),
            };
            assert_eq!(
                bins_of(r),
                bin_map(&[as_bin!("i", i), as_bin!("s", format!("a{i}"))])
            );
            assert_eq!(r.generation, 1);
        }
        let rows = scan(&client, "scanB", Bins::from(["i"])).await;
        assert_eq!(scan_keys(&rows).len(), 20, "scan of scanB");
        assert!(rows
            .iter()
            .all(|r| r.bins.len() == 1 && r.bins.contains_key("i")));
        // the whole namespace: a fresh server holds only these 50
        let rows = scan(&client, "", Bins::None).await;
        let keys = scan_keys(&rows);
        assert_eq!(keys.len(), 50, "whole-namespace scan");
        assert!(
            rows.iter().all(|r| r.bins.is_empty()),
            "a no-bins scan returned bins"
        );
        assert!(scan(&client, "no_such_set", Bins::All).await.is_empty());

        // truncate one set, keep the other
        for i in 0..10 {
            put(&client, &key("truncA", i), &[as_bin!("i", i)]).await;
            put(&client, &key("truncB", i), &[as_bin!("i", i)]).await;
        }
        client
            .truncate(&AdminPolicy::default(), NS, "truncA", 0)
            .await
            .expect("truncate");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut left = 0;
            for i in 0..10 {
                if !missing(&client, &key("truncA", i)).await {
                    left += 1;
                }
            }
            if left == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{left} records of the truncated set still readable after 5 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for i in 0..10 {
            assert_eq!(
                get(&client, &key("truncB", i)).await.bins.get("i"),
                Some(&Value::Int(i)),
                "truncB record {i}"
            );
        }
        assert!(scan(&client, "truncA", Bins::All).await.is_empty());
        assert_eq!(scan(&client, "truncB", Bins::All).await.len(), 10);
        tokio::time::sleep(Duration::from_millis(100)).await;
        put(&client, &key("truncA", "new"), &[as_bin!("n", 1)]).await;
        assert_eq!(get(&client, &key("truncA", "new")).await.generation, 1);
    })
    .await;
    client.close().await.expect("close");
    server.stop_clean();
}

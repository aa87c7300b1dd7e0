//! The daemon config: the shipped example loads, defaults are what its
//! comments say, and every kind of bad input gives an error naming the key
//! by its full path.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use osprey_appliance::config::{Config, ConfigError, DeviceSpec, LogLevel, NodeIdSource, PollMode};
use osprey_appliance::engine::index::PageMode;

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../etc/ospreyd.toml")
}

/// A fresh directory of this test's own under the target's scratch space.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("config-tests")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One namespace on one file in `dir`, plus `extra` appended.
fn minimal(extra: &str) -> String {
    format!(
        "[[namespace]]\nname = \"test\"\n[namespace.storage]\ndevices = [\"test.dat\"]\nfile-size = \"64M\"\n{extra}"
    )
}

fn parse_in(dir: &Path, text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, dir)
}

#[track_caller]
fn expect_invalid(dir: &Path, text: &str, key: &str, fragments: &[&str]) -> ConfigError {
    let error = match parse_in(dir, text) {
        Ok(_) => panic!("expected an error at {key} for:\n{text}"),
        Err(e) => e,
    };
    assert_eq!(error.key(), Some(key), "wrong key in: {error}");
    let shown = error.to_string();
    assert!(shown.starts_with(key), "{shown}");
    for fragment in fragments {
        assert!(shown.contains(fragment), "{shown:?} lacks {fragment:?}");
    }
    error
}

#[test]
fn the_example_config_loads() {
    let config = Config::load(&example_path()).unwrap();
    let s = &config.service;
    assert_eq!(s.address, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(s.port, 3000);
    assert_eq!(s.cores_configured, 0);
    assert!(s.cores >= 1);
    assert_eq!(s.poll_mode, PollMode::Adaptive);
    assert_eq!(config.namespaces.len(), 1);
    let ns = &config.namespaces[0];
    assert_eq!(ns.name, "test");
    assert_eq!(ns.namespace_id, 1);
    let expected = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .canonicalize()
        .unwrap()
        .join("data/test.dat");
    assert_eq!(
        ns.devices,
        vec![DeviceSpec::File {
            path: expected,
            size_bytes: 4 << 30
        }]
    );
    let options = ns.devices[0].uring_options().unwrap();
    assert_eq!(options.file_size_bytes, Some(4 << 30));
    ns.storage_config().validate().unwrap();
    ns.index_config(1).validate().unwrap();
    let summary = config.summary();
    assert!(summary.contains("namespace test (id 1)"), "{summary}");
    assert!(summary.contains("4 GiB"), "{summary}");
    assert!(summary.contains("127.0.0.1:3000"), "{summary}");
    assert!(
        summary.contains("shm keys 0x4F501000..=0x4F501FFF"),
        "{summary}"
    );
}

/// The example writes every default out; a config with only the required
/// keys must come out the same, and equal the values its comments give.
#[test]
fn defaults_are_what_the_example_comments_say() {
    let dir = scratch("defaults");
    let bare = parse_in(
        &dir,
        "[[namespace]]\nname = \"test\"\n[namespace.storage]\ndevices = [\"test.dat\"]\nfile-size = \"4G\"\n",
    )
    .unwrap();
    let example = Config::load(&example_path()).unwrap();

    let (a, b) = (&bare.service, &example.service);
    assert_eq!(a.address, b.address);
    assert_eq!(a.address, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!((a.port, b.port), (3000, 3000));
    assert_eq!(a.cores_configured, 0);
    assert_eq!(
        a.cores,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    assert_eq!(a.poll_mode, PollMode::Adaptive);
    assert_eq!((a.max_connections, b.max_connections), (10_000, 10_000));
    assert_eq!((a.proto_fd_idle_ms, b.proto_fd_idle_ms), (60_000, 60_000));
    assert_eq!((&a.cluster_name, &b.cluster_name), (&None, &None));
    assert_ne!(a.node_id_source, NodeIdSource::Configured);
    assert_eq!(a.node_id >> 48, 3000, "port in the high 16 bits");
    assert_eq!(a.node_id, b.node_id);
    assert_eq!(bare.logging, example.logging);
    assert_eq!(bare.logging.level, LogLevel::Info);
    assert_eq!(bare.logging.ticker_interval_s, 10);

    let (n, m) = (&bare.namespaces[0], &example.namespaces[0]);
    assert_eq!(n.replication_factor, 1);
    assert_eq!(n.default_ttl_s, 0);
    assert_eq!(n.nsup_period_s, 120);
    assert_eq!(n.evict_used_pct, 0);
    assert_eq!(
        (
            n.replication_factor,
            n.default_ttl_s,
            n.nsup_period_s,
            n.evict_used_pct
        ),
        (
            m.replication_factor,
            m.default_ttl_s,
            m.nsup_period_s,
            m.evict_used_pct
        )
    );
    assert_eq!(n.supervisor_config(), m.supervisor_config());
    assert_eq!(n.supervisor_config().evict_used_pct, 0);

    let (s, t) = (n.storage_config(), m.storage_config());
    assert_eq!(s.write_block_bytes, 1 << 20);
    assert_eq!(s.post_write_cache_blocks, 64);
    assert_eq!(s.max_write_cache_bytes, 64 << 20);
    assert_eq!(s.flush_max_ms, 1000);
    assert_eq!(s.defrag_lwm_pct, 50);
    assert!(!s.commit_to_device);
    assert_eq!(s.stop_writes_pct, 90);
    assert!(!s.cold_start_empty);
    assert_eq!(s.default_ttl_s, 0);
    assert_eq!(format!("{s:?}"), format!("{t:?}"));

    let (i, j) = (n.index_config(1), m.index_config(1));
    assert_eq!(i, j);
    assert_eq!(i.shm_key_base, 0x4F50_0000);
    assert_eq!(i.pages, PageMode::Auto);
    assert_eq!(i.sprigs_per_partition, 256);
    assert_eq!(i.stage_size_bytes, 1 << 30);
    assert_eq!(i.max_stages, 128);
}

#[test]
fn every_key_of_the_example_can_be_set() {
    let dir = scratch("all-keys");
    let text = r#"
[service]
address = "any"
port = 3100
cores = 1
poll-mode = "busy"
max-connections = 5
proto-fd-idle-ms = 0
node-id = "0xBB9020011AC4202"
cluster-name = "prod-1"
[logging]
level = "debug"
ticker-interval = "1m"
[[namespace]]
name = "a"
default-ttl = "30d"
nsup-period = "10m"
evict-used-pct = 80
[namespace.storage]
devices = ["a.dat", "/dev/null", "trtype:PCIe  traddr:0000:01:00.0"]
file-size = 1073741824
write-block-size = "128K"
post-write-cache = 0
max-write-cache = "1M"
flush-max-ms = 0
defrag-lwm-pct = 0
commit-to-device = true
stop-writes-pct = 100
cold-start-empty = true
[namespace.index]
shm-key-base = 0x10000
pages = "normal"
sprigs = 2048
stage-size = "64K"
max-stages = 4095
"#;
    let config = parse_in(&dir, text).unwrap();
    let s = &config.service;
    assert_eq!(s.address, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    assert_eq!((s.port, s.cores, s.cores_configured), (3100, 1, 1));
    assert_eq!(s.poll_mode, PollMode::Busy);
    assert_eq!((s.max_connections, s.proto_fd_idle_ms), (5, 0));
    assert_eq!(s.node_id, 0x0BB9_0200_11AC_4202);
    assert_eq!(s.node_id_text(), "BB9020011AC4202");
    assert_eq!(s.node_id_source, NodeIdSource::Configured);
    assert_eq!(s.cluster_name.as_deref(), Some("prod-1"));
    assert_eq!(config.logging.level, LogLevel::Debug);
    assert_eq!(config.logging.ticker_interval_s, 60);
    let ns = &config.namespaces[0];
    assert_eq!((ns.default_ttl_s, ns.nsup_period_s), (30 * 86_400, 600));
    assert_eq!(ns.supervisor_config().evict_used_pct, 80);
    assert_eq!(
        ns.devices,
        vec![
            DeviceSpec::File {
                path: dir.canonicalize().unwrap().join("a.dat"),
                size_bytes: 1 << 30
            },
            DeviceSpec::BlockDevice {
                path: PathBuf::from("/dev/null")
            },
            DeviceSpec::Spdk {
                transport_id: "trtype:PCIe traddr:0000:01:00.0".into()
            },
        ]
    );
    assert!(ns.devices[1]
        .uring_options()
        .unwrap()
        .file_size_bytes
        .is_none());
    assert!(ns.devices[2].uring_options().is_none());
    let st = ns.storage_config();
    assert_eq!(st.write_block_bytes, 128 << 10);
    assert_eq!(st.default_ttl_s, 30 * 86_400);
    assert!(st.commit_to_device && st.cold_start_empty);
    assert_eq!(
        (
            st.post_write_cache_blocks,
            st.flush_max_ms,
            st.defrag_lwm_pct,
            st.stop_writes_pct
        ),
        (0, 0, 0, 100)
    );
    let ix = ns.index_config(1);
    assert_eq!(ix.shm_key_base, 0x10000);
    assert_eq!(ix.pages, PageMode::Normal);
    assert_eq!(
        (ix.sprigs_per_partition, ix.stage_size_bytes, ix.max_stages),
        (2048, 64 << 10, 4095)
    );
    let summary = config.summary();
    assert!(summary.contains("block device /dev/null"), "{summary}");
    assert!(summary.contains("SPDK trtype:PCIe"), "{summary}");
}

#[test]
fn unknown_keys_are_named_with_their_path() {
    let dir = scratch("unknown");
    expect_invalid(
        &dir,
        &format!("[service]\nbogus = 1\n{}", minimal("")),
        "service.bogus",
        &["unknown key `bogus`", "`port`", "(line 2, column 1)"],
    );
    expect_invalid(
        &dir,
        &minimal("wirte-block-size = \"1M\"\n"),
        "namespace[0].storage.wirte-block-size",
        &["unknown key", "`write-block-size`"],
    );
    expect_invalid(
        &dir,
        &format!(
            "{}[[namespace]]\nname = \"b\"\n[namespace.index]\nsprig = 4\n",
            minimal("")
        ),
        "namespace[1].index.sprig",
        &["unknown key", "`sprigs`"],
    );
    expect_invalid(
        &dir,
        &format!("{}[loging]\n", minimal("")),
        "loging",
        &["unknown key"],
    );
}

#[test]
fn write_block_size_out_of_range_names_the_engine_range() {
    let dir = scratch("wblock");
    for bad in ["\"3M\"", "\"16M\"", "\"64K\"", "100000", "\"8T\""] {
        expect_invalid(
            &dir,
            &minimal(&format!("write-block-size = {bad}\n")),
            "namespace[0].storage.write-block-size",
            &["power of two from 128 KiB to 8 MiB"],
        );
    }
    // The configured value is shown, not what it was narrowed to.
    expect_invalid(
        &dir,
        &minimal("write-block-size = \"8T\"\n"),
        "namespace[0].storage.write-block-size",
        &["8796093022208"],
    );
    expect_invalid(
        &dir,
        &minimal("stop-writes-pct = -5\n"),
        "namespace[0].storage.stop-writes-pct",
        &["-5", "1..=100"],
    );
    expect_invalid(
        &dir,
        &minimal("defrag-lwm-pct = 100\n"),
        "namespace[0].storage.defrag-lwm-pct",
        &["0..=99"],
    );
    expect_invalid(
        &dir,
        &minimal("max-write-cache = \"512K\"\n"),
        "namespace[0].storage.max-write-cache",
        &["at least one write block"],
    );
}

#[test]
fn bad_sizes_and_durations_name_the_key_and_the_forms() {
    let dir = scratch("suffix");
    let text = "[[namespace]]\nname = \"test\"\n[namespace.storage]\ndevices = [\"t.dat\"]\nfile-size = \"4X\"\n";
    expect_invalid(
        &dir,
        text,
        "namespace[0].storage.file-size",
        &["\"4X\"", "K, M, G or T", "line 5"],
    );
    expect_invalid(
        &dir,
        &minimal("max-write-cache = -1\n"),
        "namespace[0].storage.max-write-cache",
        &["negative"],
    );
    expect_invalid(
        &dir,
        &minimal("max-write-cache = true\n"),
        "namespace[0].storage.max-write-cache",
        &["invalid type"],
    );
    let ttl = |value: &str| {
        format!(
            "[[namespace]]\nname = \"t\"\ndefault-ttl = {value}\n[namespace.storage]\ndevices = [\"t.dat\"]\nfile-size = \"64M\"\n"
        )
    };
    expect_invalid(
        &dir,
        &ttl("\"5w\""),
        "namespace[0].default-ttl",
        &["s, m, h or d"],
    );
    expect_invalid(
        &dir,
        &ttl("\"3651d\""),
        "namespace[0].default-ttl",
        &["0..=315360000", "10 years"],
    );
    let ok = parse_in(&dir, &ttl("\"12h\"")).unwrap();
    assert_eq!(ok.namespaces[0].default_ttl_s, 12 * 3600);
    assert_eq!(ok.namespaces[0].storage_config().default_ttl_s, 12 * 3600);
    expect_invalid(
        &dir,
        &format!("[logging]\nticker-interval = 0\n{}", minimal("")),
        "logging.ticker-interval",
        &["1..=3600"],
    );
}

#[test]
fn service_values_out_of_range() {
    let dir = scratch("service");
    let with = |service: &str| format!("[service]\n{service}\n{}", minimal(""));
    expect_invalid(&dir, &with("port = 0"), "service.port", &["1..=65535"]);
    expect_invalid(&dir, &with("port = 70000"), "service.port", &["1..=65535"]);
    expect_invalid(
        &dir,
        &with("port = \"x\""),
        "service.port",
        &["invalid type", "expected an integer (1..=65535)", "line 2"],
    );
    expect_invalid(
        &dir,
        &with("cores = 100000"),
        "service.cores",
        &["0 = all", "available"],
    );
    expect_invalid(
        &dir,
        &with("max-connections = 0"),
        "service.max-connections",
        &["1..=1000000"],
    );
    expect_invalid(
        &dir,
        &with("proto-fd-idle-ms = -1"),
        "service.proto-fd-idle-ms",
        &["0 = never"],
    );
    expect_invalid(
        &dir,
        &with("address = \"localhost\""),
        "service.address",
        &["\"any\""],
    );
    expect_invalid(
        &dir,
        &with("poll-mode = \"fast\""),
        "service.poll-mode",
        &["`busy`", "`adaptive`"],
    );
    expect_invalid(
        &dir,
        &with("node-id = \"xyz\""),
        "service.node-id",
        &["hex digits"],
    );
    expect_invalid(
        &dir,
        &with("node-id = \"0\""),
        "service.node-id",
        &["non-zero"],
    );
    expect_invalid(
        &dir,
        &with("cluster-name = \"a b\""),
        "service.cluster-name",
        &["1..=64"],
    );
    let logging = format!("[logging]\nlevel = \"trace\"\n{}", minimal(""));
    expect_invalid(&dir, &logging, "logging.level", &["`error`", "`debug`"]);
}

#[test]
fn namespace_rules() {
    let dir = scratch("namespaces");
    let two = |a: &str, b: &str| {
        format!(
            "[[namespace]]\nname = \"{a}\"\n[namespace.storage]\ndevices = [\"a.dat\"]\nfile-size = \"64M\"\n\
             [[namespace]]\nname = \"{b}\"\n[namespace.storage]\ndevices = [\"b.dat\"]\nfile-size = \"64M\"\n"
        )
    };
    parse_in(&dir, &two("a", "b")).unwrap();
    expect_invalid(
        &dir,
        &two("a", "a"),
        "namespace[1].name",
        &["namespace[0]", "unique"],
    );
    // A table pasted twice is reported by its name, not its devices.
    let twice = format!("{}{}", minimal(""), minimal(""));
    expect_invalid(&dir, &twice, "namespace[1].name", &["\"test\" is already"]);
    expect_invalid(
        &dir,
        &two("a", "0123456789012345678901234567890123"),
        "namespace[1].name",
        &["1..=31 bytes"],
    );
    expect_invalid(&dir, &two("a", ""), "namespace[1].name", &["1..=31 bytes"]);
    expect_invalid(
        &dir,
        &two("a", "x;y"),
        "namespace[1].name",
        &["letters, digits"],
    );
    expect_invalid(&dir, "[service]\nport = 3000\n", "namespace", &["1..=32"]);
    expect_invalid(
        &dir,
        "[[namespace]]\n[namespace.storage]\ndevices = [\"a.dat\"]\nfile-size = \"64M\"\n",
        "namespace[0].name",
        &["missing"],
    );
    expect_invalid(
        &dir,
        "[[namespace]]\nname = \"a\"\n",
        "namespace[0].storage.devices",
        &["missing", "1..=128"],
    );
    let many: String = (0..33)
        .map(|i| {
            format!(
                "[[namespace]]\nname = \"n{i}\"\n[namespace.storage]\ndevices = [\"{i}.dat\"]\nfile-size = \"64M\"\n"
            )
        })
        .collect();
    expect_invalid(&dir, &many, "namespace", &["at most 32"]);
    let thirty_two: String = many
        .split("[[namespace]]")
        .take(33)
        .collect::<Vec<_>>()
        .join("[[namespace]]");
    let config = parse_in(&dir, &thirty_two).unwrap();
    assert_eq!(config.namespaces.len(), 32);
    assert_eq!(config.namespaces[31].namespace_id, 32);
    config.namespaces[31].index_config(32).validate().unwrap();
}

#[test]
fn replication_factor_two_is_refused_for_a_single_node() {
    let dir = scratch("replication");
    let text = "[[namespace]]\nname = \"t\"\nreplication-factor = 2\n[namespace.storage]\ndevices = [\"t.dat\"]\nfile-size = \"64M\"\n";
    expect_invalid(
        &dir,
        text,
        "namespace[0].replication-factor",
        &["1..=1", "single node"],
    );
}

#[test]
fn a_file_device_needs_file_size() {
    let dir = scratch("file-size");
    let missing = "[[namespace]]\nname = \"t\"\n[namespace.storage]\ndevices = [\"t.dat\"]\n";
    expect_invalid(
        &dir,
        missing,
        "namespace[0].storage.file-size",
        &["missing", "t.dat"],
    );
    std::fs::write(dir.join("exists.dat"), b"x").unwrap();
    let existing = "[[namespace]]\nname = \"t\"\n[namespace.storage]\ndevices = [\"exists.dat\"]\n";
    expect_invalid(
        &dir,
        existing,
        "namespace[0].storage.file-size",
        &["regular file"],
    );
    // A block (here: character) device node needs none.
    let node = "[[namespace]]\nname = \"t\"\n[namespace.storage]\ndevices = [\"/dev/null\"]\n";
    let config = parse_in(&dir, node).unwrap();
    assert!(matches!(
        config.namespaces[0].devices[0],
        DeviceSpec::BlockDevice { .. }
    ));
    // Too small for the header and one write block.
    expect_invalid(
        &dir,
        &minimal("").replace("\"64M\"", "\"8M\""),
        "namespace[0].storage.file-size",
        &["8388608 bytes", "9437184.."],
    );
    // A directory is not a device; nor is a path in a missing directory.
    let directory = "[[namespace]]\nname = \"t\"\n[namespace.storage]\ndevices = [\".\"]\nfile-size = \"64M\"\n";
    expect_invalid(
        &dir,
        directory,
        "namespace[0].storage.devices[0]",
        &["directory"],
    );
    let nowhere = "[[namespace]]\nname = \"t\"\n[namespace.storage]\ndevices = [\"no/such/dir/t.dat\"]\nfile-size = \"64M\"\n";
    expect_invalid(
        &dir,
        nowhere,
        "namespace[0].storage.devices[0]",
        &["does not exist"],
    );
    let spdk =
        "[[namespace]]\nname = \"t\"\n[namespace.storage]\ndevices = [\"trtype:FOO traddr:1\"]\n";
    expect_invalid(
        &dir,
        spdk,
        "namespace[0].storage.devices[0]",
        &["trtype:PCIe"],
    );
}

#[test]
fn devices_are_unique_across_namespaces_whatever_the_spelling() {
    let dir = scratch("devices");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let text = "[[namespace]]\nname = \"a\"\n[namespace.storage]\ndevices = [\"x.dat\"]\nfile-size = \"64M\"\n\
                [[namespace]]\nname = \"b\"\n[namespace.storage]\ndevices = [\"y.dat\", \"sub/../x.dat\"]\nfile-size = \"64M\"\n";
    expect_invalid(
        &dir,
        text,
        "namespace[1].storage.devices[1]",
        &["already used by namespace[0].storage.devices[0]"],
    );
    let same = minimal("").replace("[\"test.dat\"]", "[\"test.dat\", \"./test.dat\"]");
    expect_invalid(
        &dir,
        &same,
        "namespace[0].storage.devices[1]",
        &["already used"],
    );
}

#[test]
fn overlapping_shm_keys_are_refused() {
    let dir = scratch("shm");
    let two = |base_a: &str, base_b: &str| {
        format!(
            "[[namespace]]\nname = \"a\"\n[namespace.storage]\ndevices = [\"a.dat\"]\nfile-size = \"64M\"\n[namespace.index]\nshm-key-base = {base_a}\n\
             [[namespace]]\nname = \"b\"\n[namespace.storage]\ndevices = [\"b.dat\"]\nfile-size = \"64M\"\n[namespace.index]\nshm-key-base = {base_b}\n"
        )
    };
    // Same base: ids 1 and 2 keep them apart.
    parse_in(&dir, &two("0x4F500000", "0x4F500000")).unwrap();
    // b (id 2) at base - 0x1000 lands exactly on a's (id 1) block.
    expect_invalid(
        &dir,
        &two("0x4F500000", "0x4F4FF000"),
        "namespace[1].index.shm-key-base",
        &["0x4F501000..=0x4F501FFF", "overlap", "namespace[0]"],
    );
    // Partly overlapping.
    expect_invalid(
        &dir,
        &two("0x4F500000", "0x4F4FF800"),
        "namespace[1].index.shm-key-base",
        &["overlap"],
    );
    // Far apart is fine.
    parse_in(&dir, &two("0x4F500000", "0x10000000")).unwrap();
    // The engine's own range check, re-keyed.
    expect_invalid(
        &dir,
        &minimal("[namespace.index]\nshm-key-base = 0\n"),
        "namespace[0].index.shm-key-base",
        &["must be in 1..=0x7ffdefff"],
    );
    expect_invalid(
        &dir,
        &minimal("[namespace.index]\nshm-key-base = 0x100000000\n"),
        "namespace[0].index.shm-key-base",
        &["0x100000000"],
    );
    expect_invalid(
        &dir,
        &minimal("[namespace.index]\nsprigs = 300\n"),
        "namespace[0].index.sprigs",
        &["power of two in 1..=4096"],
    );
    expect_invalid(
        &dir,
        &minimal("[namespace.index]\nstage-size = \"1000\"\n"),
        "namespace[0].index.stage-size",
        &["multiple of 4096"],
    );
    expect_invalid(
        &dir,
        &minimal("[namespace.index]\npages = \"giant\"\n"),
        "namespace[0].index.pages",
        &["`auto`", "`huge`", "`normal`"],
    );
}

#[test]
fn toml_syntax_errors_keep_line_and_column() {
    let dir = scratch("syntax");
    let text = "[service]\nport = 3000\nport 3001\n";
    match parse_in(&dir, text) {
        Err(ConfigError::Syntax {
            line,
            column,
            message,
        }) => {
            assert_eq!(line, 3);
            assert!(column >= 1);
            assert!(!message.is_empty());
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    let duplicate = "[service]\nport = 3000\nport = 3001\n";
    let error = parse_in(&dir, duplicate).unwrap_err();
    assert!(
        matches!(
            error,
            ConfigError::Syntax {
                line: 3,
                column: 1,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("line 3, column 1"), "{error}");
}

#[test]
fn load_resolves_relative_devices_against_the_config_directory() {
    let dir = scratch("load");
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let file = dir.join("etc/ospreyd.toml");
    std::fs::write(
        &file,
        "[[namespace]]\nname = \"t\"\n[namespace.storage]\ndevices = [\"../data/t.dat\"]\nfile-size = \"64M\"\n",
    )
    .unwrap();
    let config = Config::load(&file).unwrap();
    assert_eq!(config.source.as_deref(), Some(file.as_path()));
    assert_eq!(
        config.namespaces[0].devices[0],
        DeviceSpec::File {
            path: dir.canonicalize().unwrap().join("data/t.dat"),
            size_bytes: 64 << 20
        }
    );
    assert!(!dir.join("data/t.dat").exists(), "loading creates nothing");

    let missing = Config::load(&dir.join("nope.toml")).unwrap_err();
    assert!(matches!(missing, ConfigError::Read { .. }), "{missing:?}");
    assert!(missing.to_string().contains("nope.toml"), "{missing}");
}

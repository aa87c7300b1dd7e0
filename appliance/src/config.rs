//! The daemon's TOML configuration (`ospreyd --config FILE`), shaped after
//! Aerospike's: `[service]`, `[logging]`, and one `[[namespace]]` table per
//! namespace with `[namespace.storage]` and `[namespace.index]`.
//!
//! Three parts (style habit 6):
//! 1. **Raw**: the serde structs (`Raw*`, private) mirror the file one to
//!    one. Every table denies unknown keys, keys are kebab-case, and every
//!    default is written out in a `Default` impl. Integers stay `i64` there
//!    so that a negative or huge value reaches the range check and gets a
//!    message with the range instead of a serde type error.
//! 2. **Check**: [`Config::parse`] (and [`Config::load`] for a file) runs
//!    one `validate` over the raw structs and returns the checked [`Config`]
//!    or a [`ConfigError`] naming the key by its full path
//!    (`namespace[0].storage.write-block-size`) and the allowed range or
//!    choices. Storage and index values are checked by the engine's own
//!    `StorageConfig::validate` and `IndexConfig::validate`; their messages
//!    are re-keyed to the full path. What the engine cannot see is checked
//!    here: devices (stat at load time), file sizes, uniqueness of names
//!    and devices, and that namespaces' shared-memory keys do not overlap.
//! 3. **Derived**: each [`NamespaceConfig`] hands out the engine's types
//!    ready to use ([`StorageConfig`], [`IndexConfig`], [`SupervisorConfig`],
//!    [`UringOptions`] per device), and [`Config::summary`] prints it all.
//!
//! What must match across a cluster (once there is one): `cluster-name`,
//! and per namespace its `name`, `replication-factor` and `default-ttl`.
//! Everything else is per node.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use osprey_engine::device::uring::UringOptions;
use osprey_engine::index::config::{KEYS_PER_NAMESPACE, MAX_NAMESPACE_ID};
use osprey_engine::index::{IndexConfig, PageMode};
use osprey_engine::storage::header::HEADER_REGION_BYTES;
use osprey_engine::storage::namespace::StorageConfig;
use osprey_engine::storage::supervisor::{SupervisorConfig, TombRaiderConfig};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

// ---------------------------------------------------------------------------
// Limits the engine does not check itself.

pub const DEFAULT_PORT: u16 = 3000;
pub const MAX_CONNECTIONS_LIMIT: i64 = 1_000_000;
/// Idle connections are closed after at most a day (0 = never).
pub const MAX_PROTO_FD_IDLE_MS: i64 = 86_400_000;
pub const MAX_TICKER_INTERVAL_S: u64 = 3600;
/// Ten years of 365 days, as Aerospike caps `default-ttl`.
pub const MAX_DEFAULT_TTL_S: u64 = 10 * 365 * 86_400;
pub const MAX_NSUP_PERIOD_S: u64 = 86_400;
/// Tomb-raider passes at most 30 days apart (0 = off); a day by default,
/// as Aerospike has it: a pass reads every write block of every device.
pub const MAX_TOMB_RAIDER_PERIOD_S: u64 = 30 * 86_400;
pub const DEFAULT_TOMB_RAIDER_PERIOD_S: u64 = 86_400;
/// The pause after each write block a pass reads, at most a second.
pub const MAX_TOMB_RAIDER_SLEEP_US: i64 = 1_000_000;
/// One node, one copy: replication needs the cluster layer.
pub const MAX_REPLICATION_FACTOR: i64 = 1;
/// Devices per namespace (Aerospike's limit too).
pub const MAX_DEVICES_PER_NAMESPACE: usize = 128;
pub const MAX_POST_WRITE_CACHE_BLOCKS: i64 = 4096;
pub const MAX_FLUSH_MAX_MS: i64 = 60_000;
/// Largest file a file device may be given (its write blocks stay
/// addressable by a u32 at the smallest write-block size).
pub const MAX_FILE_SIZE_BYTES: u64 = 256 << 40;
pub const MAX_CLUSTER_NAME_BYTES: usize = 64;
/// A config file larger than this is refused before parsing.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;

// ---------------------------------------------------------------------------
// Errors.

/// Why a config was refused. `Invalid` names the key by its full path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The file could not be read.
    Read { path: PathBuf, message: String },
    /// The text is not TOML; line and column (1-based) as toml reports them.
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// A key is unknown, has the wrong type, is out of range, or conflicts
    /// with another. `position` (line, column; 1-based) when the TOML
    /// reader knew it.
    Invalid {
        key: String,
        message: String,
        position: Option<(usize, usize)>,
    },
}

impl ConfigError {
    /// The full key path of an `Invalid` error.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }

    fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
            position: None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, message } => {
                write!(f, "cannot read config file {}: {message}", path.display())
            }
            ConfigError::Syntax {
                line,
                column,
                message,
            } => write!(
                f,
                "TOML syntax error at line {line}, column {column}: {message}"
            ),
            ConfigError::Invalid {
                key,
                message,
                position,
            } => {
                write!(f, "{key}: {message}")?;
                if let Some((line, column)) = position {
                    write!(f, " (line {line}, column {column})")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

type Result<T> = std::result::Result<T, ConfigError>;

// ---------------------------------------------------------------------------
// Part 1: the raw serde structs, defaults spelled out.

/// Bytes: an integer, or a string with a binary suffix K, M, G or T.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Size(u64);

/// Seconds: an integer, or a string with a suffix s, m, h or d.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seconds(u64);

/// Parses `"64K"`, `"4G"`, `"1048576"` (binary units, case-insensitive).
pub fn parse_size_bytes(text: &str) -> std::result::Result<u64, String> {
    let trimmed = text.trim();
    let (digits, shift) = match trimmed.char_indices().last() {
        Some((at, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(bad_size(text)),
            };
            (&trimmed[..at], shift)
        }
        _ => (trimmed, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_size(text));
    }
    let number: u64 = digits.parse().map_err(|_| bad_size(text))?;
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {text:?} does not fit in 64 bits"))
}

fn bad_size(text: &str) -> String {
    format!(
        "invalid size {text:?}: give bytes as an integer, or a number with suffix K, M, G or T (binary units: 1K = 1024), e.g. \"64M\""
    )
}

/// Parses `"30d"`, `"12h"`, `"10m"`, `"5s"`, `"120"` into seconds.
pub fn parse_duration_s(text: &str) -> std::result::Result<u64, String> {
    let trimmed = text.trim();
    let (digits, factor) = match trimmed.char_indices().last() {
        Some((at, c)) if c.is_ascii_alphabetic() => {
            let factor = match c.to_ascii_lowercase() {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                _ => return Err(bad_duration(text)),
            };
            (&trimmed[..at], factor)
        }
        _ => (trimmed, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_duration(text));
    }
    let number: u64 = digits.parse().map_err(|_| bad_duration(text))?;
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("duration {text:?} does not fit in 64 bits"))
}

fn bad_duration(text: &str) -> String {
    format!(
        "invalid duration {text:?}: give seconds as an integer, or a number with suffix s, m, h or d, e.g. \"30d\""
    )
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Size, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes as an integer or a string such as \"64K\", \"4G\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("size {v} is negative")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Size, E> {
                parse_size_bytes(v).map(Size).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Seconds, D::Error> {
        struct SecondsVisitor;
        impl Visitor<'_> for SecondsVisitor {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("seconds as an integer or a string such as \"30d\", \"12h\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Seconds, E> {
                u64::try_from(v)
                    .map(Seconds)
                    .map_err(|_| E::custom(format!("duration {v} is negative")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Seconds, E> {
                Ok(Seconds(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Seconds, E> {
                parse_duration_s(v).map(Seconds).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SecondsVisitor)
    }
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
struct RawConfig {
    service: RawService,
    logging: RawLogging,
    namespace: Vec<RawNamespace>,
    security: RawSecurity,
}

/// `[security]`: see `etc/ospreyd.toml` and `crate::security`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
struct RawSecurity {
    enabled: bool,
    session_ttl: Seconds,
    admin_user: String,
    admin_password_file: Option<String>,
    store: Option<String>,
    login_failure_delay_ms: i64,
    login_failure_max_delay_ms: i64,
    password_hash_cost: i64,
}

impl Default for RawSecurity {
    fn default() -> Self {
        let d = SecurityConfig::default();
        RawSecurity {
            enabled: d.enabled,
            session_ttl: Seconds(u64::from(d.session_ttl_s)),
            admin_user: d.admin_user,
            admin_password_file: None,
            store: None,
            login_failure_delay_ms: d.login_failure_delay_ms as i64,
            login_failure_max_delay_ms: d.login_failure_max_delay_ms as i64,
            password_hash_cost: i64::from(d.password_hash_cost),
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
struct RawService {
    address: String,
    port: i64,
    cores: i64,
    poll_mode: PollMode,
    max_connections: i64,
    proto_fd_idle_ms: i64,
    node_id: Option<String>,
    cluster_name: String,
}

impl Default for RawService {
    fn default() -> Self {
        RawService {
            address: "127.0.0.1".into(),
            port: i64::from(DEFAULT_PORT),
            cores: 0,
            poll_mode: PollMode::Adaptive,
            max_connections: 10_000,
            proto_fd_idle_ms: 60_000,
            node_id: None,
            cluster_name: String::new(),
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
struct RawLogging {
    level: LogLevel,
    ticker_interval: Seconds,
}

impl Default for RawLogging {
    fn default() -> Self {
        RawLogging {
            level: LogLevel::Info,
            ticker_interval: Seconds(10),
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
struct RawNamespace {
    /// Required; `Option` so that a missing name gets our message.
    name: Option<String>,
    replication_factor: i64,
    default_ttl: Seconds,
    nsup_period: Seconds,
    evict_used_pct: i64,
    tomb_raider_period: Seconds,
    tomb_raider_sleep_us: i64,
    storage: RawStorage,
    index: RawIndex,
}

impl Default for RawNamespace {
    fn default() -> Self {
        RawNamespace {
            name: None,
            replication_factor: 1,
            default_ttl: Seconds(0),
            nsup_period: Seconds(120),
            evict_used_pct: 0,
            tomb_raider_period: Seconds(DEFAULT_TOMB_RAIDER_PERIOD_S),
            tomb_raider_sleep_us: 1000,
            storage: RawStorage::default(),
            index: RawIndex::default(),
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
struct RawStorage {
    /// Required; `Option` so that a missing list gets our message.
    devices: Option<Vec<String>>,
    file_size: Option<Size>,
    write_block_size: Size,
    post_write_cache: i64,
    max_write_cache: Size,
    flush_max_ms: i64,
    defrag_lwm_pct: i64,
    commit_to_device: bool,
    stop_writes_pct: i64,
    cold_start_empty: bool,
}

impl Default for RawStorage {
    fn default() -> Self {
        RawStorage {
            devices: None,
            file_size: None,
            write_block_size: Size(1 << 20),
            post_write_cache: 64,
            max_write_cache: Size(64 << 20),
            flush_max_ms: 1000,
            defrag_lwm_pct: 50,
            commit_to_device: false,
            stop_writes_pct: 90,
            cold_start_empty: false,
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
struct RawIndex {
    shm_key_base: i64,
    pages: RawPages,
    sprigs: i64,
    stage_size: Size,
    max_stages: i64,
}

impl Default for RawIndex {
    fn default() -> Self {
        let engine = IndexConfig::default();
        RawIndex {
            shm_key_base: i64::from(engine.shm_key_base),
            pages: RawPages::Auto,
            sprigs: i64::from(engine.sprigs_per_partition),
            stage_size: Size(engine.stage_size_bytes),
            max_stages: i64::from(engine.max_stages),
        }
    }
}

#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
enum RawPages {
    Auto,
    Huge,
    Normal,
}

impl RawPages {
    fn engine(self) -> PageMode {
        match self {
            RawPages::Auto => PageMode::Auto,
            RawPages::Huge => PageMode::Huge,
            RawPages::Normal => PageMode::Normal,
        }
    }
}

// ---------------------------------------------------------------------------
// Part 2 and 3: the checked config and its derived values.

/// How service cores wait for work.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PollMode {
    /// Spin on the sockets and queues all the time (lowest latency, a full
    /// core each).
    Busy,
    /// Spin while there is work, sleep in the kernel when idle.
    Adaptive,
}

impl fmt::Display for PollMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PollMode::Busy => "busy",
            PollMode::Adaptive => "adaptive",
        })
    }
}

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        })
    }
}

/// Where the node id came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeIdSource {
    /// `service.node-id`.
    Configured,
    /// The MAC address of this interface in the low 48 bits, the service
    /// port in the high 16 (as Aerospike derives it from the fabric port).
    Mac { interface: String },
    /// No usable MAC address: a hash of the host name in the low 48 bits,
    /// the port in the high 16.
    Hostname { hostname: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    pub address: IpAddr,
    pub port: u16,
    /// Service cores (reactor threads), resolved: never 0.
    pub cores: usize,
    /// What the file said (0 = all available).
    pub cores_configured: usize,
    pub poll_mode: PollMode,
    pub max_connections: u32,
    /// Close a client connection idle this long; 0 = never.
    pub proto_fd_idle_ms: u64,
    pub node_id: u64,
    pub node_id_source: NodeIdSource,
    /// `None` when unset or empty.
    pub cluster_name: Option<String>,
}

impl ServiceConfig {
    pub fn listen_address(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }

    /// The node id as the `node` info command prints it: upper-case hex,
    /// no leading zeros.
    pub fn node_id_text(&self) -> String {
        format!("{:X}", self.node_id)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggingConfig {
    pub level: LogLevel,
    pub ticker_interval_s: u64,
}

/// One storage device of a namespace, as found at load time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// A regular file (or a path that does not exist yet): created if
    /// missing and sized to `size_bytes` (grown sparse when shorter; a
    /// longer file is used up to `size_bytes`).
    File { path: PathBuf, size_bytes: u64 },
    /// A block (or character) device node: a partition or a whole disk.
    BlockDevice { path: PathBuf },
    /// An NVMe controller driven by SPDK, e.g. `trtype:PCIe traddr:0000:01:00.0`.
    Spdk { transport_id: String },
}

impl DeviceSpec {
    /// Path or transport id, for messages.
    pub fn name(&self) -> String {
        match self {
            DeviceSpec::File { path, .. } | DeviceSpec::BlockDevice { path } => {
                path.display().to_string()
            }
            DeviceSpec::Spdk { transport_id } => transport_id.clone(),
        }
    }

    /// How to open it with the io_uring backend; `None` for SPDK devices.
    pub fn uring_options(&self) -> Option<UringOptions> {
        match self {
            DeviceSpec::File { size_bytes, .. } => Some(UringOptions {
                file_size_bytes: Some(*size_bytes),
                ..UringOptions::default()
            }),
            DeviceSpec::BlockDevice { .. } => Some(UringOptions::default()),
            DeviceSpec::Spdk { .. } => None,
        }
    }
}

/// One checked namespace.
#[derive(Clone, Debug)]
pub struct NamespaceConfig {
    pub name: String,
    /// 1-based position in the file; shapes the shared-memory keys.
    pub namespace_id: u32,
    pub replication_factor: u32,
    /// 0 = records never expire.
    pub default_ttl_s: u64,
    /// 0 = no supervisor thread.
    pub nsup_period_s: u64,
    /// 0 = eviction off.
    pub evict_used_pct: u32,
    /// Seconds between tomb-raider passes (tombstone reclaim); 0 = off.
    pub tomb_raider_period_s: u64,
    pub devices: Vec<DeviceSpec>,
    /// `storage.file-size`, if given.
    pub file_size_bytes: Option<u64>,
    storage: StorageConfig,
    index: IndexConfig,
    supervisor: SupervisorConfig,
    tomb_raider: TombRaiderConfig,
}

impl NamespaceConfig {
    /// The engine's storage settings, checked by `StorageConfig::validate`.
    pub fn storage_config(&self) -> StorageConfig {
        self.storage.clone()
    }

    /// The engine's index settings for namespace `namespace_id`. The key
    /// overlap check assumed `namespace_id == self.namespace_id` (the
    /// 1-based position in the file); pass that.
    pub fn index_config(&self, namespace_id: u32) -> IndexConfig {
        debug_assert_eq!(namespace_id, self.namespace_id);
        IndexConfig {
            namespace_id,
            ..self.index.clone()
        }
    }

    pub fn supervisor_config(&self) -> SupervisorConfig {
        self.supervisor
    }

    /// What each tomb-raider pass is given (`tomb-raider-sleep-us`).
    pub fn tomb_raider_config(&self) -> TombRaiderConfig {
        self.tomb_raider
    }

    /// The System V keys this namespace may use: meta segment and every
    /// possible stage (the whole block the engine's key scheme gives it).
    pub fn shm_keys(&self) -> std::ops::RangeInclusive<u64> {
        shm_key_block(self.index.shm_key_base, self.namespace_id)
    }
}

/// The checked `[security]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityConfig {
    pub enabled: bool,
    /// Lifetime of a session token, seconds.
    pub session_ttl_s: u32,
    /// The admin user created when the store does not exist yet.
    pub admin_user: String,
    /// File holding that user's password (else `$OSPREY_ADMIN_PASSWORD`).
    pub admin_password_file: Option<PathBuf>,
    /// The user store. `None` only when security is off and no path could
    /// be derived.
    pub store: Option<PathBuf>,
    /// First wait of a LOGIN from an address with failed logins; doubles
    /// per failure up to the max. 0 = no throttling.
    pub login_failure_delay_ms: u64,
    pub login_failure_max_delay_ms: u64,
    /// bcrypt cost of the stored password hashes.
    pub password_hash_cost: u32,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            enabled: false,
            session_ttl_s: 86_400,
            admin_user: "admin".into(),
            admin_password_file: None,
            store: None,
            login_failure_delay_ms: 250,
            login_failure_max_delay_ms: 4_000,
            password_hash_cost: 10,
        }
    }
}

/// File name of the user store when `security.store` is not given; it goes
/// beside the first namespace's first device file.
pub const DEFAULT_SECURITY_STORE_NAME: &str = "osprey-security.dat";
pub const MAX_SESSION_TTL_S: u64 = 864_000;
pub const MAX_LOGIN_FAILURE_DELAY_MS: i64 = 60_000;

/// The checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub service: ServiceConfig,
    pub logging: LoggingConfig,
    pub namespaces: Vec<NamespaceConfig>,
    pub security: SecurityConfig,
    /// The file it was loaded from (absolute), if any.
    pub source: Option<PathBuf>,
}

impl Config {
    /// Reads and checks a config file. Relative device paths are resolved
    /// against the file's directory.
    pub fn load(path: &Path) -> Result<Config> {
        let read_error = |message: String| ConfigError::Read {
            path: path.to_path_buf(),
            message,
        };
        let file = fs::File::open(path).map_err(|e| read_error(e.to_string()))?;
        let mut bytes = Vec::new();
        file.take(MAX_CONFIG_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| read_error(e.to_string()))?;
        if bytes.len() as u64 > MAX_CONFIG_FILE_BYTES {
            return Err(read_error(format!(
                "larger than {MAX_CONFIG_FILE_BYTES} bytes; not a config file?"
            )));
        }
        let text =
            String::from_utf8(bytes).map_err(|e| read_error(format!("not UTF-8 text: {e}")))?;
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let base_dir = absolute
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let mut config = Config::parse(&text, &base_dir)?;
        config.source = Some(absolute);
        Ok(config)
    }

    /// Checks config text; relative device paths are resolved against
    /// `base_dir`. Devices are looked at (stat) but nothing is created.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Config> {
        let raw = RawConfig::from_toml(text)?;
        raw.validate(base_dir)
    }

    pub fn namespace(&self, name: &str) -> Option<&NamespaceConfig> {
        self.namespaces.iter().find(|n| n.name == name)
    }

    /// A multi-line human summary, printed at start-up.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let s = &self.service;
        if let Some(source) = &self.source {
            out.push_str(&format!("config {}\n", source.display()));
        }
        let cores = if s.cores_configured == 0 {
            format!("{} (all available)", s.cores)
        } else {
            s.cores.to_string()
        };
        let idle = if s.proto_fd_idle_ms == 0 {
            "never".to_string()
        } else {
            format!("{} ms", s.proto_fd_idle_ms)
        };
        out.push_str(&format!(
            "service: listen {}, cores {cores}, poll-mode {}, max-connections {}, idle close {idle}\n",
            s.listen_address(),
            s.poll_mode,
            s.max_connections,
        ));
        let source = match &s.node_id_source {
            NodeIdSource::Configured => "configured".to_string(),
            NodeIdSource::Mac { interface } => {
                format!("from the MAC address of {interface} and port {}", s.port)
            }
            NodeIdSource::Hostname { hostname } => {
                format!("from host name {hostname:?} and port {}", s.port)
            }
        };
        out.push_str(&format!(
            "  node-id {} ({source}), cluster-name {}\n",
            s.node_id_text(),
            s.cluster_name.as_deref().unwrap_or("(none)")
        ));
        out.push_str(&format!(
            "logging: level {}, ticker every {} s\n",
            self.logging.level, self.logging.ticker_interval_s
        ));
        let sec = &self.security;
        if sec.enabled {
            out.push_str(&format!(
                "security: enabled, store {}, session-ttl {} s, login-failure-delay {}..{} ms, password-hash-cost {}\n",
                sec.store.as_deref().map_or("(none)".into(), |p| p.display().to_string()),
                sec.session_ttl_s,
                sec.login_failure_delay_ms,
                sec.login_failure_max_delay_ms,
                sec.password_hash_cost,
            ));
        } else {
            out.push_str("security: disabled (admin commands answer 52)\n");
        }
        for ns in &self.namespaces {
            let ttl = if ns.default_ttl_s == 0 {
                "0 (never expire)".to_string()
            } else {
                format!("{} s", ns.default_ttl_s)
            };
            let nsup = if ns.nsup_period_s == 0 {
                "off".to_string()
            } else {
                format!("every {} s", ns.nsup_period_s)
            };
            let evict = if ns.evict_used_pct == 0 {
                "off".to_string()
            } else {
                format!("above {}% used", ns.evict_used_pct)
            };
            let tomb_raider = if ns.tomb_raider_period_s == 0 {
                "off".to_string()
            } else {
                format!("every {} s", ns.tomb_raider_period_s)
            };
            out.push_str(&format!(
                "namespace {} (id {}): replication-factor {}, default-ttl {ttl}, nsup {nsup}, eviction {evict}, tomb-raider {tomb_raider}\n",
                ns.name, ns.namespace_id, ns.replication_factor
            ));
            let st = &ns.storage;
            out.push_str(&format!(
                "  storage: write-block-size {}, post-write-cache {} blocks/device, max-write-cache {}, flush-max-ms {}, defrag-lwm-pct {}, stop-writes-pct {}, commit-to-device {}, cold-start-empty {}\n",
                human_bytes(u64::from(st.write_block_bytes)),
                st.post_write_cache_blocks,
                human_bytes(st.max_write_cache_bytes),
                st.flush_max_ms,
                st.defrag_lwm_pct,
                st.stop_writes_pct,
                st.commit_to_device,
                st.cold_start_empty,
            ));
            for (i, device) in ns.devices.iter().enumerate() {
                let line = match device {
                    DeviceSpec::File { path, size_bytes } => format!(
                        "file {} ({}{}, {} write blocks)",
                        path.display(),
                        human_bytes(*size_bytes),
                        if path.exists() {
                            ""
                        } else {
                            ", created at start"
                        },
                        size_bytes.saturating_sub(HEADER_REGION_BYTES)
                            / u64::from(st.write_block_bytes)
                    ),
                    DeviceSpec::BlockDevice { path } => {
                        format!("block device {} (its whole size)", path.display())
                    }
                    DeviceSpec::Spdk { transport_id } => format!("SPDK {transport_id}"),
                };
                out.push_str(&format!("  device {i}: {line}\n"));
            }
            let ix = &ns.index;
            let keys = ns.shm_keys();
            out.push_str(&format!(
                "  index: shm keys {:#X}..={:#X}, pages {}, sprigs {}/partition, stage-size {} ({} entries), max-stages {} (up to {} entries, {})\n",
                keys.start(),
                keys.end(),
                match ix.pages {
                    PageMode::Auto => "auto",
                    PageMode::Huge => "huge",
                    PageMode::Normal => "normal",
                },
                ix.sprigs_per_partition,
                human_bytes(ix.stage_size_bytes),
                ix.entries_per_stage(),
                ix.max_stages,
                u64::from(ix.entries_per_stage()) * u64::from(ix.max_stages),
                human_bytes(ix.stage_size_bytes * u64::from(ix.max_stages)),
            ));
        }
        out
    }
}

/// `4 GiB`, `64 MiB`, or plain bytes when not a whole unit.
pub fn human_bytes(bytes: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

fn shm_key_block(base: u32, namespace_id: u32) -> std::ops::RangeInclusive<u64> {
    let first = u64::from(base) + u64::from(namespace_id) * u64::from(KEYS_PER_NAMESPACE);
    first..=first + u64::from(KEYS_PER_NAMESPACE) - 1
}

// ---------------------------------------------------------------------------
// Parsing: TOML syntax first (keeps toml's line and column), then the
// typed pass with the key path tracked.

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

impl RawConfig {
    fn from_toml(text: &str) -> Result<RawConfig> {
        let deserializer = toml::Deserializer::parse(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_column(text, s.start));
            ConfigError::Syntax {
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.inner();
            let mut message = inner
                .message()
                .trim()
                .replacen("unknown field", "unknown key", 1)
                .replacen("missing field", "missing key", 1)
                .replacen("expected i64", "expected an integer", 1);
            if message.starts_with("invalid type") {
                if let Some(allowed) = allowed_values(&key) {
                    message.push_str(&format!(" ({allowed})"));
                }
            }
            ConfigError::Invalid {
                key: if key == "." {
                    "(top level)".into()
                } else {
                    key
                },
                message,
                position: inner.span().map(|s| line_column(text, s.start)),
            }
        })
    }

    /// The one check: raw values in, checked config out.
    fn validate(&self, base_dir: &Path) -> Result<Config> {
        let available_cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let service = self.service.validate(available_cores)?;
        let logging = self.logging.validate()?;

        let count = self.namespace.len();
        if count == 0 {
            return Err(ConfigError::invalid(
                "namespace",
                "no [[namespace]] table; give 1..=32 namespaces",
            ));
        }
        if count > MAX_NAMESPACE_ID as usize {
            return Err(ConfigError::invalid(
                "namespace",
                format!("{count} namespaces configured; at most {MAX_NAMESPACE_ID} are allowed"),
            ));
        }
        let mut namespaces: Vec<NamespaceConfig> = Vec::with_capacity(count);
        // Device identity (canonical path or transport id) → its key.
        let mut device_owner: HashMap<String, String> = HashMap::new();
        for (position, raw) in self.namespace.iter().enumerate() {
            let namespace_id = position as u32 + 1;
            // Names first: a repeated table is reported as such, not as
            // the repeated devices it also has.
            if let Some(name) = &raw.name {
                if let Some(other) = namespaces.iter().position(|o| &o.name == name) {
                    return Err(ConfigError::invalid(
                        format!("namespace[{position}].name"),
                        format!(
                            "{name:?} is already the name of namespace[{other}]; names must be unique"
                        ),
                    ));
                }
            }
            let ns = raw.validate(position, namespace_id, base_dir, &mut device_owner)?;
            let keys = ns.shm_keys();
            for (other, o) in namespaces.iter().enumerate() {
                let theirs = o.shm_keys();
                if keys.start() <= theirs.end() && theirs.start() <= keys.end() {
                    return Err(ConfigError::invalid(
                        format!("namespace[{position}].index.shm-key-base"),
                        format!(
                            "{:#X} gives namespace {:?} (id {namespace_id}) shm keys {:#X}..={:#X}, which overlap keys {:#X}..={:#X} of namespace[{other}] {:?} (id {}); keys are base + id x {KEYS_PER_NAMESPACE:#X} + segment, so give every namespace the same base, or bases that keep these ranges apart",
                            ns.index.shm_key_base,
                            ns.name,
                            keys.start(),
                            keys.end(),
                            theirs.start(),
                            theirs.end(),
                            o.name,
                            o.namespace_id
                        ),
                    ));
                }
            }
            namespaces.push(ns);
        }
        let security = self.security.validate(base_dir, &namespaces)?;
        Ok(Config {
            service,
            logging,
            namespaces,
            security,
            source: None,
        })
    }
}

impl RawSecurity {
    fn validate(&self, base_dir: &Path, namespaces: &[NamespaceConfig]) -> Result<SecurityConfig> {
        let ttl = self.session_ttl.0;
        if !(1..=MAX_SESSION_TTL_S).contains(&ttl) {
            return Err(ConfigError::invalid(
                "security.session-ttl",
                format!(
                    "{ttl} s is not in 1..={MAX_SESSION_TTL_S} seconds (clients renew 60 s \
                     before the end, so use at least 120 outside tests)"
                ),
            ));
        }
        let admin_user = self.admin_user.clone();
        let printable = admin_user
            .bytes()
            .all(|b| b.is_ascii_graphic() || b == b' ');
        if admin_user.is_empty() || admin_user.len() > 63 || !printable {
            return Err(ConfigError::invalid(
                "security.admin-user",
                format!("{admin_user:?} must be 1..=63 bytes of printable ASCII"),
            ));
        }
        let path = |key: &str, text: &str| -> Result<PathBuf> {
            if text.trim().is_empty() {
                return Err(ConfigError::invalid(
                    format!("security.{key}"),
                    "empty path; give a file path (relative to the config file's directory)",
                ));
            }
            Ok(base_dir.join(text))
        };
        let admin_password_file = match &self.admin_password_file {
            Some(text) => Some(path("admin-password-file", text)?),
            None => None,
        };
        let store = match &self.store {
            Some(text) => Some(path("store", text)?),
            None => match namespaces.first().and_then(|n| n.devices.first()) {
                Some(DeviceSpec::File { path, .. }) => Some(
                    path.parent()
                        .unwrap_or(Path::new("/"))
                        .join(DEFAULT_SECURITY_STORE_NAME),
                ),
                _ => None,
            },
        };
        if self.enabled && store.is_none() {
            return Err(ConfigError::invalid(
                "security.store",
                "not given, and the first namespace's first device is not a file to put it \
                 beside; give a file path for the user store",
            ));
        }
        let delay = check_range(
            "security.login-failure-delay-ms",
            self.login_failure_delay_ms,
            0,
            MAX_LOGIN_FAILURE_DELAY_MS,
            " (milliseconds; 0 = no throttling)",
        )?;
        let max_delay = check_range(
            "security.login-failure-max-delay-ms",
            self.login_failure_max_delay_ms,
            delay,
            MAX_LOGIN_FAILURE_DELAY_MS,
            " (milliseconds; at least login-failure-delay-ms)",
        )?;
        let cost = check_range(
            "security.password-hash-cost",
            self.password_hash_cost,
            10,
            16,
            " (bcrypt cost; each step doubles the time of a login without a cached verification)",
        )?;
        Ok(SecurityConfig {
            enabled: self.enabled,
            session_ttl_s: ttl as u32,
            admin_user,
            admin_password_file,
            store,
            login_failure_delay_ms: delay as u64,
            login_failure_max_delay_ms: max_delay as u64,
            password_hash_cost: cost as u32,
        })
    }
}

/// The allowed values of the integer keys, for serde's type errors (the
/// range checks below give the same ranges).
fn allowed_values(key: &str) -> Option<&'static str> {
    let leaf = key.rsplit('.').next()?;
    Some(match leaf {
        "port" => "1..=65535",
        "cores" => "0..=cores available, 0 = all",
        "max-connections" => "1..=1000000",
        "proto-fd-idle-ms" => "0..=86400000 milliseconds, 0 = never",
        "replication-factor" => "1..=1",
        "evict-used-pct" => "0..=100, 0 = off",
        "tomb-raider-sleep-us" => "0..=1000000 microseconds",
        "post-write-cache" => "0..=4096 write blocks",
        "flush-max-ms" => "0..=60000 milliseconds",
        "defrag-lwm-pct" => "0..=99",
        "stop-writes-pct" => "1..=100",
        "shm-key-base" => "an integer such as 0x4F500000",
        "sprigs" => "a power of two in 1..=4096",
        "max-stages" => "1..=4095",
        "login-failure-delay-ms" | "login-failure-max-delay-ms" => "0..=60000 milliseconds",
        "password-hash-cost" => "10..=16",
        _ => return None,
    })
}

fn check_range(key: &str, value: i64, low: i64, high: i64, note: &str) -> Result<i64> {
    if (low..=high).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::invalid(
            key,
            format!("{value} is not in {low}..={high}{note}"),
        ))
    }
}

impl RawService {
    fn validate(&self, available_cores: usize) -> Result<ServiceConfig> {
        let address = match self.address.trim() {
            "any" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            text => text.parse::<IpAddr>().map_err(|_| {
                ConfigError::invalid(
                    "service.address",
                    format!(
                        "{:?} is not an IP address; give an IPv4 or IPv6 address, \"0.0.0.0\" or \"any\" for all interfaces",
                        self.address
                    ),
                )
            })?,
        };
        let port = check_range("service.port", self.port, 1, 65_535, "")? as u16;
        let cores_configured = check_range(
            "service.cores",
            self.cores,
            0,
            available_cores as i64,
            &format!(" (0 = all; this host has {available_cores} cores available)"),
        )? as usize;
        let cores = if cores_configured == 0 {
            available_cores
        } else {
            cores_configured
        };
        let max_connections = check_range(
            "service.max-connections",
            self.max_connections,
            1,
            MAX_CONNECTIONS_LIMIT,
            "",
        )? as u32;
        let proto_fd_idle_ms = check_range(
            "service.proto-fd-idle-ms",
            self.proto_fd_idle_ms,
            0,
            MAX_PROTO_FD_IDLE_MS,
            " (milliseconds; 0 = never close idle connections)",
        )? as u64;
        let (node_id, node_id_source) = match &self.node_id {
            Some(text) => (parse_node_id(text)?, NodeIdSource::Configured),
            None => derive_node_id(port),
        };
        let cluster_name = match self.cluster_name.as_str() {
            "" => None,
            name => {
                let printable = name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b';' && b != b',');
                if name.len() > MAX_CLUSTER_NAME_BYTES || !printable || name == "null" {
                    return Err(ConfigError::invalid(
                        "service.cluster-name",
                        format!(
                            "{name:?} must be 1..={MAX_CLUSTER_NAME_BYTES} bytes of printable ASCII without spaces, ';' or ',' (and not \"null\"), or empty for none"
                        ),
                    ));
                }
                Some(name.to_string())
            }
        };
        Ok(ServiceConfig {
            address,
            port,
            cores,
            cores_configured,
            poll_mode: self.poll_mode,
            max_connections,
            proto_fd_idle_ms,
            node_id,
            node_id_source,
            cluster_name,
        })
    }
}

fn parse_node_id(text: &str) -> Result<u64> {
    let hex = text
        .trim()
        .strip_prefix("0x")
        .or_else(|| text.trim().strip_prefix("0X"))
        .unwrap_or(text.trim());
    let value = if (1..=16).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        u64::from_str_radix(hex, 16).ok()
    } else {
        None
    };
    match value {
        Some(id) if id != 0 => Ok(id),
        _ => Err(ConfigError::invalid(
            "service.node-id",
            format!(
                "{text:?} must be 1..=16 hex digits (a non-zero u64), e.g. \"BB9020011AC4202\""
            ),
        )),
    }
}

/// The node id when none is configured: the MAC address of the first
/// physical network interface (by name; any non-loopback one if none is
/// physical) in the low 48 bits and the service port in the high 16, as
/// Aerospike does with its fabric port. Without a MAC address, a hash of
/// the host name takes the MAC's place.
pub fn derive_node_id(port: u16) -> (u64, NodeIdSource) {
    let high = u64::from(port) << 48;
    if let Some((interface, mac)) = first_mac_address() {
        return (high | mac, NodeIdSource::Mac { interface });
    }
    let hostname = fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    // FNV-1a, folded to 48 bits; never 0.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in hostname.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let low = ((hash >> 48) ^ hash) & 0xFFFF_FFFF_FFFF;
    (high | low.max(1), NodeIdSource::Hostname { hostname })
}

fn first_mac_address() -> Option<(String, u64)> {
    let mut names: Vec<String> = fs::read_dir("/sys/class/net")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    let mac_of = |name: &str| -> Option<u64> {
        let text = fs::read_to_string(format!("/sys/class/net/{name}/address")).ok()?;
        let parts: Vec<&str> = text.trim().split(':').collect();
        if parts.len() != 6 {
            return None;
        }
        let mut mac = 0u64;
        for part in parts {
            mac = (mac << 8) | u64::from(u8::from_str_radix(part, 16).ok()?);
        }
        (mac != 0).then_some(mac)
    };
    let physical = |name: &str| Path::new(&format!("/sys/class/net/{name}/device")).exists();
    names
        .iter()
        .filter(|n| physical(n))
        .chain(names.iter().filter(|n| !physical(n)))
        .find_map(|n| mac_of(n).map(|mac| (n.clone(), mac)))
}

impl RawLogging {
    fn validate(&self) -> Result<LoggingConfig> {
        let ticker = self.ticker_interval.0;
        if !(1..=MAX_TICKER_INTERVAL_S).contains(&ticker) {
            return Err(ConfigError::invalid(
                "logging.ticker-interval",
                format!("{ticker} s is not in 1..={MAX_TICKER_INTERVAL_S} seconds"),
            ));
        }
        Ok(LoggingConfig {
            level: self.level,
            ticker_interval_s: ticker,
        })
    }
}

/// A value narrowed for an engine field, remembering what the file said so
/// that the engine's message shows the configured value, not the clamp.
struct Narrowed {
    engine_key: &'static str,
    shown: String,
    original: String,
}

fn narrow_u32(value: i64, engine_key: &'static str, hex: bool, log: &mut Vec<Narrowed>) -> u32 {
    match u32::try_from(value) {
        Ok(v) => v,
        Err(_) => {
            let (shown, original) = if hex && value >= 0 {
                (format!("{:#x}", u32::MAX), format!("{value:#x}"))
            } else if hex {
                (format!("{:#x}", u32::MAX), value.to_string())
            } else {
                (u32::MAX.to_string(), value.to_string())
            };
            log.push(Narrowed {
                engine_key,
                shown,
                original,
            });
            u32::MAX
        }
    }
}

fn restore_original(engine_key: &str, message: String, log: &[Narrowed]) -> String {
    match log.iter().find(|n| n.engine_key == engine_key) {
        Some(n) => message.replacen(&n.shown, &n.original, 1),
        None => message,
    }
}

/// Maps a `StorageConfig::validate` message ("write-block-size 1000 must
/// be ...") to its full key.
fn storage_error(prefix: &str, message: String, log: &[Narrowed]) -> ConfigError {
    for (engine_key, key) in [
        ("write-block-size", "storage.write-block-size"),
        ("defrag-lwm-pct", "storage.defrag-lwm-pct"),
        ("stop-writes-pct", "storage.stop-writes-pct"),
        ("max-write-cache", "storage.max-write-cache"),
    ] {
        if let Some(rest) = message.strip_prefix(engine_key) {
            let rest = restore_original(engine_key, rest.trim_start().to_string(), log);
            return ConfigError::invalid(format!("{prefix}.{key}"), rest);
        }
    }
    if message.starts_with("namespace name") {
        return ConfigError::invalid(format!("{prefix}.name"), message);
    }
    ConfigError::invalid(format!("{prefix}.storage"), message)
}

impl RawNamespace {
    fn validate(
        &self,
        position: usize,
        namespace_id: u32,
        base_dir: &Path,
        device_owner: &mut HashMap<String, String>,
    ) -> Result<NamespaceConfig> {
        let prefix = format!("namespace[{position}]");
        let key = |k: &str| format!("{prefix}.{k}");
        let name = match &self.name {
            Some(name) => name.clone(),
            None => {
                return Err(ConfigError::invalid(
                    key("name"),
                    "missing; every namespace needs a name of 1..=31 bytes",
                ))
            }
        };
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            return Err(ConfigError::invalid(
                key("name"),
                format!("{name:?} may hold only letters, digits, '_', '-' and '.' (1..=31 bytes)"),
            ));
        }
        let replication_factor = check_range(
            &key("replication-factor"),
            self.replication_factor,
            1,
            MAX_REPLICATION_FACTOR,
            ": Osprey runs a single node for now, so every record has exactly one copy",
        )? as u32;
        let default_ttl_s = self.default_ttl.0;
        if default_ttl_s > MAX_DEFAULT_TTL_S {
            return Err(ConfigError::invalid(
                key("default-ttl"),
                format!(
                    "{default_ttl_s} s is not in 0..={MAX_DEFAULT_TTL_S} seconds (10 years; 0 = never expire)"
                ),
            ));
        }
        let nsup_period_s = self.nsup_period.0;
        if nsup_period_s > MAX_NSUP_PERIOD_S {
            return Err(ConfigError::invalid(
                key("nsup-period"),
                format!(
                    "{nsup_period_s} s is not in 0..={MAX_NSUP_PERIOD_S} seconds (0 = no supervisor)"
                ),
            ));
        }
        let evict_used_pct = check_range(
            &key("evict-used-pct"),
            self.evict_used_pct,
            0,
            100,
            " (0 = off)",
        )? as u32;
        let tomb_raider_period_s = self.tomb_raider_period.0;
        if tomb_raider_period_s > MAX_TOMB_RAIDER_PERIOD_S {
            return Err(ConfigError::invalid(
                key("tomb-raider-period"),
                format!(
                    "{tomb_raider_period_s} s is not in 0..={MAX_TOMB_RAIDER_PERIOD_S} seconds (30 days; 0 = never reclaim tombstones)"
                ),
            ));
        }
        let tomb_raider_sleep_us = check_range(
            &key("tomb-raider-sleep-us"),
            self.tomb_raider_sleep_us,
            0,
            MAX_TOMB_RAIDER_SLEEP_US,
            " microseconds",
        )? as u64;

        // Storage: the engine checks its own fields.
        let raw = &self.storage;
        let mut narrowed = Vec::new();
        let write_block_bytes = match u32::try_from(raw.write_block_size.0) {
            Ok(v) => v,
            Err(_) => {
                narrowed.push(Narrowed {
                    engine_key: "write-block-size",
                    shown: u32::MAX.to_string(),
                    original: raw.write_block_size.0.to_string(),
                });
                u32::MAX
            }
        };
        let post_write_cache_blocks = check_range(
            &key("storage.post-write-cache"),
            raw.post_write_cache,
            0,
            MAX_POST_WRITE_CACHE_BLOCKS,
            " write blocks per device",
        )? as u32;
        let flush_max_ms = check_range(
            &key("storage.flush-max-ms"),
            raw.flush_max_ms,
            0,
            MAX_FLUSH_MAX_MS,
            " milliseconds",
        )? as u64;
        let storage = StorageConfig {
            write_block_bytes,
            post_write_cache_blocks,
            max_write_cache_bytes: raw.max_write_cache.0,
            flush_max_ms,
            defrag_lwm_pct: narrow_u32(raw.defrag_lwm_pct, "defrag-lwm-pct", false, &mut narrowed),
            commit_to_device: raw.commit_to_device,
            stop_writes_pct: narrow_u32(
                raw.stop_writes_pct,
                "stop-writes-pct",
                false,
                &mut narrowed,
            ),
            cold_start_empty: raw.cold_start_empty,
            default_ttl_s: default_ttl_s as u32,
            ..StorageConfig::new(&name)
        };
        storage
            .validate()
            .map_err(|m| storage_error(&prefix, m, &narrowed))?;

        // Index: the engine checks its own fields; keys come back as
        // "index.sprigs" and get the namespace prefix.
        let mut narrowed = Vec::new();
        let index = IndexConfig {
            namespace_id,
            shm_key_base: narrow_u32(
                self.index.shm_key_base,
                "index.shm-key-base",
                true,
                &mut narrowed,
            ),
            pages: self.index.pages.engine(),
            sprigs_per_partition: narrow_u32(
                self.index.sprigs,
                "index.sprigs",
                false,
                &mut narrowed,
            ),
            stage_size_bytes: self.index.stage_size.0,
            max_stages: narrow_u32(
                self.index.max_stages,
                "index.max-stages",
                false,
                &mut narrowed,
            ),
            ..IndexConfig::default()
        };
        index.validate().map_err(|e| {
            if e.key == "namespace-id" {
                ConfigError::invalid(
                    "namespace",
                    format!(
                        "namespace id {}; at most {MAX_NAMESPACE_ID} namespaces",
                        e.message
                    ),
                )
            } else {
                ConfigError::invalid(
                    format!("{prefix}.{}", e.key),
                    restore_original(e.key, e.message, &narrowed),
                )
            }
        })?;

        // Devices.
        let devices_key = key("storage.devices");
        let listed = match &raw.devices {
            Some(list) if !list.is_empty() => list,
            _ => {
                return Err(ConfigError::invalid(
                    devices_key,
                    format!(
                        "missing or empty; list 1..={MAX_DEVICES_PER_NAMESPACE} files, block devices or SPDK transport ids"
                    ),
                ))
            }
        };
        if listed.len() > MAX_DEVICES_PER_NAMESPACE {
            return Err(ConfigError::invalid(
                devices_key,
                format!(
                    "{} devices listed; at most {MAX_DEVICES_PER_NAMESPACE} per namespace",
                    listed.len()
                ),
            ));
        }
        let file_size_bytes = raw.file_size.map(|s| s.0);
        let min_file_bytes = HEADER_REGION_BYTES + u64::from(write_block_bytes);
        if let Some(size) = file_size_bytes {
            if !(min_file_bytes..=MAX_FILE_SIZE_BYTES).contains(&size) {
                return Err(ConfigError::invalid(
                    key("storage.file-size"),
                    format!(
                        "{size} bytes is not in {min_file_bytes}..={MAX_FILE_SIZE_BYTES} ({} device header + one {} write block, up to {})",
                        human_bytes(HEADER_REGION_BYTES),
                        human_bytes(u64::from(write_block_bytes)),
                        human_bytes(MAX_FILE_SIZE_BYTES)
                    ),
                ));
            }
        }
        let mut devices = Vec::with_capacity(listed.len());
        for (i, text) in listed.iter().enumerate() {
            let device_key = format!("{devices_key}[{i}]");
            let (spec, identity) = device_spec(&device_key, text, base_dir, file_size_bytes)?;
            if let Some(owner) = device_owner.get(&identity) {
                return Err(ConfigError::invalid(
                    device_key,
                    format!(
                        "{} is already used by {owner}; a device belongs to one namespace once",
                        spec.name()
                    ),
                ));
            }
            device_owner.insert(identity, device_key);
            devices.push(spec);
        }

        let supervisor = SupervisorConfig {
            evict_used_pct,
            ..SupervisorConfig::default()
        };
        let tomb_raider = TombRaiderConfig {
            sleep_per_block: std::time::Duration::from_micros(tomb_raider_sleep_us),
            ..TombRaiderConfig::default()
        };
        Ok(NamespaceConfig {
            name,
            namespace_id,
            replication_factor,
            default_ttl_s,
            nsup_period_s,
            evict_used_pct,
            tomb_raider_period_s,
            devices,
            file_size_bytes,
            storage,
            index,
            supervisor,
            tomb_raider,
        })
    }
}

/// Classifies one `devices` entry; also returns an identity for the
/// uniqueness check (the canonical path, so that two spellings of one
/// device or file are caught).
fn device_spec(
    key: &str,
    text: &str,
    base_dir: &Path,
    file_size_bytes: Option<u64>,
) -> Result<(DeviceSpec, String)> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(ConfigError::invalid(
            key,
            "empty; give a file or device path, or an SPDK transport id \"trtype:PCIe traddr:...\"",
        ));
    }
    if trimmed.starts_with("trtype:") {
        let transport_id = trimmed.split_whitespace().collect::<Vec<_>>().join(" ");
        let trtype = transport_id
            .split_whitespace()
            .next()
            .and_then(|t| t.strip_prefix("trtype:"))
            .unwrap_or("");
        let known = ["pcie", "tcp", "rdma"].contains(&trtype.to_ascii_lowercase().as_str());
        let has_address = transport_id
            .split_whitespace()
            .any(|t| t.starts_with("traddr:") && t.len() > "traddr:".len());
        if !known || !has_address {
            return Err(ConfigError::invalid(
                key,
                format!(
                    "{text:?} is not an SPDK transport id: give trtype:PCIe, trtype:TCP or trtype:RDMA and a traddr:, e.g. \"trtype:PCIe traddr:0000:01:00.0\""
                ),
            ));
        }
        let identity = format!("spdk:{}", transport_id.to_ascii_lowercase());
        return Ok((DeviceSpec::Spdk { transport_id }, identity));
    }
    let joined = base_dir.join(trimmed);
    let absolute = std::path::absolute(&joined).unwrap_or(joined);
    // Resolve `..` and symlinks of the directory, keep the name the user
    // gave the device itself (a /dev/disk/by-id link stays readable).
    let path = match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(file)) => match fs::canonicalize(parent) {
            Ok(dir) => dir.join(file),
            Err(_) => absolute.clone(),
        },
        _ => absolute.clone(),
    };
    match fs::metadata(&path) {
        Ok(meta) => {
            let kind = meta.file_type();
            let identity = fs::canonicalize(&path)
                .unwrap_or_else(|_| path.clone())
                .display()
                .to_string();
            if kind.is_block_device() || kind.is_char_device() {
                Ok((DeviceSpec::BlockDevice { path }, identity))
            } else if kind.is_file() {
                let size_bytes = need_file_size(key, &path, file_size_bytes, "is a regular file")?;
                Ok((DeviceSpec::File { path, size_bytes }, identity))
            } else {
                Err(ConfigError::invalid(
                    key,
                    format!(
                        "{} is a directory or other special file; give a regular file, a block device or an SPDK transport id",
                        path.display()
                    ),
                ))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = path.parent().unwrap_or(Path::new("/"));
            if !parent.is_dir() {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "{} does not exist, nor does its directory {}; create the directory or fix the path (relative paths are resolved against the config file's directory {})",
                        path.display(),
                        parent.display(),
                        base_dir.display()
                    ),
                ));
            }
            let size_bytes = need_file_size(
                key,
                &path,
                file_size_bytes,
                "does not exist yet (a file to create)",
            )?;
            let identity = path.display().to_string();
            Ok((DeviceSpec::File { path, size_bytes }, identity))
        }
        Err(e) => Err(ConfigError::invalid(
            key,
            format!("cannot stat {}: {e}", path.display()),
        )),
    }
}

fn need_file_size(key: &str, path: &Path, file_size_bytes: Option<u64>, what: &str) -> Result<u64> {
    file_size_bytes.ok_or_else(|| {
        let storage_key = key.rsplit_once(".devices").map_or(key, |(head, _)| head);
        ConfigError::invalid(
            format!("{storage_key}.file-size"),
            format!(
                "missing: device {} {what}, so storage.file-size must say how large it is (e.g. \"4G\"; at least the 8 MiB header plus one write block)",
                path.display()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config whose one device file would go in the temp dir (which
    /// exists; the file need not), with `table` as `[security]`.
    fn with_security(table: &str) -> Result<Config> {
        let device = std::env::temp_dir().join("osprey-config-test-security.dat");
        let text = format!(
            "[[namespace]]\nname = \"t\"\n[namespace.storage]\ndevices = [{:?}]\nfile-size = \"64M\"\n[security]\n{table}",
            device.display().to_string()
        );
        Config::parse(&text, Path::new("/etc/osprey"))
    }

    #[test]
    fn security_table() {
        let off = with_security("").unwrap().security;
        assert!(!off.enabled);
        assert_eq!(off.session_ttl_s, 86_400);
        assert_eq!(
            off.store,
            Some(std::env::temp_dir().join(DEFAULT_SECURITY_STORE_NAME)),
            "default store beside the first device file"
        );
        let on = with_security(
            "enabled = true\nsession-ttl = \"2h\"\nstore = \"users.dat\"\nadmin-password-file = \"pw\"",
        )
        .unwrap()
        .security;
        assert!(on.enabled);
        assert_eq!(on.session_ttl_s, 7200);
        assert_eq!(
            on.store.as_deref(),
            Some(Path::new("/etc/osprey/users.dat"))
        );
        assert_eq!(
            on.admin_password_file.as_deref(),
            Some(Path::new("/etc/osprey/pw"))
        );
        for (table, key) in [
            ("enable = true", "security.enable"),
            ("session-ttl = 0", "security.session-ttl"),
            ("password-hash-cost = 4", "security.password-hash-cost"),
            (
                "login-failure-delay-ms = 500\nlogin-failure-max-delay-ms = 100",
                "security.login-failure-max-delay-ms",
            ),
            ("admin-user = \"\"", "security.admin-user"),
            ("store = \"\"", "security.store"),
        ] {
            let e = with_security(table).unwrap_err();
            assert_eq!(e.key(), Some(key), "{table}: {e}");
        }
    }

    /// A config with `keys` in its one namespace.
    fn with_namespace_keys(keys: &str) -> Result<Config> {
        let device = std::env::temp_dir().join("osprey-config-test-tombs.dat");
        let text = format!(
            "[[namespace]]\nname = \"t\"\n{keys}\n[namespace.storage]\ndevices = [{:?}]\nfile-size = \"64M\"\n",
            device.display().to_string()
        );
        Config::parse(&text, Path::new("/etc/osprey"))
    }

    #[test]
    fn tomb_raider_keys() {
        let ns = &with_namespace_keys("").unwrap().namespaces[0];
        assert_eq!(ns.tomb_raider_period_s, DEFAULT_TOMB_RAIDER_PERIOD_S);
        assert_eq!(
            ns.tomb_raider_config().sleep_per_block,
            std::time::Duration::from_millis(1)
        );
        let ns = &with_namespace_keys("tomb-raider-period = \"2h\"\ntomb-raider-sleep-us = 0")
            .unwrap()
            .namespaces[0];
        assert_eq!(ns.tomb_raider_period_s, 7200);
        assert!(ns.tomb_raider_config().sleep_per_block.is_zero());
        assert_eq!(
            with_namespace_keys("tomb-raider-period = 0")
                .unwrap()
                .namespaces[0]
                .tomb_raider_period_s,
            0,
            "0 turns it off"
        );
        for (keys, key, says) in [
            (
                "tomb-raider-period = \"31d\"",
                "namespace[0].tomb-raider-period",
                "0..=2592000",
            ),
            (
                "tomb-raider-sleep-us = -1",
                "namespace[0].tomb-raider-sleep-us",
                "0..=1000000",
            ),
            (
                "tomb-raider-sleep-us = 2000000",
                "namespace[0].tomb-raider-sleep-us",
                "0..=1000000",
            ),
        ] {
            let e = with_namespace_keys(keys).unwrap_err();
            assert!(
                e.key()
                    .is_some_and(|k| k.ends_with(key.rsplit('.').next().unwrap())),
                "{keys}: {e}"
            );
            assert!(e.to_string().contains(says), "{keys}: {e}");
        }
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size_bytes("4096"), Ok(4096));
        assert_eq!(parse_size_bytes("128K"), Ok(128 << 10));
        assert_eq!(parse_size_bytes("1m"), Ok(1 << 20));
        assert_eq!(parse_size_bytes("4G"), Ok(4 << 30));
        assert_eq!(parse_size_bytes("2T"), Ok(2 << 40));
        assert!(parse_size_bytes("4X").is_err());
        assert!(parse_size_bytes("G").is_err());
        assert!(parse_size_bytes("-4G").is_err());
        assert!(parse_size_bytes("99999999999T").is_err());
        assert_eq!(parse_duration_s("30d"), Ok(30 * 86_400));
        assert_eq!(parse_duration_s("12h"), Ok(12 * 3600));
        assert_eq!(parse_duration_s("10m"), Ok(600));
        assert_eq!(parse_duration_s("5s"), Ok(5));
        assert_eq!(parse_duration_s("7"), Ok(7));
        assert!(parse_duration_s("5w").is_err());
        assert!(parse_duration_s("").is_err());
    }

    #[test]
    fn line_column_counts_from_one() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 6), (2, 1));
        assert_eq!(line_column(text, 10), (2, 4));
    }

    #[test]
    fn node_id_override_and_derivation() {
        assert_eq!(parse_node_id("BB9020011AC4202").unwrap(), 0xBB9020011AC4202);
        assert_eq!(parse_node_id("0x1f").unwrap(), 0x1f);
        assert!(parse_node_id("0").is_err());
        assert!(parse_node_id("xyz").is_err());
        assert!(parse_node_id("12345678901234567").is_err());
        let (id, _) = derive_node_id(3000);
        assert_eq!(id >> 48, 3000);
        assert_ne!(id & 0xFFFF_FFFF_FFFF, 0);
    }

    #[test]
    fn shm_key_blocks_follow_the_engine_scheme() {
        let index = IndexConfig {
            namespace_id: 3,
            ..IndexConfig::default()
        };
        let block = shm_key_block(index.shm_key_base, 3);
        assert_eq!(*block.start(), index.meta_key() as u64);
        assert!(block.contains(&(index.stage_key(index.max_stages - 1) as u64)));
        assert_eq!(
            block.end() - block.start() + 1,
            u64::from(KEYS_PER_NAMESPACE)
        );
    }
}

//! Index configuration: what shapes the shared-memory layout, checked once.

use std::fmt;

use super::layout::{ENTRY_SIZE, FORMAT_VERSION};

/// Which pages back the index segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageMode {
    /// Hugetlb pages when the host has enough reserved, normal pages otherwise.
    Auto,
    /// Hugetlb pages or refuse to start.
    Huge,
    /// Normal pages.
    Normal,
}

impl PageMode {
    pub fn parse(text: &str) -> Option<PageMode> {
        match text {
            "auto" => Some(PageMode::Auto),
            "huge" => Some(PageMode::Huge),
            "normal" => Some(PageMode::Normal),
            _ => None,
        }
    }
}

/// Shared memory keys: `shm_key_base + namespace_id × KEYS_PER_NAMESPACE +
/// segment`, segment 0 the meta segment, 1..=MAX_STAGES the stages.
pub const KEYS_PER_NAMESPACE: u32 = 0x1000;
pub const MAX_STAGES: u32 = KEYS_PER_NAMESPACE - 1;
pub const MAX_NAMESPACE_ID: u32 = 32;
pub const DEFAULT_SHM_KEY_BASE: u32 = 0x4F50_0000;
pub const DEFAULT_SPRIGS_PER_PARTITION: u32 = 256;
pub const MAX_SPRIGS_PER_PARTITION: u32 = 4096;
pub const DEFAULT_STAGE_SIZE_BYTES: u64 = 1 << 30;
pub const MIN_STAGE_SIZE_BYTES: u64 = 64 << 10;
pub const MAX_STAGE_SIZE_BYTES: u64 = 16 << 30;
pub const DEFAULT_MAX_STAGES: u32 = 128;

/// The index settings of one namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexConfig {
    /// 1..=32, unique per namespace on the host.
    pub namespace_id: u32,
    pub shm_key_base: u32,
    pub pages: PageMode,
    /// Trees per partition: a power of two, 1..=4096.
    pub sprigs_per_partition: u32,
    /// Bytes per arena stage segment: a multiple of 4 KiB, 64 KiB..=16 GiB.
    /// It holds the largest power of two of entries that fits.
    pub stage_size_bytes: u64,
    /// Stage limit: past it inserts fail with "index full".
    pub max_stages: u32,
    /// Threads for the start-up walk.
    pub walk_threads: usize,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            namespace_id: 1,
            shm_key_base: DEFAULT_SHM_KEY_BASE,
            pages: PageMode::Auto,
            sprigs_per_partition: DEFAULT_SPRIGS_PER_PARTITION,
            stage_size_bytes: DEFAULT_STAGE_SIZE_BYTES,
            max_stages: DEFAULT_MAX_STAGES,
            walk_threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }
    }
}

/// A config value out of range, naming the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub key: &'static str,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

fn err(key: &'static str, message: String) -> ConfigError {
    ConfigError { key, message }
}

impl IndexConfig {
    /// Checks every value; on success the config can shape an index.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_NAMESPACE_ID).contains(&self.namespace_id) {
            return Err(err(
                "namespace-id",
                format!("{} is not in 1..={MAX_NAMESPACE_ID}", self.namespace_id),
            ));
        }
        let top = u64::from(self.shm_key_base)
            + u64::from(MAX_NAMESPACE_ID + 1) * u64::from(KEYS_PER_NAMESPACE);
        if self.shm_key_base == 0 || top > i32::MAX as u64 {
            return Err(err(
                "index.shm-key-base",
                format!(
                    "{:#x} must be in 1..={:#x} so every namespace's keys fit a positive key_t",
                    self.shm_key_base,
                    i32::MAX as u64
                        - u64::from(MAX_NAMESPACE_ID + 1) * u64::from(KEYS_PER_NAMESPACE)
                ),
            ));
        }
        if !self.sprigs_per_partition.is_power_of_two()
            || self.sprigs_per_partition > MAX_SPRIGS_PER_PARTITION
        {
            return Err(err(
                "index.sprigs",
                format!(
                    "{} must be a power of two in 1..={MAX_SPRIGS_PER_PARTITION}",
                    self.sprigs_per_partition
                ),
            ));
        }
        if !(MIN_STAGE_SIZE_BYTES..=MAX_STAGE_SIZE_BYTES).contains(&self.stage_size_bytes)
            || !self.stage_size_bytes.is_multiple_of(4096)
        {
            return Err(err(
                "index.stage-size",
                format!(
                    "{} bytes must be a multiple of 4096 in {MIN_STAGE_SIZE_BYTES}..={MAX_STAGE_SIZE_BYTES}",
                    self.stage_size_bytes
                ),
            ));
        }
        if !(1..=MAX_STAGES).contains(&self.max_stages) {
            return Err(err(
                "index.max-stages",
                format!("{} is not in 1..={MAX_STAGES}", self.max_stages),
            ));
        }
        let handles = u64::from(self.entries_per_stage()) * u64::from(self.max_stages);
        if handles > u64::from(u32::MAX) {
            return Err(err(
                "index.max-stages",
                format!(
                    "{} stages of {} entries exceed the 2^32 handles an entry can address; lower it to {}",
                    self.max_stages,
                    self.entries_per_stage(),
                    u64::from(u32::MAX) / u64::from(self.entries_per_stage())
                ),
            ));
        }
        if !(1..=256).contains(&self.walk_threads) {
            return Err(err(
                "index.walk-threads",
                format!("{} is not in 1..=256", self.walk_threads),
            ));
        }
        Ok(())
    }

    /// Entries per stage: the largest power of two that fits the stage, so
    /// that a handle splits into stage and slot with a shift and a mask.
    /// (The unused tail of a stage is never touched, so it costs no memory
    /// on normal pages.)
    pub fn entries_per_stage(&self) -> u32 {
        let fit = (self.stage_size_bytes / ENTRY_SIZE as u64).clamp(1, 1 << 31);
        1u32 << (63 - fit.leading_zeros())
    }

    /// The key of segment `segment` (0 = meta, 1.. = stage segment - 1).
    pub fn key(&self, segment: u32) -> i32 {
        (self.shm_key_base + self.namespace_id * KEYS_PER_NAMESPACE + segment) as i32
    }

    pub fn meta_key(&self) -> i32 {
        self.key(0)
    }

    pub fn stage_key(&self, stage: u32) -> i32 {
        self.key(stage + 1)
    }

    /// A hash of everything that shapes the layout. An index built under a
    /// different fingerprint is never attached.
    pub fn fingerprint(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for value in [
            u64::from(FORMAT_VERSION),
            ENTRY_SIZE as u64,
            u64::from(self.namespace_id),
            u64::from(self.sprigs_per_partition),
            self.stage_size_bytes,
        ] {
            for byte in value.to_le_bytes() {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
        hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        IndexConfig::default().validate().unwrap();
    }

    #[test]
    fn errors_name_the_key_and_range() {
        let bad = IndexConfig {
            sprigs_per_partition: 300,
            ..Default::default()
        };
        let e = bad.validate().unwrap_err();
        assert_eq!(e.key, "index.sprigs");
        assert!(e.to_string().contains("power of two in 1..=4096"), "{e}");

        let bad = IndexConfig {
            stage_size_bytes: 1000,
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "index.stage-size");
        let bad = IndexConfig {
            namespace_id: 0,
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "namespace-id");
        let bad = IndexConfig {
            shm_key_base: 0x7fff_0000,
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "index.shm-key-base");
        let bad = IndexConfig {
            stage_size_bytes: 16 << 30,
            max_stages: 4095,
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "index.max-stages");
    }

    #[test]
    fn fingerprint_changes_with_the_layout_only() {
        let a = IndexConfig::default();
        let b = IndexConfig {
            sprigs_per_partition: 512,
            ..a.clone()
        };
        let c = IndexConfig {
            max_stages: 7,
            walk_threads: 1,
            pages: PageMode::Normal,
            ..a.clone()
        };
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), c.fingerprint());
    }
}

//! Partitions: the 4096 fixed shards of every namespace.

use crate::digest::Digest;

/// Number of partitions in every namespace. Clients hard-code it.
pub const PARTITION_COUNT: usize = 4096;

/// A partition id, always `< PARTITION_COUNT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionId(u16);

impl PartitionId {
    /// The partition of a digest: bytes 0..2 little-endian, low 12 bits.
    #[inline]
    pub fn from_digest(digest: &Digest) -> PartitionId {
        let raw = u16::from_le_bytes([digest.0[0], digest.0[1]]);
        PartitionId(raw & (PARTITION_COUNT as u16 - 1))
    }

    /// `Some` if `id < PARTITION_COUNT`.
    pub fn new(id: u32) -> Option<PartitionId> {
        (id < PARTITION_COUNT as u32).then_some(PartitionId(id as u16))
    }

    #[inline]
    pub fn get(self) -> u16 {
        self.0
    }

    #[inline]
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// All partitions in order.
    pub fn all() -> impl Iterator<Item = PartitionId> {
        (0..PARTITION_COUNT as u16).map(PartitionId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_uses_the_low_twelve_bits_of_the_first_two_bytes_le() {
        let mut d = Digest([0xff; 20]);
        assert_eq!(d.partition().get(), 4095);
        d.0[0] = 0x34;
        d.0[1] = 0xf2;
        assert_eq!(d.partition().get(), 0x234);
        assert_eq!(PartitionId::new(4096), None);
        assert_eq!(PartitionId::all().count(), PARTITION_COUNT);
    }
}

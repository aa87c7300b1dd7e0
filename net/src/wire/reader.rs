//! A bounds-checked cursor over received bytes, shared by the decoders.
//!
//! Every read checks the length first and reports where it stopped, so no
//! decoder indexes wire data directly.

/// A read that ran past the end of the bytes: where it started and what it
/// was reading. Each decoder turns it into its own error type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Short {
    pub offset: usize,
    pub what: &'static str,
}

pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, at: 0 }
    }

    /// Offset of the next byte to read, from the start of the bytes given.
    pub(crate) fn offset(&self) -> usize {
        self.at
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Short> {
        let short = Short {
            offset: self.at,
            what,
        };
        let end = self.at.checked_add(n).ok_or(short)?;
        let out = self.bytes.get(self.at..end).ok_or(short)?;
        self.at = end;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], Short> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, Short> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, Short> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, Short> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounded_and_report_where_they_stopped() {
        let mut r = Reader::new(&[0, 1, 2, 3, 4]);
        assert_eq!(r.u16("a"), Ok(1));
        assert_eq!(r.remaining(), 3);
        assert_eq!(
            r.u32("b"),
            Err(Short {
                offset: 2,
                what: "b"
            })
        );
        // A failed read consumes nothing.
        assert_eq!(r.offset(), 2);
        assert_eq!(
            r.take(usize::MAX, "c"),
            Err(Short {
                offset: 2,
                what: "c"
            })
        );
        assert_eq!(r.take(3, "d"), Ok(&[2u8, 3, 4][..]));
        assert_eq!(r.remaining(), 0);
    }
}

//! Aerospike result codes (spec §8): what a client sees for each outcome.
//! The engine returns these; the wire layer writes `as u8`.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ResultCode {
    Ok = 0,
    ServerError = 1,
    KeyNotFound = 2,
    GenerationError = 3,
    ParameterError = 4,
    KeyExists = 5,
    BinExists = 6,
    ServerFull = 8,
    Timeout = 9,
    PartitionUnavailable = 11,
    BinTypeError = 12,
    RecordTooBig = 13,
    KeyBusy = 14,
    Unsupported = 16,
    BinNotFound = 17,
    DeviceOverload = 18,
    KeyMismatch = 19,
    NamespaceNotFound = 20,
    BinNameTooLong = 21,
    Forbidden = 22,
    ElementNotFound = 23,
    ElementExists = 24,
    EnterpriseOnly = 25,
    OpNotApplicable = 26,
    FilteredOut = 27,
}

impl ResultCode {
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({})", self, self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::ResultCode;

    #[test]
    fn codes_match_the_spec() {
        assert_eq!(ResultCode::KeyNotFound.code(), 2);
        assert_eq!(ResultCode::RecordTooBig.code(), 13);
        assert_eq!(ResultCode::DeviceOverload.code(), 18);
        assert_eq!(ResultCode::BinNameTooLong.code(), 21);
        assert_eq!(ResultCode::FilteredOut.code(), 27);
    }
}

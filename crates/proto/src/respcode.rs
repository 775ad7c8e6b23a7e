//! Numeric "weave" response codes sent as bare JSON integers in error bodies (spec README §3).

pub const NONE: u8 = 0;
pub const ILLEGAL_METHOD: u8 = 1;
pub const INVALID_CAPTCHA: u8 = 2;
pub const INVALID_USERNAME: u8 = 3;
pub const CANNOT_OVERWRITE: u8 = 4;
pub const USERID_MISMATCH: u8 = 5;
pub const JSON_PARSE_FAILURE: u8 = 6;
pub const MISSING_PASSWORD: u8 = 7;
pub const INVALID_WBO: u8 = 8;
pub const WEAK_PASSWORD: u8 = 9;
pub const INVALID_RESET_CODE: u8 = 10;
pub const UNSUPPORTED_FUNCTION: u8 = 11;
pub const NO_EMAIL: u8 = 12;
pub const INVALID_COLLECTION: u8 = 13;
pub const OVER_QUOTA: u8 = 14;
pub const EMAIL_MISMATCH: u8 = 15;
pub const CLIENT_UPGRADE: u8 = 16;
pub const SIZE_LIMIT_EXCEEDED: u8 = 17;

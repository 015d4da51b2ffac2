//! Randomness from the system's CSPRNG (through aws-lc).

/// Fills `buf` with cryptographically secure random bytes.
///
/// aws-lc's generator only fails when the operating system cannot provide entropy at all, in
/// which case no secure operation of the CA is possible, so this aborts loudly.
pub(crate) fn fill(buf: &mut [u8]) {
    #[allow(clippy::expect_used)]
    aws_lc_rs::rand::fill(buf).expect("the operating system's random number generator failed");
}

//! The two encodings PKCS#11 and X.509 disagree on: ECDSA signatures and EC public points.
//!
//! A token signs with `CKM_ECDSA` and answers `r ‖ s`, each as wide as the curve's field
//! (PKCS#11 v2.40 §2.3.1); a certificate carries `ECDSA-Sig-Value ::= SEQUENCE { r INTEGER,
//! s INTEGER }` (RFC 5480 §2.2, RFC 3279 §2.2.3). A token gives the public point as
//! `CKA_EC_POINT`, a DER OCTET STRING around the uncompressed point; X.509 wants the bare point.
//! Both are pure functions so that they are tested without a token.

/// `ECDSA-Sig-Value` in DER for a signature `r ‖ s` as a PKCS#11 token returns it, or `None`
/// when `raw` cannot be split into two equal halves.
pub(crate) fn ecdsa_signature_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let mut body = Vec::with_capacity(raw.len() + 6);
    push_unsigned_integer(&mut body, r);
    push_unsigned_integer(&mut body, s);
    let mut der = Vec::with_capacity(body.len() + 3);
    der.push(0x30);
    push_length(&mut der, body.len());
    der.extend_from_slice(&body);
    Some(der)
}

/// A DER INTEGER for the unsigned big-endian `magnitude`: DER wants the fewest bytes, and a
/// leading 0x00 where the first byte has its high bit set, which would otherwise make the
/// number negative.
fn push_unsigned_integer(out: &mut Vec<u8>, magnitude: &[u8]) {
    let first = magnitude
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(magnitude.len().saturating_sub(1));
    let digits = &magnitude[first..];
    let negative_looking = digits.first().is_some_and(|&b| b & 0x80 != 0);
    out.push(0x02);
    push_length(out, digits.len() + usize::from(negative_looking));
    if negative_looking {
        out.push(0x00);
    }
    out.extend_from_slice(digits);
}

/// A DER length: one byte below 128, else 0x80 + the count of big-endian bytes that follow.
fn push_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    out.push(0x80 | (bytes.len() - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

/// The uncompressed point (`04 ‖ x ‖ y`) in a `CKA_EC_POINT` value, for a curve whose field is
/// `field_len` bytes wide.
///
/// The standard value is a DER OCTET STRING around the point; a few tokens give the bare point,
/// which is accepted too, since the two cannot be confused (they differ in length).
pub(crate) fn ec_point_from_attribute(value: &[u8], field_len: usize) -> Option<&[u8]> {
    let point_len = 1 + 2 * field_len;
    let is_point = |p: &[u8]| p.len() == point_len && p.first() == Some(&0x04);
    if is_point(value) {
        return Some(value);
    }
    let (&tag, rest) = value.split_first()?;
    if tag != 0x04 {
        return None;
    }
    let (len, contents) = read_length(rest)?;
    (len == contents.len() && is_point(contents)).then_some(contents)
}

/// Reads a DER length, short or long form (at most two length bytes: nothing this module reads
/// is longer than 65535 bytes).
fn read_length(input: &[u8]) -> Option<(usize, &[u8])> {
    let (&first, rest) = input.split_first()?;
    match first {
        0..=0x7f => Some((usize::from(first), rest)),
        0x81 => {
            let (&len, rest) = rest.split_first()?;
            Some((usize::from(len), rest))
        }
        0x82 => {
            let (len, rest) = rest.split_first_chunk::<2>()?;
            Some((usize::from(u16::from_be_bytes(*len)), rest))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair as _};

    fn raw(r: &[u8], s: &[u8]) -> Vec<u8> {
        [r, s].concat()
    }

    /// One row per DER rule an INTEGER must follow, with the bytes written out by hand.
    #[test]
    fn integers_are_minimal_and_never_negative() {
        let small = raw(&[0, 0, 0, 0x01], &[0, 0, 0, 0x02]);
        assert_eq!(
            ecdsa_signature_to_der(&small).unwrap(),
            [0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x02]
        );
        // High bit set: a 0x00 keeps the integer positive.
        let high = raw(&[0x80, 0, 0, 0x01], &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            ecdsa_signature_to_der(&high).unwrap(),
            [
                0x30, 0x0e, 0x02, 0x05, 0x00, 0x80, 0, 0, 0x01, 0x02, 0x05, 0x00, 0xff, 0xff, 0xff,
                0xff
            ]
        );
        // Leading zeros are dropped, and what remains may itself need the 0x00.
        let zeros_then_high = raw(&[0, 0, 0x81, 0x02], &[0, 0x7f, 0xff, 0xff]);
        assert_eq!(
            ecdsa_signature_to_der(&zeros_then_high).unwrap(),
            [
                0x30, 0x0a, 0x02, 0x03, 0x00, 0x81, 0x02, 0x02, 0x03, 0x7f, 0xff, 0xff
            ]
        );
        // Zero is one 0x00 byte, not nothing.
        let zero = raw(&[0, 0], &[0, 0x05]);
        assert_eq!(
            ecdsa_signature_to_der(&zero).unwrap(),
            [0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x05]
        );
    }

    #[test]
    fn a_signature_that_does_not_split_in_two_is_refused() {
        assert_eq!(ecdsa_signature_to_der(&[]), None);
        assert_eq!(ecdsa_signature_to_der(&[1, 2, 3]), None);
    }

    #[test]
    fn long_signatures_get_a_long_form_length() {
        // P-521 size: 2 × 66 bytes with the high bit set, so two 69-byte INTEGERs.
        let der = ecdsa_signature_to_der(&[0xff; 132]).unwrap();
        assert_eq!(&der[..3], &[0x30, 0x81, 138]);
        assert_eq!(&der[3..6], &[0x02, 67, 0x00]);
        assert_eq!(der.len(), 3 + 138);
    }

    /// aws-lc-rs signs in the token's format (FIXED) and verifies in X.509's (ASN1): every
    /// converted signature must verify. Signing goes on until r or s has had its high bit set
    /// (one half in two) and a leading zero byte (one in 256) a few times each.
    #[test]
    fn converted_signatures_verify_as_x509_signatures() {
        let rng = SystemRandom::new();
        for (signing, verifying, field_len) in [
            (
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &signature::ECDSA_P256_SHA256_ASN1,
                32,
            ),
            (
                &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                &signature::ECDSA_P384_SHA384_ASN1,
                48,
            ),
        ] {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &rng).unwrap();
            let key = EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref()).unwrap();
            let public = signature::UnparsedPublicKey::new(verifying, key.public_key().as_ref());
            let (mut high_bit, mut leading_zero) = (0, 0);
            let mut i = 0u32;
            while high_bit < 5 || leading_zero < 5 {
                assert!(
                    i < 100_000,
                    "{leading_zero} leading zeros in {i} signatures"
                );
                let msg = i.to_be_bytes();
                let fixed = key.sign(&rng, &msg).unwrap();
                let fixed = fixed.as_ref();
                assert_eq!(fixed.len(), 2 * field_len);
                for half in [&fixed[..field_len], &fixed[field_len..]] {
                    high_bit += usize::from(half[0] & 0x80 != 0);
                    leading_zero += usize::from(half[0] == 0);
                }
                let der = ecdsa_signature_to_der(fixed).unwrap();
                public
                    .verify(&msg, &der)
                    .unwrap_or_else(|_| panic!("signature {i} does not verify: {der:02x?}"));
                i += 1;
            }
        }
    }

    #[test]
    fn ec_points_are_read_from_an_octet_string_or_bare() {
        let point: Vec<u8> = std::iter::once(0x04).chain(1..=64).collect();
        let mut wrapped = vec![0x04, 65];
        wrapped.extend_from_slice(&point);
        assert_eq!(ec_point_from_attribute(&wrapped, 32), Some(&point[..]));
        assert_eq!(ec_point_from_attribute(&point, 32), Some(&point[..]));

        let point384: Vec<u8> = std::iter::once(0x04).chain(1..=96).collect();
        let mut long_form = vec![0x04, 0x81, 97];
        long_form.extend_from_slice(&point384);
        assert_eq!(ec_point_from_attribute(&long_form, 48), Some(&point384[..]));

        // The wrong curve, a compressed point, a truncated string.
        assert_eq!(ec_point_from_attribute(&wrapped, 48), None);
        let mut compressed = vec![0x04, 33, 0x02];
        compressed.extend_from_slice(&[7; 32]);
        assert_eq!(ec_point_from_attribute(&compressed, 32), None);
        assert_eq!(ec_point_from_attribute(&wrapped[..40], 32), None);
        assert_eq!(ec_point_from_attribute(&[], 32), None);
    }
}

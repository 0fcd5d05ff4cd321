//! The text the ledger stores, written directly instead of through `fmt`
//! and serde (formatting amounts, times and postings was a large share of
//! the per-event cost). Each function writes exactly the bytes of the
//! generic form it replaces — `Decimal`'s `Display`, `Usd`'s JSON string,
//! `serde_json` of postings and allocations, `to_rfc3339_opts(Nanos, true)`
//! — so stored rows are unchanged; the tests compare them.

use crate::engine::{Allocation, Posting};
use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use rust_decimal::Decimal;

/// `decimal.to_string()`: the mantissa with the scale's digits after the point.
pub fn decimal(d: Decimal) -> String {
    let mut out = String::with_capacity(24);
    push_decimal(&mut out, d);
    out
}

pub fn push_decimal(out: &mut String, d: Decimal) {
    let scale = d.scale() as usize;
    // Digits, least significant first; 96-bit mantissa: at most 29 digits,
    // padded with zeros up to the scale (at most 28).
    let mut digits = [b'0'; 40];
    let mut len = 0;
    let mut n = d.mantissa().unsigned_abs();
    while n > u128::from(u64::MAX) {
        digits[len] = b'0' + (n % 10) as u8;
        n /= 10;
        len += 1;
    }
    let mut small = n as u64;
    while small > 0 {
        digits[len] = b'0' + (small % 10) as u8;
        small /= 10;
        len += 1;
    }
    len = len.max(scale);
    if d.is_sign_negative() {
        out.push('-');
    }
    if len == scale {
        out.push('0');
    }
    for &digit in digits[scale..len].iter().rev() {
        out.push(char::from(digit));
    }
    if scale > 0 {
        out.push('.');
        for &digit in digits[..scale].iter().rev() {
            out.push(char::from(digit));
        }
    }
}

/// `serde_json` string form: quoted, escaping only what JSON requires.
fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    } else {
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}

/// `Usd`'s JSON form: the normalized decimal as a string.
fn push_json_usd(out: &mut String, d: Decimal) {
    out.push('"');
    push_decimal(out, d.normalize());
    out.push('"');
}

/// `serde_json::to_string(postings)`.
pub fn postings_json(postings: &[Posting]) -> String {
    let mut out = String::with_capacity(2 + 72 * postings.len());
    out.push('[');
    for (i, p) in postings.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"ledger_account\":");
        push_json_str(&mut out, &p.ledger_account);
        out.push_str(",\"amount\":");
        push_json_usd(&mut out, p.amount.0);
        out.push('}');
    }
    out.push(']');
    out
}

/// `serde_json::to_string(allocations)`.
pub fn allocations_json(allocations: &[Allocation]) -> String {
    let mut out = String::with_capacity(2 + 48 * allocations.len());
    out.push('[');
    for (i, a) in allocations.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"lot_id\":");
        match &a.lot_id {
            Some(id) => push_json_str(&mut out, id),
            None => out.push_str("null"),
        }
        out.push_str(",\"amount\":");
        push_json_usd(&mut out, a.amount.0);
        out.push('}');
    }
    out.push(']');
    out
}

fn push_padded(out: &mut String, mut n: u32, width: usize) {
    let mut digits = [b'0'; 10];
    for slot in digits[..width].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    for &digit in &digits[..width] {
        out.push(char::from(digit));
    }
}

/// `at.to_rfc3339_opts(SecondsFormat::Nanos, true)`: fixed width, so
/// stored times sort as text.
pub fn time(at: DateTime<Utc>) -> String {
    let year = at.year();
    let nanos = at.nanosecond();
    // Years beyond four digits and leap seconds: chrono's own form.
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return at.to_rfc3339_opts(SecondsFormat::Nanos, true);
    }
    let mut out = String::with_capacity(30);
    push_padded(&mut out, year as u32, 4);
    out.push('-');
    push_padded(&mut out, at.month(), 2);
    out.push('-');
    push_padded(&mut out, at.day(), 2);
    out.push('T');
    push_padded(&mut out, at.hour(), 2);
    out.push(':');
    push_padded(&mut out, at.minute(), 2);
    out.push(':');
    push_padded(&mut out, at.second(), 2);
    out.push('.');
    push_padded(&mut out, nanos, 9);
    out.push('Z');
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::str::FromStr;
    use tollgate_core::Usd;

    fn random_decimal(rng: &mut StdRng) -> Decimal {
        let lo = rng.gen::<u32>();
        let mid = if rng.gen_bool(0.5) { rng.gen() } else { 0 };
        let hi = if rng.gen_bool(0.2) { rng.gen() } else { 0 };
        let (lo, mid, hi) = match rng.gen_range(0..6) {
            0 => (0, 0, 0),
            1 => (lo % 1000, 0, 0),
            2 => (lo % 10 * 100, 0, 0),
            _ => (lo, mid, hi),
        };
        Decimal::from_parts(lo, mid, hi, rng.gen_bool(0.5), rng.gen_range(0..=28))
    }

    #[test]
    fn decimals_read_as_display_and_usd_json_reads_as_serde() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut samples: Vec<Decimal> = (0..20_000).map(|_| random_decimal(&mut rng)).collect();
        samples.extend([
            Decimal::ZERO,
            Decimal::MAX,
            Decimal::MIN,
            Decimal::from_str("-0.000").unwrap(),
            Decimal::from_str("0.0000000000000000000000000001").unwrap(),
            Decimal::from_str("18446744073709551616").unwrap(),
        ]);
        for d in samples {
            assert_eq!(decimal(d), d.to_string(), "{d:?}");
            let mut json = String::new();
            push_json_usd(&mut json, d);
            assert_eq!(json, serde_json::to_string(&Usd(d)).unwrap(), "{d:?}");
        }
    }

    #[test]
    fn postings_and_allocations_read_as_serde_json() {
        let mut rng = StdRng::seed_from_u64(2);
        for name in ["customer:acct_1", "odd \"name\"\\ \u{1}", "ünïcode/é", ""] {
            let postings: Vec<Posting> = (0..rng.gen_range(0..4))
                .map(|_| Posting {
                    ledger_account: name.to_owned(),
                    amount: Usd(random_decimal(&mut rng)),
                })
                .collect();
            assert_eq!(
                postings_json(&postings),
                serde_json::to_string(&postings).unwrap()
            );
            let allocations: Vec<Allocation> = (0..rng.gen_range(0..4))
                .map(|i| Allocation {
                    lot_id: (i % 2 == 0).then(|| name.to_owned()),
                    amount: Usd(random_decimal(&mut rng)),
                })
                .collect();
            assert_eq!(
                allocations_json(&allocations),
                serde_json::to_string(&allocations).unwrap()
            );
        }
    }

    #[test]
    fn times_read_as_rfc3339_with_nanoseconds() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut samples: Vec<DateTime<Utc>> = (0..20_000)
            .map(|_| {
                DateTime::from_timestamp(
                    rng.gen_range(-62_000_000_000..260_000_000_000i64),
                    rng.gen_range(0..1_000_000_000),
                )
                .unwrap()
            })
            .collect();
        samples.push(DateTime::from_timestamp(0, 0).unwrap());
        // A leap second, and years beyond four digits.
        samples.push(DateTime::from_timestamp(1_483_228_799, 1_500_000_000).unwrap());
        samples.push(DateTime::from_timestamp(300_000_000_000, 5).unwrap());
        samples.push(DateTime::from_timestamp(-70_000_000_000, 5).unwrap());
        for at in samples {
            assert_eq!(time(at), at.to_rfc3339_opts(SecondsFormat::Nanos, true));
        }
    }
}

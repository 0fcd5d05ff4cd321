//! Money is an exact decimal amount of US dollars. Never a float.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Mul, Neg, Sub, SubAssign};

/// An exact amount of US dollars. Serialized as a normalized decimal string
/// (`"1.5"`, never a float) so JSON consumers never round it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, utoipa::ToSchema,
)]
#[serde(transparent)]
#[schema(value_type = String, example = "25.00")]
pub struct Usd(#[serde(with = "rust_decimal::serde::str")] pub Decimal);

impl Serialize for Usd {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0.normalize())
    }
}

impl Usd {
    pub const ZERO: Usd = Usd(Decimal::ZERO);

    pub fn new(amount: Decimal) -> Self {
        Usd(amount)
    }

    pub fn amount(self) -> Decimal {
        self.0
    }

    /// The cost of `tokens` at `self` dollars per million tokens, exactly.
    pub fn per_million_tokens(self, tokens: u64) -> Usd {
        Usd(self.0 * Decimal::from(tokens) / Decimal::from(1_000_000u32))
    }

    /// Normalized string form (no trailing zeros) used in headers and JSON.
    pub fn to_plain_string(self) -> String {
        self.0.normalize().to_string()
    }
}

impl fmt::Display for Usd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.normalize())
    }
}

impl std::str::FromStr for Usd {
    type Err = rust_decimal::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<Decimal>().map(Usd)
    }
}

impl Add for Usd {
    type Output = Usd;
    fn add(self, rhs: Usd) -> Usd {
        Usd(self.0 + rhs.0)
    }
}

impl AddAssign for Usd {
    fn add_assign(&mut self, rhs: Usd) {
        self.0 += rhs.0;
    }
}

impl Sub for Usd {
    type Output = Usd;
    fn sub(self, rhs: Usd) -> Usd {
        Usd(self.0 - rhs.0)
    }
}

impl SubAssign for Usd {
    fn sub_assign(&mut self, rhs: Usd) {
        self.0 -= rhs.0;
    }
}

impl Neg for Usd {
    type Output = Usd;
    fn neg(self) -> Usd {
        Usd(-self.0)
    }
}

impl Mul<Decimal> for Usd {
    type Output = Usd;
    fn mul(self, rhs: Decimal) -> Usd {
        Usd(self.0 * rhs)
    }
}

impl Sum for Usd {
    fn sum<I: Iterator<Item = Usd>>(iter: I) -> Usd {
        iter.fold(Usd::ZERO, |a, b| a + b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    #[test]
    fn one_token_fee_is_exact() {
        let fee = Usd(dec!(0.05)).per_million_tokens(1);
        assert_eq!(fee, Usd(dec!(0.00000005)));
        assert_eq!(fee.to_string(), "0.00000005");
    }

    #[test]
    fn fractional_unit_price_stays_exact() {
        let cost = Usd(dec!(0.01875)).per_million_tokens(3);
        assert_eq!(cost.to_string(), "0.00000005625");
    }

    #[test]
    fn serializes_as_string() {
        let json = serde_json::to_string(&Usd(dec!(1.50))).unwrap_or_default();
        assert_eq!(json, "\"1.5\"");
        let back: Usd = serde_json::from_str("\"0.000001\"").unwrap_or_default();
        assert_eq!(back, Usd(dec!(0.000001)));
    }
}

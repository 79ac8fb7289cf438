//! Kubernetes resource quantities as comparable numbers, so that a step's request can be held
//! against an administrator's maximum (`1Gi` > `1000M`, `0.5` = `500m`) exactly: values are
//! kept as whole nano-units in a `u128`, never as floating point.

use std::cmp::Ordering;
use std::fmt;

use crate::pipeline::quantity as grammar;

/// A valid, non-negative quantity: its text as written, and its value in nano-units.
#[derive(Clone, Debug)]
pub struct Quantity {
    text: String,
    nanos: u128,
}

impl Quantity {
    /// Parses a quantity (`500m`, `2`, `1.5Gi`, `1e3`). Negative values are refused: no
    /// resource, volume size or limit piculet reads can be negative.
    pub fn parse(text: &str) -> Result<Quantity, String> {
        let t = text.trim();
        if !grammar::is_valid(t) || t.starts_with('-') {
            return Err(format!(
                "\"{text}\" is not a quantity; write one such as \"500m\", \"2\" or \"1Gi\""
            ));
        }
        Ok(Quantity {
            text: t.to_string(),
            nanos: nanos(t.strip_prefix('+').unwrap_or(t)),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value in nano-units (saturating at `u128::MAX` for absurdly large values).
    pub fn nanos(&self) -> u128 {
        self.nanos
    }

    /// The k8s-openapi form, as written.
    pub fn to_k8s(&self) -> k8s_openapi::apimachinery::pkg::api::resource::Quantity {
        k8s_openapi::apimachinery::pkg::api::resource::Quantity(self.text.clone())
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Value of an already-validated, unsigned quantity in nano-units. Fractions finer than a
/// nano-unit round up, as the API server rounds them up.
fn nanos(text: &str) -> u128 {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));

    // The number as digits × 10^-scale.
    let mut digits: u128 = 0;
    for c in whole.chars().chain(fraction.chars()) {
        let d = u128::from(c.to_digit(10).unwrap_or(0));
        digits = digits.saturating_mul(10).saturating_add(d);
    }
    let scale = i64::try_from(fraction.len()).unwrap_or(i64::MAX);

    let (binary, decimal_exp): (u128, i64) = match suffix {
        "" => (1, 0),
        "n" => (1, -9),
        "u" => (1, -6),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        exp => (
            1,
            exp.get(1..)
                .and_then(|e| e.parse::<i64>().ok())
                .unwrap_or(0),
        ),
    };

    let value = digits.saturating_mul(binary);
    // nano-units: value × 10^(9 + decimal_exp − scale)
    let exp = 9_i64.saturating_add(decimal_exp).saturating_sub(scale);
    if exp >= 0 {
        let mut v = value;
        for _ in 0..exp.min(60) {
            v = v.saturating_mul(10);
        }
        if exp > 60 && v != 0 {
            return u128::MAX;
        }
        v
    } else {
        let mut divisor: u128 = 1;
        for _ in 0..(-exp).min(40) {
            divisor = divisor.saturating_mul(10);
        }
        value.div_ceil(divisor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(t: &str) -> Quantity {
        Quantity::parse(t).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn compares_across_suffixes() {
        assert_eq!(q("0.5"), q("500m"));
        assert_eq!(q("1Gi"), q("1024Mi"));
        assert_eq!(q("1k"), q("1e3"));
        assert_eq!(q("1"), q("1000000000n"));
        assert!(q("1Gi") > q("1G"));
        assert!(q("2") > q("1999m"));
        assert!(q("100Mi") > q("0.09Gi"));
        assert_eq!(q("1.5Gi"), q("1536Mi"));
        assert!(q("1n") > q("0"));
        assert_eq!(q("0.1n").nanos(), 1, "rounds up like the API server");
        assert_eq!(q("+1").nanos(), 1_000_000_000);
    }

    #[test]
    fn huge_values_saturate_without_panic() {
        assert_eq!(q("9e99").nanos(), u128::MAX);
        assert!(q("999999999999999999999999999999999999999999Ei").nanos() == u128::MAX);
        assert_eq!(q("1e-99").nanos(), 1);
    }

    #[test]
    fn refuses_invalid_and_negative() {
        assert_eq!(
            Quantity::parse("-1").unwrap_err(),
            "\"-1\" is not a quantity; write one such as \"500m\", \"2\" or \"1Gi\""
        );
        assert!(Quantity::parse("1x").is_err());
        assert!(Quantity::parse("").is_err());
    }
}

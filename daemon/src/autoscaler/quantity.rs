//! Kubernetes resource quantities ("500m", "1", "2k", "1Ki", "1e3"), the way an HPA spec spells
//! metric targets and tolerances, so a pasted Kubernetes block keeps its meaning.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// More significant digits than this cannot be held exactly in the 128-bit mantissa.
const MAX_DIGITS: usize = 36;

/// Exponents beyond this are syntax errors rather than values: no metric needs them, and the
/// bound keeps every power computation small.
const MAX_EXPONENT: i32 = 1000;

/// A parsed quantity.
///
/// The HPA compares targets in milli-units (`Quantity.MilliValue()`, rounded up), so the
/// milli-value is what the algorithm uses; tolerances are read as approximate floats in
/// Kubernetes (`AsApproximateFloat64`), hence the second representation. The original text is
/// kept for messages, so an error quotes what the user wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantity {
    text: String,
    milli: i64,
    approx: f64,
}

/// Why a quantity string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error(
        "invalid quantity {0:?}: expected a number with an optional suffix \
         (n, u, m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei) or exponent (e3)"
    )]
    Syntax(String),
    #[error("quantity {0:?} has more than {MAX_DIGITS} significant digits")]
    TooManyDigits(String),
    #[error("quantity {0:?} is too large")]
    TooLarge(String),
}

impl Quantity {
    /// Parses the Kubernetes quantity grammar: `[+-]digits[.digits]` then a decimal SI suffix,
    /// a binary SI suffix or an `e`/`E` exponent.
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let syntax = || QuantityError::Syntax(text.to_owned());
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        let (int_digits, rest) = split_digits(unsigned);
        let (frac_digits, suffix) = match rest.strip_prefix('.') {
            Some(after_dot) => split_digits(after_dot),
            None => ("", rest),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(syntax());
        }
        let (exp10, exp2) = parse_suffix(suffix).ok_or_else(syntax)?;

        let digits: String = int_digits.chars().chain(frac_digits.chars()).collect();
        let significant = digits.trim_start_matches('0');
        if significant.len() > MAX_DIGITS {
            return Err(QuantityError::TooManyDigits(text.to_owned()));
        }
        let mantissa: i128 = if significant.is_empty() {
            0
        } else {
            significant.parse().map_err(|_| syntax())?
        };
        let frac_len = i32::try_from(frac_digits.len()).map_err(|_| syntax())?;
        let scale10 = exp10 - frac_len;

        let milli = milli_value(mantissa, scale10, exp2, negative)
            .ok_or_else(|| QuantityError::TooLarge(text.to_owned()))?;
        // Float overflow gives inf only when the milli-value overflowed already, which errored.
        let magnitude = mantissa as f64 * 2f64.powi(exp2) * 10f64.powi(scale10);
        let approx = if negative { -magnitude } else { magnitude };
        Ok(Quantity {
            text: text.to_owned(),
            milli,
            approx,
        })
    }

    /// The value in thousandths, rounded up as Kubernetes' `MilliValue` does.
    pub fn milli_value(&self) -> i64 {
        self.milli
    }

    /// The value as a float, for tolerances and messages.
    pub fn as_f64(&self) -> f64 {
        self.approx
    }
}

fn split_digits(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s.split_at(end)
}

/// Returns the (power of ten, power of two) a suffix stands for.
fn parse_suffix(suffix: &str) -> Option<(i32, i32)> {
    let known = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => {
            let exponent = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))?;
            let (sign, digits) = match exponent.strip_prefix('-') {
                Some(rest) => (-1, rest),
                None => (1, exponent.strip_prefix('+').unwrap_or(exponent)),
            };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let value: i32 = digits.parse().ok()?;
            if value > MAX_EXPONENT {
                return None;
            }
            (sign * value, 0)
        }
    };
    Some(known)
}

/// `mantissa × 2^exp2 × 10^scale10` in thousandths, rounded towards +∞; `None` on overflow.
fn milli_value(mantissa: i128, scale10: i32, exp2: i32, negative: bool) -> Option<i64> {
    if mantissa == 0 {
        return Some(0);
    }
    let shifted = mantissa.checked_mul(1i128.checked_shl(u32::try_from(exp2).ok()?)?)?;
    let scale = scale10.checked_add(3)?;
    let magnitude = if scale >= 0 {
        shifted.checked_mul(10i128.checked_pow(scale.unsigned_abs())?)?
    } else {
        match 10i128.checked_pow(scale.unsigned_abs()) {
            // Rounding towards +∞ rounds a positive magnitude up and a negative one down.
            Some(divisor) if negative => shifted / divisor,
            Some(divisor) => shifted / divisor + i128::from(shifted % divisor != 0),
            // The divisor exceeds any 36-digit mantissa: the value is a sliver above zero.
            None => i128::from(!negative),
        }
    };
    let signed = if negative { -magnitude } else { magnitude };
    i64::try_from(signed).ok()
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quantity::parse(s)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(QuantityVisitor)
    }
}

/// Kubernetes accepts a quantity as a string or a bare number (`averageValue: 30`), and so does
/// TOML here.
struct QuantityVisitor;

impl Visitor<'_> for QuantityVisitor {
    type Value = Quantity;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Kubernetes quantity such as \"500m\", \"1\" or 2")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
        Quantity::parse(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
        if !v.is_finite() {
            return Err(E::custom(format!("quantity must be finite, got {v}")));
        }
        // `Display` for f64 never uses exponent notation, so the grammar above accepts it.
        self.visit_str(&v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn milli(s: &str) -> i64 {
        Quantity::parse(s)
            .map(|q| q.milli_value())
            .unwrap_or(i64::MIN)
    }

    #[test]
    fn decimal_and_binary_suffixes() {
        assert_eq!(milli("500m"), 500);
        assert_eq!(milli("1"), 1000);
        assert_eq!(milli("+1.5"), 1500);
        assert_eq!(milli("2k"), 2_000_000);
        assert_eq!(milli("1Ki"), 1_024_000);
        assert_eq!(milli("1Mi"), 1_048_576_000);
        assert_eq!(milli("1e3"), 1_000_000);
        assert_eq!(milli("1E-3"), 1);
        assert_eq!(milli(".5"), 500);
        assert_eq!(milli("0"), 0);
        assert_eq!(milli("-250m"), -250);
    }

    #[test]
    fn milli_value_rounds_up_like_kubernetes() {
        assert_eq!(milli("100u"), 1);
        assert_eq!(milli("1n"), 1);
        assert_eq!(milli("1.0001"), 1001);
        assert_eq!(milli("-1.0001"), -1000);
        assert_eq!(milli("1e-900"), 1);
    }

    #[test]
    fn approximate_float_keeps_precision_below_milli() {
        let q = Quantity::parse("0.0005").unwrap_or_else(|e| panic!("{e}"));
        assert!((q.as_f64() - 0.0005).abs() < 1e-12);
        assert_eq!(q.milli_value(), 1);
        assert_eq!(q.to_string(), "0.0005");
    }

    #[test]
    fn rejects_malformed_and_oversized_quantities() {
        for bad in [
            "", "m", "1.5x", "1 ", " 1", "1e", "1e+", "--1", "1..5", "1Kb", "1e99999",
        ] {
            assert!(
                matches!(Quantity::parse(bad), Err(QuantityError::Syntax(_))),
                "{bad:?} should be a syntax error"
            );
        }
        assert!(matches!(
            Quantity::parse("99999999999999999999E"),
            Err(QuantityError::TooLarge(_))
        ));
        assert!(matches!(
            Quantity::parse("1e30"),
            Err(QuantityError::TooLarge(_))
        ));
        assert!(matches!(
            Quantity::parse(&"1".repeat(40)),
            Err(QuantityError::TooManyDigits(_))
        ));
    }
}

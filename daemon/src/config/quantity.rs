//! Kubernetes resource quantities, as far as worker resources need them.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// CPU in millicores: `"500m"`, `"1"`, `"1.5"`, or a bare TOML number of cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuQuantity {
    pub millis: u64,
}

/// Memory in bytes: `"512Mi"`, `"1Gi"`, `"100M"`, `"1000"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryQuantity {
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {text:?}: {why}")]
pub struct QuantityError {
    text: String,
    why: &'static str,
}

fn parse_decimal(text: &str) -> Option<f64> {
    let v: f64 = text.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v)
}

impl FromStr for CpuQuantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| QuantityError {
            text: s.to_string(),
            why,
        };
        let t = s.trim();
        let millis = match t.strip_suffix('m') {
            Some(m) => m
                .parse::<u64>()
                .map_err(|_| err("expected whole millicores like \"500m\""))?,
            None => {
                let cores = parse_decimal(t)
                    .ok_or_else(|| err("expected cores like \"1\", \"0.5\" or \"500m\""))?;
                (cores * 1000.0).round() as u64
            }
        };
        if millis == 0 {
            return Err(err("must be more than zero"));
        }
        Ok(Self { millis })
    }
}

impl FromStr for MemoryQuantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        const SUFFIXES: [(&str, u64); 8] = [
            ("Ki", 1 << 10),
            ("Mi", 1 << 20),
            ("Gi", 1 << 30),
            ("Ti", 1 << 40),
            ("k", 1_000),
            ("M", 1_000_000),
            ("G", 1_000_000_000),
            ("T", 1_000_000_000_000),
        ];
        let (number, unit) = SUFFIXES
            .iter()
            .find_map(|(suffix, unit)| t.strip_suffix(suffix).map(|n| (n, *unit)))
            .unwrap_or((t, 1));
        let value = parse_decimal(number).ok_or(QuantityError {
            text: s.to_string(),
            why: "expected bytes like \"512Mi\", \"1Gi\" or \"100M\"",
        })?;
        let bytes = value * unit as f64;
        if bytes < 1.0 || bytes > u64::MAX as f64 {
            return Err(QuantityError {
                text: s.to_string(),
                why: "out of range",
            });
        }
        Ok(Self {
            bytes: bytes as u64,
        })
    }
}

/// Accepts a string quantity or a bare TOML number, as Kubernetes YAML does.
fn deserialize_quantity<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr<Err = QuantityError>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Int(u64),
        Float(f64),
    }
    let text = match Raw::deserialize(d)? {
        Raw::Text(s) => s,
        Raw::Int(i) => i.to_string(),
        Raw::Float(f) => f.to_string(),
    };
    text.parse().map_err(serde::de::Error::custom)
}

impl<'de> Deserialize<'de> for CpuQuantity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_quantity(d)
    }
}

impl<'de> Deserialize<'de> for MemoryQuantity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_quantity(d)
    }
}

impl fmt::Display for CpuQuantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}m", self.millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities() {
        assert_eq!("500m".parse::<CpuQuantity>().unwrap().millis, 500);
        assert_eq!("1".parse::<CpuQuantity>().unwrap().millis, 1000);
        assert_eq!("1.5".parse::<CpuQuantity>().unwrap().millis, 1500);
        assert!("0".parse::<CpuQuantity>().is_err());
        assert!("-1".parse::<CpuQuantity>().is_err());
        assert!("one".parse::<CpuQuantity>().is_err());
        assert!("1.5m".parse::<CpuQuantity>().is_err());
    }

    #[test]
    fn memory_quantities() {
        assert_eq!("1Gi".parse::<MemoryQuantity>().unwrap().bytes, 1 << 30);
        assert_eq!("512Mi".parse::<MemoryQuantity>().unwrap().bytes, 512 << 20);
        assert_eq!("100M".parse::<MemoryQuantity>().unwrap().bytes, 100_000_000);
        assert_eq!("4096".parse::<MemoryQuantity>().unwrap().bytes, 4096);
        assert!("1Xi".parse::<MemoryQuantity>().is_err());
        assert!("".parse::<MemoryQuantity>().is_err());
    }
}

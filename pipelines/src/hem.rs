//! Hard-example mining (HEM): deciding which frames the edge model is unsure of, so that they
//! go to the cloud model.
//!
//! The rules are Sedna's (`lib/sedna/algorithms/hard_example_mining/hard_example_mining.py`,
//! docs/sedna-semantics.md §2), down to the order of the floating-point operations, so a frame
//! is hard here exactly when it is hard in Sedna. Where Sedna raises an exception (a `0`
//! probability, a single class, a string ratio), this module answers "not hard" or rejects the
//! configuration with a [`HemError`] instead: the daemon must not die on a frame or a typo.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Deserializer};

use crate::frame::Detection;

const IBT: &str = "IBT";
const THRESHOLD: &str = "Threshold";
const CROSS_ENTROPY: &str = "CrossEntropy";
const RANDOM: &str = "Random";
const CLOUD_ONLY: &str = "CloudOnly";
const EDGE_ONLY: &str = "EdgeOnly";

/// Sedna's aliases, matched case-sensitively as Sedna's `ClassFactory` does. `BertRouter` is
/// left out: it classifies text, not boxes.
const KNOWN_RULES: [&str; 6] = [IBT, THRESHOLD, CROSS_ENTROPY, RANDOM, CLOUD_ONLY, EDGE_ONLY];

/// Accepted parameters of each rule with Sedna's defaults, in the order Sedna declares them.
const IBT_PARAMETERS: [(&str, f64); 2] = [("threshold_img", 0.5), ("threshold_box", 0.5)];
const THRESHOLD_PARAMETERS: [(&str, f64); 1] = [("threshold", 0.5)];
const CROSS_ENTROPY_PARAMETERS: [(&str, f64); 1] = [("threshold_cross_entropy", 0.5)];
const RANDOM_PARAMETERS: [(&str, f64); 1] = [("random_ratio", 0.3)];

/// A configured HEM rule. Build it with [`HardExampleMining::from_name_and_parameters`], from
/// the CLI form via [`FromStr`] (`"IBT:threshold_img=0.9,threshold_box=0.9"`), or from a config
/// file via [`HemConfig`]; [`fmt::Display`] writes the CLI form back, defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HardExampleMining {
    /// `IBT` ("image-box threshold"): hard when at least `1 - threshold_img` of the boxes score
    /// at most `threshold_box`.
    Ibt {
        threshold_img: f64,
        threshold_box: f64,
    },
    /// `Threshold`: hard when the mean box score is below `threshold`.
    Threshold { threshold: f64 },
    /// `CrossEntropy`: hard when the normalised entropy of the frame's class distribution makes
    /// its confidence fall below `threshold_cross_entropy`; see [`cross_entropy_is_hard`].
    CrossEntropy { threshold_cross_entropy: f64 },
    /// `Random`: hard with probability `random_ratio`, whatever the frame holds.
    Random { random_ratio: f64 },
    /// `CloudOnly`: every frame goes to the cloud.
    CloudOnly,
    /// `EdgeOnly`: no frame goes to the cloud.
    EdgeOnly,
}

/// Why a HEM configuration was rejected. Every message names the offending rule or parameter,
/// so that an operator can fix the config without reading this code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HemError {
    #[error(
        "unknown hard-example-mining rule {name:?}; known rules (case-sensitive): {}",
        KNOWN_RULES.join(", ")
    )]
    UnknownName { name: String },
    #[error(
        "hard-example-mining rule {rule} has no parameter {parameter:?}; accepted: {}",
        list_or_none(accepted)
    )]
    UnknownParameter {
        rule: &'static str,
        parameter: String,
        accepted: Vec<&'static str>,
    },
    #[error("parameter {parameter} of hard-example-mining rule {rule}: {value:?} is not a number")]
    InvalidValue {
        rule: &'static str,
        parameter: &'static str,
        value: String,
    },
    #[error(
        "parameter {parameter} of hard-example-mining rule {rule} is {value:?}, outside [0, 1]"
    )]
    OutOfRange {
        rule: &'static str,
        parameter: &'static str,
        value: String,
    },
    #[error("hard-example-mining parameter {item:?} is not of the form key=value")]
    MalformedParameter { item: String },
    #[error("hard-example-mining parameter {parameter:?} is given twice")]
    DuplicateParameter { parameter: String },
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

impl HardExampleMining {
    /// Builds a rule from Sedna's user-facing form: the `HEM_NAME` alias and the CR's string
    /// parameters. Absent parameters take Sedna's defaults.
    ///
    /// Stricter than Sedna on purpose: Sedna ignores unknown parameters and accepts any float,
    /// so a misspelt `treshold` or a `threshold_img` of `90` (meant as percent) silently gives a
    /// different rule. A gateway operator would rather see the mistake at startup, so unknown
    /// parameters and thresholds or ratios outside [0, 1] (NaN included) are errors. Every
    /// value accepted here means what it means in Sedna; `random_ratio` is parsed too, where
    /// Sedna keeps the string and fails on its first comparison.
    pub fn from_name_and_parameters(
        name: &str,
        parameters: &BTreeMap<String, String>,
    ) -> Result<Self, HemError> {
        match name {
            IBT => {
                let [threshold_img, threshold_box] = values(IBT, parameters, &IBT_PARAMETERS)?;
                Ok(Self::Ibt {
                    threshold_img,
                    threshold_box,
                })
            }
            THRESHOLD => {
                let [threshold] = values(THRESHOLD, parameters, &THRESHOLD_PARAMETERS)?;
                Ok(Self::Threshold { threshold })
            }
            CROSS_ENTROPY => {
                let [threshold_cross_entropy] =
                    values(CROSS_ENTROPY, parameters, &CROSS_ENTROPY_PARAMETERS)?;
                Ok(Self::CrossEntropy {
                    threshold_cross_entropy,
                })
            }
            RANDOM => {
                let [random_ratio] = values(RANDOM, parameters, &RANDOM_PARAMETERS)?;
                Ok(Self::Random { random_ratio })
            }
            CLOUD_ONLY => values(CLOUD_ONLY, parameters, &[]).map(|[]| Self::CloudOnly),
            EDGE_ONLY => values(EDGE_ONLY, parameters, &[]).map(|[]| Self::EdgeOnly),
            _ => Err(HemError::UnknownName {
                name: name.to_owned(),
            }),
        }
    }

    /// Whether this frame should go to the cloud (Sedna's `filter(infer_result)`).
    ///
    /// `num_classes` is the class count of the edge model and is only read by `CrossEntropy`.
    /// It is an argument rather than part of the rule because the rule comes from the user's
    /// config, which knows nothing of the model, while the class count comes from whichever
    /// model is loaded. `rng` is only drawn from by `Random`, so tests and replays can seed it.
    ///
    /// Scores are widened from `f32` to `f64` (exactly) and compared in `f64`, as Sedna
    /// compares them in Python floats.
    pub fn is_hard(
        &self,
        detections: &[Detection],
        num_classes: usize,
        rng: &mut impl Rng,
    ) -> bool {
        match *self {
            Self::Ibt {
                threshold_img,
                threshold_box,
            } => ibt_is_hard(detections, threshold_img, threshold_box),
            Self::Threshold { threshold } => threshold_is_hard(detections, threshold),
            Self::CrossEntropy {
                threshold_cross_entropy,
            } => class_mass_is_hard(detections, num_classes, threshold_cross_entropy),
            // Python's `random.uniform(0, 1) < random_ratio`.
            Self::Random { random_ratio } => rng.r#gen::<f64>() < random_ratio,
            Self::CloudOnly => true,
            Self::EdgeOnly => false,
        }
    }
}

/// Width of the score band around the alert threshold in which a box's decision is in doubt.
const MARGIN_WIDTH: f32 = 0.15;

/// How hard a frame is for a budget to rank: the expected number of the edge model's boxes on
/// the wrong side of `min_score` (the alert threshold), each box counting by how close its score
/// is to it (1 at the threshold, about 0.02 at 0.3 away). A frame of confident boxes, or of
/// none, has nothing for the big model to settle. Sedna's rules answer yes or no; a budget that
/// can ask about only some hard frames needs an order, and `helmetd bench joint` measured this
/// one against Sedna's rules at equal uploads (docs/benchmarks.md).
pub fn margin_hardness(detections: &[Detection], min_score: f32) -> f64 {
    detections
        .iter()
        .map(|d| {
            let z = f64::from((d.score - min_score) / MARGIN_WIDTH);
            (-z * z).exp()
        })
        .filter(|h| h.is_finite())
        .sum()
}

/// The CLI form, `NAME` or `NAME:key=value,key=value`. Whitespace around the name, keys and
/// values is ignored; a repeated key is an error rather than Sedna's silent last-one-wins,
/// because on a command line it is always a slip.
impl FromStr for HardExampleMining {
    type Err = HemError;

    fn from_str(s: &str) -> Result<Self, HemError> {
        let (name, list) = s.split_once(':').unwrap_or((s, ""));
        let mut parameters = BTreeMap::new();
        if !list.trim().is_empty() {
            for item in list.split(',') {
                let Some((key, value)) = item.split_once('=') else {
                    return Err(HemError::MalformedParameter {
                        item: item.to_owned(),
                    });
                };
                let key = key.trim();
                if parameters
                    .insert(key.to_owned(), value.to_owned())
                    .is_some()
                {
                    return Err(HemError::DuplicateParameter {
                        parameter: key.to_owned(),
                    });
                }
            }
        }
        Self::from_name_and_parameters(name.trim(), &parameters)
    }
}

/// Writes the CLI form with every parameter spelled out, so the effective rule (defaults
/// included) can be logged and parsed back to the same value.
impl fmt::Display for HardExampleMining {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ibt {
                threshold_img,
                threshold_box,
            } => write!(
                f,
                "{IBT}:threshold_img={threshold_img},threshold_box={threshold_box}"
            ),
            Self::Threshold { threshold } => write!(f, "{THRESHOLD}:threshold={threshold}"),
            Self::CrossEntropy {
                threshold_cross_entropy,
            } => write!(
                f,
                "{CROSS_ENTROPY}:threshold_cross_entropy={threshold_cross_entropy}"
            ),
            Self::Random { random_ratio } => write!(f, "{RANDOM}:random_ratio={random_ratio}"),
            Self::CloudOnly => f.write_str(CLOUD_ONLY),
            Self::EdgeOnly => f.write_str(EDGE_ONLY),
        }
    }
}

/// The config-file form, mirroring the CR's `hardExampleMining: {name, parameters}`:
/// `{ name = "IBT", parameters = { threshold_img = "0.9", threshold_box = 0.9 } }`.
///
/// Parameter values may be strings, as in the CR, or numbers, as people naturally write them in
/// TOML; numbers are kept as their decimal text so both go through the one parser.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HemConfig {
    pub name: String,
    #[serde(default, deserialize_with = "string_or_number_values")]
    pub parameters: BTreeMap<String, String>,
}

impl HemConfig {
    pub fn build(&self) -> Result<HardExampleMining, HemError> {
        HardExampleMining::from_name_and_parameters(&self.name, &self.parameters)
    }
}

fn string_or_number_values<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let values = BTreeMap::<String, StringOrNumber>::deserialize(deserializer)?;
    Ok(values.into_iter().map(|(k, v)| (k, v.0)).collect())
}

struct StringOrNumber(String);

impl<'de> Deserialize<'de> for StringOrNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StringOrNumberVisitor)
    }
}

struct StringOrNumberVisitor;

impl serde::de::Visitor<'_> for StringOrNumberVisitor {
    type Value = StringOrNumber;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number or a string holding a number")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StringOrNumber, E> {
        Ok(StringOrNumber(v.to_owned()))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<StringOrNumber, E> {
        Ok(StringOrNumber(v.to_string()))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<StringOrNumber, E> {
        Ok(StringOrNumber(v.to_string()))
    }

    // `Display` for f64 prints the shortest text that parses back to the same value.
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<StringOrNumber, E> {
        Ok(StringOrNumber(v.to_string()))
    }
}

/// Checks `given` against a rule's accepted parameters and returns their values in `accepted`'s
/// order. The array length ties each rule's destructuring to its parameter table at compile time.
fn values<const N: usize>(
    rule: &'static str,
    given: &BTreeMap<String, String>,
    accepted: &[(&'static str, f64); N],
) -> Result<[f64; N], HemError> {
    if let Some(unknown) = given
        .keys()
        .find(|key| !accepted.iter().any(|(name, _)| name == key))
    {
        return Err(HemError::UnknownParameter {
            rule,
            parameter: unknown.clone(),
            accepted: accepted.iter().map(|&(name, _)| name).collect(),
        });
    }
    let mut values = [0.0; N];
    for (value, &(parameter, default)) in values.iter_mut().zip(accepted) {
        *value = match given.get(parameter) {
            None => default,
            Some(raw) => {
                let parsed = python_float(raw).ok_or_else(|| HemError::InvalidValue {
                    rule,
                    parameter,
                    value: raw.clone(),
                })?;
                if !is_probability(parsed) {
                    return Err(HemError::OutOfRange {
                        rule,
                        parameter,
                        value: raw.clone(),
                    });
                }
                parsed
            }
        };
    }
    Ok(values)
}

/// Python's `float(str)`, which Sedna applies to every HEM parameter: surrounding whitespace is
/// ignored and single underscores may group digits (`"0.9_5"`). Rust's parser already agrees with
/// Python on the rest (`".5"`, `"5."`, `"1e-1"`, `"+0.5"`, case-insensitive `inf`/`nan`).
fn python_float(raw: &str) -> Option<f64> {
    let text = raw.trim();
    let bytes = text.as_bytes();
    let digit_at = |i: Option<usize>| i.and_then(|i| bytes.get(i)).is_some_and(u8::is_ascii_digit);
    let misplaced_underscore = bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'_' && !(digit_at(i.checked_sub(1)) && digit_at(i.checked_add(1))));
    if misplaced_underscore {
        return None;
    }
    text.replace('_', "").parse().ok()
}

/// Sedna's `BaseFilter.data_check`; false for NaN, as `0 <= nan <= 1` is in Python.
fn is_probability(x: f64) -> bool {
    (0.0..=1.0).contains(&x)
}

fn score(detection: &Detection) -> f64 {
    f64::from(detection.score)
}

fn ibt_is_hard(detections: &[Detection], threshold_img: f64, threshold_box: f64) -> bool {
    if detections.is_empty() || !detections.iter().all(|d| is_probability(score(d))) {
        return false;
    }
    let low = detections
        .iter()
        .filter(|d| score(d) <= threshold_box)
        .count();
    // Box counts are far below 2^53, so the conversions are exact and the division is Python's
    // correctly rounded `int / int`; `1.0 - threshold_img` keeps Sedna's rounding
    // (1 - 0.9 = 0.09999999999999998, so 1 low box in 10 is hard).
    low as f64 / detections.len() as f64 >= 1.0 - threshold_img
}

/// Unlike IBT, Sedna does not range-check scores here; neither do we.
fn threshold_is_hard(detections: &[Detection], threshold: f64) -> bool {
    if detections.is_empty() {
        return false;
    }
    // Left-to-right sum, as Sedna's loop adds.
    let total: f64 = detections.iter().map(score).sum();
    total / (detections.len() as f64) < threshold
}

/// Sedna's `CrossEntropy` on a vector of class probabilities: with `K = probs.len()`,
/// `confidence = 1 + Σ p·ln p / ln K` (one minus the normalised entropy), hard iff
/// `confidence < threshold`.
///
/// Where Sedna says "not hard": no probabilities, or any outside [0, 1] (NaN included). Where
/// Sedna crashes, we decide: `p = 0` contributes `0·ln 0 = 0`, its limit (Sedna: math domain
/// error), and `K = 1` is never hard, a single class carrying no uncertainty (Sedna: division by
/// zero).
pub fn cross_entropy_is_hard(probs: &[f64], threshold: f64) -> bool {
    if probs.is_empty() || !probs.iter().all(|&p| is_probability(p)) {
        return false;
    }
    confidence_below(probs.iter().copied(), probs.len(), threshold)
}

fn confidence_below(probs: impl Iterator<Item = f64>, classes: usize, threshold: f64) -> bool {
    if classes < 2 {
        return false;
    }
    let log_sum = probs
        .filter(|&p| p > 0.0)
        .fold(0.0, |sum, p| sum + p * p.ln());
    1.0 + log_sum / (classes as f64).ln() < threshold
}

/// `CrossEntropy` for a detection frame. Sedna's filter wants class probabilities, which the
/// helmet model's boxes are not (Sedna fails with a TypeError on them), so the frame's class
/// distribution is taken to be each class's share of the total box score:
/// `p_c = Σ score over boxes of class c / Σ score over all boxes`, with `K = num_classes`.
///
/// What this measures is class ambiguity across the frame, not box confidence: a frame whose
/// boxes are all one class has confidence 1 and is never hard, however low its scores; a frame
/// that splits its score mass evenly between "with helmet" and "without helmet" is as hard as
/// it gets.
///
/// Not hard, with no distribution to judge: no boxes, a zero total score, a score outside
/// [0, 1] (as Sedna's data check), or a class index the model does not have.
fn class_mass_is_hard(detections: &[Detection], num_classes: usize, threshold: f64) -> bool {
    let valid = |d: &Detection| is_probability(score(d)) && usize::from(d.class) < num_classes;
    if detections.is_empty() || !detections.iter().all(valid) {
        return false;
    }
    let total: f64 = detections.iter().map(score).sum();
    if total <= 0.0 {
        return false;
    }
    // One probability per class present, found at its first box; absent classes have p = 0 and
    // add nothing. Quadratic in the box count (at most 300 per frame), but allocation-free on the
    // hot path.
    let probs = detections
        .iter()
        .enumerate()
        .filter(|&(i, d)| !detections[..i].iter().any(|e| e.class == d.class))
        .map(|(i, d)| {
            let mass: f64 = detections[i..]
                .iter()
                .filter(|e| e.class == d.class)
                .map(score)
                .sum();
            mass / total
        });
    confidence_below(probs, num_classes, threshold)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// The helmet model's classes: with helmet, without helmet (models/PROVENANCE.md).
    const CLASSES: usize = 2;

    fn detection(class: u16, score: f32) -> Detection {
        Detection {
            x1: 0.0,
            y1: 0.0,
            x2: 10.0,
            y2: 10.0,
            score,
            class,
        }
    }

    fn frame(scores: &[f32]) -> Vec<Detection> {
        scores.iter().map(|&s| detection(0, s)).collect()
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(0x5ED4A)
    }

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn margin_hardness_counts_boxes_near_the_alert_threshold() {
        assert_eq!(margin_hardness(&[], 0.5), 0.0);
        let sure = margin_hardness(&frame(&[0.95, 0.05]), 0.5);
        let unsure = margin_hardness(&frame(&[0.5]), 0.5);
        assert!(sure < 0.01, "{sure}");
        assert!((unsure - 1.0).abs() < 1e-9, "{unsure}");
        let two = margin_hardness(&frame(&[0.5, 0.55]), 0.5);
        assert!(two > unsure, "two doubtful boxes are harder than one");
        assert_eq!(margin_hardness(&frame(&[f32::NAN]), 0.5), 0.0);
    }

    const ONE_LOW_OF_TEN: [f32; 10] = [0.5, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95];

    /// (what, rule in CLI form, box scores, hard?)
    #[rustfmt::skip]
    const SCORE_CASES: &[(&str, &str, &[f32], bool)] = &[
        // Verified by running Sedna (docs/sedna-semantics.md §2).
        ("IBT 0.9/0.9, 1 of 10 at 0.5",  "IBT:threshold_img=0.9,threshold_box=0.9", &ONE_LOW_OF_TEN,   true),
        ("IBT 0.9/0.9, all at 0.95",     "IBT:threshold_img=0.9,threshold_box=0.9", &[0.95; 10],        false),
        ("IBT 0.9/0.9, empty",           "IBT:threshold_img=0.9,threshold_box=0.9", &[],                false),
        ("IBT 0.9/0.9, a score of 1.5",  "IBT:threshold_img=0.9,threshold_box=0.9", &[1.5, 0.5, 0.5],   false),
        ("IBT defaults, [0.5, 0.9]",     "IBT",                                     &[0.5, 0.9],        true),
        ("IBT defaults, [0.51, 0.9]",    "IBT",                                     &[0.51, 0.9],       false),
        ("Threshold, mean 0.45",         "Threshold",                               &[0.4, 0.5],        true),
        ("Threshold, mean 0.5",          "Threshold",                               &[0.25, 0.75],      false),
        // IBT edges.
        ("IBT defaults, empty",               "IBT",                    &[],                        false),
        ("IBT defaults, a score of 1.5",      "IBT",                    &[1.5],                     false),
        ("IBT defaults, a negative score",    "IBT",                    &[-0.1, 0.2],               false),
        ("IBT defaults, a NaN score",         "IBT",                    &[f32::NAN, 0.2],           false),
        ("IBT, low share = 1 - img",          "IBT:threshold_img=0.75", &[0.5, 0.9, 0.9, 0.9],      true),
        ("IBT, low share < 1 - img",          "IBT:threshold_img=0.75", &[0.5, 0.9, 0.9, 0.9, 0.9], false),
        ("IBT, score = threshold_box is low", "IBT:threshold_box=0.25", &[0.25, 0.9],               true),
        ("IBT, threshold_img 1: all hard",    "IBT:threshold_img=1",    &[0.99],                    true),
        // Threshold edges.
        ("Threshold, one box at 0.45",   "Threshold",               &[0.45],          true),
        ("Threshold, one box at 0.5",    "Threshold",               &[0.5],           false),
        ("Threshold, empty",             "Threshold",               &[],              false),
        ("Threshold, scores unchecked",  "Threshold:threshold=0.9", &[1.5, 0.2],      true),
        ("Threshold, a NaN score",       "Threshold",               &[f32::NAN, 0.1], false),
        // Rules that ignore the boxes.
        ("CloudOnly, empty",     "CloudOnly", &[],     true),
        ("CloudOnly, confident", "CloudOnly", &[0.99], true),
        ("EdgeOnly, empty",      "EdgeOnly",  &[],     false),
        ("EdgeOnly, unsure",     "EdgeOnly",  &[0.01], false),
    ];

    #[test]
    fn score_rules_match_sedna() {
        for &(what, rule, scores, hard) in SCORE_CASES {
            let hem: HardExampleMining = rule.parse().unwrap();
            assert_eq!(
                hem.is_hard(&frame(scores), CLASSES, &mut rng()),
                hard,
                "{what}"
            );
        }
    }

    /// The helmet example's IBT: 1 - 0.9 rounds below 0.1, so 1 low box in 10 is hard.
    #[test]
    fn ibt_bound_keeps_sedna_rounding() {
        let hem: HardExampleMining = "IBT:threshold_img=0.9,threshold_box=0.9".parse().unwrap();
        let HardExampleMining::Ibt { threshold_img, .. } = hem else {
            panic!("parsed {hem:?}");
        };
        assert_eq!(1.0 - threshold_img, 0.09999999999999998);
        assert!(hem.is_hard(&frame(&ONE_LOW_OF_TEN), CLASSES, &mut rng()));
    }

    /// (what, probabilities, threshold, hard?)
    #[rustfmt::skip]
    const PROBABILITY_CASES: &[(&str, &[f64], f64, bool)] = &[
        // Verified by running Sedna.
        ("[0.5, 0.5]", &[0.5, 0.5], 0.5, true),
        ("[0.9, 0.1]", &[0.9, 0.1], 0.5, false),
        // Where Sedna crashes.
        ("[1.0, 0.0], Sedna: math domain error", &[1.0, 0.0], 0.5, false),
        ("[0.0, 0.0], Sedna: math domain error", &[0.0, 0.0], 0.5, false),
        ("one class, Sedna: division by zero",   &[0.3],      0.5, false),
        ("one certain class",                    &[1.0],      1.0, false),
        // Sedna's "invalid input".
        ("empty",                   &[],              0.5, false),
        ("a probability above 1",   &[1.5, 0.5],      0.5, false),
        ("a negative probability",  &[-0.5, 0.5],     0.5, false),
        ("a NaN probability",       &[f64::NAN, 0.5], 0.5, false),
        // Around the threshold: in Python, [0.9, 0.1] has confidence 0.5310044064107189.
        ("[0.9, 0.1], threshold one ulp above", &[0.9, 0.1], 0.531004406410719,  true),
        ("[0.9, 0.1], threshold at confidence", &[0.9, 0.1], 0.5310044064107189, false),
        ("three even classes", &[1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0], 0.5, true),
    ];

    #[test]
    fn cross_entropy_matches_sedna() {
        for &(what, probs, threshold, hard) in PROBABILITY_CASES {
            assert_eq!(cross_entropy_is_hard(probs, threshold), hard, "{what}");
        }
    }

    /// (what, boxes as (class, score), model classes, hard?) under the default threshold 0.5.
    type ClassMassCase = (&'static str, &'static [(u16, f32)], usize, bool);
    #[rustfmt::skip]
    const CLASS_MASS_CASES: &[ClassMassCase] = &[
        ("mass split evenly",                 &[(0, 0.5), (1, 0.5)],                        2, true),
        ("mass 0.9 / 0.1",                    &[(0, 0.9), (1, 0.1)],                        2, false),
        ("mass 0.9 / 0.1 over several boxes", &[(0, 0.5), (1, 0.05), (0, 0.4), (1, 0.05)],  2, false),
        ("mass even over several boxes",      &[(1, 0.25), (0, 0.5), (1, 0.25)],            2, true),
        ("one class only, low scores",        &[(0, 0.1), (0, 0.2)],                        2, false),
        ("no detections",                     &[],                                          2, false),
        ("one-class model",                   &[(0, 0.5)],                                  1, false),
        ("zero-class model",                  &[(0, 0.5)],                                  0, false),
        ("class the model does not have",     &[(0, 0.5), (2, 0.5)],                        2, false),
        ("all scores zero",                   &[(0, 0.0), (1, 0.0)],                        2, false),
        ("a score above 1",                   &[(0, 1.5), (1, 0.5)],                        2, false),
        ("a NaN score",                       &[(0, f32::NAN), (1, 0.5)],                   2, false),
        // K is the model's class count, not the classes present: confidence 1 - H/ln K is
        // 0.28 with two classes but 0.54 with three for the same 0.8 / 0.2 split.
        ("mass 0.8 / 0.2, two classes",       &[(0, 0.8), (1, 0.2)],                        2, true),
        ("mass 0.8 / 0.2, three classes",     &[(0, 0.8), (2, 0.2)],                        3, false),
        ("even over three classes",           &[(0, 0.5), (1, 0.5), (2, 0.5)],              3, true),
    ];

    #[test]
    fn cross_entropy_on_detections_uses_class_score_mass() {
        let hem =
            HardExampleMining::from_name_and_parameters(CROSS_ENTROPY, &BTreeMap::new()).unwrap();
        for &(what, boxes, classes, hard) in CLASS_MASS_CASES {
            let boxes: Vec<_> = boxes.iter().map(|&(c, s)| detection(c, s)).collect();
            assert_eq!(hem.is_hard(&boxes, classes, &mut rng()), hard, "{what}");
        }
    }

    fn hard_draws(rule: &str, draws: usize) -> usize {
        let hem: HardExampleMining = rule.parse().unwrap();
        let mut rng = rng();
        (0..draws)
            .filter(|_| hem.is_hard(&[], CLASSES, &mut rng))
            .count()
    }

    #[test]
    fn random_ratio_bounds_are_never_and_always() {
        assert_eq!(hard_draws("Random:random_ratio=0.0", 1000), 0);
        assert_eq!(hard_draws("Random:random_ratio=1", 1000), 1000);
    }

    #[test]
    fn random_ratio_string_is_parsed_and_respected() {
        // Sedna compares the CR's string "0.3" with a float and raises TypeError.
        let hem = HardExampleMining::from_name_and_parameters(
            RANDOM,
            &params(&[("random_ratio", "0.3")]),
        )
        .unwrap();
        assert_eq!(hem, HardExampleMining::Random { random_ratio: 0.3 });
        // Binomial(10000, 0.3) has σ ≈ 46; ±200 is over 4σ.
        let hard = hard_draws("Random:random_ratio=0.3", 10_000);
        assert!((2800..=3200).contains(&hard), "{hard} of 10000");
        let hard = hard_draws("Random", 10_000);
        assert!((2800..=3200).contains(&hard), "default: {hard} of 10000");
    }

    #[test]
    fn defaults_are_sednas() {
        let none = BTreeMap::new();
        let build = |name| HardExampleMining::from_name_and_parameters(name, &none).unwrap();
        assert_eq!(
            build(IBT),
            HardExampleMining::Ibt {
                threshold_img: 0.5,
                threshold_box: 0.5
            }
        );
        assert_eq!(
            build(THRESHOLD),
            HardExampleMining::Threshold { threshold: 0.5 }
        );
        assert_eq!(
            build(CROSS_ENTROPY),
            HardExampleMining::CrossEntropy {
                threshold_cross_entropy: 0.5
            }
        );
        assert_eq!(
            build(RANDOM),
            HardExampleMining::Random { random_ratio: 0.3 }
        );
        assert_eq!(build(CLOUD_ONLY), HardExampleMining::CloudOnly);
        assert_eq!(build(EDGE_ONLY), HardExampleMining::EdgeOnly);
    }

    /// Values Python's `float()` accepts, and what they are.
    const ACCEPTED_VALUES: &[(&str, f64)] = &[
        ("0.9", 0.9),
        (" 0.9\t", 0.9),
        (".9", 0.9),
        ("9e-1", 0.9),
        ("+0.9", 0.9),
        ("1", 1.0),
        ("1.", 1.0),
        ("0", 0.0),
        ("-0", 0.0),
        ("0.9_0", 0.9),
    ];

    #[test]
    fn values_parse_like_python_float() {
        for &(raw, expected) in ACCEPTED_VALUES {
            let hem = HardExampleMining::from_name_and_parameters(
                THRESHOLD,
                &params(&[("threshold", raw)]),
            );
            assert_eq!(
                hem,
                Ok(HardExampleMining::Threshold {
                    threshold: expected
                }),
                "{raw:?}"
            );
        }
    }

    fn unknown_name(e: &HemError) -> bool {
        matches!(e, HemError::UnknownName { .. })
    }
    fn unknown_parameter(e: &HemError) -> bool {
        matches!(e, HemError::UnknownParameter { .. })
    }
    fn invalid_value(e: &HemError) -> bool {
        matches!(e, HemError::InvalidValue { .. })
    }
    fn out_of_range(e: &HemError) -> bool {
        matches!(e, HemError::OutOfRange { .. })
    }

    /// (rule, parameters, expected variant, text the message must contain)
    type ErrorCase = (
        &'static str,
        &'static [(&'static str, &'static str)],
        fn(&HemError) -> bool,
        &'static [&'static str],
    );
    #[rustfmt::skip]
    const CONFIG_ERRORS: &[ErrorCase] = &[
        ("ibt",          &[],                                   unknown_name,      &["\"ibt\"", "IBT, Threshold, CrossEntropy, Random, CloudOnly, EdgeOnly"]),
        ("BertRouter",   &[],                                   unknown_name,      &["\"BertRouter\""]),
        ("",             &[],                                   unknown_name,      &["\"\""]),
        ("IBT",          &[("threshold", "0.9")],               unknown_parameter, &["\"threshold\"", "threshold_img, threshold_box"]),
        ("Threshold",    &[("treshold", "0.9")],                unknown_parameter, &["\"treshold\"", "accepted: threshold"]),
        ("CloudOnly",    &[("threshold", "0.9")],               unknown_parameter, &["\"threshold\"", "accepted: none"]),
        ("IBT",          &[("threshold_box", "high")],          invalid_value,     &["threshold_box", "\"high\""]),
        ("Random",       &[("random_ratio", "")],               invalid_value,     &["random_ratio", "\"\""]),
        ("Threshold",    &[("threshold", "0,9")],               invalid_value,     &["threshold", "\"0,9\""]),
        ("Threshold",    &[("threshold", "0.9%")],              invalid_value,     &["threshold"]),
        ("Threshold",    &[("threshold", "1__0")],              invalid_value,     &["threshold"]),
        ("Threshold",    &[("threshold", "_1")],                invalid_value,     &["threshold"]),
        ("Threshold",    &[("threshold", "1_")],                invalid_value,     &["threshold"]),
        ("IBT",          &[("threshold_img", "90")],            out_of_range,      &["threshold_img", "\"90\"", "[0, 1]"]),
        ("CrossEntropy", &[("threshold_cross_entropy", "-0.1")], out_of_range,     &["threshold_cross_entropy"]),
        ("Random",       &[("random_ratio", "1.0000001")],      out_of_range,      &["random_ratio"]),
        ("Random",       &[("random_ratio", "nan")],            out_of_range,      &["random_ratio", "\"nan\""]),
        ("Threshold",    &[("threshold", "inf")],               out_of_range,      &["threshold"]),
        ("Threshold",    &[("threshold", "1_0")],               out_of_range,      &["threshold"]),
    ];

    #[test]
    fn config_errors_name_the_culprit() {
        for &(rule, pairs, is_expected_variant, fragments) in CONFIG_ERRORS {
            let err =
                HardExampleMining::from_name_and_parameters(rule, &params(pairs)).unwrap_err();
            assert!(is_expected_variant(&err), "{rule} {pairs:?}: got {err:?}");
            let message = err.to_string();
            for fragment in fragments {
                assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
            }
        }
    }

    #[test]
    fn cli_form_parses() {
        let cases: &[(&str, HardExampleMining)] = &[
            (
                "IBT:threshold_img=0.9,threshold_box=0.9",
                HardExampleMining::Ibt {
                    threshold_img: 0.9,
                    threshold_box: 0.9,
                },
            ),
            (
                " IBT : threshold_box = 0.8 ",
                HardExampleMining::Ibt {
                    threshold_img: 0.5,
                    threshold_box: 0.8,
                },
            ),
            ("CloudOnly", HardExampleMining::CloudOnly),
            ("EdgeOnly:", HardExampleMining::EdgeOnly),
            (
                "Threshold:threshold=0.25",
                HardExampleMining::Threshold { threshold: 0.25 },
            ),
            (
                "CrossEntropy:threshold_cross_entropy=0.7",
                HardExampleMining::CrossEntropy {
                    threshold_cross_entropy: 0.7,
                },
            ),
            (
                "Random:random_ratio=0.3",
                HardExampleMining::Random { random_ratio: 0.3 },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                text.parse::<HardExampleMining>().as_ref(),
                Ok(expected),
                "{text:?}"
            );
        }
    }

    #[test]
    fn cli_form_errors() {
        let cases: &[(&str, HemError)] = &[
            (
                "IBT:threshold_img",
                HemError::MalformedParameter {
                    item: "threshold_img".to_owned(),
                },
            ),
            (
                "IBT:threshold_img=0.9,",
                HemError::MalformedParameter {
                    item: String::new(),
                },
            ),
            (
                "IBT:threshold_img=0.9,threshold_img=0.8",
                HemError::DuplicateParameter {
                    parameter: "threshold_img".to_owned(),
                },
            ),
            (
                "cloudonly",
                HemError::UnknownName {
                    name: "cloudonly".to_owned(),
                },
            ),
            (
                "Random:random_ratio=0.3:0.4",
                HemError::InvalidValue {
                    rule: RANDOM,
                    parameter: "random_ratio",
                    value: "0.3:0.4".to_owned(),
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                text.parse::<HardExampleMining>().as_ref(),
                Err(expected),
                "{text:?}"
            );
        }
    }

    #[test]
    fn display_round_trips_through_the_cli_form() {
        let rules = [
            HardExampleMining::Ibt {
                threshold_img: 0.9,
                threshold_box: 0.09999999999999998,
            },
            HardExampleMining::Threshold { threshold: 0.5 },
            HardExampleMining::CrossEntropy {
                threshold_cross_entropy: 1.0,
            },
            HardExampleMining::Random { random_ratio: 0.0 },
            HardExampleMining::CloudOnly,
            HardExampleMining::EdgeOnly,
        ];
        for rule in rules {
            assert_eq!(rule.to_string().parse(), Ok(rule), "{rule}");
        }
        assert_eq!(
            HardExampleMining::from_str("IBT").unwrap().to_string(),
            "IBT:threshold_img=0.5,threshold_box=0.5"
        );
    }

    // serde_json stands in for TOML: the same visitor calls (str, i64, u64, f64) arrive.
    #[test]
    fn config_accepts_string_and_number_values() {
        let config: HemConfig = serde_json::from_str(
            r#"{"name": "IBT", "parameters": {"threshold_img": "0.9", "threshold_box": 0.9}}"#,
        )
        .unwrap();
        assert_eq!(
            config.parameters,
            params(&[("threshold_img", "0.9"), ("threshold_box", "0.9")])
        );
        assert_eq!(
            config.build(),
            Ok(HardExampleMining::Ibt {
                threshold_img: 0.9,
                threshold_box: 0.9
            })
        );

        let config: HemConfig =
            serde_json::from_str(r#"{"name": "Random", "parameters": {"random_ratio": 1}}"#)
                .unwrap();
        assert_eq!(
            config.build(),
            Ok(HardExampleMining::Random { random_ratio: 1.0 })
        );

        let config: HemConfig =
            serde_json::from_str(r#"{"name": "Threshold", "parameters": {"threshold": -1}}"#)
                .unwrap();
        assert_eq!(config.parameters, params(&[("threshold", "-1")]));
        assert!(matches!(config.build(), Err(HemError::OutOfRange { .. })));

        let config: HemConfig = serde_json::from_str(r#"{"name": "CloudOnly"}"#).unwrap();
        assert_eq!(config.build(), Ok(HardExampleMining::CloudOnly));
    }

    #[test]
    fn config_rejects_bad_shapes() {
        let bad = [
            r#"{"name": "IBT", "params": {}}"#,
            r#"{"name": "IBT", "parameters": {"threshold_img": true}}"#,
            r#"{"name": "IBT", "parameters": {"threshold_img": [0.9]}}"#,
            r#"{"parameters": {}}"#,
        ];
        for text in bad {
            assert!(serde_json::from_str::<HemConfig>(text).is_err(), "{text}");
        }
        let config: HemConfig = serde_json::from_str(
            r#"{"name": "IBT", "parameters": {"threshold_img": "0.9", "threshold_boxes": 0.9}}"#,
        )
        .unwrap();
        let err = config.build().unwrap_err();
        assert!(err.to_string().contains("threshold_boxes"), "{err}");
    }
}

//! The aggregate state of one (view, bucket, dimension values): count, exact sum, min, max,
//! an HLL sketch per `uniq` and a KLL sketch per `quantiles`, from Apache DataSketches so
//! the sketch bytes are readable by Druid, Pinot and Spark.
//!
//! States merge associatively and commutatively, so minutes roll up to hours and days at
//! query time, and the speed and batch layers can build them in any order. Sums are kept in
//! integer millionths so that their merge is exact whatever the order; sketch bytes may differ
//! with merge order (an HLL list's order, KLL's randomized compaction), their estimates do not
//! beyond the sketches' error bounds.

use datasketches::common::SearchCriteria;
use datasketches::hll::{HllSketch, HllType, HllUnion};
use datasketches::kll::{KllFloat, KllSketch};
use thiserror::Error;

use crate::event::FieldValue;
use crate::measure::Measure;

/// log2 of the HLL register count: 4096 registers, about 1.6 % standard error.
pub const HLL_LG_K: u8 = 12;
/// KLL accuracy parameter: about 1.3 % normalized rank error.
pub const KLL_K: u16 = 200;
/// Sums are kept as integers in these units of the value.
const SUM_SCALE: f64 = 1e6;
const ENCODING_VERSION: u8 = 1;

/// The state of one (view, bucket, dimension values).
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateState {
    /// Events counted.
    pub count: u64,
    /// One entry per non-`count` measure of the view, in the view's order.
    pub measures: Vec<MeasureState>,
}

/// The state of one measure.
#[derive(Debug, Clone, PartialEq)]
pub enum MeasureState {
    /// `sum(tag)`: the sum in millionths, and how many events carried the tag.
    Sum {
        /// Sum of the values × 10⁶, rounded per value.
        micros: i128,
        /// Events that carried the tag (the divisor of an average).
        n: u64,
    },
    /// `min(tag)`.
    Min(Option<f64>),
    /// `max(tag)`.
    Max(Option<f64>),
    /// `uniq(field)`.
    Uniq(HllSketch),
    /// `quantiles(tag)`.
    Quantiles(KllSketch<KllFloat<f64>>),
}

/// Why two states could not be merged.
#[derive(Debug, Error, PartialEq)]
#[non_exhaustive]
pub enum MergeError {
    /// The states belong to views with different measures.
    #[error(
        "cannot merge states of different shapes ({left} vs {right}); were they built from different view versions?"
    )]
    ShapeMismatch {
        /// Description of the left state's measures.
        left: String,
        /// Description of the right state's measures.
        right: String,
    },
}

/// Why bytes could not be decoded as a state.
#[derive(Debug, Error, PartialEq)]
#[non_exhaustive]
pub enum StateDecodeError {
    /// The bytes end early.
    #[error("aggregate state is truncated at byte {at}")]
    Truncated {
        /// Where the input ran out.
        at: usize,
    },
    /// The encoding version is unknown.
    #[error("aggregate state has encoding version {0}; this build reads version 1")]
    Version(u8),
    /// A measure tag is unknown.
    #[error("aggregate state has unknown measure tag {0}")]
    MeasureTag(u8),
    /// A sketch inside is corrupt.
    #[error("aggregate state holds a corrupt sketch: {0}")]
    Sketch(String),
    /// Bytes remain after the state.
    #[error("aggregate state has {0} trailing bytes")]
    Trailing(usize),
}

/// Serialized as its stable binary encoding, so states can cross threads and processes.
impl serde::Serialize for AggregateState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.encode())
    }
}

impl<'de> serde::Deserialize<'de> for AggregateState {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = <Vec<u8>>::deserialize(deserializer)?;
        AggregateState::decode(&bytes).map_err(serde::de::Error::custom)
    }
}

impl AggregateState {
    /// An empty state for these measures.
    pub fn for_measures(measures: &[Measure]) -> Self {
        let measures = measures
            .iter()
            .filter_map(|measure| match measure {
                Measure::Count => None,
                Measure::Sum(_) => Some(MeasureState::Sum { micros: 0, n: 0 }),
                Measure::Min(_) => Some(MeasureState::Min(None)),
                Measure::Max(_) => Some(MeasureState::Max(None)),
                Measure::Uniq(_) => Some(MeasureState::Uniq(new_hll())),
                Measure::Quantiles(_) => Some(MeasureState::Quantiles(new_kll())),
            })
            .collect();
        AggregateState { count: 0, measures }
    }

    /// Merges `other` into `self`.
    pub fn merge(&mut self, other: &AggregateState) -> Result<(), MergeError> {
        let every = 0..other.measures.len();
        merge_picked(&mut self.count, &mut self.measures, other, every)
    }

    /// The stable binary encoding: a version byte, the count, then each measure as a tag
    /// byte and its payload; sketches in their DataSketches serialization.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 16 * self.measures.len());
        out.push(ENCODING_VERSION);
        put_varint(&mut out, self.count);
        put_varint(&mut out, self.measures.len() as u64);
        for measure in &self.measures {
            match measure {
                MeasureState::Sum { micros, n } => {
                    out.push(1);
                    out.extend_from_slice(&micros.to_le_bytes());
                    put_varint(&mut out, *n);
                }
                MeasureState::Min(value) | MeasureState::Max(value) => {
                    out.push(if matches!(measure, MeasureState::Min(_)) {
                        2
                    } else {
                        3
                    });
                    match value {
                        Some(v) => {
                            out.push(1);
                            out.extend_from_slice(&v.to_le_bytes());
                        }
                        None => out.push(0),
                    }
                }
                MeasureState::Uniq(sketch) => put_sketch(&mut out, 4, &sketch.serialize()),
                MeasureState::Quantiles(sketch) => put_sketch(&mut out, 5, &sketch.serialize()),
            }
        }
        out
    }

    /// Decodes [`encode`](Self::encode)'s output.
    pub fn decode(bytes: &[u8]) -> Result<Self, StateDecodeError> {
        let mut input = Reader { bytes, at: 0 };
        let version = input.byte()?;
        if version != ENCODING_VERSION {
            return Err(StateDecodeError::Version(version));
        }
        let count = input.varint()?;
        let measure_count = input.varint()?;
        let mut measures = Vec::with_capacity(measure_count.min(64) as usize);
        for _ in 0..measure_count {
            let measure = match input.byte()? {
                1 => MeasureState::Sum {
                    micros: i128::from_le_bytes(input.array()?),
                    n: input.varint()?,
                },
                tag @ (2 | 3) => {
                    let value = match input.byte()? {
                        0 => None,
                        _ => Some(f64::from_le_bytes(input.array()?)),
                    };
                    if tag == 2 {
                        MeasureState::Min(value)
                    } else {
                        MeasureState::Max(value)
                    }
                }
                4 => MeasureState::Uniq(decode_hll(input.sized()?)?),
                5 => MeasureState::Quantiles(decode_sketch(
                    input.sized()?,
                    KllSketch::deserialize,
                    KllSketch::serialize,
                )?),
                tag => return Err(StateDecodeError::MeasureTag(tag)),
            };
            measures.push(measure);
        }
        if input.at != bytes.len() {
            return Err(StateDecodeError::Trailing(bytes.len() - input.at));
        }
        Ok(AggregateState { count, measures })
    }

    /// The numbers a person reads off the state.
    pub fn summary(&self) -> StateSummary {
        StateSummary {
            count: self.count,
            measures: self.measures.iter().map(MeasureState::summary).collect(),
        }
    }
}

impl MeasureState {
    /// Adds one field value; non-numeric values are ignored by numeric measures.
    pub fn add(&mut self, value: FieldValue<'_>) {
        match self {
            MeasureState::Sum { micros, n } => {
                if let Some(v) = value.as_f64() {
                    // Saturating, never wrapping: ingest bounds each value (see
                    // `MAX_TAG_NUMBER`), so only an absurd count of them could reach it.
                    *micros = micros.saturating_add(to_micros(v));
                    *n += 1;
                }
            }
            MeasureState::Min(min) => {
                if let Some(v) = value.as_f64() {
                    *min = Some(min.map_or(v, |m| m.min(v)));
                }
            }
            MeasureState::Max(max) => {
                if let Some(v) = value.as_f64() {
                    *max = Some(max.map_or(v, |m| m.max(v)));
                }
            }
            MeasureState::Uniq(sketch) => match value {
                FieldValue::Str(text) => sketch.update(text),
                // The text a dimension shows: hashes as a string tag with that text would.
                other => sketch.update(other.as_dimension()),
            },
            MeasureState::Quantiles(sketch) => {
                if let Some(v) = value.as_f64().and_then(|v| KllFloat::<f64>::new(v).ok()) {
                    sketch.update(v);
                }
            }
        }
    }

    fn merge(&mut self, other: &MeasureState) {
        match (self, other) {
            (MeasureState::Sum { micros, n }, MeasureState::Sum { micros: m2, n: n2 }) => {
                *micros = micros.saturating_add(*m2);
                *n = n.saturating_add(*n2);
            }
            (MeasureState::Min(a), MeasureState::Min(b)) => *a = pick_present(*a, *b, f64::min),
            (MeasureState::Max(a), MeasureState::Max(b)) => *a = pick_present(*a, *b, f64::max),
            (MeasureState::Uniq(a), MeasureState::Uniq(b)) => {
                let mut union = new_hll_union();
                union.update(a);
                union.update(b);
                *a = union.to_sketch(HllType::Hll8);
            }
            (MeasureState::Quantiles(a), MeasureState::Quantiles(b)) => {
                a.merge(b)
                    .expect("every KLL sketch here is built with KLL_K");
            }
            _ => unreachable!("AggregateState::merge checks shapes first"),
        }
    }

    /// The value at normalized `rank` (0.5 for the median) of a `quantiles` state; none for
    /// other measures or before any value.
    pub fn quantile(&self, rank: f64) -> Option<f64> {
        match self {
            MeasureState::Quantiles(sketch) => sketch
                .quantile(rank, SearchCriteria::Inclusive)
                .ok()
                .flatten()
                .map(KllFloat::into_inner),
            _ => None,
        }
    }

    fn kind_name(&self) -> &'static str {
        match self {
            MeasureState::Sum { .. } => "sum",
            MeasureState::Min(_) => "min",
            MeasureState::Max(_) => "max",
            MeasureState::Uniq(_) => "uniq",
            MeasureState::Quantiles(_) => "quantiles",
        }
    }

    /// The numbers a person reads off this measure.
    pub fn summary(&self) -> MeasureSummary {
        match self {
            MeasureState::Sum { micros, n } => MeasureSummary::Sum {
                sum: *micros as f64 / SUM_SCALE,
                n: *n,
            },
            MeasureState::Min(v) => MeasureSummary::Min(*v),
            MeasureState::Max(v) => MeasureSummary::Max(*v),
            MeasureState::Uniq(sketch) => MeasureSummary::Uniq(sketch.composite_estimate()),
            MeasureState::Quantiles(sketch) => MeasureSummary::Quantiles {
                n: sketch.n(),
                p50: self.quantile(0.5),
                p90: self.quantile(0.9),
                p99: self.quantile(0.99),
            },
        }
    }
}

/// Many states merged into one, for when more than two meet (a query's row, a roll-up).
/// Each HLL sketch gathers in a union, which takes a further sketch in one pass over its
/// registers, where [`AggregateState::merge`] copies them three times per merge; the unions
/// become sketches once, in [`finish`](Self::finish). The result reads the same as merging
/// pairwise.
pub struct StateMerger {
    count: u64,
    measures: Vec<MergingMeasure>,
}

enum MergingMeasure {
    Uniq(HllUnion),
    Other(MeasureState),
}

impl MergingMeasure {
    fn of(state: &MeasureState) -> MergingMeasure {
        match state {
            MeasureState::Uniq(sketch) => {
                let mut union = new_hll_union();
                union.update(sketch);
                MergingMeasure::Uniq(union)
            }
            other => MergingMeasure::Other(other.clone()),
        }
    }
}

/// A measure some measure state can merge into.
trait MergeTarget {
    /// The measure's kind, for errors.
    fn kind(&self) -> &'static str;
    /// Whether `other` is the same kind of measure.
    fn fits(&self, other: &MeasureState) -> bool;
    /// Merges `other` in; it [`fits`](Self::fits).
    fn merge_from(&mut self, other: &MeasureState);
}

impl MergeTarget for MeasureState {
    fn kind(&self) -> &'static str {
        self.kind_name()
    }

    fn fits(&self, other: &MeasureState) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }

    fn merge_from(&mut self, other: &MeasureState) {
        self.merge(other);
    }
}

impl MergeTarget for MergingMeasure {
    fn kind(&self) -> &'static str {
        match self {
            MergingMeasure::Uniq(_) => "uniq",
            MergingMeasure::Other(state) => state.kind_name(),
        }
    }

    fn fits(&self, other: &MeasureState) -> bool {
        match (self, other) {
            (MergingMeasure::Uniq(_), MeasureState::Uniq(_)) => true,
            (MergingMeasure::Other(mine), theirs) => {
                !matches!(mine, MeasureState::Uniq(_)) && mine.fits(theirs)
            }
            _ => false,
        }
    }

    fn merge_from(&mut self, other: &MeasureState) {
        match (self, other) {
            (MergingMeasure::Uniq(union), MeasureState::Uniq(sketch)) => union.update(sketch),
            (MergingMeasure::Other(mine), theirs) => mine.merge(theirs),
            _ => unreachable!("merge_picked checks shapes first"),
        }
    }
}

/// Merges the count and the measures `picked` of `other` into `count` and `mine` (one per
/// pick, in order), if each fits; changes nothing and names both shapes if not.
fn merge_picked<M: MergeTarget>(
    count: &mut u64,
    mine: &mut [M],
    other: &AggregateState,
    picked: impl ExactSizeIterator<Item = usize> + Clone,
) -> Result<(), MergeError> {
    let fits = picked.len() == mine.len()
        && picked.clone().zip(mine.iter()).all(|(index, mine)| {
            other
                .measures
                .get(index)
                .is_some_and(|theirs| mine.fits(theirs))
        });
    if !fits {
        return Err(MergeError::ShapeMismatch {
            left: shape(mine),
            right: shape(&other.measures),
        });
    }
    *count += other.count;
    for (mine, index) in mine.iter_mut().zip(picked) {
        mine.merge_from(&other.measures[index]);
    }
    Ok(())
}

/// Measures as an error names them, e.g. `[sum, uniq]`.
fn shape(measures: &[impl MergeTarget]) -> String {
    let names: Vec<&str> = measures.iter().map(MergeTarget::kind).collect();
    format!("[{}]", names.join(", "))
}

impl StateMerger {
    /// Nothing merged yet, for these measures.
    pub fn new(measures: &[Measure]) -> Self {
        StateMerger::starting_with(&AggregateState::for_measures(measures))
    }

    /// Starting from `state`.
    pub fn starting_with(state: &AggregateState) -> Self {
        StateMerger {
            count: state.count,
            measures: state.measures.iter().map(MergingMeasure::of).collect(),
        }
    }

    /// Merges `other` in; see [`AggregateState::merge`].
    pub fn merge(&mut self, other: &AggregateState) -> Result<(), MergeError> {
        let every = 0..other.measures.len();
        merge_picked(&mut self.count, &mut self.measures, other, every)
    }

    /// Merges the count and the measures `picked` of `other` in, this merger's measures
    /// being those picked, in that order: how a query folds a view's states into the few
    /// measures it asks for without copying the rest.
    pub fn merge_projected(
        &mut self,
        other: &AggregateState,
        picked: &[usize],
    ) -> Result<(), MergeError> {
        merge_picked(
            &mut self.count,
            &mut self.measures,
            other,
            picked.iter().copied(),
        )
    }

    /// The merged state.
    pub fn finish(self) -> AggregateState {
        let measures = self
            .measures
            .into_iter()
            .map(|measure| match measure {
                MergingMeasure::Uniq(union) => MeasureState::Uniq(union.to_sketch(HllType::Hll8)),
                MergingMeasure::Other(state) => state,
            })
            .collect();
        AggregateState {
            count: self.count,
            measures,
        }
    }
}

/// The readable numbers of a state.
#[derive(Debug, Clone, PartialEq)]
pub struct StateSummary {
    /// Events counted.
    pub count: u64,
    /// One per non-`count` measure.
    pub measures: Vec<MeasureSummary>,
}

/// The readable numbers of one measure.
#[derive(Debug, Clone, PartialEq)]
pub enum MeasureSummary {
    /// The sum and the number of values in it.
    Sum {
        /// The sum.
        sum: f64,
        /// Values summed.
        n: u64,
    },
    /// The smallest value seen.
    Min(Option<f64>),
    /// The largest value seen.
    Max(Option<f64>),
    /// Estimated distinct values (HLL composite estimate: independent of merge order).
    Uniq(f64),
    /// Estimated quantiles.
    Quantiles {
        /// Values seen.
        n: u64,
        /// Median.
        p50: Option<f64>,
        /// 90th percentile.
        p90: Option<f64>,
        /// 99th percentile.
        p99: Option<f64>,
    },
}

/// Decodes one sketch, and refuses it unless what it encodes to decodes again.
///
/// The sketch library accepts some inconsistent images (a LIST-mode HLL whose coupon
/// count disagrees with its filled slots) that it then encodes into bytes it refuses;
/// such a state would be stored and become unreadable on the next fold. Images Tally
/// wrote encode to themselves, so the second decode runs only for foreign bytes.
fn decode_sketch<S, E: std::fmt::Display>(
    bytes: &[u8],
    deserialize: impl Fn(&[u8]) -> Result<S, E>,
    serialize: impl Fn(&S) -> Vec<u8>,
) -> Result<S, StateDecodeError> {
    let corrupt = |e: E| StateDecodeError::Sketch(e.to_string());
    let sketch = deserialize(bytes).map_err(corrupt)?;
    let again = serialize(&sketch);
    if again != bytes {
        deserialize(&again).map_err(|e| {
            StateDecodeError::Sketch(format!("it is inconsistent and would not encode: {e}"))
        })?;
    }
    Ok(sketch)
}

/// Decodes an HLL sketch, and refuses it unless its estimator's numbers are numbers: in HLL
/// mode the library reads the HIP accumulator and the register sums (kxq0, kxq1) from the
/// image as written, and asserts on a NaN when it estimates, so a state read back from a
/// store would panic the query that sums it up.
fn decode_hll(bytes: &[u8]) -> Result<HllSketch, StateDecodeError> {
    /// The preamble of an image in HLL mode: 10 four-byte ints, the mode in byte 7's low
    /// bits (2: HLL), then the three f64 from byte 8 (DataSketches' HLL format).
    const HLL_PREAMBLE_INTS: u8 = 10;
    const HLL_MODE: u8 = 2;
    let in_hll_mode = bytes.first() == Some(&HLL_PREAMBLE_INTS)
        && bytes.get(7).map(|mode| mode & 3) == Some(HLL_MODE);
    let estimator_is_numbers = (0..3).all(|field| {
        let at = 8 + 8 * field;
        bytes
            .get(at..at + 8)
            .and_then(|raw| <[u8; 8]>::try_from(raw).ok())
            .map(f64::from_le_bytes)
            .is_some_and(|value| value.is_finite() && value >= 0.0)
    });
    if in_hll_mode && !estimator_is_numbers {
        return Err(StateDecodeError::Sketch(
            "its estimator holds a value that is no number, which gives no estimate".to_owned(),
        ));
    }
    decode_sketch(bytes, HllSketch::deserialize, HllSketch::serialize)
}

fn new_hll() -> HllSketch {
    HllSketch::new(HLL_LG_K, HllType::Hll8).expect("HLL_LG_K is within 4..=21")
}

fn new_hll_union() -> HllUnion {
    HllUnion::new(HLL_LG_K).expect("HLL_LG_K is within 4..=21")
}

fn new_kll() -> KllSketch<KllFloat<f64>> {
    KllSketch::new(KLL_K).expect("KLL_K is within 8..=65535")
}

fn to_micros(value: f64) -> i128 {
    (value * SUM_SCALE).round() as i128
}

fn pick_present(a: Option<f64>, b: Option<f64>, pick: fn(f64, f64) -> f64) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(pick(a, b)),
        (a, b) => a.or(b),
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_sketch(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.push(tag);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StateDecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len());
        let end = end.ok_or(StateDecodeError::Truncated {
            at: self.bytes.len(),
        })?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn byte(&mut self) -> Result<u8, StateDecodeError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StateDecodeError> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    fn varint(&mut self) -> Result<u64, StateDecodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(StateDecodeError::Truncated { at: self.at })
    }

    fn sized(&mut self) -> Result<&'a [u8], StateDecodeError> {
        let len = self.varint()?;
        self.take(usize::try_from(len).map_err(|_| StateDecodeError::Truncated { at: self.at })?)
    }
}

#[cfg(test)]
mod tests;

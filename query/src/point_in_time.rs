//! The point-in-time (as-of) join behind training sets.
//!
//! For every spine row and every feature side, take the feature row with the same entity
//! keys whose event time is at or before the spine time (and, with a TTL, no older than
//! `spine time - ttl`). When several rows qualify, the latest event time wins; equal event
//! times go to the row that comes later in the side's batch, which callers order by
//! (commit version that added the row's file, file path, row position in the file). A
//! spine row without a match keeps nulls; spine rows are never dropped or reordered. Null
//! keys and null times never match.
//!
//! Bitemporal sides also say, per feature row, which table versions held it, and per spine
//! row, the latest version committed at or before the spine time: a row qualifies only if
//! it was part of the table at that version, so rows committed later (backfills) and rows
//! that were rewritten later are seen exactly as they were known then.
//!
//! The join sorts each side once by (keys, time, position) and binary-searches it per
//! spine row: O((n + m) log m) and deterministic.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::row::{RowConverter, SortField};

use crate::error::{Error, Result};

/// One feature group's rows, as they take part in the join.
pub struct FeatureSide<'a> {
    /// Prefix of the output columns: `<name>__<feature>`.
    pub name: &'a str,
    /// Rows in tie-break order: of rows with equal keys and event time, the later wins.
    pub batch: &'a RecordBatch,
    /// Entity key columns; the spine has columns of the same names and types.
    pub keys: &'a [String],
    pub event_time: &'a str,
    pub features: &'a [String],
    /// Oldest acceptable feature row, in microseconds before the spine time.
    pub ttl_micros: Option<i64>,
    /// For the bitemporal mode: which rows were known when.
    pub known: Option<KnownAt<'a>>,
}

/// Which table versions held each feature row, and which version each spine row sees.
pub struct KnownAt<'a> {
    /// Per feature row: the first version that held it.
    pub added: &'a [i64],
    /// Per feature row: the first version that no longer held it (`i64::MAX`: still held).
    pub removed: &'a [i64],
    /// Per spine row: the latest version committed at or before its time (`None`: the
    /// table had no commits yet, so nothing is known).
    pub spine_version: &'a [Option<i64>],
}

/// Per spine row, the latest of `commits` (version, commit time in microseconds; in
/// version order, times not decreasing) committed at or before the row's time.
pub fn versions_known_at(spine: &RecordBatch, spine_time: &str, commits: &[(i64, i64)]) -> Result<Vec<Option<i64>>> {
    let t = micros(column(spine, spine_time, "the spine")?, spine_time)?;
    Ok((0..t.len())
        .map(|i| {
            if t.is_null(i) {
                return None;
            }
            let n = commits.partition_point(|(_, at)| *at <= t.value(i));
            n.checked_sub(1).map(|p| commits[p].0)
        })
        .collect())
}

fn column<'b>(batch: &'b RecordBatch, name: &str, what: &str) -> Result<&'b ArrayRef> {
    batch.column_by_name(name).ok_or_else(|| Error::InvalidSchema(format!("{what} has no column `{name}`")))
}

/// Event times as microseconds since the epoch (timestamps of any unit, or dates).
fn micros(a: &ArrayRef, name: &str) -> Result<arrow::array::Int64Array> {
    let ts = cast(a, &DataType::Timestamp(TimeUnit::Microsecond, None))
        .map_err(|e| Error::InvalidSchema(format!("`{name}` is not a time: {e}")))?;
    let ints = cast(&ts, &DataType::Int64)?;
    Ok(ints.as_primitive::<arrow::datatypes::Int64Type>().clone())
}

/// Joins `sides` onto `spine` as of each spine row's `spine_time`.
/// Sorting and searching use up to `threads` threads.
pub fn point_in_time_join(spine: &RecordBatch, spine_time: &str, sides: &[FeatureSide<'_>], threads: usize) -> Result<RecordBatch> {
    let spine_t = micros(column(spine, spine_time, "the spine")?, spine_time)?;
    let mut fields: Vec<Arc<Field>> = spine.schema().fields().iter().cloned().collect();
    let mut columns: Vec<ArrayRef> = spine.columns().to_vec();
    for side in sides {
        let indices = match_side(spine, &spine_t, side, threads)?;
        for f in side.features {
            let values = column(side.batch, f, side.name)?;
            let name = format!("{}__{f}", side.name);
            fields.push(Arc::new(Field::new(name, values.data_type().clone(), true)));
            columns.push(take(values.as_ref(), &indices, None)?);
        }
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}

/// For each spine row, the index of the chosen feature row (null when none).
fn match_side(spine: &RecordBatch, spine_t: &arrow::array::Int64Array, side: &FeatureSide<'_>, threads: usize) -> Result<UInt32Array> {
    let mut spine_keys = Vec::with_capacity(side.keys.len());
    let mut side_keys = Vec::with_capacity(side.keys.len());
    for k in side.keys {
        let s = column(spine, k, "the spine")?;
        let f = column(side.batch, k, side.name)?;
        // Compare keys in the spine's type, so an int32 key matches an int64 one.
        let f = if f.data_type() == s.data_type() {
            f.clone()
        } else {
            cast(f, s.data_type()).map_err(|e| Error::InvalidSchema(format!("key `{k}` of {}: {e}", side.name)))?
        };
        spine_keys.push(s.clone());
        side_keys.push(f);
    }
    let side_t = micros(column(side.batch, side.event_time, side.name)?, side.event_time)?;
    if let Some(k) = &side.known
        && (k.added.len() != side.batch.num_rows() || k.removed.len() != side.batch.num_rows() || k.spine_version.len() != spine.num_rows())
    {
        return Err(Error::InvalidSchema(format!("{}: version lineage does not cover every row", side.name)));
    }
    let search = Search { spine_t, side_t: &side_t, ttl_micros: side.ttl_micros, known: side.known.as_ref(), threads };
    let out = match (packed_keys(&spine_keys)?, packed_keys(&side_keys)?) {
        // Integer keys that fit in 128 bits compare as plain numbers: no pointer chasing.
        (Some(spine_k), Some(side_k)) => search.run(&spine_k, &side_k),
        _ => {
            let converter = RowConverter::new(spine_keys.iter().map(|a| SortField::new(a.data_type().clone())).collect())?;
            let spine_rows = converter.convert_columns(&spine_keys)?;
            let side_rows = converter.convert_columns(&side_keys)?;
            search.run(&rows_or_null(&spine_keys, &spine_rows), &rows_or_null(&side_keys, &side_rows))
        }
    };
    Ok(UInt32Array::from(out))
}

fn rows_or_null<'r>(keys: &[ArrayRef], rows: &'r arrow::row::Rows) -> Vec<Option<arrow::row::Row<'r>>> {
    (0..rows.num_rows()).map(|i| (!keys.iter().any(|a| a.is_null(i))).then(|| rows.row(i))).collect()
}

/// Entity keys as one `u128` per row (`None` for a null key) when every key column is an
/// integer type and together they fit: each value's bits side by side, which is injective.
fn packed_keys(columns: &[ArrayRef]) -> Result<Option<Vec<Option<u128>>>> {
    let Some(widths) = columns.iter().map(|c| key_bits(c.data_type())).collect::<Option<Vec<u32>>>() else { return Ok(None) };
    if widths.iter().sum::<u32>() > 128 {
        return Ok(None);
    }
    let n = columns.first().map_or(0, |c| c.len());
    let mut packed: Vec<Option<u128>> = vec![Some(0); n];
    for (c, width) in columns.iter().zip(widths) {
        let mask = if width == 64 { u64::MAX } else { (1u64 << width) - 1 };
        let values = cast(c, &DataType::Int64)?;
        let values = values.as_primitive::<arrow::datatypes::Int64Type>();
        for (i, slot) in packed.iter_mut().enumerate() {
            *slot = match (*slot, values.is_valid(i)) {
                (Some(acc), true) => Some((acc << width) | u128::from(values.value(i) as u64 & mask)),
                _ => None,
            };
        }
    }
    Ok(Some(packed))
}

/// Bits of an integer key type that packs losslessly (u64 does not fit an i64 cast).
fn key_bits(t: &DataType) -> Option<u32> {
    match t {
        DataType::Int8 | DataType::UInt8 => Some(8),
        DataType::Int16 | DataType::UInt16 => Some(16),
        DataType::Int32 | DataType::UInt32 | DataType::Date32 => Some(32),
        DataType::Int64 => Some(64),
        _ => None,
    }
}

/// One side's as-of search, generic over how keys compare.
struct Search<'a> {
    spine_t: &'a arrow::array::Int64Array,
    side_t: &'a arrow::array::Int64Array,
    ttl_micros: Option<i64>,
    known: Option<&'a KnownAt<'a>>,
    threads: usize,
}

impl Search<'_> {
    fn run<K: Ord + Copy + Send + Sync>(&self, spine_keys: &[Option<K>], side_keys: &[Option<K>]) -> Vec<Option<u32>> {
        // (key, time, position), sorted; rows with a null key or time never match.
        let mut entries: Vec<(K, i64, u32)> = side_keys
            .iter()
            .enumerate()
            .filter_map(|(j, k)| Some((((*k)?), self.side_t.is_valid(j).then(|| self.side_t.value(j))?, j as u32)))
            .collect();
        parallel_sort(&mut entries, self.threads);

        let mut out = vec![None; spine_keys.len()];
        let chunk = spine_keys.len().div_ceil(self.threads.max(1)).max(1);
        std::thread::scope(|scope| {
            for (c, slots) in out.chunks_mut(chunk).enumerate() {
                let entries = &entries;
                scope.spawn(move || {
                    for (offset, slot) in slots.iter_mut().enumerate() {
                        *slot = self.find(entries, spine_keys, c * chunk + offset);
                    }
                });
            }
        });
        out
    }

    fn find<K: Ord + Copy>(&self, entries: &[(K, i64, u32)], spine_keys: &[Option<K>], i: usize) -> Option<u32> {
        let (Some(key), true) = (spine_keys[i], self.spine_t.is_valid(i)) else { return None };
        let t = self.spine_t.value(i);
        // Walk back from the last entry not after (key, t): later times first, and of
        // equal times the later position first.
        let end = entries.partition_point(|(k, et, _)| (*k, *et) <= (key, t));
        let in_reach = |(k, et, _): &&(K, i64, u32)| *k == key && self.ttl_micros.is_none_or(|ttl| t.saturating_sub(*et) <= ttl);
        let found = match self.known {
            None => entries[..end].last().filter(in_reach),
            Some(known) => {
                let v = known.spine_version[i]?;
                entries[..end]
                    .iter()
                    .rev()
                    .take_while(in_reach)
                    .find(|(_, _, j)| known.added[*j as usize] <= v && v < known.removed[*j as usize])
            }
        };
        found.map(|e| e.2)
    }
}

/// Sorts on up to `threads` threads: chunks sorted in parallel, then merged.
fn parallel_sort<T: Ord + Copy + Send>(v: &mut Vec<T>, threads: usize) {
    if threads <= 1 || v.len() < 1 << 16 {
        v.sort_unstable();
        return;
    }
    let chunk = v.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for part in v.chunks_mut(chunk) {
            scope.spawn(move || part.sort_unstable());
        }
    });
    let mut width = chunk;
    let mut buffer = Vec::with_capacity(v.len());
    while width < v.len() {
        buffer.clear();
        for pair in v.chunks(2 * width) {
            let (a, b) = pair.split_at(width.min(pair.len()));
            let (mut i, mut j) = (0, 0);
            while i < a.len() && j < b.len() {
                if b[j] < a[i] {
                    buffer.push(b[j]);
                    j += 1;
                } else {
                    buffer.push(a[i]);
                    i += 1;
                }
            }
            buffer.extend_from_slice(&a[i..]);
            buffer.extend_from_slice(&b[j..]);
        }
        std::mem::swap(v, &mut buffer);
        width *= 2;
    }
}

/// Encodes batches as one Parquet file, the same bytes for the same rows: fixed writer
/// settings, no timestamps, one row group per 1M rows.
pub fn deterministic_parquet(schema: &arrow::datatypes::SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(parquet::basic::ZstdLevel::default()))
        .set_max_row_group_row_count(Some(1 << 20))
        .set_created_by("lakeledger".into())
        .build();
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, schema.clone(), Some(props))?;
    for b in batches {
        w.write(b)?;
    }
    w.close()?;
    Ok(out)
}

/// Orders a spine by (time, then every other column), so a training set's row order is
/// defined whatever order the spine arrived in.
pub fn sort_spine(spine: &RecordBatch, spine_time: &str) -> Result<RecordBatch> {
    let time = column(spine, spine_time, "the spine")?.clone();
    let mut columns = vec![time];
    columns.extend(spine.schema().fields().iter().filter(|f| f.name() != spine_time).filter_map(|f| spine.column_by_name(f.name()).cloned()));
    let converter = RowConverter::new(columns.iter().map(|a| SortField::new(a.data_type().clone())).collect())?;
    let rows = converter.convert_columns(&columns)?;
    let mut idx: Vec<u32> = (0..spine.num_rows() as u32).collect();
    idx.sort_by(|a, b| rows.row(*a as usize).cmp(&rows.row(*b as usize)));
    let indices = UInt32Array::from(idx);
    let cols = spine.columns().iter().map(|c| take(c.as_ref(), &indices, None)).collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(spine.schema(), cols)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, TimestampMicrosecondArray};
    use proptest::prelude::*;

    fn spine(keys: &[Option<i64>], times: &[Option<i64>]) -> RecordBatch {
        RecordBatch::try_from_iter(vec![
            ("id", Arc::new(Int64Array::from(keys.to_vec())) as ArrayRef),
            ("t", Arc::new(TimestampMicrosecondArray::from(times.to_vec()).with_timezone("UTC")) as ArrayRef),
        ])
        .unwrap()
    }

    /// Feature rows; `v` is each row's position, so results name the row chosen.
    fn features(keys: &[Option<i64>], times: &[Option<i64>]) -> RecordBatch {
        let n = keys.len() as i64;
        RecordBatch::try_from_iter(vec![
            ("id", Arc::new(Int64Array::from(keys.to_vec())) as ArrayRef),
            ("ts", Arc::new(TimestampMicrosecondArray::from(times.to_vec()).with_timezone("UTC")) as ArrayRef),
            ("v", Arc::new(Int64Array::from((0..n).collect::<Vec<_>>())) as ArrayRef),
        ])
        .unwrap()
    }

    /// Joins with integer keys (packed) and again with the keys as text (row-encoded);
    /// both must agree.
    fn join(s: &RecordBatch, f: &RecordBatch, ttl: Option<i64>, known: Option<KnownAt<'_>>) -> Vec<Option<i64>> {
        let keys = vec!["id".to_string()];
        let feats = vec!["v".to_string()];
        let run = |s: &RecordBatch, f: &RecordBatch, threads: usize| {
            let known = known.as_ref().map(|k| KnownAt { added: k.added, removed: k.removed, spine_version: k.spine_version });
            let side = FeatureSide { name: "g", batch: f, keys: &keys, event_time: "ts", features: &feats, ttl_micros: ttl, known };
            let out = point_in_time_join(s, "t", &[side], threads).unwrap();
            assert_eq!(out.num_rows(), s.num_rows(), "spine rows are never dropped");
            let v = out.column_by_name("g__v").unwrap().as_primitive::<arrow::datatypes::Int64Type>();
            (0..v.len()).map(|i| v.is_valid(i).then(|| v.value(i))).collect::<Vec<_>>()
        };
        let as_text = |b: &RecordBatch| {
            let mut cols = b.columns().to_vec();
            cols[0] = cast(&cols[0], &DataType::Utf8).unwrap();
            let fields: Vec<Field> = b.schema().fields().iter().enumerate().map(|(i, f)| Field::new(f.name(), cols[i].data_type().clone(), true)).collect();
            RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
        };
        let packed = run(s, f, 1);
        assert_eq!(run(&as_text(s), &as_text(f), 3), packed, "row-encoded keys agree with packed ones");
        packed
    }

    #[test]
    fn parallel_sort_sorts() {
        let mut state = 12345u64;
        let mut v: Vec<(u64, u32)> = (0..200_003u32)
            .map(|i| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 50, i)
            })
            .collect();
        let mut expected = v.clone();
        expected.sort_unstable();
        parallel_sort(&mut v, 3);
        assert_eq!(v, expected);
    }

    #[test]
    fn packed_keys_tell_every_key_apart() {
        let a: ArrayRef = Arc::new(arrow::array::Int32Array::from(vec![Some(-1), Some(1), Some(-1), None]));
        let b: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), Some(-1), Some(1), Some(0)]));
        let k = packed_keys(&[a, b]).unwrap().unwrap();
        assert_eq!(k[0], k[2]);
        assert_ne!(k[0], k[1]);
        assert_eq!(k[3], None);
        let s: ArrayRef = Arc::new(arrow::array::StringArray::from(vec!["x"]));
        assert!(packed_keys(&[s]).unwrap().is_none(), "text keys use the row encoding");
    }

    /// The definition, row by row; `visible(j, i)` says whether feature row j is known to
    /// spine row i.
    fn brute_force(
        sk: &[Option<i64>],
        st: &[Option<i64>],
        fk: &[Option<i64>],
        ft: &[Option<i64>],
        ttl: Option<i64>,
        visible: impl Fn(usize, usize) -> bool,
    ) -> Vec<Option<i64>> {
        (0..sk.len())
            .map(|i| {
                let (Some(k), Some(t)) = (sk[i], st[i]) else { return None };
                (0..fk.len())
                    .filter(|&j| visible(j, i) && fk[j] == Some(k) && ft[j].is_some_and(|et| et <= t && ttl.is_none_or(|ttl| t - et <= ttl)))
                    .max_by_key(|&j| (ft[j], j))
                    .map(|j| j as i64)
            })
            .collect()
    }

    #[test]
    fn latest_at_or_before_with_ties_ttl_and_nulls() {
        let f = features(&[Some(1), Some(1), Some(1), Some(2), None], &[Some(10), Some(20), Some(20), Some(5), Some(1)]);
        let s = spine(&[Some(1), Some(1), Some(1), Some(2), Some(3), None], &[Some(9), Some(15), Some(25), Some(100), Some(50), Some(50)]);
        // Row 2 wins the tie at t=20: it comes later in (version, file, row) order.
        assert_eq!(join(&s, &f, None, None), vec![None, Some(0), Some(2), Some(3), None, None]);
        // With a TTL of 10, user 2's feature at t=5 is too old at t=100.
        assert_eq!(join(&s, &f, Some(10), None), vec![None, Some(0), Some(2), None, None, None]);
    }

    #[test]
    fn a_late_backfill_is_not_known_before_it_was_committed() {
        // Version 1 (committed at 100) holds user 1's row for t=10; version 2 (committed at
        // 300) backfills a row for t=20.
        let f = features(&[Some(1), Some(1)], &[Some(10), Some(20)]);
        let s = spine(&[Some(1), Some(1), Some(1)], &[Some(50), Some(200), Some(400)]);
        let commits = [(0, 0), (1, 100), (2, 300)];
        let sv = versions_known_at(&s, "t", &commits).unwrap();
        assert_eq!(sv, vec![Some(0), Some(1), Some(2)]);
        let known = KnownAt { added: &[1, 2], removed: &[i64::MAX, i64::MAX], spine_version: &sv };
        assert_eq!(join(&s, &f, None, Some(known)), vec![None, Some(0), Some(1)]);
        // Without the bitemporal rule the backfill leaks into all three.
        assert_eq!(join(&s, &f, None, None), vec![Some(1), Some(1), Some(1)]);
    }

    /// A table's history: each commit adds a file, rewrites a live file (remove + add a
    /// copy) or removes one, at non-decreasing commit times.
    #[derive(Debug, Clone)]
    enum Commit {
        Add(Vec<(Option<i64>, Option<i64>)>),
        Rewrite(usize),
        Remove(usize),
    }

    struct File {
        added: i64,
        removed: i64,
        rows: Vec<(Option<i64>, Option<i64>)>,
    }

    fn replay(commits: &[(i64, Commit)]) -> (Vec<File>, Vec<(i64, i64)>) {
        let mut files: Vec<File> = Vec::new();
        let mut times = Vec::new();
        let mut at = 0;
        for (v, (step, c)) in commits.iter().enumerate() {
            let v = v as i64;
            at += step;
            times.push((v, at));
            let live: Vec<usize> = (0..files.len()).filter(|&i| files[i].removed == i64::MAX).collect();
            match c {
                Commit::Add(rows) => files.push(File { added: v, removed: i64::MAX, rows: rows.clone() }),
                Commit::Rewrite(p) if !live.is_empty() => {
                    let old = live[p % live.len()];
                    files[old].removed = v;
                    let rows = files[old].rows.clone();
                    files.push(File { added: v, removed: i64::MAX, rows });
                }
                Commit::Remove(p) if !live.is_empty() => files[live[p % live.len()]].removed = v,
                _ => {}
            }
        }
        (files, times)
    }

    fn commit_strategy() -> impl Strategy<Value = (i64, Commit)> {
        let rows = proptest::collection::vec((proptest::option::weighted(0.9, 0i64..4), proptest::option::weighted(0.95, 0i64..30)), 0..6);
        (0i64..4, prop_oneof![3 => rows.prop_map(Commit::Add), 1 => any::<usize>().prop_map(Commit::Rewrite), 1 => any::<usize>().prop_map(Commit::Remove)])
    }

    proptest! {
        #[test]
        fn matches_the_brute_force_definition(
            sk in proptest::collection::vec(proptest::option::weighted(0.9, 0i64..5), 0..40),
            st_seed in proptest::collection::vec(proptest::option::weighted(0.95, 0i64..30), 40),
            f in proptest::collection::vec((proptest::option::weighted(0.9, 0i64..5), proptest::option::weighted(0.95, 0i64..30)), 0..80),
            ttl in proptest::option::of(0i64..15),
        ) {
            let st: Vec<Option<i64>> = st_seed[..sk.len()].to_vec();
            let fk: Vec<Option<i64>> = f.iter().map(|x| x.0).collect();
            let ft: Vec<Option<i64>> = f.iter().map(|x| x.1).collect();
            let got = join(&spine(&sk, &st), &features(&fk, &ft), ttl, None);
            prop_assert_eq!(got, brute_force(&sk, &st, &fk, &ft, ttl, |_, _| true));
        }

        /// Bitemporal: each spine row sees exactly the snapshot of the last version
        /// committed by its time, including late backfills, rewrites and removals.
        #[test]
        fn bitemporal_matches_the_snapshot_definition(
            history in proptest::collection::vec(commit_strategy(), 1..10),
            sk in proptest::collection::vec(proptest::option::weighted(0.9, 0i64..4), 0..30),
            st_seed in proptest::collection::vec(proptest::option::weighted(0.95, 0i64..40), 30),
            ttl in proptest::option::of(0i64..15),
        ) {
            let st: Vec<Option<i64>> = st_seed[..sk.len()].to_vec();
            let (files, commits) = replay(&history);
            // Rows in (added version, file, row) order, as the reader returns them.
            let mut order: Vec<usize> = (0..files.len()).collect();
            order.sort_by_key(|&i| (files[i].added, i));
            let (mut fk, mut ft, mut added, mut removed) = (vec![], vec![], vec![], vec![]);
            for &i in &order {
                for (k, t) in &files[i].rows {
                    fk.push(*k);
                    ft.push(*t);
                    added.push(files[i].added);
                    removed.push(files[i].removed);
                }
            }
            let s = spine(&sk, &st);
            let sv = versions_known_at(&s, "t", &commits).unwrap();
            let reference = brute_force(&sk, &st, &fk, &ft, ttl, |j, i| {
                // The snapshot at the last version committed by the spine time.
                let at = st[i].unwrap();
                commits.iter().rev().find(|(_, c)| *c <= at).is_some_and(|(v, _)| added[j] <= *v && *v < removed[j])
            });
            let known = KnownAt { added: &added, removed: &removed, spine_version: &sv };
            prop_assert_eq!(join(&s, &features(&fk, &ft), ttl, Some(known)), reference);
        }
    }
}

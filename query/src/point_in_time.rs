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
pub fn point_in_time_join(spine: &RecordBatch, spine_time: &str, sides: &[FeatureSide<'_>]) -> Result<RecordBatch> {
    let spine_t = micros(column(spine, spine_time, "the spine")?, spine_time)?;
    let mut fields: Vec<Arc<Field>> = spine.schema().fields().iter().cloned().collect();
    let mut columns: Vec<ArrayRef> = spine.columns().to_vec();
    for side in sides {
        let indices = match_side(spine, &spine_t, side)?;
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
fn match_side(spine: &RecordBatch, spine_t: &arrow::array::Int64Array, side: &FeatureSide<'_>) -> Result<UInt32Array> {
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
    let converter = RowConverter::new(spine_keys.iter().map(|a| SortField::new(a.data_type().clone())).collect())?;
    let spine_rows = converter.convert_columns(&spine_keys)?;
    let side_rows = converter.convert_columns(&side_keys)?;
    let side_t = micros(column(side.batch, side.event_time, side.name)?, side.event_time)?;
    if let Some(k) = &side.known
        && (k.added.len() != side.batch.num_rows() || k.removed.len() != side.batch.num_rows() || k.spine_version.len() != spine.num_rows())
    {
        return Err(Error::InvalidSchema(format!("{}: version lineage does not cover every row", side.name)));
    }
    let has_null_key = |keys: &[ArrayRef], i: usize| keys.iter().any(|a| a.is_null(i));

    // (key row, time, position), sorted; rows with a null key or time never match.
    let mut entries: Vec<(arrow::row::Row<'_>, i64, u32)> = (0..side.batch.num_rows())
        .filter(|&j| !has_null_key(&side_keys, j) && side_t.is_valid(j))
        .map(|j| (side_rows.row(j), side_t.value(j), j as u32))
        .collect();
    entries.sort_unstable();

    let mut out = Vec::with_capacity(spine.num_rows());
    for i in 0..spine.num_rows() {
        if has_null_key(&spine_keys, i) || spine_t.is_null(i) {
            out.push(None);
            continue;
        }
        let (key, t) = (spine_rows.row(i), spine_t.value(i));
        // Walk back from the last entry not after (key, t): later times first, and of
        // equal times the later position first.
        let end = entries.partition_point(|(k, et, _)| (*k, *et) <= (key, t));
        let in_reach = |(k, et, _): &&(arrow::row::Row<'_>, i64, u32)| *k == key && side.ttl_micros.is_none_or(|ttl| t.saturating_sub(*et) <= ttl);
        let found = match &side.known {
            None => entries[..end].last().filter(in_reach),
            Some(known) => match known.spine_version[i] {
                None => None,
                Some(v) => entries[..end]
                    .iter()
                    .rev()
                    .take_while(in_reach)
                    .find(|(_, _, j)| known.added[*j as usize] <= v && v < known.removed[*j as usize]),
            },
        };
        out.push(found.map(|e| e.2));
    }
    Ok(UInt32Array::from(out))
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

    fn join(s: &RecordBatch, f: &RecordBatch, ttl: Option<i64>, known: Option<KnownAt<'_>>) -> Vec<Option<i64>> {
        let keys = vec!["id".to_string()];
        let feats = vec!["v".to_string()];
        let side = FeatureSide { name: "g", batch: f, keys: &keys, event_time: "ts", features: &feats, ttl_micros: ttl, known };
        let out = point_in_time_join(s, "t", &[side]).unwrap();
        assert_eq!(out.num_rows(), s.num_rows(), "spine rows are never dropped");
        let v = out.column_by_name("g__v").unwrap().as_primitive::<arrow::datatypes::Int64Type>();
        (0..v.len()).map(|i| v.is_valid(i).then(|| v.value(i))).collect()
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

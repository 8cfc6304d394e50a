//! The point-in-time (as-of) join behind training sets.
//!
//! For every spine row and every feature side, take the feature row with the same entity
//! keys whose event time is at or before the spine time (and, with a TTL, no older than
//! `spine time - ttl`). When several rows qualify, the latest event time wins; equal event
//! times are broken by the side's `order` column (higher wins: the caller passes commit
//! version, then file and row position) and finally by row position in the batch. A spine
//! row without a match keeps nulls; spine rows are never dropped or reordered. Null keys
//! and null times never match.
//!
//! The join sorts each side once by (keys, time, order, position) and binary-searches it
//! per spine row: O((n + m) log m) and deterministic.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit, UInt64Type};
use arrow::row::{RowConverter, SortField};

use crate::error::{Error, Result};

/// One feature group's rows, as they take part in the join.
pub struct FeatureSide<'a> {
    /// Prefix of the output columns: `<name>__<feature>`.
    pub name: &'a str,
    pub batch: &'a RecordBatch,
    /// Entity key columns; the spine has columns of the same names and types.
    pub keys: &'a [String],
    pub event_time: &'a str,
    pub features: &'a [String],
    /// A UInt64 column ordering rows with equal keys and event time (higher wins).
    pub order: Option<&'a str>,
    /// Oldest acceptable feature row, in microseconds before the spine time.
    pub ttl_micros: Option<i64>,
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
    let order = match side.order {
        Some(o) => Some(cast(column(side.batch, o, side.name)?, &DataType::UInt64)?.as_primitive::<UInt64Type>().clone()),
        None => None,
    };
    let has_null_key = |keys: &[ArrayRef], i: usize| keys.iter().any(|a| a.is_null(i));

    // (key row, time, order, position), sorted; rows with a null key or time never match.
    let mut entries: Vec<(arrow::row::Row<'_>, i64, u64, u32)> = (0..side.batch.num_rows())
        .filter(|&j| !has_null_key(&side_keys, j) && side_t.is_valid(j))
        .map(|j| (side_rows.row(j), side_t.value(j), order.as_ref().map_or(0, |o| if o.is_valid(j) { o.value(j) } else { 0 }), j as u32))
        .collect();
    entries.sort_unstable();

    let mut out = Vec::with_capacity(spine.num_rows());
    for i in 0..spine.num_rows() {
        if has_null_key(&spine_keys, i) || spine_t.is_null(i) {
            out.push(None);
            continue;
        }
        let (key, t) = (spine_rows.row(i), spine_t.value(i));
        // The last entry not after (key, t, any order, any position).
        let idx = entries.partition_point(|(k, et, _, _)| (*k, *et) <= (key, t));
        let found = idx.checked_sub(1).map(|p| &entries[p]).filter(|(k, et, _, _)| {
            *k == key && side.ttl_micros.is_none_or(|ttl| t.saturating_sub(*et) <= ttl)
        });
        out.push(found.map(|e| e.3));
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
    use arrow::array::{Int64Array, TimestampMicrosecondArray, UInt64Array};
    use proptest::prelude::*;

    fn spine(keys: &[Option<i64>], times: &[Option<i64>]) -> RecordBatch {
        RecordBatch::try_from_iter(vec![
            ("id", Arc::new(Int64Array::from(keys.to_vec())) as ArrayRef),
            ("t", Arc::new(TimestampMicrosecondArray::from(times.to_vec()).with_timezone("UTC")) as ArrayRef),
        ])
        .unwrap()
    }

    fn features(keys: &[Option<i64>], times: &[Option<i64>], order: &[u64]) -> RecordBatch {
        let n = keys.len() as i64;
        RecordBatch::try_from_iter(vec![
            ("id", Arc::new(Int64Array::from(keys.to_vec())) as ArrayRef),
            ("ts", Arc::new(TimestampMicrosecondArray::from(times.to_vec()).with_timezone("UTC")) as ArrayRef),
            ("v", Arc::new(Int64Array::from((0..n).collect::<Vec<_>>())) as ArrayRef),
            ("ord", Arc::new(UInt64Array::from(order.to_vec())) as ArrayRef),
        ])
        .unwrap()
    }

    fn join(s: &RecordBatch, f: &RecordBatch, ttl: Option<i64>) -> Vec<Option<i64>> {
        let keys = vec!["id".to_string()];
        let feats = vec!["v".to_string()];
        let side = FeatureSide { name: "g", batch: f, keys: &keys, event_time: "ts", features: &feats, order: Some("ord"), ttl_micros: ttl };
        let out = point_in_time_join(s, "t", &[side]).unwrap();
        assert_eq!(out.num_rows(), s.num_rows(), "spine rows are never dropped");
        let v = out.column_by_name("g__v").unwrap().as_primitive::<arrow::datatypes::Int64Type>();
        (0..v.len()).map(|i| v.is_valid(i).then(|| v.value(i))).collect()
    }

    /// The definition, row by row.
    fn brute_force(sk: &[Option<i64>], st: &[Option<i64>], fk: &[Option<i64>], ft: &[Option<i64>], ord: &[u64], ttl: Option<i64>) -> Vec<Option<i64>> {
        (0..sk.len())
            .map(|i| {
                let (Some(k), Some(t)) = (sk[i], st[i]) else { return None };
                (0..fk.len())
                    .filter(|&j| fk[j] == Some(k) && ft[j].is_some_and(|et| et <= t && ttl.is_none_or(|ttl| t - et <= ttl)))
                    .max_by_key(|&j| (ft[j], ord[j], j))
                    .map(|j| j as i64)
            })
            .collect()
    }

    #[test]
    fn latest_at_or_before_with_ties_ttl_and_nulls() {
        let f = features(&[Some(1), Some(1), Some(1), Some(2), None], &[Some(10), Some(20), Some(20), Some(5), Some(1)], &[0, 1, 0, 0, 0]);
        let s = spine(&[Some(1), Some(1), Some(1), Some(2), Some(3), None], &[Some(9), Some(15), Some(25), Some(100), Some(50), Some(50)]);
        // Row 1 wins the tie at t=20 by its higher order.
        assert_eq!(join(&s, &f, None), vec![None, Some(0), Some(1), Some(3), None, None]);
        // With a TTL of 10, user 2's feature at t=5 is too old at t=100.
        assert_eq!(join(&s, &f, Some(10)), vec![None, Some(0), Some(1), None, None, None]);
    }

    proptest! {
        #[test]
        fn matches_the_brute_force_definition(
            sk in proptest::collection::vec(proptest::option::weighted(0.9, 0i64..5), 0..40),
            st_seed in proptest::collection::vec(proptest::option::weighted(0.95, 0i64..30), 40),
            f in proptest::collection::vec((proptest::option::weighted(0.9, 0i64..5), proptest::option::weighted(0.95, 0i64..30), 0u64..3), 0..80),
            ttl in proptest::option::of(0i64..15),
        ) {
            let st: Vec<Option<i64>> = st_seed[..sk.len()].to_vec();
            let fk: Vec<Option<i64>> = f.iter().map(|x| x.0).collect();
            let ft: Vec<Option<i64>> = f.iter().map(|x| x.1).collect();
            let ord: Vec<u64> = f.iter().map(|x| x.2).collect();
            let got = join(&spine(&sk, &st), &features(&fk, &ft, &ord), ttl);
            prop_assert_eq!(got, brute_force(&sk, &st, &fk, &ft, &ord, ttl));
        }
    }
}

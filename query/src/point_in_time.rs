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
//! Integer keys are packed into one `u64` (or `u128`) by their value ranges; other keys
//! use Arrow's row encoding. Both sides are split by a hash of the key into partitions of
//! some 32k rows, so each partition's work stays in cache, and partitions run on all
//! threads. In a partition, the plain join never sorts the feature rows: each is offered
//! to the first spine row of its key at or after its time, and a running maximum along
//! each key's spine rows gives every spine row the latest row at or before it. The
//! bitemporal join sorts the partition's feature rows by (key, time, position); each spine
//! row binary-searches them and walks back to the latest row its version held. The result
//! does not depend on the thread count, the partitioning or how the rows are batched.

use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, UInt32Array, new_null_array};
use arrow::buffer::NullBuffer;
use arrow::compute::{cast, interleave, take};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::row::{Row, RowConverter, Rows, SortField};

use crate::error::{Error, Result};

/// One feature group's rows, as they take part in the join.
pub struct FeatureSide<'a> {
    /// Prefix of the output columns: `<name>__<feature>`.
    pub name: &'a str,
    /// Rows in tie-break order, in batches of `schema`: of rows with equal keys and
    /// event time, the later wins.
    pub batches: &'a [RecordBatch],
    pub schema: &'a Schema,
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
/// Splitting, searching and gathering use up to `threads` threads.
pub fn point_in_time_join(spine: &RecordBatch, spine_time: &str, sides: &[FeatureSide<'_>], threads: usize) -> Result<RecordBatch> {
    let spine_t = micros(column(spine, spine_time, "the spine")?, spine_time)?;
    let mut fields: Vec<Arc<Field>> = spine.schema().fields().iter().cloned().collect();
    let mut columns: Vec<ArrayRef> = spine.columns().to_vec();
    for side in sides {
        let chosen = match_side(spine, &spine_t, side, threads)?;
        // Each chosen row as (batch, row); no match points at one extra null row.
        let mut starts = Vec::with_capacity(side.batches.len());
        let mut rows = 0;
        for b in side.batches {
            starts.push(rows);
            rows += b.num_rows();
        }
        let picks: Vec<(usize, usize)> = chosen
            .iter()
            .map(|c| match c {
                Some(j) => {
                    let j = *j as usize;
                    let b = starts.partition_point(|&s| s <= j) - 1;
                    (b, j - starts[b])
                }
                None => (side.batches.len(), 0),
            })
            .collect();
        let gathered = parallel_map(side.features.len(), threads, |f| -> Result<ArrayRef> {
            let name = &side.features[f];
            let field = side.schema.field_with_name(name).map_err(|_| Error::InvalidSchema(format!("{} has no column `{name}`", side.name)))?;
            let null = new_null_array(field.data_type(), 1);
            let mut arrays: Vec<&dyn Array> = Vec::with_capacity(side.batches.len() + 1);
            for b in side.batches {
                arrays.push(column(b, name, side.name)?.as_ref());
            }
            arrays.push(null.as_ref());
            Ok(interleave(&arrays, &picks)?)
        });
        for (f, values) in side.features.iter().zip(gathered) {
            let values = values?;
            fields.push(Arc::new(Field::new(format!("{}__{f}", side.name), values.data_type().clone(), true)));
            columns.push(values);
        }
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}

/// For each spine row, the position (across all batches) of the chosen feature row.
fn match_side(spine: &RecordBatch, spine_t: &Int64Array, side: &FeatureSide<'_>, threads: usize) -> Result<Vec<Option<u32>>> {
    let rows: usize = side.batches.iter().map(RecordBatch::num_rows).sum();
    if rows > u32::MAX as usize {
        return Err(Error::InvalidSchema(format!("{} has {rows} rows; a training set joins at most {} per group", side.name, u32::MAX)));
    }
    if let Some(k) = &side.known
        && (k.added.len() != rows || k.removed.len() != rows || k.spine_version.len() != spine.num_rows())
    {
        return Err(Error::InvalidSchema(format!("{}: version lineage does not cover every row", side.name)));
    }
    let spine_keys = side.keys.iter().map(|k| column(spine, k, "the spine").cloned()).collect::<Result<Vec<_>>>()?;
    let mut side_keys = Vec::with_capacity(side.batches.len());
    let mut side_t = Vec::with_capacity(side.batches.len());
    for b in side.batches {
        let mut keys = Vec::with_capacity(side.keys.len());
        for (k, s) in side.keys.iter().zip(&spine_keys) {
            let f = column(b, k, side.name)?;
            // Compare keys in the spine's type, so an int32 key matches an int64 one.
            keys.push(if f.data_type() == s.data_type() {
                f.clone()
            } else {
                cast(f, s.data_type()).map_err(|e| Error::InvalidSchema(format!("key `{k}` of {}: {e}", side.name)))?
            });
        }
        side_keys.push(keys);
        side_t.push(micros(column(b, side.event_time, side.name)?, side.event_time)?);
    }
    let search = Search { ttl_micros: side.ttl_micros, known: side.known.as_ref(), threads };
    let spine_ints = integer_keys(&spine_keys)?;
    let side_ints = side_keys.iter().map(|k| integer_keys(k)).collect::<Result<Option<Vec<_>>>>()?;
    Ok(match (spine_ints, side_ints) {
        // Integer keys packed into one number: no pointer chasing, cheap to hash.
        (Some(spine_ints), Some(side_ints)) => {
            let (spine_ints, spine_t) = ([spine_ints], [spine_t.clone()]);
            match KeyPacking::plan(&spine_ints[0], &side_ints) {
                Some(plan) if plan.bits <= 64 => search.run(&plan.sources::<u64>(&spine_ints, &spine_t), &plan.sources::<u64>(&side_ints, &side_t)),
                Some(plan) => search.run(&plan.sources::<u128>(&spine_ints, &spine_t), &plan.sources::<u128>(&side_ints, &side_t)),
                None => search.run_rows(&spine_keys, &spine_t[0], &side_keys, &side_t)?,
            }
        }
        _ => search.run_rows(&spine_keys, spine_t, &side_keys, &side_t)?,
    })
}

/// Runs `f(0..n)` on up to `threads` threads, each taking the next index when done;
/// results come back in index order.
fn parallel_map<T: Send>(n: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    if threads <= 1 || n <= 1 {
        return (0..n).map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<(usize, T)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.min(n))
            .map(|_| {
                let (next, f) = (&next, &f);
                scope.spawn(move || {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= n {
                            return out;
                        }
                        out.push((i, f(i)));
                    }
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("a worker thread panicked")).collect()
    });
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, t)| t).collect()
}

/// One side's entity keys, row by row (`None` when any key column is null).
trait KeySource: Sync {
    type Key: Ord + Hash + Copy + Send + Sync;
    fn len(&self) -> usize;
    fn key(&self, i: usize) -> Option<Self::Key>;
}

/// A batch's keys and event times (microseconds), as the search reads them.
struct Source<'t, S> {
    keys: S,
    times: &'t Int64Array,
}

/// Key columns as 64-bit integers, when every one converts losslessly.
fn integer_keys(columns: &[ArrayRef]) -> Result<Option<Vec<Int64Array>>> {
    if !columns.iter().all(|c| converts_to_i64(c.data_type())) {
        return Ok(None);
    }
    Ok(Some(columns.iter().map(|c| Ok(cast(c, &DataType::Int64)?.as_primitive::<arrow::datatypes::Int64Type>().clone())).collect::<Result<_>>()?))
}

/// Integer types that convert to i64 losslessly (u64 does not).
fn converts_to_i64(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8 | DataType::UInt8 | DataType::Int16 | DataType::UInt16 | DataType::Int32 | DataType::UInt32 | DataType::Date32 | DataType::Int64
    )
}

/// Rows where any of `columns` is null.
fn any_null<'a>(columns: impl IntoIterator<Item = &'a dyn Array>) -> Option<NullBuffer> {
    columns.into_iter().fold(None, |acc, c| NullBuffer::union(acc.as_ref(), c.logical_nulls().as_ref()))
}

/// A number holding packed integer keys.
trait PackedKey: Ord + Hash + Copy + Send + Sync + Default + From<u64> + std::ops::Shl<u32, Output = Self> + std::ops::BitOr<Output = Self> {}
impl PackedKey for u64 {}
impl PackedKey for u128 {}

/// How integer keys pack into one number, injectively: per key column, its smallest
/// value on either side and the bits its range needs, side by side.
struct KeyPacking {
    /// Per column: (smallest value, shift); columns holding one value are left out.
    columns: Vec<(usize, i64, u32)>,
    bits: u32,
}

impl KeyPacking {
    fn plan(spine: &[Int64Array], sides: &[Vec<Int64Array>]) -> Option<Self> {
        let mut ranges = Vec::with_capacity(spine.len());
        for c in 0..spine.len() {
            let all = std::iter::once(&spine[c]).chain(sides.iter().map(|s| &s[c]));
            let (mut lo, mut hi) = (None::<i64>, None::<i64>);
            for a in all {
                if let (Some(min), Some(max)) = (arrow::compute::min(a), arrow::compute::max(a)) {
                    lo = Some(lo.map_or(min, |l| l.min(min)));
                    hi = Some(hi.map_or(max, |h| h.max(max)));
                }
            }
            let width = match (lo, hi) {
                (Some(lo), Some(hi)) => 64 - (hi as u64).wrapping_sub(lo as u64).leading_zeros(),
                _ => 0,
            };
            ranges.push((lo.unwrap_or(0), width));
        }
        let bits: u32 = ranges.iter().map(|r| r.1).sum();
        if bits > 128 {
            return None;
        }
        let mut shift = bits;
        let mut columns = Vec::new();
        for (c, (lo, width)) in ranges.into_iter().enumerate() {
            shift -= width;
            if width > 0 {
                columns.push((c, lo, shift));
            }
        }
        Some(KeyPacking { columns, bits })
    }

    fn sources<'t, K: PackedKey>(&self, keys: &[Vec<Int64Array>], times: &'t [Int64Array]) -> Vec<Source<'t, PackedKeys<K>>> {
        keys
            .iter()
            .zip(times)
            .map(|(columns, times)| {
                let nulls = any_null(columns.iter().map(|c| c as &dyn Array));
                let packed = self.columns.iter().map(|&(c, lo, shift)| (columns[c].clone(), lo, shift)).collect();
                Source { keys: PackedKeys { columns: packed, nulls, len: times.len(), key: std::marker::PhantomData }, times }
            })
            .collect()
    }
}

/// Integer keys packed by a [`KeyPacking`].
struct PackedKeys<K> {
    columns: Vec<(Int64Array, i64, u32)>,
    nulls: Option<NullBuffer>,
    len: usize,
    key: std::marker::PhantomData<K>,
}

impl<K: PackedKey> KeySource for PackedKeys<K> {
    type Key = K;

    fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn key(&self, i: usize) -> Option<K> {
        if self.nulls.as_ref().is_some_and(|n| n.is_null(i)) {
            return None;
        }
        Some(self.columns.iter().fold(K::default(), |acc, (values, lo, shift)| acc | (K::from(values.value(i).wrapping_sub(*lo) as u64) << *shift)))
    }
}

/// Any other keys, compared in Arrow's row encoding.
struct RowKeys<'r> {
    rows: &'r Rows,
    nulls: Option<NullBuffer>,
}

impl<'r> KeySource for RowKeys<'r> {
    type Key = Row<'r>;

    fn len(&self) -> usize {
        self.rows.num_rows()
    }

    fn key(&self, i: usize) -> Option<Row<'r>> {
        if self.nulls.as_ref().is_some_and(|n| n.is_null(i)) {
            return None;
        }
        Some(self.rows.row(i))
    }
}

/// A row taking part in the search: (entity key, time, row position across batches).
type Entry<K> = (K, i64, u32);

/// One side's as-of search, generic over how keys compare.
struct Search<'a> {
    ttl_micros: Option<i64>,
    known: Option<&'a KnownAt<'a>>,
    threads: usize,
}

impl Search<'_> {
    /// Keys that do not pack as integers, in Arrow's row encoding.
    fn run_rows(&self, spine_keys: &[ArrayRef], spine_t: &Int64Array, side_keys: &[Vec<ArrayRef>], side_t: &[Int64Array]) -> Result<Vec<Option<u32>>> {
        let converter = RowConverter::new(spine_keys.iter().map(|a| SortField::new(a.data_type().clone())).collect())?;
        let spine_rows = converter.convert_columns(spine_keys)?;
        let side_rows = side_keys.iter().map(|k| converter.convert_columns(k)).collect::<std::result::Result<Vec<_>, _>>()?;
        let nulls = |columns: &[ArrayRef]| any_null(columns.iter().map(|c| c.as_ref()));
        let spine = [Source { keys: RowKeys { rows: &spine_rows, nulls: nulls(spine_keys) }, times: spine_t }];
        let side: Vec<_> =
            side_rows.iter().zip(side_keys).zip(side_t).map(|((rows, keys), times)| Source { keys: RowKeys { rows, nulls: nulls(keys) }, times }).collect();
        Ok(self.run(&spine, &side))
    }

    /// Both sides are split by a hash of the key into partitions small enough to search
    /// in cache; partitions are independent, so threads take them one at a time.
    fn run<S: KeySource>(&self, spine: &[Source<'_, S>], side: &[Source<'_, S>]) -> Vec<Option<u32>> {
        let threads = self.threads.max(1);
        let spine_rows: usize = spine.iter().map(|s| s.keys.len()).sum();
        let side_rows: usize = side.iter().map(|s| s.keys.len()).sum();
        // About 32k rows of both sides per partition.
        let parts = (spine_rows + side_rows).div_ceil(1 << 15).next_power_of_two().clamp(1, 1 << 12);
        let hasher = hashbrown::DefaultHashBuilder::default();
        let shift = 64 - parts.trailing_zeros();
        let part_of = |k: &S::Key| if parts == 1 { 0 } else { (hasher.hash_one(k) >> shift) as usize };
        let spine_parts = split(spine, &part_of, parts, threads);
        let side_parts = split(side, &part_of, parts, threads);

        let found = parallel_map(parts, threads, |q| {
            let spine = spine_parts.iter().map(|piece| piece[q].as_slice());
            let side = side_parts.iter().map(|piece| piece[q].as_slice());
            match self.known {
                None => self.latest(spine, side),
                Some(known) => self.latest_known(spine, side, known),
            }
        });
        let mut out = vec![None; spine_rows];
        for (i, j) in found.into_iter().flatten() {
            out[i as usize] = Some(j);
        }
        out
    }

    fn within_ttl(&self, spine_t: i64, feature_t: i64) -> bool {
        self.ttl_micros.is_none_or(|ttl| spine_t.saturating_sub(feature_t) <= ttl)
    }

    /// The plain join over one partition, without sorting its feature rows: each feature
    /// row is offered to the first spine row of its key at or after its time, and a
    /// running maximum along each key's spine rows (in time order) then gives every spine
    /// row the latest row offered at or before it. Returns (spine row, feature row) pairs.
    fn latest<'e, K: Ord + Hash + Copy + 'e>(
        &self,
        spine: impl Iterator<Item = &'e [Entry<K>]>,
        side: impl Iterator<Item = &'e [Entry<K>]>,
    ) -> Vec<(u32, u32)> {
        let mut rows: Vec<Entry<K>> = spine.flatten().copied().collect();
        rows.sort_unstable();
        let mut runs: hashbrown::HashMap<K, (usize, usize)> = hashbrown::HashMap::with_capacity(rows.len());
        let mut start = 0;
        for p in 1..=rows.len() {
            if p == rows.len() || rows[p].0 != rows[start].0 {
                runs.insert(rows[start].0, (start, p));
                start = p;
            }
        }
        let mut offered: Vec<Option<(i64, u32)>> = vec![None; rows.len()];
        for &(key, t, j) in side.flatten() {
            let Some(&(a, b)) = runs.get(&key) else { continue };
            let p = a + rows[a..b].partition_point(|e| e.1 < t);
            if p < b {
                offered[p] = offered[p].max(Some((t, j)));
            }
        }
        let mut found = Vec::new();
        let mut best = None;
        for (p, &(key, t, i)) in rows.iter().enumerate() {
            if p > 0 && rows[p - 1].0 != key {
                best = None;
            }
            best = best.max(offered[p]);
            if let Some((ft, j)) = best
                && self.within_ttl(t, ft)
            {
                found.push((i, j));
            }
        }
        found
    }

    /// The bitemporal join over one partition: its feature rows sorted by (key, time,
    /// position); each spine row searches them and walks back to the latest row its
    /// version held.
    fn latest_known<'e, K: Ord + Copy + 'e>(
        &self,
        spine: impl Iterator<Item = &'e [Entry<K>]>,
        side: impl Iterator<Item = &'e [Entry<K>]>,
        known: &KnownAt<'_>,
    ) -> Vec<(u32, u32)> {
        let mut entries: Vec<Entry<K>> = side.flatten().copied().collect();
        entries.sort_unstable();
        let mut found = Vec::new();
        for &(key, t, i) in spine.flatten() {
            let Some(v) = known.spine_version[i as usize] else { continue };
            // Walk back from the last entry not after (key, t): later times first, and of
            // equal times the later position first.
            let end = entries.partition_point(|(k, et, _)| (*k, *et) <= (key, t));
            let chosen = entries[..end]
                .iter()
                .rev()
                .take_while(|(k, et, _)| *k == key && self.within_ttl(t, *et))
                .find(|(_, _, j)| known.added[*j as usize] <= v && v < known.removed[*j as usize]);
            if let Some(e) = chosen {
                found.push((i, e.2));
            }
        }
        found
    }
}

/// Rows with a key and a time, split into `parts` partitions by `part_of`, in pieces
/// of contiguous rows (in row order) so that threads share the work.
fn split<S: KeySource>(sources: &[Source<'_, S>], part_of: &(impl Fn(&S::Key) -> usize + Sync), parts: usize, threads: usize) -> Vec<Vec<Vec<Entry<S::Key>>>> {
    let total: usize = sources.iter().map(|s| s.keys.len()).sum();
    let size = total.div_ceil(threads.max(1) * 4).max(1 << 16);
    let mut pieces = Vec::new();
    let mut offset = 0;
    for source in sources {
        let n = source.keys.len();
        for first in (0..n).step_by(size) {
            pieces.push((source, first..(first + size).min(n), offset));
        }
        offset += n;
    }
    parallel_map(pieces.len(), threads, |p| {
        let (source, rows, offset) = (pieces[p].0, pieces[p].1.clone(), pieces[p].2);
        let mut buckets: Vec<Vec<Entry<S::Key>>> = (0..parts).map(|_| Vec::with_capacity(rows.len() / parts * 9 / 8 + 8)).collect();
        for j in rows {
            let (Some(key), true) = (source.keys.key(j), source.times.is_valid(j)) else { continue };
            buckets[part_of(&key)].push((key, source.times.value(j), (offset + j) as u32));
        }
        buckets
    })
}

/// Rows per row group of the Parquet files training sets and spines are kept in.
const ROW_GROUP_ROWS: usize = 1 << 20;

fn writer_properties() -> parquet::file::properties::WriterProperties {
    parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(parquet::basic::ZstdLevel::default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by("lakeledger".into())
        .build()
}

/// Encodes a batch as one Parquet file, the same bytes for the same rows: fixed writer
/// settings, no timestamps, one row group per 1M rows. The columns of a row group are
/// encoded on up to `threads` threads; each column's bytes do not depend on how many, so
/// the file is exactly what a single-threaded writer gives.
pub fn deterministic_parquet(batch: &RecordBatch, threads: usize) -> Result<Vec<u8>> {
    use parquet::arrow::arrow_writer::{ArrowColumnChunk, ArrowWriter, compute_leaves};

    let schema = batch.schema();
    let (mut file, factory) = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(writer_properties()))?.into_serialized_writer()?;
    let mut offset = 0;
    let mut row_group = 0;
    while offset < batch.num_rows() {
        let part = batch.slice(offset, ROW_GROUP_ROWS.min(batch.num_rows() - offset));
        // One writer per leaf column, in schema order, each paired with its leaf data.
        let mut work = Vec::new();
        let mut writers = factory.create_column_writers(row_group)?.into_iter();
        for (field, column) in schema.fields().iter().zip(part.columns()) {
            for leaf in compute_leaves(field, column)? {
                let writer = writers.next().ok_or_else(|| Error::InvalidSchema(format!("column `{}` has more leaves than its schema", field.name())))?;
                work.push((writer, leaf));
            }
        }
        let work: Vec<std::sync::Mutex<Option<_>>> = work.into_iter().map(|w| std::sync::Mutex::new(Some(w))).collect();
        let chunks = parallel_map(work.len(), threads, |c| -> Result<ArrowColumnChunk> {
            let (mut writer, leaf) = work[c].lock().ok().and_then(|mut w| w.take()).expect("each column is encoded once");
            writer.write(&leaf)?;
            Ok(writer.close()?)
        });
        let mut group = file.next_row_group()?;
        for chunk in chunks {
            chunk?.append_to_row_group(&mut group)?;
        }
        group.close()?;
        offset += part.num_rows();
        row_group += 1;
    }
    Ok(file.into_inner()?)
}

/// Orders a spine by (time, then every other column), so a training set's row order is
/// defined whatever order the spine arrived in. Nulls sort first.
pub fn sort_spine(spine: &RecordBatch, spine_time: &str) -> Result<RecordBatch> {
    let time = column(spine, spine_time, "the spine")?.clone();
    let others: Vec<ArrayRef> =
        spine.schema().fields().iter().filter(|f| f.name() != spine_time).filter_map(|f| spine.column_by_name(f.name()).cloned()).collect();
    let idx = match raw_times(&time) {
        Some(t) => by_time_then_rows(&t, &others)?,
        None => {
            let mut columns = vec![time];
            columns.extend(others);
            let converter = RowConverter::new(columns.iter().map(|a| SortField::new(a.data_type().clone())).collect())?;
            let rows = converter.convert_columns(&columns)?;
            let mut idx: Vec<u32> = (0..spine.num_rows() as u32).collect();
            idx.sort_by(|a, b| rows.row(*a as usize).cmp(&rows.row(*b as usize)));
            idx
        }
    };
    if idx.iter().enumerate().all(|(p, &i)| p == i as usize) {
        return Ok(spine.clone());
    }
    let indices = UInt32Array::from(idx);
    let cols = spine.columns().iter().map(|c| take(c.as_ref(), &indices, None)).collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(spine.schema(), cols)?)
}

/// Row order by integer times (nulls first), then by `others` in row encoding; only the
/// rows that share a time are row-encoded.
fn by_time_then_rows(t: &Int64Array, others: &[ArrayRef]) -> Result<Vec<u32>> {
    let mut idx: Vec<u32> = (0..t.len() as u32).filter(|&i| t.is_null(i as usize)).collect();
    let mut timed: Vec<(i64, u32)> = (0..t.len()).filter(|&i| t.is_valid(i)).map(|i| (t.value(i), i as u32)).collect();
    timed.sort_unstable();
    // Runs of rows with equal times (the nulls are one run), as ranges of `idx`.
    let mut ties = Vec::new();
    if idx.len() > 1 {
        ties.push(0..idx.len());
    }
    let mut start = 0;
    for p in 1..=timed.len() {
        if p == timed.len() || timed[p].0 != timed[start].0 {
            if p - start > 1 {
                ties.push(idx.len() + start..idx.len() + p);
            }
            start = p;
        }
    }
    idx.extend(timed.iter().map(|e| e.1));
    if ties.is_empty() || others.is_empty() {
        return Ok(idx);
    }
    let tied: Vec<u32> = ties.iter().flat_map(|r| idx[r.clone()].iter().copied()).collect();
    let tied_indices = UInt32Array::from(tied.clone());
    let columns = others.iter().map(|c| take(c.as_ref(), &tied_indices, None)).collect::<std::result::Result<Vec<_>, _>>()?;
    let converter = RowConverter::new(columns.iter().map(|a| SortField::new(a.data_type().clone())).collect())?;
    let rows = converter.convert_columns(&columns)?;
    let mut at = 0;
    for range in ties {
        let mut local: Vec<usize> = (at..at + range.len()).collect();
        local.sort_by(|a, b| rows.row(*a).cmp(&rows.row(*b)));
        for (slot, q) in idx[range.clone()].iter_mut().zip(local) {
            *slot = tied[q];
        }
        at += range.len();
    }
    Ok(idx)
}

/// A time column's values as integers that order as the times do, for the types stored
/// as one integer per value; `None` for other types.
fn raw_times(time: &ArrayRef) -> Option<Int64Array> {
    match time.data_type() {
        DataType::Timestamp(..) | DataType::Date64 | DataType::Date32 | DataType::Int64 | DataType::Int32 => {
            let ints = match time.data_type() {
                DataType::Date32 => cast(&cast(time, &DataType::Int32).ok()?, &DataType::Int64).ok()?,
                _ => cast(time, &DataType::Int64).ok()?,
            };
            Some(ints.as_primitive::<arrow::datatypes::Int64Type>().clone())
        }
        _ => None,
    }
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

    /// Joins with integer keys (packed) and again with the keys as text (row-encoded),
    /// with the feature rows in one batch and in several; all must agree.
    fn join(s: &RecordBatch, f: &RecordBatch, ttl: Option<i64>, known: Option<KnownAt<'_>>) -> Vec<Option<i64>> {
        let keys = vec!["id".to_string()];
        let feats = vec!["v".to_string()];
        let run = |s: &RecordBatch, f: &RecordBatch, threads: usize, pieces: usize| {
            let known = known.as_ref().map(|k| KnownAt { added: k.added, removed: k.removed, spine_version: k.spine_version });
            let schema = f.schema();
            let step = f.num_rows().div_ceil(pieces).max(1);
            let batches: Vec<RecordBatch> = (0..f.num_rows()).step_by(step).map(|a| f.slice(a, step.min(f.num_rows() - a))).collect();
            let side = FeatureSide { name: "g", batches: &batches, schema: &schema, keys: &keys, event_time: "ts", features: &feats, ttl_micros: ttl, known };
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
        let packed = run(s, f, 1, 1);
        assert_eq!(run(s, f, 2, 3), packed, "rows in several batches give the same matches");
        assert_eq!(run(&as_text(s), &as_text(f), 3, 2), packed, "row-encoded keys agree with packed ones");
        packed
    }

    /// The order the spine sort defines: every column in row encoding, time first.
    fn reference_spine_order(s: &RecordBatch, time: &str) -> Vec<Vec<u8>> {
        let mut columns = vec![s.column_by_name(time).unwrap().clone()];
        columns.extend(s.schema().fields().iter().filter(|f| f.name() != time).map(|f| s.column_by_name(f.name()).unwrap().clone()));
        let converter = RowConverter::new(columns.iter().map(|a| SortField::new(a.data_type().clone())).collect()).unwrap();
        let rows = converter.convert_columns(&columns).unwrap();
        let mut out: Vec<Vec<u8>> = (0..rows.num_rows()).map(|i| rows.row(i).as_ref().to_vec()).collect();
        out.sort();
        out
    }

    #[test]
    fn parquet_encoding_does_not_depend_on_threads() {
        let n = (1 << 20) + 1000;
        let batch = RecordBatch::try_from_iter(vec![
            ("id", Arc::new(Int64Array::from_iter((0..n as i64).map(|i| (i % 7 != 0).then_some(i * 31 % 1000)))) as ArrayRef),
            ("name", Arc::new(arrow::array::StringArray::from_iter_values((0..n).map(|i| format!("n{}", i % 300))))),
            ("t", Arc::new(TimestampMicrosecondArray::from_iter_values(0..n as i64).with_timezone("UTC"))),
        ])
        .unwrap();
        let one = deterministic_parquet(&batch, 1).unwrap();
        assert_eq!(deterministic_parquet(&batch, 3).unwrap(), one);
        // The same bytes as the plain writer with the same settings.
        let mut plain = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut plain, batch.schema(), Some(writer_properties())).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        assert_eq!(one, plain);
        let back = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(one)).unwrap();
        assert_eq!(back.metadata().num_row_groups(), 2);
        let rows: usize = back.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, n);
    }

    proptest! {
        #[test]
        fn spine_sort_orders_by_time_then_the_other_columns(
            rows in proptest::collection::vec((proptest::option::weighted(0.8, 0i64..6), proptest::option::weighted(0.8, 0i64..4), 0i64..3), 0..60),
        ) {
            let s = RecordBatch::try_from_iter(vec![
                ("k", Arc::new(Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())) as ArrayRef),
                ("t", Arc::new(TimestampMicrosecondArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>()).with_timezone("UTC")) as ArrayRef),
                ("label", Arc::new(Int64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())) as ArrayRef),
            ])
            .unwrap();
            let sorted = sort_spine(&s, "t").unwrap();
            let expected = reference_spine_order(&s, "t");
            let columns = vec![sorted.column_by_name("t").unwrap().clone(), sorted.column_by_name("k").unwrap().clone(), sorted.column_by_name("label").unwrap().clone()];
            let converter = RowConverter::new(columns.iter().map(|a| SortField::new(a.data_type().clone())).collect()).unwrap();
            let got = converter.convert_columns(&columns).unwrap();
            prop_assert_eq!((0..got.num_rows()).map(|i| got.row(i).as_ref().to_vec()).collect::<Vec<_>>(), expected);
        }
    }

    #[test]
    fn packed_keys_tell_every_key_apart() {
        let a: ArrayRef = Arc::new(arrow::array::Int32Array::from(vec![Some(-1), Some(1), Some(-1), None]));
        let b: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), Some(-1), Some(1), Some(0)]));
        let spine = integer_keys(&[a, b]).unwrap().unwrap();
        let times = [Int64Array::from(vec![0; 4])];
        // Small ranges pack into a few bits.
        let plan = KeyPacking::plan(&spine, &[]).unwrap();
        assert_eq!(plan.bits, 4);
        let k = &plan.sources::<u64>(std::slice::from_ref(&spine), &times)[0].keys;
        assert_eq!(k.key(0), k.key(2));
        assert_ne!(k.key(0), k.key(1));
        assert_eq!(k.key(3), None);
        // The other side's values widen the ranges; the extremes of i64 still pack.
        let wide: ArrayRef = Arc::new(Int64Array::from(vec![i64::MIN, i64::MAX]));
        let narrow: ArrayRef = Arc::new(arrow::array::Int32Array::from(vec![-1, 1]));
        let side = integer_keys(&[narrow, wide]).unwrap().unwrap();
        let plan = KeyPacking::plan(&spine, std::slice::from_ref(&side)).unwrap();
        assert_eq!(plan.bits, 66);
        let s = &plan.sources::<u128>(std::slice::from_ref(&spine), &times)[0].keys;
        let side_times = [Int64Array::from(vec![0; 2])];
        let f = &plan.sources::<u128>(&[side], &side_times)[0].keys;
        let all = [s.key(0), s.key(1), f.key(0), f.key(1)];
        assert!(all.iter().all(Option::is_some));
        assert_eq!(all.iter().collect::<std::collections::HashSet<_>>().len(), 4, "different keys stay different");
        let text: ArrayRef = Arc::new(arrow::array::StringArray::from(vec!["x"]));
        assert!(integer_keys(&[text]).unwrap().is_none(), "text keys use the row encoding");
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

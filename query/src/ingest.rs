//! Turning uploaded bodies into validated Arrow batches that match a feature group schema.
//!
//! Bodies arrive in chunks; each decoder is push-based so that an upload never has to be
//! held in memory whole. Every error names the column, the expected type and the first
//! offending row (1-based, counting data rows only).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanBuilder, Date32Builder, Float32Builder, Float64Builder, Int32Builder,
    Int64Builder, ListBuilder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder, new_null_array,
};
use arrow::buffer::Buffer;
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::schema::{ColumnType, FeatureSchema};

/// Runs a third-party decoder on a caller's bytes. Arrow's IPC and Parquet readers panic
/// on some malformed inputs (found by fuzzing: a validity buffer shorter than its array, a
/// field of type NONE in an embedded schema) instead of returning an error; such a panic
/// is the caller's malformed body, answered as one, not a server failure. Nothing the
/// decoder touched outlives a refused body.
fn guarded<T>(format: &'static str, decode: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|panic| {
        let why = panic.downcast_ref::<String>().map(String::as_str).or_else(|| panic.downcast_ref::<&str>().copied()).unwrap_or("no reason given");
        Err(Error::Malformed { format, detail: format!("the {format} decoder could not read it: {}", truncate(why, 200)) })
    })
}

/// Checks that a body arriving in chunks is UTF-8 (arrow's CSV decoder assumes it and
/// does not check every chunking), carrying a character split between chunks.
#[derive(Default)]
struct Utf8Stream {
    carry: Vec<u8>,
}

impl Utf8Stream {
    /// `Err(offset)`: the body is not UTF-8 at about this byte of the chunk.
    fn push(&mut self, chunk: &[u8]) -> std::result::Result<(), usize> {
        let joined;
        let data = if self.carry.is_empty() {
            chunk
        } else {
            joined = [std::mem::take(&mut self.carry).as_slice(), chunk].concat();
            &joined
        };
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            // Cut inside a character: the rest of it comes with the next chunk.
            Err(e) if e.error_len().is_none() => {
                self.carry = data[e.valid_up_to()..].to_vec();
                Ok(())
            }
            Err(e) => Err(e.valid_up_to()),
        }
    }

    fn finish(&self) -> std::result::Result<(), usize> {
        if self.carry.is_empty() { Ok(()) } else { Err(0) }
    }
}

/// How many rows a decoder gathers before it emits a batch.
pub const BATCH_ROWS: usize = 8192;

/// The body formats ingest accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngestFormat {
    /// A JSON array of objects, or newline-delimited objects.
    Json,
    Csv,
    ArrowIpc,
    Parquet,
}

impl IngestFormat {
    /// Maps a `Content-Type` (parameters ignored) to a format.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/json" | "application/x-ndjson" | "application/jsonl" | "application/json-lines" => {
                Some(IngestFormat::Json)
            }
            "text/csv" => Some(IngestFormat::Csv),
            "application/vnd.apache.arrow.stream" => Some(IngestFormat::ArrowIpc),
            "application/vnd.apache.parquet" | "application/x-parquet" | "application/parquet" => {
                Some(IngestFormat::Parquet)
            }
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            IngestFormat::Json => "JSON",
            IngestFormat::Csv => "CSV",
            IngestFormat::ArrowIpc => "Arrow IPC",
            IngestFormat::Parquet => "Parquet",
        }
    }
}

/// Validates batches of any origin against a feature group schema and converts them to
/// its exact Arrow types. Keeps a running row count so errors name rows of the whole upload.
pub struct Conformer {
    schema: FeatureSchema,
    target: SchemaRef,
    rows_seen: u64,
}

impl Conformer {
    pub fn new(schema: FeatureSchema) -> Self {
        let target = schema.arrow_schema();
        Conformer { schema, target, rows_seen: 0 }
    }

    pub fn target_schema(&self) -> SchemaRef {
        self.target.clone()
    }

    pub fn rows_seen(&self) -> u64 {
        self.rows_seen
    }

    /// Converts one batch. Columns are matched by name; feature columns absent from the
    /// upload are filled with nulls; keys and event time must be present and non-null.
    pub fn conform(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        let first_row = self.rows_seen + 1;
        let input = batch.schema();
        for f in input.fields() {
            if self.target.field_with_name(f.name()).is_err() {
                return Err(Error::UnknownColumn { column: f.name().clone() });
            }
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.target.fields().len());
        for field in self.target.fields() {
            let name = field.name();
            let dtype = self.schema.column(name).map(|c| c.dtype).expect("target built from schema");
            let array = match input.index_of(name) {
                Ok(i) => convert_array(batch.column(i), dtype, name, first_row)?,
                Err(_) if !field.is_nullable() => {
                    return Err(Error::MissingColumn { column: name.clone() });
                }
                Err(_) => new_null_array(field.data_type(), batch.num_rows()),
            };
            if !field.is_nullable() && array.null_count() > 0 {
                let row = (0..array.len()).find(|&i| array.is_null(i)).unwrap_or(0);
                return Err(Error::InvalidValue {
                    column: name.clone(),
                    expected: format!("non-null {dtype}"),
                    row: first_row + row as u64,
                    detail: "entity keys and the event time may not be null".into(),
                });
            }
            columns.push(array);
        }
        self.rows_seen += batch.num_rows() as u64;
        Ok(RecordBatch::try_new(self.target.clone(), columns)?)
    }
}

fn is_string(dt: &DataType) -> bool {
    matches!(dt, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// Whether a value of `from` can become `to` without losing meaning (range is checked
/// separately). Floats to integers are refused: silent truncation would corrupt features.
fn convertible(from: &DataType, to: ColumnType) -> bool {
    use DataType::*;
    if matches!(from, Null) || is_string(from) {
        return true;
    }
    let int = matches!(from, Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64);
    let float = matches!(from, Float16 | Float32 | Float64);
    match to {
        ColumnType::Bool => matches!(from, Boolean),
        ColumnType::Int32 | ColumnType::Int64 => int,
        ColumnType::Float32 | ColumnType::Float64 => int || float,
        ColumnType::String => false,
        ColumnType::Timestamp => matches!(from, Timestamp(_, _) | Date32 | Date64),
        ColumnType::Date => matches!(from, Date32 | Date64),
        ColumnType::ListFloat32 => match from {
            List(f) | LargeList(f) | FixedSizeList(f, _) => {
                matches!(f.data_type(), Float16 | Float32 | Float64 | Null)
            }
            _ => false,
        },
    }
}

/// Converts one column to the declared type, naming the first row that does not fit.
fn convert_array(array: &ArrayRef, dtype: ColumnType, column: &str, first_row: u64) -> Result<ArrayRef> {
    let target = dtype.arrow_type();
    if array.data_type() == &target {
        return Ok(array.clone());
    }
    if !convertible(array.data_type(), dtype) {
        return Err(Error::InvalidValue {
            column: column.into(),
            expected: dtype.to_string(),
            row: first_row,
            detail: format!("values of type {} cannot be stored as {dtype}", array.data_type()),
        });
    }
    if is_string(array.data_type()) && dtype != ColumnType::String {
        return parse_strings(array, dtype, column, first_row);
    }
    let converted = cast_with_options(array, &target, &CastOptions { safe: true, ..Default::default() })?;
    check_no_new_nulls(array, &converted, dtype, column, first_row, |_| "value out of range".to_string())?;
    Ok(converted)
}

fn check_no_new_nulls(
    before: &ArrayRef,
    after: &ArrayRef,
    dtype: ColumnType,
    column: &str,
    first_row: u64,
    describe: impl Fn(usize) -> String,
) -> Result<()> {
    if after.null_count() == before.null_count() {
        return Ok(());
    }
    let row = (0..after.len()).find(|&i| after.is_null(i) && !before.is_null(i)).unwrap_or(0);
    Err(Error::InvalidValue {
        column: column.into(),
        expected: dtype.to_string(),
        row: first_row + row as u64,
        detail: describe(row),
    })
}

/// Text to a typed column: empty strings are nulls; anything else must parse.
fn parse_strings(array: &ArrayRef, dtype: ColumnType, column: &str, first_row: u64) -> Result<ArrayRef> {
    let strings = cast_with_options(array, &DataType::Utf8, &CastOptions::default())?;
    let strings = strings.as_any().downcast_ref::<arrow::array::StringArray>().expect("cast to Utf8");
    let values: Vec<Option<&str>> = strings.iter().map(|s| s.map(str::trim).filter(|s| !s.is_empty())).collect();
    let bad = |row: usize, text: &str| Error::InvalidValue {
        column: column.into(),
        expected: dtype.to_string(),
        row: first_row + row as u64,
        detail: format!("cannot parse {:?}", truncate(text, 64)),
    };
    let out: ArrayRef = match dtype {
        ColumnType::ListFloat32 => {
            let mut b = ListBuilder::new(Float32Builder::new()).with_field(list_item_field());
            for (row, v) in values.iter().enumerate() {
                match v {
                    None => b.append_null(),
                    Some(text) => {
                        let parsed: Vec<Option<f64>> = serde_json::from_str(text).map_err(|_| bad(row, text))?;
                        for x in parsed {
                            b.values().append_option(x.map(|x| x as f32));
                        }
                        b.append(true);
                    }
                }
            }
            Arc::new(b.finish())
        }
        ColumnType::Timestamp => {
            let mut b = TimestampMicrosecondBuilder::new().with_timezone(crate::schema::UTC);
            for (row, v) in values.iter().enumerate() {
                match v {
                    None => b.append_null(),
                    Some(text) => b.append_value(parse_timestamp(text).ok_or_else(|| bad(row, text))?),
                }
            }
            Arc::new(b.finish())
        }
        _ => {
            let cleaned: ArrayRef = Arc::new(arrow::array::StringArray::from(values.clone()));
            let target = dtype.arrow_type();
            let out = cast_with_options(&cleaned, &target, &CastOptions { safe: true, ..Default::default() })?;
            check_no_new_nulls(&cleaned, &out, dtype, column, first_row, |row| {
                format!("cannot parse {:?}", truncate(values[row].unwrap_or(""), 64))
            })?;
            out
        }
    };
    Ok(out)
}

fn list_item_field() -> Arc<Field> {
    Arc::new(Field::new("element", DataType::Float32, true))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// RFC 3339 timestamps; a value without an offset is taken as UTC; a bare date is midnight UTC.
pub fn parse_timestamp(text: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_micros());
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(text, fmt) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    if let Ok(t) = chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z") {
        return Some(t.timestamp_micros());
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc().timestamp_micros())
}

/// A push-based decoder for one body format. Chunks go in; batches come out once enough
/// rows have gathered; `finish` returns the rest and checks that the body was complete.
pub trait BodyDecoder: Send {
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<RecordBatch>>;
    fn finish(&mut self) -> Result<Vec<RecordBatch>>;
}

/// Creates the decoder for a streaming format. Parquet needs its footer first and is
/// read from a spooled file instead (see [`parquet_batches`]).
pub fn decoder_for(format: IngestFormat, schema: &FeatureSchema) -> Option<Box<dyn BodyDecoder>> {
    match format {
        IngestFormat::Json => Some(Box::new(JsonRowsDecoder::new(schema.clone()))),
        IngestFormat::Csv => Some(Box::new(CsvDecoder::new())),
        IngestFormat::ArrowIpc => Some(Box::new(IpcDecoder::new())),
        IngestFormat::Parquet => None,
    }
}

// ---------------------------------------------------------------------------------------
// JSON

/// Splits a byte stream into top-level JSON objects, accepting either one array of
/// objects or objects separated by whitespace (NDJSON).
#[derive(Default)]
struct ObjectSplitter {
    buf: Vec<u8>,
    /// Offset where the current object started, while inside one.
    start: Option<usize>,
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// Seen the opening `[` of an array body.
    in_array: bool,
    array_closed: bool,
    /// After an object inside an array, a `,` or `]` must come next.
    expect_separator: bool,
    scanned: usize,
    objects_seen: u64,
}

impl ObjectSplitter {
    fn malformed(&self, detail: impl Into<String>) -> Error {
        Error::Malformed { format: "JSON", detail: format!("{} (after row {})", detail.into(), self.objects_seen) }
    }

    /// Appends bytes and returns the complete objects found so far.
    fn push(&mut self, chunk: &[u8], out: &mut Vec<Vec<u8>>) -> Result<()> {
        self.buf.extend_from_slice(chunk);
        let mut i = self.scanned;
        while i < self.buf.len() {
            let b = self.buf[i];
            if let Some(start) = self.start {
                if self.in_string {
                    if self.escaped {
                        self.escaped = false;
                    } else if b == b'\\' {
                        self.escaped = true;
                    } else if b == b'"' {
                        self.in_string = false;
                    }
                } else {
                    match b {
                        b'"' => self.in_string = true,
                        b'{' | b'[' => self.depth += 1,
                        b'}' | b']' => {
                            self.depth -= 1;
                            if self.depth == 0 {
                                out.push(self.buf[start..=i].to_vec());
                                self.objects_seen += 1;
                                self.start = None;
                                self.expect_separator = self.in_array;
                            }
                        }
                        _ => {}
                    }
                }
            } else {
                match b {
                    b' ' | b'\n' | b'\r' | b'\t' => {}
                    _ if self.array_closed => return Err(self.malformed("unexpected data after the closing `]`")),
                    b'[' if !self.in_array && self.objects_seen == 0 => self.in_array = true,
                    b',' if self.in_array && self.expect_separator => self.expect_separator = false,
                    b']' if self.in_array => self.array_closed = true,
                    b'{' if !self.expect_separator => {
                        self.start = Some(i);
                        self.depth = 1;
                    }
                    _ => {
                        return Err(self.malformed(format!(
                            "expected a JSON object per row, found `{}`",
                            char::from(b).escape_default()
                        )))
                    }
                }
            }
            i += 1;
        }
        // Drop consumed bytes so the buffer holds at most one partial object.
        let keep_from = self.start.unwrap_or(self.buf.len());
        self.buf.drain(..keep_from);
        if let Some(s) = self.start.as_mut() {
            *s = 0;
        }
        self.scanned = self.buf.len();
        Ok(())
    }

    fn finish(&self) -> Result<()> {
        if self.start.is_some() {
            return Err(self.malformed("the body ends inside an object"));
        }
        if self.in_array && !self.array_closed {
            return Err(self.malformed("the body ends before the closing `]`"));
        }
        Ok(())
    }
}

struct JsonRowsDecoder {
    columns: Vec<(String, ColumnType)>,
    target: SchemaRef,
    splitter: ObjectSplitter,
    rows: Vec<serde_json::Map<String, Value>>,
    rows_emitted: u64,
}

impl JsonRowsDecoder {
    fn new(schema: FeatureSchema) -> Self {
        let columns = schema.all_columns().into_iter().map(|c| (c.name, c.dtype)).collect();
        let target = schema.arrow_schema();
        JsonRowsDecoder { columns, target, splitter: ObjectSplitter::default(), rows: Vec::new(), rows_emitted: 0 }
    }

    fn build(&mut self) -> Result<Option<RecordBatch>> {
        if self.rows.is_empty() {
            return Ok(None);
        }
        let rows = std::mem::take(&mut self.rows);
        let first_row = self.rows_emitted + 1;
        for row in &rows {
            if let Some(k) = row.keys().find(|k| !self.columns.iter().any(|(c, _)| c == *k)) {
                return Err(Error::UnknownColumn { column: k.clone() });
            }
        }
        let mut arrays = Vec::with_capacity(self.columns.len());
        for (name, dtype) in &self.columns {
            let values: Vec<&Value> = rows.iter().map(|r| r.get(name).unwrap_or(&Value::Null)).collect();
            arrays.push(json_column(&values, *dtype, name, first_row)?);
        }
        self.rows_emitted += rows.len() as u64;
        Ok(Some(RecordBatch::try_new(relaxed(&self.target), arrays)?))
    }
}

/// The target schema with every column nullable: null checks for keys happen in the
/// [`Conformer`], which reports the row.
fn relaxed(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
    ))
}

impl BodyDecoder for JsonRowsDecoder {
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<RecordBatch>> {
        let mut objects = Vec::new();
        self.splitter.push(chunk, &mut objects)?;
        let mut out = Vec::new();
        for bytes in objects {
            let row_no = self.rows_emitted + self.rows.len() as u64 + 1;
            let map: serde_json::Map<String, Value> = serde_json::from_slice(&bytes).map_err(|e| Error::Malformed {
                format: "JSON",
                detail: format!("row {row_no}: {e}"),
            })?;
            self.rows.push(map);
            if self.rows.len() >= BATCH_ROWS {
                out.extend(self.build()?);
            }
        }
        Ok(out)
    }

    fn finish(&mut self) -> Result<Vec<RecordBatch>> {
        self.splitter.finish()?;
        Ok(self.build()?.into_iter().collect())
    }
}

fn json_column(values: &[&Value], dtype: ColumnType, column: &str, first_row: u64) -> Result<ArrayRef> {
    let bad = |row: usize, v: &Value, why: &str| Error::InvalidValue {
        column: column.into(),
        expected: dtype.to_string(),
        row: first_row + row as u64,
        detail: format!("{why}: {}", truncate(&v.to_string(), 64)),
    };
    macro_rules! ints {
        ($builder:ty, $t:ty) => {{
            let mut b = <$builder>::with_capacity(values.len());
            for (row, v) in values.iter().enumerate() {
                match v {
                    Value::Null => b.append_null(),
                    Value::Number(n) => {
                        let x = n.as_i64().ok_or_else(|| bad(row, v, "not an integer"))?;
                        b.append_value(<$t>::try_from(x).map_err(|_| bad(row, v, "out of range"))?);
                    }
                    Value::String(s) => {
                        let x: $t = s.trim().parse().map_err(|_| bad(row, v, "not an integer"))?;
                        b.append_value(x);
                    }
                    _ => return Err(bad(row, v, "not an integer")),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    macro_rules! floats {
        ($builder:ty, $t:ty) => {{
            let mut b = <$builder>::with_capacity(values.len());
            for (row, v) in values.iter().enumerate() {
                match v {
                    Value::Null => b.append_null(),
                    Value::Number(n) => b.append_value(n.as_f64().ok_or_else(|| bad(row, v, "not a number"))? as $t),
                    _ => return Err(bad(row, v, "not a number")),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    Ok(match dtype {
        ColumnType::Int32 => ints!(Int32Builder, i32),
        ColumnType::Int64 => ints!(Int64Builder, i64),
        ColumnType::Float32 => floats!(Float32Builder, f32),
        ColumnType::Float64 => floats!(Float64Builder, f64),
        ColumnType::Bool => {
            let mut b = BooleanBuilder::with_capacity(values.len());
            for (row, v) in values.iter().enumerate() {
                match v {
                    Value::Null => b.append_null(),
                    Value::Bool(x) => b.append_value(*x),
                    _ => return Err(bad(row, v, "not a boolean")),
                }
            }
            Arc::new(b.finish())
        }
        ColumnType::String => {
            let mut b = StringBuilder::new();
            for (row, v) in values.iter().enumerate() {
                match v {
                    Value::Null => b.append_null(),
                    Value::String(s) => b.append_value(s),
                    Value::Number(n) => b.append_value(n.to_string()),
                    _ => return Err(bad(row, v, "not a string")),
                }
            }
            Arc::new(b.finish())
        }
        ColumnType::Timestamp => {
            let mut b = TimestampMicrosecondBuilder::with_capacity(values.len()).with_timezone(crate::schema::UTC);
            for (row, v) in values.iter().enumerate() {
                match v {
                    Value::Null => b.append_null(),
                    Value::String(s) => b.append_value(parse_timestamp(s).ok_or_else(|| bad(row, v, "not an RFC 3339 timestamp"))?),
                    _ => return Err(bad(row, v, "not an RFC 3339 timestamp string")),
                }
            }
            Arc::new(b.finish())
        }
        ColumnType::Date => {
            let mut b = Date32Builder::with_capacity(values.len());
            let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch");
            for (row, v) in values.iter().enumerate() {
                match v {
                    Value::Null => b.append_null(),
                    Value::String(s) => {
                        let d = chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
                            .map_err(|_| bad(row, v, "not a YYYY-MM-DD date"))?;
                        b.append_value((d - epoch).num_days() as i32);
                    }
                    _ => return Err(bad(row, v, "not a YYYY-MM-DD date string")),
                }
            }
            Arc::new(b.finish())
        }
        ColumnType::ListFloat32 => {
            let mut b = ListBuilder::new(Float32Builder::new()).with_field(list_item_field());
            for (row, v) in values.iter().enumerate() {
                match v {
                    Value::Null => b.append_null(),
                    Value::Array(items) => {
                        for item in items {
                            match item {
                                Value::Null => b.values().append_null(),
                                Value::Number(n) => b.values().append_value(n.as_f64().unwrap_or(f64::NAN) as f32),
                                _ => return Err(bad(row, v, "not a list of numbers")),
                            }
                        }
                        b.append(true);
                    }
                    _ => return Err(bad(row, v, "not a list of numbers")),
                }
            }
            Arc::new(b.finish())
        }
    })
}

// ---------------------------------------------------------------------------------------
// CSV

/// CSV with a header row. Every column is first read as text, then parsed per column so
/// that errors can name the column and row rather than a byte offset.
struct CsvDecoder {
    header: Option<Vec<String>>,
    pending: Vec<u8>,
    decoder: Option<arrow::csv::reader::Decoder>,
    rows_emitted: u64,
    utf8: Utf8Stream,
}

impl CsvDecoder {
    fn new() -> Self {
        CsvDecoder { header: None, pending: Vec::new(), decoder: None, rows_emitted: 0, utf8: Utf8Stream::default() }
    }

    fn malformed(&self, e: impl std::fmt::Display) -> Error {
        Error::Malformed { format: "CSV", detail: format!("near row {}: {e}", self.rows_emitted + 1) }
    }

    fn start(&mut self, header_line: &[u8]) -> Result<()> {
        let line = std::str::from_utf8(header_line).map_err(|_| self.malformed("the header is not UTF-8"))?;
        let names: Vec<String> = line
            .trim_end_matches(['\r', '\n'])
            .trim_start_matches('\u{feff}')
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_string())
            .collect();
        if names.iter().any(String::is_empty) {
            return Err(self.malformed("the header has an empty column name"));
        }
        let fields: Vec<Field> = names.iter().map(|n| Field::new(n, DataType::Utf8, true)).collect();
        let decoder = arrow::csv::ReaderBuilder::new(Arc::new(Schema::new(fields)))
            .with_header(true)
            .with_batch_size(BATCH_ROWS)
            .build_decoder();
        self.header = Some(names);
        self.decoder = Some(decoder);
        Ok(())
    }

    /// Feeds bytes to the arrow decoder, flushing full batches.
    fn feed(&mut self, mut data: &[u8], out: &mut Vec<RecordBatch>) -> Result<()> {
        while !data.is_empty() {
            let decoder = self.decoder.as_mut().expect("started");
            let read = decoder.decode(data).map_err(|e| Error::Malformed { format: "CSV", detail: e.to_string() })?;
            data = &data[read..];
            if read == 0 || decoder.capacity() == 0 {
                self.flush(out)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self, out: &mut Vec<RecordBatch>) -> Result<()> {
        let decoder = self.decoder.as_mut().expect("started");
        let batch = decoder.flush().map_err(|e| Error::Malformed { format: "CSV", detail: e.to_string() })?;
        if let Some(b) = batch {
            self.rows_emitted += b.num_rows() as u64;
            out.push(b);
        }
        Ok(())
    }
}

impl BodyDecoder for CsvDecoder {
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        self.utf8.push(chunk).map_err(|_| self.malformed("the body is not UTF-8"))?;
        if self.header.is_none() {
            self.pending.extend_from_slice(chunk);
            let Some(nl) = self.pending.iter().position(|&b| b == b'\n') else {
                if self.pending.len() > 1 << 20 {
                    return Err(self.malformed("the header line is longer than 1 MiB"));
                }
                return Ok(out);
            };
            let pending = std::mem::take(&mut self.pending);
            self.start(&pending[..nl])?;
            self.feed(&pending, &mut out)?;
            return Ok(out);
        }
        self.feed(chunk, &mut out)?;
        Ok(out)
    }

    fn finish(&mut self) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        self.utf8.finish().map_err(|_| self.malformed("the body ends inside a UTF-8 character"))?;
        if self.header.is_none() {
            if self.pending.iter().all(|b| b.is_ascii_whitespace()) {
                return Err(self.malformed("the body is empty; a header row is required"));
            }
            let pending = std::mem::take(&mut self.pending);
            self.start(&pending)?;
            self.feed(&pending, &mut out)?;
            self.feed(b"\n", &mut out)?;
        }
        self.flush(&mut out)?;
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------
// Arrow IPC stream

struct IpcDecoder {
    decoder: arrow::ipc::reader::StreamDecoder,
}

impl IpcDecoder {
    fn new() -> Self {
        IpcDecoder { decoder: arrow::ipc::reader::StreamDecoder::new() }
    }
}

impl BodyDecoder for IpcDecoder {
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<RecordBatch>> {
        let mut buffer = Buffer::from(chunk.to_vec());
        let mut out = Vec::new();
        while !buffer.is_empty() {
            match guarded("Arrow IPC", || self.decoder.decode(&mut buffer).map_err(Error::from)) {
                Ok(Some(batch)) => out.push(batch),
                Ok(None) => {}
                Err(Error::Arrow(e)) => return Err(Error::Malformed { format: "Arrow IPC", detail: e.to_string() }),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn finish(&mut self) -> Result<Vec<RecordBatch>> {
        self.decoder.finish().map_err(|e| Error::Malformed { format: "Arrow IPC", detail: e.to_string() })?;
        Ok(Vec::new())
    }
}

// ---------------------------------------------------------------------------------------
// Parquet

/// Reads a spooled Parquet upload batch by batch.
pub fn parquet_batches(file: std::fs::File) -> Result<impl Iterator<Item = Result<RecordBatch>>> {
    let malformed = |e: parquet::errors::ParquetError| Error::Malformed { format: "Parquet", detail: e.to_string() };
    let mut reader = guarded("Parquet", || {
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(malformed)?
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(malformed)
    })?;
    Ok(std::iter::from_fn(move || guarded("Parquet", || reader.next().transpose().map_err(|e| Error::Malformed { format: "Parquet", detail: e.to_string() })).transpose()))
}

/// Encodes entity key values of each row so duplicates within an upsert can be found.
pub(crate) fn key_rows(batch: &RecordBatch, key_columns: &[String]) -> Result<arrow::row::Rows> {
    let fields: Vec<arrow::row::SortField> = key_columns
        .iter()
        .map(|k| Ok(arrow::row::SortField::new(batch.schema().field_with_name(k)?.data_type().clone())))
        .collect::<Result<_>>()?;
    let converter = arrow::row::RowConverter::new(fields)?;
    let columns: Vec<ArrayRef> =
        key_columns.iter().map(|k| Ok(batch.column(batch.schema().index_of(k)?).clone())).collect::<Result<_>>()?;
    Ok(converter.convert_columns(&columns)?)
}

/// Finds rows sharing entity keys and event time across the batches of one upsert, as
/// they come; holds the encoded keys of every row seen (not the rows).
pub struct DuplicateFinder {
    key_columns: Vec<String>,
    seen: HashMap<Vec<u8>, u64>,
    rows: u64,
}

impl DuplicateFinder {
    pub fn new(schema: &FeatureSchema) -> DuplicateFinder {
        let mut key_columns: Vec<String> = schema.entity_keys.iter().map(|k| k.name.clone()).collect();
        key_columns.push(schema.event_time.clone());
        DuplicateFinder { key_columns, seen: HashMap::new(), rows: 0 }
    }

    /// The first pair of rows (numbered from 1 across all batches) sharing keys, if
    /// `batch` holds the second of one.
    pub fn check(&mut self, batch: &RecordBatch) -> Result<Option<(u64, u64)>> {
        for r in key_rows(batch, &self.key_columns)?.iter() {
            self.rows += 1;
            if let Some(first) = self.seen.insert(r.as_ref().to_vec(), self.rows) {
                return Ok(Some((first, self.rows)));
            }
        }
        Ok(None)
    }
}

/// Finds the first pair of rows sharing entity keys and event time across `batches`.
pub fn find_duplicate_keys(batches: &[RecordBatch], schema: &FeatureSchema) -> Result<Option<(u64, u64)>> {
    let mut finder = DuplicateFinder::new(schema);
    for batch in batches {
        if let Some(pair) = finder.check(batch)? {
            return Ok(Some(pair));
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------------------
// Bodies without a declared schema

/// Decodes a whole body whose columns are not declared in advance (an uploaded spine).
/// Arrow IPC and Parquet carry their schema; JSON and CSV column types are inferred from
/// the values. JSON columns come in name order, since JSON objects have no column order.
pub fn decode_inferred(format: IngestFormat, body: bytes::Bytes) -> Result<RecordBatch> {
    guarded(format.name(), || decode_inferred_unguarded(format, body))
}

fn decode_inferred_unguarded(format: IngestFormat, body: bytes::Bytes) -> Result<RecordBatch> {
    let malformed = |detail: String| Error::Malformed { format: format.name(), detail };
    let (schema, batches): (SchemaRef, Vec<RecordBatch>) = match format {
        IngestFormat::Json => {
            let text = std::str::from_utf8(&body).map_err(|e| malformed(e.to_string()))?;
            let values: Vec<Value> = if text.trim_start().starts_with('[') {
                serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?
            } else {
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .enumerate()
                    .map(|(i, l)| serde_json::from_str(l).map_err(|e| malformed(format!("line {}: {e}", i + 1))))
                    .collect::<Result<_>>()?
            };
            if let Some(i) = values.iter().position(|v| !v.is_object()) {
                return Err(malformed(format!("row {} is not an object", i + 1)));
            }
            let inferred = arrow::json::reader::infer_json_schema_from_iterator(values.iter().map(Ok)).map_err(|e| malformed(e.to_string()))?;
            let mut fields: Vec<_> = inferred.fields().iter().cloned().collect();
            fields.sort_by(|a, b| a.name().cmp(b.name()));
            let schema = Arc::new(Schema::new(fields));
            let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
                .with_batch_size(values.len().max(1))
                .build_decoder()
                .map_err(|e| malformed(e.to_string()))?;
            decoder.serialize(&values).map_err(|e| malformed(e.to_string()))?;
            let batch = decoder.flush().map_err(|e| malformed(e.to_string()))?;
            (schema, batch.into_iter().collect())
        }
        IngestFormat::Csv => {
            std::str::from_utf8(&body).map_err(|e| malformed(format!("the body is not UTF-8: {e}")))?;
            let format_spec = arrow::csv::reader::Format::default().with_header(true);
            let (schema, _) = format_spec.infer_schema(std::io::Cursor::new(&body), None).map_err(|e| malformed(e.to_string()))?;
            let schema = Arc::new(schema);
            let reader = arrow::csv::ReaderBuilder::new(schema.clone())
                .with_format(format_spec)
                .with_batch_size(BATCH_ROWS)
                .build(std::io::Cursor::new(&body))
                .map_err(|e| malformed(e.to_string()))?;
            let batches = reader.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| malformed(e.to_string()))?;
            (schema, batches)
        }
        IngestFormat::ArrowIpc => {
            let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(&body), None).map_err(|e| malformed(e.to_string()))?;
            let schema = reader.schema();
            let batches = reader.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| malformed(e.to_string()))?;
            (schema, batches)
        }
        IngestFormat::Parquet => {
            let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(body).map_err(|e| malformed(e.to_string()))?;
            let schema = builder.schema().clone();
            let reader = builder.with_batch_size(BATCH_ROWS).build().map_err(|e| malformed(e.to_string()))?;
            let batches = reader.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| malformed(e.to_string()))?;
            (schema, batches)
        }
    };
    Ok(arrow::compute::concat_batches(&schema, &batches)?)
}

/// Converts a spine's time column to UTC microsecond timestamps: RFC 3339 text, dates and
/// timestamps of any unit are accepted; the first value that is not a time is named.
pub fn spine_time_column(batch: &RecordBatch, column: &str) -> Result<RecordBatch> {
    let index = batch.schema().index_of(column).map_err(|_| Error::MissingColumn { column: column.to_string() })?;
    let input = batch.column(index);
    let target = DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into()));
    let converted = match input.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) => {
            cast_with_options(input, &target, &CastOptions { safe: true, ..Default::default() })?
        }
        other => {
            return Err(Error::InvalidValue {
                column: column.to_string(),
                expected: "RFC 3339 timestamp".into(),
                row: 1,
                detail: format!("the column is {other}; give times as text like 2026-03-01T00:00:00Z"),
            });
        }
    };
    if let Some(row) = (0..input.len()).find(|&i| input.is_valid(i) && converted.is_null(i)) {
        let shown = arrow::util::display::ArrayFormatter::try_new(input.as_ref(), &Default::default())?.value(row).to_string();
        return Err(Error::InvalidValue {
            column: column.to_string(),
            expected: "RFC 3339 timestamp".into(),
            row: row as u64 + 1,
            detail: format!("{shown:?} is not a time"),
        });
    }
    let mut columns = batch.columns().to_vec();
    columns[index] = converted;
    let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields[index] = Field::new(column, target, true);
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Column;

    fn schema() -> FeatureSchema {
        FeatureSchema {
            entity_keys: vec![Column::new("user_id", ColumnType::Int64)],
            event_time: "ts".into(),
            features: vec![
                Column::new("clicks", ColumnType::Int32),
                Column::new("emb", ColumnType::ListFloat32),
                Column::new("name", ColumnType::String),
            ],
        }
    }

    fn decode_all(format: IngestFormat, body: &[u8], chunk: usize) -> Result<Vec<RecordBatch>> {
        let mut d = decoder_for(format, &schema()).unwrap();
        let mut c = Conformer::new(schema());
        let mut out = Vec::new();
        for part in body.chunks(chunk) {
            for b in d.push(part)? {
                out.push(c.conform(&b)?);
            }
        }
        for b in d.finish()? {
            out.push(c.conform(&b)?);
        }
        Ok(out)
    }

    #[test]
    fn json_array_and_ndjson_decode_the_same_in_any_chunking() {
        let array = br#"[{"user_id": 1, "ts": "2026-01-01T00:00:00Z", "clicks": 3, "emb": [0.5, 1], "name": "a,]}"},
                         {"user_id": 2, "ts": "2026-01-02T00:00:00Z"}]"#;
        let ndjson = b"{\"user_id\": 1, \"ts\": \"2026-01-01T00:00:00Z\", \"clicks\": 3, \"emb\": [0.5, 1], \"name\": \"a,]}\"}\n{\"user_id\": 2, \"ts\": \"2026-01-02T00:00:00Z\"}\n";
        for chunk in [1, 3, 7, 1000] {
            for body in [&array[..], &ndjson[..]] {
                let batches = decode_all(IngestFormat::Json, body, chunk).unwrap();
                let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                assert_eq!(rows, 2, "chunk {chunk}");
                let names = batches[0].column(4).as_any().downcast_ref::<arrow::array::StringArray>().unwrap();
                assert_eq!(names.value(0), "a,]}");
                assert!(batches[0].column(2).is_null(1), "absent feature reads as null");
            }
        }
    }

    #[test]
    fn json_errors_name_column_type_and_row() {
        let body = br#"[{"user_id": 1, "ts": "2026-01-01T00:00:00Z", "clicks": 1},
                        {"user_id": 2, "ts": "2026-01-01T00:00:00Z", "clicks": "many"}]"#;
        let err = decode_all(IngestFormat::Json, body, 1000).unwrap_err();
        match err {
            Error::InvalidValue { column, expected, row, .. } => {
                assert_eq!((column.as_str(), expected.as_str(), row), ("clicks", "int32", 2));
            }
            other => panic!("unexpected {other}"),
        }
        let body = br#"{"user_id": 1, "ts": "2026-01-01T00:00:00Z", "clicks": 3000000000}"#;
        assert!(matches!(decode_all(IngestFormat::Json, body, 1000), Err(Error::InvalidValue { row: 1, .. })));
        let body = br#"{"user_id": null, "ts": "2026-01-01T00:00:00Z"}"#;
        assert!(matches!(decode_all(IngestFormat::Json, body, 1000), Err(Error::InvalidValue { ref column, .. }) if column == "user_id"));
        let body = br#"{"user_id": 1, "ts": "2026-01-01T00:00:00Z", "extra": 1}"#;
        assert!(matches!(decode_all(IngestFormat::Json, body, 1000), Err(Error::UnknownColumn { .. })));
        let body = br#"[{"user_id": 1, "ts": "2026-01-01T00:00:00Z"}"#;
        assert!(matches!(decode_all(IngestFormat::Json, body, 1000), Err(Error::Malformed { .. })));
        let body = br#"[{"user_id": 1, "ts": "2026-01-01T00:00:00Z"} {"user_id": 1, "ts": "2026-01-01T00:00:00Z"}]"#;
        assert!(matches!(decode_all(IngestFormat::Json, body, 1000), Err(Error::Malformed { .. })));
    }

    #[test]
    fn csv_parses_per_column_and_names_bad_rows() {
        let body = b"user_id,ts,clicks,emb\n1,2026-01-01T00:00:00Z,3,\"[1,2]\"\n2,2026-01-02 10:00:00,,\n";
        for chunk in [1, 5, 1000] {
            let batches = decode_all(IngestFormat::Csv, body, chunk).unwrap();
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            assert_eq!(rows, 2);
        }
        let body = b"user_id,ts,clicks\n1,2026-01-01T00:00:00Z,3\n2,2026-01-01T00:00:00Z,x3\n";
        match decode_all(IngestFormat::Csv, body, 4).unwrap_err() {
            Error::InvalidValue { column, row, .. } => assert_eq!((column.as_str(), row), ("clicks", 2)),
            other => panic!("unexpected {other}"),
        }
        let body = b"user_id,clicks\n1,3\n";
        assert!(matches!(decode_all(IngestFormat::Csv, body, 100), Err(Error::MissingColumn { ref column }) if column == "ts"));
    }

    #[test]
    fn arrow_inputs_are_cast_only_when_lossless() {
        let input = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Int32, false),
            Field::new("ts", DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, None), false),
            Field::new("clicks", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            input,
            vec![
                Arc::new(arrow::array::Int32Array::from(vec![1])),
                Arc::new(arrow::array::TimestampNanosecondArray::from(vec![1_000_000_000])),
                Arc::new(arrow::array::Float64Array::from(vec![1.5])),
            ],
        )
        .unwrap();
        let err = Conformer::new(schema()).conform(&batch).unwrap_err();
        assert!(matches!(err, Error::InvalidValue { ref column, .. } if column == "clicks"), "{err}");
    }

    #[test]
    fn duplicate_keys_are_found() {
        let body = br#"[{"user_id": 1, "ts": "2026-01-01T00:00:00Z"}, {"user_id": 2, "ts": "2026-01-01T00:00:00Z"},
                        {"user_id": 1, "ts": "2026-01-01T00:00:00Z"}]"#;
        let batches = decode_all(IngestFormat::Json, body, 1000).unwrap();
        assert_eq!(find_duplicate_keys(&batches, &schema()).unwrap(), Some((1, 3)));
    }
}

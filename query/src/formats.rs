//! Output encoders: Arrow batches to response bytes, one batch at a time so results
//! stream instead of being assembled in memory.

use std::io::Write;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;

use crate::error::Result;

/// The result formats a client can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// A JSON array of objects.
    Json,
    /// One JSON object per line.
    NdJson,
    Csv,
    ArrowIpc,
    Parquet,
}

impl OutputFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Json => "application/json",
            OutputFormat::NdJson => "application/x-ndjson",
            OutputFormat::Csv => "text/csv",
            OutputFormat::ArrowIpc => "application/vnd.apache.arrow.stream",
            OutputFormat::Parquet => "application/vnd.apache.parquet",
        }
    }

    /// Picks the first supported media type of an `Accept` header; `*/*` or nothing means JSON.
    pub fn from_accept(accept: Option<&str>) -> Option<Self> {
        let Some(accept) = accept else { return Some(OutputFormat::Json) };
        for part in accept.split(',') {
            let essence = part.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            let found = match essence.as_str() {
                "application/json" | "*/*" | "application/*" => Some(OutputFormat::Json),
                "application/x-ndjson" | "application/jsonl" => Some(OutputFormat::NdJson),
                "text/csv" | "text/*" => Some(OutputFormat::Csv),
                "application/vnd.apache.arrow.stream" => Some(OutputFormat::ArrowIpc),
                "application/vnd.apache.parquet" | "application/x-parquet" => Some(OutputFormat::Parquet),
                _ => None,
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// Short names used in request bodies and query strings.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "json" => Some(OutputFormat::Json),
            "ndjson" | "jsonl" => Some(OutputFormat::NdJson),
            "csv" => Some(OutputFormat::Csv),
            "arrow" | "ipc" => Some(OutputFormat::ArrowIpc),
            "parquet" => Some(OutputFormat::Parquet),
            _ => None,
        }
    }
}

/// A `Write` target the encoder owns while we take the bytes out after every batch.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("sink lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn take(&self) -> Bytes {
        Bytes::from(std::mem::take(&mut *self.0.lock().expect("sink lock")))
    }
}

enum Inner {
    Json(arrow::json::Writer<Sink, arrow::json::writer::JsonArray>),
    NdJson(arrow::json::LineDelimitedWriter<Sink>),
    Csv(Box<arrow::csv::Writer<Sink>>),
    Ipc(arrow::ipc::writer::StreamWriter<Sink>),
    Parquet(Box<parquet::arrow::ArrowWriter<Sink>>),
}

/// Encodes a stream of batches of one schema.
pub struct Encoder {
    sink: Sink,
    inner: Option<Inner>,
    wrote_any: bool,
    format: OutputFormat,
}

impl Encoder {
    pub fn new(format: OutputFormat, schema: &SchemaRef) -> Result<Self> {
        let sink = Sink::default();
        let inner = match format {
            OutputFormat::Json => Inner::Json(
                arrow::json::WriterBuilder::new().with_explicit_nulls(true).build::<_, arrow::json::writer::JsonArray>(sink.clone()),
            ),
            OutputFormat::NdJson => Inner::NdJson(
                arrow::json::WriterBuilder::new().with_explicit_nulls(true).build::<_, arrow::json::writer::LineDelimited>(sink.clone()),
            ),
            OutputFormat::Csv => Inner::Csv(Box::new(arrow::csv::WriterBuilder::new().with_header(true).build(sink.clone()))),
            OutputFormat::ArrowIpc => Inner::Ipc(arrow::ipc::writer::StreamWriter::try_new(sink.clone(), schema)?),
            OutputFormat::Parquet => {
                let props = parquet::file::properties::WriterProperties::builder()
                    .set_compression(parquet::basic::Compression::SNAPPY)
                    .build();
                Inner::Parquet(Box::new(parquet::arrow::ArrowWriter::try_new(sink.clone(), schema.clone(), Some(props))?))
            }
        };
        Ok(Encoder { sink, inner: Some(inner), wrote_any: false, format })
    }

    pub fn content_type(&self) -> &'static str {
        self.format.content_type()
    }

    /// Encodes one batch and returns the bytes ready to send (possibly none: Parquet
    /// emits a row group at a time).
    pub fn encode(&mut self, batch: &RecordBatch) -> Result<Bytes> {
        self.wrote_any = true;
        match self.inner.as_mut().expect("encoder used after finish") {
            Inner::Json(w) => w.write(batch)?,
            Inner::NdJson(w) => w.write(batch)?,
            Inner::Csv(w) => w.write(&lists_as_text(batch)?)?,
            Inner::Ipc(w) => w.write(batch)?,
            Inner::Parquet(w) => w.write(batch)?,
        }
        Ok(self.sink.take())
    }

    /// Writes the trailer (closing bracket, end-of-stream marker, Parquet footer).
    pub fn finish(&mut self) -> Result<Bytes> {
        match self.inner.take() {
            Some(Inner::Json(mut w)) => {
                if self.wrote_any {
                    w.finish()?;
                } else {
                    self.sink.write_all(b"[]")?;
                }
            }
            Some(Inner::NdJson(mut w)) => w.finish()?,
            Some(Inner::Csv(w)) => drop(w),
            Some(Inner::Ipc(mut w)) => w.finish()?,
            Some(Inner::Parquet(w)) => {
                w.close()?;
            }
            None => {}
        }
        Ok(self.sink.take())
    }
}

/// CSV has no list type: list columns (embeddings) are written as JSON array text, the
/// same form CSV ingest accepts.
fn lists_as_text(batch: &RecordBatch) -> Result<RecordBatch> {
    use arrow::array::{Array, ArrayRef, ListArray, StringBuilder};
    use arrow::datatypes::{DataType, Field, Schema};
    if !batch.schema().fields().iter().any(|f| matches!(f.data_type(), DataType::List(_))) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (f, col) in batch.schema().fields().iter().zip(batch.columns()) {
        if let Some(list) = col.as_any().downcast_ref::<ListArray>() {
            let mut b = StringBuilder::new();
            for i in 0..list.len() {
                if list.is_null(i) {
                    b.append_null();
                    continue;
                }
                let values = arrow::compute::cast(&list.value(i), &DataType::Float64)?;
                let values = values.as_any().downcast_ref::<arrow::array::Float64Array>().expect("cast to f64");
                let items: Vec<serde_json::Value> = values
                    .iter()
                    .map(|v| v.and_then(serde_json::Number::from_f64).map(serde_json::Value::Number).unwrap_or(serde_json::Value::Null))
                    .collect();
                b.append_value(serde_json::Value::Array(items).to_string());
            }
            fields.push(Field::new(f.name(), DataType::Utf8, true));
            columns.push(Arc::new(b.finish()));
        } else {
            fields.push(f.as_ref().clone());
            columns.push(col.clone());
        }
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch(from: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from(vec![from, from + 1])), Arc::new(StringArray::from(vec![Some("a"), None]))],
        )
        .unwrap()
    }

    fn encode_all(format: OutputFormat, batches: &[RecordBatch]) -> Vec<u8> {
        let mut e = Encoder::new(format, &batch(0).schema()).unwrap();
        let mut out = Vec::new();
        for b in batches {
            out.extend_from_slice(&e.encode(b).unwrap());
        }
        out.extend_from_slice(&e.finish().unwrap());
        out
    }

    #[test]
    fn json_spans_batches_as_one_array() {
        let out = encode_all(OutputFormat::Json, &[batch(0), batch(2)]);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 4);
        assert_eq!(v[1]["name"], serde_json::Value::Null);
        assert_eq!(encode_all(OutputFormat::Json, &[]), b"[]");
    }

    #[test]
    fn csv_has_one_header_and_ipc_and_parquet_round_trip() {
        let csv = String::from_utf8(encode_all(OutputFormat::Csv, &[batch(0), batch(2)])).unwrap();
        assert_eq!(csv.lines().count(), 5);
        let ipc = encode_all(OutputFormat::ArrowIpc, &[batch(0), batch(2)]);
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None).unwrap();
        assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), 4);
        let pq = encode_all(OutputFormat::Parquet, &[batch(0), batch(2)]);
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(Bytes::from(pq), 1024).unwrap();
        assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), 4);
    }
}

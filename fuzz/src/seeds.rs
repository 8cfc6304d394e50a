//! Valid inputs for each target, for the fuzzer to start from: without them it would
//! spend its time learning what a CSV header or a Parquet footer looks like. They are
//! made here, from the real encoders, rather than kept as files, so they follow the
//! formats as those change; `tests/corpus.rs` runs them on every test run.

use std::sync::Arc;

use lakeledger_audit::segment::HEADER_LEN;
use lakeledger_audit::{SignerKey, segment, tiles};
use lakeledger_query::arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Float32Array, Float32Builder, Float64Array, Int32Array, Int64Array, ListBuilder, StringArray,
    TimestampMicrosecondArray,
};
use lakeledger_query::arrow::ipc::writer::StreamWriter;
use lakeledger_query::arrow::record_batch::RecordBatch;

use crate::{PACKAGE, TEMPLATE, schema};

/// The seeds of `target`.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "audit_frames" => frames(),
        "audit_recovery" => recovery(),
        "audit_package" => package(),
        "audit_notes" => notes(),
        "ingest_json" => with_chunking(&[JSON_ARRAY.as_bytes(), NDJSON.as_bytes()]),
        "ingest_csv" => with_chunking(&[CSV.as_bytes()]),
        "ingest_arrow" => with_chunking(&[&arrow_stream()]),
        "ingest_parquet" => with_chunking(&[&parquet_file()]),
        "sql_guard" => SQL.iter().map(|s| s.as_bytes().to_vec()).collect(),
        other => panic!("no fuzz target {other}"),
    }
}

fn with_chunking(bodies: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for body in bodies {
        for chunking in [0u8, 1, 255] {
            let mut v = vec![chunking];
            v.extend_from_slice(body);
            out.push(v);
        }
    }
    out
}

fn prefixed(items: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for i in items {
        out.extend_from_slice(&(i.len() as u16).to_be_bytes());
        out.extend_from_slice(i);
    }
    out
}

const EVENT: &str = r#"{"kind":"data.read","phase":"intent","actor":{"principal":"key-1","tenant":"acme"},"resource":{"name":"clicks"}}"#;

fn frames() -> Vec<Vec<u8>> {
    let t = &*TEMPLATE;
    let segment_file = &t.files.iter().find(|(p, _)| *p == t.segment).expect("the segment").1;
    let mut raw = vec![0u8];
    raw.extend_from_slice(segment_file);
    let mut event_leaf = Vec::new();
    lakeledger_audit::leaf::encode(lakeledger_audit::RecordType::Event, 1, 1, &[7; 32], EVENT.as_bytes(), &mut event_leaf);
    let mut sealed = vec![1u8];
    sealed.extend(prefixed(&[&t.genesis, &event_leaf]));
    sealed.extend_from_slice(b"torn");
    vec![raw, sealed]
}

fn recovery() -> Vec<Vec<u8>> {
    let t = &*TEMPLATE;
    let segment_file = &t.files.iter().find(|(p, _)| *p == t.segment).expect("the segment").1;
    let record = |kind: u8, payload: &[u8]| {
        let mut v = vec![kind];
        v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        v.extend_from_slice(payload);
        v
    };
    let rotation = format!(r#"{{"new_key":"{}"}}"#, SignerKey::generate("fuzz.lakeledger.invalid/audit").expect("a key").verifier().encode());
    let records = [record(1, EVENT.as_bytes()), record(3, b"{}"), record(5, rotation.as_bytes()), record(4, b"{}")].concat();
    let mut raw = vec![0u8];
    raw.extend_from_slice(segment_file);
    let mut truncated = raw.clone();
    truncated.truncate(HEADER_LEN + 1 + 20);
    let mut chained = vec![1u8];
    chained.extend_from_slice(&records);
    let mut torn = vec![9u8];
    torn.extend_from_slice(&records);
    torn.extend_from_slice(&[0, 0, 0, 60, 1, 2, 3]);
    let mut own_genesis = vec![3u8];
    own_genesis.extend_from_slice(&record(0, &t.genesis[lakeledger_audit::leaf::LEAF_HEADER_LEN..]));
    own_genesis.extend_from_slice(&records);
    vec![raw, truncated, chained, torn, own_genesis]
}

fn package() -> Vec<Vec<u8>> {
    let (pkg, _) = &*PACKAGE;
    let mut whole = vec![0u8];
    whole.extend_from_slice(pkg.to_json().as_bytes());
    let mut out = vec![whole];
    for file in 0..pkg.files.len() as u8 {
        // Replace one digit in each file, somewhere past its first line.
        out.push(vec![1, file, 0, 40, 1, b'7']);
    }
    out
}

fn notes() -> Vec<Vec<u8>> {
    let (pkg, key) = &*PACKAGE;
    let signer = SignerKey::generate("fuzz.lakeledger.invalid/audit").expect("a key");
    let checkpoint_line = pkg.files["checkpoints.jsonl"].lines().next().expect("a checkpoint").as_bytes().to_vec();
    let note: serde_json::Value = serde_json::from_slice(&checkpoint_line).expect("JSON");
    vec![
        key.encode().into_bytes(),
        signer.encode().into_bytes(),
        signer.sign_note("hello\n").expect("signed").into_bytes(),
        note["note"].as_str().expect("a note").as_bytes().to_vec(),
        checkpoint_line,
        tiles::tile_path(0, 1234, 256).into_bytes(),
        tiles::tile_path(2, 7, 3).into_bytes(),
        tiles::entries_path(1_000_000, 17).into_bytes(),
        segment::file_name(3).into_bytes(),
    ]
}

const JSON_ARRAY: &str = r#"[
 {"id": 1, "region": "eu", "ts": "2026-01-01T00:00:00Z", "x": 0.5, "x32": 1.5, "n": 3, "s": "a,\"]}", "emb": [0.1, 2], "b": true, "d": "2026-01-01", "at": "2026-01-01 10:00:00"},
 {"id": 2, "region": "us", "ts": 1767225600000000, "x": null, "n": -7, "emb": [], "b": false},
 {"id": 2, "region": "us", "ts": "2026-01-02", "s": "\u00e9\ud83d\ude00"}
]"#;

const NDJSON: &str = "{\"id\": 1, \"region\": \"eu\", \"ts\": \"2026-01-01T00:00:00+02:00\", \"x\": 1e308}\n{\"id\": 9223372036854775807, \"region\": \"\", \"ts\": \"2026-01-01T00:00:00.123456Z\", \"n\": 2147483647}\n";

const CSV: &str = "id,region,ts,x,x32,n,s,b,d,at\n1,eu,2026-01-01T00:00:00Z,0.5,1.5,3,\"quoted, with comma\",true,2026-01-01,2026-01-01 10:00:00\n2,us,2026-01-02,,,-7,,false,,\n";

fn batch() -> RecordBatch {
    let element = Arc::new(lakeledger_query::arrow::datatypes::Field::new("element", lakeledger_query::arrow::datatypes::DataType::Float32, true));
    let mut emb = ListBuilder::new(Float32Builder::new()).with_field(element);
    emb.values().append_value(0.25);
    emb.append(true);
    emb.append(false);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![1, 2])),
        Arc::new(StringArray::from(vec!["eu", "us"])),
        Arc::new(TimestampMicrosecondArray::from(vec![1_767_225_600_000_000, 1_767_312_000_000_000]).with_timezone("UTC")),
        Arc::new(Float64Array::from(vec![Some(0.5), None])),
        Arc::new(Float32Array::from(vec![Some(1.5), None])),
        Arc::new(Int32Array::from(vec![Some(3), Some(-7)])),
        Arc::new(StringArray::from(vec![Some("a"), None])),
        Arc::new(emb.finish()),
        Arc::new(BooleanArray::from(vec![Some(true), None])),
        Arc::new(Date32Array::from(vec![Some(20454), None])),
        Arc::new(TimestampMicrosecondArray::from(vec![Some(1), None]).with_timezone("UTC")),
    ];
    RecordBatch::try_new(schema().arrow_schema(), columns).expect("the group's schema")
}

fn arrow_stream() -> Vec<u8> {
    let b = batch();
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &b.schema()).expect("a writer");
    w.write(&b).expect("write");
    w.write(&b.slice(1, 1)).expect("write");
    w.finish().expect("finish");
    drop(w);
    out
}

fn parquet_file() -> Vec<u8> {
    let b = batch();
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, b.schema(), None).expect("a writer");
    w.write(&b).expect("write");
    w.close().expect("close");
    out
}

const SQL: &[&str] = &[
    "SELECT user_id, clicks FROM clicks WHERE user_id = 1",
    "SELECT count(*) FROM clicks VERSION AS OF 2",
    "SELECT * FROM clicks TIMESTAMP AS OF '2026-01-01T00:00:00Z'",
    "SELECT u.plan, sum(c.clicks) FROM clicks VERSION AS OF 2 c JOIN users VERSION AS OF 1 u ON c.user_id = u.user_id GROUP BY u.plan",
    "WITH recent AS (SELECT * FROM clicks WHERE ts > '2026-01-01') SELECT r.user_id FROM recent r LEFT JOIN users u USING (user_id)",
    "EXPLAIN SELECT * FROM clicks",
    "SELECT (SELECT max(score) FROM users) AS m, * FROM clicks WHERE user_id IN (SELECT user_id FROM users) ORDER BY 1 LIMIT 10",
    "SELECT * FROM clicks UNION ALL SELECT * FROM clicks VERSION AS OF 1",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM read_parquet('/etc/passwd')",
    "SELECT 1; SELECT 2",
    "EXPLAIN DELETE FROM clicks",
    "WITH c AS (SELECT * FROM clicks) SELECT * FROM c VERSION AS OF 1",
];

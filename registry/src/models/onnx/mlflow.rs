//! An MLflow model directory with an `onnx` flavor, uploaded as a tar (optionally gzipped)
//! or zip archive: the `MLmodel` file names the ONNX file (`flavors.onnx.data`), and a
//! column-based signature (`signature.inputs`) names the features of the graph's input.
//!
//! `MLmodel` is YAML as MLflow writes it (PyYAML's block style, long strings folded in
//! single quotes); only the two values above are read, so a small reader for that shape is
//! enough, and anything it cannot read is refused by name rather than guessed.

use std::io::Read;

use serde_json::Value;

use crate::error::{Error, Result};

/// What an MLflow directory holds for serving.
pub struct MlflowModel {
    pub onnx: Vec<u8>,
    /// Feature names from a column-based signature, in order.
    pub columns: Option<Vec<String>>,
    /// The flavors the directory has, for the record.
    pub flavors: Vec<String>,
}

/// The kind of archive the bytes are, if any.
pub fn is_archive(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b]) || bytes.starts_with(b"PK\x03\x04") || bytes.get(257..262) == Some(b"ustar")
}

fn refused(why: impl std::fmt::Display) -> Error {
    Error::Unprocessable(format!("the MLflow model is refused: {why}"))
}

/// The archive's files by path (directories skipped), reading at most `limit` bytes in all.
fn files(bytes: &[u8], limit: u64) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut total = 0u64;
    let mut keep = |path: String, reader: &mut dyn Read| -> Result<()> {
        let mut data = Vec::new();
        reader.take(limit.saturating_sub(total) + 1).read_to_end(&mut data).map_err(|e| refused(format!("reading `{path}`: {e}")))?;
        total += data.len() as u64;
        if total > limit {
            return Err(Error::PayloadTooLarge { limit });
        }
        out.push((path, data));
        Ok(())
    };
    if bytes.starts_with(b"PK\x03\x04") {
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| refused(format!("not a readable zip archive: {e}")))?;
        for i in 0..zip.len() {
            let mut entry = zip.by_index(i).map_err(|e| refused(format!("zip entry {i}: {e}")))?;
            if entry.is_dir() {
                continue;
            }
            let path = entry.name().map_err(|e| refused(format!("zip entry {i}: {e}")))?.into_owned();
            keep(path, &mut entry)?;
        }
        return Ok(out);
    }
    let reader: Box<dyn Read + '_> = if bytes.starts_with(&[0x1f, 0x8b]) { Box::new(flate2::read::GzDecoder::new(bytes)) } else { Box::new(bytes) };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries().map_err(|e| refused(format!("not a readable tar archive: {e}")))? {
        let mut entry = entry.map_err(|e| refused(format!("a tar entry: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(|e| refused(format!("a tar entry's path: {e}")))?.to_string_lossy().into_owned();
        keep(path, &mut entry)?;
    }
    Ok(out)
}

/// Reads an MLflow model directory from an archive of at most `limit` bytes unpacked.
pub fn read(bytes: &[u8], limit: u64) -> Result<MlflowModel> {
    let files = files(bytes, limit)?;
    let normal = |p: &str| p.trim_start_matches("./").to_string();
    let (mlmodel_path, mlmodel) = files
        .iter()
        .filter(|(p, _)| normal(p).rsplit('/').next() == Some("MLmodel"))
        .min_by_key(|(p, _)| normal(p).matches('/').count())
        .ok_or_else(|| refused("the archive has no MLmodel file"))?;
    let base = normal(mlmodel_path).rsplit_once('/').map(|(dir, _)| format!("{dir}/")).unwrap_or_default();
    let text = std::str::from_utf8(mlmodel).map_err(|_| refused("MLmodel is not UTF-8 text"))?;
    let flavors = children(text, "flavors");
    let Some(data) = value(text, &["flavors", "onnx", "data"]) else {
        return Err(refused(format!("it has no onnx flavor (its flavors: {}); save it with mlflow.onnx", if flavors.is_empty() { "none".into() } else { flavors.join(", ") })));
    };
    let wanted = normal(&format!("{base}{data}"));
    if data.contains("..") || data.starts_with('/') {
        return Err(refused(format!("flavors.onnx.data `{data}` points outside the model directory")));
    }
    let onnx = files
        .iter()
        .find(|(p, _)| normal(p) == wanted)
        .map(|(_, d)| d.clone())
        .ok_or_else(|| refused(format!("flavors.onnx.data names `{data}`, which is not in the archive")))?;
    let columns = match value(text, &["signature", "inputs"]) {
        None => None,
        Some(json) => signature_columns(&json)?,
    };
    Ok(MlflowModel { onnx, columns, flavors })
}

/// Column names of a column-based signature; `None` for a tensor-based one (the graph's
/// inputs are then the columns).
fn signature_columns(json: &str) -> Result<Option<Vec<String>>> {
    let specs: Vec<Value> = serde_json::from_str(json).map_err(|e| refused(format!("signature.inputs is not a JSON list: {e}")))?;
    if specs.iter().any(|s| s.get("type").and_then(Value::as_str) == Some("tensor")) {
        return Ok(None);
    }
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| s.get("name").and_then(Value::as_str).map(str::to_string).ok_or_else(|| refused(format!("signature input {i} has no name"))))
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// One line of block-style YAML: its indentation, key and the text after `key:`.
fn entries(text: &str) -> Vec<(usize, usize, &str, &str)> {
    text.lines()
        .enumerate()
        .filter_map(|(n, line)| {
            let indent = line.len() - line.trim_start().len();
            let body = line.trim_start();
            if body.is_empty() || body.starts_with('#') || body.starts_with("- ") {
                return None;
            }
            let (key, rest) = body.split_once(':')?;
            if key.contains(' ') && !key.starts_with('\'') {
                return None;
            }
            Some((n, indent, key.trim_matches('\''), rest.trim_start()))
        })
        .collect()
}

/// The keys directly under a top-level key.
fn children(text: &str, parent: &str) -> Vec<String> {
    let all = entries(text);
    let Some(start) = all.iter().position(|(_, indent, key, _)| *indent == 0 && *key == parent) else { return vec![] };
    let Some(child_indent) = all.get(start + 1).map(|e| e.1).filter(|i| *i > 0) else { return vec![] };
    all[start + 1..].iter().take_while(|e| e.1 > 0).filter(|e| e.1 == child_indent).map(|e| e.2.to_string()).collect()
}

/// The scalar at a path of keys, unquoted (single-quoted scalars folded across lines as
/// YAML folds them).
fn value(text: &str, path: &[&str]) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut ancestors: Vec<(usize, &str)> = Vec::new();
    for (n, indent, key, rest) in entries(text) {
        while ancestors.last().is_some_and(|&(i, _)| i >= indent) {
            ancestors.pop();
        }
        let here = ancestors.iter().map(|(_, k)| *k).chain(std::iter::once(key));
        if here.eq(path.iter().copied()) {
            return Some(scalar(rest, &lines[n + 1..]));
        }
        ancestors.push((indent, key));
    }
    None
}

fn scalar(first: &str, following: &[&str]) -> String {
    if let Some(quoted) = first.strip_prefix('\'') {
        // Single-quoted: `''` is a quote; a line break folds to a space.
        let mut text = quoted.to_string();
        let mut lines = following.iter();
        loop {
            let unescaped = text.replace("''", "\u{0}");
            if let Some(end) = unescaped.find('\'') {
                return unescaped[..end].replace('\u{0}', "'");
            }
            match lines.next() {
                Some(l) => {
                    text.push(' ');
                    text.push_str(l.trim());
                }
                None => return unescaped.replace('\u{0}', "'"),
            }
        }
    }
    if let Some(quoted) = first.strip_prefix('"') {
        return serde_json::from_str::<String>(&format!("\"{}", quoted.trim_end())).unwrap_or_else(|_| quoted.trim_end_matches('"').to_string());
    }
    first.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MLMODEL: &str = "artifact_path: model\nflavors:\n  onnx:\n    code: null\n    data: model.onnx\n    onnx_version: 1.17.0\n  python_function:\n    data: model.onnx\n    loader_module: mlflow.onnx\nmlflow_version: 2.20.0\nsignature:\n  inputs: '[{\"type\": \"double\", \"name\": \"mean radius\", \"required\": true}, {\"type\":\n    \"double\", \"name\": \"it''s\", \"required\": true}]'\n  outputs: '[{\"type\": \"long\"}]'\n";

    #[test]
    fn reads_the_onnx_flavor_and_a_folded_column_signature() {
        assert_eq!(value(MLMODEL, &["flavors", "onnx", "data"]).as_deref(), Some("model.onnx"));
        assert_eq!(children(MLMODEL, "flavors"), ["onnx", "python_function"]);
        let inputs = value(MLMODEL, &["signature", "inputs"]).unwrap();
        assert_eq!(signature_columns(&inputs).unwrap().unwrap(), ["mean radius", "it's"]);
        assert_eq!(value(MLMODEL, &["flavors", "xgboost", "data"]), None);
    }

    #[test]
    fn a_tensor_signature_names_no_columns() {
        let json = r#"[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 30]}, "name": "input"}]"#;
        assert_eq!(signature_columns(json).unwrap(), None);
    }
}

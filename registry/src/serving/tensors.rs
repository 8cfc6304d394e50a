//! Named tensors in and out, as the Open Inference Protocol (KServe / Triton "V2") carries
//! them over HTTP and gRPC: each input tensor becomes a column of scoring rows (a tensor of
//! several values per row stays one column of lists, which an ONNX model spreads over its
//! input's columns), so tensors are scored through the same routing, canary, batching,
//! checks and inference log as MLflow-shaped requests.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{LoadedModel, ScoringInput};
use crate::error::{Error, Result};
use crate::models::Runnable;
use crate::models::onnx::{Elem, Values};

/// A tensor a model takes or gives: its name, the protocol's type name and its shape
/// (`-1`: the batch axis).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// The tensors a model takes and gives. A native model takes one tensor per column
/// (numbers as FP64, categories as BYTES) and gives `predictions` (and `probabilities`
/// for a classifier); an ONNX model, its graph's inputs and outputs.
pub fn signature(model: &LoadedModel) -> (Vec<TensorMetadata>, Vec<TensorMetadata>) {
    let meta = |name: &str, elem: Elem, shape: Vec<i64>| TensorMetadata { name: name.to_string(), datatype: elem.oip().to_string(), shape };
    match &model.runnable {
        Runnable::Native(artifact) => {
            let inputs = model.runnable.input_kinds().iter().map(|(name, numeric)| meta(name, if *numeric { Elem::Double } else { Elem::String }, vec![-1])).collect();
            let outputs = match &artifact.target {
                lakeledger_trainer::data::Target::Classes { classes } => {
                    // Typed as the answers' label tensor is.
                    let label = super::batcher::label_values(classes).elem();
                    vec![meta("predictions", label, vec![-1]), meta("probabilities", Elem::Float, vec![-1, classes.len() as i64])]
                }
                lakeledger_trainer::data::Target::Value { .. } => vec![meta("predictions", Elem::Double, vec![-1])],
            };
            (inputs, outputs)
        }
        Runnable::Onnx(m) => {
            let d = &m.description;
            (d.inputs.iter().map(|s| meta(&s.name, s.elem, s.shape(-1))).collect(), d.outputs.iter().map(|s| meta(&s.name, s.elem, s.shape(-1))).collect())
        }
    }
}

/// A named tensor: shape (batch axis first) and values, row-major.
#[derive(Debug, Clone)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub values: Values,
}

/// Scoring rows from input tensors: all must have the same batch size (their first axis)
/// and hold as many values as their shape says.
pub fn rows_from_tensors(inputs: &[NamedTensor]) -> Result<ScoringInput> {
    if inputs.is_empty() {
        return Err(Error::Unprocessable("`inputs` is empty: give one tensor per model input".into()));
    }
    let mut rows = None;
    let mut widths = Vec::with_capacity(inputs.len());
    for t in inputs {
        if t.shape.is_empty() || t.shape.iter().any(|&d| d < 0) {
            return Err(Error::Unprocessable(format!("input `{}`: shape {:?} must list the batch size first and no negative sizes", t.name, t.shape)));
        }
        let n = t.shape[0] as usize;
        // Sizes are the caller's: multiplied with overflow checks, compared with the data.
        let width = t.shape[1..].iter().try_fold(1usize, |w, &d| w.checked_mul(d as usize));
        let holds = width.and_then(|w| w.checked_mul(n));
        let (Some(width), Some(holds)) = (width, holds) else {
            return Err(Error::Unprocessable(format!("input `{}`: shape {:?} is larger than any request can hold", t.name, t.shape)));
        };
        if t.values.len() != holds {
            return Err(Error::Unprocessable(format!("input `{}`: shape {:?} holds {holds} values, {} were given", t.name, t.shape, t.values.len())));
        }
        match rows {
            None => rows = Some(n),
            Some(r) if r != n => return Err(Error::Unprocessable(format!("input `{}` has {n} rows; an earlier input has {r}", t.name))),
            Some(_) => {}
        }
        if inputs.iter().filter(|o| o.name == t.name).count() > 1 {
            return Err(Error::Unprocessable(format!("input `{}` is given twice", t.name)));
        }
        // A row of one value is that value; wider rows stay lists.
        widths.push(if t.shape.len() == 1 { None } else { Some(width) });
    }
    let rows = rows.unwrap_or(0);
    let mut values = Vec::with_capacity(rows.saturating_mul(inputs.len()));
    for r in 0..rows {
        for (t, width) in inputs.iter().zip(&widths) {
            values.push(match width {
                None => t.values.json(r),
                Some(1) => t.values.json(r),
                Some(w) => Value::Array((0..*w).map(|k| t.values.json(r * w + k)).collect()),
            });
        }
    }
    Ok(ScoringInput { columns: inputs.iter().map(|t| t.name.clone()).collect(), values, rows })
}

/// A tensor from little-endian bytes, as the binary extension and gRPC's raw contents
/// carry it (BYTES elements each after a 4-byte length).
pub fn decode_raw(name: &str, datatype: &str, bytes: &[u8]) -> Result<Values> {
    let fixed = |size: usize| -> Result<std::slice::ChunksExact<'_, u8>> {
        if !bytes.len().is_multiple_of(size) {
            return Err(Error::Unprocessable(format!("input `{name}`: {} bytes is not a whole number of {datatype} values", bytes.len())));
        }
        Ok(bytes.chunks_exact(size))
    };
    let le = |c: &[u8]| -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        b
    };
    Ok(match datatype {
        "FP32" => Values::Float(fixed(4)?.map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()),
        "FP64" => Values::Double(fixed(8)?.map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()),
        "INT8" => Values::Int64(fixed(1)?.map(|c| i64::from(c[0] as i8)).collect()),
        "INT16" => Values::Int64(fixed(2)?.map(|c| i64::from(i16::from_le_bytes([c[0], c[1]]))).collect()),
        "INT32" => Values::Int64(fixed(4)?.map(|c| i64::from(i32::from_le_bytes(c.try_into().expect("4 bytes")))).collect()),
        "INT64" => Values::Int64(fixed(8)?.map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()),
        "UINT8" | "UINT16" | "UINT32" => {
            let size = match datatype {
                "UINT8" => 1,
                "UINT16" => 2,
                _ => 4,
            };
            Values::Int64(fixed(size)?.map(|c| u64::from_le_bytes(le(c)) as i64).collect())
        }
        "UINT64" => Values::Int64(fixed(8)?.map(|c| u64::from_le_bytes(le(c)).min(i64::MAX as u64) as i64).collect()),
        "BOOL" => Values::Bool(bytes.iter().map(|&b| b != 0).collect()),
        "BYTES" => {
            let mut out = Vec::new();
            let mut rest = bytes;
            while !rest.is_empty() {
                if rest.len() < 4 {
                    return Err(Error::Unprocessable(format!("input `{name}`: a BYTES element's 4-byte length is cut off")));
                }
                let n = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
                if rest.len() < 4 + n {
                    return Err(Error::Unprocessable(format!("input `{name}`: a BYTES element says {n} bytes, {} are left", rest.len() - 4)));
                }
                let text = std::str::from_utf8(&rest[4..4 + n]).map_err(|_| Error::Unprocessable(format!("input `{name}`: BYTES elements must be UTF-8 text")))?;
                out.push(text.to_string());
                rest = &rest[4 + n..];
            }
            Values::String(out)
        }
        other => return Err(Error::Unprocessable(format!("input `{name}`: datatype {other} is not supported (BOOL, INT8–INT64, UINT8–UINT64, FP32, FP64, BYTES)"))),
    })
}

/// Little-endian bytes of a tensor, as the binary extension and gRPC's raw contents carry
/// them (BYTES elements each after a 4-byte length).
pub fn encode_raw(values: &Values) -> Vec<u8> {
    match values {
        Values::Float(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Values::Double(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Values::Int64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Values::Int32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Values::Bool(v) => v.iter().map(|&b| u8::from(b)).collect(),
        Values::String(v) => v.iter().flat_map(|s| (s.len() as u32).to_le_bytes().into_iter().chain(s.bytes())).collect(),
    }
}


/// What a model takes and gives, as the protocol's metadata call reports it.
pub struct Description {
    /// The model's name (without any `@alias`).
    pub model: String,
    /// The version described.
    pub version: i64,
    /// Versions the name serves: the one asked for, or every active version.
    pub versions: Vec<String>,
    /// `onnx` for imported ONNX graphs, `lakeledger` for models trained here.
    pub platform: &'static str,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

impl super::Serving {
    /// What a protocol's model name and version name: `name@alias` follows the alias (and
    /// its canary when scoring), a bare name is its latest active version. Returns the
    /// model, the target and the version it names now (an alias's stable version).
    pub async fn resolve(&self, p: &crate::identity::Principal, name: &str, version: Option<&str>) -> Result<(String, super::Target, i64)> {
        if let Some(v) = version.filter(|v| !v.is_empty()) {
            // The model must be the caller's before anything else is said of the request.
            self.model_id(p, name).await?;
            let v: i64 = v.parse().map_err(|_| Error::NotFound { kind: "model version", name: format!("{name}/{v}") })?;
            return Ok((name.to_string(), super::Target::Version(v), v));
        }
        if let Some((model, alias)) = name.split_once('@') {
            let stable = self.route(p, model, alias).await?.stable;
            return Ok((model.to_string(), super::Target::Alias(alias.to_string()), stable));
        }
        let latest = self.models.versions(p, name).await?.into_iter().filter(|v| v.state == "active").map(|v| v.version).max();
        let v = latest.ok_or_else(|| Error::NotFound { kind: "model version", name: format!("{name} (it has no active version)") })?;
        Ok((name.to_string(), super::Target::Version(v), v))
    }

    /// The tensors a model takes and gives (loading and verifying it).
    pub async fn describe(&self, p: &crate::identity::Principal, name: &str, version: Option<&str>) -> Result<Description> {
        let (model, _, v) = self.resolve(p, name, version).await?;
        let loaded = self.loaded(p, &model, v).await?;
        let (inputs, outputs) = signature(&loaded);
        let platform = match &loaded.runnable {
            Runnable::Onnx(_) => "onnx",
            Runnable::Native(_) => "lakeledger",
        };
        let versions = match version.filter(|v| !v.is_empty()) {
            Some(_) => vec![v.to_string()],
            None => self.models.versions(p, &model).await?.into_iter().filter(|x| x.state == "active").map(|x| x.version.to_string()).collect(),
        };
        Ok(Description { model, version: v, versions, platform, inputs, outputs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, shape: &[i64], values: Values) -> NamedTensor {
        NamedTensor { name: name.into(), shape: shape.to_vec(), values }
    }

    #[test]
    fn tensors_become_rows_with_wide_inputs_as_lists() {
        let input = rows_from_tensors(&[t("x", &[2, 3], Values::Float(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])), t("kind", &[2], Values::String(vec!["a".into(), "b".into()]))]).unwrap();
        assert_eq!(input.columns, ["x", "kind"]);
        assert_eq!(input.rows, 2);
        assert_eq!(input.values[0], serde_json::json!([1.0, 2.0, 3.0]));
        assert_eq!(input.values[3], serde_json::json!("b"));
    }

    #[test]
    fn shapes_that_do_not_hold_the_values_are_refused() {
        let e = rows_from_tensors(&[t("x", &[2, 3], Values::Float(vec![1.0; 5]))]).unwrap_err();
        assert!(e.to_string().contains("holds 6 values, 5 were given"), "{e}");
        let e = rows_from_tensors(&[t("x", &[2], Values::Float(vec![1.0; 2])), t("y", &[3], Values::Float(vec![1.0; 3]))]).unwrap_err();
        assert!(e.to_string().contains("has 3 rows"), "{e}");
        let e = rows_from_tensors(&[t("x", &[i64::MAX - 1, 4], Values::Float(vec![]))]).unwrap_err();
        assert!(e.to_string().contains("larger than any request"), "{e}");
    }
}

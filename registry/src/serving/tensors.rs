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
                    let label = if classes.iter().all(|c| c.as_i64().is_some()) {
                        Elem::Int64
                    } else if classes.iter().all(Value::is_number) {
                        Elem::Double
                    } else {
                        Elem::String
                    };
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
        let width: usize = t.shape[1..].iter().map(|&d| d as usize).product();
        if t.values.len() != n * width {
            return Err(Error::Unprocessable(format!("input `{}`: shape {:?} holds {} values, {} were given", t.name, t.shape, n * width, t.values.len())));
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
    let mut values = Vec::with_capacity(rows * inputs.len());
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
    }
}

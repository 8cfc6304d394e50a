//! Named tensors in and out, as the Open Inference Protocol (KServe / Triton "V2") carries
//! them over HTTP and gRPC: each input tensor becomes a column of scoring rows (a tensor of
//! several values per row stays one column of lists, which an ONNX model spreads over its
//! input's columns), so tensors are scored through the same routing, canary, batching,
//! checks and inference log as MLflow-shaped requests.

use serde_json::Value;

use super::ScoringInput;
use crate::error::{Error, Result};
use crate::models::onnx::Values;

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

//! From Arrow columns to the numeric matrix a model sees, and back to label values.
//!
//! Numeric columns (integers, floats, booleans) are standardized with the training split's
//! mean and standard deviation; a null becomes the mean (0 after standardizing). Text
//! columns are one-hot encoded over the training split's most frequent values, plus one
//! explicit slot for everything else: values never seen in training, rarer values and
//! nulls. All of it is fitted once and stored in the artifact.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// One input column as the model takes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputColumn {
    pub name: String,
    #[serde(flatten)]
    pub encoding: Encoding,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "encoding", rename_all = "snake_case")]
pub enum Encoding {
    /// `(x - mean) / std`; nulls become the mean.
    Standardized { mean: f64, std: f64 },
    /// One slot per value, then one slot for any other value (unseen, rarer, null).
    OneHot { values: Vec<String> },
}

impl InputColumn {
    /// How many model inputs the column becomes.
    pub fn width(&self) -> usize {
        match &self.encoding {
            Encoding::Standardized { .. } => 1,
            Encoding::OneHot { values } => values.len() + 1,
        }
    }
}

/// A column's values before encoding.
pub enum RawColumn {
    Numeric(Vec<Option<f64>>),
    Text(Vec<Option<String>>),
}

impl RawColumn {
    /// Reads a column that models can take: numbers, booleans or text.
    pub fn read(batch: &RecordBatch, name: &str) -> Result<RawColumn> {
        let array = batch
            .column_by_name(name)
            .ok_or_else(|| Error::InvalidInput(format!("column `{name}` is missing")))?;
        Self::from_array(array, name)
    }

    fn from_array(array: &ArrayRef, name: &str) -> Result<RawColumn> {
        let t = array.data_type();
        if t.is_numeric() || *t == DataType::Boolean {
            let floats = cast(array, &DataType::Float64)?;
            let floats = floats.as_primitive::<Float64Type>();
            return Ok(RawColumn::Numeric((0..floats.len()).map(|i| floats.is_valid(i).then(|| floats.value(i))).collect()));
        }
        match t {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(..) => {
                let text = cast(array, &DataType::Utf8)?;
                let text = text.as_string::<i32>();
                Ok(RawColumn::Text((0..text.len()).map(|i| text.is_valid(i).then(|| text.value(i).to_string())).collect()))
            }
            other => Err(Error::InvalidInput(format!(
                "column `{name}` is {other}; models take numbers, booleans and text (leave it out of the inputs)"
            ))),
        }
    }
}

/// `x` to 12 significant digits: the value then reads back from the artifact's JSON as
/// exactly the same `f64`, so training and serving standardize identically.
pub(crate) fn stored(x: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    format!("{x:.11e}").parse().unwrap_or(x)
}

/// Fits each column's encoding on the rows in `rows`.
pub fn fit(names: &[String], columns: &[RawColumn], rows: &[usize], max_categories: usize) -> Vec<InputColumn> {
    names
        .iter()
        .zip(columns)
        .map(|(name, column)| {
            let encoding = match column {
                RawColumn::Numeric(values) => {
                    let present: Vec<f64> = rows.iter().filter_map(|&r| values[r]).collect();
                    let n = present.len().max(1) as f64;
                    let mean = present.iter().sum::<f64>() / n;
                    let var = present.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
                    // A constant column carries no signal; dividing by 1 keeps it at 0.
                    let std = if var.sqrt() > 1e-12 { var.sqrt() } else { 1.0 };
                    Encoding::Standardized { mean: stored(mean), std: stored(std) }
                }
                RawColumn::Text(values) => {
                    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
                    for &r in rows {
                        if let Some(v) = &values[r] {
                            *counts.entry(v.as_str()).or_default() += 1;
                        }
                    }
                    let mut by_count: Vec<(&str, usize)> = counts.into_iter().collect();
                    // Most frequent first; equal counts in name order, so the result is fixed.
                    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                    Encoding::OneHot { values: by_count.into_iter().take(max_categories).map(|(v, _)| v.to_string()).collect() }
                }
            };
            InputColumn { name: name.clone(), encoding }
        })
        .collect()
}

/// Encodes `rows` of the columns into a row-major `[rows × width]` matrix.
pub fn encode(inputs: &[InputColumn], columns: &[RawColumn], rows: &[usize]) -> Result<Vec<f32>> {
    let width: usize = inputs.iter().map(InputColumn::width).sum();
    let mut out = vec![0f32; rows.len() * width];
    let mut offset = 0;
    for (input, column) in inputs.iter().zip(columns) {
        match (&input.encoding, column) {
            (Encoding::Standardized { mean, std }, RawColumn::Numeric(values)) => {
                for (i, &r) in rows.iter().enumerate() {
                    out[i * width + offset] = values[r].map_or(0.0, |v| ((v - mean) / std) as f32);
                }
            }
            (Encoding::OneHot { values: vocabulary }, RawColumn::Text(values)) => {
                let index: std::collections::HashMap<&str, usize> = vocabulary.iter().enumerate().map(|(i, v)| (v.as_str(), i)).collect();
                for (i, &r) in rows.iter().enumerate() {
                    let slot = values[r].as_deref().and_then(|v| index.get(v).copied()).unwrap_or(vocabulary.len());
                    out[i * width + offset + slot] = 1.0;
                }
            }
            (Encoding::Standardized { .. }, RawColumn::Text(_)) => {
                return Err(Error::InvalidInput(format!("column `{}` must be numeric, as it was in training; got text", input.name)));
            }
            (Encoding::OneHot { .. }, RawColumn::Numeric(_)) => {
                return Err(Error::InvalidInput(format!("column `{}` must be text, as it was in training; got numbers", input.name)));
            }
        }
        offset += input.width();
    }
    Ok(out)
}

/// What the model predicts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// Class labels as they appear in the data, in sorted order; the model's output `i`
    /// is the probability of `classes[i]`.
    Classes { classes: Vec<Value> },
    /// A number, standardized for training with these statistics.
    Value { mean: f64, std: f64 },
}

/// Label values read for training: class indices or numbers, `None` where the label is null.
pub enum Labels {
    Classes(Vec<Option<usize>>),
    Values(Vec<Option<f64>>),
}

/// The class labels of a label column, sorted (numbers by value, text by text).
pub fn classes_of(array: &ArrayRef, label: &str) -> Result<(Vec<Value>, Vec<Option<usize>>)> {
    let as_values: Vec<Option<Value>> = match array.data_type() {
        t if t.is_integer() => {
            let ints = cast(array, &DataType::Int64)?;
            let ints = ints.as_primitive::<arrow::datatypes::Int64Type>();
            (0..ints.len()).map(|i| ints.is_valid(i).then(|| Value::from(ints.value(i)))).collect()
        }
        DataType::Boolean => {
            let b = array.as_boolean();
            (0..b.len()).map(|i| b.is_valid(i).then(|| Value::from(b.value(i)))).collect()
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(..) => {
            let text = cast(array, &DataType::Utf8)?;
            let text = text.as_string::<i32>();
            (0..text.len()).map(|i| text.is_valid(i).then(|| Value::from(text.value(i)))).collect()
        }
        other => {
            return Err(Error::InvalidInput(format!(
                "label `{label}` is {other}; a classifier needs integer, boolean or text labels (use task regression for numbers)"
            )));
        }
    };
    let mut classes: Vec<Value> = as_values.iter().flatten().cloned().collect();
    classes.sort_by(compare_labels);
    classes.dedup();
    let index = |v: &Value| classes.binary_search_by(|c| compare_labels(c, v)).ok();
    let indices = as_values.iter().map(|v| v.as_ref().and_then(index)).collect();
    Ok((classes, indices))
}

fn compare_labels(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_i64().cmp(&y.as_i64()),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        _ => a.to_string().cmp(&b.to_string()),
    }
}

/// Numeric label values (regression).
pub fn values_of(array: &ArrayRef, label: &str) -> Result<Vec<Option<f64>>> {
    if !array.data_type().is_numeric() {
        return Err(Error::InvalidInput(format!("label `{label}` is {}; regression needs numbers", array.data_type())));
    }
    let floats = cast(array, &DataType::Float64)?;
    let floats = floats.as_primitive::<Float64Type>();
    Ok((0..floats.len()).map(|i| floats.is_valid(i).then(|| floats.value(i))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn unseen_rare_and_null_text_share_the_other_slot() {
        let names = vec!["city".to_string(), "x".to_string()];
        let columns = vec![
            RawColumn::Text(vec![Some("a".into()), Some("b".into()), Some("a".into()), Some("c".into()), None, Some("zzz".into())]),
            RawColumn::Numeric(vec![Some(1.0), Some(3.0), None, Some(3.0), Some(1.0), Some(2.0)]),
        ];
        let inputs = fit(&names, &columns, &[0, 1, 2, 3, 4], 2);
        assert_eq!(inputs[0].encoding, Encoding::OneHot { values: vec!["a".into(), "b".into()] });
        assert_eq!(inputs[1].encoding, Encoding::Standardized { mean: 2.0, std: 1.0 });
        let m = encode(&inputs, &columns, &[2, 3, 4, 5]).unwrap();
        assert_eq!(m, vec![
            1.0, 0.0, 0.0, 0.0,  // a, null x -> mean
            0.0, 0.0, 1.0, 1.0,  // c was cut by max_categories
            0.0, 0.0, 1.0, -1.0, // null text
            0.0, 0.0, 1.0, 0.0,  // never seen
        ]);
    }

    #[test]
    fn classes_are_sorted_by_value() {
        let a: ArrayRef = Arc::new(arrow::array::Int64Array::from(vec![Some(10), Some(2), None, Some(10)]));
        let (classes, idx) = classes_of(&a, "y").unwrap();
        assert_eq!(classes, vec![Value::from(2), Value::from(10)]);
        assert_eq!(idx, vec![Some(1), Some(0), None, Some(1)]);
        let f: ArrayRef = Arc::new(arrow::array::Float64Array::from(vec![1.5]));
        assert!(classes_of(&f, "y").unwrap_err().to_string().contains("regression"));
    }
}

//! Imported ONNX models (scikit-learn, XGBoost, LightGBM converters; PyTorch exports), run
//! by tract, a pure-Rust ONNX runtime, with the ONNX-ML operators it lacks added in `ops`.
//!
//! A model is prepared once at registration and again at each verified load: the graph is
//! read, `ZipMap` taken off (its input, the class-probability tensor, becomes the output),
//! every operator checked against what the runtime can run (an unknown one is refused by
//! name), the batch axis made symbolic, the graph optimized, and one row run through it, so
//! that a model that cannot be served is refused at registration, not at the first request.
//!
//! What callers see of the graph is a list of columns: the graph's inputs, or for a single
//! 2-D input the names a signature gives its feature axis (`<input>[i]` without one). Rows
//! of JSON values become one typed tensor per graph input, batch axis first.

mod export;
pub mod mlflow;
mod ops;

pub use export::export;

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::{DimLike, InferenceFact};

use crate::error::{Error, Result};

/// Element types of the tensors a served model takes and gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Elem {
    Float,
    Double,
    Int64,
    Int32,
    Bool,
    String,
}

impl Elem {
    fn from_onnx(code: i32) -> Option<Elem> {
        Some(match code {
            1 => Elem::Float,
            11 => Elem::Double,
            7 => Elem::Int64,
            6 => Elem::Int32,
            9 => Elem::Bool,
            8 => Elem::String,
            _ => return None,
        })
    }

    fn datum(self) -> DatumType {
        match self {
            Elem::Float => f32::datum_type(),
            Elem::Double => f64::datum_type(),
            Elem::Int64 => i64::datum_type(),
            Elem::Int32 => i32::datum_type(),
            Elem::Bool => bool::datum_type(),
            Elem::String => String::datum_type(),
        }
    }

    /// The Open Inference Protocol's name for the type.
    pub fn oip(self) -> &'static str {
        match self {
            Elem::Float => "FP32",
            Elem::Double => "FP64",
            Elem::Int64 => "INT64",
            Elem::Int32 => "INT32",
            Elem::Bool => "BOOL",
            Elem::String => "BYTES",
        }
    }

    pub fn from_oip(name: &str) -> Option<Elem> {
        Some(match name {
            "FP32" => Elem::Float,
            "FP64" => Elem::Double,
            "INT64" => Elem::Int64,
            "INT32" => Elem::Int32,
            "BOOL" => Elem::Bool,
            "BYTES" => Elem::String,
            _ => return None,
        })
    }
}

/// Values of one tensor, batch axis first, row-major.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    Float(Vec<f32>),
    Double(Vec<f64>),
    Int64(Vec<i64>),
    Int32(Vec<i32>),
    Bool(Vec<bool>),
    String(Vec<String>),
}

impl Values {
    pub fn len(&self) -> usize {
        match self {
            Values::Float(v) => v.len(),
            Values::Double(v) => v.len(),
            Values::Int64(v) => v.len(),
            Values::Int32(v) => v.len(),
            Values::Bool(v) => v.len(),
            Values::String(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn elem(&self) -> Elem {
        match self {
            Values::Float(_) => Elem::Float,
            Values::Double(_) => Elem::Double,
            Values::Int64(_) => Elem::Int64,
            Values::Int32(_) => Elem::Int32,
            Values::Bool(_) => Elem::Bool,
            Values::String(_) => Elem::String,
        }
    }

    fn empty(elem: Elem, capacity: usize) -> Values {
        match elem {
            Elem::Float => Values::Float(Vec::with_capacity(capacity)),
            Elem::Double => Values::Double(Vec::with_capacity(capacity)),
            Elem::Int64 => Values::Int64(Vec::with_capacity(capacity)),
            Elem::Int32 => Values::Int32(Vec::with_capacity(capacity)),
            Elem::Bool => Values::Bool(Vec::with_capacity(capacity)),
            Elem::String => Values::String(Vec::with_capacity(capacity)),
        }
    }

    /// Appends `other` (same type) after these values.
    pub fn extend(&mut self, other: &Values) {
        match (self, other) {
            (Values::Float(a), Values::Float(b)) => a.extend_from_slice(b),
            (Values::Double(a), Values::Double(b)) => a.extend_from_slice(b),
            (Values::Int64(a), Values::Int64(b)) => a.extend_from_slice(b),
            (Values::Int32(a), Values::Int32(b)) => a.extend_from_slice(b),
            (Values::Bool(a), Values::Bool(b)) => a.extend_from_slice(b),
            (Values::String(a), Values::String(b)) => a.extend_from_slice(b),
            (a, b) => unreachable!("values of one tensor have one type ({:?}, {:?})", a.elem(), b.elem()),
        }
    }

    /// Elements `from..from + n`.
    pub fn slice(&self, from: usize, n: usize) -> Values {
        let r = from..from + n;
        match self {
            Values::Float(v) => Values::Float(v[r].to_vec()),
            Values::Double(v) => Values::Double(v[r].to_vec()),
            Values::Int64(v) => Values::Int64(v[r].to_vec()),
            Values::Int32(v) => Values::Int32(v[r].to_vec()),
            Values::Bool(v) => Values::Bool(v[r].to_vec()),
            Values::String(v) => Values::String(v[r].to_vec()),
        }
    }

    /// Element `i` as JSON (non-finite floats as null).
    pub fn json(&self, i: usize) -> Value {
        let float = |x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
        match self {
            Values::Float(v) => float(f64::from(v[i])),
            Values::Double(v) => float(v[i]),
            Values::Int64(v) => Value::from(v[i]),
            Values::Int32(v) => Value::from(v[i]),
            Values::Bool(v) => Value::Bool(v[i]),
            Values::String(v) => Value::String(v[i].clone()),
        }
    }

    fn to_tensor(&self, shape: &[usize]) -> TractResult<Tensor> {
        Ok(match self {
            Values::Float(v) => Tensor::from_shape(shape, v)?,
            Values::Double(v) => Tensor::from_shape(shape, v)?,
            Values::Int64(v) => Tensor::from_shape(shape, v)?,
            Values::Int32(v) => Tensor::from_shape(shape, v)?,
            Values::Bool(v) => Tensor::from_shape(shape, v)?,
            Values::String(v) => tract_ndarray::ArrayD::from_shape_vec(shape, v.clone())?.into_tensor(),
        })
    }

    fn from_tensor(t: &Tensor) -> TractResult<Values> {
        let plain = t.try_as_plain_ram()?;
        let dt = t.datum_type();
        Ok(if dt == f32::datum_type() {
            Values::Float(plain.as_slice::<f32>()?.to_vec())
        } else if dt == f64::datum_type() {
            Values::Double(plain.as_slice::<f64>()?.to_vec())
        } else if dt == i64::datum_type() {
            Values::Int64(plain.as_slice::<i64>()?.to_vec())
        } else if dt == TDim::datum_type() {
            let as_i64 = t.cast_to::<i64>()?;
            Values::Int64(as_i64.try_as_plain_ram()?.as_slice::<i64>()?.to_vec())
        } else if dt == i32::datum_type() {
            Values::Int32(plain.as_slice::<i32>()?.to_vec())
        } else if dt == bool::datum_type() {
            Values::Bool(plain.as_slice::<bool>()?.to_vec())
        } else if dt == String::datum_type() {
            Values::String(plain.as_slice::<String>()?.to_vec())
        } else {
            let as_f32 = t.cast_to::<f32>()?;
            Values::Float(as_f32.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
        })
    }
}

/// A graph input or output: its name, type and width (`None`: one value per row).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub elem: Elem,
    pub width: Option<usize>,
}

impl TensorSpec {
    pub fn row_width(&self) -> usize {
        self.width.unwrap_or(1)
    }

    /// The tensor's shape for `rows` rows (`-1`: the batch axis).
    pub fn shape(&self, rows: i64) -> Vec<i64> {
        match self.width {
            None => vec![rows],
            Some(w) => vec![rows, w as i64],
        }
    }
}

/// A column callers give: which graph input it feeds and where in its row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ColumnSpec {
    pub name: String,
    pub elem: Elem,
    pub input: usize,
    pub position: usize,
}

/// What the registry records of an imported graph (the version's `config`), enough to
/// describe it without loading it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Description {
    pub format: String,
    pub producer_name: String,
    pub producer_version: String,
    pub opsets: Vec<(String, i64)>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub columns: Vec<ColumnSpec>,
    /// Output index of the predicted label, when the graph gives one.
    pub label: Option<usize>,
    /// Output index of the class probabilities (or scores), with the class of each column.
    pub probabilities: Option<usize>,
    pub classes: Option<Vec<Value>>,
    /// Operators used, by domain-qualified name.
    pub operators: Vec<String>,
    /// Whether the label is recomputed from the probabilities (the most probable class,
    /// the first on a tie, as onnxruntime picks it): tract's classifier operators get the
    /// label of a binary classifier wrong, while their probabilities are right.
    #[serde(default)]
    pub relabel: bool,
}

/// A prepared ONNX model, ready to score.
pub struct OnnxModel {
    pub description: Description,
    plan: Arc<TypedRunnableModel>,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel").field("description", &self.description).finish_non_exhaustive()
    }
}

/// tract's ONNX parser with the operators of `ops` added.
fn framework() -> &'static tract_onnx::Onnx {
    static ONNX: OnceLock<tract_onnx::Onnx> = OnceLock::new();
    ONNX.get_or_init(|| {
        let mut onnx = tract_onnx::onnx();
        ops::register(&mut onnx.op_register);
        onnx
    })
}

fn refused(why: impl std::fmt::Display) -> Error {
    Error::Unprocessable(format!("the ONNX model is refused: {why}"))
}

/// Whether the bytes look like a serialized ONNX model (a protobuf `ModelProto` with a graph).
pub fn looks_like_onnx(bytes: &[u8]) -> bool {
    use prost::Message;
    pb::ModelProto::decode(bytes).is_ok_and(|m| m.graph.is_some() && m.ir_version > 0)
}

impl OnnxModel {
    /// Reads, checks and prepares a model. `columns` names the feature axis of a single
    /// 2-D input (a signature); without it columns are named after the graph's inputs.
    pub fn prepare(bytes: &[u8], columns: Option<&[String]>) -> Result<OnnxModel> {
        use prost::Message;
        let mut proto = pb::ModelProto::decode(bytes).map_err(|e| refused(format!("it is not an ONNX protobuf: {e}")))?;
        let graph = proto.graph.as_mut().ok_or_else(|| refused("it has no graph"))?;
        let operators = check_operators(graph)?;
        let zipmap = take_zipmap(graph)?;
        widen_binary_base_values(graph);
        let label_from_classifier = graph.output.first().is_some_and(|o| produced_by_classifier(graph, &o.name));

        let initializers: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let mut inputs = Vec::new();
        let mut fixed_batch = Vec::new();
        for i in graph.input.iter().filter(|i| !initializers.contains(i.name.as_str())) {
            let (spec, batch) = input_spec(i)?;
            inputs.push(spec);
            fixed_batch.push(batch);
        }
        if inputs.is_empty() {
            return Err(refused("the graph has no inputs"));
        }
        if fixed_batch.iter().any(Option::is_some) {
            return Err(refused(format!(
                "input `{}` has a fixed batch size; export it with a dynamic first axis (e.g. dynamic_axes in torch.onnx.export, None in skl2onnx's initial_types)",
                inputs[fixed_batch.iter().position(Option::is_some).expect("one is")].name
            )));
        }
        let columns = column_specs(&inputs, columns)?;
        // Output types come from the prepared graph's facts, not the declarations (ZipMap's
        // declared sequence of maps is now a tensor).
        let output_names: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
        let classes_from_graph = classifier_labels(graph);
        let softmax_outputs: Vec<String> = graph.node.iter().filter(|n| n.op_type == "Softmax").flat_map(|n| n.output.clone()).collect();

        let mut model = framework().model_for_proto_model(&proto).map_err(|e| refused(format!("{e:#}")))?;
        let n = model.symbols.sym("N");
        for (ix, spec) in inputs.iter().enumerate() {
            let shape: Vec<TDim> = match spec.width {
                None => vec![n.clone().into()],
                Some(w) => vec![n.clone().into(), w.to_dim()],
            };
            model.set_input_fact(ix, InferenceFact::dt_shape(spec.elem.datum(), shape)).map_err(|e| refused(format!("{e:#}")))?;
        }
        let typed = model.into_optimized().map_err(|e| refused(format!("it cannot be prepared to run: {e:#}")))?;
        let out_specs: Vec<TensorSpec> = typed
            .output_outlets()
            .map_err(|e| refused(format!("{e:#}")))?
            .iter()
            .zip(&output_names)
            .map(|(outlet, name)| {
                let fact = typed.outlet_fact(*outlet).map_err(|e| refused(format!("{e:#}")))?;
                let elem = elem_of(fact.datum_type).ok_or_else(|| refused(format!("output `{name}` has type {:?}, which cannot be served", fact.datum_type)))?;
                let width = match fact.shape.len() {
                    1 => None,
                    2 => Some(fact.shape[1].to_usize().map_err(|_| refused(format!("output `{name}` has no fixed width")))?),
                    r => return Err(refused(format!("output `{name}` has rank {r}; served models give one or two axes (batch first)"))),
                };
                Ok(TensorSpec { name: name.clone(), elem, width })
            })
            .collect::<Result<_>>()?;
        let plan = typed.into_runnable().map_err(|e| refused(format!("{e:#}")))?;

        let label = out_specs.iter().position(|o| o.elem != Elem::Float && o.elem != Elem::Double && o.row_width() == 1);
        let (probabilities, classes) = match &zipmap {
            Some(z) => (out_specs.iter().position(|o| o.name == z.probabilities), Some(z.classes.clone())),
            None => {
                let multi = out_specs.iter().position(|o| o.elem == Elem::Float && o.row_width() > 1);
                match multi {
                    Some(i) if label.is_some() || softmax_outputs.contains(&out_specs[i].name) => {
                        let width = out_specs[i].row_width();
                        let classes = classes_from_graph.filter(|c| c.len() == width).unwrap_or_else(|| (0..width as i64).map(Value::from).collect());
                        (Some(i), Some(classes))
                    }
                    _ => (None, None),
                }
            }
        };
        let description = Description {
            format: "onnx".into(),
            producer_name: proto.producer_name.clone(),
            producer_version: proto.producer_version.clone(),
            opsets: proto.opset_import.iter().map(|o| (if o.domain.is_empty() { "ai.onnx".to_string() } else { o.domain.clone() }, o.version)).collect(),
            inputs,
            outputs: out_specs,
            columns,
            label,
            probabilities,
            classes,
            operators,
            relabel: label.is_some() && probabilities.is_some() && label_from_classifier,
        };
        let model = OnnxModel { description, plan };
        model.smoke_test()?;
        Ok(model)
    }

    /// Runs one row of neutral values (zeros, empty text) so that an operator the runtime
    /// accepts but cannot evaluate is found now.
    fn smoke_test(&self) -> Result<()> {
        let tensors = self
            .description
            .inputs
            .iter()
            .map(|s| {
                let n = s.row_width();
                match s.elem {
                    Elem::Float => Values::Float(vec![0.0; n]),
                    Elem::Double => Values::Double(vec![0.0; n]),
                    Elem::Int64 => Values::Int64(vec![0; n]),
                    Elem::Int32 => Values::Int32(vec![0; n]),
                    Elem::Bool => Values::Bool(vec![false; n]),
                    Elem::String => Values::String(vec![String::new(); n]),
                }
            })
            .collect();
        self.run(tensors, 1).map(|_| ()).map_err(|e| match e {
            Error::Unprocessable(why) => refused(format!("a trial row fails: {why}")),
            other => other,
        })
    }

    /// The columns callers give, in order.
    pub fn column_names(&self) -> Vec<String> {
        self.description.columns.iter().map(|c| c.name.clone()).collect()
    }

    /// One tensor per graph input from rows of JSON values under `columns` (any order; all
    /// of the model's columns must be there). Errors name the column and row.
    pub fn tensors(&self, columns: &[String], values: &[Value], rows: usize) -> Result<Vec<Values>> {
        let d = &self.description;
        let mut out: Vec<Values> = d.inputs.iter().map(|s| Values::empty(s.elem, rows * s.row_width())).collect();
        let mut at = Vec::with_capacity(d.columns.len());
        for c in &d.columns {
            let Some(i) = columns.iter().position(|n| n == &c.name) else {
                return Err(Error::Unprocessable(format!("input column `{}` is missing; the model takes {}", c.name, self.column_names().join(", "))));
            };
            at.push(i);
        }
        let width = columns.len();
        for (ix, spec) in d.inputs.iter().enumerate() {
            let cols: Vec<(usize, &ColumnSpec)> = d.columns.iter().enumerate().filter(|(_, c)| c.input == ix).collect();
            for r in 0..rows {
                for (k, c) in &cols {
                    push_value(&mut out[ix], &values[r * width + at[*k]], c, r)?;
                }
            }
            debug_assert_eq!(out[ix].len(), rows * spec.row_width());
        }
        Ok(out)
    }

    /// Scores `rows` rows; returns one tensor per graph output, batch axis first.
    pub fn run(&self, inputs: Vec<Values>, rows: usize) -> Result<Vec<Values>> {
        let d = &self.description;
        let tensors: TVec<TValue> = inputs
            .iter()
            .zip(&d.inputs)
            .map(|(v, s)| {
                let shape: Vec<usize> = match s.width {
                    None => vec![rows],
                    Some(w) => vec![rows, w],
                };
                v.to_tensor(&shape).map(|t| t.into_tvalue())
            })
            .collect::<TractResult<_>>()
            .map_err(|e| Error::Internal(format!("building the input tensors: {e:#}")))?;
        let outputs = self.plan.run(tensors).map_err(|e| Error::Unprocessable(format!("the model could not score these rows: {e:#}")))?;
        let mut outputs: Vec<Values> = outputs
            .iter()
            .zip(&d.outputs)
            .map(|(t, spec)| {
                if t.shape().first() != Some(&rows) || t.len() != rows * spec.row_width() {
                    return Err(Error::Internal(format!("output `{}` has shape {:?} for {rows} rows", spec.name, t.shape())));
                }
                Values::from_tensor(t).map_err(|e| Error::Internal(format!("output `{}`: {e:#}", spec.name)))
            })
            .collect::<Result<_>>()?;
        if let (true, Some(l), Some(p), Some(classes)) = (d.relabel, d.label, d.probabilities, &d.classes) {
            let width = d.outputs[p].row_width();
            if let Values::Float(probabilities) = &outputs[p] {
                let best: Vec<&Value> = probabilities.chunks(width).map(|row| &classes[argmax(row)]).collect();
                outputs[l] = match &outputs[l] {
                    Values::String(_) => Values::String(best.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).collect()),
                    Values::Int32(_) => Values::Int32(best.iter().map(|v| v.as_i64().unwrap_or_default() as i32).collect()),
                    _ => Values::Int64(best.iter().map(|v| v.as_i64().unwrap_or_default()).collect()),
                };
            }
        }
        Ok(outputs)
    }

    /// Per row: the prediction (the label output, the argmax class, or the value), and the
    /// class probabilities when the graph gives them.
    pub fn predictions(&self, outputs: &[Values], rows: usize) -> (Vec<Value>, Option<Vec<Vec<f32>>>) {
        let d = &self.description;
        let probabilities = d.probabilities.map(|i| match &outputs[i] {
            Values::Float(v) => v.chunks(d.outputs[i].row_width()).map(<[f32]>::to_vec).collect::<Vec<_>>(),
            other => (0..rows).map(|r| vec![other.json(r).as_f64().unwrap_or(f64::NAN) as f32]).collect(),
        });
        let predictions = if let Some(l) = d.label {
            (0..rows).map(|r| outputs[l].json(r)).collect()
        } else if let (Some(p), Some(classes)) = (&probabilities, &d.classes) {
            p.iter().map(|row| classes[argmax(row)].clone()).collect()
        } else {
            let first = &outputs[0];
            let w = d.outputs[0].row_width();
            (0..rows).map(|r| if w == 1 { first.json(r) } else { Value::Array((0..w).map(|k| first.json(r * w + k)).collect()) }).collect()
        };
        (predictions, probabilities)
    }
}

/// The index of the largest score, the first on a tie (as onnxruntime picks a class).
pub fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |best, (i, v)| if *v > row[best] { i } else { best })
}

fn elem_of(dt: DatumType) -> Option<Elem> {
    // tract keeps some integer tensors as symbolic dimensions; their values are int64.
    if dt == TDim::datum_type() {
        return Some(Elem::Int64);
    }
    [Elem::Float, Elem::Double, Elem::Int64, Elem::Int32, Elem::Bool, Elem::String].into_iter().find(|e| e.datum() == dt)
}

/// A graph input's spec, and its batch size when that is fixed.
fn input_spec(i: &pb::ValueInfoProto) -> Result<(TensorSpec, Option<i64>)> {
    let Some(pb::type_proto::Value::TensorType(t)) = i.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(refused(format!("input `{}` is not a tensor", i.name)));
    };
    let elem = Elem::from_onnx(t.elem_type).ok_or_else(|| refused(format!("input `{}` has element type {}, which cannot be served", i.name, t.elem_type)))?;
    let dims: Vec<Option<i64>> = t
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => Some(v),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let width = match dims.as_slice() {
        [_] => None,
        [_, Some(w)] => Some(*w as usize),
        [_, None] => return Err(refused(format!("input `{}` has no fixed width (its second axis)", i.name))),
        other => return Err(refused(format!("input `{}` has {} axes; served models take one or two (batch first)", i.name, other.len()))),
    };
    Ok((TensorSpec { name: i.name.clone(), elem, width }, dims[0]))
}

fn column_specs(inputs: &[TensorSpec], names: Option<&[String]>) -> Result<Vec<ColumnSpec>> {
    if let Some(names) = names {
        let [single] = inputs else {
            return Err(Error::Unprocessable(format!("`columns` names the features of a single 2-D input; this graph has {} inputs", inputs.len())));
        };
        if single.row_width() != names.len() {
            return Err(Error::Unprocessable(format!("`columns` names {} features; input `{}` takes {}", names.len(), single.name, single.row_width())));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
            return Err(Error::Unprocessable(format!("`columns` names `{dup}` twice")));
        }
        return Ok(names.iter().enumerate().map(|(position, name)| ColumnSpec { name: name.clone(), elem: single.elem, input: 0, position }).collect());
    }
    Ok(inputs
        .iter()
        .enumerate()
        .flat_map(|(input, s)| {
            let w = s.row_width();
            (0..w).map(move |position| ColumnSpec {
                name: if s.width.is_none() || w == 1 { s.name.clone() } else { format!("{}[{position}]", s.name) },
                elem: s.elem,
                input,
                position,
            })
        })
        .collect())
}

fn push_value(out: &mut Values, v: &Value, c: &ColumnSpec, row: usize) -> Result<()> {
    let bad = |want: &str| Error::Unprocessable(format!("column `{}` row {row}: expected {want}, got {v}", c.name));
    let number = || match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| bad("a number")),
        Value::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
        _ => Err(bad("a number")),
    };
    let integer = || match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15).map(|f| f as i64)).ok_or_else(|| bad("an integer")),
        Value::Bool(b) => Ok(i64::from(*b)),
        _ => Err(bad("an integer")),
    };
    match out {
        // A missing number is NaN, as pandas gives it; tree ensembles route it.
        Values::Float(o) => o.push(if v.is_null() { f32::NAN } else { number()? as f32 }),
        Values::Double(o) => o.push(if v.is_null() { f64::NAN } else { number()? }),
        Values::Int64(o) => o.push(integer()?),
        Values::Int32(o) => o.push(i32::try_from(integer()?).map_err(|_| bad("a 32-bit integer"))?),
        Values::Bool(o) => o.push(match v {
            Value::Bool(b) => *b,
            Value::Number(n) if n.as_f64() == Some(0.0) || n.as_f64() == Some(1.0) => n.as_f64() == Some(1.0),
            _ => return Err(bad("true or false")),
        }),
        Values::String(o) => o.push(match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err(bad("text")),
        }),
    }
    Ok(())
}

/// A removed `ZipMap`: its output (now the probabilities tensor) and its class labels.
struct ZipMap {
    probabilities: String,
    classes: Vec<Value>,
}

/// Takes `ZipMap` off the graph: its output, a sequence of maps that only feeds a graph
/// output, becomes the probabilities tensor it read (an `Identity` in its place), under the
/// output's own name.
fn take_zipmap(graph: &mut pb::GraphProto) -> Result<Option<ZipMap>> {
    let mut found = graph.node.iter().enumerate().filter(|(_, n)| n.op_type == "ZipMap").map(|(i, _)| i);
    let Some(at) = found.next() else { return Ok(None) };
    if found.next().is_some() {
        return Err(refused("it has more than one ZipMap"));
    }
    let node = &mut graph.node[at];
    let (Some(_), Some(output)) = (node.input.first(), node.output.first().cloned()) else {
        return Err(refused("its ZipMap has no input or output"));
    };
    let classes: Vec<Value> = if let Some(a) = node.attribute.iter().find(|a| a.name == "classlabels_int64s") {
        a.ints.iter().map(|&i| Value::from(i)).collect()
    } else if let Some(a) = node.attribute.iter().find(|a| a.name == "classlabels_strings") {
        a.strings.iter().map(|s| Value::String(String::from_utf8_lossy(s).into_owned())).collect()
    } else {
        return Err(refused("its ZipMap has no class labels"));
    };
    node.op_type = "Identity".into();
    node.domain = String::new();
    node.attribute.clear();
    if graph.node.iter().any(|n| n.input.contains(&output)) {
        return Err(refused("its ZipMap feeds another operator; only a ZipMap that gives a graph output can be served"));
    }
    for o in graph.output.iter_mut().filter(|o| o.name == output) {
        o.r#type = Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor { elem_type: 1, shape: None })),
            ..Default::default()
        });
    }
    Ok(Some(ZipMap { probabilities: output, classes }))
}

/// Whether a tensor is a classifier operator's label output, directly or through
/// `Identity` / `Cast`.
fn produced_by_classifier(graph: &pb::GraphProto, name: &str) -> bool {
    let mut name = name.to_string();
    for _ in 0..graph.node.len() {
        let Some(n) = graph.node.iter().find(|n| n.output.contains(&name)) else { return false };
        match n.op_type.as_str() {
            "TreeEnsembleClassifier" | "LinearClassifier" => return n.output.first() == Some(&name),
            "Identity" | "Cast" => match n.input.first() {
                Some(i) => name = i.clone(),
                None => return false,
            },
            _ => return false,
        }
    }
    false
}

/// A binary tree-ensemble classifier whose votes all go to one class (XGBoost, LightGBM)
/// may give one base value, the margin of the positive class; tract wants one per class.
fn widen_binary_base_values(graph: &mut pb::GraphProto) {
    for n in graph.node.iter_mut().filter(|n| n.op_type == "TreeEnsembleClassifier") {
        let labels = n.attribute.iter().find(|a| a.name == "classlabels_int64s").map(|a| a.ints.len()).or_else(|| n.attribute.iter().find(|a| a.name == "classlabels_strings").map(|a| a.strings.len()));
        let one_class = n.attribute.iter().find(|a| a.name == "class_ids").is_some_and(|a| a.ints.iter().all(|&c| c == 0));
        if labels != Some(2) || !one_class {
            continue;
        }
        if let Some(base) = n.attribute.iter_mut().find(|a| a.name == "base_values")
            && base.floats.len() == 1
        {
            base.floats.push(0.0);
        }
    }
}

/// The class labels a classifier operator in the graph declares.
fn classifier_labels(graph: &pb::GraphProto) -> Option<Vec<Value>> {
    let node = graph.node.iter().find(|n| matches!(n.op_type.as_str(), "TreeEnsembleClassifier" | "LinearClassifier" | "SVMClassifier"))?;
    for a in &node.attribute {
        match a.name.as_str() {
            "classlabels_int64s" | "classlabels_ints" => return Some(a.ints.iter().map(|&i| Value::from(i)).collect()),
            "classlabels_strings" => return Some(a.strings.iter().map(|s| Value::String(String::from_utf8_lossy(s).into_owned())).collect()),
            _ => {}
        }
    }
    None
}

/// Every operator of the graph, refusing the ones the runtime cannot run by name.
fn check_operators(graph: &pb::GraphProto) -> Result<Vec<String>> {
    let register = &framework().op_register.0;
    let mut used = std::collections::BTreeSet::new();
    let mut unknown = std::collections::BTreeSet::new();
    for n in &graph.node {
        let name = if n.domain.is_empty() || n.domain == "ai.onnx" { n.op_type.clone() } else { format!("{}.{}", n.domain, n.op_type) };
        // ZipMap is taken off the graph before it is parsed (see `take_zipmap`).
        let known = register.contains_key(&n.op_type) || n.op_type == "ZipMap";
        if !known || !matches!(n.domain.as_str(), "" | "ai.onnx" | "ai.onnx.ml") {
            unknown.insert(name.clone());
        }
        used.insert(name);
    }
    if !unknown.is_empty() {
        return Err(refused(format!(
            "it uses operators this server cannot run: {}",
            unknown.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(used.into_iter().collect())
}

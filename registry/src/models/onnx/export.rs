//! A model trained here, written as an ONNX graph that onnxruntime (or any ONNX runtime with
//! the ONNX-ML operators) runs with the same results: one input per column (numbers as
//! float `[N, 1]`, categories as string `[N, 1]`), the artifact's own preprocessing (nulls
//! as NaN become the training mean, then standardized; categories one-hot with a last slot
//! for any other value), the dense layers with ReLU between them, and the output: `label`
//! and `probabilities` for a classifier, `predictions` for a regressor, in the label's units.

use lakeledger_trainer::ModelArtifact;
use lakeledger_trainer::data::{Encoding, Target};
use prost::Message;
use serde_json::Value;
use tract_onnx::pb;

use crate::error::{Error, Result};

const FLOAT: i32 = 1;
const INT64: i32 = 7;
const STRING: i32 = 8;
const DOUBLE: i32 = 11;

/// The graph under construction: nodes, constants and a counter for unique names.
#[derive(Default)]
struct Graph {
    nodes: Vec<pb::NodeProto>,
    constants: Vec<pb::TensorProto>,
    next: usize,
}

impl Graph {
    fn name(&mut self, what: &str) -> String {
        self.next += 1;
        format!("{what}_{}", self.next)
    }

    fn node(&mut self, op: &str, domain: &str, inputs: &[&str], attributes: Vec<pb::AttributeProto>) -> String {
        let output = self.name(&op.to_ascii_lowercase());
        self.node_named(op, domain, inputs, attributes, &output);
        output
    }

    fn node_named(&mut self, op: &str, domain: &str, inputs: &[&str], attributes: Vec<pb::AttributeProto>, output: &str) {
        self.nodes.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name: format!("{op}_{}", self.nodes.len()),
            op_type: op.into(),
            domain: domain.into(),
            attribute: attributes,
            ..Default::default()
        });
    }

    fn floats(&mut self, what: &str, dims: &[i64], values: Vec<f32>) -> String {
        let name = self.name(what);
        self.constants.push(pb::TensorProto { name: name.clone(), dims: dims.to_vec(), data_type: FLOAT, float_data: values, ..Default::default() });
        name
    }

    fn ints(&mut self, what: &str, dims: &[i64], values: Vec<i64>) -> String {
        let name = self.name(what);
        self.constants.push(pb::TensorProto { name: name.clone(), dims: dims.to_vec(), data_type: INT64, int64_data: values, ..Default::default() });
        name
    }
}

fn attr_int(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: 2, i, ..Default::default() }
}

fn attr_strings(name: &str, strings: &[String]) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: 8, strings: strings.iter().map(|s| s.as_bytes().to_vec()).collect(), ..Default::default() }
}

fn value_info(name: &str, elem_type: i32, dims: &[Option<i64>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => dimension::Value::DimValue(*v),
                None => dimension::Value::DimParam("batch".into()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor { elem_type, shape: Some(pb::TensorShapeProto { dim }) })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The artifact as ONNX bytes; `name` and `version` go into the model's metadata.
pub fn export(artifact: &ModelArtifact, name: &str, version: i64) -> Result<Vec<u8>> {
    let layers = artifact.dense_layers().map_err(|e| Error::Tampered(format!("model {name}/{version}: {e}")))?;
    let mut g = Graph::default();
    let mut inputs = Vec::new();
    let mut parts = Vec::new();
    for c in &artifact.inputs {
        match &c.encoding {
            Encoding::Standardized { mean, std } => {
                inputs.push(value_info(&c.name, FLOAT, &[None, Some(1)]));
                let mean_c = g.floats("mean", &[], vec![*mean as f32]);
                let std_c = g.floats("std", &[], vec![*std as f32]);
                let missing = g.node("IsNaN", "", &[&c.name], vec![]);
                let filled = g.node("Where", "", &[&missing, &mean_c, &c.name], vec![]);
                let centered = g.node("Sub", "", &[&filled, &mean_c], vec![]);
                parts.push(g.node("Div", "", &[&centered, &std_c], vec![]));
            }
            Encoding::OneHot { values } => {
                inputs.push(value_info(&c.name, STRING, &[None, Some(1)]));
                let k = values.len() as i64;
                let hot = g.node("OneHotEncoder", "ai.onnx.ml", &[&c.name], vec![attr_strings("cats_strings", values), attr_int("zeros", 1)]);
                let shape = g.ints("shape", &[2], vec![-1, k]);
                let flat = g.node("Reshape", "", &[&hot, &shape], vec![]);
                // The last slot is "any other value": 1 where no known value matched.
                let axes = g.ints("axes", &[1], vec![1]);
                let matched = g.node("ReduceSum", "", &[&flat, &axes], vec![attr_int("keepdims", 1)]);
                let one = g.floats("one", &[], vec![1.0]);
                let other = g.node("Sub", "", &[&one, &matched], vec![]);
                parts.push(g.node("Concat", "", &[&flat, &other], vec![attr_int("axis", 1)]));
            }
        }
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    let mut x = if refs.len() == 1 { refs[0].to_string() } else { g.node("Concat", "", &refs, vec![attr_int("axis", 1)]) };
    for (i, l) in layers.iter().enumerate() {
        let w = g.floats("weights", &[l.inputs as i64, l.outputs as i64], l.weights.clone());
        let b = g.floats("bias", &[l.outputs as i64], l.bias.clone());
        let product = g.node("MatMul", "", &[&x, &w], vec![]);
        x = g.node("Add", "", &[&product, &b], vec![]);
        if i + 1 < layers.len() {
            x = g.node("Relu", "", &[&x], vec![]);
        }
    }
    let outputs = match &artifact.target {
        Target::Classes { classes } => {
            g.node_named("Softmax", "", &[&x], vec![attr_int("axis", 1)], "probabilities");
            let best = g.node("ArgMax", "", &["probabilities"], vec![attr_int("axis", 1), attr_int("keepdims", 0)]);
            let (labels, elem) = label_constant(&mut g, classes);
            g.node_named("Gather", "", &[&labels, &best], vec![attr_int("axis", 0)], "label");
            vec![value_info("label", elem, &[None]), value_info("probabilities", FLOAT, &[None, Some(classes.len() as i64)])]
        }
        Target::Value { mean, std } => {
            let std_c = g.floats("std", &[], vec![*std as f32]);
            let mean_c = g.floats("mean", &[], vec![*mean as f32]);
            let scaled = g.node("Mul", "", &[&x, &std_c], vec![]);
            g.node_named("Add", "", &[&scaled, &mean_c], vec![], "predictions");
            vec![value_info("predictions", FLOAT, &[None, Some(1)])]
        }
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 15 }, pb::OperatorSetIdProto { domain: "ai.onnx.ml".into(), version: 3 }],
        producer_name: "lakeledger".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        model_version: version,
        doc_string: format!("{name} version {version}, exported from a model trained by lakeledger"),
        graph: Some(pb::GraphProto {
            node: g.nodes,
            name: name.into(),
            initializer: g.constants,
            input: inputs,
            output: outputs,
            ..Default::default()
        }),
        metadata_props: vec![
            pb::StringStringEntryProto { key: "lakeledger.model".into(), value: name.into() },
            pb::StringStringEntryProto { key: "lakeledger.version".into(), value: version.to_string() },
            pb::StringStringEntryProto { key: "lakeledger.backend".into(), value: artifact.training.backend.clone() },
        ],
        ..Default::default()
    };
    Ok(model.encode_to_vec())
}

/// The class labels as a constant tensor (int64, double or string, as the labels are) and
/// its element type.
fn label_constant(g: &mut Graph, classes: &[Value]) -> (String, i32) {
    let name = g.name("classes");
    let dims = vec![classes.len() as i64];
    let tensor = if let Some(ints) = classes.iter().map(Value::as_i64).collect::<Option<Vec<_>>>() {
        pb::TensorProto { name: name.clone(), dims, data_type: INT64, int64_data: ints, ..Default::default() }
    } else if let Some(floats) = classes.iter().map(Value::as_f64).collect::<Option<Vec<_>>>() {
        pb::TensorProto { name: name.clone(), dims, data_type: DOUBLE, double_data: floats, ..Default::default() }
    } else {
        let text = classes.iter().map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_string).into_bytes()).collect();
        pb::TensorProto { name: name.clone(), dims, data_type: STRING, string_data: text, ..Default::default() }
    };
    let elem = tensor.data_type;
    g.constants.push(tensor);
    (name, elem)
}

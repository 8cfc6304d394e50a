//! ONNX-ML operators the common converters emit and tract does not ship, added to tract's
//! ONNX operator register: `Scaler` (StandardScaler), `OneHotEncoder`, `LabelEncoder`,
//! `Imputer` (SimpleImputer), `Binarizer`, `ArrayFeatureExtractor` (column selection in
//! pipelines) and `TreeEnsembleRegressor` (gradient boosting and forest regressors). Each follows the operator's definition in the
//! ONNX-ML specification, as onnxruntime computes it (float arithmetic, the same order).
//! `ZipMap` is not an operator here: it is taken off the graph before parsing (see
//! `graph.rs`), since its output is a sequence of maps, not a tensor.

use std::hash::Hash;

use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_core::ops::array::Gather;
use tract_onnx::tract_core::ops::cast::cast;
use tract_onnx::tract_core::ops::change_axes::wire_with_rank_broadcast;
use tract_onnx::tract_core::ops::math::{add, mul, sub};
use tract_onnx::tract_core::{as_op, op_as_typed_op, op_out_of_plan};
use tract_onnx::tract_hir::internal::*;
use tract_onnx_opl::ml::tree::{Cmp, TreeEnsemble, TreeEnsembleData};
use tract_onnx_opl::ml::tree_ensemble_classifier::{TreeEnsembleClassifier as EnsembleScores, parse_aggregate};

pub fn register(reg: &mut OnnxOpRegister) {
    reg.insert("Scaler", scaler);
    reg.insert("OneHotEncoder", one_hot_encoder);
    reg.insert("ArrayFeatureExtractor", array_feature_extractor);
    reg.insert("TreeEnsembleRegressor", tree_ensemble_regressor);
    reg.insert("LabelEncoder", label_encoder);
    reg.insert("Imputer", imputer);
    reg.insert("Binarizer", binarizer);
}

type Built = TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

// ---- Scaler: y = (x - offset) * scale, as float ----

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct Scaler {
    offset: Arc<Tensor>,
    scale: Arc<Tensor>,
}

fn scaler(_ctx: &ParsingContext, node: &NodeProto) -> Built {
    let offset: Vec<f32> = node.get_attr_opt_vec("offset")?.unwrap_or_else(|| vec![0.0]);
    let scale: Vec<f32> = node.get_attr_opt_vec("scale")?.unwrap_or_else(|| vec![1.0]);
    Ok((expand(Scaler { offset: rctensor1(&offset), scale: rctensor1(&scale) }), vec![]))
}

impl Expansion for Scaler {
    fn name(&self) -> StaticName {
        "Scaler".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let mut x = inputs[0];
        if model.outlet_fact(x)?.datum_type != f32::datum_type() {
            x = model.wire_node(format!("{prefix}.to_f32"), cast(f32::datum_type()), &[x])?[0];
        }
        let offset = model.add_const(format!("{prefix}.offset"), self.offset.clone())?;
        let scale = model.add_const(format!("{prefix}.scale"), self.scale.clone())?;
        let centered = wire_with_rank_broadcast(format!("{prefix}.sub"), model, sub(), &[x, offset])?[0];
        wire_with_rank_broadcast(format!("{prefix}.mul"), model, mul(), &[centered, scale])
    }
}

// ---- ArrayFeatureExtractor: X[..., indices] ----

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct ArrayFeatureExtractor;

fn array_feature_extractor(_ctx: &ParsingContext, _node: &NodeProto) -> Built {
    Ok((expand(ArrayFeatureExtractor), vec![]))
}

impl Expansion for ArrayFeatureExtractor {
    fn name(&self) -> StaticName {
        "ArrayFeatureExtractor".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 2)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.equals(&outputs[0].rank, &inputs[0].rank)?;
        s.equals(&inputs[1].rank, 1)?;
        s.given(&inputs[0].rank, move |s, rank| {
            let rank = rank as usize;
            for axis in 0..rank.saturating_sub(1) {
                s.equals(&outputs[0].shape[axis], &inputs[0].shape[axis])?;
            }
            if rank >= 1 {
                s.equals(&outputs[0].shape[rank - 1], &inputs[1].shape[0])?;
            }
            Ok(())
        })
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let rank = model.outlet_fact(inputs[0])?.rank();
        ensure!(rank >= 2, "ArrayFeatureExtractor: the data must have a batch axis (rank 2 or more), got rank {rank}");
        model.wire_node(prefix, Gather { axis: rank - 1, output_type: None }, inputs)
    }
}

// ---- OneHotEncoder: one float column per category, all zeros for an unknown value ----

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct OneHotEncoder {
    /// i64 or String categories, in output order.
    cats: Arc<Tensor>,
    /// Whether an unknown value gives all zeros (`zeros=1`, the default) or an error.
    unknown_is_zeros: bool,
}

fn one_hot_encoder(_ctx: &ParsingContext, node: &NodeProto) -> Built {
    let ints = node.get_attr_opt_slice::<i64>("cats_int64s")?;
    let strings = node.get_attr_opt_tvec::<&str>("cats_strings")?;
    let cats = match (ints, strings) {
        (Some(i), None) => rctensor1(i),
        (None, Some(s)) => rctensor1(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        _ => bail!("OneHotEncoder needs exactly one of cats_int64s and cats_strings"),
    };
    let zeros: i64 = node.get_attr_opt("zeros")?.unwrap_or(1);
    Ok((expand(OneHotEncoder { cats, unknown_is_zeros: zeros != 0 }), vec![]))
}

impl Expansion for OneHotEncoder {
    fn name(&self) -> StaticName {
        "OneHotEncoder".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].rank, inputs[0].rank.bex() + 1)?;
        let width = self.cats.len();
        s.given(&inputs[0].rank, move |s, rank| {
            let rank = rank as usize;
            for axis in 0..rank {
                s.equals(&outputs[0].shape[axis], &inputs[0].shape[axis])?;
            }
            s.equals(&outputs[0].shape[rank], width.to_dim())
        })
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, OneHotEncode { cats: self.cats.clone(), unknown_is_zeros: self.unknown_is_zeros }, inputs)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct OneHotEncode {
    cats: Arc<Tensor>,
    unknown_is_zeros: bool,
}

impl OneHotEncode {
    /// The category index of each input value (`None`: unknown).
    fn indices(&self, input: &Tensor) -> TractResult<Vec<Option<usize>>> {
        let plain = input.try_as_plain_ram()?;
        if self.cats.datum_type() == String::datum_type() {
            let cats = self.cats.try_as_plain_ram()?;
            let cats = cats.as_slice::<String>()?;
            ensure!(input.datum_type() == String::datum_type(), "OneHotEncoder: string categories need string input, got {:?}", input.datum_type());
            return Ok(plain.as_slice::<String>()?.iter().map(|v| cats.iter().position(|c| c == v)).collect());
        }
        let cats = self.cats.try_as_plain_ram()?;
        let cats = cats.as_slice::<i64>()?;
        // Numbers compare as integers (onnxruntime truncates floats to int64 first).
        let as_i64 = input.cast_to::<i64>()?;
        let view = as_i64.try_as_plain_ram()?;
        Ok(view.as_slice::<i64>()?.iter().map(|v| cats.iter().position(|c| c == v)).collect())
    }
}

impl Op for OneHotEncode {
    fn name(&self) -> StaticName {
        "OneHotEncode".into()
    }

    op_as_typed_op!();
}

impl EvalOp for OneHotEncode {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let width = self.cats.len();
        let indices = self.indices(&input)?;
        let mut out = vec![0f32; indices.len() * width];
        for (row, index) in indices.iter().enumerate() {
            match index {
                Some(i) => out[row * width + i] = 1.0,
                None if self.unknown_is_zeros => {}
                None => bail!("OneHotEncoder: a value is not one of the categories (zeros=0)"),
            }
        }
        let mut shape: Vec<usize> = input.shape().to_vec();
        shape.push(width);
        Ok(tvec!(Tensor::from_shape(&shape, &out)?.into_tvalue()))
    }
}

impl TypedOp for OneHotEncode {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape: TVec<TDim> = inputs[0].shape.iter().cloned().collect();
        shape.push(self.cats.len().to_dim());
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

// ---- TreeEnsembleRegressor ----

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct TreeEnsembleRegressor {
    ensemble: TreeEnsemble,
    base_values: Option<Arc<Tensor>>,
}

fn tree_ensemble_regressor(_ctx: &ParsingContext, node: &NodeProto) -> Built {
    let post: Option<String> = node.get_attr_opt("post_transform")?;
    if let Some(p) = post.as_deref().filter(|p| *p != "NONE") {
        bail!("TreeEnsembleRegressor: post_transform {p} is not supported (only NONE)");
    }
    let n_targets: usize = node.get_attr_opt::<i64>("n_targets")?.unwrap_or(1).try_into()?;
    let aggregate = parse_aggregate(node.get_attr_opt("aggregate_function")?.unwrap_or("SUM"))?;
    let ensemble = TreeEnsemble::build(ensemble_data(node)?, max_feature(node)?, n_targets, aggregate)?;
    let base_values = node.get_attr_opt_vec::<f32>("base_values")?.map(|b| rctensor1(&b));
    if let Some(b) = &base_values {
        ensure!(b.len() == n_targets, "TreeEnsembleRegressor: {} base values for {n_targets} targets", b.len());
    }
    Ok((expand(TreeEnsembleRegressor { ensemble, base_values }), vec![]))
}

fn max_feature(node: &NodeProto) -> TractResult<usize> {
    Ok(node.get_attr_slice::<i64>("nodes_featureids")?.iter().copied().max().unwrap_or(0).try_into()?)
}

fn cmp_of(mode: &str) -> TractResult<Option<Cmp>> {
    Ok(Some(match mode {
        "BRANCH_LEQ" => Cmp::LessEqual,
        "BRANCH_LT" => Cmp::Less,
        "BRANCH_GTE" => Cmp::GreaterEqual,
        "BRANCH_GT" => Cmp::Greater,
        "BRANCH_EQ" => Cmp::Equal,
        "BRANCH_NEQ" => Cmp::NotEqual,
        "LEAF" => return Ok(None),
        other => bail!("unknown tree node mode {other}"),
    }))
}

/// Lays the trees out as tract's tree-ensemble evaluator reads them: one 5-word row per
/// node (feature, true row, false row, threshold bits, comparison | NaN-goes-true flag; a
/// leaf holds its range in the vote list) and (target, weight bits) pairs for the votes.
fn ensemble_data(node: &NodeProto) -> TractResult<TreeEnsembleData> {
    let ids = |name: &str| -> TractResult<Vec<usize>> { node.get_attr_slice::<i64>(name)?.iter().map(|&v| Ok(usize::try_from(v)?)).collect() };
    let node_ids = ids("nodes_nodeids")?;
    let tree_ids = ids("nodes_treeids")?;
    let feature_ids = ids("nodes_featureids")?;
    let true_ids = ids("nodes_truenodeids")?;
    let false_ids = ids("nodes_falsenodeids")?;
    let values: Vec<f32> = node.get_attr_vec("nodes_values")?;
    let modes: Vec<Option<Cmp>> = node.get_attr_vec::<&str>("nodes_modes")?.iter().map(|m| cmp_of(m)).collect::<TractResult<_>>()?;
    let n = node_ids.len();
    ensure!(n > 0, "TreeEnsembleRegressor: the ensemble has no nodes");
    for (name, len) in [("nodes_treeids", tree_ids.len()), ("nodes_featureids", feature_ids.len()), ("nodes_truenodeids", true_ids.len()), ("nodes_falsenodeids", false_ids.len()), ("nodes_values", values.len()), ("nodes_modes", modes.len())] {
        ensure!(len == n, "TreeEnsembleRegressor: {name} has {len} entries for {n} nodes");
    }
    let nan_true: Vec<bool> = match node.get_attr_opt_slice::<i64>("nodes_missing_value_tracks_true")? {
        Some(v) => {
            ensure!(v.len() == n, "TreeEnsembleRegressor: nodes_missing_value_tracks_true has {} entries for {n} nodes", v.len());
            v.iter().map(|&x| x != 0).collect()
        }
        None => vec![false; n],
    };
    let leaf_node_ids = ids("target_nodeids")?;
    let leaf_tree_ids = ids("target_treeids")?;
    let leaf_targets = ids("target_ids")?;
    let leaf_weights: Vec<f32> = node.get_attr_vec("target_weights")?;
    let votes = leaf_node_ids.len();
    ensure!(leaf_tree_ids.len() == votes && leaf_targets.len() == votes && leaf_weights.len() == votes, "TreeEnsembleRegressor: the target_* lists differ in length");

    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (tree_ids[i], node_ids[i]));
    let mut vote_order: Vec<usize> = (0..votes).collect();
    vote_order.sort_by_key(|&i| (leaf_tree_ids[i], leaf_node_ids[i]));

    let mut trees: Vec<u32> = vec![];
    let mut rows: Vec<u32> = vec![];
    let mut leaves: Vec<u32> = vec![];
    let mut current = None;
    let mut next_vote = 0;
    for i in order {
        if current != Some(tree_ids[i]) {
            ensure!(tree_ids[i] == trees.len(), "TreeEnsembleRegressor: tree ids must start at 0 and rise by 1");
            current = Some(tree_ids[i]);
            trees.push((rows.len() / 5) as u32);
        }
        let root = *trees.last().expect("a tree was just started");
        ensure!(node_ids[i] == rows.len() / 5 - root as usize, "TreeEnsembleRegressor: node ids of tree {} must start at 0 and rise by 1", tree_ids[i]);
        match modes[i] {
            Some(cmp) => rows.extend([
                u32::try_from(feature_ids[i])?,
                u32::try_from(true_ids[i])? + root,
                u32::try_from(false_ids[i])? + root,
                values[i].to_bits(),
                (0x0100 * u32::from(nan_true[i])) | cmp as u32,
            ]),
            None => {
                let start = (leaves.len() / 2) as u32;
                while next_vote < votes && leaf_tree_ids[vote_order[next_vote]] == tree_ids[i] && leaf_node_ids[vote_order[next_vote]] == node_ids[i] {
                    let v = vote_order[next_vote];
                    leaves.extend([u32::try_from(leaf_targets[v])?, leaf_weights[v].to_bits()]);
                    next_vote += 1;
                }
                rows.extend([start, (leaves.len() / 2) as u32, 0, 0, 0]);
            }
        }
    }
    ensure!(next_vote == votes, "TreeEnsembleRegressor: {} target weights name no leaf", votes - next_vote);
    Ok(TreeEnsembleData {
        trees: rctensor1(&trees),
        nodes: tensor1(&rows).into_shape(&[rows.len() / 5, 5])?.into_arc_tensor(),
        leaves: tensor1(&leaves).into_shape(&[leaves.len() / 2, 2])?.into_arc_tensor(),
    })
}

impl Expansion for TreeEnsembleRegressor {
    fn name(&self) -> StaticName {
        "TreeEnsembleRegressor".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].rank, 2)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[0].shape[1], self.ensemble.n_classes.to_dim())?;
        Ok(())
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let mut scores = model.wire_node(format!("{prefix}.ensemble"), EnsembleScores { ensemble: self.ensemble.clone() }, inputs)?;
        if let Some(base) = &self.base_values {
            let base = model.add_const(format!("{prefix}.base"), (**base).clone().broadcast_into_rank(2)?.into_arc_tensor())?;
            scores = model.wire_node(format!("{prefix}.base_values"), add(), &[scores[0], base])?;
        }
        Ok(scores)
    }
}

// ---- Element-wise maps: LabelEncoder, Imputer, Binarizer ----

/// What an element-wise ONNX-ML operator does to each value.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
enum Map {
    /// Keys to values (i64, String or f32 tensors of equal length); `default` otherwise.
    Label { keys: Arc<Tensor>, values: Arc<Tensor>, default: Arc<Tensor> },
    /// Values equal to `replaced` (NaN matches NaN) become the column's imputed value
    /// (one value for every column, or one per column of the last axis).
    Impute { imputed: Arc<Tensor>, replaced: Arc<Tensor> },
    /// 1 above the threshold, else 0.
    Binarize { threshold: u32 },
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct ElementMap {
    name: &'static str,
    map: Map,
}

fn label_encoder(_ctx: &ParsingContext, node: &NodeProto) -> Built {
    let strings = |name: &str| -> TractResult<Option<Arc<Tensor>>> { Ok(node.get_attr_opt_tvec::<&str>(name)?.map(|v| rctensor1(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>()))) };
    let ints = |name: &str| -> TractResult<Option<Arc<Tensor>>> { Ok(node.get_attr_opt_slice::<i64>(name)?.map(rctensor1)) };
    let floats = |name: &str| -> TractResult<Option<Arc<Tensor>>> { Ok(node.get_attr_opt_vec::<f32>(name)?.map(|v| rctensor1(&v))) };
    let one_of = |what: &str, found: [Option<Arc<Tensor>>; 3]| -> TractResult<Arc<Tensor>> {
        let mut given = found.into_iter().flatten();
        match (given.next(), given.next()) {
            (Some(t), None) => Ok(t),
            _ => bail!("LabelEncoder needs exactly one of {what}_strings, {what}_int64s and {what}_floats"),
        }
    };
    let keys = one_of("keys", [strings("keys_strings")?, ints("keys_int64s")?, floats("keys_floats")?])?;
    let values = one_of("values", [strings("values_strings")?, ints("values_int64s")?, floats("values_floats")?])?;
    ensure!(keys.len() == values.len(), "LabelEncoder: {} keys for {} values", keys.len(), values.len());
    let dt = values.datum_type();
    let default = if dt == String::datum_type() {
        rctensor0(node.get_attr_opt::<String>("default_string")?.unwrap_or_else(|| "_Unused".to_string()))
    } else if dt == i64::datum_type() {
        rctensor0(node.get_attr_opt::<i64>("default_int64")?.unwrap_or(-1))
    } else {
        rctensor0(node.get_attr_opt::<f32>("default_float")?.unwrap_or(-0.0))
    };
    Ok((expand(ElementMap { name: "LabelEncoder", map: Map::Label { keys, values, default } }), vec![]))
}

fn imputer(_ctx: &ParsingContext, node: &NodeProto) -> Built {
    let map = match (node.get_attr_opt_vec::<f32>("imputed_value_floats")?, node.get_attr_opt_slice::<i64>("imputed_value_int64s")?) {
        (Some(f), None) => Map::Impute { imputed: rctensor1(&f), replaced: rctensor0(node.get_attr_opt::<f32>("replaced_value_float")?.unwrap_or(0.0)) },
        (None, Some(i)) => Map::Impute { imputed: rctensor1(i), replaced: rctensor0(node.get_attr_opt::<i64>("replaced_value_int64")?.unwrap_or(0)) },
        _ => bail!("Imputer needs exactly one of imputed_value_floats and imputed_value_int64s"),
    };
    Ok((expand(ElementMap { name: "Imputer", map }), vec![]))
}

fn binarizer(_ctx: &ParsingContext, node: &NodeProto) -> Built {
    let threshold: f32 = node.get_attr_opt("threshold")?.unwrap_or(0.0);
    Ok((expand(ElementMap { name: "Binarizer", map: Map::Binarize { threshold: threshold.to_bits() } }), vec![]))
}

impl ElementMap {
    fn output_type(&self, input: DatumType) -> DatumType {
        match &self.map {
            Map::Label { values, .. } => values.datum_type(),
            Map::Impute { imputed, .. } => imputed.datum_type(),
            Map::Binarize { .. } => input,
        }
    }

    fn apply(&self, input: &Tensor) -> TractResult<Tensor> {
        let shape = input.shape().to_vec();
        match &self.map {
            Map::Label { keys, values, default } => {
                let keys = keys.try_as_plain_ram()?;
                let index: Vec<Option<usize>> = if keys.datum_type() == String::datum_type() {
                    let keys = keys.as_slice::<String>()?;
                    let input = input.try_as_plain_ram()?;
                    input.as_slice::<String>()?.iter().map(|v| keys.iter().position(|k| k == v)).collect()
                } else if keys.datum_type() == i64::datum_type() {
                    let keys = keys.as_slice::<i64>()?;
                    let input = input.cast_to::<i64>()?;
                    input.try_as_plain_ram()?.as_slice::<i64>()?.iter().map(|v| keys.iter().position(|k| k == v)).collect()
                } else {
                    let keys = keys.as_slice::<f32>()?;
                    let input = input.cast_to::<f32>()?;
                    input.try_as_plain_ram()?.as_slice::<f32>()?.iter().map(|v| keys.iter().position(|k| k == v)).collect()
                };
                let values = values.try_as_plain_ram()?;
                let default = default.try_as_plain_ram()?;
                Ok(if values.datum_type() == String::datum_type() {
                    let (values, default) = (values.as_slice::<String>()?, &default.as_slice::<String>()?[0]);
                    let out: Vec<String> = index.iter().map(|i| i.map_or_else(|| default.clone(), |i| values[i].clone())).collect();
                    tract_onnx::prelude::tract_ndarray::ArrayD::from_shape_vec(shape, out)?.into_tensor()
                } else if values.datum_type() == i64::datum_type() {
                    let (values, default) = (values.as_slice::<i64>()?, default.as_slice::<i64>()?[0]);
                    Tensor::from_shape(&shape, &index.iter().map(|i| i.map_or(default, |i| values[i])).collect::<Vec<_>>())?
                } else {
                    let (values, default) = (values.as_slice::<f32>()?, default.as_slice::<f32>()?[0]);
                    Tensor::from_shape(&shape, &index.iter().map(|i| i.map_or(default, |i| values[i])).collect::<Vec<_>>())?
                })
            }
            Map::Impute { imputed, replaced } => {
                let width = shape.last().copied().unwrap_or(1).max(1);
                let imputed_plain = imputed.try_as_plain_ram()?;
                if imputed.datum_type() == f32::datum_type() {
                    let with = imputed_plain.as_slice::<f32>()?;
                    ensure!(with.len() == 1 || with.len() == width, "Imputer: {} imputed values for {width} columns", with.len());
                    let replaced = replaced.try_as_plain_ram()?.as_slice::<f32>()?[0];
                    let input = input.cast_to::<f32>()?;
                    let values = input.try_as_plain_ram()?;
                    let out: Vec<f32> = values
                        .as_slice::<f32>()?
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| if v == replaced || (v.is_nan() && replaced.is_nan()) { with[if with.len() == 1 { 0 } else { i % width }] } else { v })
                        .collect();
                    Tensor::from_shape(&shape, &out)
                } else {
                    let with = imputed_plain.as_slice::<i64>()?;
                    ensure!(with.len() == 1 || with.len() == width, "Imputer: {} imputed values for {width} columns", with.len());
                    let replaced = replaced.try_as_plain_ram()?.as_slice::<i64>()?[0];
                    let input = input.cast_to::<i64>()?;
                    let values = input.try_as_plain_ram()?;
                    let out: Vec<i64> =
                        values.as_slice::<i64>()?.iter().enumerate().map(|(i, &v)| if v == replaced { with[if with.len() == 1 { 0 } else { i % width }] } else { v }).collect();
                    Tensor::from_shape(&shape, &out)
                }
            }
            Map::Binarize { threshold } => {
                let threshold = f32::from_bits(*threshold);
                let as_f32 = input.cast_to::<f32>()?;
                let out: Vec<f32> = as_f32.try_as_plain_ram()?.as_slice::<f32>()?.iter().map(|&v| if v > threshold { 1.0 } else { 0.0 }).collect();
                Tensor::from_shape(&shape, &out)?.cast_to_dt(input.datum_type()).map(|t| t.into_owned())
            }
        }
    }
}

impl Expansion for ElementMap {
    fn name(&self) -> StaticName {
        self.name.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        match &self.map {
            Map::Binarize { .. } => s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?,
            Map::Label { values, .. } => s.equals(&outputs[0].datum_type, values.datum_type())?,
            Map::Impute { imputed, .. } => s.equals(&outputs[0].datum_type, imputed.datum_type())?,
        }
        Ok(())
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }
}

impl Op for ElementMap {
    fn name(&self) -> StaticName {
        self.name.into()
    }

    op_as_typed_op!();
}

impl EvalOp for ElementMap {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        Ok(tvec!(self.apply(&input)?.into_tvalue()))
    }
}

impl TypedOp for ElementMap {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.output_type(inputs[0].datum_type).fact(inputs[0].shape.clone())))
    }

    as_op!();
}

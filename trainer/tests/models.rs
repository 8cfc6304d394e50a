//! Training on real data (the three scikit-learn datasets in `tests/data`), reproducibility,
//! the artifact round trip, and (with the `wgpu` feature) the GPU path against the CPU.

use std::sync::Arc;

use lakeledger_trainer::artifact::Predictions;
use lakeledger_trainer::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use lakeledger_trainer::arrow::csv::ReaderBuilder;
use lakeledger_trainer::arrow::csv::reader::Format;
use lakeledger_trainer::{ComputeBackend, Error, ModelArtifact, Task, TrainConfig, train};

fn dataset(name: &str) -> RecordBatch {
    let path = format!("{}/tests/data/{name}.csv", env!("CARGO_MANIFEST_DIR"));
    let format = Format::default().with_header(true);
    let (schema, _) = format.infer_schema(std::fs::File::open(&path).unwrap(), None).unwrap();
    let schema = Arc::new(schema);
    let reader = ReaderBuilder::new(schema.clone()).with_format(format).build(std::fs::File::open(&path).unwrap()).unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    lakeledger_trainer::arrow::compute::concat_batches(&schema, &batches).unwrap()
}

/// Every column but the id and the label.
fn inputs(batch: &RecordBatch, label: &str) -> Vec<String> {
    batch.schema().fields().iter().map(|f| f.name().clone()).filter(|n| n != "id" && n != label).collect()
}

fn fit(name: &str, label: &str, config: TrainConfig) -> ModelArtifact {
    let batch = dataset(name);
    let trained = train(&batch, label, &inputs(&batch, label), &config, ComputeBackend::Cpu, &mut |_| true).unwrap();
    assert!(trained.history.len() <= config.max_epochs);
    trained.artifact
}

/// Linear models take a larger step than the MLP default; both stop early on validation loss.
fn config(task: Task, hidden: &[usize]) -> TrainConfig {
    let learning_rate = if hidden.is_empty() { 1e-2 } else { 1e-3 };
    TrainConfig { hidden_layers: hidden.to_vec(), learning_rate, ..TrainConfig::new(task) }
}

#[test]
fn breast_cancer_reaches_the_reference_accuracy() {
    for hidden in [&[][..], &[64, 64]] {
        let a = fit("breast_cancer", "benign", config(Task::Classification, hidden));
        let v = &a.training.validation;
        assert!(v.accuracy.unwrap() >= 0.95, "hidden {hidden:?}: {v:?}");
        assert!(v.roc_auc.unwrap() >= 0.98, "hidden {hidden:?}: {v:?}");
        assert_eq!(a.training.validation_rows, 114);
    }
}

#[test]
fn wine_reaches_the_reference_accuracy() {
    for hidden in [&[][..], &[64, 64]] {
        let a = fit("wine", "cultivar", config(Task::Classification, hidden));
        let v = &a.training.validation;
        assert!(v.accuracy.unwrap() >= 0.95, "hidden {hidden:?}: {v:?}");
        assert!(v.f1.unwrap() >= 0.95 && v.roc_auc.is_none(), "{v:?}");
    }
}

#[test]
fn diabetes_reaches_the_reference_r2() {
    let linear = fit("diabetes", "progression", config(Task::Regression, &[]));
    assert!(linear.training.validation.r2.unwrap() >= 0.35, "{:?}", linear.training.validation);
    let mlp = fit("diabetes", "progression", TrainConfig { learning_rate: 1e-3, ..config(Task::Regression, &[64, 64]) });
    assert!(mlp.training.validation.r2.unwrap() >= 0.35, "{:?}", mlp.training.validation);
}

#[test]
fn the_same_data_config_and_seed_give_the_same_bytes() {
    let cfg = TrainConfig { max_epochs: 15, seed: 7, ..config(Task::Classification, &[16]) };
    let a = fit("wine", "cultivar", cfg.clone());
    let b = fit("wine", "cultivar", cfg.clone());
    assert_eq!(a.to_bytes(), b.to_bytes());
    assert_eq!(a.sha256(), b.sha256());
    let c = fit("wine", "cultivar", TrainConfig { seed: 8, ..cfg });
    assert_ne!(a.sha256(), c.sha256(), "another seed, another model");
}

#[test]
fn artifacts_round_trip_and_score_rows() {
    let batch = dataset("breast_cancer");
    let a = fit("breast_cancer", "benign", TrainConfig { max_epochs: 20, ..config(Task::Classification, &[8]) });
    let back = ModelArtifact::from_bytes(&a.to_bytes()).unwrap();
    assert_eq!(back, a);
    let Predictions::Probabilities { classes, values } = back.predict(&batch).unwrap() else { panic!("a classifier gives probabilities") };
    assert_eq!((classes, values.len()), (2, 2 * batch.num_rows()));
    assert!(values.chunks(2).all(|p| (p[0] + p[1] - 1.0).abs() < 1e-5));

    // A request without one of the inputs names it; tampered bytes are refused.
    let without = batch.project(&[0, 1]).unwrap();
    let err = back.predict(&without).unwrap_err().to_string();
    assert!(err.contains("mean_perimeter") || err.contains("missing"), "{err}");
    let mut bytes = a.to_bytes();
    let at = bytes.windows(9).position(|w| w == b"\"weights\"").unwrap() + 12;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    let tampered = ModelArtifact::from_bytes(&bytes).map(|t| t.sha256());
    assert_ne!(tampered.ok(), Some(a.sha256()));
    assert!(matches!(ModelArtifact::from_bytes(b"{}"), Err(Error::InvalidArtifact(_))));
}

#[test]
fn text_inputs_are_one_hot_and_unseen_values_are_handled() {
    // y is 1 exactly when colour is "red"; "green" only appears when scoring.
    let n = 200;
    let colours: Vec<&str> = (0..n).map(|i| ["red", "blue", "amber"][i % 3]).collect();
    let y: Vec<i64> = colours.iter().map(|c| i64::from(*c == "red")).collect();
    let noise: Vec<f64> = (0..n).map(|i| (i * 37 % 11) as f64).collect();
    let batch = RecordBatch::try_from_iter(vec![
        ("colour", Arc::new(StringArray::from(colours)) as ArrayRef),
        ("noise", Arc::new(Float64Array::from(noise)) as ArrayRef),
        ("y", Arc::new(Int64Array::from(y)) as ArrayRef),
    ])
    .unwrap();
    let cfg = TrainConfig { learning_rate: 1e-2, ..config(Task::Classification, &[]) };
    let t = train(&batch, "y", &["colour".into(), "noise".into()], &cfg, ComputeBackend::Cpu, &mut |_| true).unwrap();
    assert_eq!(t.artifact.training.validation.accuracy, Some(1.0));
    let unseen = RecordBatch::try_from_iter(vec![
        ("colour", Arc::new(StringArray::from(vec![Some("green"), None, Some("red")])) as ArrayRef),
        ("noise", Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0])) as ArrayRef),
    ])
    .unwrap();
    let Predictions::Probabilities { values, .. } = t.artifact.predict(&unseen).unwrap() else { panic!() };
    assert!(values[1] < 0.5 && values[3] < 0.5 && values[5] > 0.5, "{values:?}");
}

#[test]
fn bad_inputs_are_named_and_training_can_be_cancelled() {
    let batch = dataset("wine");
    let cols = inputs(&batch, "cultivar");
    let run = |label: &str, cfg: TrainConfig| train(&batch, label, &inputs(&batch, label), &cfg, ComputeBackend::Cpu, &mut |_| true).err().unwrap().to_string();
    assert!(run("nope", config(Task::Classification, &[])).contains("`nope`"));
    assert!(run("cultivar", TrainConfig { learning_rate: 0.0, ..config(Task::Classification, &[]) }).contains("learning_rate"));
    assert!(run("cultivar", config(Task::Classification, &[0])).contains("hidden_layers"));
    assert!(run("alcohol", config(Task::Classification, &[])).contains("regression"));
    let both = train(&batch, "cultivar", &["cultivar".into()], &config(Task::Classification, &[]), ComputeBackend::Cpu, &mut |_| true);
    assert!(both.err().unwrap().to_string().contains("cannot also be an input"));
    let mut epochs = 0;
    let cancelled = train(&batch, "cultivar", &cols, &config(Task::Classification, &[]), ComputeBackend::Cpu, &mut |r| {
        epochs = r.epoch;
        r.epoch < 3
    });
    assert!(matches!(cancelled, Err(Error::Cancelled)));
    assert_eq!(epochs, 3);
    if !ComputeBackend::Cuda.available() {
        let e = train(&batch, "cultivar", &cols, &config(Task::Classification, &[]), ComputeBackend::Cuda, &mut |_| true).err().unwrap();
        assert!(matches!(e, Error::BackendUnavailable(_)), "{e}");
    }
}

/// The GPU path: a short training and scoring on wgpu (in CI through Mesa's software
/// Vulkan driver), checked against the CPU within a tolerance.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_trains_and_scores_like_the_cpu() {
    let batch = dataset("breast_cancer");
    let cols = inputs(&batch, "benign");
    let cfg = TrainConfig { max_epochs: 5, ..config(Task::Classification, &[16]) };
    let cpu = train(&batch, "benign", &cols, &cfg, ComputeBackend::Cpu, &mut |_| true).unwrap().artifact;
    let Predictions::Probabilities { values: on_cpu, .. } = cpu.predict(&batch).unwrap() else { panic!() };
    let Predictions::Probabilities { values: on_gpu, .. } = lakeledger_trainer::score_on(&cpu, &batch, ComputeBackend::Wgpu).unwrap() else { panic!() };
    let worst = on_cpu.iter().zip(&on_gpu).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-3, "largest difference {worst}");

    let gpu = train(&batch, "benign", &cols, &cfg, ComputeBackend::Wgpu, &mut |_| true).unwrap().artifact;
    assert_eq!(gpu.training.backend, "wgpu");
    let (a, b) = (cpu.training.validation.accuracy.unwrap(), gpu.training.validation.accuracy.unwrap());
    assert!((a - b).abs() <= 0.03, "cpu {a}, wgpu {b}");
}

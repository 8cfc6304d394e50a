//! Training time and validation accuracy of the MLP on the breast cancer data (CPU).
//!
//!     cargo bench -p lakeledger-trainer --bench mlp -- [repeats]
//!
//! `scripts/bench_models.py` runs scikit-learn's MLPClassifier with the same layer sizes,
//! optimizer, batch size and split share beside it.

use std::sync::Arc;
use std::time::Instant;

use lakeledger_trainer::arrow::csv::ReaderBuilder;
use lakeledger_trainer::arrow::csv::reader::Format;
use lakeledger_trainer::{ComputeBackend, Task, TrainConfig, train};

fn main() {
    let repeats: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(3);
    let path = format!("{}/tests/data/breast_cancer.csv", env!("CARGO_MANIFEST_DIR"));
    let format = Format::default().with_header(true);
    let (schema, _) = format.infer_schema(std::fs::File::open(&path).unwrap(), None).unwrap();
    let schema = Arc::new(schema);
    let reader = ReaderBuilder::new(schema.clone()).with_format(format).build(std::fs::File::open(&path).unwrap()).unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    let batch = lakeledger_trainer::arrow::compute::concat_batches(&schema, &batches).unwrap();
    let inputs: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).filter(|n| n != "id" && n != "benign").collect();
    let config = TrainConfig { hidden_layers: vec![64, 64], max_epochs: 200, batch_size: 32, learning_rate: 1e-3, patience: 10, ..TrainConfig::new(Task::Classification) };
    for seed in 0..repeats as u64 {
        let config = TrainConfig { seed, ..config.clone() };
        let started = Instant::now();
        let trained = train(&batch, "benign", &inputs, &config, ComputeBackend::Cpu, &mut |_| true).unwrap();
        let secs = started.elapsed().as_secs_f64();
        let t = &trained.artifact.training;
        let first_95 = trained.history.iter().find(|r| r.validation.accuracy.unwrap_or(0.0) >= 0.95).map(|r| r.elapsed_ms);
        println!(
            "seed {seed}: {} epochs in {secs:.2} s ({:.1} ms/epoch), best epoch {}, validation accuracy {:.4}, first >= 0.95 after {} ms",
            t.epochs_run,
            secs * 1000.0 / t.epochs_run as f64,
            t.best_epoch,
            t.validation.accuracy.unwrap(),
            first_95.map_or("-".to_string(), |ms| ms.to_string()),
        );
    }
}

//! Every target on its seeds and on every input kept under `fuzz/corpus/<target>/` (what
//! the fuzzer found worth keeping, minimized) and `fuzz/regressions/<target>/` (inputs
//! that once found a bug): the fuzzing's findings stay tests without a fuzzer.
//!
//! With `LAKELEDGER_WRITE_FUZZ_SEEDS=1`, the seeds are also written to the corpus folders,
//! for `cargo fuzz run` to start from.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use lakeledger_fuzz::{TARGETS, run, seeds};

fn inputs(folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else { return Vec::new() };
    let mut out: Vec<PathBuf> = entries.map(|e| e.expect("list the corpus").path()).filter(|p| p.is_file()).collect();
    out.sort();
    out
}

#[test]
fn every_target_passes_its_seeds_and_its_kept_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let write_seeds = std::env::var_os("LAKELEDGER_WRITE_FUZZ_SEEDS").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    let mut ran = 0;
    for target in TARGETS {
        let seeds = seeds(target);
        assert!(!seeds.is_empty(), "{target} has seeds");
        for (i, s) in seeds.iter().enumerate() {
            if write_seeds {
                let dir = root.join("corpus").join(target);
                std::fs::create_dir_all(&dir).expect("create the corpus folder");
                std::fs::write(dir.join(format!("seed-{i}")), s).expect("write a seed");
            }
            if catch_unwind(AssertUnwindSafe(|| run(target, s))).is_err() {
                failures.push(format!("{target}: seed {i}"));
            }
            ran += 1;
        }
        for folder in ["corpus", "regressions"] {
            for path in inputs(&root.join(folder).join(target)) {
                let data = std::fs::read(&path).expect("read an input");
                if catch_unwind(AssertUnwindSafe(|| run(target, &data))).is_err() {
                    failures.push(format!("{target}: {}", path.display()));
                }
                ran += 1;
            }
        }
    }
    assert!(failures.is_empty(), "{} of {ran} inputs failed their target:\n{}", failures.len(), failures.join("\n"));
}

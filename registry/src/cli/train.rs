//! `lakeledger train`: starts a training job on a running server and follows its
//! Server-Sent Events with a progress bar. Ctrl-C cancels the job.

use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::error::{Error, Result};

#[derive(Args)]
pub struct TrainArgs {
    /// The server's base URL.
    #[arg(long, env = "LAKELEDGER_URL", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// An API key of a writer or admin.
    #[arg(long, env = "LAKELEDGER_API_KEY", hide_env_values = true)]
    pub key: String,
    /// The registered model the result becomes a version of (created if new).
    #[arg(long)]
    pub model: String,
    /// The training set id (`ts_…`).
    #[arg(long)]
    pub training_set: String,
    /// The column to predict.
    #[arg(long)]
    pub label: String,
    /// Hyperparameters as JSON, e.g. '{"task":"classification","hidden_layers":[64,64],"seed":1}'.
    #[arg(long)]
    pub config: String,
    /// cpu, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Print the job id and return instead of following it.
    #[arg(long)]
    pub detach: bool,
}

fn client_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("{what}: {e}"))
}

pub async fn run(args: TrainArgs) -> Result<()> {
    let config: Value = serde_json::from_str(&args.config).map_err(|e| Error::BadRequest(format!("--config is not JSON: {e}")))?;
    let base = args.server.trim_end_matches('/').to_string();
    let client = reqwest::Client::new();
    let body = json!({"model": args.model, "training_set_id": args.training_set, "label": args.label, "config": config, "backend": args.backend});
    let r = client.post(format!("{base}/v1/training-jobs")).bearer_auth(&args.key).json(&body).send().await.map_err(|e| client_error("starting the job", e))?;
    let status = r.status();
    let job: Value = r.json().await.map_err(|e| client_error("reading the answer", e))?;
    if !status.is_success() {
        return Err(Error::BadRequest(format!("the server refused the job ({status}): {}", job["error"]["message"].as_str().unwrap_or("?"))));
    }
    let id = job["id"].as_str().unwrap_or_default().to_string();
    println!("job {id}");
    if args.detach {
        return Ok(());
    }

    let max_epochs = job["config"]["max_epochs"].as_u64().unwrap_or(0);
    let bar = ProgressBar::new(max_epochs);
    bar.set_style(
        ProgressStyle::with_template("{spinner} epoch {pos}/{len} [{bar:30}] {elapsed_precise} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let events = client
        .get(format!("{base}/v1/training-jobs/{id}/events"))
        .bearer_auth(&args.key)
        .send()
        .await
        .map_err(|e| client_error("following the job", e))?;
    let mut stream = events.bytes_stream();
    let mut buffer = String::new();
    let mut last = job;
    let cancel = {
        let (client, base, key, id) = (client.clone(), base.clone(), args.key.clone(), id.clone());
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\ncancelling {id}…");
                let _ = client.post(format!("{base}/v1/training-jobs/{id}/cancel")).bearer_auth(&key).send().await;
            }
        })
    };
    while let Some(chunk) = stream.next().await {
        buffer.push_str(&String::from_utf8_lossy(&chunk.map_err(|e| client_error("following the job", e))?));
        // Events end with a blank line; each carries one `data:` line of JSON.
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let Some(data) = event.lines().find_map(|l| l.strip_prefix("data:")) else { continue };
            let Ok(v) = serde_json::from_str::<Value>(data.trim()) else { continue };
            if let Some(p) = v.get("progress").filter(|p| !p.is_null()) {
                bar.set_position(p["epoch"].as_u64().unwrap_or(0));
                bar.set_message(summary(p));
            }
            last = v;
        }
    }
    cancel.abort();
    bar.finish_and_clear();
    let state = last["state"].as_str().unwrap_or("unknown");
    match state {
        "succeeded" => {
            println!("succeeded: {} version {}", last["model"].as_str().unwrap_or("?"), last["model_version"]);
            if let Some(p) = last.get("progress") {
                println!("{}", summary(p));
            }
            Ok(())
        }
        _ => Err(Error::Unprocessable(format!("job {id} {state}: {}", last["error"].as_str().unwrap_or("")))),
    }
}

/// `val_loss 0.1234 accuracy 0.9500 …` from an epoch report.
fn summary(p: &Value) -> String {
    let mut out = format!("val_loss {:.4}", p["validation_loss"].as_f64().unwrap_or(f64::NAN));
    if let Some(m) = p["validation"].as_object() {
        for (k, v) in m {
            if let Some(x) = v.as_f64() {
                out.push_str(&format!(" {k} {x:.4}"));
            }
        }
    }
    out
}

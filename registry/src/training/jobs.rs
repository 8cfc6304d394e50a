//! Training jobs. A job is accepted at once (202), persisted in the catalog, and run by a
//! bounded pool on blocking threads, off the async runtime. Its progress (epoch, losses,
//! validation metrics) is written to the catalog and broadcast to Server-Sent Event
//! subscribers after every epoch. A job can be cancelled while queued or running, from any
//! replica.
//!
//! A job is queued in the catalog, unowned, and claimed by whichever replica has a free
//! worker first (Postgres `FOR UPDATE SKIP LOCKED`, so two replicas never claim one job;
//! SQLite serves one process). The claiming replica leases it and renews the lease while it
//! runs. A job whose lease lapsed (its replica died) is failed, with the reason, by
//! whichever replica notices first, exactly once (a conditional update decides); a
//! restarted replica fails the jobs its previous run left at once. A queued job nobody has
//! claimed waits for a worker on any replica. Never silently lost, never ended twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use lakeledger_query::arrow::array::{RecordBatch, RecordBatchReader};
use lakeledger_trainer::{ComputeBackend, EpochReport, TrainConfig};
use futures::stream::{BoxStream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Semaphore, broadcast};
use utoipa::ToSchema;

use super::sets::{CreateTrainingSet, TrainingSetManifest, TrainingSets};
use crate::error::{Error, Result};
use crate::identity::Principal;
use crate::models::{Models, NewVersion};
use crate::platform::audit::{AuditContext, AuditLog};
use crate::platform::catalog::{Held, JobRecord, SharedCatalog, not_here};
use crate::platform::time::{now_micros, rfc3339};

/// The job service: the pool and the jobs of this process that have not finished.
pub struct Jobs {
    catalog: SharedCatalog,
    sets: Arc<TrainingSets>,
    models: Arc<Models>,
    audit: Arc<AuditLog>,
    permits: Arc<Semaphore>,
    live: Mutex<HashMap<String, Live>>,
    leases: JobLeases,
    /// Wakes this replica's workers when a job is queued here.
    queued: tokio::sync::Notify,
}

/// How often idle workers look for jobs queued on other replicas.
const CLAIM_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Who this replica is to the job table, and how long its leases hold.
#[derive(Clone, Debug)]
pub struct JobLeases {
    /// This replica's id, stable across its restarts.
    pub worker: String,
    /// How long a lease holds unless renewed (renewed every third of it).
    pub lease: std::time::Duration,
}

struct Live {
    cancel: Arc<AtomicBool>,
    events: broadcast::Sender<JobView>,
}

impl Jobs {
    pub fn new(catalog: SharedCatalog, sets: Arc<TrainingSets>, models: Arc<Models>, audit: Arc<AuditLog>, workers: usize, leases: JobLeases) -> Arc<Self> {
        Arc::new(Jobs {
            catalog,
            sets,
            models,
            audit,
            permits: Arc::new(Semaphore::new(workers.max(1))),
            live: Mutex::new(HashMap::new()),
            leases,
            queued: tokio::sync::Notify::new(),
        })
    }

    fn lease_end(&self) -> i64 {
        now_micros().saturating_add(self.leases.lease.as_micros() as i64)
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().expect("job table")
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// The registered model the result becomes a version of (created if new).
    pub model: String,
    /// An existing training set; or give `training_set` to build one first.
    pub training_set_id: Option<String>,
    pub training_set: Option<CreateTrainingSet>,
    /// The column to predict.
    pub label: String,
    /// Input columns; default every feature column of the training set (`group__feature`).
    #[serde(default)]
    pub inputs: Vec<String>,
    /// `task` (classification or regression), `hidden_layers`, `max_epochs`,
    /// `batch_size`, `learning_rate`, `weight_decay`, `validation_fraction`, `patience`,
    /// `seed`, `max_categories`.
    #[schema(value_type = Object)]
    pub config: TrainConfig,
    /// `cpu` (default), `wgpu` or `cuda` (when the server is built with them).
    #[schema(value_type = Option<String>)]
    pub backend: Option<ComputeBackend>,
}

/// What a job is about, as persisted.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct JobSpec {
    training_set_id: String,
    label: String,
    inputs: Vec<String>,
    config: TrainConfig,
    backend: ComputeBackend,
    /// The request that created the job, for the audit records written as it ends.
    request_id: String,
    event_id: String,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct JobView {
    pub id: String,
    pub model: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    pub training_set_id: String,
    pub label: String,
    pub inputs: Vec<String>,
    #[schema(value_type = Object)]
    pub config: TrainConfig,
    pub backend: String,
    /// The latest epoch's report: epoch, losses, validation metrics, elapsed time.
    #[schema(value_type = Option<Object>)]
    pub progress: Option<Value>,
    pub error: Option<String>,
    /// The model version the job registered.
    pub model_version: Option<i64>,
    /// The replica that claimed the job (its id, kept in its data dir as `replica.id`);
    /// none while the job waits to be claimed.
    pub worker: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub created_by: String,
}

fn view(j: &JobRecord) -> Result<JobView> {
    let spec: JobSpec = serde_json::from_str(&j.spec_json).map_err(|e| Error::Internal(format!("job {}: unreadable spec: {e}", j.id)))?;
    let progress: Value = serde_json::from_str(&j.progress_json).unwrap_or(Value::Null);
    Ok(JobView {
        id: j.id.clone(),
        model: j.model_name.clone(),
        state: j.state.clone(),
        training_set_id: spec.training_set_id,
        label: spec.label,
        inputs: spec.inputs,
        config: spec.config,
        backend: spec.backend.name().into(),
        progress: (!progress.is_null()).then_some(progress),
        error: j.error.clone(),
        model_version: j.model_version,
        worker: j.worker.clone(),
        created_at: rfc3339(j.created_at),
        started_at: j.started_at.map(rfc3339),
        finished_at: j.finished_at.map(rfc3339),
        created_by: j.created_by.clone(),
    })
}

pub fn is_final(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled")
}

impl Jobs {
    pub async fn create(self: &Arc<Self>, p: &Principal, ctx: &AuditContext, req: CreateJob) -> Result<JobView> {
        req.config.check().map_err(|e| Error::Unprocessable(e.to_string()))?;
        let backend = req.backend.unwrap_or(ComputeBackend::Cpu);
        if !backend.available() {
            return Err(Error::Unprocessable(format!("backend `{}` is not built into this server (build with the `{}` feature)", backend.name(), backend.name())));
        }
        if req.label.is_empty() {
            return Err(Error::Unprocessable("name the label column".into()));
        }
        let manifest = match (req.training_set_id, req.training_set) {
            (Some(id), None) => self.sets.manifest(p, &id).await?,
            (None, Some(spec)) => self.sets.create(p, ctx, spec).await?.0,
            _ => return Err(Error::Unprocessable("give exactly one of training_set_id or training_set".into())),
        };
        let model = self.models.find_or_create(p, &req.model).await?;
        let spec = JobSpec {
            training_set_id: manifest.id.clone(),
            label: req.label,
            inputs: req.inputs,
            config: req.config,
            backend,
            request_id: ctx.request_id.clone(),
            event_id: ctx.event_id.clone(),
        };
        let record = JobRecord {
            id: format!("job_{}", uuid::Uuid::now_v7().simple()),
            tenant_id: p.tenant_id.clone(),
            model_name: model.name.clone(),
            state: "queued".into(),
            spec_json: serde_json::to_string(&spec).map_err(|e| Error::Internal(e.to_string()))?,
            progress_json: "null".into(),
            error: None,
            model_version: None,
            created_at: now_micros(),
            started_at: None,
            finished_at: None,
            created_by: p.actor(),
            // Unowned until a worker claims it.
            worker: None,
            lease_until: None,
            cancel_requested: false,
        };
        self.catalog.insert_job(&record).await?;
        self.queued.notify_one();
        view(&record)
    }

    /// This replica's pool at work: whenever one of its workers is free, claims the oldest
    /// queued job (queued here or on another replica) and runs it. Runs until the task is
    /// stopped.
    pub async fn work(self: Arc<Self>) {
        loop {
            let Ok(permit) = self.permits.clone().acquire_owned().await else { return };
            let job = loop {
                match self.catalog.claim_job(&self.leases.worker, self.lease_end()).await {
                    Ok(Some(job)) => break job,
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "could not look for queued training jobs"),
                }
                tokio::select! {
                    _ = self.queued.notified() => {}
                    _ = tokio::time::sleep(CLAIM_EVERY) => {}
                }
            };
            tokio::spawn(self.clone().run_claimed(job, permit));
        }
    }

    /// Runs a job this replica claimed, holding its lease until it ends.
    async fn run_claimed(self: Arc<Self>, job: JobRecord, permit: tokio::sync::OwnedSemaphorePermit) {
        let id = job.id.clone();
        let cancel = Arc::new(AtomicBool::new(job.cancel_requested));
        let (events, _) = broadcast::channel(64);
        self.live().insert(id.clone(), Live { cancel: cancel.clone(), events });
        let heartbeat = tokio::spawn(self.clone().keep_leased(id.clone(), cancel.clone()));
        match (serde_json::from_str::<JobSpec>(&job.spec_json), self.owner(&job).await) {
            (Ok(spec), Ok(p)) => self.run(&p, job, spec, cancel, permit).await,
            (spec, owner) => {
                tracing::error!(job = %id, spec_ok = spec.is_ok(), owner_ok = owner.is_ok(), "a claimed job cannot be run");
                let mut job = job;
                (job.state, job.finished_at) = ("failed".into(), Some(now_micros()));
                job.error = Some(format!("internal error; the server log has the cause under job {id}"));
                self.publish(&job).await;
            }
        }
        heartbeat.abort();
        self.live().remove(&id);
    }

    /// Renews the job's lease while it runs here, and passes on a cancel asked on another
    /// replica. If the job stopped being this replica's (its lease lapsed and another
    /// replica failed it), the work stops too.
    async fn keep_leased(self: Arc<Self>, id: String, cancel: Arc<AtomicBool>) {
        loop {
            tokio::time::sleep(self.leases.lease / 3).await;
            match self.catalog.renew_job_lease(&id, &self.leases.worker, self.lease_end()).await {
                Ok(Some(false)) => {}
                Ok(Some(true)) | Ok(None) => cancel.store(true, Ordering::SeqCst),
                Err(e) => tracing::warn!(job = %id, error = %e, "could not renew the job's lease"),
            }
        }
    }

    /// Persists a change of the job and tells subscribers.
    async fn publish(&self, j: &JobRecord) {
        if let Err(e) = self.catalog.update_job(j).await {
            tracing::error!(job = %j.id, error = %e, "could not persist the job's state");
        }
        if let (Ok(v), Some(live)) = (view(j), self.live().get(&j.id)) {
            let _ = live.events.send(v);
        }
    }

    #[tracing::instrument(name = "training_job", skip_all, fields(job = %job.id, model = %job.model_name, request_id = %spec.request_id))]
    async fn run(&self, p: &Principal, mut job: JobRecord, spec: JobSpec, cancel: Arc<AtomicBool>, permit: tokio::sync::OwnedSemaphorePermit) {
        if cancel.load(Ordering::SeqCst) {
            return self.finish(p, &spec, job, "cancelled", None, None).await;
        }
        job.state = "running".into();
        job.started_at = Some(now_micros());
        self.publish(&job).await;

        let outcome = match self.sets.manifest(p, &spec.training_set_id).await {
            Ok(manifest) => self.train(p, &mut job, &spec, &manifest, cancel).await,
            Err(e) => Err(e),
        };
        drop(permit);
        match outcome {
            Ok(version) => self.finish(p, &spec, job, "succeeded", None, Some(version)).await,
            Err(Error::Cancelled) => self.finish(p, &spec, job, "cancelled", None, None).await,
            Err(e) => {
                // Like 5xx bodies, internal causes stay in the server log.
                let message = match e.status_and_code().0.is_server_error() {
                    true => {
                        tracing::error!(job = %job.id, error = %e, "training job failed");
                        format!("internal error; the server log has the cause under job {}", job.id)
                    }
                    false => e.to_string(),
                };
                self.finish(p, &spec, job, "failed", Some(message), None).await
            }
        }
    }

    async fn train(&self, p: &Principal, job: &mut JobRecord, spec: &JobSpec, manifest: &TrainingSetManifest, cancel: Arc<AtomicBool>) -> Result<i64> {
        let (_, copy) = self.sets.data(p, &manifest.id).await?;
        let file = copy.into_parquet();
        let batch = tokio::task::spawn_blocking(move || -> Result<RecordBatch> {
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                .and_then(|b| b.build())
                .map_err(|e| Error::Internal(format!("reading the training set: {e}")))?;
            let schema = reader.schema();
            let batches = reader.collect::<std::result::Result<Vec<_>, _>>().map_err(|e| Error::Internal(format!("reading the training set: {e}")))?;
            Ok(lakeledger_query::arrow::compute::concat_batches(&schema, &batches).map_err(lakeledger_query::Error::from)?)
        })
        .await
        .map_err(|e| Error::Internal(format!("training-set reader: {e}")))??;
        let inputs: Vec<String> = if spec.inputs.is_empty() {
            batch.schema().fields().iter().map(|f| f.name().clone()).filter(|n| n.contains("__") && *n != spec.label).collect()
        } else {
            spec.inputs.clone()
        };
        if batch.column_by_name(&spec.label).is_none() {
            let columns: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
            return Err(Error::Unprocessable(format!("training set {} has no column `{}`; it has {}", manifest.id, spec.label, columns.join(", "))));
        }

        // Epoch reports flow from the training thread to here, to be stored and broadcast.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<EpochReport>();
        let (label, config, backend) = (spec.label.clone(), spec.config.clone(), spec.backend);
        let training = tokio::task::spawn_blocking(move || {
            lakeledger_trainer::train(&batch, &label, &inputs, &config, backend, &mut |report| {
                let _ = tx.send(report.clone());
                !cancel.load(Ordering::SeqCst)
            })
        });
        while let Some(report) = rx.recv().await {
            job.progress_json = serde_json::to_string(&report).unwrap_or_else(|_| "null".into());
            self.publish(job).await;
        }
        let trained = training.await.map_err(|e| Error::Internal(format!("training thread: {e}")))?.map_err(|e| match e {
            lakeledger_trainer::Error::Cancelled => Error::Cancelled,
            lakeledger_trainer::Error::BackendUnavailable(_) | lakeledger_trainer::Error::InvalidInput(_) | lakeledger_trainer::Error::InvalidConfig(_) => {
                Error::Unprocessable(e.to_string())
            }
            other => Error::Internal(other.to_string()),
        })?;

        let lineage = serde_json::json!({
            "training_set_id": manifest.id,
            "training_set_sha256": manifest.sha256,
            "feature_groups": manifest.features.iter().map(|f| serde_json::json!({"group": f.group, "version": f.version})).collect::<Vec<_>>(),
            "spine_versions": manifest.spine_versions,
            "spine_upload": manifest.spine_upload,
            "label": spec.label,
            "inputs": trained.artifact.input_names(),
        });
        let model = self.models.find(p, &job.model_name).await?;
        let bytes = trained.artifact.to_bytes();
        let new = NewVersion { source: "trained", training_set_id: Some(manifest.id.clone()), lineage, job_id: Some(job.id.clone()) };
        let v = self.models.register(p, &model, &trained.artifact, bytes, new).await?;
        Ok(v.version)
    }

    async fn finish(&self, p: &Principal, spec: &JobSpec, mut job: JobRecord, to: &str, error: Option<String>, version: Option<i64>) {
        job.state = to.into();
        job.error = error;
        job.model_version = version;
        job.finished_at = Some(now_micros());
        // Only the replica that still holds the job ends it (another may have failed it when
        // its lease lapsed); the end is recorded once.
        match self.catalog.update_job(&job).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(job = %job.id, "the job was ended elsewhere (its lease lapsed); this run's result is not recorded as its end");
                return;
            }
            Err(e) => tracing::error!(job = %job.id, error = %e, "could not persist the job's end"),
        }
        self.record_end(p, spec, &job).await;
        if let (Ok(v), Some(live)) = (view(&job), self.live().get(&job.id)) {
            let _ = live.events.send(v);
        }
    }

    /// The job's end, through the ledger like any change, naming the request that started it.
    async fn record_end(&self, p: &Principal, spec: &JobSpec, job: &JobRecord) {
        let (to, version) = (job.state.as_str(), job.model_version);
        let ctx = AuditContext { request_id: spec.request_id.clone(), event_id: spec.event_id.clone(), intent_seq: 0 };
        let mut e = p.event("training_job.finish", &ctx);
        e.resource.kind = Some("training_job".into());
        e.resource.name = Some(job.id.clone());
        e.resource.versions_written = version.into_iter().collect();
        e.details.push(("state".into(), to.into()));
        e.details.push(("model".into(), job.model_name.clone()));
        e.details.push(("training_set_id".into(), spec.training_set_id.clone()));
        if let Some(err) = &job.error {
            e.details.push(("error".into(), err.clone()));
        }
        if let Err(err) = self.audit.record(&e).await {
            tracing::error!(job = %job.id, error = %err, "could not record the job's outcome in the audit ledger");
        }
    }

    pub async fn get(&self, p: &Principal, id: &str) -> Result<JobView> {
        view(&self.find(p, id).await?)
    }

    async fn find(&self, p: &Principal, id: &str) -> Result<JobRecord> {
        match self.catalog.job(&p.tenant_id, id).await? {
            Some(j) => Ok(j),
            None => Err(not_here(&self.catalog, Held::TrainingJob, "training job", id, &p.tenant_id).await?),
        }
    }

    pub async fn list(&self, p: &Principal) -> Result<Vec<JobView>> {
        self.catalog.list_jobs(&p.tenant_id).await?.iter().map(view).collect()
    }

    /// Asks a job to stop: a queued job never starts, a running one stops after its current
    /// epoch. A finished job is left as it is.
    pub async fn cancel(&self, p: &Principal, id: &str) -> Result<JobView> {
        let mut job = self.find(p, id).await?;
        // Not claimed by any replica yet: it ends here, now.
        let now = now_micros();
        if job.state == "queued" && job.worker.is_none() && self.catalog.cancel_queued_job(&p.tenant_id, id, now).await? {
            (job.state, job.finished_at) = ("cancelled".into(), Some(now));
            if let Ok(spec) = serde_json::from_str::<JobSpec>(&job.spec_json) {
                self.record_end(p, &spec, &job).await;
            }
            return view(&job);
        }
        if let Some(live) = self.live().get(id) {
            live.cancel.store(true, Ordering::SeqCst);
        }
        // The replica running it, if another, sees the request when it renews its lease.
        self.catalog.request_job_cancel(&p.tenant_id, id).await?;
        view(&job)
    }

    /// The job's current state, then every change until it ends: from this replica's
    /// broadcast when the job runs here, else read from the catalog every second (the
    /// replica running it writes every epoch there).
    pub async fn follow(self: &Arc<Self>, p: &Principal, id: &str) -> Result<BoxStream<'static, JobView>> {
        // Subscribe before reading, so no change falls between the two.
        let rx = self.live().get(id).map(|l| l.events.subscribe());
        let current = view(&self.find(p, id).await?)?;
        let first = futures::stream::once(futures::future::ready(current.clone()));
        if is_final(&current.state) {
            return Ok(first.boxed());
        }
        let rest = match rx {
            Some(rx) => futures::stream::unfold(Some(rx), |rx| async move {
                let mut rx = rx?;
                loop {
                    match rx.recv().await {
                        Ok(v) => {
                            let next = (!is_final(&v.state)).then_some(rx);
                            return Some((v, next));
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            })
            .boxed(),
            None => {
                let (jobs, p, id) = (self.clone(), p.clone(), id.to_string());
                futures::stream::unfold(Some(current), move |last| {
                    let (jobs, p, id) = (jobs.clone(), p.clone(), id.clone());
                    async move {
                        let mut last = last?;
                        loop {
                            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                            let now = view(&jobs.find(&p, &id).await.ok()?).ok()?;
                            if (&now.state, &now.progress) != (&last.state, &last.progress) {
                                let next = (!is_final(&now.state)).then(|| now.clone());
                                return Some((now, next));
                            }
                            last = now;
                        }
                    }
                })
                .boxed()
            }
        };
        Ok(first.chain(rest).boxed())
    }

    /// Fails, with the reason, the unfinished jobs nobody runs any more: those this
    /// replica's previous run left (at start) and those whose lease lapsed (their replica
    /// died). Each is ended, and its end recorded, by exactly one replica. Returns how many
    /// this call ended.
    pub async fn fail_abandoned(&self, at_start: bool) -> Result<usize> {
        let mut ended = 0;
        let now = now_micros();
        // Only at start can this replica's own unfinished jobs be leftovers: later they may
        // be between their insert and their start here.
        let orphaned_by = if at_start { self.leases.worker.as_str() } else { "" };
        for mut j in self.catalog.unfinished_jobs().await? {
            if self.live().contains_key(&j.id) {
                continue;
            }
            if j.worker.is_none() {
                // Queued and not claimed yet: it waits for a worker on any replica.
                continue;
            }
            let own = at_start && j.worker.as_deref() == Some(&self.leases.worker);
            let reason = if own {
                format!("the server stopped while the job was {}; start it again", j.state)
            } else if j.lease_until.is_some_and(|t| t < now) {
                format!("the server running the job stopped (its lease lapsed) while it was {}; start it again", j.state)
            } else {
                continue;
            };
            if !self.catalog.fail_abandoned_job(&j.id, now, orphaned_by, &reason).await? {
                continue;
            }
            ended += 1;
            (j.state, j.error, j.finished_at) = ("failed".into(), Some(reason), Some(now));
            match (serde_json::from_str::<JobSpec>(&j.spec_json), self.owner(&j).await) {
                (Ok(spec), Ok(p)) => self.record_end(&p, &spec, &j).await,
                (spec, owner) => tracing::error!(job = %j.id, spec_ok = spec.is_ok(), owner_ok = owner.is_ok(), "could not record the end of an abandoned job"),
            }
        }
        Ok(ended)
    }

    /// Fails abandoned jobs every half lease while the server runs.
    pub async fn sweep(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.leases.lease / 2).await;
            match self.fail_abandoned(false).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(failed = n, "failed training jobs whose replica stopped (lease lapsed)"),
                Err(e) => tracing::warn!(error = %e, "could not look for abandoned training jobs"),
            }
        }
    }

    /// The principal a job acts as: its creator's tenant, as a writer.
    async fn owner(&self, j: &JobRecord) -> Result<Principal> {
        let tenant = self.catalog.tenant_by_id(&j.tenant_id).await?.ok_or_else(|| Error::Internal(format!("job {}: its tenant is gone", j.id)))?;
        Ok(Principal {
            key_id: j.created_by.rsplit('/').next().unwrap_or_default().to_string(),
            key_name: "training job".into(),
            role: crate::platform::catalog::Role::Writer,
            tenant_id: tenant.id,
            tenant: tenant.name,
            auth_method: "internal",
        })
    }
}

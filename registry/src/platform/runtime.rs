//! The query runtime: a thread pool apart from the one serving requests, where SQL,
//! Delta reads and training-set builds run, so a heavy query never stalls other requests.

use std::future::Future;

use crate::error::{Error, Result};

pub struct QueryRuntime(Option<tokio::runtime::Runtime>);

impl QueryRuntime {
    pub fn new(threads: usize) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("sql-query")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the query runtime: {e}")))?;
        Ok(Self(Some(rt)))
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("query runtime is running").handle()
    }

    /// Runs `f` on the query runtime and waits for its result.
    pub async fn run<T: Send + 'static>(&self, f: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
        self.handle().spawn(f).await.map_err(|e| Error::Internal(format!("query task failed: {e}")))?
    }
}

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        // Dropping a runtime from inside another one must not block.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

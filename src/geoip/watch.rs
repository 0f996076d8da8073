//! Following the GeoIP database file: a replaced file is opened off the
//! async workers and handed to whoever answers from the locator; a bad
//! one is logged once and the old database keeps serving.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Locator;

/// Looks at the database file every `every` until `shutdown`. `current`
/// gives the locator in use; `install(old, fresh)` puts `fresh` in its
/// place unless something else (a reload) replaced `old` meanwhile, and
/// says whether it did.
pub async fn watch(
    every: Duration,
    shutdown: CancellationToken,
    current: impl Fn() -> Arc<Locator>,
    install: impl Fn(&Arc<Locator>, Arc<Locator>) -> bool,
) {
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
        let locator = current();
        let probe = locator.clone();
        // Opening reads the whole file: keep it off the async workers.
        let refreshed = tokio::task::spawn_blocking(move || probe.refreshed()).await;
        match refreshed {
            Ok(Ok(Some(fresh))) => {
                last_error = None;
                let path = fresh.database().map(|db| db.path().display().to_string());
                if install(&locator, Arc::new(fresh)) {
                    tracing::info!(path = path.unwrap_or_default(), "GeoIP database re-read");
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(error)) => {
                let message = error.to_string();
                if last_error.as_deref() != Some(&message) {
                    tracing::error!(
                        "GeoIP database refused, the previous one keeps serving: {message}"
                    );
                    last_error = Some(message);
                }
            }
            Err(join) => tracing::error!(%join, "GeoIP reload task failed"),
        }
    }
}

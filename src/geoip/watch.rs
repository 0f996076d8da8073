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
/// says whether it did; it runs off the async workers too (it may build
/// from the whole database), and its error refuses the new file.
pub async fn watch<E: std::fmt::Display + Send + 'static>(
    every: Duration,
    shutdown: CancellationToken,
    current: impl Fn() -> Arc<Locator>,
    install: impl Fn(&Arc<Locator>, Arc<Locator>) -> Result<bool, E> + Send + Sync + 'static,
) {
    let install = Arc::new(install);
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
        let locator = current();
        let install = install.clone();
        // Opening reads the whole file: keep it off the async workers.
        let refreshed = tokio::task::spawn_blocking(move || {
            let Some(fresh) = locator.refreshed().map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            let path = fresh.database().map(|db| db.path().display().to_string());
            let installed = install(&locator, Arc::new(fresh)).map_err(|e| e.to_string())?;
            Ok::<_, String>(Some((path, installed)))
        })
        .await;
        match refreshed {
            Ok(Ok(Some((path, installed)))) => {
                last_error = None;
                if installed {
                    tracing::info!(path = path.unwrap_or_default(), "GeoIP database re-read");
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(message)) => {
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

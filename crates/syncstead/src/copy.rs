//! `syncstead migrate` and `syncstead import-syncserver`: whole-database copies with a
//! progress bar per table.

use indicatif::{ProgressBar, ProgressStyle};
use syncstead_server::config::redact_url;
use syncstead_server::{ConfigLayer, Settings};
use syncstead_store::copy::{self as store_copy, Mode, Progress, Report};

use crate::error::CliResult;

pub fn mode(resume: bool, force: bool) -> Mode {
    match (resume, force) {
        (true, _) => Mode::Resume,
        (_, true) => Mode::Force,
        _ => Mode::Empty,
    }
}

/// A progress display: one bar per table, then a spinner while verifying.
struct Bars {
    current: std::sync::Mutex<Option<ProgressBar>>,
}

impl Bars {
    fn new() -> Self {
        Bars {
            current: std::sync::Mutex::new(None),
        }
    }

    fn update(&self, p: Progress) {
        let mut cur = self.current.lock().expect("progress lock");
        match p {
            Progress::Table { name, total } => {
                if let Some(b) = cur.take() {
                    b.finish();
                }
                let bar = ProgressBar::new(total).with_style(
                    ProgressStyle::with_template("{msg:24} [{bar:30}] {pos}/{len} rows ({per_sec})")
                        .expect("template")
                        .progress_chars("=> "),
                );
                bar.set_message(name);
                *cur = Some(bar);
            }
            Progress::Rows(n) => {
                if let Some(b) = cur.as_ref() {
                    b.inc(n);
                }
            }
            Progress::Verifying => {
                if let Some(b) = cur.take() {
                    b.finish();
                }
                let spinner = ProgressBar::new_spinner();
                spinner.set_message("verifying counts and checksums");
                spinner.enable_steady_tick(std::time::Duration::from_millis(200));
                *cur = Some(spinner);
            }
        }
    }

    fn done(&self) {
        if let Some(b) = self.current.lock().expect("progress lock").take() {
            b.finish_and_clear();
        }
    }
}

fn print(report: &Report) {
    for (table, n) in &report.copied {
        println!("  {table:18} {n:>9} rows copied");
    }
    println!(
        "verified: {} collections, {} records identical in source and target",
        report.collections_checked, report.records_checked
    );
}

pub async fn migrate(from: &str, to: &str, mode: Mode) -> CliResult<()> {
    // Writing into a SQLite database a server is running on would be lost under it.
    let _lock = match store_copy::sqlite_path(to) {
        Some(path) => {
            // As `serve` does: the target's directory is made if it is missing.
            let path = std::path::Path::new(path);
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                syncstead_store::lock::create_private_dir(dir)?;
            }
            Some(syncstead_store::InstanceLock::acquire(
                &syncstead_store::InstanceLock::sqlite_path(path),
            )?)
        }
        None => None,
    };
    let bars = Bars::new();
    let result = store_copy::migrate(from, to, mode, &|p| bars.update(p)).await;
    bars.done();
    let report = result?;
    println!("copied {} to {}", redact_url(from), redact_url(to));
    print(&report);
    Ok(())
}

pub async fn import(source: &str, mode: Mode, layer: ConfigLayer) -> CliResult<()> {
    let layer = layer.with_file()?;
    let settings = Settings::resolve(layer)?;
    if !settings.is_postgres() {
        let path = settings.sqlite_path()?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            syncstead_store::lock::create_private_dir(dir)?;
        }
    }
    let _locks = syncstead_server::serve::lock_instance(&settings)?;
    let bars = Bars::new();
    let result = store_copy::import_syncserver(source, &settings.database_url, mode, &|p| bars.update(p)).await;
    bars.done();
    let report = result?;
    println!("imported {} into {}", redact_url(source), settings.database_display());
    print(&report);
    println!(
        "The imported users keep their uids. When Syncstead is the only storage node, it takes over the old node's \
         URL at its next start; otherwise rename nodes with `syncstead node` (docs/migration.md)."
    );
    Ok(())
}

//! Placeholder replaced below.
#[derive(clap::Args)]
pub struct BenchArgs {}
pub async fn run(_: BenchArgs) -> Result<(), String> {
    Err("not yet".into())
}

//! The `syncstead` command: the server, its admin commands, and the load tool.

mod bench;

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use syncstead_proto::token::{random_salt, TokenPayload, TokenSigner};
use syncstead_server::{ConfigLayer, Settings};

#[derive(Parser)]
#[command(
    name = "syncstead",
    version,
    about = "A Firefox Sync server: storage 1.5 on an embedded SQLite database"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server. Settings come from defaults, then the TOML file (--config), then
    /// SYNCSTEAD_* environment variables, then these flags.
    Serve(Box<ConfigLayer>),
    /// Print a storage token (Hawk id and key) for a uid, signed with the master secret,
    /// for testing a node by hand (see docs/api.md).
    Token {
        /// The user id the token is for.
        #[arg(long)]
        uid: u64,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        #[command(flatten)]
        config: Box<ConfigLayer>,
    },
    /// Load-test a storage 1.5 server with simulated Firefox clients (docs/benchmarks.md).
    Bench(bench::BenchArgs),
}

fn init_logging(settings: &Settings) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&settings.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match settings.log_format {
        syncstead_server::config::LogFormat::Json => builder.json().init(),
        syncstead_server::config::LogFormat::Text => builder.init(),
    }
}

fn load_settings(layer: ConfigLayer) -> Result<Settings, String> {
    let layer = layer.with_file().map_err(|e| e.to_string())?;
    Settings::resolve(layer).map_err(|e| e.to_string())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn serve(layer: ConfigLayer) -> Result<(), String> {
    let settings = load_settings(layer)?;
    init_logging(&settings);
    let public = settings
        .public_url
        .as_ref()
        .map_or_else(|| format!("http://{}", settings.listen), |p| p.base());
    let database = settings.database_url.clone();
    let mut server = syncstead_server::start(settings).await.map_err(|e| e.to_string())?;
    println!("Syncstead {} is serving", env!("CARGO_PKG_VERSION"));
    println!("  listening on       http://{}", server.addr);
    println!("  storage 1.5 node   {public}/1.5/<uid>");
    println!("  health             {public}/__heartbeat__");
    if let Some(m) = server.metrics_addr {
        println!("  metrics            http://{m}/metrics");
    }
    println!("  database           {database}");
    tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down: finishing in-flight requests");
            server.shutdown().await.map_err(|e| e.to_string())?;
            tracing::info!("stopped");
        }
        r = server.wait() => r.map_err(|e| e.to_string())?,
    }
    Ok(())
}

fn token(uid: u64, ttl: u64, layer: ConfigLayer) -> Result<(), String> {
    let mut settings = load_settings(layer)?;
    settings.load_master_secret().map_err(|e| e.to_string())?;
    let node = settings
        .public_url
        .as_ref()
        .map_or_else(|| format!("http://{}", settings.listen), |p| p.base());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let payload = TokenPayload {
        node: node.clone(),
        fxa_kid: None,
        fxa_uid: None,
        hashed_device_id: None,
        hashed_fxa_uid: None,
        expires: (now + ttl) as f64,
        uid,
        tokenserver_origin: Some("rust".into()),
        salt: random_salt(),
    };
    let creds = TokenSigner::new(&settings.master_secret).mint(&payload);
    let out = serde_json::json!({
        "id": creds.id,
        "key": creds.key,
        "uid": uid,
        "api_endpoint": format!("{node}/1.5/{uid}"),
        "duration": ttl,
    });
    println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
    Ok(())
}

/// glibc gives every thread that allocates its own memory arena (up to 8 per core) and
/// rarely hands freed memory back; two arenas keep the server's footprint flat under
/// concurrency at no measurable cost in speed.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator tuning; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("syncstead: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(layer) => runtime.block_on(serve(*layer)),
        Command::Token { uid, ttl, config } => token(uid, ttl, *config),
        Command::Bench(args) => runtime.block_on(bench::run(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("syncstead: {e}");
            ExitCode::FAILURE
        }
    }
}

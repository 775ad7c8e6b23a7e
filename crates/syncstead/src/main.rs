//! The `syncstead` command: the server, its admin commands, and the load tool.

mod bench;
mod client;
mod copy;
mod doctor;
mod error;

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use syncstead_proto::token::{random_salt, TokenPayload, TokenSigner};
use syncstead_server::{ConfigLayer, Settings};

use crate::error::{CliError, CliResult};

#[derive(Parser)]
#[command(
    name = "syncstead",
    version,
    about = "A Firefox Sync server: token server and storage 1.5 for Firefox, Weave 1.1 for Pale Moon, \
             on SQLite or PostgreSQL, with a Sync client on the command line"
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
    /// Print the settings as they would be used (file, environment and flags merged;
    /// secrets redacted), or with --default a TOML file of every setting, commented.
    Config {
        /// Print a commented file of every setting and its default instead.
        #[arg(long)]
        default: bool,
        #[command(flatten)]
        config: Box<ConfigLayer>,
    },
    /// Write a consistent snapshot of the database to FILE, while the server runs.
    Backup {
        file: std::path::PathBuf,
        #[command(flatten)]
        config: Box<ConfigLayer>,
    },
    /// Replace the database with a snapshot taken by `syncstead backup` (stop the server first).
    Restore {
        file: std::path::PathBuf,
        /// Replace an existing database.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        config: Box<ConfigLayer>,
    },
    /// Copy a whole Syncstead database to another one (SQLite ⇄ PostgreSQL, or to a new
    /// file or server), in resumable chunks, verifying counts and per-collection checksums.
    /// Stop the server (or switch on maintenance) first; pending batches are not copied.
    Migrate {
        /// The source database URL (sqlite://PATH or postgres://…).
        #[arg(long)]
        from: String,
        /// The target database URL; it is created and migrated if needed.
        #[arg(long)]
        to: String,
        /// Continue an interrupted run.
        #[arg(long, conflicts_with = "force")]
        resume: bool,
        /// Write into a target that already has data (rows it has are kept).
        #[arg(long)]
        force: bool,
    },
    /// Import the database of Mozilla's old Python syncserver (its sqlite:// file or its
    /// postgres:// database): users, nodes and every stored record with its timestamps, so
    /// Firefox keeps syncing without uploading again (docs/migration.md).
    ImportSyncserver {
        /// The syncserver's database URL, e.g. sqlite:////var/lib/syncserver/syncserver.db
        source: String,
        /// Continue an interrupted import.
        #[arg(long, conflicts_with = "force")]
        resume: bool,
        /// Import into a database that already has data.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        config: Box<ConfigLayer>,
    },
    /// Manage the storage nodes the token server assigns users to.
    Node {
        #[command(subcommand)]
        action: NodeAction,
        #[command(flatten)]
        config: Box<ConfigLayer>,
    },
    /// A Sync client: sign up or in, then pull, push, back up and restore an account's
    /// data (docs/client.md).
    Client(client::ClientArgs),
    /// Check what `serve` would use with these settings (data directory, master secret,
    /// database, public URL, TLS, the token server's node) and print what to fix. Changes
    /// nothing; exits non-zero when something would stop the server.
    Doctor(Box<ConfigLayer>),
    /// Print a shell completion script: `syncstead completions bash >
    /// /etc/bash_completion.d/syncstead` (or zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff) to standard output, or with --dir write one page per
    /// command (syncstead.1, syncstead-serve.1, …) into DIR.
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
    /// Manage Syncstead's own accounts, the ones Firefox signs in to here (docs/accounts.md).
    Account {
        #[command(subcommand)]
        action: AccountAction,
        #[command(flatten)]
        config: Box<ConfigLayer>,
    },
    /// Manage accounts: Weave 1.1 accounts (add, passwd, delete, disable, reset-code) and
    /// who may sign up through the token server (allow, deny); `list` shows both and the
    /// token server's users.
    User {
        #[command(subcommand)]
        action: UserAction,
        #[command(flatten)]
        config: Box<ConfigLayer>,
    },
}

#[derive(Subcommand)]
enum NodeAction {
    /// Add a node by the URL clients reach it at (e.g. https://sync-2.example.com).
    Add {
        url: String,
        /// How many users the node may hold.
        #[arg(long, default_value_t = 100_000)]
        capacity: i64,
    },
    /// List nodes with their load.
    List,
    /// Change a node: capacity, available slots, or its downed/backoff flags.
    Set {
        url: String,
        #[arg(long)]
        capacity: Option<i64>,
        #[arg(long)]
        available: Option<i64>,
        /// A downed node gets no new users, and its users move at their next sign-in.
        #[arg(long)]
        downed: Option<bool>,
        /// A node in backoff gets no new users.
        #[arg(long)]
        backoff: Option<bool>,
    },
    /// Remove a node; its users move to another node at their next sign-in.
    Remove { url: String },
}

#[derive(Subcommand)]
enum AccountAction {
    /// Create an account for an e-mail address; the password is prompted for, or read
    /// from standard input when it is not a terminal.
    Add { email: String },
    /// List the accounts.
    List,
    /// Create an account whose owner chooses the password: prints a one-time code (24
    /// hours) to enter with a new password at <server>/reset_password.
    Invite { email: String },
    /// Stop an account (e-mail or uid) from signing in and sign out its devices; its data stays.
    Disable { account: String },
    /// Let a disabled account sign in again.
    Enable { account: String },
    /// Delete an account, its devices and all of its Sync data.
    Delete { account: String },
    /// A forgotten password: set a new one. The keys change with it, so the account's
    /// Sync data starts afresh (it was encrypted with a key the old password unlocked)
    /// and every device must sign in again.
    Reset {
        account: String,
        /// Print a one-time code (24 hours) for the owner to enter with a new password at
        /// <server>/reset_password, instead of setting the password here.
        #[arg(long)]
        code: bool,
    },
}

#[derive(Subcommand)]
enum UserAction {
    /// Create a Weave 1.1 account (Pale Moon, Basilisk) for an e-mail address; the
    /// password is prompted for, or read from standard input when it is not a terminal.
    Add {
        email: String,
        /// Use this username instead of the one clients derive from the e-mail
        /// (only with strict_usernames = false).
        #[arg(long)]
        username: Option<String>,
    },
    /// Set a new password for a Weave 1.1 account (username or e-mail).
    Passwd { account: String },
    /// Delete a Weave 1.1 account and all of its data.
    Delete { account: String },
    /// Stop a Weave 1.1 account from signing in (its data stays).
    Disable { account: String },
    /// Let a disabled Weave 1.1 account sign in again.
    Enable { account: String },
    /// Issue a one-time password-reset code for a Weave 1.1 account (valid 24 hours), for
    /// servers without a mail server: the user sends it as X-Weave-Password-Reset.
    ResetCode { account: String },
    /// Let a Mozilla account (its uid, as logged when it was refused) sign up while
    /// `allow_new_users` is false.
    Allow { fxa_uid: String },
    /// Take an account off the allow list.
    Deny { fxa_uid: String },
    /// List Weave 1.1 accounts, the token server's allow list, and its users.
    List,
}

fn init_logging(settings: &Settings) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&settings.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, not in journald or a log file.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match settings.log_format {
        syncstead_server::config::LogFormat::Json => builder.json().init(),
        syncstead_server::config::LogFormat::Text => builder.init(),
    }
}

fn load_settings(layer: ConfigLayer) -> CliResult<Settings> {
    let layer = layer.with_file()?;
    Ok(Settings::resolve(layer)?)
}

/// SIGTERM and SIGINT, listened for from before the server starts: a service manager that
/// stops the server right after it came up gets a clean shutdown, not the default death.
struct ShutdownSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn listen() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(ShutdownSignals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(ShutdownSignals {})
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Prints a startup line; a closed standard output must not stop the server.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

async fn serve(layer: ConfigLayer) -> CliResult<()> {
    let settings = load_settings(layer)?;
    init_logging(&settings);
    let database = settings.database_display();
    let mut signals = ShutdownSignals::listen()?;
    let mut server = syncstead_server::start(settings).await?;
    // The server's own URL: with the bound port (for --listen …:0) and its scheme.
    let public = server.state.public_base.clone();
    let scheme = server.state.settings.scheme();
    say!("Syncstead {} is serving", env!("CARGO_PKG_VERSION"));
    say!("  listening on       {scheme}://{}", server.addr);
    if server.state.settings.token_server {
        say!("  token server       {public}/1.0/sync/1.5  (Firefox: identity.sync.tokenserver.uri)");
    }
    if server.state.account_server.is_some() {
        say!("  Syncstead accounts {public}/  (Firefox about:config: identity.fxaccounts.autoconfig.uri = {public})");
        if scheme == "http" {
            say!("                     over plain HTTP also set identity.fxaccounts.allowHttp = true (loopback only: the page needs a secure context)");
        }
    }
    if server.state.settings.storage_node {
        say!("  storage 1.5 node   {public}/1.5/<uid>");
    }
    say!("  Weave 1.1 server   {public}/  (Pale Moon, Basilisk: custom server, with the final slash)");
    say!("  health             {public}/__heartbeat__");
    if let Some(m) = server.metrics_addr {
        say!("  metrics            http://{m}/metrics");
    }
    say!("  database           {database}");
    tokio::select! {
        _ = signals.recv() => {
            tracing::info!("shutting down: finishing in-flight requests");
            server.shutdown().await?;
            tracing::info!("stopped");
        }
        r = server.wait() => r?,
    }
    Ok(())
}

fn token(uid: u64, ttl: u64, layer: ConfigLayer) -> CliResult<()> {
    let mut settings = load_settings(layer)?;
    settings.existing_master_secret()?;
    let node = settings
        .public_url
        .as_ref()
        .map_or_else(|| format!("http://{}", settings.listen), |p| p.base());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
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
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// glibc gives every thread that allocates its own memory arena (up to 8 per core) and
/// rarely hands freed memory back; one arena keeps the server's footprint flat under
/// concurrency at no measurable cost in speed (docs/benchmarks.md).
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator tuning; called before any other thread starts.
    // A fixed mmap threshold (which also turns off glibc's raising of it) makes every large
    // buffer (a password hash's work memory, a listing chunk) its own mapping, returned to
    // the system when freed: memory goes back down after a burst.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

/// A fault on a memory-mapped file (SQLite's shared-memory file, made immutable or
/// truncated under the server) ends the process with SIGBUS: write a line that names the
/// cause before it goes, so the log does not just stop.
#[allow(unsafe_code)]
fn explain_sigbus() {
    #[cfg(target_os = "linux")]
    extern "C" fn on_sigbus(_: libc::c_int) {
        const MSG: &[u8] = b"syncstead: SIGBUS: a memory-mapped database file (SQLite's -shm) could not be \
            accessed; check the permissions and attributes (lsattr) of the files beside the database\n";
        // SAFETY: write(2), signal(2) and raise(3) are async-signal-safe; the default
        // action then ends the process as it would have.
        unsafe {
            libc::write(2, MSG.as_ptr().cast(), MSG.len());
            libc::signal(libc::SIGBUS, libc::SIG_DFL);
            libc::raise(libc::SIGBUS);
        }
    }
    #[cfg(target_os = "linux")]
    // SAFETY: installs a handler that only makes async-signal-safe calls.
    unsafe {
        libc::signal(
            libc::SIGBUS,
            on_sigbus as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

/// `syncstead config`: the merged settings as TOML (secrets redacted), or with `default`
/// every setting commented with its help and default, generated from the flags' own help
/// so the file never falls behind `serve --help`.
fn show_config(default: bool, layer: ConfigLayer) -> CliResult<()> {
    use clap::Args;
    use std::fmt::Write as _;
    let mut out = String::new();
    if default {
        let _ = writeln!(
            out,
            "# Syncstead settings: every key, with its default. Uncomment to change one."
        );
        let _ = writeln!(
            out,
            "# Precedence: built-in defaults < this file < SYNCSTEAD_* variables < flags."
        );
        let command = ConfigLayer::augment_args(clap::Command::new("serve"));
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long().filter(|l| *l != "config") else {
                continue;
            };
            let key = long.replace('-', "_");
            let help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            let (text, default) = match help.rsplit_once("[default: ") {
                Some((text, rest)) => (text.trim().to_string(), rest.trim_end_matches(']').trim().to_string()),
                None => (help.trim().to_string(), String::new()),
            };
            let _ = writeln!(out);
            for line in text.lines() {
                let _ = writeln!(out, "# {}", line.trim());
            }
            // A default that is one word is a value; a description ("the number of CPU
            // cores") or a template ("sqlite://<data_dir>/…") stays prose.
            let single = !default.is_empty() && !default.contains([' ', '<']);
            if single && arg.get_value_delimiter().is_some() {
                let items: Vec<String> = default.split(',').map(|v| format!("{v:?}")).collect();
                let _ = writeln!(out, "# {key} = [{}]", items.join(", "));
                continue;
            }
            let literal = Some(default.as_str()).filter(|_| single);
            match literal {
                Some(v) if v.parse::<f64>().is_ok() || v == "true" || v == "false" => {
                    let _ = writeln!(out, "# {key} = {v}");
                }
                Some(v) => {
                    let _ = writeln!(out, "# {key} = {v:?}");
                }
                None if default.is_empty() => {
                    let _ = writeln!(out, "# {key} =");
                }
                None => {
                    let _ = writeln!(out, "# {key} = …   (default: {default})");
                }
            }
        }
        emit(&out);
        return Ok(());
    }
    let layer = layer.with_file()?;
    let settings = Settings::resolve(layer.clone())?;
    let mut map = match serde_json::to_value(&layer)? {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    map.retain(|_, v| !v.is_null());
    for secret in ["master_secret", "weave_secret", "account_invite_code", "admin_token"] {
        if let Some(v) = map.get_mut(secret) {
            *v = "<redacted>".into();
        }
    }
    for url in ["database_url", "smtp_url"] {
        if let Some(serde_json::Value::String(u)) = map.get_mut(url) {
            *u = syncstead_server::config::redact_url(u);
        }
    }
    let source = layer.config.as_ref().map_or_else(
        || "SYNCSTEAD_* variables or flags".to_string(),
        |p| format!("{}, SYNCSTEAD_* variables or flags", p.display()),
    );
    let _ = writeln!(out, "# Set by {source}:");
    // Strings, numbers, booleans and lists of strings: their JSON form is valid TOML.
    for (key, value) in &map {
        let _ = writeln!(out, "{key} = {value}");
    }
    let _ = writeln!(
        out,
        "# Everything else is at its default (`syncstead config --default`). In effect:"
    );
    let _ = writeln!(out, "#   listen = {:?}", settings.listen.to_string());
    let _ = writeln!(out, "#   data_dir = {:?}", settings.data_dir.display().to_string());
    let _ = writeln!(out, "#   database_url = {:?}", settings.database_display());
    emit(&out);
    Ok(())
}

/// Writes to standard output; a closed pipe (`| head`) is not an error.
fn emit(text: &str) {
    let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
}

fn backup(file: &std::path::Path, layer: ConfigLayer) -> CliResult<()> {
    let settings = load_settings(layer)?;
    if settings.is_postgres() {
        return Err(CliError::Refused(
            "for PostgreSQL use pg_dump (docs/operations.md shows how); `syncstead backup` copies SQLite databases"
                .into(),
        ));
    }
    let db = settings.sqlite_path()?;
    let pages = syncstead_store::sqlite::backup(&db, file)?;
    println!("backed up {} to {} ({pages} pages)", db.display(), file.display());
    println!("keep the master secret with it: without it, issued tokens no longer verify");
    Ok(())
}

fn restore(file: &std::path::Path, force: bool, layer: ConfigLayer) -> CliResult<()> {
    let settings = load_settings(layer)?;
    let db = settings.sqlite_path()?;
    // Refused while a server runs on this database: it would go on writing to the
    // replaced file, and what it acknowledged would be lost.
    let _locks = syncstead_server::serve::lock_instance(&settings)?;
    syncstead_store::sqlite::restore(file, &db, force)?;
    println!("restored {} into {}", file.display(), db.display());
    Ok(())
}

async fn open_backend(layer: ConfigLayer) -> CliResult<std::sync::Arc<dyn syncstead_store::Backend>> {
    let settings = load_settings(layer)?;
    Ok(syncstead_server::open_store(&settings).await?)
}

async fn node(action: NodeAction, layer: ConfigLayer) -> CliResult<()> {
    let store = open_backend(layer).await?;
    match action {
        NodeAction::Add { url, capacity } => {
            // What Firefox will be sent to: an http(s) URL with a host.
            syncstead_server::config::PublicUrl::parse(&url).map_err(|e| {
                CliError::Refused(format!(
                    "{e} (a node is an http(s) URL, e.g. https://sync-1.example.com)"
                ))
            })?;
            if !store.add_node(&url, capacity).await? {
                return Err(CliError::Refused(format!("node {url} exists already")));
            }
            println!("added {url} (capacity {capacity})");
        }
        NodeAction::List => {
            println!(
                "{:<40} {:>9} {:>9} {:>9} {:>6} {:>7}",
                "node", "capacity", "load", "available", "downed", "backoff"
            );
            for n in store.nodes().await? {
                println!(
                    "{:<40} {:>9} {:>9} {:>9} {:>6} {:>7}",
                    n.url, n.capacity, n.current_load, n.available, n.downed, n.backoff
                );
            }
        }
        NodeAction::Set {
            url,
            capacity,
            available,
            downed,
            backoff,
        } => {
            let update = syncstead_store::NodeUpdate {
                capacity,
                available,
                downed,
                backoff,
            };
            if !store.update_node(&url, update).await? {
                return Err(CliError::Refused(format!("no node {url}")));
            }
            println!("updated {url}");
        }
        NodeAction::Remove { url } => {
            if !store.remove_node(&url).await? {
                return Err(CliError::Refused(format!("no node {url}")));
            }
            println!("removed {url}; its users move at their next sign-in");
        }
    }
    Ok(())
}

/// A password from the terminal (without echo, twice) or from standard input.
fn read_password() -> CliResult<String> {
    use std::io::IsTerminal;
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let again = rpassword::prompt_password("Again: ")?;
        if first != again {
            return Err(CliError::Refused("the passwords differ".into()));
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    };
    if password.len() < 8 {
        return Err(CliError::Refused("a password needs at least 8 bytes".into()));
    }
    Ok(password)
}

/// An account named by its username or by the e-mail address it derives from.
fn account_name(account: &str) -> String {
    syncstead_proto::username::username_for_account(account)
}

async fn account(action: AccountAction, layer: ConfigLayer) -> CliResult<()> {
    use syncstead_server::accounts;
    let settings = load_settings(layer.clone())?;
    let store = open_backend(layer).await?;
    let pool = syncstead_server::passwords::HashPool::new(
        syncstead_server::passwords::Hasher::new(settings.argon2_memory_kib, settings.argon2_iterations),
        1,
    );
    match action {
        AccountAction::Add { email } => {
            let password = read_password()?;
            let identity = accounts::add_account(&*store, &pool, &email, &password, settings.max_identities).await?;
            println!("created {} (uid {})", identity.email, identity.uid);
        }
        AccountAction::List => {
            println!("{:<32}  {:<8}  email", "uid", "state");
            for i in store.identities().await? {
                let state = if i.disabled { "disabled" } else { "active" };
                println!("{:<32}  {:<8}  {}", i.uid, state, i.email);
            }
        }
        AccountAction::Invite { email } => {
            let (i, code) =
                syncstead_server::admin::invite_account(&*store, &pool, &email, settings.max_identities).await?;
            println!("invited {} (uid {})", i.email, i.uid);
            println!("reset code: {code}");
            println!(
                "(give it to them: valid once, for 24 hours, with a new password at the server's /reset_password page)"
            );
        }
        AccountAction::Disable { account } => {
            let i = syncstead_server::admin::set_account_disabled(&*store, &account, true).await?;
            println!("disabled {} and signed out its devices", i.email);
        }
        AccountAction::Enable { account } => {
            let i = syncstead_server::admin::set_account_disabled(&*store, &account, false).await?;
            println!("enabled {}", i.email);
        }
        AccountAction::Delete { account } => {
            let i = syncstead_server::admin::delete_account(&*store, &account).await?;
            println!("deleted {} and all of its data", i.email);
        }
        AccountAction::Reset { account, code: true } => {
            let i = accounts::find_account(&*store, &account).await?;
            let code = accounts::issue_reset_code(&*store, &i.uid).await?;
            println!("reset code for {}: {code}", i.email);
            println!("(valid once, for 24 hours, at the server's /reset_password page; Sync data starts afresh)");
        }
        AccountAction::Reset { account, code: false } => {
            let i = accounts::find_account(&*store, &account).await?;
            let password = read_password()?;
            accounts::reset_account(&*store, &pool, &i.email, &password).await?;
            println!(
                "reset {}: new password and keys; its devices must sign in again and will sync afresh",
                i.email
            );
        }
    }
    Ok(())
}

async fn user(action: UserAction, layer: ConfigLayer) -> CliResult<()> {
    let settings = load_settings(layer.clone())?;
    let hasher = syncstead_server::passwords::Hasher::new(settings.argon2_memory_kib, settings.argon2_iterations);
    let store = open_backend(layer).await?;
    let missing = |name: &str| format!("no Weave 1.1 account {name}");
    match action {
        UserAction::Add { email, username } => {
            if !syncstead_server::passwords::valid_email(&email) {
                return Err(CliError::Refused(format!("{email:?} is not an e-mail address")));
            }
            let name = match username {
                Some(u) if settings.strict_usernames => {
                    return Err(CliError::Refused(format!(
                        "--username {u} needs strict_usernames = false"
                    )));
                }
                Some(u) => u,
                None => account_name(&email),
            };
            let hash = hasher.hash(&read_password()?);
            store
                .create_account(&name, &email, &hash, settings.max_accounts)
                .await
                .map_err(|err| CliError::Refused(format!("cannot create {name}: {err}")))?;
            println!("created {name} for {email}");
        }
        UserAction::Passwd { account } => {
            let name = account_name(&account);
            let hash = hasher.hash(&read_password()?);
            if !store.set_password(&name, &hash).await? {
                return Err(CliError::Refused(missing(&name)));
            }
            println!("password of {name} changed");
        }
        UserAction::Delete { account } => {
            let name = syncstead_server::admin::delete_weave_user(&*store, &account).await?;
            println!("deleted {name} and its data");
        }
        UserAction::Disable { account } => {
            let name = syncstead_server::admin::set_weave_disabled(&*store, &account, true).await?;
            println!("disabled {name}");
        }
        UserAction::Enable { account } => {
            let name = syncstead_server::admin::set_weave_disabled(&*store, &account, false).await?;
            println!("enabled {name}");
        }
        UserAction::ResetCode { account } => {
            let name = account_name(&account);
            let mut bytes = [0u8; 12];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
            let code = data_encoding::BASE32_NOPAD.encode(&bytes);
            let expires = syncstead_proto::SyncTimestamp::now().as_millis() + 24 * 3600 * 1000;
            let hash = syncstead_server::user_api::reset_code_hash(code.as_bytes());
            if !store.set_reset_code(&name, Some((hash, expires))).await? {
                return Err(CliError::Refused(missing(&name)));
            }
            println!("{code}");
        }
        UserAction::Allow { fxa_uid } => {
            syncstead_server::admin::set_allowed(&*store, &fxa_uid, true).await?;
            println!("allowed {fxa_uid}");
        }
        UserAction::Deny { fxa_uid } => {
            syncstead_server::admin::set_allowed(&*store, &fxa_uid, false).await?;
            println!("removed {fxa_uid} from the allow list");
        }
        UserAction::List => {
            println!("Weave 1.1 accounts (username, e-mail, state):");
            for a in store.accounts().await? {
                println!(
                    "  {} {} {}",
                    a.username,
                    a.email,
                    if a.disabled { "disabled" } else { "active" }
                );
            }
            println!("token server allow list:");
            for a in store.allowed_accounts().await? {
                println!("  {a}");
            }
            println!("users (account, uid, node):");
            for (email, uid, node) in store.token_users().await? {
                println!("  {email} {uid} {node}");
            }
        }
    }
    Ok(())
}

/// clap names a flag for a bad value even when it came from a `SYNCSTEAD_*` variable;
/// name the variable then, so the user looks in the right place.
fn exit_with(e: clap::Error) -> ! {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    use clap::CommandFactory;
    if !matches!(e.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue) {
        e.exit();
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        e.exit();
    };
    let flag = arg.split_whitespace().next().unwrap_or_default().to_string();
    let given = std::env::args().any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    let variable = env_of(&Cli::command(), flag.trim_start_matches('-'));
    match variable {
        Some(var) if !given && std::env::var_os(&var).is_some() => {
            let text = e.render().to_string();
            let text = text.replace(&format!("'{arg}'"), &format!("the environment variable {var}"));
            let text = text
                .split("\n\nFor more information")
                .next()
                .unwrap_or(&text)
                .to_string();
            eprintln!("{}", text.trim_end());
            eprintln!("(set by the environment: change or unset {var}; `syncstead serve --help` describes it)");
            std::process::exit(2);
        }
        _ => e.exit(),
    }
}

/// The environment variable behind the flag `--long` of any subcommand.
fn env_of(command: &clap::Command, long: &str) -> Option<String> {
    command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|v| v.to_string_lossy().into_owned())
        .or_else(|| command.get_subcommands().find_map(|c| env_of(c, long)))
}

fn man(dir: Option<&std::path::Path>) -> CliResult<()> {
    use clap::CommandFactory;
    let command = Cli::command();
    let io = |path: &std::path::Path, e: std::io::Error| CliError::File(path.to_path_buf(), e);
    match dir {
        None => clap_mangen::Man::new(command)
            .render(&mut std::io::stdout())
            .map_err(|e| io(std::path::Path::new("<stdout>"), e)),
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
            clap_mangen::generate_to(command, dir).map_err(|e| io(dir, e))
        }
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    explain_sigbus();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => exit_with(e),
    };
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
        Command::Config { default, config } => show_config(default, *config),
        Command::Backup { file, config } => backup(&file, *config),
        Command::Restore { file, force, config } => restore(&file, force, *config),
        Command::Node { action, config } => runtime.block_on(node(action, *config)),
        Command::User { action, config } => runtime.block_on(user(action, *config)),
        Command::Account { action, config } => runtime.block_on(account(action, *config)),
        Command::Client(args) => runtime.block_on(client::run(args)),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            // Into memory first: clap_complete panics when a write fails (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "syncstead", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script).map_err(|e| CliError::File("<stdout>".into(), e))
        }
        Command::Man { dir } => man(dir.as_deref()),
        Command::Doctor(layer) => runtime.block_on(doctor::run(*layer)),
        Command::Migrate {
            from,
            to,
            resume,
            force,
        } => runtime.block_on(copy::migrate(&from, &to, copy::mode(resume, force))),
        Command::ImportSyncserver {
            source,
            resume,
            force,
            config,
        } => runtime.block_on(copy::import(&source, copy::mode(resume, force), *config)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("syncstead: {e}");
            ExitCode::FAILURE
        }
    }
}

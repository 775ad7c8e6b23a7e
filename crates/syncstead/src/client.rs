//! `syncstead client …`: a Sync client on the command line, for both protocols. Every
//! command starts like a sync does (meta/global, crypto/keys, this device's client
//! record and its commands), then does its work and saves the sync state.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use data_encoding::{BASE64URL_NOPAD, HEXLOWER_PERMISSIVE};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use syncstead_client::account::{Account, Login};
use syncstead_client::crypto::{friendly_sync_key, parse_sync_key, SyncKeys};
use syncstead_client::sync::{write_private, Device, SyncClient};
use syncstead_client::transport::user_api;
use syncstead_client::ClientError;
use url::Url;

use crate::error::{CliError, CliResult};

#[derive(Args)]
pub struct ClientArgs {
    /// The account file (0600): server, credentials, keys and sync state
    /// [default: ~/.config/syncstead/client.json].
    #[arg(long, env = "SYNCSTEAD_CLIENT_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    action: ClientAction,
}

#[derive(Subcommand)]
enum ClientAction {
    /// Create a Weave 1.1 account (User API) and its Sync Key, and sign this device in.
    /// The password is prompted for, or read from standard input when it is not a terminal.
    Signup {
        /// The server's URL (what Pale Moon calls the custom server).
        #[arg(long)]
        server: String,
        #[arg(long)]
        email: String,
        /// The server's registration secret, if it requires one (X-Weave-Secret).
        #[arg(long, env = "SYNCSTEAD_WEAVE_SECRET")]
        secret: Option<String>,
        /// This device's name in the account's device list.
        #[arg(long)]
        device_name: Option<String>,
    },
    /// Sign this device in to an existing Weave 1.1 account. The password is prompted for
    /// (or read from standard input); the Sync Key too, unless given.
    Login {
        #[arg(long)]
        server: String,
        #[arg(long)]
        email: String,
        /// The Sync Key (x-xxxxx-xxxxx-xxxxx-xxxxx-xxxxx) shown by the first device.
        #[arg(long, env = "SYNCSTEAD_SYNC_KEY", hide_env_values = true)]
        sync_key: Option<String>,
        #[arg(long)]
        device_name: Option<String>,
    },
    /// Connect this device to a Sync 1.5 account through a token server, with a Mozilla
    /// accounts OAuth access token and the account's key material.
    Connect {
        /// The token server's URL (the part before /1.0/sync/1.5).
        #[arg(long)]
        token_server: String,
        /// An OAuth access token for scope https://identity.mozilla.com/apps/oldsync.
        #[arg(long, env = "SYNCSTEAD_ACCESS_TOKEN", hide_env_values = true)]
        access_token: String,
        /// The account key kB, hex (with --keys-changed-at).
        #[arg(long, env = "SYNCSTEAD_KB", hide_env_values = true, conflicts_with = "scoped_key")]
        kb: Option<String>,
        /// keysChangedAt of the account, milliseconds (with --kb).
        #[arg(long, requires = "kb")]
        keys_changed_at: Option<i64>,
        /// A file holding the oldsync scoped key as a JWK ({"k": …, "kid": …}).
        #[arg(long)]
        scoped_key: Option<PathBuf>,
        #[arg(long)]
        device_name: Option<String>,
    },
    /// Show the account, its collections and devices.
    Status,
    /// Download a collection, decrypted, as a JSON array.
    Pull {
        collection: String,
        /// Write to this file (0600) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Keep deletion markes (tombstones) in the output.
        #[arg(long)]
        include_deleted: bool,
    },
    /// Encrypt and upload records (a JSON array of objects with an "id") to a collection;
    /// records with the same id are replaced, others are kept.
    Push { collection: String, file: PathBuf },
    /// Save every collection, decrypted, into a directory (0700). The files are plaintext
    /// and hold no keys: protect the directory.
    Backup { dir: PathBuf },
    /// Upload a backup again, encrypted with this account's current keys.
    Restore { dir: PathBuf },
    /// Delete everything the account has on the server and start afresh.
    Wipe {
        /// Do it without asking.
        #[arg(long)]
        yes: bool,
    },
    /// Import or export bookmarks as a bookmark file (bookmarks.html).
    Bookmarks {
        #[command(subcommand)]
        action: BookmarksAction,
    },
    /// Leave a command for another device (resetEngine, wipeEngine, resetAll, wipeAll,
    /// displayURI), by its id as `status` lists it.
    Command {
        device: String,
        command: String,
        args: Vec<String>,
    },
    /// Replace the account's bulk keys and re-upload all data encrypted with them.
    RotateKeys {
        /// Give this collection a key of its own (repeatable).
        #[arg(long = "own-key", value_name = "COLLECTION")]
        own_keys: Vec<String>,
    },
}

#[derive(Subcommand)]
enum BookmarksAction {
    /// Add the bookmarks of a bookmark file after the account's own.
    Import { file: PathBuf },
    /// Write the account's bookmarks to a bookmark file.
    Export { file: PathBuf },
}

fn device_name(given: Option<String>) -> String {
    given.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        match host.trim() {
            "" => "Syncstead CLI".to_string(),
            h => format!("Syncstead on {h}"),
        }
    })
}

/// A secret from the terminal without echo, or a line of standard input.
fn read_secret(prompt: &str) -> CliResult<String> {
    if std::io::stdin().is_terminal() {
        Ok(rpassword::prompt_password(prompt)?)
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }
}

fn bar(total: Option<u64>, what: &str) -> ProgressBar {
    let pb = match total {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template("{msg:12} [{bar:30}] {pos}/{len} records ({per_sec})")
                .expect("template")
                .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner(),
    };
    pb.set_message(what.to_string());
    pb
}

/// Prints what the client and the server want the user to know.
fn report(client: &mut SyncClient) {
    for e in client.events.drain(..) {
        eprintln!("note: {e}");
    }
    for n in client.transport.take_notices() {
        eprintln!("server: {n}");
    }
}

/// Runs `work` with a prepared client and saves the state afterwards, whatever happened.
async fn with_client<T>(
    path: &Path,
    work: impl AsyncFnOnce(&mut SyncClient) -> Result<T, ClientError>,
) -> CliResult<T> {
    let mut account = Account::load(path).map_err(CliError::from)?;
    let mut client = account.client(http()).map_err(CliError::from)?;
    let result = match client.prepare().await {
        Ok(_) => work(&mut client).await,
        Err(e) => Err(e),
    };
    report(&mut client);
    account.state = client.state.clone();
    account.save(path).map_err(CliError::from)?;
    result.map_err(CliError::from)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("Syncstead/", env!("CARGO_PKG_VERSION"), " (client)"))
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .expect("HTTP client")
}

/// Signs a new account in: prepares it (which checks the password and key) and saves it.
async fn sign_in(path: &Path, login: Login, name: Option<String>) -> CliResult<SyncClient> {
    let mut account = Account {
        login,
        device: Device::new(&device_name(name)),
        state: Default::default(),
    };
    let mut client = account.client(http()).map_err(CliError::from)?;
    let prepared = client.prepare().await;
    report(&mut client);
    prepared.map_err(CliError::from)?;
    account.state = client.state.clone();
    account.save(path).map_err(CliError::from)?;
    Ok(client)
}

async fn collection_counts(client: &mut SyncClient) -> serde_json::Map<String, Value> {
    match client
        .transport
        .request(reqwest::Method::GET, "/info/collection_counts", &[], None)
        .await
    {
        Ok(r) if r.status.is_success() => serde_json::from_str(&r.body).unwrap_or_default(),
        _ => Default::default(),
    }
}

fn read_json_array(file: &Path) -> CliResult<Vec<Value>> {
    let data = std::fs::read(file).map_err(|e| CliError::Refused(format!("{}: {e}", file.display())))?;
    serde_json::from_slice(&data)
        .map_err(|e| CliError::Refused(format!("{}: not a JSON array of records ({e})", file.display())))
}

pub async fn run(args: ClientArgs) -> CliResult<()> {
    let path = args.config.unwrap_or_else(Account::default_path);
    let path = path.as_path();
    match args.action {
        ClientAction::Signup {
            server,
            email,
            secret,
            device_name,
        } => {
            let url = Url::parse(&server).map_err(|e| CliError::Refused(format!("{server}: {e}")))?;
            let username = syncstead_proto::username::username_for_account(&email);
            let http = http();
            if user_api::exists(&http, &url, &username).await.map_err(CliError::from)? {
                return Err(CliError::Refused(format!(
                    "{email} already has an account here: use `syncstead client login`"
                )));
            }
            let password = read_secret("Password: ")?;
            if std::io::stdin().is_terminal() && read_secret("Again: ")? != password {
                return Err(CliError::Refused("the passwords differ".into()));
            }
            user_api::create(&http, &url, &username, &email, &password, secret.as_deref())
                .await
                .map_err(CliError::from)?;
            let mut key = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
            let sync_key = friendly_sync_key(&key);
            let login = Login::Weave11 {
                server,
                email: email.clone(),
                username: username.clone(),
                password,
                sync_key: sync_key.clone(),
            };
            sign_in(path, login, device_name).await?;
            println!("created the account {email} (username {username})");
            println!("Sync Key: {sync_key}");
            println!("Other devices need this key; without it nobody, including you, can read the data.");
            println!("Write it down. This device keeps it in {} (mode 0600).", path.display());
        }
        ClientAction::Login {
            server,
            email,
            sync_key,
            device_name,
        } => {
            Url::parse(&server).map_err(|e| CliError::Refused(format!("{server}: {e}")))?;
            let username = syncstead_proto::username::username_for_account(&email);
            let password = read_secret("Password: ")?;
            let key = match sync_key {
                Some(k) => k,
                None => read_secret("Sync Key: ")?,
            };
            let key = friendly_sync_key(
                &parse_sync_key(&key).map_err(|e| CliError::Refused(format!("{e}: check the Sync Key")))?,
            );
            let login = Login::Weave11 {
                server,
                email: email.clone(),
                username,
                password,
                sync_key: key,
            };
            sign_in(path, login, device_name).await?;
            println!("signed in as {email}");
        }
        ClientAction::Connect {
            token_server,
            access_token,
            kb,
            keys_changed_at,
            scoped_key,
            device_name,
        } => {
            Url::parse(&token_server).map_err(|e| CliError::Refused(format!("{token_server}: {e}")))?;
            let (ksync, key_id) = match (kb, scoped_key) {
                (Some(kb), None) => {
                    let kb: [u8; 32] = HEXLOWER_PERMISSIVE
                        .decode(kb.trim().as_bytes())
                        .ok()
                        .and_then(|v| v.try_into().ok())
                        .ok_or_else(|| CliError::Refused("--kb is 32 bytes of hex".into()))?;
                    let keys = SyncKeys::from_kb(&kb);
                    let kca =
                        keys_changed_at.ok_or_else(|| CliError::Refused("--kb needs --keys-changed-at".into()))?;
                    (keys.scoped_key(), keys.key_id(kca))
                }
                (None, Some(file)) => {
                    let jwk: Value = serde_json::from_slice(&std::fs::read(&file)?)
                        .map_err(|e| CliError::Refused(format!("{}: {e}", file.display())))?;
                    match (jwk["k"].as_str(), jwk["kid"].as_str()) {
                        (Some(k), Some(kid)) => (k.to_string(), kid.to_string()),
                        _ => return Err(CliError::Refused("the scoped key needs \"k\" and \"kid\"".into())),
                    }
                }
                _ => {
                    return Err(CliError::Refused(
                        "give the key material: --kb with --keys-changed-at, or --scoped-key".into(),
                    ))
                }
            };
            if BASE64URL_NOPAD.decode(ksync.as_bytes()).map(|k| k.len()) != Ok(64) {
                return Err(CliError::Refused("kSync must be 64 bytes of base64url".into()));
            }
            let login = Login::Sync15 {
                token_server,
                access_token,
                key_id,
                ksync,
            };
            let mut client = sign_in(path, login, device_name).await?;
            println!(
                "connected; storage at {}",
                client.transport.endpoint().await.map_err(CliError::from)?
            );
        }
        ClientAction::Status => {
            let account = Account::load(path).map_err(CliError::from)?;
            match &account.login {
                Login::Weave11 {
                    server,
                    email,
                    username,
                    ..
                } => println!("account   {email} (Weave 1.1, username {username}) on {server}"),
                Login::Sync15 {
                    token_server, key_id, ..
                } => println!("account   Sync 1.5 via {token_server} (key {key_id})"),
            }
            println!("device    {} ({})", account.device.name, account.device.id);
            with_client(path, async |c| {
                println!("storage   {}", c.transport.endpoint().await?);
                let info = c.transport.info_collections().await?;
                let counts = collection_counts(c).await;
                println!("collections:");
                for (name, modified) in &info {
                    let n = counts.get(name).and_then(Value::as_u64).unwrap_or(0);
                    println!("  {name:14} {n:>7} records, changed {modified:.2}");
                }
                println!("devices:");
                for d in c.clients().await? {
                    let me = if d["id"] == c.device.id { " (this device)" } else { "" };
                    println!(
                        "  {} {} [{}]{me}",
                        d["id"].as_str().unwrap_or("?"),
                        d["name"].as_str().unwrap_or("?"),
                        d["type"].as_str().unwrap_or("?")
                    );
                }
                Ok(())
            })
            .await?;
        }
        ClientAction::Pull {
            collection,
            out,
            include_deleted,
        } => {
            let records = with_client(path, async |c| {
                let total = collection_counts(c).await.get(&collection).and_then(Value::as_u64);
                let pb = bar(total, &collection);
                let r = c.pull(&collection, &|n| pb.inc(n as u64)).await;
                pb.finish_and_clear();
                Ok(r?.0)
            })
            .await?;
            let records: Vec<Value> = records
                .into_iter()
                .filter(|r| include_deleted || r["deleted"] != true)
                .collect();
            let text = serde_json::to_string_pretty(&records).expect("JSON");
            match out {
                Some(file) => {
                    write_private(&file, text.as_bytes())
                        .map_err(|e| CliError::Refused(format!("{}: {e}", file.display())))?;
                    eprintln!(
                        "{} records of {collection} written to {}",
                        records.len(),
                        file.display()
                    );
                }
                None => println!("{text}"),
            }
        }
        ClientAction::Push { collection, file } => {
            let records = read_json_array(&file)?;
            let n = records.len();
            let report = with_client(path, async |c| {
                let pb = bar(Some(n as u64), &collection);
                let r = c.push(&collection, records, &|k| pb.inc(k as u64)).await;
                pb.finish_and_clear();
                r
            })
            .await?;
            println!(
                "pushed {} records to {collection} in {} requests{}",
                report.records,
                report.requests,
                if report.conflicts > 0 {
                    format!("; another device wrote meanwhile: {} records merged", report.merged)
                } else {
                    String::new()
                }
            );
        }
        ClientAction::Backup { dir } => {
            let done = with_client(path, async |c| {
                let pb = bar(None, "backup");
                let r = c.backup(&dir, &|n| pb.inc(n as u64)).await;
                pb.finish_and_clear();
                r
            })
            .await?;
            for (c, n) in &done {
                println!("  {c:14} {n:>7} records");
            }
            println!("backed up {} collections to {}", done.len(), dir.display());
            println!(
                "The backup is decrypted and holds no keys: anyone who can read the directory can read your data."
            );
            println!("`syncstead client restore` uploads it encrypted with the keys of the account it runs for.");
        }
        ClientAction::Restore { dir } => {
            let done = with_client(path, async |c| {
                let pb = bar(None, "restore");
                let r = c.restore(&dir, &|n| pb.inc(n as u64)).await;
                pb.finish_and_clear();
                r
            })
            .await?;
            for (c, n) in &done {
                println!("  {c:14} {n:>7} records");
            }
            println!("restored {} collections from {}", done.len(), dir.display());
        }
        ClientAction::Wipe { yes } => {
            if !yes {
                if !std::io::stdin().is_terminal() {
                    return Err(CliError::Refused(
                        "wipe deletes all of the account's data on the server: confirm with --yes".into(),
                    ));
                }
                let answer = read_line("Delete everything this account has on the server? Type \"wipe\": ")?;
                if answer.trim() != "wipe" {
                    return Err(CliError::Refused("not wiped".into()));
                }
            }
            with_client(path, async |c| c.wipe().await).await?;
            println!("wiped; the account starts afresh (other devices reset at their next sync)");
        }
        ClientAction::Bookmarks { action } => match action {
            BookmarksAction::Import { file } => {
                let html = std::fs::read_to_string(&file)
                    .map_err(|e| CliError::Refused(format!("{}: {e}", file.display())))?;
                let report = with_client(path, async |c| {
                    let pb = bar(None, "bookmarks");
                    let r = c.import_bookmarks(&html, &|n| pb.inc(n as u64)).await;
                    pb.finish_and_clear();
                    r
                })
                .await?;
                println!("imported {} bookmark records", report.records);
            }
            BookmarksAction::Export { file } => {
                let (html, n) = with_client(path, async |c| c.export_bookmarks(&|_| {}).await).await?;
                std::fs::write(&file, html).map_err(|e| CliError::Refused(format!("{}: {e}", file.display())))?;
                println!("exported {n} bookmarks, folders and separators to {}", file.display());
            }
        },
        ClientAction::Command { device, command, args } => {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            with_client(path, async |c| c.send_command(&device, &command, &args).await).await?;
            println!("left {command} for {device}");
        }
        ClientAction::RotateKeys { own_keys } => {
            let own: Vec<&str> = own_keys.iter().map(String::as_str).collect();
            let r = with_client(path, async |c| c.rotate_keys(&own).await).await?;
            println!("new keys; {} records re-uploaded", r.records);
        }
    }
    Ok(())
}

fn read_line(prompt: &str) -> CliResult<String> {
    use std::io::Write;
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line)
}

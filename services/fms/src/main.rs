//! `fms`: the command-line front end of the store. It only parses arguments, sets up logging
//! and calls the engine; every rule lives in `fms-engine`.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fms_engine::{FileId, FileInfo, FileMeta, IoMode, Store};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

mod remote;
mod server;

/// fms — a content-addressed file store.
#[derive(Debug, Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    /// Where the store lives. Default: $XDG_DATA_HOME/fms or ~/.local/share/fms.
    #[arg(long, env = "FMS_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Configuration file (TOML); `FMS_*` environment variables override it.
    #[arg(long, env = "FMS_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Disk I/O back end: auto (io_uring when the kernel allows it), uring, std.
    #[arg(long, env = "FMS_IO", default_value = "auto", global = true)]
    io: IoMode,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Store a file (or standard input with `-`); prints the new file's id.
    Put {
        /// Path of the file, or `-` for standard input.
        file: String,
        /// Print the whole record as JSON instead of the id alone.
        #[arg(long)]
        json: bool,
    },
    /// Write a file (or a byte range of it) to standard output or a file.
    Get {
        id: String,
        /// Inclusive byte range as in HTTP: `a-b`, `a-` (to the end) or `-n` (last n bytes).
        #[arg(long, allow_hyphen_values = true)]
        range: Option<String>,
        /// Write here instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// List stored files.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Delete a file.
    Rm { id: String },
    /// Store-wide numbers: sizes, dedup ratio, chunks, packs, dead bytes.
    Stat {
        #[arg(long)]
        json: bool,
    },
    /// Run every service in this process on the embedded defaults (no external server):
    /// HTTP on --listen (127.0.0.1:8080), gRPC on --grpc-listen (127.0.0.1:9090).
    Serve {
        #[command(flatten)]
        listen: ListenArgs,
    },
    /// Run the auth service alone (REST /auth/*, /.well-known/jwks.json).
    Auth {
        #[command(flatten)]
        listen: ListenArgs,
    },
    /// Run the permission service alone (gRPC `fms.permission.v1`; HTTP only for
    /// /healthz, /readyz and /metrics).
    Permission {
        #[command(flatten)]
        listen: ListenArgs,
    },
    /// Run the picker alone (REST /api/*), with auth and permission found by address
    /// (`auth.jwks_url`, `picker.permission_url`).
    Picker {
        #[command(flatten)]
        listen: ListenArgs,
    },
    /// Log in to a running server (REST `/auth/login`); saves the tokens `push` and `pull`
    /// use in ~/.config/fms/credentials.json (or $FMS_CREDENTIALS), mode 0600.
    Login {
        /// The server's HTTP URL, e.g. http://127.0.0.1:8080.
        #[arg(long, env = "FMS_SERVER")]
        server: String,
        /// The server's gRPC URL (default: the same host, port 9090).
        #[arg(long, env = "FMS_GRPC")]
        grpc: Option<String>,
        #[arg(long, env = "FMS_USERNAME")]
        username: String,
        /// The password is read from $FMS_PASSWORD, else from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Upload files and directory trees to the server logged in to, over concurrent gRPC
    /// streams, dedup-aware; run it again after an interruption to resume.
    Push {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Concurrent upload streams.
        #[arg(long, default_value_t = 4)]
        streams: usize,
        /// Journal of this push (default: per server and paths under ~/.local/state/fms).
        #[arg(long)]
        journal: Option<PathBuf>,
        /// Send every byte (no dedup-aware upload).
        #[arg(long)]
        no_dedup: bool,
        /// Print a JSON summary (path -> file id) on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Download files (all you can read when no id is given) into a directory; resumes
    /// partial downloads and checks every file's BLAKE3.
    Pull {
        ids: Vec<String>,
        #[arg(long, default_value = ".")]
        to: PathBuf,
        #[arg(long, default_value_t = 4)]
        streams: usize,
    },
    /// Run the notification service alone (WebSocket `/ws`, gRPC `Publish`), with auth
    /// found by address (`auth.jwks_url`).
    Notification {
        #[command(flatten)]
        listen: ListenArgs,
    },
    /// Run the downloader alone (gRPC `DownloadFile`), writing imports into the picker at
    /// `downloader.picker_url`.
    Downloader {
        #[command(flatten)]
        listen: ListenArgs,
    },
    /// Run the transformer alone (gRPC `TransformFile`).
    Transformer {
        #[command(flatten)]
        listen: ListenArgs,
    },
    /// Configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
    },
    /// Maintenance.
    Admin {
        #[command(subcommand)]
        command: Admin,
    },
}

/// Addresses of a server process (override the configuration's `listen`, `grpc_listen`).
#[derive(Debug, clap::Args)]
struct ListenArgs {
    /// HTTP address, e.g. 127.0.0.1:8080 (config `listen`, env FMS_LISTEN).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// gRPC address, e.g. 127.0.0.1:9090 (config `grpc_listen`, env FMS_GRPC_LISTEN).
    #[arg(long)]
    grpc_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// Print the effective configuration (defaults, file, environment) as TOML.
    Print,
}

#[derive(Debug, Subcommand)]
enum Admin {
    /// Full scan of packs, index, manifests and refcounts; exits non-zero on any problem.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Expire old upload sessions and compact packs with much dead data.
    Gc {
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the index from the packs alone.
    Reindex {
        #[arg(long)]
        json: bool,
    },
}

/// A failure with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl From<fms_engine::Error> for Failure {
    fn from(e: fms_engine::Error) -> Self {
        let code = match e {
            fms_engine::Error::NotFound(_) => 3,
            fms_engine::Error::InvalidRange { .. } => 4,
            ref e if e.is_corruption() => 5,
            _ => 1,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

fn io_fail(what: &str, e: io::Error) -> Failure {
    if e.kind() == io::ErrorKind::BrokenPipe {
        return fail(141, "broken pipe");
    }
    fail(1, format!("{what}: {e}"))
}

fn main() -> ExitCode {
    // Tesseract (OCR) parallelises each page with OpenMP across every core by default; the
    // transformer already runs one transform per core, so more threads per page only fight
    // over the same cores. An operator's own setting is kept.
    if std::env::var_os("OMP_THREAD_LIMIT").is_none() {
        // SAFETY: nothing else runs yet — no thread has been started, nothing reads the
        // environment concurrently.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("OMP_THREAD_LIMIT", "1");
        }
    }
    let cli = Cli::parse();
    if let Command::Serve { listen }
    | Command::Auth { listen }
    | Command::Permission { listen }
    | Command::Picker { listen }
    | Command::Notification { listen }
    | Command::Downloader { listen }
    | Command::Transformer { listen } = &cli.command
    {
        let role = match cli.command {
            Command::Serve { .. } => server::Role::All,
            Command::Permission { .. } => server::Role::Permission,
            Command::Picker { .. } => server::Role::Picker,
            Command::Notification { .. } => server::Role::Notification,
            Command::Downloader { .. } => server::Role::Downloader,
            Command::Transformer { .. } => server::Role::Transformer,
            _ => server::Role::Auth,
        };
        let result = fms_platform::Config::load(cli.config.as_deref(), std::env::vars())
            .map_err(|e| (2, e.to_string()))
            .and_then(|mut config| {
                if let Some(d) = &cli.data_dir {
                    config.data_dir = d.clone();
                }
                if let Some(a) = listen.listen {
                    config.listen = a;
                }
                if let Some(a) = listen.grpc_listen {
                    config.grpc_listen = a;
                }
                server::run(config, role).map_err(|e| (1, e))
            });
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err((code, message)) => {
                eprintln!("fms: error: {message}");
                ExitCode::from(code)
            }
        };
    }
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FMS_LOG__LEVEL")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if f.code != 141 {
                eprintln!("fms: error: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}

fn parse_id(s: &str) -> Result<FileId, Failure> {
    s.parse()
        .map_err(|_| fail(2, format!("{s:?} is not a file id (32 hex digits)")))
}

fn record(info_id: FileId, meta: &FileMeta) -> serde_json::Value {
    json!({
        "id": info_id.to_string(),
        "size": meta.size,
        "hash": hex::encode(meta.hash),
        "chunks": meta.chunks,
        "created_ms": meta.created_ms,
    })
}

/// A progress bar on stderr, only for a person watching: when stdout is a terminal (so not
/// in `id=$(fms put f)` or `fms get ID > f`) and stderr can draw it.
fn progress(len: Option<u64>, what: &str) -> Option<ProgressBar> {
    if !io::stdout().is_terminal() || !io::stderr().is_terminal() {
        return None;
    }
    let bar = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::no_length(),
    };
    let template = if len.is_some() {
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "{msg} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    Some(bar)
}

/// `login`, `push`, `pull`: talk to a server.
fn remote(command: Command) -> Result<(), Failure> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(1, e.to_string()))?;
    let r = rt.block_on(async move {
        match command {
            Command::Login {
                server,
                grpc,
                username,
                password_stdin,
            } => {
                let password = match std::env::var("FMS_PASSWORD") {
                    Ok(p) if !password_stdin => p,
                    _ => {
                        let mut line = String::new();
                        io::stdin()
                            .read_line(&mut line)
                            .map_err(|e| remote::RemoteError::new(e.to_string()))?;
                        line.trim_end_matches(['\r', '\n']).to_string()
                    }
                };
                remote::login(&server, grpc.as_deref(), &username, &password).await
            }
            Command::Push {
                paths,
                streams,
                journal,
                no_dedup,
                json,
            } => {
                let opts = remote::PushOptions {
                    streams,
                    journal,
                    dedup: !no_dedup,
                    json,
                };
                remote::push(&paths, opts).await
            }
            Command::Pull { ids, to, streams } => {
                remote::pull(&ids, remote::PullOptions { to, streams }).await
            }
            _ => Ok(()),
        }
    });
    r.map_err(|e| fail(1, e.message))
}

fn run(cli: Cli) -> Result<(), Failure> {
    if matches!(
        cli.command,
        Command::Login { .. } | Command::Push { .. } | Command::Pull { .. }
    ) {
        return remote(cli.command);
    }
    if let Command::Config {
        command: ConfigCmd::Print,
    } = cli.command
    {
        let mut config = fms_platform::Config::load(cli.config.as_deref(), std::env::vars())
            .map_err(|e| fail(2, e.to_string()))?;
        if let Some(d) = cli.data_dir {
            config.data_dir = d;
        }
        print!("{}", config.to_toml());
        return Ok(());
    }
    let dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(fms_platform::config::default_data_dir);
    if let Command::Admin {
        command: Admin::Reindex { json },
    } = cli.command
    {
        let rep = Store::reindex(&dir, cli.io)?;
        if json {
            println!(
                "{}",
                json!({
                    "packs": rep.packs, "chunks": rep.chunks, "files": rep.files,
                    "deleted_files": rep.deleted_files, "corrupt_records": rep.corrupt_records,
                    "incomplete_files": rep.incomplete_files.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
                })
            );
        } else {
            println!(
                "reindexed {} packs: {} files, {} chunks ({} deleted files, {} corrupt records skipped)",
                rep.packs, rep.files, rep.chunks, rep.deleted_files, rep.corrupt_records
            );
            for f in &rep.incomplete_files {
                println!("incomplete file {f}: some chunks were not found intact");
            }
        }
        return if rep.incomplete_files.is_empty() && rep.corrupt_records == 0 {
            Ok(())
        } else {
            Err(fail(5, "reindex found damaged data"))
        };
    }
    let store = Store::builder(&dir).io_mode(cli.io).open()?;
    match cli.command {
        Command::Put { file, json } => {
            let info = put(&store, &file)?;
            if json {
                let mut v = record(info.id, &info.meta);
                v["new_bytes"] = json!(info.new_bytes);
                println!("{v}");
            } else {
                println!("{}", info.id);
            }
        }
        Command::Get { id, range, output } => {
            let id = parse_id(&id)?;
            let meta = store.stat_file(id)?;
            let (start, end) = match range {
                Some(r) => fms_platform::range::parse(&r, meta.size).map_err(|e| fail(4, e))?,
                None => (0, meta.size),
            };
            let bar = progress(Some(end - start), "get");
            let mut out: Box<dyn Write> = match &output {
                Some(p) => Box::new(io::BufWriter::new(
                    File::create(p).map_err(|e| io_fail(&format!("create {}", p.display()), e))?,
                )),
                None => Box::new(io::BufWriter::new(io::stdout().lock())),
            };
            for piece in store.read_range(id, start, end)? {
                let piece = piece?;
                out.write_all(&piece)
                    .map_err(|e| io_fail("write output", e))?;
                if let Some(b) = &bar {
                    b.inc(piece.len() as u64);
                }
            }
            out.flush().map_err(|e| io_fail("write output", e))?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
        }
        Command::Ls { json } => {
            let files = store.list()?;
            let mut out = io::stdout().lock();
            for (id, meta) in files {
                let line = if json {
                    record(id, &meta).to_string()
                } else {
                    format!("{id}  {:>14}  {}", meta.size, hex::encode(meta.hash))
                };
                writeln!(out, "{line}").map_err(|e| io_fail("write output", e))?;
            }
        }
        Command::Rm { id } => store.delete(parse_id(&id)?)?,
        Command::Stat { json } => {
            let s = store.stats()?;
            if json {
                println!(
                    "{}",
                    json!({
                        "files": s.files, "logical_bytes": s.logical_bytes, "stored_bytes": s.stored_bytes,
                        "chunks": s.chunks, "live_chunks": s.live_chunks, "live_chunk_bytes": s.live_chunk_bytes,
                        "packs": s.packs, "dead_bytes": s.dead_bytes, "dedup_ratio": s.dedup_ratio,
                        "open_sessions": s.open_sessions, "io_backend": s.io_backend,
                        "chunking": store.chunk_params().to_string(),
                    })
                );
            } else {
                println!("store          {}", store.path().display());
                println!("files          {}", s.files);
                println!("logical bytes  {}", s.logical_bytes);
                println!("stored bytes   {}", s.stored_bytes);
                println!("dedup ratio    {:.3}", s.dedup_ratio);
                println!("chunks         {} ({} live)", s.chunks, s.live_chunks);
                println!("packs          {}", s.packs);
                println!("dead bytes     {}", s.dead_bytes);
                println!("open sessions  {}", s.open_sessions);
                println!("chunking       {}", store.chunk_params());
                println!("io back end    {}", s.io_backend);
            }
        }
        Command::Admin { command } => match command {
            Admin::Verify { json } => {
                let rep = store.verify()?;
                if json {
                    println!(
                        "{}",
                        json!({
                            "ok": rep.is_ok(), "packs": rep.packs, "records": rep.records,
                            "bytes_read": rep.bytes_read, "chunks": rep.chunks, "files": rep.files,
                            "sessions": rep.sessions, "problems": rep.problems,
                            "damaged_files": rep.damaged_files.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
                        })
                    );
                } else {
                    println!(
                        "checked {} packs ({} records, {} bytes), {} chunks, {} files, {} sessions",
                        rep.packs, rep.records, rep.bytes_read, rep.chunks, rep.files, rep.sessions
                    );
                    for p in &rep.problems {
                        println!("problem: {p}");
                    }
                    for f in &rep.damaged_files {
                        println!("damaged file: {f}");
                    }
                    if rep.is_ok() {
                        println!("no problems found");
                    }
                }
                if !rep.is_ok() {
                    return Err(fail(
                        5,
                        format!("verify found {} problem(s)", rep.problems.len()),
                    ));
                }
            }
            Admin::Gc { json } => {
                let r = store.gc()?;
                if json {
                    println!(
                        "{}",
                        json!({
                            "sessions_expired": r.sessions_expired, "packs_examined": r.packs_examined,
                            "packs_compacted": r.packs_compacted, "packs_deferred": r.packs_deferred,
                            "chunks_moved": r.chunks_moved, "chunks_dropped": r.chunks_dropped,
                            "bytes_reclaimed": r.bytes_reclaimed,
                        })
                    );
                } else {
                    println!(
                        "gc: {} sessions expired, {} of {} packs compacted ({} deferred), {} chunks moved, {} dropped, {} bytes reclaimed",
                        r.sessions_expired,
                        r.packs_compacted,
                        r.packs_examined,
                        r.packs_deferred,
                        r.chunks_moved,
                        r.chunks_dropped,
                        r.bytes_reclaimed
                    );
                }
            }
            Admin::Reindex { .. } => {}
        },
        Command::Config { .. }
        | Command::Serve { .. }
        | Command::Auth { .. }
        | Command::Permission { .. }
        | Command::Picker { .. }
        | Command::Notification { .. }
        | Command::Downloader { .. }
        | Command::Transformer { .. }
        | Command::Login { .. }
        | Command::Push { .. }
        | Command::Pull { .. } => {}
    }
    Ok(())
}

fn put(store: &Store, file: &str) -> Result<FileInfo, Failure> {
    let (mut input, len): (Box<dyn Read>, Option<u64>) = if file == "-" {
        (Box::new(io::stdin().lock()), None)
    } else {
        let f = File::open(file).map_err(|e| io_fail(&format!("open {file}"), e))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(f), len)
    };
    let bar = progress(len, "put");
    let mut w = store.writer()?;
    while let Some(piece) = fms_engine::read_piece(&mut input, 1 << 20)? {
        let n = piece.len() as u64;
        w.write_bytes(piece)?;
        if let Some(b) = &bar {
            b.inc(n);
        }
    }
    let info = w.finish()?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(info)
}

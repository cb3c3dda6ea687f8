//! The `gapless` command line: parse arguments, load the config, call the
//! library. Exit codes: 0 ok, 1 runtime failure, 2 bad config or usage.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use gapless::app::{self, RunOptions};
use gapless::config::Config;
#[cfg(feature = "demo")]
use gapless::demo::{self, DemoOptions};
use gapless::metrics::Counters;
use gapless::ops;

/// gapless forwards every event of an MQTT source (VMware Cloud Director
/// first) once and in order: it subscribes at QoS 1, keeps each event once
/// in SQLite, numbers the stream, and delivers it to sinks that each keep
/// their own durable cursor.
#[derive(Parser, Debug)]
#[command(version, propagate_version = true)]
struct Cli {
    /// Log verbosity (error, warn, info, debug, trace) or a full filter such as
    /// "gapless=debug,rumqttc=warn". RUST_LOG wins when set.
    /// [default: "info,mqtt5=warn"; for `demo`: "warn", to keep its progress line clean]
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// What `gapless dlq` does.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum DlqCmd {
    /// Show the dead letters.
    List,
    /// Deliver them again (once each; failures stay dead letters).
    Retry,
    /// Forget them (all, or those older than --older-than).
    Purge,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: MQTT → store → sinks, until SIGTERM or Ctrl-C.
    ///
    /// Example: gapless run --config /etc/gapless/gapless.toml
    Run {
        /// The TOML configuration file (see config/gapless.example.toml).
        #[arg(long, short, env = "GAPLESS_CONFIG")]
        config: PathBuf,
        /// Stop once no message has arrived and no sink has delivered for
        /// this long (e.g. "2s"): drain a backlog into the sinks and exit.
        /// The last message counts from its release (`stream.settle` after
        /// it arrived), so it is delivered before the run stops.
        #[arg(long, value_parser = humantime::parse_duration)]
        exit_idle: Option<Duration>,
        /// Write a JSON summary of the run (counters, peak memory) to this file at exit.
        #[arg(long)]
        summary: Option<PathBuf>,
    },
    /// Print the released stream (CloudEvents JSON lines) from the store.
    ///
    /// Works while the daemon runs. Example: gapless tail -c gapless.toml --from-seq 100 --follow
    Tail {
        #[arg(long, short, env = "GAPLESS_CONFIG")]
        config: PathBuf,
        /// First seq to print.
        #[arg(long, default_value_t = 1)]
        from_seq: i64,
        /// Keep printing new events as they are released.
        #[arg(long)]
        follow: bool,
    },
    /// Make a sink deliver again from a seq (and re-enable it after a 410).
    ///
    /// The request goes through the store: a running daemon applies it within
    /// a second, a stopped one at its next start. Webhook receivers see the
    /// same webhook-id again and can deduplicate.
    Replay {
        #[arg(long, short, env = "GAPLESS_CONFIG")]
        config: PathBuf,
        /// The sink to rewind (its `name` in the config).
        #[arg(long)]
        sink: String,
        /// First seq to deliver again: 1 for the whole stream still in the
        /// store, at most the head (`gapless status` shows it).
        #[arg(long)]
        from_seq: i64,
    },
    /// Show the store's state: head seq, per-sink cursor and lag, the
    /// verified watermark and its age, counts, dead letters, last rejected
    /// messages. Works while the daemon runs.
    ///
    /// With --watch: a live view, refreshed every second until Ctrl-C:
    /// ingest rate by origin, the verified watermark and its lag, each
    /// sink's cursor, lag and state, the last gaps and the daemon's
    /// readiness. With --json too, one JSON object per line per second.
    ///
    /// Example: gapless status -c gapless.toml --watch
    Status {
        #[arg(long, short, env = "GAPLESS_CONFIG")]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Refresh every second until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// With --watch: stop after this many frames.
        #[arg(long, requires = "watch")]
        frames: Option<u64>,
    },
    /// Dead letters of a webhook sink (on_failure = "dead-letter").
    Dlq {
        #[arg(value_enum)]
        action: DlqCmd,
        #[arg(long, short, env = "GAPLESS_CONFIG")]
        config: PathBuf,
        /// The webhook sink (its `name` in the config).
        #[arg(long)]
        sink: String,
        /// purge: only dead letters recorded longer ago than this (e.g. "30d").
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
    },
    /// Ask a running daemon whether it is alive: exit 0 when its `/healthz`
    /// answers 200, 1 otherwise (not reachable, or a task failed). For
    /// container health checks, which then need no curl.
    ///
    /// Example: gapless health --admin http://127.0.0.1:9464
    Health {
        /// The daemon's admin endpoint (`admin.listen`).
        #[arg(long, default_value = "http://127.0.0.1:9464")]
        admin: String,
    },
    /// Check a configuration file and exit: 0 if valid, 2 with the offending
    /// key if not. Also prints what the configuration exposes (credentials
    /// over plain text, an admin endpoint reachable from other hosts).
    CheckConfig {
        #[arg(long, short, env = "GAPLESS_CONFIG")]
        config: PathBuf,
    },
    /// Run the whole pipeline on embedded parts — a VCD simulator (REST +
    /// MQTT) that drops and duplicates MQTT messages, an in-process broker —
    /// and watch the poller fill the gaps; then check the output against the
    /// simulator's ground truth (exit 0 only if it passes). Needs no config
    /// and no external service.
    #[cfg(feature = "demo")]
    Demo {
        /// Events the simulator creates.
        #[arg(long, default_value_t = 3000)]
        events: u64,
        /// Events per second (0 = all at once).
        #[arg(long, default_value_t = 150.0)]
        rate: f64,
        /// Share of MQTT messages dropped (the poller recovers them).
        #[arg(long, default_value_t = 0.2)]
        drop_rate: f64,
        /// Share of MQTT messages sent twice (deduplicated).
        #[arg(long, default_value_t = 0.05)]
        dup_rate: f64,
        /// Keep the store and the events file in this directory instead of a
        /// temporary one.
        #[arg(long)]
        keep: Option<PathBuf>,
        /// Do not print the events, only progress and the summary.
        #[arg(long)]
        quiet: bool,
        /// Where the picture of the run goes (SVG). Default: demo.svg in the
        /// --keep directory, else gapless-demo.svg in the system's temporary
        /// directory.
        #[arg(long)]
        picture: Option<PathBuf>,
    },
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: journald, Docker and log
        // files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Cancels `token` on SIGTERM or SIGINT.
fn on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
        token.cancel();
    });
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

async fn run(
    config: PathBuf,
    exit_idle: Option<Duration>,
    summary: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let config = match load(&config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let shutdown = CancellationToken::new();
    on_signals(shutdown.clone());
    let counters = Arc::new(Counters::default());
    let report = app::run(config, RunOptions { exit_idle }, counters, shutdown).await?;
    let c = &report.counters;
    tracing::info!(
        received = c.received,
        stored = c.stored,
        duplicates = c.duplicates,
        rejected = c.rejected,
        skipped = c.skipped,
        delivered = c.delivered,
        head = report.head,
        peak_rss_kib = report.peak_rss_kib,
        "stopped"
    );
    if let Some(path) = summary {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing summary {}", path.display()))?;
    }
    Ok(match report.failure {
        None => ExitCode::SUCCESS,
        Some(_) => ExitCode::FAILURE,
    })
}

/// Runs an operator command: exit 2 for a bad config or sink name, 1 for a failure.
async fn operate<F, Fut>(config: &std::path::Path, f: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(Config) -> Fut,
    Fut: Future<Output = Result<(), ops::OpsError>>,
{
    let config = match Config::load_offline(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    match f(config).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e @ (ops::OpsError::UnknownSink(..) | ops::OpsError::BadSeq)) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(feature = "demo")]
async fn run_demo(opts: DemoOptions) -> anyhow::Result<ExitCode> {
    let outcome = demo::run(opts).await?;
    println!("{}", outcome.summary());
    Ok(if outcome.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        #[cfg(feature = "demo")]
        Command::Demo { .. } => "warn",
        _ => "info,mqtt5=warn",
    };
    init_logging(
        cli.log_level.as_deref().unwrap_or(default_level),
        cli.log_format,
    );
    gapless::net::tls::install_crypto_provider();
    gapless::clock::warn_if_compressed();
    if let Command::CheckConfig { config } = &cli.command {
        let c = match load(config) {
            Ok(c) => c,
            Err(code) => return code,
        };
        let created = match c.check_paths() {
            Ok(created) => created,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        println!(
            "{}: ok ({} sink(s), source `{}`)",
            config.display(),
            c.sinks.len(),
            c.source.name
        );
        for warning in gapless::net::exposure_warnings(&c) {
            println!("  warning: {warning}");
        }
        for dir in created {
            println!(
                "  {} does not exist yet: gapless run creates it",
                dir.display()
            );
        }
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run {
                config,
                exit_idle,
                summary,
            } => run(config, exit_idle, summary).await,
            #[cfg(feature = "demo")]
            Command::Demo {
                events,
                rate,
                drop_rate,
                dup_rate,
                keep,
                quiet,
                picture,
            } => {
                run_demo(DemoOptions {
                    events,
                    rate: (rate > 0.0).then_some(rate),
                    drop_rate,
                    dup_rate,
                    picture: picture.unwrap_or_else(|| match &keep {
                        Some(dir) => dir.join("demo.svg"),
                        None => std::env::temp_dir().join("gapless-demo.svg"),
                    }),
                    dir: keep,
                    show_events: !quiet,
                })
                .await
            }
            Command::Tail {
                config,
                from_seq,
                follow,
            } => {
                operate(&config, |c| async move {
                    ops::tail(&c, from_seq, follow, &mut std::io::stdout().lock()).await
                })
                .await
            }
            Command::Replay {
                config,
                sink,
                from_seq,
            } => {
                let name = sink.clone();
                let code = operate(&config, |c| async move {
                    ops::replay(&c, &sink, from_seq).await
                })
                .await;
                if matches!(code, Ok(ExitCode::SUCCESS)) {
                    println!("replay from seq {from_seq} requested for sink `{name}`");
                }
                code
            }
            Command::Dlq {
                action,
                config,
                sink,
                older_than,
            } => {
                let action = match action {
                    DlqCmd::List => ops::DlqAction::List,
                    DlqCmd::Retry => ops::DlqAction::Retry,
                    DlqCmd::Purge => ops::DlqAction::Purge { older_than },
                };
                operate(&config, |c| async move {
                    ops::dlq(&c, &sink, action, &mut std::io::stdout()).await
                })
                .await
            }
            Command::Status {
                config,
                json,
                watch: true,
                frames,
            } => {
                operate(&config, |c| async move {
                    let stop = tokio_util::sync::CancellationToken::new();
                    let on_signal = stop.clone();
                    tokio::spawn(async move {
                        let _ = tokio::signal::ctrl_c().await;
                        on_signal.cancel();
                    });
                    gapless::watch::watch(&c, json, frames, stop).await
                })
                .await
            }
            Command::Status { config, json, .. } => {
                operate(&config, |c| async move {
                    let status = ops::status(&c).await?;
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&status).expect("status serialises")
                        );
                    } else {
                        print!("{}", status.render());
                    }
                    Ok(())
                })
                .await
            }
            Command::Health { admin } => match ops::health(&admin).await {
                Ok(body) => {
                    print!("{body}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(why) => {
                    eprintln!("unhealthy: {why}");
                    Ok(ExitCode::FAILURE)
                }
            },
            Command::CheckConfig { .. } => unreachable!("handled above"),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! Command line: `podtrail capture` (raw events as JSON lines), `podtrail run` (the agent),
//! `podtrail receiver`, `podtrail config`, `podtrail show` (OTLP/JSON files as session trees).

use clap::{Args, Parser, Subcommand};

mod capture;
mod receiver;
mod run;
mod show;

#[derive(Parser, Debug)]
#[command(name = "podtrail", version, about = "Kubernetes container activity as OpenTelemetry traces: one trace per kubectl exec", long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
pub struct LogArgs {
    /// podtrail's own log filter (tracing EnvFilter syntax), e.g. `info`, `podtrail=debug`.
    #[arg(long, global = true, env = "PODTRAIL_LOG", default_value = "info")]
    pub log_level: String,
    /// Write podtrail's own logs as JSON lines.
    #[arg(long, global = true)]
    pub log_json: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print every kernel event as one JSON object per line (needs root, or CAP_BPF,
    /// CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_PTRACE).
    #[command(long_about = capture::LONG_ABOUT)]
    Capture(capture::CaptureArgs),
    /// Run the agent: trace container exec sessions and export each as one trace (printed as
    /// a tree when no OTLP endpoint or file is configured). Needs the same privileges.
    Run(run::RunArgs),
    /// Print the configuration `podtrail run` would use (the defaults, or a file with the
    /// flags applied) as TOML, after checking it.
    Config(run::RunArgs),
    /// Render OTLP/JSON files (`export.file`) as session trees, filtered; `--follow` a growing
    /// file. Needs no privileges.
    Show(show::ShowArgs),
    /// Take the audit and admission webhooks (in a cluster, a Deployment) and stream the
    /// records to the agents over mutual TLS. Needs no privileges.
    Receiver(receiver::ReceiverArgs),
}

pub fn init_logging(l: &LogArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&l.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: `kubectl logs` of the DaemonSet showed raw escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if l.log_json {
        b.json().init();
    } else {
        b.init();
    }
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Capture(a) => capture::run(a).await,
        Command::Run(a) => run::run(a).await,
        Command::Receiver(a) => receiver::run(a).await,
        Command::Show(a) => show::run(a).await,
        Command::Config(a) => {
            let cfg = run::config(&a)?;
            cfg.clone().validate().map_err(|e| UsageError(e.to_string()))?;
            print!("{}", toml::to_string_pretty(&cfg)?);
            Ok(())
        }
    }
}

/// Exit status for an error: 3 when the machine lacks a privilege or kernel feature, 2 for
/// bad input, 1 otherwise.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    use podtrail::capture::loader::CaptureError;
    match e.downcast_ref::<CaptureError>() {
        Some(
            CaptureError::Privilege { .. }
            | CaptureError::NoBtf
            | CaptureError::NoTracefs(_)
            | CaptureError::Program { .. }
            | CaptureError::NoCgroup2,
        ) => 3,
        _ if e.downcast_ref::<UsageError>().is_some()
            || e.downcast_ref::<podtrail::config::ConfigError>().is_some() =>
        {
            2
        }
        _ => 1,
    }
}

/// An invalid flag or configuration value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Resolves at SIGINT, SIGTERM, or after `duration` seconds when given: when `podtrail run`
/// and `podtrail receiver` stop.
pub(crate) async fn stop_requested(duration: Option<f64>) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => return,
    };
    let timer = async {
        match duration {
            Some(s) => tokio::time::sleep(std::time::Duration::from_secs_f64(s)).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = timer => {}
    }
}

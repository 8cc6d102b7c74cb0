//! The `podtrail` binary: parse the command line, run the chosen command, map errors to exit
//! codes (0 success, 1 runtime failure, 2 bad usage or configuration, 3 missing privilege or
//! kernel feature).

use clap::Parser;

mod cli;

/// mimalloc rather than glibc's malloc: src/heap.rs says why.
#[global_allocator]
static GLOBAL: podtrail::heap::Allocator = podtrail::heap::ALLOCATOR;

fn main() -> std::process::ExitCode {
    podtrail::heap::tune();
    let args = cli::Cli::parse();
    cli::init_logging(&args.log);
    // `capture` is one reader feeding one printer: on one thread the hand-over between them is
    // a task switch, not a futex wake of another thread per batch (issue 15); the agent's
    // stages want the two workers
    let mut builder = match args.command {
        cli::Command::Capture(_) => tokio::runtime::Builder::new_current_thread(),
        _ => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(2);
            b
        }
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("podtrail: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(cli::dispatch(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podtrail: {e:#}");
            std::process::ExitCode::from(cli::exit_code(&e))
        }
    }
}

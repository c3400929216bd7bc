//! `anomalyncd`: parses arguments and hands them to the library; maps errors to exit codes
//! (2: fix an input, flag or config; 1: run-time failure) and never shows a panic backtrace.

mod cli;

use clap::Parser;

fn main() {
    // Before any thread or tensor: large freed blocks stay in the heap (see the module doc).
    anomalyncd::malloc::tune();
    std::panic::set_hook(Box::new(|info| {
        eprintln!("anomalyncd: internal error: {info}\nThis is a bug in anomalyncd; please report it with the command you ran.");
    }));
    let cli = cli::Cli::parse();
    let code = match std::panic::catch_unwind(|| cli::run(cli)) {
        Ok(Ok(())) => 0,
        Ok(Err(err)) => {
            log::error!("{err:#}");
            anomalyncd::logging::flush();
            anomalyncd::error::exit_code_of(&err)
        }
        Err(_) => 1,
    };
    std::process::exit(code);
}

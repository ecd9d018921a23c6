//! The `enrollgate` binary: parse arguments, run, map failure to one line and an exit code.

use clap::Parser as _;

fn main() {
    let cli = enrollgate::cli::Cli::parse();
    if let Err(e) = enrollgate::cli::run(cli) {
        eprintln!("enrollgate: error: {e}");
        std::process::exit(1);
    }
}

//! The `enrollgate` binary: parse arguments, run, map failure to one line and its exit code
//! (`cli::Failure`: 1 local, 2 usage, 3 refused by the gateway, 4 gateway unreachable).

use clap::Parser as _;

fn main() {
    let cli = enrollgate::cli::Cli::parse();
    if let Err(e) = enrollgate::cli::run(cli) {
        eprintln!("enrollgate: error: {e}");
        std::process::exit(e.exit_code());
    }
}

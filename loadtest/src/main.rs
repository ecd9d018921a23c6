//! `enrollgate-loadtest`: the fleet simulator and load generator (see loadtest/README.md).

fn main() {
    std::process::exit(enrollgate_loadtest::cli::main_with(std::env::args_os()));
}

//! `enrollgate-loadtest`: the fleet simulator and load generator.
//!
//! Its capabilities (fleet generation, token preparation, open- and closed-loop runs,
//! reports) are specified in the loadtest issue and not built yet; until then the binary
//! says so and fails, rather than pretending to measure anything.

fn main() {
    eprintln!("enrollgate-loadtest: not built yet (see the loadtest issue); nothing was measured");
    std::process::exit(2);
}

//! The command line. `main` parses and calls [`main_with`]; tests call it in-process.
//!
//! Exit codes: 0 success; 1 the tool failed (bad input, unreachable gateway, nothing
//! measured); 2 bad usage; 3 the run's error rate exceeded `--max-error-rate`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::admin::{self, Admin, PrepareOtt, RegisterCa, TokenMethod};
use crate::engine::{self, Load};
use crate::fleet::{self, FleetSpec, KeyType};
use crate::plan::{self, Mode, PlanOptions, Target};
use crate::report::{Report, RunInfo};
use crate::schedule::Stop;
use crate::tls::{TlsOptions, TlsVersions};
use crate::Error;

pub use crate::{EXIT_ERROR_RATE, EXIT_FAILED, EXIT_USAGE};

/// enrollgate-loadtest: a device fleet simulator and enrollment load generator.
#[derive(Debug, Parser)]
#[command(name = "enrollgate-loadtest", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make a device CA (root + intermediate) and N device keys and certificates.
    Fleet(FleetArgs),
    /// Create the fleet's CA in the gateway and verify it (proof of possession).
    RegisterCa(RegisterCaArgs),
    /// Create N identities with one-time tokens and store the tokens for a run.
    PrepareOtt(PrepareOttArgs),
    /// Drive enrollments (or handshakes) against a server and report.
    Run(Box<RunArgs>),
    /// Enroll devices by ott, then renew each (authenticate, extend, extend-verify, each on
    /// a fresh connection); report both rates and the outcomes by code.
    Renew(crate::renew::RenewArgs),
    /// Measure the transport floor: a plain TCP server on the gateway's runtime, fed the
    /// bytes of one enrollment per fresh connection; prints its CPU per connection.
    Transport(TransportArgs),
}

/// `transport`
#[derive(Debug, Clone, Args)]
pub struct TransportArgs {
    /// Connections measured.
    #[arg(long, default_value_t = 20_000)]
    pub count: usize,
    /// Connections before measuring.
    #[arg(long, default_value_t = 2_000)]
    pub warmup: usize,
    /// Connections in flight.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Byte counts of the exchange: hello,flight,request,response (default: a mutual-TLS
    /// handshake and GET, as captured on loopback).
    #[arg(long, value_parser = crate::transport::Exchange::parse)]
    pub exchange: Option<crate::transport::Exchange>,
    /// Pin the server thread to this CPU.
    #[arg(long)]
    pub server_cpu: Option<usize>,
    /// Pin the client thread to this CPU.
    #[arg(long)]
    pub client_cpu: Option<usize>,
    /// Print the server's CPU per connection in microseconds, alone (for scripts).
    #[arg(long)]
    pub quiet: bool,
}

/// `fleet`
#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    /// Directory to create (new or empty; 0700).
    #[arg(long)]
    pub ca_out: PathBuf,
    /// Number of devices.
    #[arg(long)]
    pub devices: usize,
    /// Device key type.
    #[arg(long, value_enum, default_value = "ec")]
    pub key_type: KeyType,
    /// Generator threads (default: one per available core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Validity of the device certificates, in days.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Name in the CA certificates' subjects.
    #[arg(long, default_value = "loadtest")]
    pub name: String,
}

/// `register-ca`
#[derive(Debug, Clone, Args)]
pub struct RegisterCaArgs {
    /// The fleet directory.
    #[arg(long)]
    pub fleet: PathBuf,
    /// Admin identity file (`enrollgate init` writes DATA/admin.json).
    #[arg(long, env = "ENROLLGATE_IDENTITY")]
    pub identity: PathBuf,
    /// The CA's name in the gateway (`[caName]` in identity names).
    #[arg(long)]
    pub name: String,
    /// Enable CA auto-enrollment (method `ca`).
    #[arg(long)]
    pub auto: bool,
    /// Enable ottca enrollment.
    #[arg(long)]
    pub ottca: bool,
    /// Enable certificate authentication for identities from this CA.
    #[arg(long)]
    pub auth: bool,
    /// Identity name template (default `[caName]-[commonName]`).
    #[arg(long)]
    pub template: Option<String>,
    /// Role attributes given to auto-enrolled identities (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub role_attributes: Vec<String>,
}

/// `prepare-ott`
#[derive(Debug, Clone, Args)]
pub struct PrepareOttArgs {
    /// Admin identity file.
    #[arg(long, env = "ENROLLGATE_IDENTITY")]
    pub identity: PathBuf,
    /// Identities (and tokens) to create.
    #[arg(long)]
    pub count: usize,
    /// Directory for the tokens (new or empty; 0700).
    #[arg(long)]
    pub out: PathBuf,
    /// Enrollment method of the tokens.
    #[arg(long, value_enum, default_value = "ott")]
    pub method: TokenMethod,
    /// The CA (name or id) for `--method ottca`.
    #[arg(long)]
    pub ca: Option<String>,
    /// Management requests in flight.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Identity names are PREFIX000001, ... (default: lt-RANDOM-).
    #[arg(long)]
    pub prefix: Option<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("'{s}' is not a duration like 20s or 2m: {e}"))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "'{s}' is not a positive number of requests a second"
        )),
    }
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("'{s}' is not a fraction from 0 to 1 (0.01 = 1%)")),
    }
}

/// `run`
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The server: https://HOST:PORT.
    #[arg(long, value_parser = Target::parse)]
    pub target: Target,
    /// What each request does.
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// The fleet directory (ottca, ca; handshake: the client certificates).
    #[arg(long)]
    pub fleet: Option<PathBuf>,
    /// The token directory from prepare-ott (ott, ottca).
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// Connections in flight (closed loop), or their cap with --rate.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub concurrency: u32,
    /// Open loop: start this many requests a second, whatever the server does.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Measure for this long (default 10s).
    #[arg(long, value_parser = parse_duration, conflicts_with = "count")]
    pub duration: Option<Duration>,
    /// Measure this many requests.
    #[arg(long)]
    pub count: Option<u64>,
    /// Run this long first without measuring.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub warmup: Duration,
    /// Allow TLS session resumption (off: every device is a new client).
    #[arg(long)]
    pub resume: bool,
    /// Pin to these CPUs (e.g. 0 or 0,2-3); one worker thread each by default.
    #[arg(long, value_parser = crate::cpu::parse_cpu_list)]
    pub cpus: Option<crate::cpu::CpuList>,
    /// Worker threads (default: one per --cpus entry, else per available core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Exit 3 if failures exceed this fraction of completed requests.
    #[arg(long, value_parser = parse_fraction, default_value = "0")]
    pub max_error_rate: f64,
    /// Write every figure as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write throughput and latency over time as SVG here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// PEM roots to verify the server with (default: the token directory's server-ca.pem).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Do not verify the server certificate (the handshake signature still is).
    #[arg(long)]
    pub insecure: bool,
    /// The GET path in handshake mode.
    #[arg(long, default_value = "/version")]
    pub path: String,
    /// TLS server name (default: the target's host).
    #[arg(long)]
    pub server_name: Option<String>,
    /// Key-exchange groups to offer, in order (x25519mlkem768,x25519,secp256r1,secp384r1).
    #[arg(long, value_parser = crate::tls::parse_kx)]
    pub kx: Option<crate::tls::KxList>,
    /// TLS versions to offer.
    #[arg(long, value_enum, default_value = "any")]
    pub tls: TlsVersions,
    /// A request not complete after this long fails as a timeout.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub timeout: Duration,
    /// Key type of the keys made for ott CSRs.
    #[arg(long, value_enum, default_value = "ec")]
    pub csr_key_type: KeyType,
    /// Skip this many tokens (they were used by an earlier run).
    #[arg(long, default_value_t = 0)]
    pub token_offset: usize,
    /// Skip this many devices (they were enrolled by an earlier run).
    #[arg(long, default_value_t = 0)]
    pub device_offset: usize,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn fleet(a: FleetArgs) -> Result<i32, Error> {
    if a.devices == 0 {
        return Err(Error::Invalid("--devices must be at least 1".into()));
    }
    let made = fleet::create(
        &a.ca_out,
        &FleetSpec {
            devices: a.devices,
            key_type: a.key_type,
            threads: a.threads.unwrap_or_else(cores).max(1),
            validity_days: a.days,
            name: a.name,
            progress: true,
        },
    )?;
    let secs = made.elapsed.as_secs_f64();
    eprintln!(
        "made {} devices in {secs:.2} s ({:.0}/s), {:.1} MiB; register {} as the CA",
        made.devices,
        made.devices as f64 / secs.max(1e-9),
        made.bytes as f64 / 1_048_576.0,
        a.ca_out.join(fleet::ROOT_CERT).display()
    );
    Ok(0)
}

fn register_ca(a: RegisterCaArgs) -> Result<i32, Error> {
    let admin = Admin::open(&a.identity)?;
    let fl = fleet::Fleet::open(&a.fleet)?;
    let id = admin::register_ca(
        &admin,
        &fl,
        &RegisterCa {
            name: a.name.clone(),
            auto: a.auto,
            ottca: a.ottca,
            auth: a.auth,
            template: a.template,
            roles: a.role_attributes,
        },
    )?;
    eprintln!("CA {id} is registered and verified");
    println!("{id}");
    Ok(0)
}

fn prepare_ott(a: PrepareOttArgs) -> Result<i32, Error> {
    if a.count == 0 {
        return Err(Error::Invalid("--count must be at least 1".into()));
    }
    let admin = Admin::open(&a.identity)?;
    let done = admin::prepare_ott(
        &admin,
        &PrepareOtt {
            count: a.count,
            out: a.out.clone(),
            method: a.method,
            ca: a.ca,
            concurrency: a.concurrency,
            prefix: a.prefix.unwrap_or_else(admin::default_prefix),
            progress: true,
        },
    )?;
    eprintln!(
        "created {} identities with tokens in {:.2} s, {} failed; tokens in {}",
        done.created,
        done.elapsed.as_secs_f64(),
        done.failed,
        a.out.display()
    );
    if let Some(e) = done.first_error {
        eprintln!("first failure: {e}");
    }
    Ok(if done.failed > 0 { EXIT_FAILED } else { 0 })
}

fn transport(a: &TransportArgs) -> Result<i32, Error> {
    let m = crate::transport::run(&crate::transport::Spec {
        exchange: a.exchange.unwrap_or(crate::transport::Exchange::HANDSHAKE),
        count: a.count,
        warmup: a.warmup,
        concurrency: a.concurrency,
        server_cpu: a.server_cpu,
        client_cpu: a.client_cpu,
    })?;
    let per = m.per_connection().as_secs_f64() * 1e6;
    if a.quiet {
        println!("{per:.1}");
    } else {
        println!(
            "{} connections in {:.2} s ({:.0}/s); server CPU {:.2} s: {per:.1} µs per connection",
            m.connections,
            m.elapsed.as_secs_f64(),
            m.connections as f64 / m.elapsed.as_secs_f64().max(1e-9),
            m.server_cpu.as_secs_f64()
        );
    }
    Ok(0)
}

/// Prepares and runs `run`, returning its report (the CLI prints and writes it).
pub fn run_report(a: &RunArgs) -> Result<Report, Error> {
    let cpus = a.cpus.as_ref().map(|c| c.0.clone());
    if let Some(c) = &cpus {
        crate::cpu::pin_current_thread(c)?;
    }
    let threads = a
        .threads
        .or_else(|| cpus.as_ref().map(Vec::len))
        .unwrap_or_else(cores)
        .max(1);
    let stop = match (a.count, a.duration) {
        (Some(0), _) => return Err(Error::Invalid("--count must be at least 1".into())),
        (Some(n), _) => Stop::Count(n),
        (None, Some(d)) => Stop::Duration(d),
        (None, None) => Stop::Duration(Duration::from_secs(10)),
    };
    let kx = a.kx.clone().map(|k| k.0).unwrap_or_default();
    let plan = plan::prepare(&PlanOptions {
        target: a.target.clone(),
        server_name: a.server_name.clone(),
        mode: a.mode,
        fleet: a.fleet.clone(),
        tokens: a.tokens.clone(),
        ca_file: a.ca_file.clone(),
        insecure: a.insecure,
        path: a.path.clone(),
        tls: TlsOptions {
            roots: None,
            kx: kx.clone(),
            versions: a.tls,
            resume: a.resume,
        },
        csr_key_type: a.csr_key_type,
        token_offset: a.token_offset,
        device_offset: a.device_offset,
        needed: PlanOptions::needed_for(stop, a.warmup),
        threads,
    })?;
    if !a.quiet {
        eprintln!(
            "prepared in {:.2} s; running {} against {}:{}",
            plan.prepare_time.as_secs_f64(),
            a.mode.as_str(),
            a.target.host,
            a.target.port
        );
    }
    let concurrency = usize::try_from(a.concurrency).unwrap_or(1);
    let measured = engine::run(
        &plan,
        &Load {
            concurrency,
            rate: a.rate,
            stop,
            warmup: a.warmup,
            threads,
            cpus: cpus.clone(),
            timeout: a.timeout,
            progress: !a.quiet,
        },
    )?;
    Ok(Report {
        info: RunInfo {
            target: format!("https://{}:{}", a.target.host, a.target.port),
            mode: a.mode.as_str().into(),
            concurrency,
            rate: a.rate,
            stop,
            warmup: a.warmup,
            resume: a.resume,
            kx,
            cores: cpus.as_ref().map_or_else(cores, Vec::len),
            cpus,
            prepare_time: plan.prepare_time,
            max_error_rate: a.max_error_rate,
        },
        measured,
    })
}

fn write_out(path: &std::path::Path, data: &[u8]) -> Result<(), Error> {
    std::fs::write(path, data).map_err(|e| Error::io(path, e))
}

fn run(a: &RunArgs) -> Result<i32, Error> {
    let report = run_report(a)?;
    print!("{}", report.table());
    if let Some(p) = &a.json {
        let mut j =
            serde_json::to_vec_pretty(&report.json()).map_err(|e| Error::Invalid(e.to_string()))?;
        j.push(b'\n');
        write_out(p, &j)?;
    }
    if let Some(p) = &a.plot {
        let title = format!(
            "enrollgate-loadtest {} against {}: {:.0}/s, p99 {:.1} ms",
            report.info.mode,
            report.info.target,
            report.throughput(),
            crate::stats::Percentiles::of(&report.recorder().latency).p99
        );
        let svg = crate::plot::svg(
            &title,
            &report.measured.timeline,
            report.info.warmup.as_secs_f64(),
        );
        write_out(p, svg.as_bytes())?;
    }
    let r = report.recorder();
    if r.total() == 0 {
        eprintln!(
            "enrollgate-loadtest: nothing was measured (no request completed after the warmup)"
        );
        return Ok(EXIT_FAILED);
    }
    if !report.passed() {
        eprintln!(
            "enrollgate-loadtest: error rate {:.3}% ({} of {}) exceeds --max-error-rate {}",
            report.error_rate() * 100.0,
            r.errors,
            r.total(),
            a.max_error_rate
        );
        return Ok(EXIT_ERROR_RATE);
    }
    Ok(0)
}

/// Runs a parsed command line; the exit code.
pub fn execute(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Fleet(a) => fleet(a),
        Command::RegisterCa(a) => register_ca(a),
        Command::PrepareOtt(a) => prepare_ott(a),
        Command::Run(a) => run(&a),
        Command::Renew(a) => crate::renew::run(&a),
        Command::Transport(a) => transport(&a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("enrollgate-loadtest: {e}");
            EXIT_FAILED
        }
    }
}

/// Parses `args` (program name first) and runs them; the exit code.
pub fn main_with<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(cli) => execute(cli),
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            code
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("enrollgate-loadtest").chain(args.iter().copied()))
    }

    #[test]
    fn run_options_parse_with_their_defaults() {
        let cli = parse(&[
            "run",
            "--target",
            "https://127.0.0.1:8443",
            "--mode",
            "ca",
            "--fleet",
            "f",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        assert_eq!(a.mode, Mode::Ca);
        assert_eq!(a.concurrency, 32);
        assert_eq!(a.max_error_rate, 0.0);
        assert_eq!(a.warmup, Duration::ZERO);
        assert_eq!(a.path, "/version");
        assert!(!a.resume);
        assert_eq!(a.target.port, 8443);

        let cli = parse(&[
            "run",
            "--target",
            "https://gw:9000",
            "--mode",
            "handshake",
            "--rate",
            "250.5",
            "--duration",
            "1m",
            "--warmup",
            "2s",
            "--cpus",
            "0,1",
            "--kx",
            "x25519",
            "--max-error-rate",
            "0.01",
            "--tls",
            "1.2",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        assert_eq!(a.rate, Some(250.5));
        assert_eq!(a.duration, Some(Duration::from_secs(60)));
        assert_eq!(a.cpus.unwrap().0, vec![0, 1]);
        assert_eq!(a.kx.unwrap().0, vec!["x25519".to_string()]);
        assert_eq!(a.tls, TlsVersions::Tls12);
        assert_eq!(a.max_error_rate, 0.01);
    }

    #[test]
    fn bad_run_options_are_usage_errors() {
        let base = ["run", "--target", "https://h:1", "--mode", "ca"];
        for extra in [
            &["--duration", "10s", "--count", "5"][..],
            &["--rate", "0"],
            &["--rate", "-3"],
            &["--max-error-rate", "1.5"],
            &["--concurrency", "0"],
            &["--cpus", "x"],
            &["--kx", "x448"],
            &["--duration", "soon"],
        ] {
            let args: Vec<&str> = base.iter().chain(extra.iter()).copied().collect();
            assert!(parse(&args).is_err(), "{extra:?}");
        }
        assert!(parse(&["run", "--target", "http://h:1", "--mode", "ca"]).is_err());
        assert!(parse(&["run", "--target", "https://h:1", "--mode", "bogus"]).is_err());
        assert_eq!(
            main_with(["enrollgate-loadtest", "run", "--mode", "nope"]),
            EXIT_USAGE
        );
    }

    #[test]
    fn other_subcommands_parse() {
        let cli = parse(&[
            "fleet",
            "--ca-out",
            "d",
            "--devices",
            "10",
            "--key-type",
            "ed25519",
        ])
        .unwrap();
        let Command::Fleet(f) = cli.command else {
            panic!("not fleet")
        };
        assert_eq!((f.devices, f.key_type, f.days), (10, KeyType::Ed25519, 365));
        let cli = parse(&[
            "register-ca",
            "--fleet",
            "d",
            "--identity",
            "a.json",
            "--name",
            "acme",
            "--auto",
            "--ottca",
            "--role-attributes",
            "a,b",
        ])
        .unwrap();
        let Command::RegisterCa(r) = cli.command else {
            panic!("not register-ca")
        };
        assert!(r.auto && r.ottca && !r.auth);
        assert_eq!(r.role_attributes, vec!["a", "b"]);
        let cli = parse(&[
            "prepare-ott",
            "--identity",
            "a.json",
            "--count",
            "5",
            "--out",
            "t",
            "--method",
            "ottca",
            "--ca",
            "acme",
        ])
        .unwrap();
        let Command::PrepareOtt(p) = cli.command else {
            panic!("not prepare-ott")
        };
        assert_eq!(
            (p.count, p.method, p.concurrency),
            (5, TokenMethod::Ottca, 8)
        );
        let cli = parse(&[
            "transport",
            "--exchange",
            "10,20,30,40",
            "--server-cpu",
            "0",
        ])
        .unwrap();
        let Command::Transport(t) = cli.command else {
            panic!("not transport")
        };
        assert_eq!((t.count, t.warmup, t.concurrency), (20_000, 2_000, 64));
        assert_eq!((t.server_cpu, t.client_cpu), (Some(0), None));
        assert_eq!(
            t.exchange,
            Some(crate::transport::Exchange {
                hello: 10,
                flight: 20,
                request: 30,
                response: 40
            })
        );
        let err = parse(&["transport", "--exchange", "10,20"]).unwrap_err();
        assert!(err.to_string().contains("four byte counts"), "{err}");
    }
}

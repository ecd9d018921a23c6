//! The load generator (`enrollgate-loadtest`, called in-process) against the real daemon:
//! a short load of every mode, with the counts checked against the store through the
//! management API: every success is an identity, and nothing more.

use std::path::Path;

use clap::Parser as _;
use enrollgate_loadtest::admin::{self, Admin, PrepareOtt, RegisterCa, TokenMethod};
use enrollgate_loadtest::cli::{self, Cli, Command};
use enrollgate_loadtest::fleet::{self, FleetSpec, KeyType};
use enrollgate_loadtest::report::Report;
use serde_json::Value;

use crate::support::*;

/// Runs `enrollgate-loadtest run` in-process with these arguments; its report.
fn run(gw: &Gateway, args: &[&str]) -> Report {
    let url = gw.url();
    let mut all = vec!["enrollgate-loadtest", "run", "--target", &url, "--quiet"];
    all.extend_from_slice(args);
    let Command::Run(a) = Cli::try_parse_from(all).unwrap().command else {
        panic!("not a run");
    };
    cli::run_report(&a).unwrap()
}

fn identities(gw: &Gateway) -> Vec<Value> {
    let v = gw
        .mgmt("GET", "/identities?limit=1000", None)
        .json()
        .unwrap();
    assert!(v["meta"]["pagination"]["totalCount"].as_u64().unwrap() < 1000);
    v["data"].as_array().unwrap().clone()
}

fn named<'a>(ids: &'a [Value], prefix: &str) -> Vec<&'a Value> {
    ids.iter()
        .filter(|i| i["name"].as_str().unwrap().starts_with(prefix))
        .collect()
}

fn prepare(gw: &Gateway, out: &Path, count: usize, method: TokenMethod, prefix: &str) {
    let admin = Admin::open(&gw.admin_file()).unwrap();
    let made = admin::prepare_ott(
        &admin,
        &PrepareOtt {
            count,
            out: out.to_path_buf(),
            method,
            ca: (method == TokenMethod::Ottca).then(|| "lt".to_string()),
            concurrency: 8,
            prefix: prefix.into(),
            progress: false,
        },
    )
    .unwrap();
    assert_eq!(
        (made.created, made.failed),
        (count, 0),
        "{:?}",
        made.first_error
    );
}

#[test]
fn an_ott_load_enrolls_exactly_its_successes() {
    let gw = Gateway::start();
    let tokens = gw.dir.path().join("tokens");
    prepare(&gw, &tokens, 150, TokenMethod::Ott, "ott-");
    let before = identities(&gw);
    assert_eq!(named(&before, "ott-").len(), 150);
    assert!(named(&before, "ott-")
        .iter()
        .all(|i| i["hasEnrolled"] == false));

    let tokens = tokens.display().to_string();
    let r = run(
        &gw,
        &[
            "--mode",
            "ott",
            "--tokens",
            &tokens,
            "--count",
            "150",
            "--concurrency",
            "8",
        ],
    );
    let rec = r.recorder();
    assert_eq!((rec.ok, rec.errors), (150, 0), "{}", r.table());
    assert!(r.passed());

    let after = identities(&gw);
    assert_eq!(
        after.len(),
        151,
        "the admin and the 150 devices, nothing more"
    );
    let enrolled = named(&after, "ott-");
    assert!(enrolled.iter().all(|i| i["hasEnrolled"] == true
        && i["authenticators"]["cert"]["method"] == "ott"
        && i["authenticators"]["cert"]["issuedByNetwork"] == true));
    let (_, pending) = gw.snapshot();
    assert_eq!(pending.as_array().unwrap().len(), 0, "every token was used");

    // The same tokens again: every one refused, counted, and the run fails by exit code.
    let code = cli::main_with([
        "enrollgate-loadtest",
        "run",
        "--target",
        &gw.url(),
        "--mode",
        "ott",
        "--tokens",
        &tokens,
        "--count",
        "10",
        "--quiet",
    ]);
    assert_eq!(code, cli::EXIT_ERROR_RATE);
    assert_eq!(identities(&gw).len(), 151);
}

#[test]
fn ca_ottca_and_handshake_loads_from_one_fleet() {
    let gw = Gateway::start();
    let dir = gw.dir.path();
    let fleet_dir = dir.join("fleet");
    fleet::create(
        &fleet_dir,
        &FleetSpec {
            devices: 400,
            key_type: KeyType::Ec,
            threads: 2,
            validity_days: 30,
            name: "it".into(),
            progress: false,
        },
    )
    .unwrap();
    let admin = Admin::open(&gw.admin_file()).unwrap();
    let fleet = fleet::Fleet::open(&fleet_dir).unwrap();
    let opts = RegisterCa {
        name: "lt".into(),
        auto: true,
        ottca: true,
        ..RegisterCa::default()
    };
    let ca_id = admin::register_ca(&admin, &fleet, &opts).unwrap();
    let ca = gw
        .mgmt("GET", &format!("/cas/{ca_id}"), None)
        .json()
        .unwrap();
    assert_eq!(ca["data"]["isVerified"], true);
    assert_eq!(ca["data"]["isAutoCaEnrollmentEnabled"], true);
    // Registering again finds the same, verified CA.
    assert_eq!(admin::register_ca(&admin, &fleet, &opts).unwrap(), ca_id);

    let tokens = dir.join("ottca-tokens");
    prepare(&gw, &tokens, 100, TokenMethod::Ottca, "oc-");
    let (fleet_arg, tokens_arg) = (
        fleet_dir.display().to_string(),
        tokens.display().to_string(),
    );
    let ca_file = gw.ca_file().display().to_string();

    // ottca: devices 0..100 with the 100 tokens.
    let r = run(
        &gw,
        &[
            "--mode",
            "ottca",
            "--tokens",
            &tokens_arg,
            "--fleet",
            &fleet_arg,
            "--count",
            "100",
            "--concurrency",
            "8",
        ],
    );
    assert_eq!(
        (r.recorder().ok, r.recorder().errors),
        (100, 0),
        "{}",
        r.table()
    );
    assert_eq!(r.measured.devices_used, 100);

    // ca: the next 150 devices auto-enroll.
    let json_path = dir.join("ca.json");
    let plot_path = dir.join("ca.svg");
    let code = cli::main_with([
        "enrollgate-loadtest",
        "run",
        "--target",
        &gw.url(),
        "--mode",
        "ca",
        "--fleet",
        &fleet_arg,
        "--device-offset",
        "100",
        "--count",
        "150",
        "--concurrency",
        "8",
        "--ca-file",
        &ca_file,
        "--json",
        json_path.to_str().unwrap(),
        "--plot",
        plot_path.to_str().unwrap(),
        "--quiet",
    ]);
    assert_eq!(code, 0);
    let j: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(
        (j["ok"].as_u64(), j["errors"].as_u64()),
        (Some(150), Some(0))
    );
    assert_eq!(j["config"]["mode"], "ca");
    assert!(j["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert!(std::fs::read_to_string(&plot_path)
        .unwrap()
        .contains("</svg>"));

    let ids = identities(&gw);
    assert_eq!(ids.len(), 1 + 100 + 150, "admin, ottca, ca: nothing more");
    let ottca = named(&ids, "oc-");
    assert_eq!(ottca.len(), 100);
    assert!(ottca
        .iter()
        .all(|i| i["hasEnrolled"] == true && i["authenticators"]["cert"]["method"] == "ottca"));
    let auto = named(&ids, "lt-device-");
    assert_eq!(auto.len(), 150);
    let mut names: Vec<&str> = auto.iter().map(|i| i["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(names.first(), Some(&"lt-device-000101"));
    assert_eq!(names.last(), Some(&"lt-device-000250"));

    // handshake: mTLS + GET /version, cycling through the fleet; the store is untouched.
    let r = run(
        &gw,
        &[
            "--mode",
            "handshake",
            "--fleet",
            &fleet_arg,
            "--count",
            "200",
            "--concurrency",
            "8",
            "--ca-file",
            &ca_file,
        ],
    );
    assert_eq!(
        (r.recorder().ok, r.recorder().errors),
        (200, 0),
        "{}",
        r.table()
    );
    assert!(r.recorder().tls.values().sum::<u64>() == 200);
    assert_eq!(identities(&gw).len(), 251);

    // Devices already enrolled: 409 CERT_IN_USE, counted by code; the exit code follows
    // --max-error-rate.
    let again = |max: &str| {
        cli::main_with([
            "enrollgate-loadtest",
            "run",
            "--target",
            &gw.url(),
            "--mode",
            "ca",
            "--fleet",
            &fleet_arg,
            "--device-offset",
            "100",
            "--count",
            "20",
            "--ca-file",
            &ca_file,
            "--max-error-rate",
            max,
            "--quiet",
        ])
    };
    assert_eq!(again("0"), cli::EXIT_ERROR_RATE);
    assert_eq!(again("1"), 0);
    let r = run(
        &gw,
        &[
            "--mode",
            "ca",
            "--fleet",
            &fleet_arg,
            "--device-offset",
            "100",
            "--count",
            "20",
            "--ca-file",
            &ca_file,
        ],
    );
    assert_eq!(r.recorder().errors, 20);
    assert_eq!(r.recorder().by_code.get("CERT_IN_USE"), Some(&20));
    assert!(!r.passed());
    assert_eq!(identities(&gw).len(), 251);
}

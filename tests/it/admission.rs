//! Admission control: per-source and per-CA rate limits, and a signing queue that refuses
//! with 429 instead of growing. Every refusal is `429 RATE_LIMITED` with `Retry-After`,
//! and changes nothing in the store.

use std::sync::{Arc, Barrier};

use serde_json::json;

use crate::fleet::*;
use crate::support::*;

/// Sets `[limits]` keys (replacing the initial file's line for a key it already has).
fn limits(extra: &'static str) -> impl FnOnce(&mut String) {
    move |cfg: &mut String| {
        for line in extra.lines() {
            let key = format!("{} =", line.split('=').next().unwrap().trim());
            *cfg = cfg
                .lines()
                .filter(|l| !l.starts_with(&key))
                .collect::<Vec<_>>()
                .join("\n");
        }
        assert!(cfg.contains("[limits]\n"));
        *cfg = cfg.replace("[limits]\n", &format!("[limits]\n{extra}\n"));
    }
}

/// The Prometheus text of the gateway's metrics listener (its address is in the ready line).
fn metrics_text(gw: &Gateway) -> String {
    let log = gw.log();
    let addr = log
        .lines()
        .find(|l| l.contains("enrollgate ready"))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("metrics="))
        })
        .expect("metrics= in the ready line");
    run_ok(
        std::process::Command::new("curl")
            .arg("-sSf")
            .arg(format!("http://{addr}/metrics")),
    )
}

fn csr_pem() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
        .into_bytes()
}

fn enroll_ott(gw: &Gateway, token: &str) -> enrollgate::client::HttpResponse {
    gw.request(
        "POST",
        &format!("/edge/client/v1/enroll?method=ott&token={token}"),
        &[("Content-Type", "application/x-pem-file")],
        &csr_pem(),
    )
}

fn assert_rate_limited(r: &enrollgate::client::HttpResponse) {
    assert_eq!((r.status, code(r).as_str()), (429, "RATE_LIMITED"));
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    // The limits in these tests are per minute or per hour.
    assert!((1..=3600).contains(&retry), "Retry-After {retry}");
}

#[test]
fn per_source_limit_refuses_the_excess_and_spares_other_routes() {
    let gw = Gateway::start_with(
        limits("per_source_rate = \"1/min\"\nper_source_burst = 2"),
        &[],
    );
    let (_, _, t1) = gw.create_identity("first", "Device", false);
    let (_, _, t2) = gw.create_identity("second", "Device", false);
    let (_, _, t3) = gw.create_identity("third", "Device", false);

    // A refused request (bad token) still counts: the limit guards the work, not success.
    let r = enroll_ott(&gw, "not-a-token");
    assert_eq!(code(&r), "INVALID_ENROLLMENT_TOKEN");
    assert_eq!(enroll_ott(&gw, &t1).status, 200);
    let before = gw.snapshot();
    for token in [&t2, &t3] {
        assert_rate_limited(&enroll_ott(&gw, token));
    }
    assert_eq!(
        gw.snapshot(),
        before,
        "a refused enrollment changes nothing"
    );

    // Only enrollment is limited: the rest of the API answers as usual.
    assert_eq!(gw.request("GET", "/version", &[], b"").status, 200);
    assert_eq!(gw.mgmt("GET", "/identities", None).status, 200);
    let metrics = metrics_text(&gw);
    assert!(
        metrics.contains("enrollgate_rate_limited_total{limit=\"source\"} 2"),
        "{metrics}"
    );
}

#[test]
fn per_ca_limit_applies_to_each_ca_separately() {
    let gw = Gateway::start_with(limits("per_ca_rate = \"1/h\"\nper_ca_burst = 2"), &[]);
    let north = Fleet::new("north");
    let north_id = north.register(&gw, "north", true, true, false);
    let south = Fleet::new("south");
    south.register(&gw, "south", true, false, false);

    let auto =
        |dev: &Device| dev.request(&gw, "POST", "/edge/client/v1/enroll?method=ca", &[], b"");
    let n1 = north.device(&Spec::new("n1"));
    assert_eq!(auto(&n1).status, 200);
    // Refusals spend none of the CA's budget: an enrolled device retrying (with its
    // certificate as issued or re-encoded), a device whose certificate gives no name, and
    // whoever holds a pending ottca token of the CA presenting a certificate of another CA
    // or one already bound.
    let n1_twin = n1.with_mauled_signature();
    for _ in 0..3 {
        assert_eq!(code(&auto(&n1)), "CERT_IN_USE");
        // Another encoding of its signature is the same certificate, refused as early.
        assert_eq!(code(&auto(&n1_twin)), "CERT_IN_USE");
    }
    let nameless = north.device(&Spec {
        cn: None,
        ..Spec::new("unused")
    });
    for _ in 0..3 {
        assert_eq!(code(&auto(&nameless)), "INVALID_COMMON_NAME");
    }
    let r = gw.mgmt(
        "POST",
        "/identities",
        Some(&json!({"name": "plc-9", "type": "Device", "enrollment": {"ottca": north_id}})),
    );
    let token = r.json().unwrap()["data"]["enrollment"]["ottca"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let stranger = south.device(&Spec::new("stranger"));
    for _ in 0..3 {
        let r = stranger.request(
            &gw,
            "POST",
            &format!("/edge/client/v1/enroll?method=ottca&token={token}"),
            &[],
            b"",
        );
        assert_eq!(code(&r), "CERTIFICATE_FAILED_VALIDATION");
        // ...or a certificate of the CA that is bound already.
        let r = n1_twin.request(
            &gw,
            "POST",
            &format!("/edge/client/v1/enroll?method=ottca&token={token}"),
            &[],
            b"",
        );
        assert_eq!(code(&r), "CERT_IN_USE");
    }
    assert_eq!(auto(&north.device(&Spec::new("n2"))).status, 200);
    let before = gw.snapshot();
    assert_rate_limited(&auto(&north.device(&Spec::new("n3"))));
    assert_eq!(gw.snapshot(), before);
    // Another CA has its own budget.
    assert_eq!(auto(&south.device(&Spec::new("s1"))).status, 200);
    let names: Vec<String> = gw
        .mgmt("GET", "/identities?limit=100", None)
        .json()
        .unwrap()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.contains(&"north-n1".to_string()), "{names:?}");
    assert!(names.contains(&"north-n2".to_string()), "{names:?}");
    assert!(!names.contains(&"north-n3".to_string()), "{names:?}");
    assert!(names.contains(&"south-s1".to_string()), "{names:?}");
}

#[test]
fn a_surge_over_a_tiny_signing_queue_gets_success_or_429_and_nothing_else() {
    // One job waiting per worker at most: a concurrent surge overflows it.
    let gw = Gateway::start_with(limits("sign_queue = 1\nsign_batch = 1"), &[]);
    let tokens: Vec<(String, String)> = (0..96)
        .map(|i| {
            let (id, _, token) = gw.create_identity(&format!("surge-{i}"), "Device", false);
            (id, token)
        })
        .collect();
    let barrier = Arc::new(Barrier::new(tokens.len()));
    let port = gw.port;
    let ca = gw.ca_certs();
    let handles: Vec<_> = tokens
        .iter()
        .map(|(_, token)| {
            let barrier = barrier.clone();
            let cfg = enrollgate::client::config(&ca, None).unwrap();
            let path = format!("/edge/client/v1/enroll?method=ott&token={token}");
            let csr = csr_pem();
            std::thread::spawn(move || {
                barrier.wait();
                enrollgate::client::request(
                    cfg,
                    "127.0.0.1",
                    port,
                    "POST",
                    &path,
                    &[("Content-Type", "application/x-pem-file")],
                    &csr,
                )
                .expect("every request is answered: no reset, no timeout")
            })
        })
        .collect();
    let responses: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut ok = 0;
    for r in &responses {
        match r.status {
            200 => ok += 1,
            _ => assert_rate_limited(r),
        }
    }
    eprintln!(
        "surge over sign_queue=1: {ok} enrolled, {} refused with 429",
        responses.len() - ok
    );
    assert!(ok >= 1);
    // Every success is an enrolled identity and every refusal left its token pending.
    let (identities, _) = gw.snapshot();
    let enrolled = identities
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["name"].as_str().unwrap().starts_with("surge-") && i["hasEnrolled"] == true)
        .count();
    assert_eq!(enrolled, ok);
    // The refused can retry and succeed.
    for ((_, token), r) in tokens.iter().zip(&responses) {
        if r.status == 429 {
            assert_eq!(enroll_ott(&gw, token).status, 200);
        }
    }
}

//! Crash consistency: SIGKILL at different points of surges of mixed enrollments. Every
//! enrollment answered with success survives, no token is redeemed twice, no certificate
//! is bound twice, no identity is half-made (fsck).

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::fleet::*;
use crate::support::*;

#[test]
fn sigkill_during_surges_loses_no_acknowledged_enrollment() {
    let mut gw = Gateway::start();
    let fleet = Fleet::new("crash");
    fleet.register(&gw, "crash", true, false, false);
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = Arc::new(
        rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap(),
    );
    let mut total_acked = 0;
    for round in 0..5u64 {
        let tokens: Vec<(String, String)> = (0..60)
            .map(|i| {
                let (id, _, token) = gw.create_identity(&format!("r{round}-{i}"), "Device", false);
                (id, token)
            })
            .collect();
        let devices: Vec<Device> = (0..60)
            .map(|i| fleet.device(&Spec::new(&format!("r{round}-dev-{i}"))))
            .collect();
        let (ca, port) = (gw.ca_certs(), gw.port);
        let mut handles = Vec::new();
        for chunk in tokens.chunks(6) {
            let (chunk, ca, csr) = (chunk.to_vec(), ca.clone(), csr.clone());
            handles.push(std::thread::spawn(move || {
                let cfg = enrollgate::client::config(&ca, None).unwrap();
                chunk
                    .into_iter()
                    .map(|(id, token)| {
                        let path = format!("/enroll?method=ott&token={token}");
                        let r = enrollgate::client::request(
                            cfg.clone(),
                            "127.0.0.1",
                            port,
                            "POST",
                            &path,
                            &[],
                            csr.as_bytes(),
                        );
                        (Some(id), None, matches!(r, Ok(ref x) if x.status == 200))
                    })
                    .collect::<Vec<_>>()
            }));
        }
        for chunk in devices.chunks(6) {
            let (chunk, ca) = (chunk.to_vec(), ca.clone());
            handles.push(std::thread::spawn(move || {
                chunk
                    .into_iter()
                    .map(|d| {
                        let cfg =
                            enrollgate::client::config(&ca, Some((d.chain(), d.key()))).unwrap();
                        let r = enrollgate::client::request(
                            cfg,
                            "127.0.0.1",
                            port,
                            "POST",
                            "/enroll?method=ca",
                            &[],
                            b"",
                        );
                        let id = r
                            .as_ref()
                            .ok()
                            .filter(|x| x.status == 200)
                            .and_then(|x| x.json().ok())
                            .and_then(|v| v["data"]["id"].as_str().map(str::to_string));
                        (None, id.clone(), id.is_some())
                    })
                    .collect::<Vec<_>>()
            }));
        }
        // A different instant each round.
        std::thread::sleep(Duration::from_millis(15 + round * 37));
        gw.crash();
        let results: Vec<_> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        gw.spawn(&[]);
        for (ott_id, ca_id, ok) in &results {
            if !ok {
                continue;
            }
            total_acked += 1;
            let id = ott_id.as_ref().or(ca_id.as_ref()).unwrap();
            let v = gw
                .mgmt("GET", &format!("/identities/{id}"), None)
                .json()
                .unwrap();
            assert_eq!(
                v["data"]["hasEnrolled"], true,
                "round {round}: acknowledged enrollment of {id} lost"
            );
        }
        let out = run_ok(
            Command::new(BIN)
                .arg("fsck")
                .arg("--config")
                .arg(gw.data.join("enrollgate.toml")),
        );
        assert!(out.contains("no violations"), "round {round}: {out}");
    }
    assert!(
        total_acked > 0,
        "some enrollments were acknowledged before the crashes"
    );
    eprintln!("{total_acked} acknowledged enrollments survived 5 crashes");
}

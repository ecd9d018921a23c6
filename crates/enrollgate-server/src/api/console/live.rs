//! The console's live view: a small JSON summary of the daemon's own metrics, read from the
//! same recorder the Prometheus endpoint renders, so the console and a Prometheus server
//! never disagree. Counters are cumulative: the page polls and draws the differences.

use serde_json::{json, Map, Value};

use crate::telemetry;

/// A series' labels, as written: `(name, value)`.
type Labels<'a> = Vec<(&'a str, &'a str)>;

/// One sample of a Prometheus text line: name, labels, value.
fn parse_line(line: &str) -> Option<(&str, Labels<'_>, f64)> {
    if line.starts_with('#') || line.is_empty() {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.trim().parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => {
            let inner = rest.strip_suffix('}')?;
            let mut labels = Vec::new();
            // Label values here are our own (methods, codes, limits): no commas or quotes
            // inside them.
            for pair in inner.split(',').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=')?;
                labels.push((k, v.trim_matches('"')));
            }
            (name, labels)
        }
        None => (series, Vec::new()),
    };
    Some((name, labels, value))
}

fn label<'a>(labels: &[(&'a str, &'a str)], key: &str) -> Option<&'a str> {
    labels.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

fn add(map: &mut Map<String, Value>, key: &str, v: f64) {
    let now = map.get(key).and_then(Value::as_f64).unwrap_or(0.0);
    map.insert(key.to_string(), json!(now + v));
}

/// The summary of a Prometheus text: enrollments answered `ok` by method, refused by error
/// code (all methods), rate-limit refusals by limit, and the gauges an operator watches in
/// a surge. `at` is the caller's clock in milliseconds (for the page's time axis).
pub fn summary(text: &str, at_millis: u64) -> Value {
    let mut enrolled = Map::new();
    let mut refused = Map::new();
    let mut rate_limited = Map::new();
    for method in ["ott", "ottca", "ca"] {
        enrolled.insert(method.into(), json!(0.0));
    }
    let (mut connections, mut commit_queue, mut sign_queue) = (0.0, 0.0, 0.0);
    for (name, labels, value) in text.lines().filter_map(parse_line) {
        match name {
            telemetry::ENROLLMENTS => {
                let method = label(&labels, "method").unwrap_or("?");
                match label(&labels, "result") {
                    Some("ok") => add(&mut enrolled, method, value),
                    Some(code) => add(&mut refused, code, value),
                    None => {}
                }
            }
            telemetry::RATE_LIMITED => {
                add(
                    &mut rate_limited,
                    label(&labels, "limit").unwrap_or("?"),
                    value,
                );
            }
            telemetry::CONNECTIONS => connections += value,
            telemetry::QUEUE_DEPTH => commit_queue += value,
            // One gauge per worker would be summed; today it is one series.
            telemetry::SIGN_QUEUE_DEPTH => sign_queue += value,
            _ => {}
        }
    }
    json!({
        "available": true,
        "atMillis": at_millis,
        "enrollments": enrolled,
        "refusals": refused,
        "rateLimited": rate_limited,
        "openConnections": connections,
        "commitQueueDepth": commit_queue,
        "signQueueDepth": sign_queue,
    })
}

/// The summary of this process's metrics, or `{"available": false}` without a recorder.
pub fn current() -> Value {
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    match telemetry::endpoint::render() {
        Some(text) => summary(&text, at),
        None => json!({ "available": false, "atMillis": at }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_are_summed() {
        let text = "\
# TYPE enrollgate_enrollments_total counter
enrollgate_enrollments_total{method=\"ott\",result=\"ok\"} 5
enrollgate_enrollments_total{method=\"ca\",result=\"ok\"} 2
enrollgate_enrollments_total{method=\"ott\",result=\"ENROLLMENT_EXPIRED\"} 1
enrollgate_enrollments_total{method=\"ottca\",result=\"ENROLLMENT_EXPIRED\"} 2
enrollgate_rate_limited_total{limit=\"source\"} 3
enrollgate_open_connections 7
enrollgate_commit_queue_depth 1
enrollgate_sign_queue_depth 0
enrollgate_enrollment_duration_seconds_bucket{method=\"ott\",le=\"0.5\"} 9
";
        let v = summary(text, 42);
        assert_eq!(v["atMillis"], 42);
        assert_eq!(v["enrollments"]["ott"], 5.0);
        assert_eq!(v["enrollments"]["ottca"], 0.0);
        assert_eq!(v["enrollments"]["ca"], 2.0);
        assert_eq!(v["refusals"]["ENROLLMENT_EXPIRED"], 3.0);
        assert_eq!(v["rateLimited"]["source"], 3.0);
        assert_eq!(v["openConnections"], 7.0);
        assert_eq!(v["commitQueueDepth"], 1.0);
    }

    #[test]
    fn junk_lines_are_skipped() {
        let v = summary("garbage\nenrollgate_open_connections x\n{ 1\n", 0);
        assert_eq!(v["openConnections"], 0.0);
    }
}

//! The server's `--metrics` endpoint from outside: a tiny HTTP/1.0 GET and
//! a strict parser of the Prometheus text exposition format (0.0.4), so a
//! test reads the counters the way a Prometheus server would.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use super::net::dial;

/// Timeout of a metrics request (connect, write, read).
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The metric name.
    pub name: String,
    /// Its labels, by name.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// One `GET /metrics`, parsed.
#[derive(Debug)]
pub struct Scrape {
    /// Every sample, in page order.
    samples: Vec<Sample>,
    /// The page itself (for failure messages).
    pub text: String,
}

impl Scrape {
    /// The single unlabelled sample `name`.
    pub fn value(&self, name: &str) -> f64 {
        let found: Vec<&Sample> = self.samples.iter().filter(|s| s.name == name && s.labels.is_empty()).collect();
        match found[..] {
            [s] => s.value,
            _ => panic!("expected one unlabelled sample {name}, found {}:\n{}", found.len(), self.text),
        }
    }

    /// The samples `name{pid="..."}` by pid.
    pub fn per_pid(&self, name: &str) -> BTreeMap<i32, f64> {
        let mut out = BTreeMap::new();
        for s in self.samples.iter().filter(|s| s.name == name) {
            let pid = s.labels.get("pid").and_then(|p| p.parse().ok());
            let Some(pid) = pid.filter(|_| s.labels.len() == 1) else {
                panic!("{name} sample with labels {:?}, expected only a numeric pid:\n{}", s.labels, self.text)
            };
            assert!(out.insert(pid, s.value).is_none(), "two {name} samples for pid {pid}:\n{}", self.text);
        }
        out
    }
}

fn valid_name(n: &str, colons: bool) -> bool {
    let mut chars = n.chars();
    let ok_first = |c: char| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':');
    chars.next().is_some_and(ok_first) && chars.all(|c| ok_first(c) || c.is_ascii_digit())
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if v.bytes().all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) => v.parse().ok(),
        _ => None,
    }
}

/// `{a="x",b="y\"z"}` at the start of `s`: the labels and the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("labels must start with {")?;
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = rest[..eq].trim();
        if !valid_name(name, false) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..].trim_start().strip_prefix('"').ok_or("label value must be quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in label value")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = rest[end + 1..].trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err("expected , or } after a label".into());
        }
    }
}

/// Parses the Prometheus text exposition format (version 0.0.4) strictly:
/// HELP/TYPE at most once per family and before its samples, every sample
/// of a declared family, families contiguous, values floats, optional
/// integer timestamps, counters finite and non-negative.
fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut samples = Vec::new();
    let mut enter = |family: &str, current: &mut Option<String>| -> Result<(), String> {
        if current.as_deref() != Some(family) {
            if let Some(c) = current.take() {
                finished.insert(c);
            }
            if finished.contains(family) {
                return Err(format!("family {family} is not contiguous"));
            }
            *current = Some(family.to_string());
        }
        Ok(())
    };
    if !text.ends_with('\n') {
        return Err("exposition does not end with a newline".into());
    }
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            let kind = parts.next().unwrap_or("");
            if kind != "HELP" && kind != "TYPE" {
                continue;
            }
            let name = parts.next().ok_or_else(|| at("no metric name".into()))?;
            if !valid_name(name, true) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            let arg = parts.next().unwrap_or("");
            enter(name, &mut current).map_err(at)?;
            if kind == "HELP" {
                if !helps.insert(name.to_string()) {
                    return Err(at("second HELP".into()));
                }
            } else {
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&arg) {
                    return Err(at(format!("unknown type {arg:?}")));
                }
                if samples.iter().any(|s: &Sample| s.name == name) {
                    return Err(at("TYPE after samples".into()));
                }
                if types.insert(name.to_string(), arg.to_string()).is_some() {
                    return Err(at("second TYPE".into()));
                }
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !valid_name(name, true) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value = fields.next().ok_or_else(|| at("no value".into()))?;
        let value = parse_value(value).ok_or_else(|| at(format!("value {value:?} is not a float")))?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| at(format!("bad timestamp {ts:?}")))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let family = if types.contains_key(name) {
            name.to_string()
        } else {
            let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
            match types.get(base).map(String::as_str) {
                Some("histogram" | "summary") => base.to_string(),
                _ => return Err(at(format!("sample of {name} without a TYPE line before it"))),
            }
        };
        enter(&family, &mut current).map_err(at)?;
        if types[&family] == "counter" && !(value.is_finite() && value >= 0.0) {
            return Err(at(format!("counter value {value}")));
        }
        samples.push(Sample { name: name.to_string(), labels, value });
    }
    Ok(samples)
}

/// `GET path` over HTTP/1.0: (status code, header block, body). Checks
/// Content-Length against the body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String, String), String> {
    let mut s = dial(addr, HTTP_TIMEOUT).map_err(|e| format!("connect to metrics {addr}: {e}"))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).map_err(|e| format!("write request: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read response (after {} bytes): {e}", raw.len()))?;
    let raw = String::from_utf8(raw).map_err(|e| format!("response is not UTF-8: {e}"))?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(|| format!("no end of head in {raw:?}"))?;
    let status_line = head.lines().next().unwrap_or("");
    let mut parts = status_line.split(' ');
    let (version, code) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let code: u16 = code.parse().map_err(|_| format!("bad status line {status_line:?}"))?;
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok())?
    });
    if let Some(len) = length {
        if len != body.len() {
            return Err(format!("Content-Length {len}, body {} bytes", body.len()));
        }
    }
    Ok((code, head.to_string(), body.to_string()))
}

/// `GET /metrics`, which must answer 200 with a text/plain page that
/// parses.
pub fn scrape(addr: SocketAddr) -> Scrape {
    try_scrape(addr).unwrap_or_else(|e| panic!("GET /metrics: {e}"))
}

/// [`scrape`], with what went wrong as an error.
pub fn try_scrape(addr: SocketAddr) -> Result<Scrape, String> {
    let (code, head, body) = http_get(addr, "/metrics")?;
    if code != 200 {
        return Err(format!("status {code}; head:\n{head}\nbody:\n{body}"));
    }
    let ctype = head.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-type")));
    if !ctype.is_some_and(|(_, v)| v.trim().starts_with("text/plain")) {
        return Err(format!("Content-Type is {ctype:?}, expected text/plain"));
    }
    let samples = parse_exposition(&body).map_err(|e| format!("bad exposition: {e}\n{body}"))?;
    Ok(Scrape { samples, text: body })
}

#[test]
fn exposition_parser_rejects_malformed_pages() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total 3\na_total{pid=\"1\",x=\"q\\\"\"} 1.5e3\n";
    let s = parse_exposition(good).expect("good page");
    assert_eq!(s.len(), 2);
    assert_eq!(s[1].labels["x"], "q\"");
    for bad in [
        "a 1\n",                                           // no TYPE
        "# TYPE a gauge\na one\n",                         // not a float
        "# TYPE a gauge\na{pid=1} 1\n",                    // unquoted label
        "# TYPE a gauge\n# TYPE a gauge\na 1\n",           // second TYPE
        "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na 2\n", // not contiguous
        "# TYPE a counter\na -1\n",                        // negative counter
        "# TYPE a gauge\na 1",                             // no final newline
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

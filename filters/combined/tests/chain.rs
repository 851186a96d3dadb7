//! The combined module against the five filters as an Envoy filter chain: the same requests,
//! clock and ticks through both, on two in-memory hosts, must give the same answers, the same
//! requests reaching the upstream and the same metric values. The chain is driven here the
//! way Envoy drives one (request forwards until a reply or a pause; a resumed request goes on
//! to the next filter; the response backwards through the filters the request reached;
//! `on_log` to every filter); the combined module is one filter in the same driver.
#![allow(clippy::expect_used, clippy::indexing_slicing)] // test code: fail loudly

use sg_combined::filter::Combined;
use sg_core::host::{Flow, Plugin};
use sg_core::testing::MemHost;
use std::collections::{BTreeMap, HashMap};

/// One filter of a chain, over the in-memory host.
trait Stage {
    fn period(&self) -> u64;
    fn open(&mut self, id: u32);
    fn request(&mut self, h: &MemHost, id: u32) -> Flow;
    fn response(&mut self, h: &MemHost, id: u32);
    fn log(&mut self, h: &MemHost, id: u32);
    fn tick(&mut self, h: &MemHost);
    fn flush(&self, h: &MemHost);
}

struct One<P: Plugin> {
    f: P,
    p: P::Periodic,
    period: u64,
    streams: HashMap<u32, P::Stream>,
}

impl<P: Plugin> One<P> {
    fn configure(h: &MemHost, json: &str) -> Self {
        h.set_config(json);
        let (f, p) = P::configure(h).expect("config accepted");
        One {
            f,
            p,
            period: h.tick_period_ms(),
            streams: HashMap::new(),
        }
    }
}

impl<P: Plugin> Stage for One<P> {
    fn period(&self) -> u64 {
        self.period
    }
    fn open(&mut self, id: u32) {
        self.streams.insert(id, P::stream(id));
    }
    fn request(&mut self, h: &MemHost, id: u32) -> Flow {
        let s = self.streams.get_mut(&id).expect("open stream");
        self.f.on_request(h, s)
    }
    fn response(&mut self, h: &MemHost, id: u32) {
        let s = self.streams.get_mut(&id).expect("open stream");
        let size = h.body().len();
        self.f.on_response_headers(h, s, false);
        self.f.on_response_body(h, s, size, true);
    }
    fn log(&mut self, h: &MemHost, id: u32) {
        let mut s = self.streams.remove(&id).expect("open stream");
        self.f.on_log(h, &mut s);
        self.f.on_done(&mut s);
    }
    fn tick(&mut self, h: &MemHost) {
        self.f.on_tick(h, &mut self.p);
    }
    fn flush(&self, h: &MemHost) {
        self.f.flush(h);
    }
}

/// A chain in the driver: its filters, the streams paused (by the filter that paused them)
/// and what became of each request.
struct Driver {
    h: MemHost,
    stages: Vec<Box<dyn Stage>>,
    paused: HashMap<u32, usize>,
    /// Per request: the local reply's status, or 0 when it reached the upstream.
    outcome: BTreeMap<u32, u16>,
}

impl Driver {
    fn new(stages: Vec<Box<dyn Stage>>, h: MemHost) -> Self {
        Driver {
            h,
            stages,
            paused: HashMap::new(),
            outcome: BTreeMap::new(),
        }
    }

    /// Request headers through filters `from..`; then the rest of the stream if it ended.
    fn go(&mut self, id: u32, from: usize, headers: &[(&str, &str)]) {
        for i in from..self.stages.len() {
            let flow = self.stages[i].request(&self.h, id);
            let replies = self.h.take_replies();
            if let Some(r) = replies.last() {
                assert_eq!(flow, Flow::Pause, "a reply pauses");
                self.outcome.insert(id, r.status);
                let hs: Vec<(&str, &str)> = r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                self.h.respond(r.status, &hs, &r.body);
                self.finish(id, i + 1);
                return;
            }
            if flow == Flow::Pause {
                self.paused.insert(id, i);
                return;
            }
        }
        self.outcome.insert(id, 0);
        // The upstream's page (the request headers stay as the filters left them).
        let _ = headers;
        self.h.respond(
            200,
            &[
                ("content-type", "text/html"),
                ("cache-control", "max-age=60"),
            ],
            b"<html>page</html>",
        );
        self.finish(id, self.stages.len());
    }

    fn finish(&mut self, id: u32, reached: usize) {
        for i in (0..reached).rev() {
            self.stages[i].response(&self.h, id);
        }
        for s in &mut self.stages {
            s.log(&self.h, id);
        }
    }

    fn send(&mut self, id: u32, headers: &[(&str, &str)]) {
        self.h.request(headers);
        for s in &mut self.stages {
            s.open(id);
        }
        self.go(id, 0, headers);
    }

    fn tick(&mut self, now: u64, headers: &[(&str, &str)]) {
        for i in 0..self.stages.len() {
            let p = self.stages[i].period();
            if p > 0 && now.is_multiple_of(p) {
                self.stages[i].tick(&self.h);
                for id in self.h.take_resumed() {
                    let at = self.paused.remove(&id).expect("a paused stream resumed");
                    self.h.request(headers);
                    self.go(id, at + 1, headers);
                }
                for r in self.h.take_replies() {
                    let id = r.id.expect("a reply from a tick names its stream");
                    self.paused.remove(&id);
                    self.outcome.insert(id, r.status);
                }
            }
        }
    }

    fn metrics(&self) -> BTreeMap<String, i64> {
        for s in &self.stages {
            s.flush(&self.h);
        }
        self.h
            .metric_names()
            .into_iter()
            .map(|n| {
                let v = self.h.metric(&n).unwrap_or(0);
                (n, v)
            })
            .collect()
    }
}

const SLI: &str = include_str!("../../../config/sli.json");
const HOTKEY: &str = include_str!("../../../config/hotkey.json");
const SIMPLEPAGE: &str = include_str!("../../../config/simplepage.json");
const RATELIMIT: &str = include_str!("../../../config/ratelimit.json");
const BREAKER: &str = include_str!("../../../config/breaker.json");

fn sections() -> String {
    format!(
        r#"{{"sli": {SLI}, "hotkey": {HOTKEY}, "simplepage": {SIMPLEPAGE}, "ratelimit": {RATELIMIT}, "breaker": {BREAKER}}}"#
    )
}

/// A host whose requests are routed to the breaker's API cluster (only the API's authority
/// matches an API).
fn host() -> MemHost {
    let h = MemHost::new();
    h.set_property(&["xds", "cluster_name"], "outbound_api");
    h
}

fn chain() -> Driver {
    let h = host();
    let stages: Vec<Box<dyn Stage>> = vec![
        Box::new(One::<sg_sli::filter::Filter>::configure(&h, SLI)),
        Box::new(One::<sg_hotkey::filter::Filter>::configure(&h, HOTKEY)),
        Box::new(One::<sg_simplepage::filter::Filter>::configure(
            &h, SIMPLEPAGE,
        )),
        Box::new(One::<sg_ratelimit::filter::Filter>::configure(
            &h, RATELIMIT,
        )),
        Box::new(One::<sg_breaker::filter::Filter>::configure(&h, BREAKER)),
    ];
    Driver::new(stages, h)
}

fn combined() -> Driver {
    let h = host();
    let stages: Vec<Box<dyn Stage>> = vec![Box::new(One::<Combined>::configure(&h, &sections()))];
    Driver::new(stages, h)
}

/// Request `n`: the hot blog in its URL forms, other blogs, and the API the breaker guards,
/// all from one client (its `per_client` limit delays).
fn request(n: u32) -> Vec<(&'static str, String)> {
    let (host, path) = match n % 5 {
        0 => (
            "blog.example",
            format!("/PostView?blogId=hot&logNo={}", n % 3),
        ),
        1 => ("blog.example", "/hot/1".to_string()),
        2 => ("blog.example", format!("/PostList?blogId=b{}", n % 40)),
        3 => ("recommend.internal", "/api/recommend".to_string()),
        _ => ("blog.example", "/PostView?blogId=hot&logNo=1".to_string()),
    };
    vec![
        (":method", "GET".to_string()),
        (":path", path),
        (":authority", host.to_string()),
        ("x-forwarded-for", "203.0.113.7".to_string()),
    ]
}

/// Runs `n` requests, one per ms, with every tick due, then 3 s of ticks alone.
fn run(d: &mut Driver, n: u32) {
    let mut last: Vec<(&str, String)> = request(0);
    for t in 1..=u64::from(n) + 3000 {
        d.h.set_now(1_000_000 + t);
        let as_refs = |v: &[(&'static str, String)]| -> Vec<(&'static str, String)> { v.to_vec() };
        if t <= u64::from(n) {
            let id = u32::try_from(t).expect("small");
            last = as_refs(&request(id));
            let hs: Vec<(&str, &str)> = last.iter().map(|(k, v)| (*k, v.as_str())).collect();
            d.send(id, &hs);
        }
        let hs: Vec<(&str, &str)> = last.iter().map(|(k, v)| (*k, v.as_str())).collect();
        d.tick(1_000_000 + t, &hs);
    }
}

#[test]
fn combined_configures_every_part_and_ticks_at_the_gcd_of_their_periods() {
    let c = combined();
    let ch = chain();
    let periods: Vec<u64> = ch.stages.iter().map(|s| s.period()).collect();
    let g = periods.iter().fold(0, |g, &p| {
        let (mut a, mut b) = (g, p);
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    });
    assert!(g > 0, "{periods:?}");
    assert_eq!(c.stages[0].period(), g, "{periods:?}");
    let mut a = c.h.metric_names();
    let mut b = ch.h.metric_names();
    a.sort();
    b.sort();
    assert_eq!(a, b, "the same metrics, by the same names");
}

#[test]
fn a_refused_section_refuses_the_combined_config() {
    let h = MemHost::new();
    let bad = sections().replace(r#""rate": "50r/s""#, r#""rate": "fast""#);
    assert_ne!(bad, sections(), "the example has the rate to break");
    h.set_config(&bad);
    assert!(Combined::configure(&h).is_none());
    h.set_config(r#"{"sli": {}, "cache": {}}"#);
    assert!(Combined::configure(&h).is_none());
}

#[test]
fn combined_answers_delays_and_counts_exactly_as_the_five_filter_chain() {
    let mut ch = chain();
    let mut c = combined();
    run(&mut ch, 1500);
    run(&mut c, 1500);
    // The run must exercise what matters: upstream, replies of more than one kind, delays.
    let replies: Vec<u16> = ch.outcome.values().copied().filter(|s| *s != 0).collect();
    assert!(ch.outcome.values().any(|s| *s == 0), "some reach the app");
    assert!(!replies.is_empty(), "some are answered by a filter");
    assert!(
        ch.metrics()
            .iter()
            .any(|(n, v)| n.contains("ratelimit") && n.contains("delayed") && *v > 0),
        "some are delayed: {:?}",
        ch.metrics()
    );
    assert!(
        ch.metrics()
            .iter()
            .any(|(n, v)| n.starts_with("sg.breaker.recommend.") && *v > 0),
        "the breaker saw the API calls"
    );
    assert_eq!(c.outcome.len(), 1500, "every request ended");
    assert!(c.paused.is_empty() && ch.paused.is_empty());
    assert_eq!(c.outcome, ch.outcome, "the same answer to every request");
    assert_eq!(c.metrics(), ch.metrics(), "the same counts");
    // The combined module resumed the delayed requests into the parts after ratelimit.
    assert!(!c.h.take_entered().is_empty());
}

#[test]
fn a_held_request_goes_through_the_parts_after_the_one_that_paused_it() {
    // ratelimit delays every request after the first (1r/s, burst 5, delay mode), and the
    // breaker behind it is forced open: a delayed API call, once resumed, gets the fallback.
    let rl = r#"{"rules": [{"name": "all", "key": {"fixed": "x"}, "rate": "1r/s", "burst": 5, "mode": "delay"}]}"#;
    let br = BREAKER.replacen(r#""flag": null"#, r#""flag": "force_open""#, 1);
    assert_ne!(br, BREAKER, "the example has the flag to set");
    let json = format!(r#"{{"ratelimit": {rl}, "breaker": {br}}}"#);
    let h = host();
    h.set_config(&json);
    let (c, mut p) = Combined::configure(&h).expect("config accepted");
    // The lease holder applies the flag on its first ticks.
    for t in 1..=500 {
        h.set_now(t);
        if t.is_multiple_of(h.tick_period_ms().max(1)) {
            c.on_tick(&h, &mut p);
        }
    }
    h.set_now(1_000);
    h.get("recommend.internal", "/api/recommend");
    let mut s1 = Combined::stream(1);
    assert_eq!(
        c.on_request(&h, &mut s1),
        Flow::Pause,
        "forced open: fallback"
    );
    assert_eq!(h.take_replies().len(), 1);
    let mut s2 = Combined::stream(2);
    h.get("recommend.internal", "/api/recommend");
    assert_eq!(
        c.on_request(&h, &mut s2),
        Flow::Pause,
        "delayed by ratelimit"
    );
    assert!(h.take_replies().is_empty(), "held, not answered");
    for t in 1..=2000 {
        h.set_now(1_000 + t);
        if t.is_multiple_of(h.tick_period_ms().max(1)) {
            c.on_tick(&h, &mut p);
        }
    }
    assert_eq!(
        h.take_entered(),
        vec![2],
        "the tick acted on the held stream"
    );
    let r = h.take_replies();
    assert_eq!(r.len(), 1, "the breaker answered it after the delay: {r:?}");
    assert!(h.take_resumed().is_empty(), "answered, so not resumed");
    c.on_done(&mut s2);
    c.on_done(&mut s1);
}

/// `config/combined.json` (the bundle's ingress chain as one module) is accepted by the
/// module's own configure code, every section is accepted by its filter's, and every field
/// of every section is described by that filter's schema (`config/combined.schema.json`
/// refers to them).
#[test]
fn shipped_combined_example_configures_and_each_section_matches_its_schema() {
    let json = include_str!("../../../config/combined.json");
    let h = MemHost::new();
    h.set_config(json);
    assert!(
        Combined::configure(&h).is_some(),
        "config/combined.json refused"
    );
    let doc: serde_json::Value = serde_json::from_str(json).expect("json");
    let schemas = [
        ("sli", include_str!("../../../config/sli.schema.json")),
        ("hotkey", include_str!("../../../config/hotkey.schema.json")),
        (
            "simplepage",
            include_str!("../../../config/simplepage.schema.json"),
        ),
        (
            "ratelimit",
            include_str!("../../../config/ratelimit.schema.json"),
        ),
        (
            "breaker",
            include_str!("../../../config/breaker.schema.json"),
        ),
    ];
    let obj = doc.as_object().expect("object");
    assert!(obj.len() >= 4, "the example holds the ingress sections");
    for (name, section) in obj {
        let (_, schema) = schemas
            .iter()
            .find(|(n, _)| n == name)
            .expect("a known section");
        let gaps = sg_core::error::schema_gaps_of(schema, &section.to_string());
        assert!(gaps.is_empty(), "config/{name}.schema.json lacks {gaps:?}");
    }
    let combined_schema: serde_json::Value =
        serde_json::from_str(include_str!("../../../config/combined.schema.json"))
            .expect("schema json");
    for (name, _) in schemas {
        assert_eq!(
            combined_schema["properties"][name]["$ref"],
            format!("{name}.schema.json"),
            "combined.schema.json refers to the {name} schema"
        );
    }
}

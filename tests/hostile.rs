//! The hostile-input catalog: requests an attacker or a careless client sends, each with the
//! status it must get, a piece of the reason, and bounds on the reply's size and time,
//! against one real `tally up`. Afterwards the service is healthy and every event it
//! acknowledged is in the log. Rate limits have their own test at the end.

use std::path::Path;
use std::time::Duration;

use crate::support::{
    ADMIN_KEY, READ_KEY, RawReply, Tally, WRITE_KEY, log_stats, logged_event_ids, send_raw, tally,
};

/// The ingest body limit, and how long a body may trickle, in the server under test.
const BODY_TIMEOUT_SECS: u64 = 1;

/// One hostile request and what it must get.
struct Case {
    name: &'static str,
    request: Vec<u8>,
    status: u16,
    reason: &'static str,
    max_reply_bytes: usize,
    max_time: Duration,
    /// CPU time the server's HTTP workers may spend on it.
    max_cpu: Duration,
    /// Event ids the request must get acknowledged (a 202).
    acknowledges: Vec<String>,
}

/// Builds a [`Case`]: a request line, headers and a body, then what it must get.
struct Request {
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    content_length: bool,
}

fn request(method: &'static str, path: impl Into<String>) -> Request {
    Request {
        method,
        path: path.into(),
        headers: Vec::new(),
        body: Vec::new(),
        content_length: true,
    }
}

impl Request {
    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    fn key(self, secret: &str) -> Self {
        self.header("Authorization", format!("Bearer {secret}"))
    }

    fn json(self, body: impl Into<Vec<u8>>) -> Self {
        self.header("Content-Type", "application/json").body(body)
    }

    fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sends the headers as given, with no `Content-Length` of ours.
    fn raw_framing(mut self) -> Self {
        self.content_length = false;
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: tally\r\nConnection: close\r\n",
            self.method, self.path
        );
        if self.content_length {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }

    fn expect(self, name: &'static str, status: u16, reason: &'static str) -> Case {
        Case {
            name,
            request: self.bytes(),
            status,
            reason,
            max_reply_bytes: 16 * 1024,
            max_time: Duration::from_secs(5),
            max_cpu: Duration::from_millis(500),
            acknowledges: Vec::new(),
        }
    }
}

impl Case {
    fn max_reply(mut self, bytes: usize) -> Self {
        self.max_reply_bytes = bytes;
        self
    }

    fn acknowledging(mut self, ids: &[&str]) -> Self {
        self.acknowledges = ids.iter().map(|id| (*id).to_owned()).collect();
        self
    }
}

fn event(id: &str) -> String {
    format!(r#"{{"event_id":"{id}","event_type":"click","user_id":"u","tags":{{"os":"ios"}}}}"#)
}

/// Nested arrays `depth` deep.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

fn ingest_cases() -> Vec<Case> {
    let post = || request("POST", "/v1/events");
    let valid = format!("[{}]", event("hostile-ok-1"));
    let mut cases =
        vec![
        post()
            .json(valid.clone())
            .expect("no key", 401, "missing Authorization"),
        post()
            .header("Authorization", format!("bearer {WRITE_KEY}"))
            .json(valid)
            .expect("lowercase scheme", 202, "\"accepted\":1")
            .acknowledging(&["hostile-ok-1"]),
        post()
            .key("tk_guess000000000000000000000000000")
            .json("[]")
            .expect("unknown key", 401, "unknown API key"),
        post().header("Authorization", "Bearer").json("[]").expect(
            "scheme without a secret",
            401,
            "missing Authorization",
        ),
        post()
            .header("Authorization", format!("Basic {WRITE_KEY}"))
            .json("[]")
            .expect("basic scheme", 401, "missing Authorization"),
        post()
            .key(READ_KEY)
            .json("[]")
            .expect("read key writes", 403, "lacks the write scope"),
        post()
            .key(WRITE_KEY)
            .header("Content-Type", "text/html")
            .body("<b>")
            .expect("wrong media type", 415, "is not accepted"),
        post()
            .key(WRITE_KEY)
            .body("[]")
            .expect("no media type", 415, "is not accepted"),
        post()
            .key(WRITE_KEY)
            .json("")
            .expect("empty body", 400, "the body is empty"),
        post()
            .key(WRITE_KEY)
            .json("[]")
            .expect("empty array", 400, "holds no events"),
        post()
            .key(WRITE_KEY)
            .json("{")
            .expect("truncated object", 400, "invalid JSON"),
        post()
            .key(WRITE_KEY)
            .json(format!("[{}", event("never")))
            .expect("truncated array", 400, "invalid JSON"),
        post()
            .key(WRITE_KEY)
            .json("null")
            .expect("null", 400, "must be a JSON object"),
        post()
            .key(WRITE_KEY)
            .json("\"click\"")
            .expect("a string", 400, "must be a JSON object"),
        post()
            .key(WRITE_KEY)
            .json("[1,2,3]")
            .expect("numbers", 400, "must be a JSON object"),
        post()
            .key(WRITE_KEY)
            .json(nested(10_000))
            .expect("deep nesting", 400, "recursion limit"),
        post().key(WRITE_KEY).json(nested(100_000)).expect(
            "deep nesting past the event limit",
            413,
            "bytes per event",
        ),
        post()
            .key(WRITE_KEY)
            .json(format!(
                r#"[{{"event_type":"click","user_id":"u","tags":{}}}]"#,
                nested(5000)
            ))
            .expect("deep nesting in tags", 400, "recursion limit"),
        post()
            .key(WRITE_KEY)
            .json(b"[{\"event_type\":\"click\",\"user_id\":\"\xff\xfe\"}]".to_vec())
            .expect("invalid UTF-8", 400, "invalid JSON"),
        post()
            .key(WRITE_KEY)
            .json(r#"[{"event_type":"click","user_id":"u","ts":1e400}]"#)
            .expect("1e400", 400, "invalid JSON"),
        post()
            .key(WRITE_KEY)
            .json(r#"[{"event_type":"click","user_id":"u","ts":123456789012345678901234567890}]"#)
            .expect(
                "30-digit time",
                400,
                "\\\"ts\\\" must be whole epoch milliseconds",
            ),
        post()
            .key(WRITE_KEY)
            .json(r#"[{"event_type":"click","user_id":"u","ts":-9223372036854775808}]"#)
            .expect("earliest time", 400, "older than the allowed lateness"),
        post()
            .key(WRITE_KEY)
            .json(r#"[{"event_type":"click","user_id":"u","ts":"+275760-09-13T00:00:00Z"}]"#)
            .expect("year 275760", 400, "neither RFC 3339"),
        post()
            .key(WRITE_KEY)
            .json(r#"[{"event_type":"click","user_id":"u","ts":{"$date":1}}]"#)
            .expect("time as an object", 400, "must be an RFC 3339 string"),
        post()
            .key(WRITE_KEY)
            .json(r#"[{"event_type":"purchase","user_id":"u","tags":{"revenue":1e32}}]"#)
            .expect("revenue 1e32", 400, "outside ±1e15"),
        post()
            .key(WRITE_KEY)
            .json(r#"[{"event_type":"purchase","user_id":"u","tags":{"revenue":-1e308}}]"#)
            .expect("revenue -1e308", 400, "outside ±1e15"),
        post()
            .key(WRITE_KEY)
            .json(r#"[{"event_type":"purchase","user_id":"u","tags":{"revenue":NaN}}]"#)
            .expect("NaN", 400, "invalid JSON"),
        post()
            .key(WRITE_KEY)
            .json(r#"[{"event_type":"click","user_id":"a","user_id":"b"}]"#)
            .expect("repeated key", 400, "appears twice in one object"),
        post()
            .key(WRITE_KEY)
            .json(r#"[{"event_type":"click","user_id":"a","tags":{"os":"ios","os":"android"}}]"#)
            .expect("repeated tag", 400, "appears twice in one object"),
        post()
            .key(WRITE_KEY)
            .json(
                r#"[{"event_type":"click","user_id":"a","tags":{"os":"ios","os_type":"android"}}]"#,
            )
            .expect("a tag and its alias", 400, "are both 'os_type'"),
        post()
            .key(WRITE_KEY)
            .json(r#"[{"event_type":"click","user_id":"a","tenant":"other"}]"#)
            .expect("tenant in the body", 400, "is set by the server"),
        post()
            .key(WRITE_KEY)
            .json(r#"[{"event_type":"click","user_id":"a","__proto__":{}}]"#)
            .expect("unknown field", 400, "unknown field '__proto__'"),
        post()
            .key(WRITE_KEY)
            .json(format!(
                r#"[{{"event_type":"click","user_id":"{}"}}]"#,
                "u".repeat(10_000)
            ))
            .expect("long user id", 400, "over the limit"),
        post()
            .key(WRITE_KEY)
            .json(format!(
                r#"[{{"event_type":"click","user_id":"u","tags":{{"url":"{}"}}}}]"#,
                "x".repeat(40_000)
            ))
            .expect("event over its limit", 413, "bytes per event"),
        post().key(WRITE_KEY).json(vec![b' '; 600 * 1024]).expect(
            "body over its limit",
            413,
            "over the limit of 512000 bytes",
        ),
        post()
            .key(WRITE_KEY)
            .json(r#"[{"event_type":"clik","user_id":"u"}]"#)
            .expect("misspelt event type", 400, "did you mean click?"),
        post()
            .key(WRITE_KEY)
            .json(format!(
                r#"[{{"event_id":"{}","event_type":"click","user_id":"u"}}]"#,
                "e".repeat(1000)
            ))
            .expect("long event id", 400, "over the limit"),
        post()
            .key(WRITE_KEY)
            .json(r#"[{"event_type":"click","user_id":"u","tags":["os","ios"]}]"#)
            .expect("tags as a list", 400, "tags"),
        post()
            .key(WRITE_KEY)
            .json(r#"[{"event_type":"<script>alert(1)</script>","user_id":"u"}]"#)
            .expect("markup as event type", 400, "unknown event type"),
        post()
            .key(WRITE_KEY)
            .header("Content-Type", "application/x-ndjson")
            .body(format!(
                "{}\n{}\n",
                event("hostile-nd-1"),
                event("hostile-nd-2")
            ))
            .expect("NDJSON", 202, "\"accepted\":2")
            .acknowledging(&["hostile-nd-1", "hostile-nd-2"]),
        post()
            .key(WRITE_KEY)
            .header("Content-Type", "application/x-ndjson")
            .body(b"{\"event_type\":\"click\",\"user_id\":\"\xc3\x28\"}\n".to_vec())
            .expect("NDJSON, not UTF-8", 400, "not UTF-8"),
        post()
            .key(WRITE_KEY)
            .json(format!("[{}]", vec!["1"; 200_000].join(",")))
            .expect("a flood of junk", 400, "\"rejected_count\":200000")
            .max_reply(20_000),
        post()
            .key(WRITE_KEY)
            .header("Content-Encoding", "gzip")
            .json(vec![
                0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03,
            ])
            .expect("a truncated gzip body", 400, "not valid gzip"),
        post()
            .key(WRITE_KEY)
            .header("Content-Encoding", "br")
            .json(format!("[{}]", event("hostile-br")))
            .expect("an encoding other than gzip", 415, "send gzip or no encoding"),
        request("PUT", "/v1/events")
            .key(WRITE_KEY)
            .json("[]")
            .expect("wrong method", 405, ""),
        post()
            .key(WRITE_KEY)
            .header("Content-Type", "application/json")
            .header("Content-Length", "100")
            .body("[{")
            .raw_framing()
            .expect("a body that never arrives", 408, "took over 1 s"),
        post()
            .key(WRITE_KEY)
            .header("Content-Type", "application/json")
            .header("Transfer-Encoding", "chunked")
            .body(format!(
                "{:x}\r\n[{}]\r\n0\r\n\r\n",
                event("hostile-ch-1").len() + 2,
                event("hostile-ch-1")
            ))
            .raw_framing()
            .expect("chunked body", 202, "\"accepted\":1")
            .acknowledging(&["hostile-ch-1"]),
        post()
            .key(WRITE_KEY)
            .header("Content-Type", "application/json")
            .header("Transfer-Encoding", "chunked")
            .header("Content-Length", "5")
            .body("0\r\n\r\nGET /v1/query HTTP/1.1\r\n\r\n")
            .raw_framing()
            .expect("request smuggling", 400, ""),
        post()
            .key(WRITE_KEY)
            .header("X-Big", "x".repeat(256 * 1024))
            .json("[]")
            .expect("a huge header", 431, ""),
    ];
    let many_headers = (0..200).fold(post().key(WRITE_KEY), |request, n| {
        request.header(&format!("X-H{n}"), "v")
    });
    cases.push(many_headers.json("[]").expect("too many headers", 431, ""));
    cases
}

fn pixel_cases() -> Vec<Case> {
    let pixel = |query: &str| request("GET", format!("/i?{query}"));
    vec![
        pixel(&format!("k={WRITE_KEY}&e=click&uid=u&eid=hostile-px-1"))
            .expect("a pixel", 200, "GIF89a")
            .acknowledging(&["hostile-px-1"]),
        pixel("e=click&uid=u").expect(
            "no `k`: Snowplow's form, without an app id",
            401,
            "app id (aid)",
        ),
        pixel(&format!("k={WRITE_KEY}&e=click&uid=%C3%28")).expect(
            "a pixel, not UTF-8",
            200,
            "GIF89a",
        ),
        pixel(&format!("k={WRITE_KEY}&e=purchase&uid=u&revenue=1e400")).expect(
            "a pixel's huge number",
            200,
            "GIF89a",
        ),
        pixel(&format!(
            "k={WRITE_KEY}&e=click&uid=u&url={}",
            "a".repeat(4000)
        ))
        .expect("a long pixel", 200, "GIF89a"),
        pixel(&format!("k={WRITE_KEY}&%zz=%ff&&&==")).expect("a mangled query", 200, "GIF89a"),
    ]
}

/// 64 MB of spaces, gzip: about 64 KB on the wire.
fn gzip_bomb() -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&vec![b' '; 64 << 20]).unwrap();
    encoder.finish().unwrap()
}

fn tracker_cases() -> Vec<Case> {
    let segment = |path: &str| {
        request("POST", path.to_owned()).header(
            "Authorization",
            format!("Basic {}", base64_text(&format!("{WRITE_KEY}:"))),
        )
    };
    let snowplow = || request("POST", "/com.snowplowanalytics.snowplow/tp2");
    let payload = |events: &str| {
        format!(
            r#"{{"schema":"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4","data":[{events}]}}"#
        )
    };
    let call =
        |id: &str| format!(r#"{{"type":"track","event":"click","userId":"u","messageId":"{id}"}}"#);
    let many_junk = vec![r#"{"type":"track"}"#; 10_000].join(",");
    // 2,000 leaves under a 6,000-character key (28 KB, under the 32 KB an event may be): each
    // leaf was refused with its whole path and a suggestion, megabytes of reply.
    let deep_leaves: Vec<String> = (0..2_000).map(|i| format!(r#""{i}":{i}"#)).collect();
    let deep_call = format!(
        r#"{{"type":"track","event":"click","userId":"u","properties":{{"{}":{{{}}}}}}}"#,
        "k".repeat(6_000),
        deep_leaves.join(",")
    );
    let wide_leaves: Vec<String> = (0..800).map(|i| format!(r#""unknown_{i}":{i}"#)).collect();
    let wide_call = format!(
        r#"{{"type":"track","event":"click","userId":"u","properties":{{{}}}}}"#,
        wide_leaves.join(",")
    );
    let many_valid = vec![r#"{"type":"track","event":"click","userId":"u"}"#; 10_000].join(",");
    // Each refused naming its call type whole: 150 KB of reasons for a 150 KB request.
    let long_type = format!(r#"{{"type":"{}","userId":"u"}}"#, "t".repeat(5_000));
    let long_types = vec![long_type.as_str(); 30].join(",");
    vec![
        segment("/v1/batch")
            .json(format!(r#"{{"batch":[{}]}}"#, call("hostile-seg-1")))
            .expect("a Segment batch", 200, "\"success\":true")
            .acknowledging(&["hostile-seg-1"]),
        segment("/v1/batch")
            .header("Content-Encoding", "gzip")
            .json(gzip_bomb())
            .expect("a gzip bomb to Segment", 413, "once decompressed"),
        segment("/v1/batch")
            .json(format!(r#"{{"batch":[{many_junk}]}}"#))
            .expect("10,000 invalid calls", 400, "\"code\":\"missing_field\"")
            .max_reply(2_000),
        segment("/v1/batch")
            .json(format!(r#"{{"batch":[{deep_call}]}}"#))
            .expect("2,000 properties under a 6,000-character key", 400, "unknown_tag")
            .max_reply(2_000),
        // Together their reasons made a reject record over the log's limit: a 503 the SDK
        // retried forever, after the valid call had been stored.
        segment("/v1/batch")
            .json(format!(
                r#"{{"batch":[{},{}]}}"#,
                vec![deep_call.as_str(); 16].join(","),
                call("hostile-seg-2")
            ))
            .expect("16 such calls and a valid one", 200, "\"success\":true")
            .max_reply(8_000)
            .acknowledging(&["hostile-seg-2"]),
        segment("/v1/batch")
            .json(format!(r#"{{"batch":[{wide_call}]}}"#))
            .expect("800 unknown properties", 400, "more problems with this event")
            .max_reply(4_000),
        segment("/v1/batch")
            .json(format!(r#"{{"batch":[{many_valid}]}}"#))
            .expect("10,000 valid calls", 200, "\"accepted\":10000"),
        segment("/v1/track")
            .header("Content-Type", "application/xml")
            .body(call("hostile-seg-xml"))
            .expect("a Segment call as XML", 415, "unsupported_media_type"),
        segment("/v1/batch")
            .json(format!(r#"{{"batch":[{long_types}]}}"#))
            .expect("30 calls of a 5,000-character type", 400, "unknown_call")
            .max_reply(16_000),
        segment("/v1/batch")
            .json("[1, 2, 3]")
            .expect("not a batch", 400, "not a Segment batch"),
        segment("/v1/batch")
            .json(format!(r#"{{"batch":[],"context":{{"pad":"{}"}}}}"#, "x".repeat(5_000)))
            .expect("a batch context to multiply", 400, "batch_context_too_large"),
        request("POST", "/v1/batch")
            .json(format!(r#"{{"batch":[{}],"writeKey":"guess"}}"#, call("x")))
            .expect("a guessed writeKey", 401, "writeKey"),
        segment("/v1/track")
            .json(r#"{"event":"click","userId":{"nested":"id"}}"#)
            .expect("a user id that is an object", 400, "must be a string"),
        segment("/v1/track")
            .json(r#"{"event":"click","userId":"u","originalTimestamp":"2026-01-01T00:00:00Z","sentAt":"-9999-01-01T00:00:00Z"}"#)
            .expect("clocks too far apart", 400, "invalid_time"),
        snowplow()
            .json(payload(&format!(r#"{{"e":"pv","aid":"{WRITE_KEY}","uid":"u","url":"/","eid":"hostile-sp-1"}}"#)))
            .expect("a Snowplow event", 200, "ok")
            .acknowledging(&["hostile-sp-1"]),
        snowplow()
            .json(payload(&format!(r#"{{"e":"ue","aid":"{WRITE_KEY}","uid":"u","ue_px":"%%%%"}}"#)))
            .expect("malformed base64", 400, "not base64url"),
        snowplow()
            .json(payload(&format!(r#"{{"e":"pv","aid":"{WRITE_KEY}","uid":["u"],"url":"/"}}"#)))
            .expect("wrong types in payload_data", 400, "wrong_type"),
        snowplow()
            .json(payload(r#"{"e":"pv","aid":"not-a-key","uid":"u"}"#))
            .expect("an app id that is no key", 401, "app id (aid)"),
        snowplow()
            .json(r#"{"schema":"iglu:com.acme/x/jsonschema/1-0-0","data":[{}]}"#)
            .expect("another schema", 400, "unknown_schema"),
        snowplow()
            .header("Content-Encoding", "gzip")
            .json(gzip_bomb())
            .expect("a gzip bomb to Snowplow", 413, "once decompressed"),
        request("GET", format!("/i?e=ue&aid={WRITE_KEY}&uid=u&ue_px=eyJ9"))
            .expect("a truncated self-describing event", 400, "invalid_json"),
        request("GET", format!("/i?e=pv&aid={WRITE_KEY}&uid=u&uid=v"))
            .expect("a field twice", 400, "given twice"),
        request("OPTIONS", "/com.snowplowanalytics.snowplow/tp2")
            .header("Origin", "https://shop.example")
            .header("Access-Control-Request-Method", "POST")
            .expect("Snowplow's preflight", 200, ""),
    ]
}

/// Standard base64, for HTTP Basic.
fn base64_text(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn query_cases() -> Vec<Case> {
    let query = |params: &str| request("GET", format!("/v1/query?{params}")).key(READ_KEY);
    let many: Vec<String> = (1..=40).map(|n| format!("p{n}(latency_ms)")).collect();
    let many = format!("view=latency_by_type&measures={}", many.join(","));
    vec![
        request("GET", "/v1/query?view=events_by_type").expect("no key", 401, "missing"),
        request("GET", "/v1/query?view=events_by_type")
            .key(WRITE_KEY)
            .expect("write key reads", 403, "lacks the read scope"),
        query("").expect("no view", 400, "name a view"),
        query("view=nope").expect("unknown view", 400, "no view 'nope'"),
        query("view=%3Cscript%3E").expect("markup as a view", 400, "no view '<script>'"),
        query("view=events_by_type&from=-9223372036854775808&to=9223372036854775807").expect(
            "the whole i64 range",
            400,
            "outside the times Tally reads",
        ),
        query("view=events_by_type&from=9223372036854775807").expect(
            "from past year 9999",
            400,
            "outside the times Tally reads",
        ),
        query("view=events_by_type&from=2000&to=1000").expect("from after to", 400, "is after"),
        query("view=events_by_type&from=0&to=253402300799999").expect(
            "ten thousand years",
            400,
            "more than the 366.0 days",
        ),
        query("view=events_by_type&from=yesterday").expect("from in words", 400, "neither RFC"),
        query("view=events_by_type&granularity=week").expect("week", 400, "unknown granularity"),
        query("view=events_by_type&granularity=second").expect(
            "second",
            400,
            "unknown granularity",
        ),
        query("view=events_by_type&measures=count,count,count").expect(
            "a measure twice",
            400,
            "names 'count' twice",
        ),
        query(&many).expect("40 measures", 400, "at most 32"),
        query("view=events_by_type&group_by=os_type,os_type").expect(
            "a dimension twice",
            400,
            "names 'os_type' twice",
        ),
        query("view=events_by_type&group_by=colour").expect(
            "no such dimension",
            400,
            "no dimension",
        ),
        query("view=events_by_type&filter=os_type").expect("a bare filter", 400, "dimension=value"),
        query("view=events_by_type&filter=os_type=ios,os_type=android").expect(
            "a dimension filtered twice",
            400,
            "names 'os_type' twice",
        ),
        query("view=events_by_type&measures=sum(").expect("half a measure", 400, "is not one of"),
        query("view=latency_by_type&measures=p100(latency_ms)").expect(
            "p100",
            400,
            "is not one of",
        ),
        query("view=latency_by_type&measures=p0(latency_ms)").expect("p0", 400, "is not one of"),
        query("view=events_by_type&measures=sum(revenue)").expect(
            "a measure the view lacks",
            400,
            "cannot answer",
        ),
        query("view=events_by_type&view=latency_by_type").expect(
            "a parameter twice",
            400,
            "duplicate field",
        ),
        query("view=events_by_type&filter=os_type=ios&filter=os_type!=linux").expect(
            "a dimension filtered twice, in two parameters",
            400,
            "names 'os_type' twice",
        ),
        query("view=events_by_type&filter=os_type!=ios&filter=event_type=click|page_view").expect(
            "not-equal and a value list",
            200,
            "rows",
        ),
        query(&format!(
            "view=events_by_type&filter=os_type={}",
            vec!["x"; 5_000].join("|")
        ))
        .expect("a value list of 5,000", 200, "rows"),
        query("view=events_by_type&groupby=os_type").expect(
            "a misspelt parameter",
            400,
            "unknown parameter `groupby`",
        ),
        query("view=events_by_type&measures=").expect("no measures: the defaults", 200, "rows"),
        query("view=events_by_type&granularity=all&group_by=event_type").expect(
            "a whole day",
            200,
            "rows",
        ),
    ]
}

fn seed_cases() -> Vec<Case> {
    let seed = |route: &str, params: &str| {
        request("GET", format!("/v1/events/{route}?{params}")).key(READ_KEY)
    };
    vec![
        seed(
            "search",
            "start_time=9223372036854775&end_time=9223372036854775",
        )
        .expect(
            "search past year 9999",
            400,
            "outside the times Tally reads",
        ),
        seed(
            "count",
            "start_time=-9223372036854775808&end_time=9223372036854775807",
        )
        .expect(
            "count over all of i64",
            400,
            "outside the times Tally reads",
        ),
        seed("count", "start_time=0&end_time=2678401").expect("32 days", 400, "31.0 days"),
        seed("count", "end_time=10").expect("no start", 400, "start_time is required"),
        seed("count", "start_time=x&end_time=10").expect("start in words", 400, "not unix seconds"),
        seed("search", "start_time=0&end_time=10&limit=0").expect("limit 0", 400, "limit must be"),
        seed(
            "search",
            "start_time=0&end_time=10&limit=100000000000000000000",
        )
        .expect("a limit past u64", 400, "query string"),
        seed("search", "start_time=0&end_time=10&cursor=zzz").expect(
            "a forged cursor",
            400,
            "cursor 'zzz'",
        ),
        seed("search", "start_time=0&end_time=3600").expect("a search", 200, "SUCCESS"),
        seed("search", "start_time=0&end_time=3600&q=url:(").expect(
            "a query that is not one",
            400,
            "is not a query",
        ),
        seed(
            "search",
            "start_time=0&end_time=3600&q=latency_ms:[0%20TO%209]",
        )
        .expect("a range in q", 400, "ranges are not supported"),
        seed("search", "start_time=0&end_time=3600&q=url:/a.*b/").expect(
            "a regular expression in q",
            400,
            "regular expressions are not supported",
        ),
        seed(
            "search",
            &format!("start_time=0&end_time=3600&q={}", "a".repeat(2_001)),
        )
        .expect("a 2 KB query", 400, "q is too large"),
        seed(
            "search",
            &format!(
                "start_time=0&end_time=3600&q={}",
                (0..65)
                    .map(|i| format!("w{i}"))
                    .collect::<Vec<_>>()
                    .join("%20OR%20")
            ),
        )
        .expect("65 terms", 400, "q is too large"),
        seed(
            "search",
            "start_time=0&end_time=3600&q=*&cursor=o:9990&limit=100",
        )
        .expect("paging past 10,000 hits", 400, "at most 10000 hits"),
        seed("search", "start_time=0&end_time=3600&q=*&cursor=o:-1").expect(
            "a forged search cursor",
            400,
            "cursor 'o:-1'",
        ),
        seed(
            "search",
            "start_time=0&end_time=3600&q=os:ios%20AND%20url:/a*",
        )
        .expect("a full-text search", 200, "\"total\":0"),
        seed("count", "start_time=0&end_time=3600").expect("a count", 200, "SUCCESS"),
    ]
}

fn governance_cases() -> Vec<Case> {
    let put = |path: &str, body: &str| request("PUT", path.to_owned()).json(body.to_owned());
    vec![
        put(
            "/v1/governance/tags/aaa_hijack",
            r#"{"type":"string","aliases":["os"]}"#,
        )
        .key(ADMIN_KEY)
        .expect("an alias another tag owns", 400, "alias 'os' is claimed"),
        put("/v1/governance/tags/..%2F..%2Fetc", r#"{"type":"string"}"#)
            .key(ADMIN_KEY)
            .expect("a path as a tag", 400, "is not allowed"),
        put(
            "/v1/governance/tags/%3Cimg%20src%3Dx%3E",
            r#"{"type":"string"}"#,
        )
        .key(ADMIN_KEY)
        .expect("markup as a tag", 400, "is not allowed"),
        put("/v1/governance/event-types/%20", "{}")
            .key(ADMIN_KEY)
            .expect("a space as an event type", 400, "is not allowed"),
        put("/v1/governance/sources/a%2Fb", r#"{"event_types":["*"]}"#)
            .key(ADMIN_KEY)
            .expect("a path as a source", 400, "is not allowed"),
        put("/v1/governance/tags/fine", r#"{"type":"#).expect(
            "a broken body without a key",
            401,
            "missing",
        ),
        put("/v1/governance/tags/fine", r#"{"type":"#)
            .key(ADMIN_KEY)
            .expect("a broken body", 400, "not a valid tag (JSON)"),
        put(
            "/v1/governance/tags/fine",
            r#"{"type":"string","type":"number"}"#,
        )
        .key(ADMIN_KEY)
        .expect("a field twice", 400, "duplicate field"),
        put(
            "/v1/governance/tags/fine",
            &format!(
                r#"{{"type":"string","aliases":["{}"]}}"#,
                "a".repeat(100 * 1024)
            ),
        )
        .key(ADMIN_KEY)
        .expect("a body too large", 413, "at most 65536 bytes"),
        put("/v1/governance/tags/fine", r#"{"type":"string"}"#)
            .key(READ_KEY)
            .expect("a read key changes", 403, "lacks the admin scope"),
        put(
            "/v1/governance/views/v",
            r#"{"name":"v","events":["*"],"measures":["median(x)"],"granularity":"minute"}"#,
        )
        .key(ADMIN_KEY)
        .expect("an unknown measure", 400, "unknown measure function"),
        put(
            "/v1/governance/views/v",
            r#"{"name":"w","events":["*"],"measures":["count"],"granularity":"minute"}"#,
        )
        .key(ADMIN_KEY)
        .expect("a view named twice", 400, "names view 'w' but the path 'v'"),
        request("POST", "/v1/governance/keys")
            .key(ADMIN_KEY)
            .json(r#"{"source":"s","scopes":[]}"#)
            .expect("a key with no scope", 400, "at least one scope"),
        request("POST", "/v1/governance/keys")
            .key(ADMIN_KEY)
            .json(r#"{"source":"a/b","scopes":["read"]}"#)
            .expect("a path as a key name", 400, "is not allowed"),
        request("POST", "/v1/governance/keys/ghost/rotate")
            .key(ADMIN_KEY)
            .expect("rotating no key", 404, "no key named 'ghost'"),
        request(
            "POST",
            "/v1/governance/keys/demo-dashboard/rotate?grace_secs=99999999",
        )
        .key(ADMIN_KEY)
        .expect("a grace of three years", 400, "at most 2592000"),
        request("GET", "/v1/governance/rejected?limit=abc")
            .key(READ_KEY)
            .expect("a limit in words", 400, "query string"),
        request("DELETE", "/v1/governance/tags/ghost")
            .key(ADMIN_KEY)
            .expect("deleting no tag", 404, "no tag 'ghost'"),
        request("GET", "/v1/governance")
            .key(READ_KEY)
            .expect("the overview", 200, "\"id\""),
        request("GET", "/v1/events/search?evnt_type=click")
            .key(READ_KEY)
            .expect("a misspelt search parameter", 400, "unknown field"),
    ]
}

fn other_cases() -> Vec<Case> {
    vec![
        request("GET", "/nope").expect("no such route", 404, "no route GET /nope"),
        request("GET", "/../../etc/passwd").expect("a path out of the root", 404, ""),
        request("GET", "/v1/query%00?view=x").expect("a NUL in the path", 404, ""),
        request("BREW", "/v1/events").expect("an unknown method", 405, ""),
        request("GET", "/healthz").expect("health", 200, ""),
        request("HEAD", "/healthz")
            .expect("HEAD on a GET route", 200, "")
            .max_reply(0),
        request("HEAD", "/v1/query?view=events_by_type")
            .expect("HEAD without a key", 401, "")
            .max_reply(0),
    ]
}

fn catalog() -> Vec<Case> {
    [
        ingest_cases(),
        pixel_cases(),
        tracker_cases(),
        query_cases(),
        seed_cases(),
        governance_cases(),
        other_cases(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn up(data_dir: &Path, limits: &[(&str, &str)]) -> Tally {
    let mut command = tally();
    command.env(
        "TALLY_INGEST_BODY_TIMEOUT_SECS",
        BODY_TIMEOUT_SECS.to_string(),
    );
    for (name, value) in limits {
        command.env(name, value);
    }
    Tally::up_with(data_dir, command)
}

#[test]
fn every_hostile_request_gets_its_answer_within_bounds_and_the_service_stays_whole() {
    let dir = tempfile::tempdir().unwrap();
    // The catalog's many 401s would trip the failed-authentication block; it has its own test.
    let server = up(
        dir.path(),
        &[("TALLY_LIMITS_AUTH_FAILURES_PER_MINUTE_PER_ADDRESS", "0")],
    );
    let cases = catalog();
    assert!(cases.len() >= 80, "the catalog has {} cases", cases.len());
    let mut failures = Vec::new();
    let mut acknowledged = Vec::new();
    let mut costliest = Vec::new();
    for case in &cases {
        let cpu_before = server.http_workers_cpu();
        let reply = send_raw(&server.address, &case.request);
        let cpu = server.http_workers_cpu().saturating_sub(cpu_before);
        costliest.push((cpu, case.name));
        let mut wrong = Vec::new();
        if cpu > case.max_cpu {
            wrong.push(format!("{cpu:?} of CPU (at most {:?})", case.max_cpu));
        }
        if reply.status != case.status {
            wrong.push(format!("status {} (want {})", reply.status, case.status));
        }
        if !reply.body.contains(case.reason) {
            wrong.push(format!("no {:?} in the reply", case.reason));
        }
        if reply.body.len() > case.max_reply_bytes {
            wrong.push(format!(
                "a reply of {} bytes (at most {})",
                reply.body.len(),
                case.max_reply_bytes
            ));
        }
        if reply.elapsed > case.max_time {
            wrong.push(format!("{:?} (at most {:?})", reply.elapsed, case.max_time));
        }
        if !wrong.is_empty() {
            let shown: String = reply.body.chars().take(300).collect();
            failures.push(format!(
                "{}: {}; reply: {shown}",
                case.name,
                wrong.join(", ")
            ));
        }
        acknowledged.extend(case.acknowledges.iter().cloned());
    }
    costliest.sort();
    eprintln!(
        "the costliest cases in CPU: {:?}",
        &costliest[costliest.len().saturating_sub(5)..]
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Still whole: healthy, ready, and every acknowledged event in the log, once.
    assert_eq!(server.http("GET", "/healthz", &[], "").0, 200);
    assert_eq!(server.http("GET", "/readyz", &[], "").0, 200);
    let logged = logged_event_ids(dir.path());
    for id in &acknowledged {
        assert_eq!(
            logged.iter().filter(|logged| *logged == id).count(),
            1,
            "{id} in the log once"
        );
    }
    assert_eq!(
        log_stats(dir.path())["events"]["records"].as_u64().unwrap(),
        server.accepted(),
        "the log holds what was acknowledged, nothing else"
    );
    // Whole-request refusals are counted by reason.
    for reason in [
        "unauthorized",
        "unsupported_media_type",
        "body_too_large",
        "body_timeout",
        "invalid_gzip",
        "batch_context_too_large",
    ] {
        assert!(
            server.metric(&format!(
                "tally_ingest_requests_refused_total{{reason=\"{reason}\"}}"
            )) > 0,
            "{reason} not counted"
        );
    }
}

#[test]
fn floods_get_429_with_retry_after_and_key_guessing_is_blocked() {
    let dir = tempfile::tempdir().unwrap();
    let server = up(
        dir.path(),
        &[
            ("TALLY_LIMITS_REQUESTS_PER_SECOND_PER_KEY", "20"),
            ("TALLY_LIMITS_REQUESTS_PER_SECOND_PER_ADDRESS", "1000"),
            ("TALLY_LIMITS_BURST_SECONDS", "1"),
            ("TALLY_LIMITS_AUTH_FAILURES_PER_MINUTE_PER_ADDRESS", "5"),
        ],
    );
    // One key, far past its 20 a second: some are refused, each saying when to come back.
    let query = request("GET", "/v1/query?view=events_by_type")
        .key(READ_KEY)
        .bytes();
    let replies: Vec<RawReply> = (0..100)
        .map(|_| send_raw(&server.address, &query))
        .collect();
    let refused: Vec<&RawReply> = replies.iter().filter(|r| r.status == 429).collect();
    assert!(!refused.is_empty(), "100 queries at once, none refused");
    assert!(
        replies.iter().all(|r| r.status == 200 || r.status == 429),
        "only answers or refusals"
    );
    assert!(
        refused[0]
            .body
            .contains("this API key made too many requests")
    );
    assert!(
        refused[0].head.contains("retry-after: 1"),
        "{}",
        refused[0].head
    );

    // Every place a tracker may put its key is charged to that key: 60 requests, each
    // past the 20 a second, are refused in part whichever way the key came.
    let basic = format!("Basic {}", base64_text(&format!("{WRITE_KEY}:")));
    let segment_call = r#"{"type":"track","event":"click","userId":"u"}"#;
    let snowplow_body = |aid: &str| {
        format!(
            r#"{{"schema":"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4","data":[{{"e":"pv","aid":"{aid}","uid":"u"}}]}}"#
        )
    };
    let sources = [
        (
            "Basic auth",
            request("POST", "/v1/track")
                .header("Authorization", basic.clone())
                .json(segment_call),
        ),
        (
            "the body's writeKey",
            request("POST", "/v1/batch").json(format!(
                r#"{{"batch":[{segment_call}],"writeKey":"{WRITE_KEY}"}}"#
            )),
        ),
        (
            "Snowplow's aid",
            request("POST", "/com.snowplowanalytics.snowplow/tp2").json(snowplow_body(WRITE_KEY)),
        ),
        (
            "Snowplow's aid in a query",
            request("GET", format!("/i?e=pv&aid={WRITE_KEY}&uid=u")),
        ),
        (
            "the /sp/<key>/ path",
            request(
                "POST",
                format!("/sp/{WRITE_KEY}/com.snowplowanalytics.snowplow/tp2"),
            )
            .json(snowplow_body("an-app")),
        ),
    ];
    for (source, sent) in sources {
        let sent = sent.bytes();
        let replies: Vec<RawReply> = (0..60).map(|_| send_raw(&server.address, &sent)).collect();
        let limited = replies.iter().filter(|r| r.status == 429).count();
        assert!(limited > 0, "{source}: 60 requests, none refused");
        let refused = replies.iter().find(|r| r.status == 429).unwrap();
        assert!(
            refused.head.contains("retry-after:"),
            "{source}: {}",
            refused.head
        );
        assert!(
            refused.body.contains("too many requests"),
            "{source}: {}",
            refused.body
        );
    }

    // Guessing keys: five failures a minute, then even the right key waits. A pixel's
    // unknown key counts, though the pixel still answers its GIF.
    for n in 0..3 {
        let guess = request("GET", "/v1/governance")
            .key(&format!("tk_guess{n:027}"))
            .bytes();
        assert_eq!(send_raw(&server.address, &guess).status, 401);
    }
    for n in 3..6 {
        let guess = request("GET", format!("/i?k=tk_guess{n:027}&e=click&uid=u")).bytes();
        assert_eq!(send_raw(&server.address, &guess).status, 200);
    }
    let right = request("GET", "/v1/governance").key(ADMIN_KEY).bytes();
    let blocked = send_raw(&server.address, &right);
    assert_eq!(blocked.status, 429, "{}", blocked.body);
    assert!(blocked.body.contains("failed authentication too often"));
    // Probes are never limited.
    assert_eq!(server.http("GET", "/healthz", &[], "").0, 200);
    for limit in ["key", "auth_failures"] {
        assert!(
            server.metric(&format!(
                "tally_http_rate_limited_total{{limit=\"{limit}\"}}"
            )) > 0,
            "{limit}"
        );
    }
    assert!(server.metric("tally_http_auth_failures_total") >= 6);
}

/// Opens a connection to `path` whose chunked body trickles a byte every 100 ms, and says
/// whether the server closed it within `patience`, while the body still came.
fn closed_while_trickling(address: &str, method: &str, path: &str, patience: Duration) -> bool {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: tally\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let started = std::time::Instant::now();
    let mut buffer = [0; 4096];
    while started.elapsed() < patience {
        if stream.write_all(b"1\r\n[\r\n").is_err() {
            return true;
        }
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return true,
            _ => {}
        }
    }
    false
}

#[test]
fn a_body_trickled_to_any_route_does_not_hold_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = up(dir.path(), &[]);
    // Each answered at once, then the rest of its body would be drained for as long as it
    // came: a connection (and a file descriptor) held for good, on every route.
    let routes = [
        ("GET", "/healthz".to_owned()),
        ("POST", "/nope".to_owned()),
        ("POST", "/v1/events".to_owned()),
        ("POST", "/v1/batch".to_owned()),
        ("GET", "/v1/query?view=events_by_type".to_owned()),
    ];
    let held: Vec<String> = std::thread::scope(|scope| {
        let trickles: Vec<_> = routes
            .iter()
            .map(|(method, path)| {
                let address = &server.address;
                let closed = scope.spawn(move || {
                    closed_while_trickling(address, method, path, Duration::from_secs(15))
                });
                (format!("{method} {path}"), closed)
            })
            .collect();
        trickles
            .into_iter()
            .filter_map(|(route, closed)| (!closed.join().unwrap()).then_some(route))
            .collect()
    });
    assert!(
        held.is_empty(),
        "connections held open while a body trickled: {held:?}"
    );
    // A body the route reads whole keeps its connection as usual.
    assert_eq!(server.http("GET", "/healthz", &[], "").0, 200);
}

#[test]
fn one_address_cannot_hold_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = up(dir.path(), &[("TALLY_LIMITS_CONNECTIONS_PER_ADDRESS", "8")]);
    // Eight connections held open without a request, as a slow client would.
    let held: Vec<std::net::TcpStream> = (0..8)
        .map(|_| std::net::TcpStream::connect(&server.address).unwrap())
        .collect();
    let health = request("GET", "/healthz").bytes();
    // The server counts a connection once a worker takes it: the ninth is refused then.
    server.wait_for(
        "a ninth connection to be refused",
        Duration::from_secs(10),
        |s| {
            let reply = send_raw(&s.address, &health);
            reply.status == 429 && reply.body.contains("more connections than the 8 allowed")
        },
    );
    drop(held);
    server.wait_for(
        "a connection to be served again",
        Duration::from_secs(10),
        |s| send_raw(&s.address, &health).status == 200,
    );
}

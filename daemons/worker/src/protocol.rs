//! The runner protocol: JSON lines between this process and `runner/pyoco_runner.py`, one
//! object per line with a `type` tag. The shim defines the same messages in one table
//! (`EVENTS` / `REQUESTS` there); `runner/protocol_samples.jsonl` holds messages captured from
//! a real run, decoded by the tests here and checked against that table by the shim's tests;
//! `runner/protocol_requests.jsonl` holds the request lines this side writes, checked the same
//! way.
//!
//! Decoding is tolerant, as the shim's callers were: unknown fields are ignored, an unknown
//! type decodes as `Event::Unknown`, and a field of the wrong type reads as absent instead of
//! losing the whole message (a lost `run_finished` would leave a run RUNNING).

use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The protocol version both sides must speak (`ready.protocol`).
pub const PROTOCOL: i64 = 1;

/// Worker → runner.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Run one flow: by name through the resolver, or built from `workflow_yaml`.
    Run {
        run_id: String,
        flow_name: String,
        params: Map<String, Value>,
        workflow_yaml: Option<String>,
    },
    /// Cancel a run (remembered if it has not arrived yet).
    Cancel {
        run_id: String,
    },
    Ping {
        seq: u64,
    },
    /// Exit after the current run (EOF on stdin means the same).
    Shutdown,
}

/// Runner → worker.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The handshake: the runner imported pyoco (and the resolver) and takes requests.
    Ready {
        #[serde(default, deserialize_with = "lenient")]
        pid: u32,
        #[serde(default, deserialize_with = "lenient")]
        python: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        python_executable: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        pyoco_version: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        protocol: Option<i64>,
        #[serde(default, deserialize_with = "lenient")]
        has_resolver: bool,
    },
    /// The runner cannot work (pyoco missing or too old, bad resolver) and exits.
    Fatal {
        #[serde(default, deserialize_with = "lenient")]
        kind: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        message: Option<String>,
    },
    /// The flow was built; its task names.
    RunStarted {
        #[serde(default, deserialize_with = "lenient")]
        run_id: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        flow_name: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        tasks: Vec<Value>,
    },
    /// A task changed state.
    Task {
        #[serde(default, deserialize_with = "lenient")]
        run_id: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        task: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        state: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        ts: Option<f64>,
        /// Present (maybe null) on SUCCEEDED.
        #[serde(default, deserialize_with = "present")]
        duration_ms: Option<Value>,
        #[serde(default, deserialize_with = "lenient")]
        error: Option<String>,
    },
    /// Output a task printed (chunked, bounded per run).
    Log {
        #[serde(default, deserialize_with = "lenient")]
        run_id: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        task: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        stream: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        text: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        truncated: bool,
    },
    /// The run ended; the final task states and records.
    RunFinished(Box<RunFinished>),
    CancelAck {
        #[serde(default, deserialize_with = "lenient")]
        run_id: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        active: bool,
    },
    Pong {
        #[serde(default)]
        seq: Value,
    },
    /// A request was refused (`bad_request`, `busy`).
    Error {
        #[serde(default, deserialize_with = "lenient")]
        kind: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        message: Option<String>,
        #[serde(default, deserialize_with = "lenient")]
        run_id: Option<String>,
    },
    /// A type this worker does not know (a newer shim): ignored.
    #[serde(other)]
    Unknown,
}

/// The `run_finished` event (boxed: it is much larger than the others).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RunFinished {
    #[serde(default, deserialize_with = "lenient")]
    pub run_id: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub error: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub error_kind: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub exc_type: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub traceback: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub flow_name: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub tasks: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "lenient")]
    pub task_records: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "lenient")]
    pub task_records_truncated: bool,
    #[serde(default, deserialize_with = "lenient")]
    pub start_time: Option<f64>,
    #[serde(default, deserialize_with = "lenient")]
    pub end_time: Option<f64>,
}

/// A field of the wrong type reads as its default instead of failing the message.
fn lenient<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned + Default,
{
    let v = Value::deserialize(d)?;
    Ok(serde_json::from_value(v).unwrap_or_default())
}

/// `Some(value)` whenever the field is present, null included.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Why a protocol line was not decoded.
#[derive(Debug)]
pub struct BadLine(pub String);

impl Event {
    /// Decodes one line of the runner's protocol channel.
    pub fn from_line(line: &str) -> Result<Event, BadLine> {
        match serde_json::from_str::<Value>(line) {
            Ok(v @ Value::Object(_)) => {
                if !v.get("type").is_some_and(Value::is_string) {
                    return Err(BadLine("no string 'type'".into()));
                }
                Event::deserialize(v).map_err(|e| BadLine(e.to_string()))
            }
            Ok(_) => Err(BadLine("not a JSON object".into())),
            Err(e) => Err(BadLine(e.to_string())),
        }
    }
}

impl Request {
    /// One protocol line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("requests are plain JSON");
        line.push(b'\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Messages captured from the shim on a real run (see the module doc).
    const SAMPLES: &str = include_str!("../runner/protocol_samples.jsonl");

    fn samples() -> Vec<(Value, Event)> {
        SAMPLES
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let ev = Event::from_line(l).unwrap_or_else(|e| panic!("{l}: {e:?}"));
                (serde_json::from_str(l).unwrap(), ev)
            })
            .collect()
    }

    #[test]
    fn every_captured_shim_message_decodes_to_its_variant() {
        let all = samples();
        let mut seen = std::collections::BTreeSet::new();
        for (raw, ev) in &all {
            let t = raw["type"].as_str().unwrap();
            seen.insert(t.to_string());
            let ok = match (t, ev) {
                (
                    "ready",
                    Event::Ready {
                        pid,
                        protocol,
                        pyoco_version,
                        ..
                    },
                ) => *pid > 0 && *protocol == Some(PROTOCOL) && pyoco_version.is_some(),
                ("fatal", Event::Fatal { kind, message }) => kind.is_some() && message.is_some(),
                ("run_started", Event::RunStarted { run_id, tasks, .. }) => {
                    run_id.is_some() && !tasks.is_empty()
                }
                (
                    "task",
                    Event::Task {
                        task, state, ts, ..
                    },
                ) => task.is_some() && state.is_some() && ts.is_some(),
                ("log", Event::Log { text, .. }) => text.is_some(),
                ("run_finished", Event::RunFinished(f)) => {
                    f.status.is_some() && f.tasks.is_some() && f.end_time.is_some()
                }
                ("cancel_ack", Event::CancelAck { run_id, .. }) => run_id.is_some(),
                ("pong", Event::Pong { seq }) => !seq.is_null(),
                ("error", Event::Error { kind, message, .. }) => {
                    kind.is_some() && message.is_some()
                }
                _ => false,
            };
            assert!(ok, "{raw} decoded as {ev:?}");
        }
        let want = [
            "ready",
            "fatal",
            "run_started",
            "task",
            "log",
            "run_finished",
            "cancel_ack",
            "pong",
            "error",
        ];
        for t in want {
            assert!(seen.contains(t), "no captured sample of {t}");
        }
    }

    #[test]
    fn captured_run_finished_keeps_its_fields() {
        let f = samples()
            .into_iter()
            .find_map(|(raw, ev)| match ev {
                Event::RunFinished(f) if raw["status"] == "COMPLETED" => Some(f),
                _ => None,
            })
            .expect("a completed run in the samples");
        assert!(f.error.is_none() && f.error_kind.is_none());
        assert!(f.task_records.as_ref().is_some_and(|r| !r.is_empty()));
        assert!(f.start_time.is_some());
    }

    #[test]
    fn tolerant_of_unknown_fields_types_and_wrong_field_types() {
        let ev = Event::from_line(r#"{"type":"task","run_id":"r","task":"t","state":"SUCCEEDED","ts":"soon","duration_ms":null,"new":1}"#).unwrap();
        assert_eq!(
            ev,
            Event::Task {
                run_id: Some("r".into()),
                task: Some("t".into()),
                state: Some("SUCCEEDED".into()),
                ts: None,
                duration_ms: Some(Value::Null),
                error: None,
            }
        );
        assert_eq!(
            Event::from_line(r#"{"type":"telemetry","x":1}"#).unwrap(),
            Event::Unknown
        );
        let Event::RunFinished(f) =
            Event::from_line(r#"{"type":"run_finished","run_id":"r","tasks":[1]}"#).unwrap()
        else {
            panic!("not run_finished")
        };
        assert_eq!((f.run_id.as_deref(), f.tasks), (Some("r"), None));
        assert!(Event::from_line("[1]").is_err());
        assert!(Event::from_line(r#"{"type":1}"#).is_err());
        assert!(Event::from_line("print output").is_err());
    }

    /// The requests as the shim's tests check them against its `REQUESTS` table.
    const REQUEST_LINES: &str = include_str!("../runner/protocol_requests.jsonl");

    #[test]
    fn requests_are_the_lines_the_shim_reads() {
        let mut params = Map::new();
        params.insert("x".into(), json!(1));
        let all = [
            Request::Run {
                run_id: "r".into(),
                flow_name: "f".into(),
                params,
                workflow_yaml: None,
            },
            Request::Cancel { run_id: "r".into() },
            Request::Ping { seq: 3 },
            Request::Shutdown,
        ];
        let ours: Vec<u8> = all.iter().flat_map(Request::to_line).collect();
        assert_eq!(String::from_utf8(ours).unwrap(), REQUEST_LINES);
    }
}

//! A whole stream entry as Redis hands it over → `parse_entry`: the job its `job` field holds,
//! or poison that keeps the entry's place and says why. Input: a mode byte, then either the
//! `job` field's bytes (even mode), or any id, fields and reply values (odd mode, read with
//! `arbitrary`). Never a panic.
#![no_main]

use notify_relay_engine::fuzzing::{parse_entry, Entry, Job, RedisValue, StreamId};
use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use notify_relay_fuzz::{assert_bounded, take_u8};
use std::collections::HashMap;

#[derive(Arbitrary, Debug)]
enum Val {
    Nil,
    Okay,
    Int(i64),
    Double(f64),
    Boolean(bool),
    Simple(String),
    Bulk(Vec<u8>),
    Array(Vec<Val>),
    Map(Vec<(Val, Val)>),
}

impl Val {
    fn redis(self) -> RedisValue {
        match self {
            Val::Nil => RedisValue::Nil,
            Val::Okay => RedisValue::Okay,
            Val::Int(i) => RedisValue::Int(i),
            Val::Double(d) => RedisValue::Double(d),
            Val::Boolean(b) => RedisValue::Boolean(b),
            Val::Simple(s) => RedisValue::SimpleString(s),
            Val::Bulk(b) => RedisValue::BulkString(b),
            Val::Array(a) => RedisValue::Array(a.into_iter().map(Val::redis).collect()),
            Val::Map(m) => RedisValue::Map(m.into_iter().map(|(k, v)| (k.redis(), v.redis())).collect()),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    shard: u16,
    id: String,
    /// The `job` field's bytes, when it is a bulk string (the usual case).
    job: Option<Vec<u8>>,
    fields: Vec<(String, Val)>,
}

fuzz_target!(|data: &[u8]| {
    let (mode, rest) = take_u8(data);
    let input = match mode % 2 {
        0 => Input { shard: 0, id: "1700000000000-0".into(), job: Some(rest.to_vec()), fields: Vec::new() },
        _ => match Input::arbitrary_take_rest(Unstructured::new(rest)) {
            Ok(input) => input,
            Err(_) => return,
        },
    };
    let mut map: HashMap<String, RedisValue> = input.fields.into_iter().map(|(k, v)| (k, v.redis())).collect();
    if let Some(job) = input.job {
        map.insert("job".into(), RedisValue::BulkString(job));
    }
    let (expected, target) = match map.get("job") {
        Some(RedisValue::BulkString(raw)) => (Job::from_json(raw).ok(), Job::target_of(raw)),
        _ => (None, None),
    };
    let id = StreamId { id: input.id.clone(), map, ..Default::default() };
    match (parse_entry(input.shard, id), expected) {
        (Entry::Job(at, job), Some(expected)) => {
            assert_eq!((at.shard, at.id.as_str()), (input.shard, input.id.as_str()));
            assert_eq!(job, expected);
        }
        (Entry::Poison { entry, reason, target: named, .. }, None) => {
            assert_eq!((entry.shard, entry.id.as_str()), (input.shard, input.id.as_str()));
            // Poison that still names its target fails that target in Postgres.
            assert_eq!(named, target);
            assert!(!reason.is_empty());
            assert_bounded(&reason);
        }
        (entry, expected) => panic!("{entry:?} where {expected:?} was expected"),
    }
});

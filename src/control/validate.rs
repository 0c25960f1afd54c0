//! Every check a request packet passes before the daemon acts on it, as one
//! pure function: size, control data, fd count, strict JSON, hello-first,
//! and the kind of every fd. The daemon closes a refused packet's fds; this
//! module only decides. (It is also what the protocol fuzz target drives.)

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::proto::{ErrorBody, ErrorCode, FdRole, Request};
use super::wire::{MAX_FDS, MAX_MESSAGE};
use crate::util::fd::FdKind;

/// A received packet as the checks see it: its bytes, its flags and the
/// kinds of the fds that came with it.
#[derive(Debug, Clone)]
pub struct PacketMeta<'a> {
    /// The bytes.
    pub data: &'a [u8],
    /// Larger than [`MAX_MESSAGE`].
    pub truncated: bool,
    /// Control data cut.
    pub ctrl_truncated: bool,
    /// Kind of each received fd, in order.
    pub fd_kinds: &'a [FdKind],
    /// Whether this connection has said hello.
    pub hello_done: bool,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
    ErrorBody {
        code,
        message: message.into(),
    }
}

/// Checks a packet; returns the request it carries or the error to reply.
pub fn validate(p: &PacketMeta<'_>) -> Result<Request, ErrorBody> {
    if p.truncated {
        return Err(refuse(
            ErrorCode::TooLarge,
            format!("the packet is larger than {MAX_MESSAGE} bytes and was dropped"),
        ));
    }
    if p.ctrl_truncated {
        return Err(refuse(
            ErrorCode::Truncated,
            "the packet's control data was cut; its fds were closed",
        ));
    }
    let n = p.fd_kinds.len();
    if n > MAX_FDS {
        return Err(refuse(
            ErrorCode::BadFdCount,
            format!("{n} fds in one packet; at most {MAX_FDS}; all were closed"),
        ));
    }
    let req = decode_request(p.data)?;
    if !p.hello_done && !matches!(req, Request::Hello { .. }) {
        return Err(refuse(
            ErrorCode::HelloRequired,
            "say hello first: {\"op\":\"hello\",\"version\":1}",
        ));
    }
    match &req {
        Request::Attach { fds: roles, .. } => check_attach_fds(roles, p.fd_kinds)?,
        _ if n > 0 => {
            return Err(refuse(
                ErrorCode::BadFdCount,
                format!("this request takes no fds, and {n} came with it; they were closed"),
            ))
        }
        _ => {}
    }
    Ok(req)
}

/// An attach carries exactly the VMM's irq and resample eventfds, in that
/// order, and never a VM fd.
pub fn check_attach_fds(roles: &[FdRole], kinds: &[FdKind]) -> Result<(), ErrorBody> {
    if roles.contains(&FdRole::Vm) || kinds.contains(&FdKind::KvmVm) {
        return Err(refuse(
            ErrorCode::VmFdRefused,
            "a KVM VM fd was sent; KVM refuses VM ioctls (KVM_IRQFD included) from any process but the VM's creator, so intxd never takes one: register KVM_IRQFD with KVM_IRQFD_FLAG_RESAMPLE yourself and send its two eventfds",
        ));
    }
    if roles != [FdRole::Irq, FdRole::Resample] || kinds.len() != 2 {
        return Err(refuse(
            ErrorCode::BadFdCount,
            format!(
                "attach takes exactly two fds, declared as \"fds\": [\"irq\", \"resample\"]; got {} fds declared as {:?}; all were closed",
                kinds.len(),
                roles
            ),
        ));
    }
    for (role, kind) in ["irq", "resample"].iter().zip(kinds) {
        if *kind != FdKind::EventFd {
            return Err(refuse(
                ErrorCode::BadFdKind,
                format!(
                    "the {role} fd must be an eventfd, and it is {}; all fds were closed",
                    kind.describe()
                ),
            ));
        }
    }
    Ok(())
}

/// Decodes a request packet, mapping failures to their error codes. This is
/// the one place that decides what a request may look like: one JSON object
/// (not an array, a string, a number or `null`), each key once, and every
/// field a string, a number, a boolean, `null` or an array of those (no
/// request field is an object, so an enum value in serde's object form,
/// `"mode":{"relay":null}`, is refused); then the fields `Request` names,
/// with their types.
pub fn decode_request(bytes: &[u8]) -> Result<Request, ErrorBody> {
    if bytes.is_empty() {
        return Err(refuse(
            ErrorCode::EmptyMessage,
            "empty packet; send one JSON object per packet",
        ));
    }
    let bad_request = |what: String| {
        refuse(
            ErrorCode::BadRequest,
            format!("not a valid request: {what}; see docs/protocol.md"),
        )
    };
    let v = serde_json::from_slice::<Strict>(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => bad_request(e.to_string()),
        _ => refuse(ErrorCode::BadJson, format!("not a JSON object: {e}")),
    })?;
    let fields = match v.0 {
        Value::Object(m) => m,
        other => {
            return Err(bad_request(format!(
                "a request is one JSON object, and this is {}",
                kind(&other)
            )))
        }
    };
    for (key, value) in &fields {
        let nested = match value {
            Value::Object(_) => Some(format!("it is {}", kind(value))),
            Value::Array(items) => items
                .iter()
                .position(|i| matches!(i, Value::Object(_) | Value::Array(_)))
                .map(|at| format!("its element {at} is {}", kind(&items[at]))),
            _ => None,
        };
        if let Some(nested) = nested {
            return Err(bad_request(format!(
                "`{}` must be a string, a number, a boolean, null or an array of those, and {nested} (enum values are plain strings, e.g. \"mode\":\"relay\")",
                cut(key)
            )));
        }
    }
    serde_json::from_value(Value::Object(fields)).map_err(|e| bad_request(e.to_string()))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A key as an error message quotes it: at most 64 characters.
fn cut(key: &str) -> String {
    match key.char_indices().nth(64) {
        Some((at, _)) => format!("{}...", &key[..at]),
        None => key.to_string(),
    }
}

/// A JSON value read with every object's keys checked for repeats
/// (`serde_json::Value` keeps the last of them).
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if fields.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "key `{}` appears more than once; give each key once",
                    cut(&key)
                )));
            }
            fields.insert(key, value);
        }
        Ok(Value::Object(fields))
    }
}

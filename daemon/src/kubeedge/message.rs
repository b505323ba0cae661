//! beehive's `model.Message`, the one JSON object carried by every CloudHub WebSocket text frame
//! (kubeedge-protocol.md §3). The JSON key is `route`, not `router`; `timestamp` is an integer in
//! milliseconds; cloudhub matches replies and ACKs by `parent_msg_id` only.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Source of the messages the kubelet part of edgecore (edged) sends; cloudhub drops upstream
/// messages whose source is a cloud module name.
pub const SOURCE_EDGED: &str = "edged";
pub const GROUP_META: &str = "meta";
pub const GROUP_RESOURCE: &str = "resource";
pub const OP_RESPONSE: &str = "response";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub header: Header,
    pub route: Route,
    #[serde(default)]
    pub content: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub msg_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub parent_msg_id: String,
    pub timestamp: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resourceversion: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Route {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operation: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
}

impl Message {
    /// A new message with a fresh uuid v4 id and the current time.
    pub fn new(source: &str, group: &str, operation: &str, resource: &str, content: Value) -> Self {
        Message {
            header: Header {
                msg_id: new_msg_id(),
                parent_msg_id: String::new(),
                timestamp: now_millis(),
                resourceversion: String::new(),
            },
            route: Route {
                source: source.into(),
                group: group.into(),
                operation: operation.into(),
                resource: resource.into(),
            },
            content,
        }
    }

    /// The edge's keepalive (E1). cloudhub resets its timer on the operation alone.
    pub fn keepalive() -> Self {
        Message::new(
            "websocket",
            GROUP_RESOURCE,
            "keepalive",
            "node",
            "ping".into(),
        )
    }

    /// A request from "edged" to edgecontroller (group `meta`).
    pub fn request(operation: &str, resource: &str, content: Value) -> Self {
        Message::new(SOURCE_EDGED, GROUP_META, operation, resource, content)
    }

    /// The reply edgecore's `NewRespByMessage` builds: same source, group and resource, operation
    /// `response`, `parent_msg_id` = this message's id.
    pub fn response(&self, content: &str) -> Self {
        let mut reply = Message::new(
            &self.route.source,
            &self.route.group,
            OP_RESPONSE,
            &self.route.resource,
            content.into(),
        );
        reply.header.parent_msg_id = self.header.msg_id.clone();
        reply
    }
}

/// cloudhub keys its stores by `msg_id`; edgecore uses uuid v4.
pub fn new_msg_id() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// edgecontroller's `ObjectResp` (`{"Object": …, "Err": null | {"ErrStatus": metav1.Status}}`),
/// the content of its replies to node, nodepatch and lease requests.
#[derive(Debug, Clone, PartialEq)]
pub enum ObjectResp {
    Ok(Value),
    Err { reason: String, message: String },
}

impl ObjectResp {
    /// `None` when the content is not an `ObjectResp` (a bare "OK", a string error, …).
    pub fn parse(content: &Value) -> Option<ObjectResp> {
        let obj = content.as_object()?;
        if !obj.contains_key("Object") && !obj.contains_key("Err") {
            return None;
        }
        match obj.get("Err") {
            None | Some(Value::Null) => Some(ObjectResp::Ok(
                obj.get("Object").cloned().unwrap_or(Value::Null),
            )),
            Some(err) => {
                let status = err.get("ErrStatus").unwrap_or(err);
                let text = |k: &str| {
                    status
                        .get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                Some(ObjectResp::Err {
                    reason: text("reason"),
                    message: text("message"),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keepalive_matches_e1() {
        let v = serde_json::to_value(Message::keepalive()).unwrap();
        assert_eq!(v["route"]["operation"], "keepalive");
        assert_eq!(v["route"]["group"], "resource");
        assert_eq!(v["content"], "ping");
        assert!(v["header"]["timestamp"].is_i64());
        assert!(v["header"].get("parent_msg_id").is_none());
        assert!(v.get("router").is_none());
    }

    #[test]
    fn ack_mirrors_the_pod_push_of_e6() {
        let push: Message = serde_json::from_value(json!({
            "header":{"msg_id":"f00d","timestamp":1754474500000_i64,"resourceversion":"81300"},
            "route":{"source":"edgecontroller","group":"resource","operation":"insert","resource":"default/pod/nginx"},
            "content":{"kind":"Pod"}}))
        .unwrap();
        let ack = serde_json::to_value(push.response("OK")).unwrap();
        assert_eq!(ack["header"]["parent_msg_id"], "f00d");
        assert_eq!(ack["route"]["operation"], "response");
        assert_eq!(ack["route"]["source"], "edgecontroller");
        assert_eq!(ack["route"]["resource"], "default/pod/nginx");
        assert_eq!(ack["content"], "OK");
    }

    #[test]
    fn object_resp_reads_success_and_already_exists() {
        let ok = ObjectResp::parse(&json!({"Object":{"metadata":{"name":"n"}},"Err":null}));
        assert_eq!(ok, Some(ObjectResp::Ok(json!({"metadata":{"name":"n"}}))));
        let exists = ObjectResp::parse(&json!({"Object":{},"Err":{"ErrStatus":{
            "status":"Failure","message":"nodes \"edge-1\" already exists","reason":"AlreadyExists","code":409}}}));
        assert_eq!(
            exists,
            Some(ObjectResp::Err {
                reason: "AlreadyExists".into(),
                message: "nodes \"edge-1\" already exists".into()
            })
        );
        assert_eq!(ObjectResp::parse(&json!("OK")), None);
    }
}

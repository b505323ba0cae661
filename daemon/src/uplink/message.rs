//! Messages between the caller, the spool and the wire.
//!
//! Everything is checked before it reaches the spool, and again when it leaves it: a PUBLISH
//! the broker cannot accept makes it drop the connection, and the same message would then be
//! sent again after every reconnect, holding up everything behind it for good.

use std::collections::BTreeMap;
use std::time::SystemTime;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};

use crate::spool::Entry;

/// Key under which the content type rides in the spool's property map. MQTT strings may not
/// contain U+0000, so no real user property can have this name.
const CONTENT_TYPE_KEY: &str = "\0content-type";
/// MQTT strings carry a 16-bit length.
const MAX_STRING_BYTES: usize = u16::MAX as usize;

/// MQTT 5 properties of a reliable message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageProperties {
    pub content_type: Option<String>,
    /// User properties. A map, as the spool stores them: one value per name.
    pub user: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("topic {topic:?} cannot be published to: {reason}")]
    Topic { topic: String, reason: &'static str },
    #[error("property {name:?}: {reason}")]
    Property { name: String, reason: &'static str },
}

pub(super) fn check_topic(topic: &str) -> Result<(), MessageError> {
    let reason = if topic.is_empty() {
        Some("empty")
    } else if topic.contains(['+', '#']) {
        Some("wildcards are for subscriptions")
    } else {
        string_problem(topic)
    };
    match reason {
        Some(reason) => Err(MessageError::Topic {
            topic: topic.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

fn string_problem(s: &str) -> Option<&'static str> {
    if s.len() > MAX_STRING_BYTES {
        Some("longer than 65535 bytes")
    } else if s.contains('\0') {
        Some("contains U+0000")
    } else {
        None
    }
}

fn check_property(name: &str, value: &str) -> Result<(), MessageError> {
    match string_problem(name).or_else(|| string_problem(value)) {
        Some(reason) => Err(MessageError::Property {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The spool entry for a message, if the broker could accept it.
pub(super) fn to_entry(
    topic: String,
    payload: Vec<u8>,
    properties: MessageProperties,
    retain: bool,
) -> Result<Entry, MessageError> {
    check_topic(&topic)?;
    for (name, value) in &properties.user {
        check_property(name, value)?;
    }
    let mut stored = properties.user;
    if let Some(content_type) = properties.content_type {
        check_property("content type", &content_type)?;
        stored.insert(CONTENT_TYPE_KEY.to_string(), content_type);
    }
    Ok(Entry {
        topic,
        payload,
        properties: stored,
        retain,
        created: SystemTime::now(),
    })
}

/// The QoS 1 PUBLISH for a spooled entry. Checked again: the spool may hold entries written
/// by another version.
pub(super) fn to_publish(entry: Entry) -> Result<Publish, MessageError> {
    check_topic(&entry.topic)?;
    let mut properties = PublishProperties::default();
    for (name, value) in entry.properties {
        if name == CONTENT_TYPE_KEY {
            check_property("content type", &value)?;
            properties.content_type = Some(value);
        } else {
            check_property(&name, &value)?;
            properties.user_properties.push((name, value));
        }
    }
    let properties = (properties != PublishProperties::default()).then_some(properties);
    let mut publish = Publish::new(entry.topic, QoS::AtLeastOnce, entry.payload, properties);
    publish.retain = entry.retain;
    Ok(publish)
}

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

/// Keys under which the MQTT 5 properties that are not user properties ride in the spool's
/// property map. MQTT strings may not contain U+0000, so no real user property can have these
/// names. Correlation data is binary and is stored as lowercase hex.
const CONTENT_TYPE_KEY: &str = "\0content-type";
const RESPONSE_TOPIC_KEY: &str = "\0response-topic";
const CORRELATION_KEY: &str = "\0correlation-data";
const EXPIRY_KEY: &str = "\0message-expiry-s";
/// User property added to every message on its way out of the spool: its spool id, which
/// grows by one per message across restarts, so subscribers drop re-sends by it and can tell a
/// gap (entries the spool's bounds dropped) from a re-send. Callers may not set it.
pub const SPOOL_ID_PROPERTY: &str = "spool_id";
/// MQTT strings carry a 16-bit length.
const MAX_STRING_BYTES: usize = u16::MAX as usize;

/// MQTT 5 properties of a reliable message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageProperties {
    pub content_type: Option<String>,
    /// Request/response (hard examples): where the answer goes and what ties it to the request.
    pub response_topic: Option<String>,
    pub correlation_data: Option<Vec<u8>>,
    /// How long the broker keeps the message for a subscriber that is away. The broker counts
    /// from when it receives the message, so a spooled message gets the full interval again
    /// when it is finally sent.
    pub message_expiry_s: Option<u32>,
    /// User properties. A map, as the spool stores them: one value per name.
    pub user: BTreeMap<String, String>,
}

impl From<PublishProperties> for MessageProperties {
    /// Keeps what [`to_publish`] restores; of repeated user properties the last one wins.
    fn from(p: PublishProperties) -> Self {
        Self {
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data.map(|c| c.to_vec()),
            message_expiry_s: p.message_expiry_interval,
            user: p.user_properties.into_iter().collect(),
        }
    }
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

/// Everything the broker would refuse in a message, before it is stored or sent.
fn check(topic: &str, properties: &MessageProperties) -> Result<(), MessageError> {
    check_topic(topic)?;
    for (name, value) in &properties.user {
        if name == SPOOL_ID_PROPERTY {
            return Err(MessageError::Property {
                name: name.clone(),
                reason: "reserved for the spool id",
            });
        }
        check_property(name, value)?;
    }
    if let Some(content_type) = &properties.content_type {
        check_property("content type", content_type)?;
    }
    if let Some(response_topic) = &properties.response_topic {
        check_topic(response_topic)?;
    }
    if properties
        .correlation_data
        .as_ref()
        .is_some_and(|c| c.len() > MAX_STRING_BYTES)
    {
        return Err(MessageError::Property {
            name: "correlation data".into(),
            reason: "longer than 65535 bytes",
        });
    }
    Ok(())
}

/// The spool entry for a message, if the broker could accept it.
pub(super) fn to_entry(
    topic: String,
    payload: Vec<u8>,
    properties: MessageProperties,
    retain: bool,
) -> Result<Entry, MessageError> {
    check(&topic, &properties)?;
    let mut stored = properties.user;
    let reserved = [
        (CONTENT_TYPE_KEY, properties.content_type),
        (RESPONSE_TOPIC_KEY, properties.response_topic),
        (
            CORRELATION_KEY,
            properties.correlation_data.as_deref().map(to_hex),
        ),
        (
            EXPIRY_KEY,
            properties.message_expiry_s.map(|s| s.to_string()),
        ),
    ];
    for (key, value) in reserved {
        if let Some(value) = value {
            stored.insert(key.to_string(), value);
        }
    }
    Ok(Entry {
        topic,
        payload,
        properties: stored,
        retain,
        created: SystemTime::now(),
    })
}

/// The properties of a message sent once, without the spool.
pub(super) fn to_properties(
    topic: &str,
    properties: MessageProperties,
) -> Result<PublishProperties, MessageError> {
    check(topic, &properties)?;
    Ok(PublishProperties {
        content_type: properties.content_type,
        response_topic: properties.response_topic,
        correlation_data: properties.correlation_data.map(Into::into),
        message_expiry_interval: properties.message_expiry_s,
        user_properties: properties.user.into_iter().collect(),
        ..PublishProperties::default()
    })
}

/// The QoS 1 PUBLISH for the spool entry `id`, tagged with [`SPOOL_ID_PROPERTY`]. Checked
/// again: the spool may hold entries written by another version.
pub(super) fn to_publish(id: u64, entry: Entry) -> Result<Publish, MessageError> {
    check_topic(&entry.topic)?;
    let mut properties = to_publish_properties(entry.properties)?;
    properties
        .user_properties
        .push((SPOOL_ID_PROPERTY.to_string(), id.to_string()));
    let mut publish = Publish::new(
        entry.topic,
        QoS::AtLeastOnce,
        entry.payload,
        Some(properties),
    );
    publish.retain = entry.retain;
    Ok(publish)
}

/// The MQTT 5 properties stored in a spool entry's property map (see [`to_entry`]).
pub(super) fn to_publish_properties(
    stored: BTreeMap<String, String>,
) -> Result<PublishProperties, MessageError> {
    let mut properties = PublishProperties::default();
    for (name, value) in stored {
        let bad = |reason| MessageError::Property {
            name: name.trim_start_matches('\0').to_string(),
            reason,
        };
        match name.as_str() {
            CONTENT_TYPE_KEY => {
                check_property("content type", &value)?;
                properties.content_type = Some(value);
            }
            RESPONSE_TOPIC_KEY => {
                check_topic(&value)?;
                properties.response_topic = Some(value);
            }
            CORRELATION_KEY => {
                let bytes = from_hex(&value).ok_or_else(|| bad("not hex"))?;
                properties.correlation_data = Some(bytes.into());
            }
            EXPIRY_KEY => {
                let seconds = value.parse().map_err(|_| bad("not a number of seconds"))?;
                properties.message_expiry_interval = Some(seconds);
            }
            _ => {
                check_property(&name, &value)?;
                properties.user_properties.push((name, value));
            }
        }
    }
    Ok(properties)
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

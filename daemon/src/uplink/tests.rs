use std::collections::BTreeMap;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Publish;

use super::message::{self, MessageError, MessageProperties, SPOOL_ID_PROPERTY};
use super::options::{OptionsError, mqtt_options};
use super::window::{Origin, Window};
use super::{Delivery, IncomingError, Subscription, Topics, Uplink, UplinkHandle, UplinkSettings};
use crate::config::{Config, MqttConfig, SpoolKind};
use crate::spool::FsyncPolicy;

fn mqtt_config(url: &str) -> MqttConfig {
    MqttConfig {
        url: url.into(),
        spool_kinds: Vec::new(),
        ..Config::embedded_default().unwrap().mqtt
    }
}

#[test]
fn broker_urls() {
    assert!(matches!(
        mqtt_options(&mqtt_config(""), "c"),
        Err(OptionsError::NoBroker)
    ));
    // An empty ca_file trusts the system's roots.
    let tls = mqtt_options(&mqtt_config("mqtts://broker"), "c").unwrap();
    assert_eq!(tls.broker_address(), ("broker".to_string(), 8883));
    assert!(matches!(tls.transport(), rumqttc::Transport::Tls(_)));
    assert!(matches!(
        mqtt_options(&mqtt_config("http://broker"), "c"),
        Err(OptionsError::Url { .. })
    ));
    assert!(matches!(
        mqtt_options(&mqtt_config("not a url"), "c"),
        Err(OptionsError::Url { .. })
    ));
    let options = mqtt_options(&mqtt_config("mqtt://[::1]"), "c").unwrap();
    assert_eq!(options.broker_address(), ("::1".to_string(), 1883));
    let mut cfg = mqtt_config("mqtt://127.0.0.1:18830");
    cfg.keep_alive_s = 1;
    let options = mqtt_options(&cfg, "c").unwrap();
    assert_eq!(options.broker_address(), ("127.0.0.1".to_string(), 18830));
    assert_eq!(options.keep_alive(), std::time::Duration::from_secs(5));
    assert_eq!(options.credentials(), None);
}

#[test]
fn credentials_come_from_the_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, "s3cret\r\n").unwrap();
    let mut cfg = mqtt_config("mqtt://broker");
    cfg.username = "edge".into();
    cfg.password_file = file.clone();
    let login = mqtt_options(&cfg, "c").unwrap().credentials().unwrap();
    assert_eq!(
        (login.username.as_str(), login.password.as_str()),
        ("edge", "s3cret")
    );
    cfg.password_file = dir.path().join("missing");
    assert!(matches!(
        mqtt_options(&cfg, "c"),
        Err(OptionsError::Password { .. })
    ));
}

#[test]
fn settings_default_the_client_id_to_the_node() {
    let settings = UplinkSettings::from_mqtt(&mqtt_config("mqtt://broker"), "edge-a").unwrap();
    assert_eq!(settings.mqtt.client_id(), "helmetd-edge-a");
    assert_eq!(settings.spool_limits.max_bytes, 256 << 20);
    let mut cfg = mqtt_config("mqtt://broker");
    cfg.client_id = "gw-7".into();
    let settings = UplinkSettings::from_mqtt(&cfg, "edge-a").unwrap();
    assert_eq!(settings.mqtt.client_id(), "gw-7");
}

#[test]
fn topics_follow_the_architecture_table() {
    let topics = Topics::new("helmetd/v1", "edge-a");
    assert_eq!(
        topics.alert_topic("gate-1"),
        "helmetd/v1/edge-a/gate-1/alert"
    );
    assert_eq!(
        topics.snapshot_topic("gate-1"),
        "helmetd/v1/edge-a/gate-1/alert/snapshot"
    );
    assert_eq!(topics.stats_topic(), "helmetd/v1/edge-a/stats");
    assert_eq!(topics.status_topic(), "helmetd/v1/edge-a/status");
}

#[test]
fn messages_round_trip_through_the_spool_entry() {
    let properties = MessageProperties {
        content_type: Some("application/json".into()),
        user: BTreeMap::from([("camera".to_string(), "gate-1".to_string())]),
        ..MessageProperties::default()
    };
    let entry = message::to_entry("a/b".into(), b"{}".to_vec(), properties, true).unwrap();
    let publish = message::to_publish(7, entry).unwrap();
    assert_eq!(publish.topic, "a/b".as_bytes());
    assert_eq!(publish.qos, QoS::AtLeastOnce);
    assert!(publish.retain);
    let props = publish.properties.unwrap();
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        props.user_properties,
        [
            ("camera".to_string(), "gate-1".to_string()),
            (SPOOL_ID_PROPERTY.to_string(), "7".to_string())
        ]
    );

    let bare = message::to_entry("a".into(), Vec::new(), MessageProperties::default(), false);
    let publish = message::to_publish(1, bare.unwrap()).unwrap();
    let props = publish.properties.unwrap();
    assert_eq!(props.content_type, None);
    assert_eq!(props.user_properties.len(), 1);
    assert!(!publish.retain);
}

#[test]
fn damaged_reserved_properties_make_the_entry_unpublishable() {
    let entry = |key: &str, value: &str| crate::spool::Entry {
        topic: "a".into(),
        payload: Vec::new(),
        properties: BTreeMap::from([(key.to_string(), value.to_string())]),
        retain: false,
        created: std::time::SystemTime::UNIX_EPOCH,
    };
    assert!(message::to_publish(1, entry("\0correlation-data", "abc")).is_err());
    assert!(message::to_publish(1, entry("\0correlation-data", "zz")).is_err());
    assert!(message::to_publish(1, entry("\0message-expiry-s", "-1")).is_err());
    assert!(message::to_publish(1, entry("\0response-topic", "a/#")).is_err());
    assert!(message::to_publish(1, entry("\0correlation-data", "00ff")).is_ok());
}

#[test]
fn messages_the_broker_would_refuse_are_errors() {
    let topic =
        |t: &str| message::to_entry(t.into(), Vec::new(), MessageProperties::default(), false);
    for bad in ["", "a/+/b", "a/#", "a\0b"] {
        assert!(
            matches!(topic(bad), Err(MessageError::Topic { .. })),
            "{bad:?}"
        );
    }
    assert!(topic(&"x".repeat(70_000)).is_err());
    let with_user = |k: &str, v: &str| {
        message::to_entry(
            "a".into(),
            Vec::new(),
            MessageProperties {
                user: BTreeMap::from([(k.to_string(), v.to_string())]),
                ..MessageProperties::default()
            },
            false,
        )
    };
    // A NUL key is also how a caller could impersonate the stored content type.
    assert!(matches!(
        with_user("\0content-type", "x"),
        Err(MessageError::Property { .. })
    ));
    assert!(with_user("k", "v\0").is_err());
    assert!(with_user(SPOOL_ID_PROPERTY, "1").is_err());
    let content_type = message::to_entry(
        "a".into(),
        Vec::new(),
        MessageProperties {
            content_type: Some("x\0".into()),
            ..MessageProperties::default()
        },
        false,
    );
    assert!(content_type.is_err());
}

fn publish(topic: &str) -> Publish {
    Publish::new(topic, QoS::AtLeastOnce, b"x".to_vec(), None)
}

/// Sends every unsent slot as rumqttc would, drawing packet ids from `next_pkid`.
fn send_all(window: &mut Window, next_pkid: &mut u16) -> Vec<(Publish, u16)> {
    let mut sent = Vec::new();
    while let Some(p) = window.queue_next() {
        let pkid = if p.pkid == 0 {
            *next_pkid += 1;
            *next_pkid
        } else {
            p.pkid
        };
        assert!(window.is_queued());
        window.queued_written(pkid).unwrap();
        sent.push((p, pkid));
    }
    sent
}

#[test]
fn the_spool_is_acked_only_up_to_the_oldest_unconfirmed_message() {
    let mut window = Window::new(4);
    for id in 1..=4 {
        window.push(Origin::Spool(id), publish("t"));
    }
    assert_eq!(window.room(), 0);
    assert_eq!(window.last_taken(), 4);
    let mut pkid = 0;
    let sent = send_all(&mut window, &mut pkid);
    assert_eq!(sent.len(), 4);
    // A broker acking 2 before 1 must not move the spool past 1.
    assert_eq!(window.acked(2), Some(Origin::Spool(2)));
    assert_eq!(window.pop_done(), None);
    assert_eq!(window.acked(1), Some(Origin::Spool(1)));
    assert_eq!(window.pop_done(), Some(2));
    assert_eq!(window.acked(99), None, "not ours");
    assert_eq!(window.acked(1), None, "already acked");
    assert_eq!(window.room(), 2);
}

#[test]
fn a_lost_connection_resends_the_unconfirmed_in_order() {
    let mut window = Window::new(8);
    for id in 1..=4 {
        window.push(Origin::Spool(id), publish("t"));
    }
    window.push(Origin::Online, publish("status"));
    let mut pkid = 0;
    send_all(&mut window, &mut pkid);
    window.acked(1);
    window.acked(3);
    assert_eq!(window.pop_done(), Some(1));
    window.connection_lost();
    assert_eq!(window.len(), 3, "status dropped; 2, 3, 4 left");

    // Resumed session: the same packet ids, flagged as duplicates; 3 was confirmed already.
    window.session_started(true);
    let resent = send_all(&mut window, &mut pkid);
    let ids: Vec<_> = resent.iter().map(|(p, id)| (p.pkid, p.dup, *id)).collect();
    assert_eq!(ids, [(2, true, 2), (4, true, 4)]);

    // New session: fresh ids, still in order.
    window.connection_lost();
    window.session_started(false);
    let resent = send_all(&mut window, &mut pkid);
    let ids: Vec<_> = resent.iter().map(|(p, id)| (p.pkid, p.dup, *id)).collect();
    assert_eq!(ids, [(0, false, 6), (0, false, 7)]);
    window.acked(6);
    window.acked(7);
    assert_eq!(window.pop_done(), Some(4));
    assert_eq!(window.len(), 0);
}

#[test]
fn rumqttc_hands_back_our_own_publishes_only() {
    let mut window = Window::new(2);
    window.push(Origin::Spool(1), publish("t"));
    let ours = window.queue_next().unwrap();
    assert!(window.owns(&ours));
    assert!(!window.owns(&publish("t")), "same topic, not ours");
}

#[test]
fn collisions_and_refusals() {
    let mut window = Window::new(4);
    window.push(Origin::Spool(1), publish("t"));
    window.push(Origin::Spool(2), publish("t"));
    window.push_refused(3);
    window.push(Origin::Stopped, publish("status"));

    // 1 waits for packet id 7, whose ack belongs to someone else's message.
    window.queue_next().unwrap();
    window.queued_collided(7);
    assert_eq!(window.acked(7), None);
    assert_eq!(window.collision_written(7), Some((Origin::Spool(1), false)));
    assert_eq!(window.acked(7), Some(Origin::Spool(1)));

    // 2 is too large for the broker.
    window.queue_next().unwrap();
    assert_eq!(window.refuse_queued(), Some(Origin::Spool(2)));

    // rumqttc lost track of the id: the message goes again.
    window.queue_next().unwrap();
    window.queued_lost();
    let again = window.queue_next().unwrap();
    assert_eq!((again.pkid, again.dup), (0, false));
    assert_eq!(window.queued_written(8), Some((Origin::Stopped, false)));
    assert_eq!(window.acked(8), Some(Origin::Stopped));
    assert_eq!(window.pop_done(), Some(3));
    assert_eq!(window.len(), 0);
}

/// An uplink whose event loop never runs: the session stays down.
fn offline_uplink(spool_dir: &std::path::Path, kinds: Vec<SpoolKind>) -> (Uplink, UplinkHandle) {
    let mut cfg = mqtt_config("mqtt://127.0.0.1:1");
    cfg.spool_dir = spool_dir.to_path_buf();
    cfg.spool_kinds = kinds;
    let mut settings = UplinkSettings::from_mqtt(&cfg, "edge-a").unwrap();
    settings.fsync = FsyncPolicy::Never;
    Uplink::open(settings).unwrap()
}

#[tokio::test]
async fn only_the_listed_kinds_are_spooled_and_the_rest_are_dropped_while_offline() {
    let dir = tempfile::tempdir().unwrap();
    let (_uplink, handle) = offline_uplink(dir.path(), vec![SpoolKind::Alerts]);
    let publish = |kind| {
        handle.publish(
            kind,
            "a/b",
            b"x".to_vec(),
            MessageProperties::default(),
            false,
        )
    };
    assert_eq!(
        publish(SpoolKind::Alerts).await.unwrap(),
        Delivery::Spooled(1)
    );
    assert_eq!(
        publish(SpoolKind::Snapshots).await.unwrap(),
        Delivery::Dropped
    );
    assert_eq!(
        publish(SpoolKind::Alerts).await.unwrap(),
        Delivery::Spooled(2)
    );
    let stats = handle.stats();
    assert_eq!(
        (
            stats.spool.entries,
            stats.once_dropped,
            stats.once_published
        ),
        (2, 1, 0)
    );
}

/// One handler, for the subscribed topic only: a sharer that asks for another topic (a session
/// opened without its subscription) learns it at once instead of waiting for nothing.
#[tokio::test]
async fn the_subscription_takes_one_handler_for_its_own_topic() {
    let dir = tempfile::tempdir().unwrap();
    let (_uplink, handle) = offline_uplink(dir.path(), Vec::new());
    assert!(matches!(
        handle.on_incoming("a/b", Box::new(|_| {})),
        Err(IncomingError::NoSubscription)
    ));

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = mqtt_config("mqtt://127.0.0.1:1");
    cfg.spool_dir = dir.path().to_path_buf();
    let mut settings = UplinkSettings::from_mqtt(&cfg, "edge-a").unwrap();
    settings.subscription = Some(Subscription {
        topic: "a/b".into(),
        max_payload: 1024,
    });
    let (_uplink, handle) = Uplink::open(settings).unwrap();
    assert!(matches!(
        handle.on_incoming("a/c", Box::new(|_| {})),
        Err(IncomingError::OtherTopic { .. })
    ));
    handle.on_incoming("a/b", Box::new(|_| {})).unwrap();
    assert!(matches!(
        handle.on_incoming("a/b", Box::new(|_| {})),
        Err(IncomingError::Taken)
    ));
}

//! Reading a client's own configuration back from librdkafka, so a wrapper built around an
//! existing client (`TracedProducer::new`, `TracedConsumer::new`) records the same
//! `server.address`/`server.port` and consumer group as one built from a `ClientConfig`.

use std::ffi::CString;

use rdkafka::bindings::{rd_kafka_conf, rd_kafka_conf_get, rd_kafka_conf_res_t};
use rdkafka::client::{Client, ClientContext};

/// The value of configuration property `name` of `client`, `None` when it is unset, empty or
/// not a property librdkafka knows.
#[allow(unsafe_code)] // librdkafka's C API: rdkafka has no safe way to read a client's config.
pub(crate) fn config_value<C: ClientContext>(client: &Client<C>, name: &str) -> Option<String> {
    let name = CString::new(name).ok()?;
    let rk = client.native_ptr();
    // SAFETY: `rk` is the live handle `client` owns (it outlives this call);
    // `rd_kafka_conf` returns the handle's own configuration, valid as long as the handle,
    // and only read here. `rd_kafka_conf_get` is called first with no buffer to learn the
    // size (including the terminating NUL), then with a buffer of exactly that size.
    unsafe {
        let conf = rd_kafka_conf(rk);
        if conf.is_null() {
            return None;
        }
        let mut size: usize = 0;
        let found = rd_kafka_conf_get(conf, name.as_ptr(), std::ptr::null_mut(), &mut size);
        if found != rd_kafka_conf_res_t::RD_KAFKA_CONF_OK || size == 0 {
            return None;
        }
        let mut buffer = vec![0_u8; size];
        let read = rd_kafka_conf_get(conf, name.as_ptr(), buffer.as_mut_ptr().cast(), &mut size);
        if read != rd_kafka_conf_res_t::RD_KAFKA_CONF_OK {
            return None;
        }
        buffer.truncate(size.min(buffer.len()).saturating_sub(1));
        String::from_utf8(buffer)
            .ok()
            .filter(|value| !value.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer as _};

    #[test]
    fn set_properties_are_read_back_and_unknown_ones_are_none() {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", "kafka-1:9092,kafka-2:9092")
            .set("group.id", "scorers")
            .create()
            .expect("consumer");
        assert_eq!(
            config_value(consumer.client(), "bootstrap.servers").as_deref(),
            Some("kafka-1:9092,kafka-2:9092")
        );
        assert_eq!(
            config_value(consumer.client(), "group.id").as_deref(),
            Some("scorers")
        );
        assert_eq!(config_value(consumer.client(), "no.such.property"), None);
        assert_eq!(config_value(consumer.client(), "nul\0inside"), None);
    }
}

//! The embedded MQTT broker (the `mqtt5` crate's broker, MQTT 3.1.1 and 5).
//!
//! Chosen over `rumqttd` because it binds port 0 and reports the bound
//! address (no port races in parallel tests) and can be shut down in-process;
//! rumqttd's `start()` blocks a thread forever on a pre-chosen port. Measured
//! here with a rumqttc QoS 1 publisher and subscriber (50k × 650 B): mqtt5
//! ≈ 112k msg/s, rumqttd ≈ 300k msg/s; both far beyond what the demo needs.

use std::net::SocketAddr;

use mqtt5::broker::config::{BrokerConfig, StorageBackend, StorageConfig};
use mqtt5::broker::server::{BrokerShutdownHandle, MqttBroker};

#[derive(Debug, thiserror::Error)]
#[error("embedded MQTT broker: {0}")]
pub struct BrokerError(String);

/// A running in-process broker on 127.0.0.1; stops when dropped.
pub struct EmbeddedBroker {
    addr: SocketAddr,
    shutdown: BrokerShutdownHandle,
}

impl EmbeddedBroker {
    /// Starts a broker on an ephemeral loopback port, with in-memory state only.
    pub async fn start() -> Result<Self, BrokerError> {
        let config = BrokerConfig::default()
            .with_bind_address(SocketAddr::from(([127, 0, 0, 1], 0)))
            .with_storage(
                StorageConfig::default()
                    .with_backend(StorageBackend::Memory)
                    .with_persistence(false),
            );
        let mut broker = MqttBroker::with_config(config)
            .await
            .map_err(|e| BrokerError(e.to_string()))?;
        let addr = broker
            .local_addr()
            .ok_or_else(|| BrokerError("no listener address".into()))?;
        let shutdown = broker.shutdown_handle();
        tokio::spawn(async move {
            if let Err(e) = broker.run().await {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        });
        Ok(EmbeddedBroker { addr, shutdown })
    }

    /// The `mqtt://` URL clients connect to.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.shutdown.shutdown();
    }
}

//! The embedded MQTT broker (the `mqtt5` crate's broker, MQTT 3.1.1 and 5).
//!
//! Chosen over `rumqttd` because it binds port 0 and reports the bound
//! address (no port races in parallel tests) and can be shut down in-process;
//! rumqttd's `start()` blocks a thread forever on a pre-chosen port. Measured
//! here with a rumqttc QoS 1 publisher and subscriber (50k × 650 B): mqtt5
//! ≈ 112k msg/s, rumqttd ≈ 300k msg/s; both far beyond what the demo needs.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use mqtt5::broker::auth::{AuthProvider, AuthResult};
use mqtt5::broker::config::{BrokerConfig, StorageBackend, StorageConfig};
use mqtt5::broker::server::{BrokerShutdownHandle, MqttBroker};
use mqtt5::packet::connect::ConnectPacket;
use mqtt5::protocol::v5::reason_codes::ReasonCode;

use super::vcd::VcdSim;

/// Admits MQTT clients the way VCD does: the password must be a current
/// session token of the simulator (the simulator's own publisher excepted).
/// Counts what it refused, so tests can tell a stale token was never used.
pub struct TokenAuth {
    sim: VcdSim,
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
}

impl TokenAuth {
    pub fn new(sim: VcdSim) -> Arc<Self> {
        Arc::new(TokenAuth {
            sim,
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl AuthProvider for TokenAuth {
    fn authenticate<'a>(
        &'a self,
        connect: &'a ConnectPacket,
        _client_addr: SocketAddr,
    ) -> Boxed<'a, mqtt5::error::Result<AuthResult>> {
        let password = connect
            .password
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let ok = match connect.username.as_deref() {
            Some("vcd-sim") => password == "vcd-sim",
            _ => self.sim.token_valid(&password),
        };
        Box::pin(async move {
            if ok {
                self.accepted.fetch_add(1, Relaxed);
                Ok(AuthResult::success())
            } else {
                self.refused.fetch_add(1, Relaxed);
                Ok(AuthResult::fail(ReasonCode::NotAuthorized))
            }
        })
    }

    fn authorize_publish<'a>(&'a self, _: &str, _: Option<&'a str>, _: &'a str) -> Boxed<'a, bool> {
        Box::pin(async { true })
    }

    fn authorize_subscribe<'a>(
        &'a self,
        _: &str,
        _: Option<&'a str>,
        _: &'a str,
    ) -> Boxed<'a, bool> {
        Box::pin(async { true })
    }
}

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
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), None).await
    }

    /// Starts a broker on `addr` (port 0: any), optionally checking logins.
    pub async fn start_on(
        addr: SocketAddr,
        auth: Option<Arc<dyn AuthProvider>>,
    ) -> Result<Self, BrokerError> {
        let config = BrokerConfig::default()
            .with_bind_address(addr)
            .with_storage(
                StorageConfig::default()
                    .with_backend(StorageBackend::Memory)
                    .with_persistence(false),
            );
        let mut broker = MqttBroker::with_config(config)
            .await
            .map_err(|e| BrokerError(e.to_string()))?;
        if let Some(auth) = auth {
            broker = broker.with_auth_provider(auth);
        }
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

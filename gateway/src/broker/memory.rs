//! The in-process broker of the embedded mode: every room lives on this node.

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;

use super::{Broker, BrokerError};
use crate::hub::{ConnId, Hub};

/// Delivers straight into the local hub.
pub struct MemoryBroker {
    hub: Arc<Hub>,
}

impl MemoryBroker {
    pub fn new(hub: Arc<Hub>) -> MemoryBroker {
        MemoryBroker { hub }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(
        &self,
        room: &str,
        _first: u64,
        _last: u64,
        frames: Vec<(u64, Utf8Bytes)>,
    ) -> Result<(), BrokerError> {
        self.hub.deliver(room, frames.into());
        Ok(())
    }

    async fn broadcast(
        &self,
        room: &str,
        frame: Utf8Bytes,
        except: Option<ConnId>,
    ) -> Result<(), BrokerError> {
        self.hub.broadcast(room, &frame, except);
        Ok(())
    }

    async fn subscribe(&self, _room: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn unsubscribe(&self, _room: &str) -> Result<(), BrokerError> {
        Ok(())
    }
}

//! Connecting to a random node, resuming with the latest resume token and
//! the last seq of each room, and the rooms to join on a new connection.

use std::collections::BTreeMap;
use std::time::Duration;

use chorus_protocol::client::{Client, ClientConfig, ClientError};
use chorus_protocol::frame::Resume;
use rand::Rng;

use super::{State, lock};

impl State {
    /// Connect to a random node, resuming when we have a token.
    pub(super) async fn connect(&mut self) -> Result<Client, ClientError> {
        let addr = self.nodes[self.rng.random_range(0..self.nodes.len())].clone();
        let cfg = ClientConfig {
            send_timeout: Duration::from_secs(8),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            event_capacity: 256,
            ..ClientConfig::new(format!(
                "ws://{addr}/ws?access_token={}",
                self.profile.token
            ))
            .with_device(self.device.clone())
        };
        lock(&self.log).sessions += 1;
        let client = match &self.token {
            Some(token) => {
                let rooms: BTreeMap<String, u64> = {
                    let log = lock(&self.log);
                    self.profile
                        .rooms
                        .iter()
                        .filter_map(|r| log.cursor(r).map(|c| (r.clone(), c)))
                        .collect()
                };
                Client::connect_resume(
                    cfg,
                    Resume {
                        token: token.clone(),
                        rooms,
                    },
                )
                .await?
            }
            None => Client::connect(cfg).await?,
        };
        self.token = Some(client.welcome().resume_token.clone());
        Ok(client)
    }

    /// Rooms to join on this connection, with `since`: all of them, unless
    /// the server accepted the resume (it re-joins the rooms it was given).
    pub(super) fn rooms_to_join(&self, client: &Client) -> Vec<(String, Option<u64>)> {
        let log = lock(&self.log);
        self.profile
            .rooms
            .iter()
            .filter(|r| !(client.welcome().resumed && log.cursor(r).is_some()))
            .map(|r| (r.clone(), log.cursor(r)))
            .collect()
    }
}

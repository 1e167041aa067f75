//! Redis clients of one node: the one place their settings are chosen
//! (timeouts, reconnect policy, broadcast channel sizes).

use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;

/// Capacity of the subscriber's broadcast channels. Room traffic arrives
/// through one: a lagging reader loses messages (then fills them from
/// history), so it gets room. Tokio allocates every slot of a broadcast
/// channel up front, and a fred client has several such channels, so this is
/// memory paid at start whatever the traffic (65,536 slots cost about 140 MiB
/// over the node's clients).
const SUBSCRIBER_CHANNELS: usize = 8_192;
/// Command clients never read their broadcast channels (pub/sub, keyspace
/// events): the smallest capacity.
const COMMAND_CHANNELS: usize = 16;

/// A client builder for `url` with the node's timeouts and reconnect policy.
fn builder(url: &str, channel_capacity: usize) -> Result<Builder, Error> {
    let config = Config::from_url(url)?;
    let mut b = Builder::from_config(config);
    b.with_performance_config(|p| {
        p.broadcast_channel_capacity = channel_capacity;
        p.default_command_timeout = Duration::from_secs(2);
    })
    .with_connection_config(|c| {
        c.connection_timeout = Duration::from_secs(2);
        c.max_command_attempts = 2;
    })
    .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
    Ok(b)
}

/// A command client (the broker's publisher, ownership, presence, the send
/// limits), connected.
pub(crate) async fn command_client(url: &str) -> Result<Client, Error> {
    let client = builder(url, COMMAND_CHANNELS)?.build()?;
    client.init().await?;
    Ok(client)
}

/// The subscriber connection of the broker, connected.
pub(crate) async fn subscriber_client(url: &str) -> Result<SubscriberClient, Error> {
    let subscriber = builder(url, SUBSCRIBER_CHANNELS)?.build_subscriber_client()?;
    subscriber.init().await?;
    Ok(subscriber)
}

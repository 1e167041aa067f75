//! The HTTP side of the listener: origins, request timeouts, the bounds on
//! pending connections and per-address accept limits.

use clap::Args;

/// What the listener accepts before a request or `hello` is complete.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "HTTP and accept limits")]
pub struct HttpConfig {
    /// Allowed browser origins (comma separated); empty allows any.
    #[arg(
        long = "allowed-origin",
        env = "CHORUS_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Time for a request's headers to arrive, counted from the accept or from
    /// the end of the previous response on the connection (so it is also the
    /// keep-alive idle timeout), milliseconds.
    #[arg(long, env = "CHORUS_HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_header_timeout_ms: u64,

    /// Time for a request body (HTTP API) to arrive in full, milliseconds.
    #[arg(long, env = "CHORUS_HTTP_BODY_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_body_timeout_ms: u64,

    /// Largest request head (request line and headers), bytes (at least 8192).
    #[arg(long, env = "CHORUS_MAX_HEADER_BYTES", default_value_t = 16_384)]
    pub max_header_bytes: u64,

    /// Connections that have not yet sent a complete HTTP request or (WebSocket)
    /// an authenticated `hello`, overall; at the bound the oldest is closed. Never
    /// more than a quarter of the process's open file limit.
    #[arg(long, env = "CHORUS_MAX_PENDING_CONNECTIONS", default_value_t = 4_096)]
    pub max_pending_connections: u64,

    /// Pending connections (see --max-pending-connections) from one source address.
    #[arg(long, env = "CHORUS_MAX_PENDING_PER_IP", default_value_t = 64)]
    pub max_pending_per_ip: u64,

    /// New connections accepted per second from one source address (0: no limit).
    #[arg(long, env = "CHORUS_ACCEPTS_PER_IP_PER_SEC", default_value_t = 50)]
    pub accepts_per_ip_per_sec: u64,

    /// Burst of new connections from one source address.
    #[arg(long, env = "CHORUS_ACCEPT_BURST_PER_IP", default_value_t = 200)]
    pub accept_burst_per_ip: u64,

    /// Source networks exempt from the per-IP limits (comma separated CIDRs or
    /// addresses; `none` for no exemption). The default exempts the local host,
    /// where a load balancer or reverse proxy forwarding every client would sit.
    #[arg(
        long,
        env = "CHORUS_PER_IP_EXEMPT",
        value_delimiter = ',',
        default_value = "127.0.0.0/8,::1"
    )]
    pub per_ip_exempt: Vec<String>,
}

impl HttpConfig {
    /// The networks exempt from the per-IP connection limits.
    pub fn per_ip_exempt_nets(&self) -> Vec<ipnet::IpNet> {
        self.per_ip_exempt
            .iter()
            .filter_map(|n| super::parse_net(n))
            .collect()
    }

    pub(super) fn validate(&self, errs: &mut Vec<String>) {
        for net in &self.per_ip_exempt {
            if net != "none" && super::parse_net(net).is_none() {
                errs.push(format!(
                    "--per-ip-exempt: {net:?} is not an address or CIDR network"
                ));
            }
        }
    }
}

//! Names: the user and tenant id rules, and the tenant namespace of room and
//! user keys (`tenant/name`; the default tenant has no prefix). Room name rules
//! are the protocol's (`chorus_protocol::valid_room`).

/// User ids: 1 to 128 characters from `A-Z a-z 0-9 _ - . @` (no `:` or `/`, which
/// separate direct-room members and tenant namespaces).
pub fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 128
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.@".contains(&b))
}

/// Tenant ids follow the user id rules.
pub fn valid_tenant(tenant: &str) -> bool {
    valid_user(tenant)
}

/// `tenant/name`, or `name` for the default tenant.
pub fn namespaced(tenant: Option<&str>, name: &str) -> String {
    match tenant {
        Some(t) => format!("{t}/{name}"),
        None => name.to_owned(),
    }
}

/// The public name from a namespaced key.
pub fn public_name(key: &str) -> &str {
    key.rsplit_once('/').map(|(_, n)| n).unwrap_or(key)
}

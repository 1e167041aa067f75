//! The HTTP surface of a real `chorus` process: the `/v1` JSON API (presence,
//! history, server-side publish), API-key authentication, the error shape and
//! statuses, tenants, health/readiness/metrics, the demo page, the upgrade's
//! origin check, and client JWTs signed with RS256/ES256 public keys.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod asymmetric_tokens;
mod auth;
mod history;
mod openapi;
mod operational;
mod presence;
mod publish;
mod support;
mod tenants;
mod upgrade;

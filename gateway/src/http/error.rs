//! The API's errors: `ApiError` (status, stable code, message) and the
//! extractors and rejections that answer in its shape.

use axum::Json as AxumJson;
use axum::extract::{Path, Query};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chorus_history::StoreError;
use chorus_protocol::ErrorCode;
use serde_json::json;

use crate::ops::Fail;

/// A JSON body that could not be read: 413 when it is over the body limit,
/// 400 for everything else (wrong content type, bad JSON, wrong shape).
pub(super) fn json_rejection(e: axum::extract::rejection::JsonRejection) -> ApiError {
    if body_timed_out(&e) {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body did not arrive within the body timeout",
        )
    } else if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            e.body_text(),
        )
    } else {
        ApiError::bad_request(e.body_text())
    }
}

/// Whether a body rejection comes from `RequestBodyTimeoutLayer` (the body
/// did not arrive within `--http-body-timeout-ms`): somewhere in its chain of
/// sources is tower-http's `TimeoutError`.
fn body_timed_out(e: &axum::extract::rejection::JsonRejection) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if err.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// `Path` with the API's error shape on a rejection (a path segment that is
/// not valid UTF-8, say): `400 bad_request`, never axum's plain text.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(Path), rejection(ApiError))]
pub(super) struct ApiPath<T>(pub(super) T);

/// `Query` with the API's error shape on a rejection (a repeated or
/// malformed parameter).
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(Query), rejection(ApiError))]
pub(super) struct ApiQuery<T>(pub(super) T);

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(e: axum::extract::rejection::PathRejection) -> ApiError {
        ApiError::bad_request(e.body_text())
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> ApiError {
        ApiError::bad_request(e.body_text())
    }
}

/// An API error: status, stable code, message.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    pub(super) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub(super) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = AxumJson(json!({"error": {"code": self.code, "message": self.message}}));
        let mut resp = (self.status, body).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// A store error as the WebSocket maps it ([`Fail`]), then as a status.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        Fail::from(e).into()
    }
}

/// A refused or failed request, as the WebSocket would answer it, as a
/// status: the code's name stays the `error.code`; retryable failures carry
/// `Retry-After` in whole seconds (rounded up, at least 1) and a rate limit's
/// message names the milliseconds.
impl From<Fail> for ApiError {
    fn from(f: Fail) -> ApiError {
        let status = match f.code {
            ErrorCode::MessageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable | ErrorCode::NotOwner | ErrorCode::Timeout => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            _ => StatusCode::BAD_REQUEST,
        };
        let mut message = f.message;
        let mut e = if f.code == ErrorCode::Internal {
            ApiError::new(status, "internal", "internal error")
        } else {
            if f.code == ErrorCode::RateLimited
                && let Some(ms) = f.retry_after_ms
            {
                message = format!("{message}; retry in {ms} ms");
            }
            ApiError::new(status, f.code.as_str(), message)
        };
        if f.code.retryable() && f.code != ErrorCode::Internal {
            e.retry_after = Some(f.retry_after_ms.unwrap_or(1000).div_ceil(1000).max(1));
        }
        e
    }
}

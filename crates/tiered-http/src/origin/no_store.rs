//! The layer for routes that no cache may keep.
//!
//! [`NoStoreLayer`] sets `Cache-Control: no-store` on every response of the
//! wrapped service, replacing whatever the handler set. Use it on sensitive
//! routes (account pages, tokens, personal data) so that neither a shared
//! cache nor the browser's disk keeps a copy, whatever a handler does.
//!
//! It sets nothing else. In particular no `Pragma: no-cache`: `Pragma` is
//! deprecated (RFC 9111 §5.4) and defined for requests only, so in a
//! response it means nothing to a conforming cache, and every HTTP/1.1 cache
//! understands `no-store`. `Expires` and validators are left alone;
//! `no-store` forbids storing the response regardless of them.

use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::cache_control::SetHeaderFuture;

/// A [`Layer`] that sets `Cache-Control: no-store` on every response,
/// overriding any `Cache-Control` already there. The response body type is
/// unchanged. For sensitive routes (account pages, tokens, personal data):
/// neither a shared cache nor the browser's disk keeps a copy, whatever a
/// handler sets.
///
/// It sets nothing else. In particular no `Pragma: no-cache`: `Pragma` is
/// deprecated (RFC 9111 §5.4) and defined for requests only, so in a
/// response it means nothing to a conforming cache, while every HTTP/1.1
/// cache understands `no-store`. `Expires` and validators are left alone;
/// `no-store` forbids storing the response regardless of them.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoStoreLayer {
    _priv: (),
}

impl NoStoreLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for NoStoreLayer {
    type Service = NoStoreService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        NoStoreService { inner }
    }
}

/// The [`Service`] made by [`NoStoreLayer`].
#[derive(Debug, Clone)]
pub struct NoStoreService<S> {
    inner: S,
}

impl<S> NoStoreService<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for NoStoreService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = SetHeaderFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        SetHeaderFuture::new(
            self.inner.call(req),
            HeaderValue::from_static("no-store"),
            true,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{header, StatusCode};
    use std::convert::Infallible;
    use tower::{service_fn, ServiceExt};

    #[tokio::test]
    async fn overrides_cache_control_on_every_response() {
        for (status, preset) in [
            (StatusCode::OK, Some("public, max-age=3600")),
            (StatusCode::OK, None),
            (StatusCode::INTERNAL_SERVER_ERROR, Some("max-age=5")),
        ] {
            let inner = service_fn(move |_req: Request<()>| async move {
                let mut res = Response::builder().status(status);
                if let Some(v) = preset {
                    res = res.header(header::CACHE_CONTROL, v);
                }
                Ok::<_, Infallible>(res.body("secret").unwrap())
            });
            let svc = NoStoreLayer::new().layer(inner);
            let res = svc.clone().oneshot(Request::new(())).await.unwrap();
            assert_eq!(res.status(), status);
            let values: Vec<_> = res
                .headers()
                .get_all(header::CACHE_CONTROL)
                .iter()
                .collect();
            assert_eq!(values, ["no-store"]);
            assert!(!res.headers().contains_key(header::PRAGMA));
            assert_eq!(*res.body(), "secret");
        }
    }

    #[tokio::test]
    async fn errors_pass_through() {
        let inner = service_fn(|_req: Request<()>| async { Err::<Response<()>, _>("down") });
        let res = NoStoreService::new(inner).oneshot(Request::new(())).await;
        assert_eq!(res.unwrap_err(), "down");
    }
}

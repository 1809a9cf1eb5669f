//! The cache layer against a scripted origin, with a manual clock.
#![allow(clippy::unwrap_used)]

mod common;

use common::{harness, response, Origin};

#[tokio::test]
async fn surrogate_control_targeted_at_us_overrides_no_store() {
    let origin = Origin::new(|_, _| {
        Ok(response(
            200,
            &[
                ("cache-control", "no-store"),
                ("surrogate-control", "max-age=10000;tiered"),
            ],
            "x",
        ))
    });
    let h = harness(origin, |b| b.targeted_field("Surrogate-Control"));
    let first = h.get("/a").await;
    assert_eq!(first.x_cache(), "MISS", "{:?}", first.headers);
    let second = h.get("/a").await;
    assert_eq!(second.x_cache(), "HIT", "{:?}", second.headers);
    assert_eq!(h.origin.count(), 1);
}

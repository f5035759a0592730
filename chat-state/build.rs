//! Declares the backend features that are not wired in yet as known `cfg` values, so the
//! `#[cfg(feature = "...")]` arms waiting for them do not trip `unexpected_cfgs`.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(feature, values(\"redis\", \"redis-cluster\"))");
}

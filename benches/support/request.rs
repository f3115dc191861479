//! The benchmark request, shared by `benches/decide.rs` (native) and
//! `examples/vm_bench.rs` (inside a wasm VM): a phone on the checkout path with
//! history signals, 14 headers.

pub fn request() -> Vec<(String, String)> {
    [
        (":method", "POST"),
        (":path", "/api/checkout/confirm"),
        ("x-request-id", "0b6c5f4e-2f2a-4d8e-9a59-5c1e7d2b8f10"),
        (
            "user-agent",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
        ),
        ("x-user-id", "u00042"),
        ("x-geo-region", "eu"),
        ("x-user-tier", "beta"),
        ("content-length", "512"),
        ("x-user-sessions-30d", "23"),
        ("x-user-purchases-90d", "4"),
        ("x-user-tenure-days", "400"),
        ("x-user-errors-7d", "0"),
        ("accept", "application/json"),
        ("host", "shop.example.com"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

//! The benchmarks' MCP client: rmcp's, over Streamable HTTP, calling `echo` and timing it, and
//! a process's CPU time from `/proc`.

use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceExt as _};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub type Client = RunningService<RoleClient, ()>;

pub async fn connect(url: &str, bearer: Option<&str>) -> Client {
    let mut config =
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()).max_concurrent_requests(256);
    if let Some(b) = bearer {
        config = config.auth_header(b.to_owned());
    }
    let transport = if fresh_connections() {
        StreamableHttpClientTransport::from_config(config)
    } else {
        // Idle connections kept for the next call, as MCP clients' HTTP stacks do (the Python
        // SDK's httpx, for one).
        StreamableHttpClientTransport::with_client(reqwest::Client::new(), config)
    };
    ().serve(transport).await.unwrap()
}

/// `WARDEN_BENCH_CONNECTIONS=fresh`: a new connection for every call (rmcp's default client,
/// which keeps no idle connection).
pub fn fresh_connections() -> bool {
    std::env::var("WARDEN_BENCH_CONNECTIONS").is_ok_and(|v| v == "fresh")
}

pub async fn echo(c: &Client, tool: &str, i: usize) -> Duration {
    let mut p = CallToolRequestParams::new(tool.to_owned());
    p.arguments = Some(
        serde_json::json!({ "message": format!("m{i}") })
            .as_object()
            .unwrap()
            .clone(),
    );
    let t = Instant::now();
    let r = c.peer().call_tool(p).await.unwrap();
    let d = t.elapsed();
    assert_ne!(r.is_error, Some(true), "{r:?}");
    d
}

pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub async fn sequential(c: &Client, tool: &str, n: usize, offset: usize) -> (Duration, Duration) {
    for i in 0..50 {
        echo(c, tool, offset + n + i).await; // warm-up
    }
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        v.push(echo(c, tool, offset + i).await);
    }
    v.sort();
    (pct(&v, 0.5), pct(&v, 0.99))
}

/// Calls per second with 50 calls always in flight, for `secs`.
pub async fn concurrent(c: Arc<Client>, tool: &'static str, secs: u64, offset: usize) -> f64 {
    let stop = Instant::now() + Duration::from_secs(secs);
    let mut set = tokio::task::JoinSet::new();
    for w in 0..50 {
        let c = Arc::clone(&c);
        set.spawn(async move {
            let mut n = 0usize;
            while Instant::now() < stop {
                echo(&c, tool, offset + w * 1_000_000 + n).await;
                n += 1;
            }
            n
        });
    }
    let mut total = 0;
    while let Some(n) = set.join_next().await {
        total += n.unwrap();
    }
    total as f64 / secs as f64
}

pub use crate::cpu::cpu_ms;

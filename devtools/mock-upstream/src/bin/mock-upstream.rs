//! Standalone mock upstream for out-of-process tests and benchmarks.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tollgate_mock_upstream::{MockOptions, MockUpstream, DEFAULT_REPLY};

/// Fake OpenAI- and Anthropic-compatible upstream.
#[derive(Parser, Debug)]
#[command(name = "mock-upstream", version)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8089")]
    listen: SocketAddr,
    /// Default reply text.
    #[arg(long, default_value = DEFAULT_REPLY)]
    reply: String,
    /// Delay between stream chunks, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Do not record requests (for benchmarks).
    #[arg(long)]
    no_record: bool,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    let mock = MockUpstream::start_with(MockOptions {
        record: !cli.no_record,
        bind: cli.listen,
        reply: cli.reply,
        chunk_delay: Duration::from_millis(cli.chunk_delay_ms),
    })
    .await?;
    println!("listening on {}", mock.base_url());
    tokio::signal::ctrl_c().await?;
    drop(mock);
    Ok(())
}

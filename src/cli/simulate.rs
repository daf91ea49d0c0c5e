//! `fluxrouter simulate`: the simulated OpenAI-compatible provider.

use std::net::SocketAddr;

use super::CliResult;

pub fn simulate(listen: SocketAddr) -> CliResult {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        eprintln!("simulated provider on http://{}", listener.local_addr()?);
        fluxrouter::simulate::serve(listener).await
    })?;
    Ok(())
}

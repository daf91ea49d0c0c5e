//! Benchmark baseline: a bare Pingora reverse proxy with no body work, no auth, no routing.
//! `benches/load.sh` and `benches/edge.sh` run it beside the gateway so the gateway's own cost
//! can be told apart from Pingora's and the kernel's.
//!
//! usage: pingora_passthrough LISTEN_ADDR UPSTREAM_ADDR [TLS_LISTEN_ADDR CERT_PEM KEY_PEM]
//!
//! With the TLS arguments it also listens with TLS (rustls, Pingora's own settings: TLS 1.2
//! and 1.3, ALPN h2 then http/1.1), the baseline for FluxRouter's TLS listeners.

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};

struct Passthrough {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, upstream, tls) = match args.as_slice() {
        [listen, upstream] => (listen, upstream, None),
        [listen, upstream, tls_listen, cert, key] => {
            (listen, upstream, Some((tls_listen, cert, key)))
        }
        _ => {
            eprintln!(
                "usage: pingora_passthrough LISTEN_ADDR UPSTREAM_ADDR [TLS_LISTEN_ADDR CERT_PEM KEY_PEM]"
            );
            std::process::exit(2);
        }
    };
    let conf = pingora::server::configuration::ServerConf {
        threads: 2,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        Passthrough {
            upstream: upstream.clone(),
        },
    );
    proxy.add_tcp(listen);
    if let Some((tls_listen, cert, key)) = tls {
        let mut settings = TlsSettings::intermediate(cert, key).expect("certificate and key");
        settings.enable_h2();
        proxy.add_tls_with_settings(tls_listen, None, settings);
    }
    server.add_service(proxy);
    server.run_forever();
}

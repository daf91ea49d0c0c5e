//! A certificate authority that exists for one test: it signs the certificates a TLS listener
//! serves, and a client is told to trust it (a CA file, as a user with a private CA would).

/// A throwaway CA (rcgen, kept in memory); its certificate and key sign what a test needs
/// beyond [`Ca::issue`] (a short-lived certificate, say).
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: rcgen::KeyPair,
}

impl Ca {
    pub fn new() -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "FluxRouter test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// The CA's own certificate, as PEM (what a client's trust file holds).
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `names` (an IP address becomes an IP SAN) and its key, as PEM.
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

impl Default for Ca {
    fn default() -> Ca {
        Ca::new()
    }
}

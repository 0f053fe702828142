//! The embedded certificate authority: one ECDSA P-256 CA for X.509-SVIDs and one ES256 key
//! for JWT-SVIDs, persisted under a data directory (keys 0600) or kept in memory.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use spiffe::{SpiffeId, TrustDomain};
use time::OffsetDateTime;

/// How long a freshly created CA is valid. SVIDs never outlive it: their TTL is clamped.
const CA_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// SVIDs start slightly in the past so that a peer whose clock lags still accepts them.
const BACKDATE: Duration = Duration::from_secs(10);

/// Errors creating, loading or using the CA.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// The data directory or a file in it cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A persisted key or certificate is corrupt.
    #[error(
        "{path} is not a usable CA file ({reason}); move the data directory aside to start a \
         new CA (existing SVIDs will no longer verify)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The persisted CA belongs to another trust domain.
    #[error(
        "the CA in {data_dir} is for trust domain {found}, not {wanted}: use another --data-dir \
         for this trust domain"
    )]
    WrongTrustDomain {
        /// The data directory.
        data_dir: PathBuf,
        /// The trust domain of the persisted CA.
        found: String,
        /// The trust domain asked for.
        wanted: String,
    },
    /// Certificate generation or signing failed.
    #[error("signing failed: {0}")]
    Signing(String),
}

/// An X.509-SVID freshly minted, with its key.
#[derive(Clone)]
pub struct MintedSvid {
    /// The SPIFFE ID in the URI SAN.
    pub spiffe_id: SpiffeId,
    /// Leaf certificate, DER.
    pub cert_der: Vec<u8>,
    /// Private key, PKCS#8 DER.
    pub key_pkcs8_der: Vec<u8>,
    /// Serial number, hexadecimal.
    pub serial: String,
    /// Issue time.
    pub not_before: SystemTime,
    /// Expiry time.
    pub not_after: SystemTime,
    /// The lifetime that was asked for (the certificate may be shorter if the CA expires first).
    pub ttl: Duration,
}

impl std::fmt::Debug for MintedSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedSvid")
            .field("spiffe_id", &self.spiffe_id.to_string())
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl MintedSvid {
    /// When the SVID should be replaced: half-way through its TTL, as SPIRE does. (Measured
    /// back from the expiry: `not_before` is backdated and would make rotation early.)
    pub fn rotate_at(&self) -> SystemTime {
        self.not_after - self.ttl / 2
    }
}

/// The CA and the JWT signing key of one trust domain.
pub struct Authority {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    ca_der: Vec<u8>,
    ca_not_after: SystemTime,
    jwt_key: KeyPair,
    jwt_kid: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain.to_string())
            .field("jwt_kid", &self.jwt_kid)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// A CA that lives only in memory: every start is a new trust root.
    pub fn ephemeral(trust_domain: &TrustDomain) -> Result<Self, AuthorityError> {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(signing)?;
        let jwt_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(signing)?;
        let ca_der = self_signed_ca(trust_domain, &ca_key)?;
        Self::assemble(trust_domain, ca_der, ca_key, jwt_key)
    }

    /// Loads the CA from `data_dir`, creating it on first use. Keys are written 0600.
    pub fn persistent(trust_domain: &TrustDomain, data_dir: &Path) -> Result<Self, AuthorityError> {
        fs::create_dir_all(data_dir).map_err(|e| io(data_dir, e))?;
        let _ = fs::set_permissions(data_dir, fs::Permissions::from_mode(0o700));
        let ca_key_path = data_dir.join("ca.key");
        let ca_cert_path = data_dir.join("ca.pem");
        let jwt_key_path = data_dir.join("jwt.key");

        if !ca_key_path.exists() {
            let fresh = Self::ephemeral(trust_domain)?;
            write_secret(&ca_key_path, &fresh.issuer.key().serialize_pem())?;
            write_secret(&jwt_key_path, &fresh.jwt_key.serialize_pem())?;
            let pem = to_pem("CERTIFICATE", &fresh.ca_der);
            fs::write(&ca_cert_path, pem).map_err(|e| io(&ca_cert_path, e))?;
            return Ok(fresh);
        }

        let ca_key = read_key(&ca_key_path)?;
        let jwt_key = read_key(&jwt_key_path)?;
        let pem = fs::read(&ca_cert_path).map_err(|e| io(&ca_cert_path, e))?;
        let ca_der = x509_parser::pem::parse_x509_pem(&pem)
            .map(|(_, p)| p.contents)
            .map_err(|e| corrupt(&ca_cert_path, e.to_string()))?;
        let found = ca_trust_domain(&ca_der).map_err(|r| corrupt(&ca_cert_path, r))?;
        if found != trust_domain.to_string() {
            return Err(AuthorityError::WrongTrustDomain {
                data_dir: data_dir.to_owned(),
                found,
                wanted: trust_domain.to_string(),
            });
        }
        Self::assemble(trust_domain, ca_der, ca_key, jwt_key)
    }

    fn assemble(
        trust_domain: &TrustDomain,
        ca_der: Vec<u8>,
        ca_key: KeyPair,
        jwt_key: KeyPair,
    ) -> Result<Self, AuthorityError> {
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(ca_der.as_slice()), ca_key)
            .map_err(signing)?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&ca_der)
            .map_err(|e| AuthorityError::Signing(e.to_string()))?;
        let ca_not_after = UNIX_EPOCH
            + Duration::from_secs(
                parsed
                    .validity()
                    .not_after
                    .timestamp()
                    .max(0)
                    .unsigned_abs(),
            );
        let jwt_kid = key_id(jwt_key.public_key_raw());
        Ok(Self {
            trust_domain: trust_domain.clone(),
            issuer,
            ca_der,
            ca_not_after,
            jwt_key,
            jwt_kid,
        })
    }

    /// The trust domain this CA signs for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA certificate, DER: the X.509 bundle of the trust domain.
    pub fn bundle_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// Mints an X.509-SVID per the SPIFFE X.509-SVID specification: exactly one URI SAN,
    /// CA=false, digitalSignature, serverAuth and clientAuth. The TTL is clamped to the CA's
    /// own expiry.
    pub fn mint_x509_svid(
        &self,
        spiffe_id: &SpiffeId,
        ttl: Duration,
    ) -> Result<MintedSvid, AuthorityError> {
        let now = SystemTime::now();
        let not_before = now - BACKDATE;
        let not_after = (now + ttl).min(self.ca_not_after);

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Deputy");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(
            spiffe_id.to_string().try_into().map_err(signing)?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.not_before = OffsetDateTime::from(not_before);
        params.not_after = OffsetDateTime::from(not_after);

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(signing)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(signing)?;
        Ok(MintedSvid {
            spiffe_id: spiffe_id.clone(),
            cert_der: cert.der().to_vec(),
            key_pkcs8_der: key.serialize_der(),
            serial: hex(&serial),
            // The certificate encodes whole seconds; report what it says.
            not_before: truncate_to_seconds(not_before),
            not_after: truncate_to_seconds(not_after),
            ttl,
        })
    }

    /// Mints a JWT-SVID (ES256, with `kid`) for `audiences`.
    pub fn mint_jwt_svid(
        &self,
        spiffe_id: &SpiffeId,
        audiences: &[String],
        ttl: Duration,
    ) -> Result<(String, i64, i64), AuthorityError> {
        let iat = unix_now();
        let exp = iat + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.jwt_kid.clone());
        header.typ = Some("JWT".into());
        let claims = serde_json::json!({
            "sub": spiffe_id.to_string(),
            "aud": audiences,
            "iat": iat,
            "exp": exp,
        });
        let key = jsonwebtoken::EncodingKey::from_ec_der(self.jwt_key.serialized_der());
        let token = jsonwebtoken::encode(&header, &claims, &key)
            .map_err(|e| AuthorityError::Signing(e.to_string()))?;
        Ok((token, iat, exp))
    }

    /// The JWT bundle of the trust domain, as a SPIFFE bundle (JWKS) document.
    pub fn jwks(&self) -> Vec<u8> {
        // public_key_raw() is the uncompressed SEC1 point: 0x04 || X || Y.
        let point = self.jwt_key.public_key_raw();
        let (x, y) = point[1..].split_at(32);
        serde_json::to_vec(&serde_json::json!({
            "keys": [{
                "kty": "EC",
                "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(x),
                "y": URL_SAFE_NO_PAD.encode(y),
                "kid": self.jwt_kid,
                "use": "jwt-svid",
            }],
        }))
        .unwrap_or_default()
    }
}

fn self_signed_ca(trust_domain: &TrustDomain, key: &KeyPair) -> Result<Vec<u8>, AuthorityError> {
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Deputy");
    dn.push(DnType::CommonName, format!("Deputy CA {trust_domain}"));
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{trust_domain}")
            .try_into()
            .map_err(signing)?,
    )];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    params.not_before = OffsetDateTime::from(now - BACKDATE);
    params.not_after = OffsetDateTime::from(now + CA_VALIDITY);
    let cert = params.self_signed(key).map_err(signing)?;
    Ok(cert.der().to_vec())
}

/// The trust domain named by the CA's URI SAN.
fn ca_trust_domain(ca_der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(ca_der).map_err(|e| e.to_string())?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| e.to_string())?
        .ok_or("the CA certificate has no URI SAN")?;
    san.value
        .general_names
        .iter()
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => u.strip_prefix("spiffe://"),
            _ => None,
        })
        .map(str::to_owned)
        .ok_or_else(|| "the CA certificate names no trust domain".into())
}

fn random_serial() -> [u8; 16] {
    let mut serial: [u8; 16] = rand::random();
    // Positive and without a leading zero byte, so that the DER encoding keeps all 16 bytes.
    serial[0] = (serial[0] & 0x7f) | 0x01;
    serial
}

fn key_id(public_key: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, public_key);
    URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn truncate_to_seconds(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    UNIX_EPOCH + Duration::from_secs(secs)
}

pub(crate) fn unix_now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
    )
    .unwrap_or(i64::MAX)
}

/// PEM encoding of one DER object (shared with `deputy svid fetch --write`).
pub fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn write_secret(path: &Path, contents: &str) -> Result<(), AuthorityError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io(path, e))?;
    file.write_all(contents.as_bytes()).map_err(|e| io(path, e))
}

fn read_key(path: &Path) -> Result<KeyPair, AuthorityError> {
    let pem = fs::read_to_string(path).map_err(|e| io(path, e))?;
    KeyPair::from_pem(&pem).map_err(|e| corrupt(path, e.to_string()))
}

fn io(path: &Path, source: std::io::Error) -> AuthorityError {
    AuthorityError::Io {
        path: path.to_owned(),
        source,
    }
}

fn corrupt(path: &Path, reason: String) -> AuthorityError {
    AuthorityError::Corrupt {
        path: path.to_owned(),
        reason,
    }
}

fn signing(e: impl std::fmt::Display) -> AuthorityError {
    AuthorityError::Signing(e.to_string())
}

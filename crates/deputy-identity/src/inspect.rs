//! Inspection of a certificate chain against the SPIFFE X.509-SVID specification.
//!
//! `deputy svid inspect` shows the report; it lists *every* reason a chain would be refused,
//! not only the first, so an operator fixes a bad issuer template in one pass.

use std::fmt::Write as _;

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

/// What an X.509 chain says about itself, and why it would be refused as an X.509-SVID.
#[derive(Debug, Clone)]
pub struct SvidReport {
    /// The URI SANs of the leaf, whatever their scheme.
    pub uri_sans: Vec<String>,
    /// The leaf's SPIFFE ID, when it has exactly one valid one.
    pub spiffe_id: Option<String>,
    /// Serial number of the leaf, hexadecimal.
    pub serial: String,
    /// Start of the leaf's validity.
    pub not_before: OffsetDateTime,
    /// End of the leaf's validity.
    pub not_after: OffsetDateTime,
    /// Key usages set on the leaf.
    pub key_usage: Vec<&'static str>,
    /// Extended key usages set on the leaf.
    pub extended_key_usage: Vec<&'static str>,
    /// How many certificates the chain holds (leaf first).
    pub chain_len: usize,
    /// Every reason the chain would be refused; empty when it is a valid X.509-SVID now.
    pub problems: Vec<String>,
}

/// A file that holds no parseable certificate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    /// No `CERTIFICATE` PEM block and not a DER certificate either.
    #[error("no certificate found: expected PEM `CERTIFICATE` blocks or one DER certificate")]
    NoCertificate,
    /// A certificate that x509-parser cannot decode.
    #[error("certificate {index} of the chain cannot be parsed: {reason}")]
    Unparseable {
        /// Position in the chain, 0 for the leaf.
        index: usize,
        /// The parser's complaint.
        reason: String,
    },
}

impl SvidReport {
    /// Whether the chain is a valid X.509-SVID at the time it was inspected.
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }

    /// A human-readable rendering, one fact per line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let rfc3339 = |t: OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| t.to_string())
        };
        let _ = writeln!(
            out,
            "SPIFFE ID:          {}",
            self.spiffe_id.as_deref().unwrap_or("(none)")
        );
        let _ = writeln!(out, "Serial:             {}", self.serial);
        let _ = writeln!(out, "Not before:         {}", rfc3339(self.not_before));
        let _ = writeln!(out, "Not after:          {}", rfc3339(self.not_after));
        let _ = writeln!(out, "Key usage:          {}", join(&self.key_usage));
        let _ = writeln!(
            out,
            "Extended key usage: {}",
            join(&self.extended_key_usage)
        );
        let _ = writeln!(out, "Chain length:       {}", self.chain_len);
        if self.problems.is_empty() {
            let _ = writeln!(out, "Verdict:            valid X.509-SVID");
        } else {
            let _ = writeln!(
                out,
                "Verdict:            refused as an X.509-SVID, {} problem(s):",
                self.problems.len()
            );
            for p in &self.problems {
                let _ = writeln!(out, "  - {p}");
            }
        }
        out
    }
}

fn join(items: &[&str]) -> String {
    if items.is_empty() {
        "(none)".into()
    } else {
        items.join(", ")
    }
}

/// Splits PEM or DER input into DER certificates, leaf first. Other PEM blocks (keys) are
/// skipped, so a combined `svid.pem` + key file can be inspected as it is.
pub fn certificates_from_bytes(input: &[u8]) -> Result<Vec<Vec<u8>>, InspectError> {
    let is_pem = input.windows(11).any(|w| w == b"-----BEGIN ");
    if !is_pem {
        return if input.is_empty() {
            Err(InspectError::NoCertificate)
        } else {
            Ok(vec![input.to_vec()])
        };
    }
    let ders: Vec<Vec<u8>> = x509_parser::pem::Pem::iter_from_buffer(input)
        .filter_map(Result::ok)
        .filter(|pem| pem.label == "CERTIFICATE")
        .map(|pem| pem.contents)
        .collect();
    if ders.is_empty() {
        return Err(InspectError::NoCertificate);
    }
    Ok(ders)
}

/// Inspects a DER chain (leaf first) at time `now`.
pub fn inspect_chain(chain: &[Vec<u8>], now: OffsetDateTime) -> Result<SvidReport, InspectError> {
    let leaf_der = chain.first().ok_or(InspectError::NoCertificate)?;
    let leaf = parse(leaf_der, 0)?;
    let mut problems = Vec::new();

    let uri_sans = uri_sans(&leaf);
    let spiffe_id = check_uri_sans(&uri_sans, &mut problems);

    let not_before = leaf.validity().not_before.to_datetime();
    let not_after = leaf.validity().not_after.to_datetime();
    if now < not_before {
        problems.push(format!(
            "not yet valid: validity starts in {}s (check the issuer's clock)",
            (not_before - now).whole_seconds()
        ));
    }
    if now > not_after {
        problems.push(format!(
            "expired {}s ago: fetch a fresh SVID (deputy svid fetch)",
            (now - not_after).whole_seconds()
        ));
    }

    let key_usage = check_leaf_key_usage(&leaf, &mut problems);
    let extended_key_usage = check_leaf_eku(&leaf, &mut problems);
    check_leaf_basic_constraints(&leaf, &mut problems);

    for (index, der) in chain.iter().enumerate().skip(1) {
        let cert = parse(der, index)?;
        check_signing_cert(&cert, index, &mut problems);
    }

    Ok(SvidReport {
        uri_sans,
        spiffe_id,
        serial: leaf.raw_serial_as_string(),
        not_before,
        not_after,
        key_usage,
        extended_key_usage,
        chain_len: chain.len(),
        problems,
    })
}

fn parse(der: &[u8], index: usize) -> Result<X509Certificate<'_>, InspectError> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| InspectError::Unparseable {
            index,
            reason: e.to_string(),
        })
}

fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}

fn check_uri_sans(uris: &[String], problems: &mut Vec<String>) -> Option<String> {
    match uris {
        [] => {
            problems.push(
                "no URI SAN: an X.509-SVID carries its SPIFFE ID as exactly one URI SAN".into(),
            );
            None
        }
        [only] => match crate::parse_spiffe_id(only) {
            Ok(id) => Some(id.to_string()),
            Err(e) => {
                problems.push(format!("the URI SAN is not a valid SPIFFE ID: {e}"));
                None
            }
        },
        many => {
            problems.push(format!(
                "{} URI SANs ({}): an X.509-SVID has exactly one",
                many.len(),
                many.join(", ")
            ));
            None
        }
    }
}

fn check_leaf_key_usage(
    cert: &X509Certificate<'_>,
    problems: &mut Vec<String>,
) -> Vec<&'static str> {
    match cert.key_usage() {
        Ok(Some(ku)) => {
            let ku = ku.value;
            let mut set = Vec::new();
            for (on, name) in [
                (ku.digital_signature(), "digitalSignature"),
                (ku.non_repudiation(), "nonRepudiation"),
                (ku.key_encipherment(), "keyEncipherment"),
                (ku.data_encipherment(), "dataEncipherment"),
                (ku.key_agreement(), "keyAgreement"),
                (ku.key_cert_sign(), "keyCertSign"),
                (ku.crl_sign(), "cRLSign"),
            ] {
                if on {
                    set.push(name);
                }
            }
            if !ku.digital_signature() {
                problems
                    .push("key usage lacks digitalSignature, which a leaf SVID must set".into());
            }
            if ku.key_cert_sign() {
                problems.push("key usage sets keyCertSign, which a leaf SVID must not".into());
            }
            if ku.crl_sign() {
                problems.push("key usage sets cRLSign, which a leaf SVID must not".into());
            }
            set
        }
        Ok(None) => {
            problems.push(
                "no key usage extension: a leaf SVID must set it, with digitalSignature".into(),
            );
            Vec::new()
        }
        Err(e) => {
            problems.push(format!("the key usage extension cannot be parsed: {e}"));
            Vec::new()
        }
    }
}

fn check_leaf_eku(cert: &X509Certificate<'_>, problems: &mut Vec<String>) -> Vec<&'static str> {
    match cert.extended_key_usage() {
        Ok(Some(eku)) => {
            let eku = eku.value;
            let mut set = Vec::new();
            if eku.server_auth {
                set.push("serverAuth");
            } else {
                problems
                    .push("extended key usage lacks serverAuth: the SVID cannot serve mTLS".into());
            }
            if eku.client_auth {
                set.push("clientAuth");
            } else {
                problems.push(
                    "extended key usage lacks clientAuth: the SVID cannot call over mTLS".into(),
                );
            }
            set
        }
        Ok(None) => Vec::new(),
        Err(e) => {
            problems.push(format!(
                "the extended key usage extension cannot be parsed: {e}"
            ));
            Vec::new()
        }
    }
}

fn check_leaf_basic_constraints(cert: &X509Certificate<'_>, problems: &mut Vec<String>) {
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {
            problems.push("basic constraints say CA=true: a CA certificate is not an SVID".into());
        }
        Ok(Some(_)) => {}
        Ok(None) => problems.push(
            "no basic constraints extension: a leaf SVID must carry one with CA=false".into(),
        ),
        Err(e) => problems.push(format!("the basic constraints cannot be parsed: {e}")),
    }
}

fn check_signing_cert(cert: &X509Certificate<'_>, index: usize, problems: &mut Vec<String>) {
    let is_ca = cert.extensions().iter().any(
        |ext| matches!(ext.parsed_extension(), ParsedExtension::BasicConstraints(bc) if bc.ca),
    );
    if !is_ca {
        problems.push(format!(
            "certificate {index} of the chain signs the one before it but is not a CA"
        ));
    }
    let can_sign = matches!(cert.key_usage(), Ok(Some(ku)) if ku.value.key_cert_sign());
    if !can_sign {
        problems.push(format!(
            "certificate {index} of the chain lacks the keyCertSign key usage"
        ));
    }
}

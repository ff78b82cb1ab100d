//! The `client_certificate` member of the sideband request
//! (docs/sideband-protocol.md#client-certificate).
//!
//! When the client authenticated with a TLS certificate, the Lua plugin sends the policy
//! provider an object describing it: the certificate's public key as a JSON Web Key (the
//! output of lua-resty-openssl's `dump_jwk`) plus `x5c`, the certificate itself. For an EC
//! key it looks like this (values shortened):
//!
//! ```json
//! {"kty":"EC","crv":"P-256","x":"f83O…","y":"x_FE…","kid":"Nb3o…","x5c":["MIIB…"]}
//! ```
//!
//! [`client_certificate_json`] builds that object from the PEM text nginx exposes as
//! `$ssl_client_raw_cert` (or the whole chain; only the first certificate, the client's own
//! "leaf" certificate, is used).
//!
//! # How the object is built
//!
//! * `kty` and the key members depend on the key type:
//!   * RSA: `n` (modulus) and `e` (public exponent);
//!   * EC: `crv` (`P-256`, `P-384` or `P-521`), `x` and `y` (the point's coordinates);
//!   * OKP (Ed25519, Ed448, X25519, X448): `crv` and `x` (the raw public key).
//!
//!   Numbers (RSA `n`, `e`, EC `x`, `y`) are big-endian bytes with leading zero bytes removed
//!   (OpenSSL's `BN_bn2bin`), so a P-256 coordinate can be 31 bytes instead of 32. Every
//!   value is base64url without padding.
//! * `kid` is base64url(SHA-256(DER SubjectPublicKeyInfo)): a fingerprint of the public key.
//! * `x5c` is a one-element array holding the leaf certificate's DER in standard base64
//!   *with* padding (`ngx.encode_base64`). Intermediates are never included.
//!
//! The members are written in the order `kty`, key members, `kid`, `x5c`. (The Lua plugin's
//! order is unspecified; cjson follows Lua's hash order.)
//!
//! # How the certificate is read
//!
//! A certificate is DER (a tree of tag-length-value elements) wrapped in base64 by PEM. We
//! need one element from it, so this module has its own small DER reader instead of an X.509
//! library (the `.wasm` has a size budget). The path to the key is:
//!
//! ```text
//! Certificate ::= SEQUENCE {
//!     tbsCertificate       SEQUENCE {
//!         version          [0] EXPLICIT INTEGER OPTIONAL,   -- absent in v1 certificates
//!         serialNumber     INTEGER,
//!         signature        AlgorithmIdentifier,
//!         issuer           Name,
//!         validity         SEQUENCE,
//!         subject          Name,
//!         subjectPublicKeyInfo SEQUENCE {                   -- "SPKI": what we want
//!             algorithm        AlgorithmIdentifier ::= SEQUENCE { OID, parameters ANY OPTIONAL },
//!             subjectPublicKey BIT STRING },
//!         ... optional [1] [2] [3] (extensions) },
//!     signatureAlgorithm   AlgorithmIdentifier,
//!     signatureValue       BIT STRING }
//! ```
//!
//! The reader is strict: indefinite lengths, non-minimal length encodings, truncated
//! elements and trailing bytes are errors. Nothing here verifies signatures, validity dates
//! or the chain: nginx did that during the TLS handshake.
//!
//! # Errors
//!
//! Each [`CertError`] variant corresponds to one of the three ERR messages of the Lua plugin;
//! all three make the plugin answer **400** (docs/sideband-protocol.md#failure-table).
//!
//! # Known differences from the Lua plugin
//!
//! Found only in certificates that practically never occur in mTLS:
//! * EC keys in compressed form (`02`/`03` point prefix) and EC keys with explicit curve
//!   parameters are rejected ([`CertError::PublicKey`]); OpenSSL would decode them.
//! * EC points are not checked to lie on the curve (OpenSSL checks; nginx's handshake has
//!   already used the key, so a bad point cannot reach us in practice).
//! * Non-DER certificates (BER lengths, trailing bytes) are rejected where OpenSSL may be
//!   lenient.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::fmt;

/// Why a client certificate could not be turned into the `client_certificate` object.
///
/// The `Display` text is the Lua plugin's ERR log message without its `[ping-auth] ` prefix;
/// the string inside is our own description of the problem (the Lua plugin shows OpenSSL's).
/// Every variant means the request is answered with 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertError {
    /// No certificate could be read: no PEM block, bad base64, or malformed DER
    /// (Lua: `x509.new` failed).
    Parse(String),
    /// The certificate was read but its public key could not be: malformed key, unknown
    /// algorithm or curve encoding (Lua: `cert:get_pubkey()` failed).
    PublicKey(String),
    /// The key is a valid key of a type that has no JWK form: DSA, Diffie-Hellman, RSA-PSS
    /// (Lua: `dump_jwk` returned no JSON, so decoding it failed).
    Jwk(String),
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertError::Parse(e) => {
                write!(f, "Failed to parse client certificate with error: \"{e}\"")
            }
            CertError::PublicKey(e) => write!(
                f,
                "Failed to parse public key from the client certificate with error: \"{e}\""
            ),
            CertError::Jwk(e) => write!(
                f,
                "Unable to decode public key from the client certificate with error: \"{e}\""
            ),
        }
    }
}

impl std::error::Error for CertError {}

/// Builds the `client_certificate` object for a client certificate and returns it as compact
/// JSON text, ready to be embedded in the sideband request.
///
/// `pem` is the certificate in PEM form (`-----BEGIN CERTIFICATE-----` … `-----END
/// CERTIFICATE-----`), as in nginx's `$ssl_client_raw_cert`. Text around the block, CRLF line
/// ends and indented lines are accepted. For a chain, only the first certificate is read (the
/// others are not even decoded). Like lua-resty-openssl's `x509.new(pem, "*")`, input without
/// a PEM block is tried as raw DER. An empty input is an error: callers should check for "no
/// client certificate" (an empty nginx variable) first and then leave the member out.
///
/// The JSON contains only base64 text and fixed names, so it needs no escaping; note that the
/// standard base64 of `x5c` can contain `/`, which lua-cjson would write as `\/`.
pub fn client_certificate_json(pem: &[u8]) -> Result<String, CertError> {
    let der = first_certificate_der(pem).map_err(CertError::Parse)?;
    let spki = subject_public_key_info(&der).map_err(CertError::Parse)?;
    let jwk = public_jwk(spki)?;

    let mut json = String::with_capacity(128 + der.len() * 4 / 3);
    json.push_str("{\"kty\":\"");
    json.push_str(jwk.kty);
    json.push('"');
    for (name, value) in &jwk.members {
        json.push_str(",\"");
        json.push_str(name);
        json.push_str("\":\"");
        json.push_str(value);
        json.push('"');
    }
    json.push_str(",\"kid\":\"");
    json.push_str(&URL_SAFE_NO_PAD.encode(Sha256::digest(&jwk.spki_der)));
    json.push_str("\",\"x5c\":[\"");
    json.push_str(&STANDARD.encode(&der));
    json.push_str("\"]}");
    Ok(json)
}

// ----------------------------------------------------------------------------------------
// PEM
// ----------------------------------------------------------------------------------------

const PEM_BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
const PEM_END: &[u8] = b"-----END CERTIFICATE-----";
/// OpenSSL also reads this older label as a certificate.
const PEM_BEGIN_OLD: &[u8] = b"-----BEGIN X509 CERTIFICATE-----";
const PEM_END_OLD: &[u8] = b"-----END X509 CERTIFICATE-----";

/// Returns the DER bytes of the first certificate in `input` (PEM, or raw DER if `input` has
/// no PEM certificate block).
fn first_certificate_der(input: &[u8]) -> Result<Vec<u8>, String> {
    let begin = find(input, PEM_BEGIN).map(|at| (at, PEM_BEGIN, PEM_END));
    let begin_old = find(input, PEM_BEGIN_OLD).map(|at| (at, PEM_BEGIN_OLD, PEM_END_OLD));
    // Whichever block comes first is the first certificate.
    let block = match (begin, begin_old) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    };

    let Some((at, begin_marker, end_marker)) = block else {
        if input.first() == Some(&SEQUENCE) {
            return Ok(input.to_vec());
        }
        return Err(if input.is_empty() {
            "empty input".into()
        } else {
            "no PEM certificate found (expected \"-----BEGIN CERTIFICATE-----\")".into()
        });
    };

    let body = input.get(at + begin_marker.len()..).unwrap_or_default();
    let end = find(body, end_marker).ok_or("PEM certificate has no END line")?;
    let body = body.get(..end).unwrap_or_default();
    // The base64 text is split over lines (possibly CRLF, possibly indented): drop all
    // whitespace before decoding.
    let base64_text: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if base64_text.is_empty() {
        return Err("PEM certificate block is empty".into());
    }
    STANDARD
        .decode(&base64_text)
        .map_err(|e| format!("PEM certificate is not valid base64: {e}"))
}

/// Position of the first occurrence of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ----------------------------------------------------------------------------------------
// DER reader
// ----------------------------------------------------------------------------------------

// The tags (first byte of an element) this module looks for.
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const NULL: u8 = 0x05;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
/// `[0]` constructed, context-specific: the explicit `version` wrapper of a TBSCertificate.
const VERSION_TAG: u8 = 0xA0;
/// Class bits of a tag; `CONTEXT_SPECIFIC` marks `[n]` tags such as `[3] extensions`.
const CLASS_MASK: u8 = 0xC0;
const CONTEXT_SPECIFIC: u8 = 0x80;

/// One DER element: tag, content and the whole encoding (tag + length + content).
#[derive(Debug, Clone, Copy)]
struct Element<'a> {
    tag: u8,
    content: &'a [u8],
    encoded: &'a [u8],
}

/// Reads DER elements one after the other from a byte slice.
struct DerReader<'a> {
    rest: &'a [u8],
}

impl<'a> DerReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        DerReader { rest: bytes }
    }

    /// The tag of the next element, if any.
    fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Reads the next element, whatever its tag.
    fn any(&mut self, what: &str) -> Result<Element<'a>, String> {
        let start = self.rest;
        let (&tag, after_tag) = start
            .split_first()
            .ok_or_else(|| format!("{what}: missing"))?;
        if tag & 0x1F == 0x1F {
            // Tag numbers >= 31 need more bytes; X.509 never uses them.
            return Err(format!("{what}: unsupported multi-byte tag"));
        }
        let (&first, after_first) = after_tag
            .split_first()
            .ok_or_else(|| format!("{what}: truncated (no length)"))?;
        let (length, after_length) = if first < 0x80 {
            // Short form: the byte is the length.
            (usize::from(first), after_first)
        } else if first == 0x80 {
            return Err(format!("{what}: indefinite length is not allowed in DER"));
        } else {
            // Long form: the low 7 bits say how many big-endian length bytes follow.
            let count = usize::from(first & 0x7F);
            if count > 4 {
                return Err(format!("{what}: length too large"));
            }
            let (bytes, after) = after_first
                .split_at_checked(count)
                .ok_or_else(|| format!("{what}: truncated (length)"))?;
            if bytes.first() == Some(&0) {
                return Err(format!("{what}: non-minimal length encoding"));
            }
            let length = bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            if length < 0x80 {
                return Err(format!("{what}: non-minimal length encoding"));
            }
            (length, after)
        };
        let (content, rest) = after_length
            .split_at_checked(length)
            .ok_or_else(|| format!("{what}: truncated"))?;
        let header_len = start.len() - after_length.len();
        let encoded = start
            .get(..header_len + length)
            .ok_or_else(|| format!("{what}: truncated"))?;
        self.rest = rest;
        Ok(Element {
            tag,
            content,
            encoded,
        })
    }

    /// Reads the next element and checks that its tag is `tag`.
    fn expect(&mut self, tag: u8, what: &str) -> Result<Element<'a>, String> {
        match self.peek_tag() {
            Some(found) if found != tag => Err(format!(
                "{what}: expected tag 0x{tag:02X}, found 0x{found:02X}"
            )),
            _ => self.any(what),
        }
    }

    /// Fails if anything is left after the last element read.
    fn finish(&self, what: &str) -> Result<(), String> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(format!("{what}: unexpected data after the last element"))
        }
    }
}

/// Walks `Certificate → tbsCertificate → subjectPublicKeyInfo` and returns the SPKI element.
fn subject_public_key_info(der: &[u8]) -> Result<Element<'_>, String> {
    let mut top = DerReader::new(der);
    let certificate = top.expect(SEQUENCE, "Certificate")?;
    top.finish("Certificate")?;

    let mut cert = DerReader::new(certificate.content);
    let tbs = cert.expect(SEQUENCE, "tbsCertificate")?;
    cert.expect(SEQUENCE, "signatureAlgorithm")?;
    cert.expect(BIT_STRING, "signatureValue")?;
    cert.finish("Certificate")?;

    let mut fields = DerReader::new(tbs.content);
    if fields.peek_tag() == Some(VERSION_TAG) {
        let version = fields.any("version")?;
        let mut inner = DerReader::new(version.content);
        inner.expect(INTEGER, "version")?;
        inner.finish("version")?;
    }
    fields.expect(INTEGER, "serialNumber")?;
    fields.expect(SEQUENCE, "signature")?;
    fields.expect(SEQUENCE, "issuer")?;
    fields.expect(SEQUENCE, "validity")?;
    fields.expect(SEQUENCE, "subject")?;
    let spki = fields.expect(SEQUENCE, "subjectPublicKeyInfo")?;
    // Then only the optional [1] issuerUniqueID, [2] subjectUniqueID, [3] extensions.
    while !fields.is_empty() {
        let extra = fields.any("tbsCertificate")?;
        if extra.tag & CLASS_MASK != CONTEXT_SPECIFIC {
            return Err(format!(
                "tbsCertificate: unexpected element with tag 0x{:02X}",
                extra.tag
            ));
        }
    }
    Ok(spki)
}

// ----------------------------------------------------------------------------------------
// Public key → JWK
// ----------------------------------------------------------------------------------------

// Object identifiers, as the content bytes of their DER encoding.
/// 1.2.840.113549.1.1.1 rsaEncryption
const OID_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01];
/// 1.2.840.10045.2.1 id-ecPublicKey
const OID_EC: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
/// 1.2.840.10045.3.1.7 prime256v1 (P-256)
const OID_P256: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
/// 1.3.132.0.34 secp384r1 (P-384)
const OID_P384: &[u8] = &[0x2B, 0x81, 0x04, 0x00, 0x22];
/// 1.3.132.0.35 secp521r1 (P-521)
const OID_P521: &[u8] = &[0x2B, 0x81, 0x04, 0x00, 0x23];
/// 1.3.101.110 X25519, .111 X448, .112 Ed25519, .113 Ed448 (RFC 8410)
const OID_X25519: &[u8] = &[0x2B, 0x65, 0x6E];
const OID_X448: &[u8] = &[0x2B, 0x65, 0x6F];
const OID_ED25519: &[u8] = &[0x2B, 0x65, 0x70];
const OID_ED448: &[u8] = &[0x2B, 0x65, 0x71];

/// Key algorithms OpenSSL decodes but lua-resty-openssl cannot write as a JWK
/// ("jwk.dump_jwk: not implemented for this key type").
const NO_JWK_FORM: &[(&[u8], &str)] = &[
    // 1.2.840.10040.4.1
    (&[0x2A, 0x86, 0x48, 0xCE, 0x38, 0x04, 0x01], "DSA"),
    // 1.2.840.113549.1.3.1
    (
        &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x03, 0x01],
        "DH",
    ),
    // 1.2.840.10046.2.1
    (&[0x2A, 0x86, 0x48, 0xCE, 0x3E, 0x02, 0x01], "X9.42 DH"),
    // 1.2.840.113549.1.1.10
    (
        &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0A],
        "RSASSA-PSS",
    ),
];

/// The JWK of a public key, before the JSON text is written.
struct Jwk {
    kty: &'static str,
    /// Key members in output order, e.g. `[("n", …), ("e", …)]`.
    members: Vec<(&'static str, String)>,
    /// The SubjectPublicKeyInfo DER as OpenSSL would write it: the bytes hashed for `kid`.
    spki_der: Vec<u8>,
}

/// Turns a SubjectPublicKeyInfo element into a [`Jwk`].
fn public_jwk(spki: Element<'_>) -> Result<Jwk, CertError> {
    let key_error = CertError::PublicKey;
    let mut fields = DerReader::new(spki.content);
    let algorithm = fields.expect(SEQUENCE, "algorithm").map_err(key_error)?;
    let key_bits = fields
        .expect(BIT_STRING, "subjectPublicKey")
        .map_err(key_error)?;
    fields.finish("subjectPublicKeyInfo").map_err(key_error)?;

    let mut alg = DerReader::new(algorithm.content);
    let oid = alg.expect(OID, "algorithm").map_err(key_error)?.content;
    // The parameters are optional, hence `None` when absent.
    let parameters = if alg.is_empty() {
        None
    } else {
        Some(alg.any("algorithm parameters").map_err(key_error)?)
    };
    alg.finish("algorithm").map_err(key_error)?;

    // A BIT STRING's first content byte counts the unused bits of its last byte; a key is
    // always a whole number of bytes.
    let key = match key_bits.content.split_first() {
        Some((0, key)) => key,
        _ => {
            return Err(CertError::PublicKey(
                "subjectPublicKey: not a whole number of bytes".into(),
            ))
        }
    };

    if oid == OID_RSA {
        rsa_jwk(key)
    } else if oid == OID_EC {
        ec_jwk(parameters, key, spki.encoded)
    } else if let Some(crv) = okp_curve(oid) {
        okp_jwk(crv, parameters, key, spki.encoded)
    } else if let Some((_, name)) = NO_JWK_FORM.iter().find(|(known, _)| *known == oid) {
        Err(CertError::Jwk(format!(
            "{name} keys have no JWK form (jwk.dump_jwk: not implemented for this key type)"
        )))
    } else {
        Err(CertError::PublicKey(format!(
            "unsupported public key algorithm {}",
            dotted_oid(oid)
        )))
    }
}

/// RSA: the key is `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
///
/// Algorithm parameters are ignored (OpenSSL ignores them too; they should be NULL).
fn rsa_jwk(key: &[u8]) -> Result<Jwk, CertError> {
    let key_error = CertError::PublicKey;
    let mut outer = DerReader::new(key);
    let sequence = outer.expect(SEQUENCE, "RSAPublicKey").map_err(key_error)?;
    outer.finish("RSAPublicKey").map_err(key_error)?;
    let mut numbers = DerReader::new(sequence.content);
    let n = numbers.expect(INTEGER, "modulus").map_err(key_error)?;
    let e = numbers
        .expect(INTEGER, "publicExponent")
        .map_err(key_error)?;
    numbers.finish("RSAPublicKey").map_err(key_error)?;
    if n.content.is_empty() || e.content.is_empty() {
        return Err(CertError::PublicKey("RSAPublicKey: empty INTEGER".into()));
    }
    // OpenSSL reads these INTEGERs as unsigned numbers (`BN_bin2bn`) and the JWK holds their
    // bytes without leading zeros (`BN_bn2bin`).
    let n = strip_leading_zeros(n.content);
    let e = strip_leading_zeros(e.content);

    // OpenSSL hashes the key as it re-encodes it: NULL parameters and minimal INTEGERs.
    let rsa_public_key = der(
        SEQUENCE,
        &[
            der(INTEGER, &unsigned_integer(n)),
            der(INTEGER, &unsigned_integer(e)),
        ]
        .concat(),
    );
    let spki_der = der(
        SEQUENCE,
        &[
            der(SEQUENCE, &[der(OID, OID_RSA), der(NULL, &[])].concat()),
            der(BIT_STRING, &[&[0u8][..], &rsa_public_key].concat()),
        ]
        .concat(),
    );
    Ok(Jwk {
        kty: "RSA",
        members: vec![
            ("n", URL_SAFE_NO_PAD.encode(n)),
            ("e", URL_SAFE_NO_PAD.encode(e)),
        ],
        spki_der,
    })
}

/// EC: the parameters name the curve (an OID) and the key is the point `04 || x || y`.
fn ec_jwk(parameters: Option<Element<'_>>, key: &[u8], spki: &[u8]) -> Result<Jwk, CertError> {
    let curve = match parameters {
        Some(Element {
            tag: OID, content, ..
        }) => content,
        Some(Element { tag: SEQUENCE, .. }) => {
            return Err(CertError::PublicKey(
                "EC keys with explicit curve parameters are not supported".into(),
            ))
        }
        _ => return Err(CertError::PublicKey("EC key without a named curve".into())),
    };
    // (JWK name, coordinate size in bytes). lua-resty-openssl names only these three curves;
    // for any other curve `crv` is nil and the member is left out.
    let known = match curve {
        c if c == OID_P256 => Some(("P-256", 32)),
        c if c == OID_P384 => Some(("P-384", 48)),
        c if c == OID_P521 => Some(("P-521", 66)),
        _ => None,
    };

    let coordinates = match key.split_first() {
        Some((0x04, coordinates)) => coordinates,
        Some((0x02 | 0x03, _)) => {
            return Err(CertError::PublicKey(
                "compressed EC points are not supported".into(),
            ))
        }
        _ => {
            return Err(CertError::PublicKey(
                "EC point is not in uncompressed form".into(),
            ))
        }
    };
    let size = coordinates.len() / 2;
    let bad_length = coordinates.is_empty()
        || coordinates.len() % 2 != 0
        || known.is_some_and(|(_, expected)| size != expected);
    if bad_length {
        return Err(CertError::PublicKey(format!(
            "EC point has the wrong length ({} bytes)",
            key.len()
        )));
    }
    let (x, y) = coordinates.split_at(size);

    let mut members = Vec::with_capacity(3);
    if let Some((crv, _)) = known {
        members.push(("crv", crv.to_string()));
    }
    members.push(("x", URL_SAFE_NO_PAD.encode(strip_leading_zeros(x))));
    members.push(("y", URL_SAFE_NO_PAD.encode(strip_leading_zeros(y))));
    Ok(Jwk {
        kty: "EC",
        members,
        // A DER SPKI with a named curve and an uncompressed point is exactly what OpenSSL
        // writes back, so the certificate's bytes can be hashed as they are.
        spki_der: spki.to_vec(),
    })
}

/// The JWK `crv` of an RFC 8410 key algorithm and its public key size in bytes.
fn okp_curve(oid: &[u8]) -> Option<(&'static str, usize)> {
    match oid {
        o if o == OID_ED25519 => Some(("Ed25519", 32)),
        o if o == OID_ED448 => Some(("Ed448", 57)),
        o if o == OID_X25519 => Some(("X25519", 32)),
        o if o == OID_X448 => Some(("X448", 56)),
        _ => None,
    }
}

/// OKP (RFC 8037): the key is the raw public key, written as is (no zero stripping).
fn okp_jwk(
    (crv, size): (&'static str, usize),
    parameters: Option<Element<'_>>,
    key: &[u8],
    spki: &[u8],
) -> Result<Jwk, CertError> {
    if parameters.is_some() {
        return Err(CertError::PublicKey(format!(
            "{crv} key must not have algorithm parameters"
        )));
    }
    if key.len() != size {
        return Err(CertError::PublicKey(format!(
            "{crv} key has the wrong length ({} bytes)",
            key.len()
        )));
    }
    Ok(Jwk {
        kty: "OKP",
        members: vec![("crv", crv.to_string()), ("x", URL_SAFE_NO_PAD.encode(key))],
        spki_der: spki.to_vec(),
    })
}

// ----------------------------------------------------------------------------------------
// Small helpers
// ----------------------------------------------------------------------------------------

/// `bytes` without its leading zero bytes (all of them for zero).
fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first_non_zero = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes.get(first_non_zero..).unwrap_or_default()
}

/// DER INTEGER content for an unsigned big-endian number without leading zeros: a zero
/// byte is added when the top bit is set (it would read as negative otherwise).
fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    match magnitude.first() {
        None => vec![0],
        Some(&top) if top >= 0x80 => [&[0u8][..], magnitude].concat(),
        Some(_) => magnitude.to_vec(),
    }
}

/// Encodes one DER element.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let length = content.len();
    if length < 0x80 {
        out.push(length as u8);
    } else {
        let bytes = length.to_be_bytes();
        let significant = strip_leading_zeros(&bytes);
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(content);
    out
}

/// The dotted form of an OID's DER content (e.g. `1.2.840.10040.4.1`), for error messages.
fn dotted_oid(content: &[u8]) -> String {
    let mut arcs: Vec<u128> = Vec::new();
    let mut value: u128 = 0;
    for &byte in content {
        value = value
            .saturating_mul(128)
            .saturating_add(u128::from(byte & 0x7F));
        if byte & 0x80 == 0 {
            arcs.push(value);
            value = 0;
        }
    }
    let Some((&first, rest)) = arcs.split_first() else {
        return "(empty OID)".into();
    };
    // The first encoded number packs the first two arcs: 40 * arc1 + arc2.
    let (arc1, arc2) = match first {
        0..=39 => (0, first),
        40..=79 => (1, first - 40),
        _ => (2, first - 80),
    };
    let mut text = format!("{arc1}.{arc2}");
    for arc in rest {
        text.push('.');
        text.push_str(&arc.to_string());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Reads `tests/fixtures/certs/<name>` (made by `generate.sh` there).
    fn fixture(name: &str) -> Vec<u8> {
        let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests/fixtures/certs", name]
            .iter()
            .collect();
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The JSON openssl says the certificate `<name>.pem` must give.
    fn expected(name: &str) -> String {
        String::from_utf8(fixture(&format!("{name}.expected.json")))
            .unwrap()
            .trim_end()
            .to_string()
    }

    fn convert(name: &str) -> Result<String, CertError> {
        client_certificate_json(&fixture(&format!("{name}.pem")))
    }

    /// The leaf DER of a fixture, taken from its expected `x5c`.
    fn leaf_der(name: &str) -> Vec<u8> {
        let json: serde_json::Value = serde_json::from_str(&expected(name)).unwrap();
        STANDARD.decode(json["x5c"][0].as_str().unwrap()).unwrap()
    }

    fn pem_of(der: &[u8]) -> String {
        let body = STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        )
    }

    fn assert_parse_error(input: &[u8]) {
        match client_certificate_json(input) {
            Err(CertError::Parse(_)) => {}
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    // --- Output compared with openssl ------------------------------------------------------

    #[test]
    fn matches_openssl_for_every_supported_key_type() {
        for name in [
            "rsa-leaf",
            "ec-p256",
            "ec-p384",
            "ec-p521",
            "ec-p256-leading-zero",
            "ec-p521-leading-zero",
            "ec-secp256k1",
            "ed25519",
            "ed448",
            "x25519-v1",
            "x448-v1",
        ] {
            assert_eq!(convert(name).unwrap(), expected(name), "fixture {name}");
        }
    }

    #[test]
    fn rsa_object_has_the_lua_members_in_order() {
        let json = convert("rsa-leaf").unwrap();
        assert!(json.starts_with("{\"kty\":\"RSA\",\"n\":\""), "{json}");
        // Member order, independent of how serde_json orders maps.
        let positions: Vec<usize> = ["kty", "n", "e", "kid", "x5c"]
            .iter()
            .map(|name| json.find(&format!("\"{name}\":")).unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{json}");
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value.as_object().unwrap().len(), 5);
        assert_eq!(value["e"], "AQAB");
        // 2048-bit modulus: 256 bytes once the DER sign byte is stripped.
        let n = URL_SAFE_NO_PAD
            .decode(value["n"].as_str().unwrap())
            .unwrap();
        assert_eq!(n.len(), 256);
    }

    #[test]
    fn chain_gives_the_leaf_only() {
        let json = convert("rsa-chain").unwrap();
        assert_eq!(json, expected("rsa-leaf"));
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["x5c"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn leading_zero_coordinates_are_stripped() {
        // The fixtures were generated so that x or y starts with a zero byte; the JWK value
        // must then be shorter than the curve's coordinate size.
        for (name, size) in [("ec-p256-leading-zero", 32), ("ec-p521-leading-zero", 66)] {
            let value: serde_json::Value = serde_json::from_str(&convert(name).unwrap()).unwrap();
            let lengths: Vec<usize> = ["x", "y"]
                .iter()
                .map(|c| {
                    URL_SAFE_NO_PAD
                        .decode(value[*c].as_str().unwrap())
                        .unwrap()
                        .len()
                })
                .collect();
            assert!(lengths.iter().all(|&l| l <= size), "{name}: {lengths:?}");
            assert!(lengths.iter().any(|&l| l < size), "{name}: {lengths:?}");
        }
    }

    #[test]
    fn curve_without_a_jwk_name_has_no_crv() {
        let value: serde_json::Value =
            serde_json::from_str(&convert("ec-secp256k1").unwrap()).unwrap();
        assert_eq!(value["kty"], "EC");
        assert!(value.get("crv").is_none());
    }

    #[test]
    fn v1_certificate_without_version_field() {
        // x25519-v1.pem has no [0] version element; check that the fixture really is v1.
        let der = leaf_der("x25519-v1");
        let tbs_first_tag = DerReader::new(&der)
            .any("cert")
            .map(|c| DerReader::new(c.content).any("tbs").unwrap().content[0])
            .unwrap();
        assert_eq!(tbs_first_tag, INTEGER);
        assert_eq!(convert("x25519-v1").unwrap(), expected("x25519-v1"));
    }

    // --- Input forms ------------------------------------------------------------------------

    #[test]
    fn accepts_crlf_indentation_and_surrounding_text() {
        let pem = String::from_utf8(fixture("ec-p256.pem")).unwrap();
        let crlf = pem.replace('\n', "\r\n");
        let indented = pem.replace('\n', "\n\t ");
        let surrounded = format!(
            "subject=CN = whatever\n-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n{pem}trailing text"
        );
        for input in [crlf, indented, surrounded] {
            assert_eq!(
                client_certificate_json(input.as_bytes()).unwrap(),
                expected("ec-p256")
            );
        }
    }

    #[test]
    fn accepts_old_pem_label() {
        let pem = String::from_utf8(fixture("ed25519.pem"))
            .unwrap()
            .replace("CERTIFICATE", "X509 CERTIFICATE");
        assert_eq!(
            client_certificate_json(pem.as_bytes()).unwrap(),
            expected("ed25519")
        );
    }

    #[test]
    fn accepts_raw_der() {
        let der = leaf_der("rsa-leaf");
        assert_eq!(client_certificate_json(&der).unwrap(), expected("rsa-leaf"));
    }

    #[test]
    fn later_certificates_of_a_chain_are_not_read() {
        // Like OpenSSL's PEM reader, only the first block is decoded.
        let pem = String::from_utf8(fixture("rsa-leaf.pem")).unwrap();
        let input = format!("{pem}-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n");
        assert_eq!(
            client_certificate_json(input.as_bytes()).unwrap(),
            expected("rsa-leaf")
        );
    }

    // --- Parse errors -----------------------------------------------------------------------

    #[test]
    fn garbage_is_a_parse_error() {
        for input in [
            &b""[..],
            b"hello",
            b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
            b"-----BEGIN CERTIFICATE-----\nMIIB\n",
            b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
            b"-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
            b"\x30\x03\x02\x01",
        ] {
            assert_parse_error(input);
        }
    }

    #[test]
    fn parse_error_message_mirrors_lua() {
        let err = client_certificate_json(b"hello").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Failed to parse client certificate with error: \
             \"no PEM certificate found (expected \"-----BEGIN CERTIFICATE-----\")\""
        );
    }

    #[test]
    fn every_truncation_is_a_parse_error() {
        let der = leaf_der("rsa-leaf");
        for len in 0..der.len() {
            let prefix = der.get(..len).unwrap();
            assert_parse_error(prefix);
            assert_parse_error(pem_of(prefix).as_bytes());
        }
    }

    #[test]
    fn trailing_bytes_are_a_parse_error() {
        let mut der = leaf_der("ec-p256");
        der.push(0);
        assert_parse_error(pem_of(&der).as_bytes());
    }

    #[test]
    fn indefinite_and_non_minimal_lengths_are_parse_errors() {
        let der = leaf_der("ec-p256");
        // The outer SEQUENCE is `30 82 xx xx` (a 2-byte long-form length).
        assert_eq!(der[..2], [0x30, 0x82]);
        let mut indefinite = vec![0x30, 0x80];
        indefinite.extend_from_slice(&der[4..]);
        indefinite.extend_from_slice(&[0, 0]);
        assert_parse_error(pem_of(&indefinite).as_bytes());

        let mut padded = vec![0x30, 0x83, 0x00];
        padded.extend_from_slice(&der[2..]);
        assert_parse_error(pem_of(&padded).as_bytes());

        // `30 81 05 …`: a long form for a length that fits the short form.
        let tiny = [0x30, 0x81, 0x05, 0x02, 0x01, 0x00, 0x05, 0x00];
        assert_parse_error(pem_of(&tiny).as_bytes());
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        // Every byte of a certificate replaced by a few values: any result but a panic.
        let der = leaf_der("ec-p384");
        for i in 0..der.len() {
            for value in [0x00, 0x7F, 0x80, 0x81, 0x84, 0xFF] {
                let mut bad = der.clone();
                bad[i] = value;
                let _ = client_certificate_json(&bad);
            }
        }
    }

    // --- Key errors -------------------------------------------------------------------------

    #[test]
    fn dsa_key_has_no_jwk_form() {
        let err = convert("dsa").unwrap_err();
        assert!(matches!(err, CertError::Jwk(_)), "{err:?}");
        assert!(err.to_string().starts_with(
            "Unable to decode public key from the client certificate with error: \"DSA"
        ));
    }

    #[test]
    fn rsa_pss_key_has_no_jwk_form() {
        // lua-resty-openssl only writes EVP_PKEY_RSA keys, not RSA-PSS ones.
        assert!(matches!(convert("rsa-pss"), Err(CertError::Jwk(_))));
    }

    #[test]
    fn unknown_key_algorithm_is_a_public_key_error() {
        // Rename the Ed25519 OID (1.3.101.112) to the unassigned 1.3.101.127 everywhere.
        let der = leaf_der("ed25519");
        let patched: Vec<u8> = {
            let mut out = der.clone();
            for i in 0..out.len().saturating_sub(4) {
                if out[i..i + 5] == [0x06, 0x03, 0x2B, 0x65, 0x70] {
                    out[i + 4] = 0x7F;
                }
            }
            out
        };
        assert_ne!(patched, der);
        let err = client_certificate_json(&patched).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Failed to parse public key from the client certificate with error: \
             \"unsupported public key algorithm 1.3.101.127\""
        );
    }

    #[test]
    fn compressed_ec_point_is_a_public_key_error() {
        assert!(matches!(
            convert("ec-compressed"),
            Err(CertError::PublicKey(_))
        ));
    }

    // --- Helpers ----------------------------------------------------------------------------

    #[test]
    fn der_writer_round_trips() {
        for len in [0usize, 1, 127, 128, 255, 256, 70_000] {
            let content = vec![0xAB; len];
            let encoded = der(SEQUENCE, &content);
            let mut reader = DerReader::new(&encoded);
            let element = reader.any("test").unwrap();
            assert!(reader.is_empty());
            assert_eq!(element.tag, SEQUENCE);
            assert_eq!(element.content, &content[..]);
            assert_eq!(element.encoded, &encoded[..]);
        }
    }

    #[test]
    fn integers_are_written_minimally() {
        assert_eq!(unsigned_integer(&[]), [0]);
        assert_eq!(unsigned_integer(&[1, 0, 1]), [1, 0, 1]);
        assert_eq!(unsigned_integer(&[0x80]), [0, 0x80]);
        assert_eq!(strip_leading_zeros(&[0, 0, 5, 0]), [5, 0]);
        assert_eq!(strip_leading_zeros(&[0, 0]), [0u8; 0]);
    }

    #[test]
    fn oids_print_dotted() {
        assert_eq!(dotted_oid(OID_RSA), "1.2.840.113549.1.1.1");
        assert_eq!(dotted_oid(OID_P521), "1.3.132.0.35");
        assert_eq!(dotted_oid(OID_ED25519), "1.3.101.112");
    }

    #[test]
    fn rsa_kid_uses_openssl_re_encoding() {
        // The certificate's own SPKI bytes equal OpenSSL's re-encoding here, so the kid can
        // be checked directly against them too.
        let der = leaf_der("rsa-leaf");
        let spki = subject_public_key_info(&der).unwrap();
        let jwk = public_jwk(spki).unwrap();
        assert_eq!(jwk.spki_der, spki.encoded);
    }
}

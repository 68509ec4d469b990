//! SAML 2.0 service provider for tenants whose identity provider speaks SAML: the
//! AuthnRequest (HTTP-Redirect binding), the SP metadata, and the checks of a Response posted
//! back (HTTP-POST binding) before its assertion becomes a principal.
//!
//! XML signatures are verified by `xmlsec1` (the xmlsec library's command line, Debian package
//! `xmlsec1`: canonicalisation and RSA/ECDSA done by a real implementation) with the tenant's
//! configured certificate only — certificates a response carries in `KeyInfo` are never
//! trusted. What xmlsec does not decide, this module does, on the parsed document
//! (`roxmltree`, which refuses DTDs, so no entity expansion or external entities):
//!
//! - exactly one `Assertion`, a direct child of the `Response`, and no duplicate `ID`s — so the
//!   element whose signature verified is the one read (signature wrapping: an unsigned evil
//!   assertion beside, around or instead of the signed one is refused);
//! - each signature a direct child of the `Response` or of that `Assertion`, with one
//!   `Reference` to its parent's `ID` and only the enveloped-signature and exclusive c14n
//!   transforms — a signature over anything else (an `Extensions`, another element) signs
//!   nothing this module reads;
//! - the `NameID` and attribute values are single text nodes (a comment inside `NameID` does
//!   not change the canonical form xmlsec verifies, but would truncate a naive text read);
//! - `Issuer`, `Status`, `Destination`, `InResponseTo` (only answers to this browser's own
//!   request: no IdP-initiated login), `Audience`, bearer `SubjectConfirmationData`
//!   (`Recipient`, `NotOnOrAfter`) and `Conditions` (`NotBefore`, `NotOnOrAfter`), with a small
//!   clock skew; the caller keeps a replay cache of assertion ids.

use std::io::Write as _;
use std::time::Duration;

use base64::Engine as _;
use jiff::Timestamp;
use serde_json::{Map, Value};

use crate::tenancy::model::SamlLoginSettings;

const SAMLP: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
const SAML: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
const DS: &str = "http://www.w3.org/2000/09/xmldsig#";
const SUCCESS: &str = "urn:oasis:names:tc:SAML:2.0:status:Success";
const BEARER: &str = "urn:oasis:names:tc:SAML:2.0:cm:bearer";
const ALLOWED_TRANSFORMS: [&str; 3] = [
    "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
    "http://www.w3.org/2001/10/xml-exc-c14n#",
    "http://www.w3.org/2001/10/xml-exc-c14n#WithComments",
];
/// The largest response read (a few KB is usual; signed responses with many attributes less
/// than 100 KB).
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// How long xmlsec1 may take.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SamlError {
    #[error("the SAMLResponse is not base64")]
    Encoding,
    #[error("the response is larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    #[error("the response is not well-formed XML without a DTD: {0}")]
    Xml(String),
    #[error("the response's structure is refused: {0}")]
    Structure(String),
    #[error("a signature does not verify with the identity provider's certificate")]
    Signature,
    #[error("the signature verifier could not run: {0}")]
    Verifier(String),
    #[error("the identity provider reports {0}")]
    Status(String),
    #[error("{0}")]
    Condition(String),
    #[error("this assertion was used already")]
    Replay,
}

impl SamlError {
    /// Stable short name for logs and audit records.
    pub fn slug(&self) -> &'static str {
        match self {
            SamlError::Encoding => "saml-encoding",
            SamlError::TooLarge => "saml-too-large",
            SamlError::Xml(_) => "saml-xml",
            SamlError::Structure(_) => "saml-structure",
            SamlError::Signature => "saml-signature",
            SamlError::Verifier(_) => "saml-verifier",
            SamlError::Status(_) => "saml-status",
            SamlError::Condition(_) => "saml-condition",
            SamlError::Replay => "saml-replay",
        }
    }
}

fn structure(message: impl Into<String>) -> SamlError {
    SamlError::Structure(message.into())
}

fn condition(message: impl Into<String>) -> SamlError {
    SamlError::Condition(message.into())
}

/// What a response must match.
pub struct Expected<'a> {
    pub idp: &'a SamlLoginSettings,
    pub sp_entity_id: &'a str,
    pub acs_url: &'a str,
    /// The `ID` of the AuthnRequest this browser sent.
    pub request_id: &'a str,
    pub now: Timestamp,
    pub skew: Duration,
    /// The `xmlsec1` program.
    pub xmlsec1: &'a str,
}

/// An assertion that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// `sub` and `NameID`: the NameID; one claim per attribute `Name` (a string, or a list
    /// when the attribute has several values).
    pub claims: Map<String, Value>,
    pub assertion_id: String,
    /// Until when the assertion could be replayed (its latest `NotOnOrAfter`).
    pub valid_until: Timestamp,
    /// `AuthnStatement/@SessionNotOnOrAfter`, when the IdP limits the session.
    pub session_until: Option<Timestamp>,
}

/// The XML of a `SAMLResponse` form field (base64, line breaks allowed).
pub fn decode_post(field: &str) -> Result<Vec<u8>, SamlError> {
    let compact: String = field.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact.len() > MAX_RESPONSE_BYTES * 4 / 3 + 4 {
        return Err(SamlError::TooLarge);
    }
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|_| SamlError::Encoding)
}

/// Checks a response and verifies its signatures; the verified assertion's claims.
pub async fn verify(xml: &[u8], expected: &Expected<'_>) -> Result<Verified, SamlError> {
    if xml.len() > MAX_RESPONSE_BYTES {
        return Err(SamlError::TooLarge);
    }
    let text = std::str::from_utf8(xml).map_err(|_| SamlError::Xml("not UTF-8".into()))?;
    let (verified, signatures) = inspect(text, expected)?;
    for signature in signatures {
        verify_signature(
            text,
            &expected.idp.idp_certificate,
            signature,
            expected.xmlsec1,
        )
        .await?;
    }
    Ok(verified)
}

/// Which signature element xmlsec1 verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SignatureAt {
    Response,
    Assertion,
}

impl SignatureAt {
    fn xpath(self) -> &'static str {
        match self {
            SignatureAt::Response => {
                "/*[local-name()='Response' and namespace-uri()='urn:oasis:names:tc:SAML:2.0:protocol']\
                 /*[local-name()='Signature' and namespace-uri()='http://www.w3.org/2000/09/xmldsig#']"
            }
            SignatureAt::Assertion => {
                "/*[local-name()='Response' and namespace-uri()='urn:oasis:names:tc:SAML:2.0:protocol']\
                 /*[local-name()='Assertion' and namespace-uri()='urn:oasis:names:tc:SAML:2.0:assertion']\
                 /*[local-name()='Signature' and namespace-uri()='http://www.w3.org/2000/09/xmldsig#']"
            }
        }
    }
}

fn is(node: roxmltree::Node<'_, '_>, namespace: &str, name: &str) -> bool {
    node.is_element()
        && node.tag_name().name() == name
        && node.tag_name().namespace() == Some(namespace)
}

fn children<'a, 'input>(
    node: roxmltree::Node<'a, 'input>,
    namespace: &'static str,
    name: &'static str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'input>> {
    node.children().filter(move |c| is(*c, namespace, name))
}

/// The one child `name` of `node`.
fn only_child<'a, 'input>(
    node: roxmltree::Node<'a, 'input>,
    namespace: &'static str,
    name: &'static str,
) -> Result<roxmltree::Node<'a, 'input>, SamlError> {
    let mut found = children(node, namespace, name);
    match (found.next(), found.next()) {
        (Some(one), None) => Ok(one),
        (None, _) => Err(structure(format!(
            "{} has no {name}",
            node.tag_name().name()
        ))),
        (Some(_), Some(_)) => Err(structure(format!(
            "{} has more than one {name}",
            node.tag_name().name()
        ))),
    }
}

/// The text of an element that holds nothing but one text node (no comments, no elements:
/// `admin@acme.test<!---->.evil.test` is refused, not read as `admin@acme.test`).
fn sole_text(node: roxmltree::Node<'_, '_>) -> Result<String, SamlError> {
    let mut nodes = node.children();
    match (nodes.next(), nodes.next()) {
        (Some(text), None) if text.is_text() => Ok(text.text().unwrap_or("").trim().to_string()),
        (None, _) => Ok(String::new()),
        _ => Err(structure(format!(
            "{} holds more than one text (a comment or element inside it)",
            node.tag_name().name()
        ))),
    }
}

fn time_attribute(
    node: roxmltree::Node<'_, '_>,
    name: &str,
) -> Result<Option<Timestamp>, SamlError> {
    node.attribute(name)
        .map(|v| {
            v.parse::<Timestamp>()
                .map_err(|e| structure(format!("{}@{name} `{v}`: {e}", node.tag_name().name())))
        })
        .transpose()
}

/// Everything but the signature values: the structure, the conditions, the claims, and which
/// signatures xmlsec1 must verify.
fn inspect(text: &str, expected: &Expected<'_>) -> Result<(Verified, Vec<SignatureAt>), SamlError> {
    let doc = roxmltree::Document::parse_with_options(
        text,
        roxmltree::ParsingOptions {
            allow_dtd: false,
            ..roxmltree::ParsingOptions::default()
        },
    )
    .map_err(|e| SamlError::Xml(e.to_string()))?;
    let response = doc.root_element();
    if !is(response, SAMLP, "Response") {
        return Err(structure("the document is not a samlp:Response"));
    }
    // Signature wrapping relies on two elements answering to one ID.
    let mut ids = std::collections::HashSet::new();
    for id in doc.descendants().filter_map(|n| n.attribute("ID")) {
        if !ids.insert(id) {
            return Err(structure(format!("the ID `{id}` appears twice")));
        }
    }
    if doc.descendants().any(|n| is(n, SAML, "EncryptedAssertion")) {
        return Err(structure("encrypted assertions are not supported"));
    }
    let mut assertions = doc.descendants().filter(|n| is(*n, SAML, "Assertion"));
    let assertion = match (assertions.next(), assertions.next()) {
        (Some(one), None) => one,
        (None, _) => return Err(structure("no assertion")),
        (Some(_), Some(_)) => return Err(structure("more than one assertion")),
    };
    if assertion.parent() != Some(response) {
        return Err(structure("the assertion is not a child of the response"));
    }

    // Signatures: on the response (covering the assertion in it) and/or on the assertion.
    let mut signatures = Vec::new();
    for (parent, at) in [
        (response, SignatureAt::Response),
        (assertion, SignatureAt::Assertion),
    ] {
        let mut found = children(parent, DS, "Signature");
        match (found.next(), found.next()) {
            (None, _) => {}
            (Some(signature), None) => {
                check_reference(signature, parent)?;
                signatures.push(at);
            }
            (Some(_), Some(_)) => {
                return Err(structure(format!(
                    "{} has more than one signature",
                    parent.tag_name().name()
                )))
            }
        }
    }
    if signatures.is_empty() {
        return Err(structure(
            "neither the response nor the assertion is signed",
        ));
    }

    // Who answered, and to which request.
    let idp = expected.idp.idp_entity_id.as_str();
    if let Some(issuer) = children(response, SAML, "Issuer").next() {
        if sole_text(issuer)? != idp {
            return Err(condition(
                "the response's Issuer is not the tenant's identity provider",
            ));
        }
    }
    if sole_text(only_child(assertion, SAML, "Issuer")?)? != idp {
        return Err(condition(
            "the assertion's Issuer is not the tenant's identity provider",
        ));
    }
    let status = only_child(only_child(response, SAMLP, "Status")?, SAMLP, "StatusCode")?;
    let code = status.attribute("Value").unwrap_or("");
    if code != SUCCESS {
        return Err(SamlError::Status(code.to_string()));
    }
    if let Some(destination) = response.attribute("Destination") {
        if destination != expected.acs_url {
            return Err(condition(
                "the response's Destination is not this service provider's ACS URL",
            ));
        }
    }
    if response.attribute("InResponseTo") != Some(expected.request_id) {
        return Err(condition(
            "the response does not answer this browser's request (InResponseTo)",
        ));
    }

    let now = expected.now;
    let skew = jiff::SignedDuration::try_from(expected.skew).unwrap_or_default();
    let earliest = now.saturating_sub(skew).unwrap_or(now);
    let latest = now.saturating_add(skew).unwrap_or(now);

    // The subject, confirmed for this SP by bearer.
    let subject = only_child(assertion, SAML, "Subject")?;
    let name_id = sole_text(only_child(subject, SAML, "NameID")?)?;
    if name_id.is_empty() || name_id.chars().any(char::is_control) {
        return Err(structure("the NameID is empty or holds control characters"));
    }
    let mut confirmed_until = None;
    for confirmation in children(subject, SAML, "SubjectConfirmation") {
        if confirmation.attribute("Method") != Some(BEARER) {
            continue;
        }
        let Some(data) = children(confirmation, SAML, "SubjectConfirmationData").next() else {
            continue;
        };
        let until = time_attribute(data, "NotOnOrAfter")?;
        let from = time_attribute(data, "NotBefore")?;
        let fits = data.attribute("Recipient") == Some(expected.acs_url)
            && until.is_some_and(|t| t > earliest)
            && from.is_none_or(|t| t <= latest)
            && data
                .attribute("InResponseTo")
                .is_none_or(|r| r == expected.request_id);
        if fits {
            confirmed_until = until;
            break;
        }
    }
    let Some(confirmed_until) = confirmed_until else {
        return Err(condition(
            "no bearer SubjectConfirmation for this ACS URL that is still valid",
        ));
    };

    // Conditions: time window and audience.
    let conditions = only_child(assertion, SAML, "Conditions")?;
    if time_attribute(conditions, "NotBefore")?.is_some_and(|t| t > latest) {
        return Err(condition("the assertion is not valid yet (NotBefore)"));
    }
    let Some(not_on_or_after) = time_attribute(conditions, "NotOnOrAfter")? else {
        return Err(structure("Conditions has no NotOnOrAfter"));
    };
    if not_on_or_after <= earliest {
        return Err(condition("the assertion has expired (NotOnOrAfter)"));
    }
    let restrictions: Vec<_> = children(conditions, SAML, "AudienceRestriction").collect();
    if restrictions.is_empty() {
        return Err(structure("the assertion names no Audience"));
    }
    for restriction in restrictions {
        let mut audiences = children(restriction, SAML, "Audience");
        if !audiences.any(|a| sole_text(a).is_ok_and(|t| t == expected.sp_entity_id)) {
            return Err(condition("the assertion is meant for another audience"));
        }
    }
    let session_until = match children(assertion, SAML, "AuthnStatement").next() {
        Some(statement) => time_attribute(statement, "SessionNotOnOrAfter")?,
        None => None,
    };

    // Claims: the NameID and the attributes.
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::String(name_id.clone()));
    claims.insert("NameID".into(), Value::String(name_id));
    for statement in children(assertion, SAML, "AttributeStatement") {
        for attribute in children(statement, SAML, "Attribute") {
            let Some(name) = attribute.attribute("Name") else {
                continue;
            };
            let values = children(attribute, SAML, "AttributeValue")
                .map(|v| sole_text(v).map(Value::String))
                .collect::<Result<Vec<_>, _>>()?;
            let value = match <[Value; 1]>::try_from(values) {
                Ok([one]) => one,
                Err(many) => Value::Array(many),
            };
            claims.insert(name.to_string(), value);
        }
    }
    let assertion_id = assertion
        .attribute("ID")
        .ok_or_else(|| structure("the assertion has no ID"))?
        .to_string();
    Ok((
        Verified {
            claims,
            assertion_id,
            valid_until: not_on_or_after.max(confirmed_until),
            session_until,
        },
        signatures,
    ))
}

/// A signature must sign exactly its parent (one `Reference` to the parent's `ID`) with the
/// enveloped-signature and exclusive c14n transforms only.
fn check_reference(
    signature: roxmltree::Node<'_, '_>,
    parent: roxmltree::Node<'_, '_>,
) -> Result<(), SamlError> {
    let parent_id = parent
        .attribute("ID")
        .ok_or_else(|| structure(format!("a signed {} has no ID", parent.tag_name().name())))?;
    let signed_info = only_child(signature, DS, "SignedInfo")?;
    let reference = only_child(signed_info, DS, "Reference")?;
    if reference.attribute("URI") != Some(format!("#{parent_id}").as_str()) {
        return Err(structure(format!(
            "the signature in {} signs another element",
            parent.tag_name().name()
        )));
    }
    if let Some(transforms) = children(reference, DS, "Transforms").next() {
        for transform in children(transforms, DS, "Transform") {
            let algorithm = transform.attribute("Algorithm").unwrap_or("");
            if !ALLOWED_TRANSFORMS.contains(&algorithm) {
                return Err(structure(format!(
                    "the transform `{algorithm}` is not allowed"
                )));
            }
        }
    }
    Ok(())
}

/// Runs `xmlsec1 --verify` on one signature of `text` with the identity provider's
/// certificate as the only trusted key.
async fn verify_signature(
    text: &str,
    certificate_pem: &str,
    at: SignatureAt,
    xmlsec1: &str,
) -> Result<(), SamlError> {
    let verifier = |e: std::io::Error| SamlError::Verifier(e.to_string());
    let dir = tempfile::tempdir().map_err(verifier)?;
    let document = dir.path().join("response.xml");
    let certificate = dir.path().join("idp.pem");
    std::fs::File::create(&document)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(verifier)?;
    std::fs::File::create(&certificate)
        .and_then(|mut f| f.write_all(certificate_pem.as_bytes()))
        .map_err(verifier)?;
    let mut command = tokio::process::Command::new(xmlsec1);
    command
        .arg("--verify")
        .args(["--enabled-reference-uris", "same-doc"])
        .args([
            "--id-attr:ID",
            "urn:oasis:names:tc:SAML:2.0:protocol:Response",
        ])
        .args([
            "--id-attr:ID",
            "urn:oasis:names:tc:SAML:2.0:assertion:Assertion",
        ])
        .arg("--pubkey-cert-pem")
        .arg(&certificate)
        // Keys only by name from the keys manager (the certificate above): without this,
        // xmlsec1 verifies with a bare public key a response carries in `ds:KeyValue`.
        .args(["--enabled-key-data", "key-name"])
        .args(["--node-xpath", at.xpath()])
        .arg(&document)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(VERIFY_TIMEOUT, command.output())
        .await
        .map_err(|_| SamlError::Verifier("xmlsec1 took too long".into()))?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SamlError::Verifier(format!(
                "`{xmlsec1}` not found: SAML login needs the xmlsec1 program (Debian package xmlsec1)"
            )),
            _ => SamlError::Verifier(e.to_string()),
        })?;
    if output.status.success() {
        Ok(())
    } else {
        tracing::debug!(
            stderr = %String::from_utf8_lossy(&output.stderr),
            "saml: xmlsec1 refused a signature"
        );
        Err(SamlError::Signature)
    }
}

/// A new request id (an XML NCName).
pub fn new_request_id() -> String {
    let bytes: [u8; 20] = rand::random();
    format!("_{}", hex::encode(bytes))
}

/// The AuthnRequest, as sent with the HTTP-Redirect binding.
pub fn authn_request(
    id: &str,
    sp_entity_id: &str,
    acs_url: &str,
    idp_sso_url: &str,
    now: Timestamp,
) -> String {
    let attr = |v: &str| html_escape::encode_double_quoted_attribute(v).into_owned();
    format!(
        "<samlp:AuthnRequest xmlns:samlp=\"{SAMLP}\" xmlns:saml=\"{SAML}\" ID=\"{}\" Version=\"2.0\" \
         IssueInstant=\"{}\" Destination=\"{}\" AssertionConsumerServiceURL=\"{}\" \
         ProtocolBinding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST\">\
         <saml:Issuer>{}</saml:Issuer>\
         <samlp:NameIDPolicy AllowCreate=\"true\"/>\
         </samlp:AuthnRequest>",
        attr(id),
        now.round(jiff::Unit::Second).unwrap_or(now),
        attr(idp_sso_url),
        attr(acs_url),
        html_escape::encode_text(sp_entity_id),
    )
}

/// The identity provider's URL carrying `request` (DEFLATE, base64: SAML bindings §3.4.4).
pub fn redirect_url(idp_sso_url: &str, request: &str) -> Result<String, String> {
    let mut deflater =
        flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    deflater
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let deflated = deflater.finish().map_err(|e| e.to_string())?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(deflated);
    let mut url = reqwest::Url::parse(idp_sso_url).map_err(|e| format!("idp_sso_url: {e}"))?;
    url.query_pairs_mut().append_pair("SAMLRequest", &encoded);
    Ok(url.to_string())
}

/// The service provider's metadata (what the identity provider's administrator imports).
pub fn metadata(sp_entity_id: &str, acs_url: &str) -> String {
    let attr = |v: &str| html_escape::encode_double_quoted_attribute(v).into_owned();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <md:EntityDescriptor xmlns:md=\"urn:oasis:names:tc:SAML:2.0:metadata\" entityID=\"{}\">\n\
         <md:SPSSODescriptor AuthnRequestsSigned=\"false\" WantAssertionsSigned=\"true\" \
         protocolSupportEnumeration=\"{SAMLP}\">\n\
         <md:NameIDFormat>urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress</md:NameIDFormat>\n\
         <md:AssertionConsumerService Binding=\"urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST\" \
         Location=\"{}\" index=\"0\" isDefault=\"true\"/>\n\
         </md:SPSSODescriptor>\n\
         </md:EntityDescriptor>\n",
        attr(sp_entity_id),
        attr(acs_url),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_deflated_into_the_redirect_url() {
        let request = authn_request(
            "_abc",
            "https://sp.test/metadata",
            "https://sp.test/acs",
            "https://idp.test/sso?x=1",
            "2026-12-05T00:00:00Z".parse().unwrap(),
        );
        let url = redirect_url("https://idp.test/sso?x=1", &request).unwrap();
        let url = reqwest::Url::parse(&url).unwrap();
        assert_eq!(url.query_pairs().next().unwrap().0, "x");
        let encoded = url
            .query_pairs()
            .find(|(k, _)| k == "SAMLRequest")
            .unwrap()
            .1
            .into_owned();
        let deflated = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        let mut inflated = String::new();
        std::io::Read::read_to_string(
            &mut flate2::read::DeflateDecoder::new(deflated.as_slice()),
            &mut inflated,
        )
        .unwrap();
        assert_eq!(inflated, request);
        let doc = roxmltree::Document::parse(&inflated).unwrap();
        assert_eq!(doc.root_element().attribute("ID"), Some("_abc"));
        assert!(new_request_id().starts_with('_') && new_request_id().len() == 41);
    }

    #[test]
    fn metadata_names_the_acs_and_escapes() {
        let xml = metadata("https://sp.test/m?a=1&b=\"2\"", "https://sp.test/acs");
        let doc = roxmltree::Document::parse(&xml).unwrap();
        assert_eq!(
            doc.root_element().attribute("entityID"),
            Some("https://sp.test/m?a=1&b=\"2\"")
        );
        assert!(xml.contains("Location=\"https://sp.test/acs\""));
    }

    #[test]
    fn documents_with_a_dtd_are_refused_before_anything_else() {
        let idp = SamlLoginSettings {
            idp_entity_id: "https://idp.test".into(),
            idp_sso_url: "https://idp.test/sso".into(),
            idp_certificate: String::new(),
            sp_entity_id: None,
            claims: Default::default(),
        };
        let expected = Expected {
            idp: &idp,
            sp_entity_id: "https://sp.test/metadata",
            acs_url: "https://sp.test/acs",
            request_id: "_r",
            now: Timestamp::now(),
            skew: Duration::from_secs(60),
            xmlsec1: "xmlsec1",
        };
        let billion_laughs = "<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY a \"aaaa\"><!ENTITY b \"&a;&a;&a;\">]>\
            <samlp:Response xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\">&b;</samlp:Response>";
        assert!(matches!(
            inspect(billion_laughs, &expected),
            Err(SamlError::Xml(_))
        ));
    }
}

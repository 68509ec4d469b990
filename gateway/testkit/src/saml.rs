//! A SAML 2.0 identity provider for the tests: real `samlp:Response`s signed by the `xmlsec1`
//! command (Debian package `xmlsec1`, 1.2.37 in bookworm; `scripts/ensure-deps test` installs
//! it), and the known attacks on SAML service providers built from them ([`TestIdp::attacks`]).
//!
//! # The IdP
//!
//! [`TestIdp::new`] makes a fresh RSA-2048 key (the `rsa` crate) and a self-signed certificate
//! for it (`rcgen`), written as `key.pem` (PKCS#8) and `cert.pem` into a temporary directory that
//! lives as long as the value. [`TestIdp::response_xml`] writes the Response with empty
//! signature templates and lets `xmlsec1 --sign` fill them; [`TestIdp::response`] is the same,
//! base64-encoded, as the HTTP-POST binding's `SAMLResponse` form field carries it.
//!
//! The XML (namespaces declared on `samlp:Response` and again on each `saml:Assertion`, so a
//! signed assertion is self-contained text that can be moved into another document — which the
//! wrapping attacks do):
//!
//! ```text
//! samlp:Response ID Version="2.0" IssueInstant Destination=acs_url [InResponseTo]
//!   saml:Issuer                                   entity id
//!   [ds:Signature]                                Signing::Response / Both
//!   samlp:Status/samlp:StatusCode                 Success, or Requester > AuthnFailed
//!   saml:Assertion ID Version="2.0" IssueInstant
//!     saml:Issuer
//!     [ds:Signature]                              Signing::Assertion / Both
//!     saml:Subject
//!       saml:NameID Format=emailAddress
//!       saml:SubjectConfirmation Method=bearer
//!         saml:SubjectConfirmationData NotOnOrAfter Recipient=acs_url [InResponseTo]
//!     saml:Conditions NotBefore NotOnOrAfter
//!       saml:AudienceRestriction/saml:Audience    sp_entity_id
//!     saml:AuthnStatement AuthnInstant [SessionIndex]
//!       saml:AuthnContext/saml:AuthnContextClassRef PasswordProtectedTransport
//!     [saml:AttributeStatement]                   one saml:Attribute (NameFormat basic) each
//! ```
//!
//! Each signature is enveloped: exclusive c14n (`http://www.w3.org/2001/10/xml-exc-c14n#`),
//! rsa-sha256, one `ds:Reference URI="#<ID of the parent element>"` with the transforms
//! enveloped-signature and exclusive c14n, sha256, and `ds:KeyInfo/ds:X509Data/
//! ds:X509Certificate`. With [`Signing::Both`] the assertion is signed first, so the Response's
//! signature covers the signed assertion.
//!
//! # xmlsec1 1.2.37: the command lines (tried, see the tests)
//!
//! Signing a template (what this module runs; `key.pem` may be PKCS#8 or PKCS#1, the
//! certificate after the comma goes into `ds:X509Certificate`; the result is on stdout):
//!
//! ```text
//! xmlsec1 --sign --privkey-pem key.pem,cert.pem \
//!   --id-attr:ID urn:oasis:names:tc:SAML:2.0:assertion:Assertion \
//!   --id-attr:ID urn:oasis:names:tc:SAML:2.0:protocol:Response \
//!   --id-attr:ID urn:oasis:names:tc:SAML:2.0:protocol:Extensions \
//!   --node-id <ID of the element whose signature to fill> unsigned.xml
//! ```
//!
//! Verifying one signature (what a service provider should run; [`xmlsec1_verify`]):
//!
//! ```text
//! xmlsec1 --verify --pubkey-cert-pem idp-cert.pem --enabled-key-data key-name \
//!   --id-attr:ID urn:oasis:names:tc:SAML:2.0:assertion:Assertion \
//!   --id-attr:ID urn:oasis:names:tc:SAML:2.0:protocol:Response \
//!   --enabled-reference-uris same-doc \
//!   --node-xpath "<RESPONSE_SIGNATURE_XPATH or ASSERTION_SIGNATURE_XPATH>" response.xml
//! ```
//!
//! Exit status 0 is "verified"; anything else is not (the messages go to stderr). One run
//! verifies one signature: with [`Signing::Both`] that is two runs (or the SP relies on one).
//! xmlsec1 checks no SAML semantics (times, audience, issuer, status, which element is signed).
//! What was found out:
//!
//! - **Selecting one of two signatures.** `--node-xpath <expr>` and `--node-id <ID>` both work:
//!   xmlsec1 starts at the first node the expression selects (or the element with that ID) and
//!   verifies the first `ds:Signature` at or below it, in document order. Prefixes cannot be
//!   bound on the command line, so the XPath has to use `local-name()` / `namespace-uri()`:
//!   [`RESPONSE_SIGNATURE_XPATH`] selects the Response's own signature (a direct child of the
//!   root), [`ASSERTION_SIGNATURE_XPATH`] the signature that is a direct child of an assertion
//!   that is a direct child of the root. `--node-id <ID>` is the weaker choice: "the first
//!   signature *below* that element" can be a signature nested deeper (in the
//!   `xsw-signed-assertion-inside-evil` attack, `--node-id <evil assertion ID>` verifies the
//!   original assertion's signature inside the evil one's `saml:Advice`). Either way xmlsec1 does
//!   not say which element its signature covers: the SP must itself check that the verified
//!   `ds:Signature` is a direct child of the element it is going to use and that its single
//!   `ds:Reference URI` is `#` + that element's `ID` (and that the ID occurs once).
//! - **Not trusting `ds:KeyInfo`.** `--pubkey-cert-pem cert.pem` alone is NOT enough: with all
//!   key data enabled (the default) xmlsec1 takes a key from `ds:KeyInfo/ds:KeyValue` (a bare
//!   `ds:RSAKeyValue`) and verifies an attacker's signature with the attacker's own key (the
//!   `wrong-key-keyvalue` attack is accepted). An embedded `ds:X509Certificate` is not trusted
//!   as long as no `--trusted-pem` is given and `--insecure` is not (the certificate fails the
//!   chain check, "self-signed certificate" on stderr, and xmlsec1 falls back to the key loaded
//!   with `--pubkey-cert-pem`); with `--insecure`, or `--trusted-pem` naming the attacker's
//!   certificate, the `wrong-key` attack is accepted. `--enabled-key-data key-name` makes
//!   xmlsec1 ignore `ds:X509Data` and `ds:KeyValue` entirely (only a `ds:KeyName` lookup in its
//!   own keys manager, which holds nothing but the configured certificate's key): valid
//!   responses verify, both wrong-key attacks fail, and stderr stays quiet.
//! - **IDs.** `--id-attr:ID <ns>:<name>` registers the `ID` attribute of those elements; a
//!   `Reference URI="#x"` naming an element whose ID was not registered fails ("failed to
//!   resolve"). xmlsec1 refuses a document in which a registered ID occurs twice ("duplicate ID
//!   attribute").
//! - **Comments.** Exclusive c14n without comments ignores comments, so a comment inserted into
//!   signed text keeps the signature valid (`comment-in-name-id`).
//! - **DOCTYPE.** xmlsec1 (libxml2) parses an internal DTD subset and verifies the document; the
//!   SP must refuse any `<!DOCTYPE` itself, before running xmlsec1 (`roxmltree` refuses it by
//!   default: `ParsingOptions::allow_dtd` is false).
//!
//! [`TestIdp::attacks`] lists, for each attack, what a vulnerable SP does and what xmlsec1
//! itself says about it (the test `attacks_report` prints the table).

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use base64::Engine as _;

pub const SAMLP_NS: &str = "urn:oasis:names:tc:SAML:2.0:protocol";
pub const SAML_NS: &str = "urn:oasis:names:tc:SAML:2.0:assertion";
pub const DS_NS: &str = "http://www.w3.org/2000/09/xmldsig#";

/// The Response's own signature: a `ds:Signature` that is a direct child of the root
/// `samlp:Response` (for `xmlsec1 --verify --node-xpath`).
pub const RESPONSE_SIGNATURE_XPATH: &str = "/*[local-name()='Response' and namespace-uri()='urn:oasis:names:tc:SAML:2.0:protocol']/*[local-name()='Signature' and namespace-uri()='http://www.w3.org/2000/09/xmldsig#']";

/// The assertion's signature: a `ds:Signature` that is a direct child of a `saml:Assertion` that
/// is a direct child of the root `samlp:Response` (the first such, if there are several: the SP
/// must refuse a Response with more than one assertion anyway).
pub const ASSERTION_SIGNATURE_XPATH: &str = "/*[local-name()='Response' and namespace-uri()='urn:oasis:names:tc:SAML:2.0:protocol']/*[local-name()='Assertion' and namespace-uri()='urn:oasis:names:tc:SAML:2.0:assertion']/*[local-name()='Signature' and namespace-uri()='http://www.w3.org/2000/09/xmldsig#']";

/// The `--id-attr` arguments a service provider passes to `xmlsec1 --verify`: the `ID`
/// attributes of `saml:Assertion` and `samlp:Response`.
pub const XMLSEC1_ID_ATTRS: [&str; 4] = [
    "--id-attr:ID",
    "urn:oasis:names:tc:SAML:2.0:assertion:Assertion",
    "--id-attr:ID",
    "urn:oasis:names:tc:SAML:2.0:protocol:Response",
];

/// What the IdP signs with (`--id-attr` for `samlp:Extensions` too, for the
/// `unsigned-assertion-in-signed-response` attack).
const SIGN_ID_ATTRS: [&str; 6] = [
    "--id-attr:ID",
    "urn:oasis:names:tc:SAML:2.0:assertion:Assertion",
    "--id-attr:ID",
    "urn:oasis:names:tc:SAML:2.0:protocol:Response",
    "--id-attr:ID",
    "urn:oasis:names:tc:SAML:2.0:protocol:Extensions",
];

const ENSURE_DEPS: &str = "run `scripts/ensure-deps test` (Debian package `xmlsec1`)";

/// The user the attacks try to become.
pub const EVIL_NAME_ID: &str = "admin@acme.test";

/// Which elements of the Response carry an enveloped signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signing {
    /// The assertion only (the most common IdP setting).
    Assertion,
    /// The Response only.
    Response,
    /// The assertion, then the Response (whose signature covers the signed assertion).
    Both,
    /// No signature at all.
    None,
}

/// What [`TestIdp::response_xml`] puts into the Response.
#[derive(Clone, Debug)]
pub struct ResponseOptions {
    /// `saml:Audience`.
    pub sp_entity_id: String,
    /// `Response@Destination` and `SubjectConfirmationData@Recipient`.
    pub acs_url: String,
    /// `Response@InResponseTo` and `SubjectConfirmationData@InResponseTo`; `None` for an
    /// IdP-initiated (unsolicited) Response.
    pub in_response_to: Option<String>,
    /// `saml:NameID` (Format emailAddress), inserted as text (escaped).
    pub name_id: String,
    /// `saml:AttributeStatement`: one `saml:Attribute Name=… NameFormat=basic` each, with one
    /// `saml:AttributeValue xsi:type="xs:string"` per value; no statement when empty.
    pub attributes: Vec<(String, Vec<String>)>,
    /// `Conditions@NotBefore` = now + this.
    pub not_before_offset_secs: i64,
    /// `Conditions@NotOnOrAfter` and `SubjectConfirmationData@NotOnOrAfter` = now + this.
    pub not_on_or_after_offset_secs: i64,
    /// `AuthnStatement@SessionIndex`.
    pub session_index: Option<String>,
    pub signing: Signing,
    /// `StatusCode` Success, or Requester with the second-level AuthnFailed when false (the
    /// assertion is still there, signed per `signing`: the SP must look at the status).
    pub status_success: bool,
}

impl Default for ResponseOptions {
    /// SP `https://sp.test/metadata`, ACS `https://sp.test/acs`, unsolicited, NameID
    /// `alice@acme.test` with the attribute `email` = the same, valid from a minute ago for five
    /// minutes, a random SessionIndex, the assertion signed, Success.
    fn default() -> Self {
        ResponseOptions {
            sp_entity_id: "https://sp.test/metadata".into(),
            acs_url: "https://sp.test/acs".into(),
            in_response_to: None,
            name_id: "alice@acme.test".into(),
            attributes: vec![("email".into(), vec!["alice@acme.test".into()])],
            not_before_offset_secs: -60,
            not_on_or_after_offset_secs: 300,
            session_index: Some(new_id()),
            signing: Signing::Assertion,
            status_success: true,
        }
    }
}

/// A SAML identity provider with its own key and certificate (see the module docs).
pub struct TestIdp {
    dir: tempfile::TempDir,
    entity_id: String,
    cert_pem: String,
}

/// Key and certificate files for `xmlsec1 --privkey-pem`.
struct Keys {
    key: PathBuf,
    cert: PathBuf,
}

/// How the signer is named in `ds:KeyInfo`.
#[derive(Clone, Copy)]
enum KeyInfo {
    /// `ds:X509Data/ds:X509Certificate` (what real IdPs send).
    X509,
    /// `ds:KeyValue/ds:RSAKeyValue`: the bare public key.
    KeyValue,
}

/// A Response as built: its text (with the XML declaration) and its assertion's ID.
struct Built {
    xml: String,
    assertion_id: String,
}

impl TestIdp {
    /// A new IdP with a fresh RSA-2048 key and self-signed certificate.
    pub fn new(entity_id: &str) -> TestIdp {
        let dir = tempfile::Builder::new()
            .prefix("saml-idp-")
            .tempdir()
            .unwrap();
        let (key_pem, cert_pem) = generate_key("gateway-testkit SAML IdP");
        std::fs::write(dir.path().join("key.pem"), &key_pem).unwrap();
        std::fs::write(dir.path().join("cert.pem"), &cert_pem).unwrap();
        TestIdp {
            dir,
            entity_id: entity_id.to_string(),
            cert_pem,
        }
    }

    pub fn entity_id(&self) -> &str {
        &self.entity_id
    }

    /// The IdP signing certificate, PEM (what the SP is configured with).
    pub fn certificate_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The file `certificate_pem` is in (for `xmlsec1 --pubkey-cert-pem`).
    pub fn certificate_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// A complete, valid SAML Response (XML text, UTF-8, with an XML declaration), signed per
    /// `o.signing`.
    pub fn response_xml(&self, o: &ResponseOptions) -> String {
        self.build(
            o,
            &self.entity_id,
            &xml_escape(&o.name_id),
            &self.own_keys(),
            KeyInfo::X509,
        )
        .xml
    }

    /// base64 of [`TestIdp::response_xml`]: the HTTP-POST binding's `SAMLResponse`.
    pub fn response(&self, o: &ResponseOptions) -> String {
        b64(&self.response_xml(o))
    }

    /// The named attacks, built from a valid response for `o`, each a base64 `SAMLResponse` that
    /// a correct SP must refuse (see [`TestIdp::attacks_xml`] for what each is).
    pub fn attacks(&self, o: &ResponseOptions) -> Vec<(&'static str, String)> {
        self.attacks_xml(o)
            .into_iter()
            .map(|(name, xml)| (name, b64(&xml)))
            .collect()
    }

    /// [`TestIdp::attacks`] as XML text. Unless said otherwise, a variant is signed per
    /// `o.signing` (the assertion when that is `None`), by this IdP's key. "xmlsec1" below is
    /// what a plain `xmlsec1 --verify --pubkey-cert-pem <IdP cert> --id-attr:ID …Assertion
    /// --id-attr:ID …Response --enabled-reference-uris same-doc` (no node selection: the first
    /// `ds:Signature` in the document) answers in 1.2.37.
    pub fn attacks_xml(&self, o: &ResponseOptions) -> Vec<(&'static str, String)> {
        let own = self.own_keys();
        let signed = {
            let mut s = o.clone();
            if s.signing == Signing::None {
                s.signing = Signing::Assertion;
            }
            s
        };
        let issuer = self.entity_id.as_str();
        let name_id = xml_escape(&o.name_id);
        let mut out: Vec<(&'static str, String)> = Vec::new();

        // The wrapping attacks on an assertion signature start from a Response whose assertion
        // (only) is signed.
        let assertion_signed = {
            let mut s = o.clone();
            s.signing = Signing::Assertion;
            self.build(&s, issuer, &name_id, &own, KeyInfo::X509)
        };
        let signed_assertion = element(
            &assertion_signed.xml,
            "<saml:Assertion",
            "</saml:Assertion>",
        );
        let t = Times::new(o);

        // XSW3: an unsigned evil assertion (NameID admin, same audience and recipient) as the
        // Response's first assertion, the original signed one after it. A vulnerable SP finds
        // "a valid signature" (xmlsec1 verifies the original) and then reads the first assertion.
        // xmlsec1: verified.
        out.push((
            "xsw-evil-assertion-before-signed",
            response_text(
                o,
                &t,
                &ResponseParts {
                    id: &new_id(),
                    issuer,
                    signature: None,
                    extensions: None,
                    assertions: &format!(
                        "{}{signed_assertion}",
                        evil_assertion(o, &t, &new_id(), issuer, None)
                    ),
                },
            ),
        ));

        // XSW4: the evil assertion is the Response's assertion, and the original signed
        // assertion is inside it (in `saml:Advice`, where the schema even allows assertions). A
        // vulnerable SP verifies "the signature within the assertion" (`--node-id <evil ID>` or
        // a descendant search finds the original's) and reads the outer one. xmlsec1: verified.
        out.push((
            "xsw-signed-assertion-inside-evil",
            response_text(
                o,
                &t,
                &ResponseParts {
                    id: &new_id(),
                    issuer,
                    signature: None,
                    extensions: None,
                    assertions: &evil_assertion(o, &t, &new_id(), issuer, Some(signed_assertion)),
                },
            ),
        ));

        // XSW7: the original signed assertion moved into `samlp:Extensions`, the evil unsigned
        // assertion as the Response's assertion. A vulnerable SP verifies the one signature in
        // the document and reads `/Response/Assertion`. xmlsec1: verified.
        out.push((
            "xsw-signed-assertion-in-extensions",
            response_text(
                o,
                &t,
                &ResponseParts {
                    id: &new_id(),
                    issuer,
                    signature: None,
                    extensions: Some(&format!(
                        "<samlp:Extensions>{signed_assertion}</samlp:Extensions>"
                    )),
                    assertions: &evil_assertion(o, &t, &new_id(), issuer, None),
                },
            ),
        ));

        // The wrapping attacks on a Response signature start from a Response signed only on
        // the Response; its signature is cut out and the rest is the "original".
        let response_signed = {
            let mut s = o.clone();
            s.signing = Signing::Response;
            self.build(&s, issuer, &name_id, &own, KeyInfo::X509)
        };
        let original = strip_declaration(&response_signed.xml);
        let signature = element(original, "<ds:Signature", "</ds:Signature>");
        let original_unsigned = original.replacen(signature, "", 1);

        // XSW1: an evil Response (new ID, evil unsigned assertion) whose `ds:Signature` is the
        // original one, with the original Response (its signature cut out) in a `ds:Object`
        // inside it; the Reference still names the original's ID. A vulnerable SP checks "the
        // root has a valid signature" and reads the root's assertion. xmlsec1: refused — the
        // enveloped-signature transform removes everything below the signature being verified,
        // which is now the whole referenced Response, so the digest no longer matches.
        out.push((
            "xsw-evil-response-wrapping-signed",
            response_text(
                o,
                &t,
                &ResponseParts {
                    id: &new_id(),
                    issuer,
                    signature: Some(&signature.replacen(
                        "</ds:Signature>",
                        &format!("<ds:Object>{original_unsigned}</ds:Object></ds:Signature>"),
                        1,
                    )),
                    extensions: None,
                    assertions: &evil_assertion(o, &t, &new_id(), issuer, None),
                },
            ),
        ));

        // XSW2: the same, but the original Response (its signature cut out) is a sibling right
        // after the signature, not inside it. The root has a direct-child `ds:Signature` that
        // verifies (its Reference names the inner Response, which it no longer envelops), so an
        // SP that selects RESPONSE_SIGNATURE_XPATH but does not check the Reference URI against
        // the root's ID reads the evil assertion. xmlsec1: verified.
        out.push((
            "xsw-signed-response-sibling",
            response_text(
                o,
                &t,
                &ResponseParts {
                    id: &new_id(),
                    issuer,
                    signature: Some(&format!("{signature}{original_unsigned}")),
                    extensions: None,
                    assertions: &evil_assertion(o, &t, &new_id(), issuer, None),
                },
            ),
        ));

        // The IdP signed `admin@acme.test.evil.test` (a name the attacker could register);
        // the attacker inserts a comment after `admin@acme.test`. Exclusive c14n without
        // comments drops it, so the signature stays valid; an SP that reads only the NameID's
        // first text node sees `admin@acme.test`. xmlsec1: verified. A correct SP reads all of
        // the text (roxmltree: concatenate the text children, not `Node::text()`), or refuses
        // comments in the assertion.
        {
            let b = self.build(
                &signed,
                issuer,
                &format!("{EVIL_NAME_ID}.evil.test"),
                &own,
                KeyInfo::X509,
            );
            let xml = b.xml.replacen(
                &format!(">{EVIL_NAME_ID}.evil.test<"),
                &format!(">{EVIL_NAME_ID}<!---->.evil.test<"),
                1,
            );
            assert_ne!(xml, b.xml, "the signed NameID is where expected");
            out.push(("comment-in-name-id", xml));
        }

        // A Response whose only signature is a direct child of the root, valid, but covering
        // `samlp:Extensions ID=…` (Reference URI "#<that ID>"), not the Response; the assertion
        // (evil) is unsigned. A vulnerable SP checks "the Response signature verifies" without
        // checking what it references. xmlsec1: verified when the Extensions' ID is registered
        // (`--id-attr:ID urn:oasis:names:tc:SAML:2.0:protocol:Extensions`), else refused for
        // an unresolvable reference.
        {
            let rid = new_id();
            let ext = new_id();
            let xml = response_text(
                o,
                &t,
                &ResponseParts {
                    id: &rid,
                    issuer,
                    signature: Some(&signature_template(&ext, KeyInfo::X509)),
                    extensions: Some(&format!(
                        "<samlp:Extensions ID=\"{ext}\"><t:Note xmlns:t=\"urn:gateway-testkit:saml\">signed, but not the assertion</t:Note></samlp:Extensions>"
                    )),
                    assertions: &evil_assertion(o, &t, &new_id(), issuer, None),
                },
            );
            out.push((
                "unsigned-assertion-in-signed-response",
                self.sign(&xml, &rid, &own),
            ));
        }

        // No signature at all. xmlsec1: refused (no signature).
        {
            let mut s = o.clone();
            s.signing = Signing::None;
            out.push((
                "unsigned",
                self.build(&s, issuer, &name_id, &own, KeyInfo::X509).xml,
            ));
        }

        // The NameID changed after signing. xmlsec1: refused (digest mismatch).
        {
            let b = self.build(&signed, issuer, &name_id, &own, KeyInfo::X509);
            let xml = b.xml.replacen(
                &format!(">{name_id}</saml:NameID>"),
                &format!(">{EVIL_NAME_ID}</saml:NameID>"),
                1,
            );
            assert_ne!(xml, b.xml, "the signed NameID is where expected");
            out.push(("tampered", xml));
        }

        // Signed by another key, whose (self-signed) certificate is in `ds:KeyInfo`. An SP
        // that trusts KeyInfo (xmlsec1 `--insecure`, or `--trusted-pem` of that certificate)
        // accepts it. xmlsec1 with `--pubkey-cert-pem <IdP cert>`: refused.
        let other = self.other_keys();
        out.push((
            "wrong-key",
            self.build(&signed, issuer, &name_id, &other, KeyInfo::X509)
                .xml,
        ));

        // Signed by another key, whose bare public key is in `ds:KeyInfo/ds:KeyValue`. xmlsec1
        // with `--pubkey-cert-pem <IdP cert>` and all key data enabled (the default): VERIFIED
        // with the attacker's key. Refused with `--enabled-key-data key-name`.
        out.push((
            "wrong-key-keyvalue",
            self.build(&signed, issuer, &name_id, &other, KeyInfo::KeyValue)
                .xml,
        ));

        // Properly signed, but outside the validity window / meant for someone else: xmlsec1
        // verifies each; the SP's own checks must refuse them.
        let variant = |f: &dyn Fn(&mut ResponseOptions)| {
            let mut s = signed.clone();
            f(&mut s);
            self.build(&s, issuer, &name_id, &own, KeyInfo::X509).xml
        };
        // NotOnOrAfter (Conditions and SubjectConfirmationData) a minute ago.
        out.push((
            "expired",
            variant(&|s| {
                s.not_before_offset_secs = -600;
                s.not_on_or_after_offset_secs = -60;
            }),
        ));
        // NotBefore ten minutes ahead.
        out.push((
            "not-yet-valid",
            variant(&|s| {
                s.not_before_offset_secs = 600;
                s.not_on_or_after_offset_secs = 900;
            }),
        ));
        // Audience another SP (a Response the IdP issued to that SP, replayed here).
        out.push((
            "wrong-audience",
            variant(&|s| s.sp_entity_id = "https://other-sp.test/metadata".into()),
        ));
        // Destination and Recipient another ACS URL.
        out.push((
            "wrong-recipient",
            variant(&|s| s.acs_url = "https://other-sp.test/acs".into()),
        ));
        // InResponseTo a request this SP did not send (or not in this browser session).
        out.push((
            "wrong-in-response-to",
            variant(&|s| s.in_response_to = Some(new_id())),
        ));
        // Issuer (Response and assertion) another entity id, signed by this IdP's key: the SP
        // must match the issuer to the IdP whose certificate verified it.
        out.push((
            "wrong-issuer",
            self.build(
                &signed,
                "https://evil-idp.test/metadata",
                &name_id,
                &own,
                KeyInfo::X509,
            )
            .xml,
        ));

        // The evil assertion carries the signed assertion's ID and comes first. An SP that looks
        // the referenced ID up itself (getElementById-like, first match) reads the evil one.
        // xmlsec1: refused ("duplicate ID attribute").
        out.push((
            "duplicate-ids",
            response_text(
                o,
                &t,
                &ResponseParts {
                    id: &new_id(),
                    issuer,
                    signature: None,
                    extensions: None,
                    assertions: &format!(
                        "{}{signed_assertion}",
                        evil_assertion(o, &t, &assertion_signed.assertion_id, issuer, None)
                    ),
                },
            ),
        ));

        // A valid signed Response with a DOCTYPE whose internal subset declares an external
        // entity (XXE) and a small "billion laughs" chain. They are not referenced (so the
        // signature stays valid and no parser in the tests blows up), but an SP must refuse any
        // DOCTYPE before anything else: a DTD can also declare ID attributes and default
        // attribute values that change what xmlsec1 sees. xmlsec1: verified.
        {
            let b = self.build(&signed, issuer, &name_id, &own, KeyInfo::X509);
            let body = strip_declaration(&b.xml);
            out.push((
                "doctype",
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE samlp:Response [\n\
                     <!ENTITY xxe SYSTEM \"file:///etc/passwd\">\n\
                     <!ENTITY lol \"lol\">\n\
                     <!ENTITY lol1 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\">\n\
                     <!ENTITY lol2 \"&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;\">\n\
                     ]>\n{body}"
                ),
            ));
        }
        out
    }

    fn own_keys(&self) -> Keys {
        Keys {
            key: self.dir.path().join("key.pem"),
            cert: self.dir.path().join("cert.pem"),
        }
    }

    /// Another key and certificate (one per process, made once), written beside ours.
    fn other_keys(&self) -> Keys {
        static OTHER: OnceLock<(String, String)> = OnceLock::new();
        let (key, cert) = OTHER.get_or_init(|| generate_key("gateway-testkit attacker"));
        let keys = Keys {
            key: self.dir.path().join("other-key.pem"),
            cert: self.dir.path().join("other-cert.pem"),
        };
        // Written aside and renamed, so that a concurrent call never reads a partial file.
        for (path, pem) in [(&keys.key, key), (&keys.cert, cert)] {
            if !path.exists() {
                let part = self.dir.path().join(format!("{}.pem", new_id()));
                std::fs::write(&part, pem).unwrap();
                std::fs::rename(&part, path).unwrap();
            }
        }
        keys
    }

    /// A Response for `o` with this issuer and NameID (XML text, escaped), signed per
    /// `o.signing` with `keys`.
    fn build(
        &self,
        o: &ResponseOptions,
        issuer: &str,
        name_id_xml: &str,
        keys: &Keys,
        key_info: KeyInfo,
    ) -> Built {
        let t = Times::new(o);
        let response_id = new_id();
        let assertion_id = new_id();
        let (sign_assertion, sign_response) = match o.signing {
            Signing::Assertion => (true, false),
            Signing::Response => (false, true),
            Signing::Both => (true, true),
            Signing::None => (false, false),
        };
        let assertion_signature =
            sign_assertion.then(|| signature_template(&assertion_id, key_info));
        let assertion = assertion_text(
            o,
            &t,
            &AssertionParts {
                id: &assertion_id,
                issuer,
                name_id_xml,
                signature: assertion_signature.as_deref(),
                advice: None,
            },
        );
        let response_signature = sign_response.then(|| signature_template(&response_id, key_info));
        let mut xml = response_text(
            o,
            &t,
            &ResponseParts {
                id: &response_id,
                issuer,
                signature: response_signature.as_deref(),
                extensions: None,
                assertions: &assertion,
            },
        );
        if sign_assertion {
            xml = self.sign(&xml, &assertion_id, keys);
        }
        if sign_response {
            // The first ds:Signature at or below the Response is its own (right after Issuer).
            xml = self.sign(&xml, &response_id, keys);
        }
        Built { xml, assertion_id }
    }

    /// Fills the first signature template at or below the element with ID `node_id`.
    fn sign(&self, xml: &str, node_id: &str, keys: &Keys) -> String {
        let file = tempfile::Builder::new()
            .prefix("unsigned-")
            .suffix(".xml")
            .tempfile_in(self.dir.path())
            .unwrap();
        std::fs::write(file.path(), xml).unwrap();
        let mut cmd = xmlsec1();
        cmd.arg("--sign")
            .arg("--privkey-pem")
            .arg(format!("{},{}", keys.key.display(), keys.cert.display()))
            .args(SIGN_ID_ATTRS)
            .args(["--node-id", node_id])
            .arg(file.path());
        let out = run(&mut cmd);
        if !out.status.success() {
            panic!(
                "xmlsec1 --sign failed ({}): {}\n{xml}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8(out.stdout).unwrap()
    }
}

/// Verifies one signature in `xml` with `xmlsec1` the way a service provider should: against
/// `cert_pem` only (`--pubkey-cert-pem` + `--enabled-key-data key-name`: nothing in
/// `ds:KeyInfo` is used), the `ID`s of `saml:Assertion` and `samlp:Response` registered, same-
/// document references only, and the signature at or below the first node `node_xpath` selects
/// (e.g. [`RESPONSE_SIGNATURE_XPATH`]; `None`: the first signature in the document). `Err` has
/// xmlsec1's stderr. It says nothing about what the signature covers (see the module docs).
pub fn xmlsec1_verify(xml: &str, cert_pem: &str, node_xpath: Option<&str>) -> Result<(), String> {
    let mut args = vec!["--enabled-key-data", "key-name"];
    if let Some(x) = node_xpath {
        args.extend(["--node-xpath", x]);
    }
    xmlsec1_verify_with(xml, cert_pem, &XMLSEC1_ID_ATTRS, &args)
}

/// `xmlsec1 --verify --pubkey-cert-pem <cert> <id_attrs> --enabled-reference-uris same-doc
/// <args> <file>`.
fn xmlsec1_verify_with(
    xml: &str,
    cert_pem: &str,
    id_attrs: &[&str],
    args: &[&str],
) -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("saml-verify-")
        .tempdir()
        .unwrap();
    let cert = dir.path().join("cert.pem");
    let doc = dir.path().join("response.xml");
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&doc, xml).unwrap();
    let mut cmd = xmlsec1();
    cmd.arg("--verify")
        .arg("--pubkey-cert-pem")
        .arg(&cert)
        .args(id_attrs)
        .args(["--enabled-reference-uris", "same-doc"])
        .args(args)
        .arg(&doc);
    let out = run(&mut cmd);
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The XML of an HTTP-Redirect binding `SAMLRequest` (already URL-decoded): base64, then raw
/// DEFLATE (RFC 1951), as the SP's AuthnRequest arrives at the IdP.
pub fn decode_redirect_request(saml_request: &str) -> String {
    let deflated = base64::engine::general_purpose::STANDARD
        .decode(saml_request.trim())
        .unwrap_or_else(|e| panic!("SAMLRequest is not base64 ({e}): {saml_request}"));
    let mut xml = String::new();
    flate2::read::DeflateDecoder::new(deflated.as_slice())
        .read_to_string(&mut xml)
        .unwrap_or_else(|e| panic!("SAMLRequest is not raw DEFLATE of UTF-8 ({e})"));
    xml
}

/// An attribute of the root element of `xml` (e.g. an AuthnRequest's `ID` or
/// `AssertionConsumerServiceURL`), entity references left as they are. A string search, for
/// tests: no XML parser behind it.
pub fn root_attribute(xml: &str, name: &str) -> Option<String> {
    let mut rest = xml;
    // Skip the declaration, comments, processing instructions and a doctype.
    let start = loop {
        let i = rest.find('<')?;
        rest = &rest[i..];
        if rest.starts_with("<?") || rest.starts_with("<!") {
            rest = &rest[1..];
            continue;
        }
        break rest;
    };
    let tag = &start[..start.find('>')?];
    let mut search = tag;
    while let Some(i) = search.find(name) {
        let before = search[..i].chars().last();
        let after = search[i + name.len()..].trim_start();
        if before.is_some_and(char::is_whitespace) {
            if let Some(value) = after.strip_prefix('=') {
                let value = value.trim_start();
                let quote = value.chars().next()?;
                if quote == '"' || quote == '\'' {
                    let value = &value[1..];
                    return Some(value[..value.find(quote)?].to_string());
                }
            }
        }
        search = &search[i + name.len()..];
    }
    None
}

/// `xmlsec1`, found on the PATH.
fn xmlsec1() -> Command {
    Command::new("xmlsec1")
}

fn run(cmd: &mut Command) -> std::process::Output {
    cmd.output().unwrap_or_else(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            panic!("xmlsec1 not found: {ENSURE_DEPS}")
        }
        panic!("cannot run xmlsec1 ({e}): {ENSURE_DEPS}")
    })
}

/// A fresh RSA-2048 key (PKCS#8 PEM) and a self-signed certificate for it (PEM).
fn generate_key(common_name: &str) -> (String, String) {
    use rsa::pkcs8::EncodePrivateKey as _;
    let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let key_pem = private
        .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
        .unwrap()
        .to_string();
    let pair =
        rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(&key_pem, &rcgen::PKCS_RSA_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let cert = params.self_signed(&pair).unwrap();
    (key_pem, cert.pem())
}

/// `_` and 32 random hex digits (an xs:ID must not start with a digit).
fn new_id() -> String {
    format!("_{}", uuid::Uuid::new_v4().simple())
}

fn b64(xml: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(xml.as_bytes())
}

/// Text and attribute values.
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// `s` from its first `start` through the end of the first `end` after it.
fn element<'a>(s: &'a str, start: &str, end: &str) -> &'a str {
    let i = s.find(start).unwrap();
    let j = i + s[i..].find(end).unwrap() + end.len();
    &s[i..j]
}

/// The document without its XML declaration.
fn strip_declaration(xml: &str) -> &str {
    match xml.find("?>") {
        Some(i) if xml.starts_with("<?xml") => xml[i + 2..].trim_start(),
        _ => xml,
    }
}

/// The instants of one Response, xs:dateTime in UTC with `Z`, whole seconds.
struct Times {
    now: String,
    not_before: String,
    not_on_or_after: String,
}

impl Times {
    fn new(o: &ResponseOptions) -> Times {
        let now = jiff::Timestamp::now();
        let at = |offset: i64| {
            now.checked_add(jiff::SignedDuration::from_secs(offset))
                .unwrap()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string()
        };
        Times {
            now: at(0),
            not_before: at(o.not_before_offset_secs),
            not_on_or_after: at(o.not_on_or_after_offset_secs),
        }
    }
}

/// An enveloped-signature template for the element with ID `id`, for `xmlsec1 --sign` to fill.
fn signature_template(id: &str, key_info: KeyInfo) -> String {
    let key_info = match key_info {
        KeyInfo::X509 => "<ds:X509Data><ds:X509Certificate></ds:X509Certificate></ds:X509Data>",
        KeyInfo::KeyValue => "<ds:KeyValue/>",
    };
    format!(
        "<ds:Signature xmlns:ds=\"{DS_NS}\"><ds:SignedInfo>\
         <ds:CanonicalizationMethod Algorithm=\"http://www.w3.org/2001/10/xml-exc-c14n#\"/>\
         <ds:SignatureMethod Algorithm=\"http://www.w3.org/2001/04/xmldsig-more#rsa-sha256\"/>\
         <ds:Reference URI=\"#{id}\"><ds:Transforms>\
         <ds:Transform Algorithm=\"http://www.w3.org/2000/09/xmldsig#enveloped-signature\"/>\
         <ds:Transform Algorithm=\"http://www.w3.org/2001/10/xml-exc-c14n#\"/>\
         </ds:Transforms>\
         <ds:DigestMethod Algorithm=\"http://www.w3.org/2001/04/xmlenc#sha256\"/>\
         <ds:DigestValue></ds:DigestValue></ds:Reference></ds:SignedInfo>\
         <ds:SignatureValue></ds:SignatureValue>\
         <ds:KeyInfo>{key_info}</ds:KeyInfo></ds:Signature>"
    )
}

struct AssertionParts<'a> {
    id: &'a str,
    issuer: &'a str,
    /// Already XML text (escaped; the comment attack puts a comment in it).
    name_id_xml: &'a str,
    /// Raw XML right after the Issuer (a signature template).
    signature: Option<&'a str>,
    /// Raw XML for a `saml:Advice` (after the Conditions).
    advice: Option<&'a str>,
}

fn assertion_text(o: &ResponseOptions, t: &Times, a: &AssertionParts) -> String {
    let mut x = String::new();
    let in_response_to = o
        .in_response_to
        .as_deref()
        .map(|r| format!(" InResponseTo=\"{}\"", xml_escape(r)))
        .unwrap_or_default();
    write!(
        x,
        "<saml:Assertion xmlns:saml=\"{SAML_NS}\" xmlns:xs=\"http://www.w3.org/2001/XMLSchema\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" ID=\"{id}\" Version=\"2.0\" \
         IssueInstant=\"{now}\"><saml:Issuer>{issuer}</saml:Issuer>{signature}<saml:Subject>\
         <saml:NameID Format=\"urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress\">{name_id}</saml:NameID>\
         <saml:SubjectConfirmation Method=\"urn:oasis:names:tc:SAML:2.0:cm:bearer\">\
         <saml:SubjectConfirmationData NotOnOrAfter=\"{not_on_or_after}\" Recipient=\"{acs}\"{in_response_to}/>\
         </saml:SubjectConfirmation></saml:Subject>\
         <saml:Conditions NotBefore=\"{not_before}\" NotOnOrAfter=\"{not_on_or_after}\">\
         <saml:AudienceRestriction><saml:Audience>{audience}</saml:Audience></saml:AudienceRestriction>\
         </saml:Conditions>",
        id = a.id,
        now = t.now,
        issuer = xml_escape(a.issuer),
        signature = a.signature.unwrap_or_default(),
        name_id = a.name_id_xml,
        not_on_or_after = t.not_on_or_after,
        not_before = t.not_before,
        acs = xml_escape(&o.acs_url),
        audience = xml_escape(&o.sp_entity_id),
    )
    .unwrap();
    if let Some(advice) = a.advice {
        write!(x, "<saml:Advice>{advice}</saml:Advice>").unwrap();
    }
    let session_index = o
        .session_index
        .as_deref()
        .map(|s| format!(" SessionIndex=\"{}\"", xml_escape(s)))
        .unwrap_or_default();
    write!(
        x,
        "<saml:AuthnStatement AuthnInstant=\"{now}\"{session_index}><saml:AuthnContext>\
         <saml:AuthnContextClassRef>urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport</saml:AuthnContextClassRef>\
         </saml:AuthnContext></saml:AuthnStatement>",
        now = t.now,
    )
    .unwrap();
    if !o.attributes.is_empty() {
        x.push_str("<saml:AttributeStatement>");
        for (name, values) in &o.attributes {
            write!(
                x,
                "<saml:Attribute Name=\"{}\" NameFormat=\"urn:oasis:names:tc:SAML:2.0:attrname-format:basic\">",
                xml_escape(name)
            )
            .unwrap();
            for v in values {
                write!(
                    x,
                    "<saml:AttributeValue xsi:type=\"xs:string\">{}</saml:AttributeValue>",
                    xml_escape(v)
                )
                .unwrap();
            }
            x.push_str("</saml:Attribute>");
        }
        x.push_str("</saml:AttributeStatement>");
    }
    x.push_str("</saml:Assertion>");
    x
}

/// An unsigned assertion for [`EVIL_NAME_ID`] with the audience, recipient and InResponseTo of
/// `o` (what an attacker writes).
fn evil_assertion(
    o: &ResponseOptions,
    t: &Times,
    id: &str,
    issuer: &str,
    advice: Option<&str>,
) -> String {
    let mut evil = o.clone();
    evil.attributes = vec![("email".into(), vec![EVIL_NAME_ID.into()])];
    assertion_text(
        &evil,
        t,
        &AssertionParts {
            id,
            issuer,
            name_id_xml: EVIL_NAME_ID,
            signature: None,
            advice,
        },
    )
}

struct ResponseParts<'a> {
    id: &'a str,
    issuer: &'a str,
    /// Raw XML right after the Issuer (a signature template, or what an attack puts there).
    signature: Option<&'a str>,
    /// Raw XML before the Status (a `samlp:Extensions`).
    extensions: Option<&'a str>,
    /// Raw XML after the Status.
    assertions: &'a str,
}

/// The Response document, with the XML declaration.
fn response_text(o: &ResponseOptions, t: &Times, r: &ResponseParts) -> String {
    let in_response_to = o
        .in_response_to
        .as_deref()
        .map(|r| format!(" InResponseTo=\"{}\"", xml_escape(r)))
        .unwrap_or_default();
    let status = if o.status_success {
        "<samlp:StatusCode Value=\"urn:oasis:names:tc:SAML:2.0:status:Success\"/>".to_string()
    } else {
        "<samlp:StatusCode Value=\"urn:oasis:names:tc:SAML:2.0:status:Requester\">\
         <samlp:StatusCode Value=\"urn:oasis:names:tc:SAML:2.0:status:AuthnFailed\"/>\
         </samlp:StatusCode><samlp:StatusMessage>authentication failed</samlp:StatusMessage>"
            .to_string()
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<samlp:Response xmlns:samlp=\"{SAMLP_NS}\" \
         xmlns:saml=\"{SAML_NS}\" ID=\"{id}\" Version=\"2.0\" IssueInstant=\"{now}\" \
         Destination=\"{acs}\"{in_response_to}><saml:Issuer>{issuer}</saml:Issuer>{signature}\
         {extensions}<samlp:Status>{status}</samlp:Status>{assertions}</samlp:Response>\n",
        id = r.id,
        now = t.now,
        acs = xml_escape(&o.acs_url),
        issuer = xml_escape(r.issuer),
        signature = r.signature.unwrap_or_default(),
        extensions = r.extensions.unwrap_or_default(),
        assertions = r.assertions,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn decode(b: &str) -> String {
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap()).unwrap()
    }

    #[test]
    fn saml_valid_responses_verify() {
        let started = Instant::now();
        let idp = TestIdp::new("https://idp.test/metadata");
        eprintln!("key generation: {:?}", started.elapsed());
        let cert = idp.certificate_pem();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        for signing in [
            Signing::Assertion,
            Signing::Response,
            Signing::Both,
            Signing::None,
        ] {
            let o = ResponseOptions {
                signing,
                in_response_to: Some("_request-1".into()),
                attributes: vec![
                    ("email".into(), vec!["alice@acme.test".into()]),
                    ("groups".into(), vec!["staff".into(), "R&D <x>".into()]),
                ],
                ..ResponseOptions::default()
            };
            let xml = decode(&idp.response(&o));
            assert!(xml.starts_with("<?xml"), "{xml}");
            assert!(xml.contains("<saml:NameID Format=\"urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress\">alice@acme.test</saml:NameID>"));
            assert!(xml.contains("InResponseTo=\"_request-1\""));
            assert!(xml.contains("Destination=\"https://sp.test/acs\""));
            assert!(xml.contains("<saml:Audience>https://sp.test/metadata</saml:Audience>"));
            assert!(xml.contains("R&amp;D &lt;x&gt;"));
            let signatures = xml.matches("<ds:Signature ").count();
            let digests = xml.matches("<ds:DigestValue></ds:DigestValue>").count()
                + xml.matches("<ds:DigestValue/>").count();
            assert_eq!(digests, 0, "every template filled: {xml}");
            let (response_sig, assertion_sig) = match signing {
                Signing::Assertion => (false, true),
                Signing::Response => (true, false),
                Signing::Both => (true, true),
                Signing::None => (false, false),
            };
            assert_eq!(
                signatures,
                usize::from(response_sig) + usize::from(assertion_sig)
            );
            assert!(xml.contains("<ds:X509Certificate>") == (signatures > 0));
            for (present, xpath) in [
                (response_sig, RESPONSE_SIGNATURE_XPATH),
                (assertion_sig, ASSERTION_SIGNATURE_XPATH),
            ] {
                let r = xmlsec1_verify(&xml, &cert, Some(xpath));
                assert_eq!(r.is_ok(), present, "{signing:?} {xpath}: {r:?}\n{xml}");
            }
            // Plain: the first signature in the document.
            assert_eq!(
                xmlsec1_verify(&xml, &cert, None).is_ok(),
                signing != Signing::None
            );
        }
        // Both: the Response's signature covers the signed assertion; breaking the assertion's
        // signature value breaks both.
        let xml = idp.response_xml(&ResponseOptions {
            signing: Signing::Both,
            ..ResponseOptions::default()
        });
        let a = element(
            element(&xml, "<saml:Assertion", "</saml:Assertion>"),
            "<ds:SignatureValue>",
            "</ds:SignatureValue>",
        );
        let broken = xml.replacen(a, "<ds:SignatureValue>AAAA</ds:SignatureValue>", 1);
        assert!(xmlsec1_verify(&broken, &cert, Some(ASSERTION_SIGNATURE_XPATH)).is_err());
        assert!(xmlsec1_verify(&broken, &cert, Some(RESPONSE_SIGNATURE_XPATH)).is_err());
        // Failure status, and an expired response, still signed (xmlsec1 checks no times).
        let failed = idp.response_xml(&ResponseOptions {
            status_success: false,
            ..ResponseOptions::default()
        });
        assert!(failed.contains("status:AuthnFailed"));
        xmlsec1_verify(&failed, &cert, Some(ASSERTION_SIGNATURE_XPATH)).unwrap();
        // Another IdP's certificate does not verify it.
        let other = TestIdp::new("https://other-idp.test/metadata");
        assert!(xmlsec1_verify(&failed, &other.certificate_pem(), None).is_err());
        eprintln!("saml_valid_responses_verify: {:?}", started.elapsed());
    }

    /// What xmlsec1 says about each attack: naive (no node selection, all key data: the first
    /// signature in the document), naive with `samlp:Extensions` IDs registered too, and
    /// strict (`--enabled-key-data key-name`, the signature selected by XPath: the Response's if
    /// it has one, else the assertion's).
    #[test]
    fn saml_attacks_report() {
        let started = Instant::now();
        let idp = TestIdp::new("https://idp.test/metadata");
        let cert = idp.certificate_pem();
        let o = ResponseOptions {
            in_response_to: Some("_request-1".into()),
            ..ResponseOptions::default()
        };
        let built = Instant::now();
        let attacks = idp.attacks(&o);
        eprintln!("attacks built in {:?}", built.elapsed());
        let names: Vec<&str> = attacks.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "xsw-evil-assertion-before-signed",
                "xsw-signed-assertion-inside-evil",
                "xsw-signed-assertion-in-extensions",
                "xsw-evil-response-wrapping-signed",
                "xsw-signed-response-sibling",
                "comment-in-name-id",
                "unsigned-assertion-in-signed-response",
                "unsigned",
                "tampered",
                "wrong-key",
                "wrong-key-keyvalue",
                "expired",
                "not-yet-valid",
                "wrong-audience",
                "wrong-recipient",
                "wrong-in-response-to",
                "wrong-issuer",
                "duplicate-ids",
                "doctype",
            ]
        );
        let all_ids = [
            "--id-attr:ID",
            "urn:oasis:names:tc:SAML:2.0:assertion:Assertion",
            "--id-attr:ID",
            "urn:oasis:names:tc:SAML:2.0:protocol:Response",
            "--id-attr:ID",
            "urn:oasis:names:tc:SAML:2.0:protocol:Extensions",
        ];
        let mut report = String::new();
        let mut outcome = std::collections::HashMap::new();
        for (name, b) in &attacks {
            let xml = decode(b);
            let naive = xmlsec1_verify_with(&xml, &cert, &XMLSEC1_ID_ATTRS, &[]).is_ok();
            let naive_ext = xmlsec1_verify_with(&xml, &cert, &all_ids, &[]).is_ok();
            let xpath = if xml.split_once("<saml:Issuer>").is_some_and(|(_, rest)| {
                rest.split_once("</saml:Issuer>")
                    .is_some_and(|(_, r)| r.starts_with("<ds:Signature"))
            }) {
                RESPONSE_SIGNATURE_XPATH
            } else {
                ASSERTION_SIGNATURE_XPATH
            };
            let strict = xmlsec1_verify(&xml, &cert, Some(xpath)).is_ok();
            let word = |ok: bool| if ok { "VERIFIED" } else { "refused" };
            writeln!(
                report,
                "{name:40} naive {:9} naive+ext-ids {:9} strict {:9} ({})",
                word(naive),
                word(naive_ext),
                word(strict),
                if xpath == RESPONSE_SIGNATURE_XPATH {
                    "response sig"
                } else {
                    "assertion sig"
                }
            )
            .unwrap();
            outcome.insert(*name, (naive, naive_ext, strict));
        }
        eprintln!("{report}");
        let expect = |name: &str, naive: bool, naive_ext: bool, strict: bool| {
            assert_eq!(
                outcome[name],
                (naive, naive_ext, strict),
                "{name} (naive, naive+ext, strict)\n{report}"
            );
        };
        // Accepted by xmlsec1: the SP's own checks must refuse these.
        expect("xsw-evil-assertion-before-signed", true, true, true);
        expect("xsw-signed-assertion-inside-evil", true, true, false);
        expect("xsw-signed-assertion-in-extensions", true, true, false);
        expect("xsw-signed-response-sibling", true, true, true);
        expect("comment-in-name-id", true, true, true);
        expect("unsigned-assertion-in-signed-response", false, true, false);
        for name in [
            "expired",
            "not-yet-valid",
            "wrong-audience",
            "wrong-recipient",
            "wrong-in-response-to",
            "wrong-issuer",
            "doctype",
        ] {
            expect(name, true, true, true);
        }
        // Accepted naively, refused strictly: KeyInfo/KeyValue is trusted by default.
        expect("wrong-key-keyvalue", true, true, false);
        // Refused by xmlsec1 itself.
        for name in [
            "xsw-evil-response-wrapping-signed",
            "unsigned",
            "tampered",
            "wrong-key",
            "duplicate-ids",
        ] {
            expect(name, false, false, false);
        }
        eprintln!("saml_attacks_report: {:?}", started.elapsed());
    }

    #[test]
    fn saml_attack_details() {
        let idp = TestIdp::new("https://idp.test/metadata");
        let cert = idp.certificate_pem();
        let attacks: std::collections::HashMap<_, _> = idp
            .attacks_xml(&ResponseOptions::default())
            .into_iter()
            .collect();
        let comment = &attacks["comment-in-name-id"];
        assert!(comment.contains(">admin@acme.test<!---->.evil.test</saml:NameID>"));
        xmlsec1_verify(comment, &cert, Some(ASSERTION_SIGNATURE_XPATH)).unwrap();
        // The wrong-key variants verify with the attacker's certificate, from KeyInfo.
        let wrong = &attacks["wrong-key"];
        assert!(xmlsec1_verify_with(wrong, &cert, &XMLSEC1_ID_ATTRS, &["--insecure"]).is_ok());
        assert!(xmlsec1_verify(wrong, &cert, None).is_err());
        let kv = &attacks["wrong-key-keyvalue"];
        assert!(kv.contains("<ds:RSAKeyValue>") && !kv.contains("<ds:X509Data>"));
        // With --node-id the "first signature below" the evil assertion is the nested one.
        let inside = &attacks["xsw-signed-assertion-inside-evil"];
        let evil_id = root_attribute(element(inside, "<saml:Assertion", ">"), "ID").unwrap();
        let by_id = xmlsec1_verify_with(
            inside,
            &cert,
            &XMLSEC1_ID_ATTRS,
            &["--enabled-key-data", "key-name", "--node-id", &evil_id],
        );
        assert!(by_id.is_ok(), "{by_id:?}");
        for (name, xml) in &attacks {
            if *name != "doctype" {
                assert!(!xml.contains("<!DOCTYPE"), "{name}");
            }
        }
        assert!(attacks["doctype"].contains("<!DOCTYPE samlp:Response ["));
        assert!(attacks["expired"].contains("NotOnOrAfter"));
    }

    #[test]
    fn saml_redirect_request_decodes() {
        use std::io::Write as _;
        let xml = "<?xml version=\"1.0\"?><samlp:AuthnRequest xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\" ID=\"_abc\" Version=\"2.0\" AssertionConsumerServiceURL='https://sp.test/acs'/>";
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(xml.as_bytes()).unwrap();
        let b = base64::engine::general_purpose::STANDARD.encode(e.finish().unwrap());
        let decoded = decode_redirect_request(&b);
        assert_eq!(decoded, xml);
        assert_eq!(root_attribute(&decoded, "ID").as_deref(), Some("_abc"));
        assert_eq!(
            root_attribute(&decoded, "AssertionConsumerServiceURL").as_deref(),
            Some("https://sp.test/acs")
        );
        assert_eq!(root_attribute(&decoded, "Destination"), None);
    }
}

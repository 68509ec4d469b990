//! Regenerates `src/ext_authz_descriptors.bin`, the descriptors server reflection serves:
//! `envoy/service/auth/v3/external_auth.proto` and everything it imports, cut from the full
//! descriptor set envoy-types generates its code from (`src/generated/types.bin` in its crate
//! source; it is not exported). Each file's encoded bytes are copied as they are, so custom
//! options (validation rules, annotations) survive.
//!
//! ```text
//! cargo run -p gateway-check --example ext-authz-descriptors -- \
//!     ~/.cargo/registry/src/*/envoy-types-0.7.*/src/generated/types.bin \
//!     gateway/check/src/ext_authz_descriptors.bin
//! ```

use std::collections::{BTreeSet, HashMap};
use std::error::Error;

use prost::Message;

const ROOT: &str = "envoy/service/auth/v3/external_auth.proto";

/// The encoded `file` entries (field 1) of a FileDescriptorSet, each as its own bytes.
fn files(mut set: &[u8]) -> Result<Vec<&[u8]>, Box<dyn Error>> {
    let mut out = Vec::new();
    while !set.is_empty() {
        let key = prost::encoding::decode_varint(&mut set)?;
        if key != (1 << 3) | 2 {
            return Err(format!("unexpected field key {key} in a FileDescriptorSet").into());
        }
        let len = usize::try_from(prost::encoding::decode_varint(&mut set)?)?;
        let (file, rest) = set.split_at_checked(len).ok_or("truncated file entry")?;
        out.push(file);
        set = rest;
    }
    Ok(out)
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(input), Some(output)) = (args.next(), args.next()) else {
        return Err("usage: ext-authz-descriptors <envoy-types types.bin> <output.bin>".into());
    };
    let all = std::fs::read(&input)?;
    let mut by_name: HashMap<String, (&[u8], Vec<String>)> = HashMap::new();
    for raw in files(&all)? {
        let file = prost_types::FileDescriptorProto::decode(raw)?;
        by_name.insert(file.name().to_string(), (raw, file.dependency.clone()));
    }
    let mut seen = BTreeSet::new();
    let mut pending = vec![ROOT.to_string()];
    let mut order = Vec::new();
    while let Some(name) = pending.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let (_, imports) = by_name
            .get(&name)
            .ok_or_else(|| format!("{input} lacks {name}"))?;
        pending.extend(imports.iter().cloned());
        order.push(name);
    }
    let mut out = Vec::new();
    for (raw, _) in order.iter().filter_map(|name| by_name.get(name)) {
        prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(raw.len() as u64, &mut out);
        out.extend_from_slice(raw);
    }
    std::fs::write(&output, &out)?;
    eprintln!("{output}: {} files, {} bytes", order.len(), out.len());
    Ok(())
}

//! An order-preserving byte encoding of [`ViewKey`]s: one tenant's view is a contiguous key
//! range ordered by bucket, so a bucket range is one ordered scan.
//!
//! Strings are escaped (`0x00` → `0x00 0xff`) and terminated by `0x00 0x01`, which sorts
//! before any escaped byte, so prefixes sort first. Buckets are big-endian with the sign bit
//! flipped, so negative times sort before positive ones.

use tally_model::Millis;

use super::ViewKey;

/// The prefix shared by every key of one tenant's view.
pub fn view_prefix(tenant: &str, view: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(tenant.len() + view.len() + 4);
    put_string(&mut out, tenant);
    put_string(&mut out, view);
    out
}

/// The smallest key of `bucket` within a view prefix.
pub fn bucket_start(prefix: &[u8], bucket: Millis) -> Vec<u8> {
    let mut out = prefix.to_vec();
    out.extend_from_slice(&((bucket as u64) ^ (1 << 63)).to_be_bytes());
    out
}

/// The full key.
pub fn encode(key: &ViewKey) -> Vec<u8> {
    let mut out = bucket_start(&view_prefix(&key.tenant, &key.view), key.bucket);
    for dimension in &key.dimensions {
        put_string(&mut out, dimension);
    }
    out
}

/// Decodes [`encode`]'s output.
pub fn decode(mut bytes: &[u8]) -> Option<ViewKey> {
    let tenant = take_string(&mut bytes)?;
    let view = take_string(&mut bytes)?;
    let (bucket, mut rest) = bytes.split_first_chunk::<8>()?;
    let bucket = (u64::from_be_bytes(*bucket) ^ (1 << 63)) as Millis;
    let mut dimensions = Vec::new();
    while !rest.is_empty() {
        dimensions.push(take_string(&mut rest)?);
    }
    Some(ViewKey {
        tenant,
        view,
        bucket,
        dimensions,
    })
}

fn put_string(out: &mut Vec<u8>, text: &str) {
    for &byte in text.as_bytes() {
        out.push(byte);
        if byte == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 1]);
}

fn take_string(bytes: &mut &[u8]) -> Option<String> {
    let mut raw = Vec::new();
    let mut rest = *bytes;
    loop {
        match rest {
            [0, 1, tail @ ..] => {
                *bytes = tail;
                return String::from_utf8(raw).ok();
            }
            [0, 0xff, tail @ ..] => {
                raw.push(0);
                rest = tail;
            }
            [byte, tail @ ..] if *byte != 0 => {
                raw.push(*byte);
                rest = tail;
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key_strategy() -> impl Strategy<Value = ViewKey> {
        let text = || prop::string::string_regex("[a\\x00b\\x01]{0,4}").unwrap();
        (
            text(),
            text(),
            any::<i64>(),
            prop::collection::vec(text(), 0..3),
        )
            .prop_map(|(tenant, view, bucket, dimensions)| ViewKey {
                tenant,
                view,
                bucket,
                dimensions,
            })
    }

    proptest! {
        #[test]
        fn keys_round_trip_and_sort_like_tuples(a in key_strategy(), b in key_strategy()) {
            prop_assert_eq!(decode(&encode(&a)), Some(a.clone()));
            let tuple = |k: &ViewKey| (k.tenant.clone(), k.view.clone(), k.bucket, k.dimensions.clone());
            prop_assert_eq!(encode(&a).cmp(&encode(&b)), tuple(&a).cmp(&tuple(&b)));
        }
    }
}

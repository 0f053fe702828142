//! How each field of an HPACK header block was sent (RFC 7541 section 6), which the decoder
//! does not report: a field the client sent as never indexed (a credential, say) must reach the
//! server as never indexed too (section 6.2.3: intermediaries keep the representation), and one
//! sent without indexing must not be added to the table the filter shares with the server.

/// How one field was represented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Representation {
    /// Indexed, or a literal added to the dynamic table: the encoder may index it.
    Indexable,
    /// A literal not added to the table (section 6.2.2).
    WithoutIndexing,
    /// A literal that no intermediary may index (section 6.2.3).
    NeverIndexed,
}

/// The representation of every field of `block`, in order (size updates are not fields);
/// `None` when the block is malformed (the decoder then reports why).
pub(super) fn representations(block: &[u8]) -> Option<Vec<Representation>> {
    let mut fields = Vec::new();
    let mut at = 0;
    while let Some(&first) = block.get(at) {
        let rest = &block[at..];
        at += if first & 0x80 != 0 {
            fields.push(Representation::Indexable);
            integer(rest, 7)?
        } else if first & 0x40 != 0 {
            fields.push(Representation::Indexable);
            literal(rest, 6)?
        } else if first & 0x20 != 0 {
            // A dynamic table size update.
            integer(rest, 5)?
        } else {
            fields.push(if first & 0x10 != 0 {
                Representation::NeverIndexed
            } else {
                Representation::WithoutIndexing
            });
            literal(rest, 4)?
        };
    }
    Some(fields)
}

/// Bytes of a literal field whose name index has a `prefix`-bit prefix: the index, then the
/// name (when the index is 0) and the value as string literals.
fn literal(bytes: &[u8], prefix: u8) -> Option<usize> {
    let (index, mut used) = decode_integer(bytes, prefix)?;
    if index == 0 {
        used += string(bytes.get(used..)?)?;
    }
    Some(used + string(bytes.get(used..)?)?)
}

/// Bytes of a string literal: the Huffman bit and a 7-bit-prefix length, then that many bytes.
fn string(bytes: &[u8]) -> Option<usize> {
    let (length, used) = decode_integer(bytes, 7)?;
    let end = used.checked_add(length)?;
    (end <= bytes.len()).then_some(end)
}

fn integer(bytes: &[u8], prefix: u8) -> Option<usize> {
    decode_integer(bytes, prefix).map(|(_, used)| used)
}

/// An HPACK integer (section 5.1): its value and the bytes it took.
fn decode_integer(bytes: &[u8], prefix: u8) -> Option<(usize, usize)> {
    let mask = (1u16 << prefix) as u8 - 1;
    let mut value = usize::from(*bytes.first()? & mask);
    if value < usize::from(mask) {
        return Some((value, 1));
    }
    for (i, &byte) in bytes.iter().enumerate().skip(1) {
        let shift = 7 * u32::try_from(i - 1).ok()?;
        if shift > 28 {
            return None;
        }
        value = value.checked_add(usize::from(byte & 0x7f) << shift)?;
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Writes a literal field of the given representation with a literal name, so that it changes
/// no table (the filter's encoder never learns it).
pub(super) fn write_unindexed(out: &mut Vec<u8>, never: bool, name: &[u8], value: &[u8]) {
    out.push(if never { 0x10 } else { 0x00 });
    for text in [name, value] {
        loona_hpack::encoder::encode_integer_into(text.len(), 7, 0, &mut *out)
            .expect("writing to a Vec cannot fail");
        out.extend_from_slice(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_representation_is_told_apart() {
        let mut block = vec![0x82]; // indexed: :method GET
        block.push(0x3f); // a size update to 31 + ...
        block.push(0x01); // ... 1 = 32
        write_unindexed(&mut block, true, b"authorization", b"Bearer s3cr3t");
        write_unindexed(&mut block, false, b"x-trace", b"1");
        block.extend_from_slice(&[0x44, 0x01, b'/']); // incremental indexing, name :path
        assert_eq!(
            representations(&block),
            Some(vec![
                Representation::Indexable,
                Representation::NeverIndexed,
                Representation::WithoutIndexing,
                Representation::Indexable,
            ])
        );
        let decoded = loona_hpack::Decoder::new().decode(&block).expect("valid");
        assert_eq!(decoded[1].1, b"Bearer s3cr3t");
        assert_eq!(representations(&block[..block.len() - 1]), None);
    }
}

//! `SseDecoder` on arbitrary bytes. Invariants: the events do not depend on
//! how the bytes are split into chunks (one chunk, byte by byte, two chunks
//! at an input-derived point, random-sized chunks); a finished decoder is
//! reset (decoding again gives the same events); each event survives
//! `encode_event` and decoding again; forwarding the events' raw bytes (what
//! a pass-through relay does) gives the client the same events.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_fuzz::hash;
use tollgate_translate::{encode_event, SseDecoder, SseEvent};

const BOM: &[u8] = "\u{feff}".as_bytes();

fn decode<'a>(
    decoder: &mut SseDecoder,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Vec<SseEvent> {
    let mut events = Vec::new();
    for chunk in chunks {
        events.extend(decoder.push(chunk));
    }
    events.extend(decoder.finish());
    assert_eq!(decoder.buffered(), 0, "finish() left bytes buffered");
    events
}

fn name_and_data(events: &[SseEvent]) -> Vec<(Option<&str>, &str)> {
    events
        .iter()
        .map(|e| (e.event.as_deref(), e.data.as_str()))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut decoder = SseDecoder::new();
    let whole = decode(&mut decoder, [data]);
    // The same decoder again: finish() must have reset it completely.
    assert_eq!(
        decode(&mut decoder, [data]),
        whole,
        "decoder not reset by finish()"
    );

    let bytewise = decode(&mut SseDecoder::new(), data.chunks(1));
    assert_eq!(bytewise, whole, "byte-by-byte split changed the events");

    let h = hash(data);
    let cut = (h % (data.len() as u64 + 1)) as usize;
    let (a, b) = data.split_at(cut);
    assert_eq!(
        decode(&mut SseDecoder::new(), [a, b]),
        whole,
        "split at {cut}"
    );

    let mut chunks = Vec::new();
    let (mut rest, mut state) = (data, h | 1);
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let (c, r) = rest.split_at(((state % 16) as usize + 1).min(rest.len()));
        chunks.push(c);
        rest = r;
    }
    assert_eq!(
        decode(&mut SseDecoder::new(), chunks),
        whole,
        "random chunk sizes"
    );

    for e in &whole {
        let encoded = encode_event(e.event.as_deref(), &e.data);
        let again = decode(&mut SseDecoder::new(), [&encoded[..]]);
        assert_eq!(
            name_and_data(&again),
            vec![(e.event.as_deref(), e.data.as_str())],
            "encode_event round trip"
        );
    }

    // A BOM is stripped only at the very start of a stream, so a raw event
    // starting with one legitimately decodes differently once moved there.
    if !whole.iter().any(|e| e.raw.starts_with(BOM)) {
        let forwarded: Vec<u8> = whole.iter().flat_map(|e| e.raw.iter().copied()).collect();
        let client = decode(&mut SseDecoder::new(), [&forwarded[..]]);
        assert_eq!(client, whole, "forwarded raw bytes decode differently");
    }
});

//! SentencePiece BPE tokenizer against the SentencePiece library's own ids
//! for the Llama 2 tokenizer.model (fixtures/text/llama2-spm-golden.json).

use std::path::PathBuf;
use std::time::Instant;

use pyffi::tokenizer::spm::{SpmTokenizer, TokenType};
use pyffi::ErrorKind;

fn fixtures() -> PathBuf {
    std::env::var_os("PYFFI_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/fixtures"
            ))
        })
}

fn model_path() -> PathBuf {
    fixtures().join("text/llama2-tokenizer.model")
}

fn llama2() -> SpmTokenizer {
    SpmTokenizer::from_model_file(&model_path()).expect("llama2 tokenizer.model loads")
}

/// (text, ids) for every golden case.
fn golden() -> Vec<(String, Vec<u32>)> {
    let raw = std::fs::read_to_string(fixtures().join("text/llama2-spm-golden.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let text = c["text"].as_str().unwrap().to_string();
            let ids = c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            (text, ids)
        })
        .collect()
}

#[test]
fn llama2_model_is_read() {
    let t = llama2();
    assert_eq!(t.vocab_size(), 32000);
    assert_eq!(
        (t.unk_id(), t.bos_id(), t.eos_id(), t.pad_id()),
        (Some(0), Some(1), Some(2), None)
    );
    assert!(t.add_dummy_prefix());
    assert!(t.byte_fallback());
    assert_eq!(t.piece(1), "<s>");
    assert_eq!(t.token_type(1), Some(TokenType::Control));
    assert_eq!(t.token_type(13), Some(TokenType::Byte));
    assert_eq!(t.token_type(15043), Some(TokenType::Normal));
    assert_eq!(t.piece(15043), "▁Hello");
    assert_eq!(t.token_id("▁Hello"), Some(15043));
    assert_eq!(t.token_id("<0x0A>"), Some(13));
    assert_eq!(t.token_id("no such piece"), None);
    assert_eq!(t.token_to_bytes(13).unwrap(), b"\n");
    assert_eq!(t.token_to_bytes(15043).unwrap(), b" Hello");
}

#[test]
fn golden_ids_match_sentencepiece() {
    let t = llama2();
    let cases = golden();
    assert_eq!(cases.len(), 24);
    let mut bad = Vec::new();
    for (text, ids) in &cases {
        let got = t.encode(text, false);
        if &got != ids {
            bad.push(format!("{text:?}\n  want {ids:?}\n  got  {got:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} differ:\n{}",
        bad.len(),
        cases.len(),
        bad.join("\n")
    );
}

#[test]
fn golden_texts_round_trip() {
    let t = llama2();
    for (text, ids) in golden() {
        assert_eq!(t.decode(&ids, true).unwrap(), text.as_bytes(), "{text:?}");
        // With BOS in front, as the model sees it.
        let mut with_bos = vec![1];
        with_bos.extend(&ids);
        assert_eq!(
            t.decode(&with_bos, true).unwrap(),
            text.as_bytes(),
            "{text:?}"
        );
    }
}

#[test]
fn parse_special_makes_control_tokens() {
    let t = llama2();
    assert_eq!(t.encode("<s>", true), vec![1]);
    assert_eq!(t.encode("<s>", false), vec![529, 29879, 29958]);
    // llama.cpp-style: text after a special token gets its own dummy prefix.
    assert_eq!(
        t.encode("<s>Hello world</s>", true),
        vec![1, 15043, 3186, 2]
    );
    assert_eq!(
        t.encode("Hello<s> world", true),
        vec![15043, 1, 29871, 3186]
    );
    assert_eq!(
        t.decode(&[1, 15043, 3186, 2], false).unwrap(),
        b"<s>Hello world</s>"
    );
    assert_eq!(
        t.decode(&[1, 15043, 3186, 2], true).unwrap(),
        b"Hello world"
    );
    // Plain text is unchanged by parse_special.
    for (text, ids) in golden().into_iter().filter(|(t, _)| !t.contains('<')) {
        assert_eq!(t.encode(&text, true), ids, "{text:?}");
    }
}

#[test]
fn out_of_range_ids_are_errors() {
    let t = llama2();
    let e = t.decode(&[15043, 32000], false).unwrap_err();
    assert_eq!(e.kind, ErrorKind::OutOfRange);
    assert!(e.message.contains("32000"), "{}", e.message);
    assert_eq!(
        t.token_to_bytes(u32::MAX).unwrap_err().kind,
        ErrorKind::OutOfRange
    );
}

#[test]
fn malformed_models_are_errors_not_panics() {
    let bytes = std::fs::read(model_path()).unwrap();
    assert!(SpmTokenizer::from_model_bytes(&bytes).is_ok());
    // Truncations: most cut a field short; a cut on a field boundary may still
    // parse (fewer pieces), which is fine as long as nothing panics.
    let mut errors = 0;
    for cut in [
        0,
        1,
        2,
        3,
        5,
        7,
        10,
        100,
        1000,
        4096,
        bytes.len() / 3,
        bytes.len() / 2,
        bytes.len() - 7,
        bytes.len() - 1,
    ] {
        match SpmTokenizer::from_model_bytes(&bytes[..cut]) {
            Err(e) => {
                assert_eq!(
                    e.kind,
                    ErrorKind::InvalidArgument,
                    "cut at {cut}: {}",
                    e.message
                );
                errors += 1;
            }
            Ok(t) => assert!(t.vocab_size() > 0),
        }
    }
    assert!(errors >= 10, "only {errors} truncations were refused");
    // Deterministic pseudo-random garbage, and random bit flips in the real file.
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for len in [1usize, 2, 16, 100, 1000, 100_000] {
        let garbage: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let e = SpmTokenizer::from_model_bytes(&garbage)
            .err()
            .expect("garbage is refused");
        assert!(
            matches!(e.kind, ErrorKind::InvalidArgument | ErrorKind::Unsupported),
            "{:?}",
            e.kind
        );
    }
    for _ in 0..200 {
        let mut b = bytes[..20_000.min(bytes.len())].to_vec();
        for _ in 0..4 {
            let i = next() as usize % b.len();
            b[i] ^= 1 << (next() % 8);
        }
        let _ = SpmTokenizer::from_model_bytes(&b); // must return, Ok or Err
    }
    // A length prefix claiming ~2^62 bytes must not allocate.
    let huge = [0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f];
    assert_eq!(
        SpmTokenizer::from_model_bytes(&huge).err().unwrap().kind,
        ErrorKind::InvalidArgument
    );
    // A missing file names the path.
    let e = SpmTokenizer::from_model_file(&fixtures().join("text/nope.model"))
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains("nope.model"));
}

#[test]
fn one_megabyte_round_trips_fast() {
    let t = llama2();
    let cases = golden();
    let mut text = String::new();
    let mut i = 0;
    while text.len() < 1 << 20 {
        text.push_str(&cases[i % cases.len()].0);
        text.push(if i % 7 == 0 { '\n' } else { ' ' });
        i += 1;
    }
    let start = Instant::now();
    let ids = t.encode(&text, false);
    let took = start.elapsed();
    assert_eq!(t.decode(&ids, true).unwrap(), text.as_bytes());
    eprintln!(
        "encoded {} bytes to {} ids in {:?}",
        text.len(),
        ids.len(),
        took
    );
    // The bound is meant for release builds; debug builds get more slack.
    let limit = if cfg!(debug_assertions) { 20.0 } else { 2.0 };
    assert!(took.as_secs_f64() < limit, "1 MB took {took:?}");
    // A pathological run of one letter stays fast too (heap, not quadratic).
    let aaa = "a".repeat(1 << 20);
    let start = Instant::now();
    let ids = t.encode(&aaa, false);
    eprintln!("1 MB of one letter in {:?}", start.elapsed());
    assert!(
        start.elapsed().as_secs_f64() < limit,
        "1 MB of 'a' took {:?}",
        start.elapsed()
    );
    assert_eq!(t.decode(&ids, true).unwrap(), aaa.as_bytes());
}

#[test]
fn from_vocab_matches_model_file() {
    let file = llama2();
    let n = file.vocab_size() as u32;
    let tokens: Vec<String> = (0..n).map(|i| file.piece(i).to_string()).collect();
    let scores: Vec<f32> = (0..n).map(|i| file.score(i)).collect();
    let types: Vec<i32> = (0..n).map(|i| file.token_type(i).unwrap() as i32).collect();
    let vocab =
        SpmTokenizer::from_vocab(tokens, scores, types, Some(1), Some(2), Some(0), None, true)
            .unwrap();
    assert_eq!(vocab.vocab_size(), file.vocab_size());
    for (text, ids) in golden() {
        assert_eq!(vocab.encode(&text, false), ids, "{text:?}");
        assert_eq!(
            vocab.encode(&text, true),
            file.encode(&text, true),
            "{text:?}"
        );
        assert_eq!(
            vocab.decode(&ids, true).unwrap(),
            text.as_bytes(),
            "{text:?}"
        );
    }
}

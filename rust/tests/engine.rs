//! Engine-level tests on the fixture models: loading, error kinds on broken
//! files, and KV-cache continuation equal to one full forward.

use std::path::PathBuf;
use std::sync::Arc;

use pyffi::{
    ErrorKind, FinishReason, GenerateRequest, Model, SamplingParams, Session, SessionParams,
};

fn fixtures() -> PathBuf {
    std::env::var_os("PYFFI_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures"))
}

fn load(name: &str) -> Arc<Model> {
    Arc::new(Model::load(&fixtures().join("models").join(name)).expect("fixture model loads"))
}

#[test]
fn missing_and_broken_files_are_typed_errors() {
    let dir = std::env::temp_dir().join(format!("pyffi-engine-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    assert_eq!(
        Model::load(&dir.join("nope")).err().unwrap().kind,
        ErrorKind::NotFound
    );
    std::fs::copy(
        fixtures().join("models/tiny-llama/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    assert_eq!(Model::load(&dir).err().unwrap().kind, ErrorKind::NotFound);
    for bytes in [
        &b""[..],
        &[0xffu8; 16][..],
        &[8, 0, 0, 0, 0, 0, 0, 0, b'{', b'}'][..],
    ] {
        std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
        let e = Model::load(&dir).err().unwrap();
        assert_eq!(e.kind, ErrorKind::InvalidWeights, "{}", e.message);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn incremental_decoding_equals_full_forward() {
    let model = load("stories260K");
    let vocab = model.config.vocab_size;
    let mut s = Session::new(
        model,
        &SessionParams {
            n_ctx: 64,
            ..Default::default()
        },
    )
    .unwrap();
    let toks = [1, 50, 60, 70, 80, 90];
    let mut full = vec![0.0; toks.len() * vocab];
    s.forward(&toks, &[toks.len() as u32], None, false, &mut full)
        .unwrap();
    let mut step = vec![0.0; vocab];
    s.forward(&toks[..2], &[2], None, true, &mut step).unwrap();
    for (i, &t) in toks.iter().enumerate().skip(2) {
        s.forward(&[t], &[1], Some(&[i as u32]), true, &mut step)
            .unwrap();
        let want = &full[i * vocab..(i + 1) * vocab];
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (a, b) in step.iter().zip(want) {
            assert!((a - b).abs() <= 1e-5 * scale, "position {i}: {a} vs {b}");
        }
    }
}

#[test]
fn seeded_generation_repeats_and_greedy_is_seed_free() {
    let model = load("tiny-llama");
    let mut s = Session::new(
        model,
        &SessionParams {
            n_ctx: 64,
            ..Default::default()
        },
    )
    .unwrap();
    let mut run = |temperature: f32, seed: u64| {
        let req = GenerateRequest {
            prompt: &[1, 2, 3],
            max_new_tokens: 12,
            sampling: SamplingParams {
                temperature,
                seed,
                ..Default::default()
            },
            stop_tokens: &[],
            stop_at_eos: false,
        };
        let mut out = vec![0; 12];
        let (n, _) = s.generate(&req, &mut out, &mut |_| true).unwrap();
        out.truncate(n);
        out
    };
    assert_eq!(run(1.0, 3), run(1.0, 3));
    assert_eq!(run(0.0, 1), run(0.0, 2));
}

/// Greedy by hand: forward, argmax, feed back; `n` tokens at most.
fn greedy_by_hand(s: &mut Session, prompt: &[i32], n: usize) -> Vec<i32> {
    let vocab = s.model().config.vocab_size;
    let mut logits = vec![0.0f32; vocab];
    s.forward(prompt, &[prompt.len() as u32], None, true, &mut logits)
        .unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let tok = (0..vocab)
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
            .unwrap() as i32;
        out.push(tok);
        let pos = (prompt.len() + out.len() - 1) as u32;
        s.forward(&[tok], &[1], Some(&[pos]), true, &mut logits)
            .unwrap();
    }
    out
}

#[test]
fn step_generation_is_the_decode_loop_and_ends_for_each_reason() {
    let mut s = Session::new(
        load("tiny-llama"),
        &SessionParams {
            n_ctx: 16,
            ..Default::default()
        },
    )
    .unwrap();
    let prompt = [1, 2, 3];
    let want = greedy_by_hand(&mut s, &prompt, 8);
    let req = |max_new_tokens, stop_tokens| GenerateRequest {
        prompt: &prompt,
        max_new_tokens,
        sampling: SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        stop_tokens,
        stop_at_eos: false,
    };
    let drain = |s: &mut Session, r: &GenerateRequest| {
        let mut g = s.start_generation(r).unwrap();
        let mut got = Vec::new();
        while let Some(t) = g.next(s).unwrap() {
            got.push(t);
        }
        assert_eq!(g.next(s).unwrap(), None, "an ended generation stays ended");
        assert_eq!(g.n_tokens(), got.len());
        (got, g.finish_reason().unwrap())
    };
    assert_eq!(
        drain(&mut s, &req(8, &[])),
        (want.clone(), FinishReason::Length)
    );
    assert_eq!(drain(&mut s, &req(0, &[])), (vec![], FinishReason::Length));
    // A stop token ends it before that token (first place it occurs).
    let stop = want[4];
    let cut = want.iter().position(|&t| t == stop).unwrap();
    let stops = [stop];
    assert_eq!(
        drain(&mut s, &req(8, &stops)),
        (want[..cut].to_vec(), FinishReason::Stop)
    );
    // The context's end: the last token is the one at position n_ctx - 1's
    // successor, never fed.
    let (all, why) = drain(&mut s, &req(100, &[]));
    assert_eq!(
        (all.len(), why),
        (16 - prompt.len() + 1, FinishReason::Length)
    );
    assert_eq!(all[..8], want[..]);
    // The callback loop gives the same tokens.
    let mut out = vec![0; 8];
    let (n, why) = s.generate(&req(8, &[]), &mut out, &mut |_| true).unwrap();
    assert_eq!((&out[..n], why), (&want[..], FinishReason::Length));

    // Another call on the session between two tokens ends the generation.
    let mut g = s.start_generation(&req(8, &[])).unwrap();
    assert_eq!(g.next(&mut s).unwrap(), Some(want[0]));
    let mut logits = vec![0.0f32; s.model().config.vocab_size];
    s.forward(&[5], &[1], None, true, &mut logits).unwrap();
    let e = g.next(&mut s).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert!(e.message.contains("another call"), "{}", e.message);
    assert_eq!(g.next(&mut s).unwrap(), None);
    assert_eq!(g.finish_reason(), Some(FinishReason::Cancelled));
    // A generation of another session is refused the same way.
    let mut other = Session::new(load("tiny-llama"), &SessionParams::default()).unwrap();
    let mut g = s.start_generation(&req(8, &[])).unwrap();
    assert!(g.next(&mut other).is_err());
}

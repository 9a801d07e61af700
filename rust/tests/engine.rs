//! Engine-level tests on the fixture models: loading, error kinds on broken
//! files, and KV-cache continuation equal to one full forward.

use std::path::PathBuf;
use std::sync::Arc;

use pyffi::{ErrorKind, GenerateRequest, Model, SamplingParams, Session, SessionParams};

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

//! GGUF reader and writer: the fixture files (llama.cpp's and gguf-py's
//! output), writer round trips, one named test per kind of hostile file, a
//! seeded byte-mutation fuzz, and a replay of saved crashers in gguf_corpus/.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use pyffi::loader::gguf::{
    GgmlType, Gguf, GgufWriter, MetaArray, MetaValue, StrArray, MAX_ARRAY_DEPTH,
};
use pyffi::tensor::DType;
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

fn corpus_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/gguf_corpus"))
}

fn gguf_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    files.sort();
    files
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("pyffi-gguf-test-{}-{name}", std::process::id()))
}

/// Every property a successfully parsed file must have, whatever its bytes.
fn check_invariants(g: &Gguf) {
    let len = g.bytes().len() as u64;
    for t in g.tensors() {
        let end = t
            .offset
            .checked_add(t.n_bytes as u64)
            .expect("tensor end overflows");
        assert!(end <= len, "tensor '{}' ends at {end} past {len}", t.name);
        assert!(
            t.offset >= g.data_offset(),
            "tensor '{}' starts before the data section",
            t.name
        );
        assert_eq!(
            t.offset % g.alignment(),
            0,
            "tensor '{}' misaligned",
            t.name
        );
        assert_eq!(g.tensor_data(t).len(), t.n_bytes);
        assert_eq!(g.tensor(&t.name), Some(t));
        assert!(t.dims.len() <= 4);
    }
    for (k, v) in g.metadata() {
        // Same entry, by address: NaN values never compare equal.
        assert!(
            g.get(k).is_some_and(|found| std::ptr::eq(found, v)),
            "key '{k}'"
        );
    }
}

// ---------------------------------------------------------------------------
// Fixtures

/// (file name prefix, architecture, vocabulary size).
const EXPECTED: &[(&str, &str, usize)] = &[
    ("small-llama-256-", "llama", 512),
    ("stories260K-", "llama", 512),
    ("tiny-llama-", "llama", 320),
    ("tiny-phi3-", "phi3", 320),
    ("tiny-qwen2-", "qwen2", 352),
    ("ggml-vocab-gpt-2", "gpt2", 50257),
    ("ggml-vocab-llama-bpe", "llama", 128256),
    ("ggml-vocab-llama-spm", "llama", 32000),
];

#[test]
fn fixture_files_parse() {
    let mut files = gguf_files(&fixtures().join("gguf"));
    files.extend(gguf_files(&fixtures().join("vocab")));
    assert!(
        files.len() >= 20,
        "expected the 17 model and 3 vocab fixtures, found {}",
        files.len()
    );
    for path in &files {
        let file_name = path.file_name().unwrap().to_str().unwrap();
        let g = Gguf::open(path).unwrap_or_else(|e| panic!("{e}"));
        check_invariants(&g);
        let &(_, arch, vocab) = EXPECTED
            .iter()
            .find(|(prefix, _, _)| file_name.starts_with(prefix))
            .unwrap_or_else(|| panic!("no expectation for {file_name}"));
        assert!(matches!(g.version(), 2 | 3), "{file_name}");
        assert_eq!(g.architecture(), Some(arch), "{file_name}");
        let tokens = g
            .get_strs("tokenizer.ggml.tokens")
            .unwrap_or_else(|| panic!("{file_name}: no tokens"));
        assert_eq!(tokens.len(), vocab, "{file_name}");
        assert_eq!(
            g.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
            vocab
        );
        assert_eq!(
            g.get_i32_array("tokenizer.ggml.token_type")
                .map(|a| a.len()),
            Some(vocab),
            "{file_name}"
        );
        if let Some(scores) = g.get_f32_array("tokenizer.ggml.scores") {
            assert_eq!(scores.len(), vocab, "{file_name}");
        }
        if let Some(n) = g.get_u64(&format!("{arch}.vocab_size")) {
            assert_eq!(n as usize, vocab, "{file_name}");
        }
        let bos = g.get_u64("tokenizer.ggml.bos_token_id").expect("bos id");
        assert!((bos as usize) < vocab);
        if file_name.starts_with("ggml-vocab") {
            assert!(g.tensors().is_empty());
            let model = if file_name.contains("llama-spm") {
                "llama"
            } else {
                "gpt2"
            };
            assert_eq!(
                g.get_str("tokenizer.ggml.model"),
                Some(model),
                "{file_name}"
            );
        } else {
            let emb = g.tensor("token_embd.weight").expect("token_embd.weight");
            assert_eq!(emb.dims.get(1).copied(), Some(vocab as u64), "{file_name}");
            assert!(g.get_u64(&format!("{arch}.block_count")).unwrap() >= 1);
            assert!(
                g.get_f64(&format!("{arch}.attention.layer_norm_rms_epsilon"))
                    .unwrap()
                    > 0.0
            );
            assert!(!g.tensors().is_empty());
        }
    }
}

#[test]
fn fixture_tensor_types() {
    use GgmlType::*;
    let cases: &[(&str, &[GgmlType])] = &[
        ("small-llama-256-f32", &[F32]),
        ("small-llama-256-q4_0", &[F32, Q4_0]),
        ("small-llama-256-q4_1", &[F32, Q4_1, Q6_K]),
        ("small-llama-256-q4_k_m", &[F32, Q4_K, Q6_K]),
        ("small-llama-256-q5_k_m", &[F32, Q5_K, Q6_K]),
        ("small-llama-256-q6_k", &[F32, Q6_K]),
        ("small-llama-256-q8_0", &[F32, Q8_0]),
        ("tiny-llama-f16", &[F32, F16]),
        ("tiny-llama-q8_0", &[F32, Q8_0]),
        ("tiny-qwen2-q8_0", &[F32, Q8_0]),
    ];
    for (name, expect) in cases {
        let g = Gguf::open(&fixtures().join("gguf").join(format!("{name}.gguf"))).unwrap();
        let found: BTreeSet<&str> = g.tensors().iter().map(|t| t.ggml_type.name()).collect();
        let want: BTreeSet<&str> = expect.iter().map(|t| t.name()).collect();
        // Quantized files keep some rows as F16 when they are not a whole number of blocks.
        let found_no_f16: BTreeSet<&str> = found
            .iter()
            .copied()
            .filter(|&n| n != "F16" || want.contains("F16"))
            .collect();
        assert_eq!(found_no_f16, want, "{name}");
    }
}

/// Offsets are right only if the bytes equal the original float32 weights.
#[test]
fn fixture_data_matches_safetensors() {
    let st_bytes = std::fs::read(fixtures().join("models/tiny-llama/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
    let f32s = |b: &[u8]| {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect::<Vec<_>>()
    };
    for (ours, theirs) in [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
    ] {
        let reference = f32s(st.tensor(theirs).unwrap().data());
        let shape = st.tensor(theirs).unwrap().shape().to_vec();

        let g = Gguf::open(&fixtures().join("gguf/tiny-llama-f32.gguf")).unwrap();
        let t = g.tensor(ours).unwrap();
        assert_eq!(t.shape(), shape, "{ours}");
        assert_eq!(f32s(g.tensor_data(t)), reference, "{ours}");

        let g = Gguf::open(&fixtures().join("gguf/tiny-llama-f16.gguf")).unwrap();
        let t = g.tensor(ours).unwrap();
        let view = g.tensor_view(t).unwrap();
        let mut out = vec![0f32; reference.len()];
        view.to_f32(&mut out).unwrap();
        assert_eq!(view.shape, shape);
        let max = reference.iter().fold(0f32, |m, x| m.max(x.abs()));
        let err = out
            .iter()
            .zip(&reference)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= max * 1e-3, "{ours}: f16 error {err} vs max {max}");
    }
}

#[test]
fn vocab_fixture_test_ids_are_in_range() {
    for path in gguf_files(&fixtures().join("vocab")) {
        let g = Gguf::open(&path).unwrap();
        let n = g.get_strs("tokenizer.ggml.tokens").unwrap().len();
        let out = std::fs::read_to_string(path.with_extension("gguf.out")).unwrap();
        let ids: Vec<usize> = out.split_whitespace().map(|s| s.parse().unwrap()).collect();
        assert!(!ids.is_empty());
        assert!(ids.iter().all(|&id| id < n), "{}", path.display());
    }
}

#[test]
fn open_missing_file_is_not_found() {
    let path = temp_path("does-not-exist.gguf");
    let e = Gguf::open(&path).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(
        e.message.contains(&path.display().to_string()),
        "{}",
        e.message
    );
    let e = Gguf::open(&std::env::temp_dir()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Io, "{}", e.message);
}

#[test]
fn open_errors_name_the_file() {
    let path = temp_path("bad-magic.gguf");
    std::fs::write(&path, b"GGML\x03\0\0\0").unwrap();
    let e = Gguf::open(&path).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(e.kind, ErrorKind::InvalidWeights);
    assert!(
        e.message.contains(&path.display().to_string()) && e.message.contains("not a GGUF file"),
        "{}",
        e.message
    );
    let path = temp_path("empty.gguf");
    std::fs::write(&path, b"").unwrap();
    let e = Gguf::open(&path).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(e.kind, ErrorKind::InvalidWeights, "{}", e.message);
}

// ---------------------------------------------------------------------------
// Writer

fn pseudo_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    (0..n).map(|_| rng.next() as u8).collect()
}

/// A writer exercising every value type, nesting, empty arrays and every tensor type.
fn full_writer(alignment: Option<u32>) -> GgufWriter<'static> {
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", "llama").unwrap();
    if let Some(a) = alignment {
        w.add_kv("general.alignment", a).unwrap();
    }
    w.add_kv("v.u8", 200u8).unwrap();
    w.add_kv("v.i8", -100i8).unwrap();
    w.add_kv("v.u16", 60000u16).unwrap();
    w.add_kv("v.i16", -30000i16).unwrap();
    w.add_kv("v.u32", 4_000_000_000u32).unwrap();
    w.add_kv("v.i32", -2_000_000_000i32).unwrap();
    w.add_kv("v.f32", 1.5f32).unwrap();
    w.add_kv("v.bool", true).unwrap();
    w.add_kv("v.str", "héllo ✓").unwrap();
    w.add_kv("v.u64", u64::MAX).unwrap();
    w.add_kv("v.i64", i64::MIN).unwrap();
    w.add_kv("v.f64", -2.25f64).unwrap();
    w.add_kv("v.empty_str", "").unwrap();
    w.add_kv("a.strs", vec!["<unk>", "", "▁the", "\u{0}x"])
        .unwrap();
    w.add_kv("a.f32", vec![0.0f32, -1.0, 3.5]).unwrap();
    w.add_kv("a.i32", vec![1i32, 2, 3]).unwrap();
    w.add_kv("a.bool", vec![true, false]).unwrap();
    w.add_kv("a.u8", vec![1u8, 2]).unwrap();
    w.add_kv("a.i8", vec![-1i8]).unwrap();
    w.add_kv("a.u16", vec![7u16]).unwrap();
    w.add_kv("a.i16", vec![-7i16]).unwrap();
    w.add_kv("a.u32", vec![9u32]).unwrap();
    w.add_kv("a.u64", vec![u64::MAX]).unwrap();
    w.add_kv("a.i64", vec![i64::MIN]).unwrap();
    w.add_kv("a.f64", vec![1e300f64]).unwrap();
    w.add_kv("a.empty", Vec::<u32>::new()).unwrap();
    w.add_kv("a.empty_strs", StrArray::new()).unwrap();
    w.add_kv(
        "a.nested",
        vec![
            MetaArray::U32(vec![1, 2]),
            MetaArray::Str(["x", "y"].into_iter().collect()),
            MetaArray::Array(vec![MetaArray::F32(vec![])]),
        ],
    )
    .unwrap();
    for (i, ty) in GgmlType::ALL.iter().enumerate() {
        let dims = [ty.block_size() as u64 * 2, 3];
        let n = ty.tensor_bytes(&dims).unwrap();
        w.add_tensor(
            &format!("t.{}", ty.name()),
            &dims,
            *ty,
            pseudo_bytes(n, i as u64),
        )
        .unwrap();
    }
    w.add_tensor(
        "t.scalar",
        &[],
        GgmlType::F32,
        1.0f32.to_le_bytes().to_vec(),
    )
    .unwrap();
    w.add_tensor("t.empty", &[0, 4], GgmlType::F16, Vec::new())
        .unwrap();
    w.add_tensor("t.4d", &[2, 3, 4, 5], GgmlType::I8, pseudo_bytes(120, 99))
        .unwrap();
    w
}

/// Write the parsed file back out with the writer, if the writer accepts it.
fn rewrite(g: &Gguf) -> Option<Vec<u8>> {
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        w.add_kv(k, v.clone()).ok()?;
    }
    for t in g.tensors() {
        w.add_tensor(&t.name, &t.dims, t.ggml_type, g.tensor_data(t))
            .ok()?;
    }
    Some(w.to_bytes())
}

#[test]
fn writer_round_trip() {
    for alignment in [None, Some(64u32), Some(1), Some(8192)] {
        let w = full_writer(alignment);
        let bytes = w.to_bytes();
        let path = temp_path(&format!("round-trip-{alignment:?}.gguf"));
        w.write(&path).unwrap();
        let g = Gguf::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(g.bytes(), &bytes[..], "write() and to_bytes() agree");
        check_invariants(&g);
        assert_eq!(g.version(), 3);
        assert_eq!(g.alignment(), alignment.map_or(32, u64::from));

        // The parsed file equals what went in, key by key and byte by byte.
        let again = Gguf::from_vec(bytes.clone()).unwrap();
        assert_eq!(
            rewrite(&again).unwrap(),
            bytes,
            "parse + rewrite is the identity"
        );
        assert_eq!(g.metadata().len(), 29 + alignment.is_some() as usize);
        assert_eq!(g.get("v.u8"), Some(&MetaValue::U8(200)));
        assert_eq!(g.get("v.i8"), Some(&MetaValue::I8(-100)));
        assert_eq!(g.get_u64("v.u16"), Some(60000));
        assert_eq!(g.get_i64("v.i16"), Some(-30000));
        assert_eq!(g.get_u64("v.u32"), Some(4_000_000_000));
        assert_eq!(g.get_i64("v.i32"), Some(-2_000_000_000));
        assert_eq!(g.get_f64("v.f32"), Some(1.5));
        assert_eq!(g.get_bool("v.bool"), Some(true));
        assert_eq!(g.get_str("v.str"), Some("héllo ✓"));
        assert_eq!(g.get_u64("v.u64"), Some(u64::MAX));
        assert_eq!(g.get_i64("v.u64"), None);
        assert_eq!(g.get_i64("v.i64"), Some(i64::MIN));
        assert_eq!(g.get_f64("v.f64"), Some(-2.25));
        assert_eq!(g.get_str("v.empty_str"), Some(""));
        assert_eq!(
            g.get_str_array("a.strs"),
            Some(vec!["<unk>", "", "▁the", "\u{0}x"])
        );
        assert_eq!(g.get_f32_array("a.f32"), Some(&[0.0, -1.0, 3.5][..]));
        assert_eq!(g.get_i32_array("a.i32"), Some(&[1, 2, 3][..]));
        assert_eq!(
            g.get("a.bool"),
            Some(&MetaValue::Array(MetaArray::Bool(vec![true, false])))
        );
        assert_eq!(
            g.get("a.empty"),
            Some(&MetaValue::Array(MetaArray::U32(vec![])))
        );
        assert_eq!(g.get_str_array("a.empty_strs"), Some(vec![]));
        assert_eq!(
            g.get_array("a.nested").map(|a| (a.len(), a.depth())),
            Some((3, 3))
        );
        assert_eq!(g.get("missing"), None);
        assert_eq!(g.get_str("v.u8"), None);
        let keys: Vec<&str> = g.metadata().iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys[0], "general.architecture", "metadata keeps file order");

        assert_eq!(g.tensors().len(), GgmlType::ALL.len() + 3);
        for (i, ty) in GgmlType::ALL.iter().enumerate() {
            let t = g.tensor(&format!("t.{}", ty.name())).unwrap();
            assert_eq!(
                (t.ggml_type, t.dims.as_slice()),
                (*ty, &[ty.block_size() as u64 * 2, 3][..])
            );
            assert_eq!(g.tensor_data(t), pseudo_bytes(t.n_bytes, i as u64));
        }
        assert_eq!(
            g.tensor_data(g.tensor("t.scalar").unwrap()),
            1.0f32.to_le_bytes()
        );
        assert_eq!(g.tensor("t.empty").unwrap().n_bytes, 0);
        assert_eq!(g.tensor("t.4d").unwrap().shape(), vec![5, 4, 3, 2]);
        let v = g.tensor_view(g.tensor("t.F16").unwrap()).unwrap();
        assert_eq!(
            (v.dtype, v.shape.as_slice()),
            (DType::F16, &[3usize, 2][..])
        );
        assert_eq!(
            g.tensor_view(g.tensor("t.Q4_K").unwrap())
                .err()
                .unwrap()
                .kind,
            ErrorKind::Unsupported
        );
    }
}

#[test]
fn writer_borrows_tensor_data() {
    let data = [7u8; 34];
    let mut w = GgufWriter::new();
    w.add_tensor("q", &[32], GgmlType::Q8_0, &data[..]).unwrap();
    let g = Gguf::from_vec(w.to_bytes()).unwrap();
    assert_eq!(g.tensor_data(&g.tensors()[0]), &data[..]);
    assert!(g.metadata().is_empty());
}

#[test]
fn writer_rejects_bad_input() {
    let mut w = GgufWriter::new();
    w.add_kv("k", 1u32).unwrap();
    let bad_kv = |w: &mut GgufWriter, k: &str, v: MetaValue| {
        assert_eq!(
            w.add_kv(k, v).unwrap_err().kind,
            ErrorKind::InvalidArgument,
            "{k}"
        );
    };
    bad_kv(&mut w, "k", MetaValue::U32(2));
    bad_kv(&mut w, "general.alignment", MetaValue::U32(3));
    bad_kv(&mut w, "general.alignment", MetaValue::U32(0));
    bad_kv(&mut w, "general.alignment", MetaValue::U64(32));
    let mut deep = MetaArray::U8(vec![]);
    for _ in 0..MAX_ARRAY_DEPTH {
        deep = MetaArray::Array(vec![deep]);
    }
    bad_kv(&mut w, "deep", deep.into());

    let bad_t = |w: &mut GgufWriter, name: &str, dims: &[u64], ty: GgmlType, n: usize| {
        assert_eq!(
            w.add_tensor(name, dims, ty, vec![0u8; n]).unwrap_err().kind,
            ErrorKind::InvalidArgument,
            "{name}"
        );
    };
    w.add_tensor("a", &[4], GgmlType::F32, vec![0u8; 16])
        .unwrap();
    bad_t(&mut w, "a", &[4], GgmlType::F32, 16);
    bad_t(&mut w, "size", &[4], GgmlType::F32, 15);
    bad_t(&mut w, "block", &[33], GgmlType::Q8_0, 34);
    bad_t(&mut w, "dims5", &[1, 1, 1, 1, 1], GgmlType::F32, 4);
    bad_t(&mut w, "overflow", &[1 << 32, 1 << 32], GgmlType::F32, 0);
    bad_t(&mut w, &"n".repeat(64), &[1], GgmlType::F32, 4);
    // Nothing rejected was kept.
    let g = Gguf::from_vec(w.to_bytes()).unwrap();
    assert_eq!((g.metadata().len(), g.tensors().len()), (1, 1));
}

// ---------------------------------------------------------------------------
// Hostile files, built byte by byte

/// Raw GGUF bytes for cases the writer refuses to produce.
struct Raw(Vec<u8>);

impl Raw {
    fn new(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        Raw(b"GGUF".to_vec()).u32(version).u64(n_tensors).u64(n_kv)
    }
    fn u32(mut self, v: u32) -> Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> Raw {
        self.0.extend_from_slice(b);
        self
    }
    fn str(self, s: &str) -> Raw {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    fn kv_u32(self, key: &str, v: u32) -> Raw {
        self.str(key).u32(4).u32(v)
    }
    fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Raw {
        let mut r = self.str(name).u32(dims.len() as u32);
        for &d in dims {
            r = r.u64(d);
        }
        r.u32(ty).u64(offset)
    }
    /// Pad to `align` and append the data section.
    fn data(mut self, align: usize, data: &[u8]) -> Vec<u8> {
        self.0.resize(self.0.len().next_multiple_of(align), 0);
        self.0.extend_from_slice(data);
        self.0
    }
}

/// Parse, asserting no panic; returns the error (panics if it parsed).
fn parse_err(bytes: &[u8]) -> pyffi::Error {
    match catch_unwind(|| Gguf::parse_bytes(bytes)) {
        Ok(Ok(_)) => panic!("hostile bytes parsed"),
        Ok(Err(e)) => e,
        Err(_) => panic!("parser panicked"),
    }
}

fn assert_invalid(bytes: &[u8], needle: &str) {
    let e = parse_err(bytes);
    assert_eq!(e.kind, ErrorKind::InvalidWeights, "{}", e.message);
    assert!(
        e.message.contains(needle),
        "'{needle}' not in: {}",
        e.message
    );
}

fn assert_unsupported(bytes: &[u8], needle: &str) {
    let e = parse_err(bytes);
    assert_eq!(e.kind, ErrorKind::Unsupported, "{}", e.message);
    assert!(
        e.message.contains(needle),
        "'{needle}' not in: {}",
        e.message
    );
}

/// One F32 tensor of 4 elements and one metadata entry.
fn one_tensor(dims: &[u64], ty: u32, offset: u64, data_len: usize) -> Vec<u8> {
    Raw::new(3, 1, 1)
        .kv_u32("k", 1)
        .tensor("w", dims, ty, offset)
        .data(32, &vec![0u8; data_len])
}

#[test]
fn raw_builder_baseline_parses() {
    let g = Gguf::from_vec(one_tensor(&[4], 0, 0, 16)).unwrap();
    assert_eq!(g.tensors()[0].n_bytes, 16);
    assert_eq!(g.get_u64("k"), Some(1));
    let g = Gguf::from_vec(Raw::new(2, 0, 0).data(1, &[])).unwrap();
    assert_eq!(g.version(), 2);
}

/// A small valid file with every section: metadata of several kinds, tensors.
fn small_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", "llama").unwrap();
    w.add_kv("llama.block_count", 2u32).unwrap();
    w.add_kv("llama.eps", 1e-5f32).unwrap();
    w.add_kv("tokenizer.ggml.add_bos_token", true).unwrap();
    w.add_kv("tokenizer.ggml.tokens", vec!["<unk>", "<s>", "a", "bc"])
        .unwrap();
    w.add_kv("tokenizer.ggml.scores", vec![0.0f32, 0.0, -1.0, -2.0])
        .unwrap();
    w.add_kv(
        "x.nested",
        vec![
            MetaArray::I64(vec![-1]),
            MetaArray::Str(["z"].into_iter().collect()),
        ],
    )
    .unwrap();
    w.add_tensor("a", &[8, 2], GgmlType::F32, pseudo_bytes(64, 1))
        .unwrap();
    w.add_tensor("b", &[32, 1], GgmlType::Q8_0, pseudo_bytes(34, 2))
        .unwrap();
    w.add_tensor("c", &[3], GgmlType::F16, pseudo_bytes(6, 3))
        .unwrap();
    w.to_bytes()
}

#[test]
fn truncated_at_every_byte_offset() {
    let file = small_file();
    let full = Gguf::parse_bytes(&file).unwrap();
    // Bytes past the last tensor's data are padding: dropping them is harmless.
    let needed = full
        .tensors()
        .iter()
        .map(|t| t.offset as usize + t.n_bytes)
        .max()
        .unwrap();
    for len in 0..file.len() {
        let result = catch_unwind(|| Gguf::parse_bytes(&file[..len]));
        match result {
            Err(_) => panic!("panicked at length {len}"),
            Ok(Ok(g)) => {
                assert!(len >= needed, "parsed at length {len} < {needed}");
                check_invariants(&g);
            }
            Ok(Err(e)) => {
                assert!(len < needed, "length {len} failed: {}", e.message);
                assert_eq!(e.kind, ErrorKind::InvalidWeights, "{}", e.message);
                let m = &e.message;
                assert!(
                    ["truncated", "past the end", "cannot fit", "not a GGUF file"]
                        .iter()
                        .any(|w| m.contains(w)),
                    "length {len}: {m}"
                );
            }
        }
    }
    // Truncation inside the header says where.
    let e = parse_err(&file[..200]);
    assert!(
        e.message.contains("at byte") && e.message.contains("metadata entry"),
        "{}",
        e.message
    );
    let e = parse_err(&file[..20]);
    assert!(
        e.message.contains("truncated at byte 16 in the header"),
        "{}",
        e.message
    );
}

#[test]
fn wrong_magic() {
    let mut file = small_file();
    file[..4].copy_from_slice(b"GGML");
    assert_invalid(&file, "not a GGUF file");
    assert_invalid(b"", "not a GGUF file");
    assert_invalid(b"GGU", "not a GGUF file");
    assert_invalid(b"gguf\x03\0\0\0", "not a GGUF file");
}

#[test]
fn version_1_is_unsupported() {
    let mut file = small_file();
    file[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert_unsupported(&file, "version 1");
}

#[test]
fn version_99_is_unsupported() {
    let mut file = small_file();
    file[4..8].copy_from_slice(&99u32.to_le_bytes());
    assert_unsupported(&file, "version 99");
    file[4..8].copy_from_slice(&0u32.to_le_bytes());
    assert_unsupported(&file, "version 0");
}

#[test]
fn big_endian_is_unsupported() {
    let mut file = small_file();
    file[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert_unsupported(&file, "big-endian");
}

#[test]
fn absurd_tensor_count() {
    let mut file = small_file();
    file[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_invalid(&file, "cannot fit");
    // Plausible for the header check, but more than the bytes after the metadata.
    assert_invalid(
        &Raw::new(3, 2, 0).tensor("w", &[4], 0, 0).bytes(&[0; 20]).0,
        "truncated",
    );
}

#[test]
fn absurd_kv_count() {
    let mut file = small_file();
    file[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_invalid(&file, "cannot fit");
    let mut file = small_file();
    file[16..24].copy_from_slice(&(1u64 << 62).to_le_bytes());
    assert_invalid(&file, "cannot fit");
}

#[test]
fn string_length_past_end() {
    // A value string claiming 1000 bytes with 3 present.
    assert_invalid(
        &Raw::new(3, 0, 1).str("k").u32(8).u64(1000).bytes(b"abc").0,
        "string length 1000 runs past the end",
    );
    // A key of length u64::MAX.
    assert_invalid(
        &Raw::new(3, 0, 1).u64(u64::MAX).bytes(&[0; 16]).0,
        "runs past the end",
    );
    // A tensor name too long for the file.
    assert_invalid(
        &Raw::new(3, 1, 0).u64(1 << 40).bytes(&[0; 40]).0,
        "runs past the end",
    );
}

#[test]
fn array_count_huge() {
    for (elem_type, count) in [
        (4u32, u64::MAX),
        (0, 1 << 40),
        (8, 1 << 60),
        (9, u64::MAX / 12),
        (12, 5),
    ] {
        let bytes = Raw::new(3, 0, 1)
            .str("k")
            .u32(9)
            .u32(elem_type)
            .u64(count)
            .bytes(&[0; 32])
            .0;
        assert_invalid(&bytes, "array element count");
    }
    // Strings inside the array run out before the claimed count.
    let bytes = Raw::new(3, 0, 1)
        .str("k")
        .u32(9)
        .u32(8)
        .u64(2)
        .str("abcdefgh")
        .u64(2)
        .0;
    assert_invalid(&bytes, "string length 2 runs past the end");
}

#[test]
fn nested_arrays_deep() {
    let nest = |depth: usize| {
        let mut r = Raw::new(3, 0, 1).str("k").u32(9);
        for _ in 1..depth {
            r = r.u32(9).u64(1);
        }
        r.u32(0).u64(0).0
    };
    // Depth MAX is fine, one more is refused, and very deep does not overflow the stack.
    let g = Gguf::from_vec(nest(MAX_ARRAY_DEPTH)).unwrap();
    assert_eq!(g.get_array("k").unwrap().depth(), MAX_ARRAY_DEPTH);
    assert_invalid(&nest(MAX_ARRAY_DEPTH + 1), "nested more than");
    assert_invalid(&nest(100_000), "nested more than");
}

#[test]
fn n_dims_5() {
    assert_invalid(&one_tensor(&[1, 1, 1, 1, 4], 0, 0, 16), "5 dimensions");
    assert_invalid(
        &Raw::new(3, 1, 0).str("w").u32(u32::MAX).bytes(&[0; 64]).0,
        "dimensions",
    );
}

#[test]
fn dims_product_overflows() {
    assert_invalid(&one_tensor(&[1 << 32, 1 << 32], 0, 0, 16), "overflows");
    assert_invalid(&one_tensor(&[u64::MAX], 0, 0, 16), "out of range");
    assert_invalid(
        &one_tensor(&[1 << 21, 1 << 21, 1 << 21], 0, 0, 16),
        "overflows",
    );
    // Fits in the element count, but not in bytes.
    assert_invalid(&one_tensor(&[1 << 62], 28, 0, 16), "overflows");
}

#[test]
fn offset_past_end() {
    assert_invalid(&one_tensor(&[4], 0, 32, 16), "past the end");
    assert_invalid(&one_tensor(&[5], 0, 0, 16), "past the end");
    assert_invalid(&one_tensor(&[4], 0, u64::MAX - 31, 16), "past the end");
    // A huge but real-looking tensor in a tiny file.
    assert_invalid(&one_tensor(&[4096, 4096], 0, 0, 16), "past the end");
}

#[test]
fn misaligned_offset() {
    assert_invalid(
        &one_tensor(&[4], 0, 4, 64),
        "not a multiple of the alignment 32",
    );
    let bytes = Raw::new(3, 1, 1)
        .kv_u32("general.alignment", 64)
        .tensor("w", &[4], 0, 32)
        .data(64, &[0; 128]);
    assert_invalid(&bytes, "not a multiple of the alignment 64");
    let bytes = Raw::new(3, 1, 1)
        .kv_u32("general.alignment", 64)
        .tensor("w", &[4], 0, 64)
        .data(64, &[0; 128]);
    let g = Gguf::from_vec(bytes).unwrap();
    assert_eq!(
        (
            g.alignment(),
            g.data_offset() % 64,
            g.tensors()[0].offset % 64
        ),
        (64, 0, 0)
    );
}

#[test]
fn unknown_type_99() {
    assert_unsupported(&one_tensor(&[4], 99, 0, 16), "tensor 'w' has ggml type 99");
    // Real but unimplemented types say which.
    assert_unsupported(&one_tensor(&[256], 16, 0, 66), "IQ2_XXS");
}

#[test]
fn unknown_value_type() {
    assert_invalid(
        &Raw::new(3, 0, 1).str("k").u32(13).u64(0).0,
        "unknown metadata value type 13",
    );
    assert_invalid(
        &Raw::new(3, 0, 1).str("k").u32(9).u32(77).u64(0).0,
        "unknown array element type 77",
    );
}

#[test]
fn bool_must_be_0_or_1() {
    assert_invalid(
        &Raw::new(3, 0, 1).str("k").u32(7).bytes(&[2]).0,
        "neither 0 nor 1",
    );
    assert_invalid(
        &Raw::new(3, 0, 1)
            .str("k")
            .u32(9)
            .u32(7)
            .u64(2)
            .bytes(&[1, 9])
            .0,
        "neither 0 nor 1",
    );
}

#[test]
fn row_not_multiple_of_block() {
    assert_invalid(
        &one_tensor(&[33], 8, 0, 64),
        "not a multiple of the Q8_0 block size 32",
    );
}

#[test]
fn duplicate_names() {
    let bytes = Raw::new(3, 2, 0)
        .tensor("w", &[4], 0, 0)
        .tensor("w", &[4], 0, 32)
        .data(32, &[0; 64]);
    assert_invalid(&bytes, "duplicate tensor name 'w'");
}

#[test]
fn duplicate_keys() {
    assert_invalid(
        &Raw::new(3, 0, 2).kv_u32("k", 1).kv_u32("k", 2).0,
        "duplicate metadata key 'k'",
    );
}

#[test]
fn alignment_0() {
    let bytes = Raw::new(3, 1, 1)
        .kv_u32("general.alignment", 0)
        .tensor("w", &[4], 0, 0)
        .data(32, &[0; 16]);
    assert_invalid(&bytes, "power of two");
}

#[test]
fn alignment_3() {
    let bytes = Raw::new(3, 1, 1)
        .kv_u32("general.alignment", 3)
        .tensor("w", &[4], 0, 0)
        .data(32, &[0; 16]);
    assert_invalid(&bytes, "power of two");
    let bytes = Raw::new(3, 0, 1)
        .str("general.alignment")
        .u32(8)
        .str("32")
        .0;
    assert_invalid(&bytes, "power of two");
}

#[test]
fn utf8_rules() {
    // Keys and names must be exact; values are decoded lossily.
    assert_invalid(
        &Raw::new(3, 0, 1)
            .u64(2)
            .bytes(&[0xff, 0xfe])
            .u32(4)
            .u32(1)
            .0,
        "not valid UTF-8",
    );
    assert_invalid(
        &Raw::new(3, 1, 0)
            .u64(1)
            .bytes(&[0xff])
            .u32(1)
            .u64(4)
            .u32(0)
            .u64(0)
            .data(32, &[0; 16]),
        "not valid UTF-8",
    );
    let g = Gguf::from_vec(
        Raw::new(3, 0, 1)
            .str("k")
            .u32(8)
            .u64(2)
            .bytes(&[b'a', 0xff])
            .0,
    )
    .unwrap();
    assert_eq!(g.get_str("k"), Some("a\u{fffd}"));
}

#[test]
fn vocab_only_file_may_end_without_padding() {
    let g = Gguf::from_vec(Raw::new(3, 0, 1).kv_u32("k", 1).0).unwrap();
    assert!(g.tensors().is_empty());
    assert!(g.data_offset() > g.bytes().len() as u64);
}

// ---------------------------------------------------------------------------
// Fuzz

/// splitmix64: tiny, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const INTERESTING_U64: [u64; 16] = [
    0,
    1,
    2,
    3,
    5,
    9,
    12,
    31,
    32,
    33,
    256,
    u32::MAX as u64,
    1 << 32,
    i64::MAX as u64,
    1 << 63,
    u64::MAX,
];

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut m = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        if m.is_empty() {
            break;
        }
        let at = rng.below(m.len());
        match rng.below(9) {
            0 => m[at] ^= 1 << rng.below(8),
            1 => m[at] = rng.next() as u8,
            2 => m[at] = [0, 1, 0x7f, 0x80, 0xff][rng.below(5)],
            3 | 4 => {
                // Counts, lengths, dims and offsets are u64s (u32 for types).
                let v = if rng.below(2) == 0 {
                    u64::MAX
                } else {
                    INTERESTING_U64[rng.below(16)]
                };
                let width = if rng.below(3) == 0 { 4 } else { 8 };
                let end = (at + width).min(m.len());
                m[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
            }
            5 => m.truncate(at),
            6 => {
                let n = rng.below(16).min(m.len() - at);
                m.drain(at..at + n);
            }
            7 => {
                let n = rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                m.splice(at..at, bytes);
            }
            _ => {
                let src = rng.below(m.len());
                let n = rng.below(32).min(m.len() - src).min(m.len() - at);
                let chunk = m[src..src + n].to_vec();
                m[at..at + n].copy_from_slice(&chunk);
            }
        }
    }
    m
}

/// Parse one input and check everything a successful parse promises; the
/// rewritten file must parse back to the same bytes.
fn exercise(bytes: &[u8]) -> bool {
    let Ok(g) = Gguf::parse_bytes(bytes) else {
        return false;
    };
    check_invariants(&g);
    if let Some(out) = rewrite(&g) {
        let back = Gguf::from_vec(out.clone()).expect("rewritten file parses");
        check_invariants(&back);
        assert_eq!(rewrite(&back).as_ref(), Some(&out), "rewrite is stable");
    }
    true
}

fn save_crasher(bytes: &[u8], name: &str) -> PathBuf {
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.gguf"));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn mutation_fuzz() {
    let mut no_tensors = GgufWriter::new();
    no_tensors
        .add_kv("tokenizer.ggml.tokens", vec!["a", "b"])
        .unwrap();
    no_tensors.add_kv("general.alignment", 64u32).unwrap();
    let bases = [
        small_file(),
        no_tensors.to_bytes(),
        one_tensor(&[32, 2], 8, 0, 68),
        full_writer(None).to_bytes(),
    ];
    // Longer or different runs: PYFFI_GGUF_FUZZ=<mutants>[,<seed>].
    let knob = std::env::var("PYFFI_GGUF_FUZZ").unwrap_or_default();
    let mut knob = knob.split(',').map(|s| s.trim().parse::<u64>().ok());
    let mutants = knob.next().flatten().unwrap_or(100_000) as usize;
    let seed = knob.next().flatten().unwrap_or(0x5eed_9a11_f00d);
    let mut rng = Rng(seed);
    let (mut ok, mut crashers) = (0usize, Vec::new());
    for i in 0..mutants {
        let base = &bases[i % bases.len()];
        let m = mutate(&mut rng, base);
        match catch_unwind(AssertUnwindSafe(|| exercise(&m))) {
            Ok(parsed) => ok += parsed as usize,
            Err(_) => crashers.push(save_crasher(&m, &format!("fuzz-{seed:x}-{i}"))),
        }
    }
    assert!(
        crashers.is_empty(),
        "{} mutants panicked, saved: {crashers:?}",
        crashers.len()
    );
    eprintln!("mutation_fuzz: {ok} of {mutants} mutants parsed (seed {seed:#x})");
    // Sanity: the mutations reach both outcomes.
    assert!(
        ok > mutants / 50 && ok < mutants * 9 / 10,
        "{ok} of {mutants} parsed"
    );
}

/// Every file ever saved by the fuzz test must now be handled without panic.
#[test]
fn replay_corpus() {
    let dir = corpus_dir();
    if !dir.exists() {
        return;
    }
    for path in gguf_files(&dir) {
        let bytes = std::fs::read(&path).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| exercise(&bytes)));
        assert!(r.is_ok(), "{} panics", path.display());
        let g = catch_unwind(|| Gguf::open(&path));
        assert!(g.is_ok(), "{} panics when opened", path.display());
    }
}

/// A GGUF file's matrices that need no reordering are read where the file's
/// mapping holds them, as llama.cpp reads its weights: float16 ones, and
/// blocks kept in ggml's row format (the token embedding). Q/K rows, stored
/// in llama.cpp's rotary order, are reordered into a buffer of their own, and
/// blocks the interleaved kernels run on are repacked.
#[test]
fn weights_that_need_no_reordering_are_read_in_place() {
    use pyffi::model::Model;
    let f16 = Model::load(&fixtures().join("gguf/tiny-llama-f16.gguf")).expect("loads");
    let w = &f16.weights;
    assert!(w.embed.is_mapped() && w.output().is_mapped());
    for l in &w.layers {
        assert!(l.wo.is_mapped() && l.w_gate_up.is_mapped() && l.w_down.is_mapped());
        assert!(!l.wqkv.is_mapped(), "q/k rows are reordered, so copied");
    }
    let q8 = Model::load(&fixtures().join("gguf/tiny-llama-q8_0.gguf")).expect("loads");
    assert!(
        q8.weights.embed.is_mapped(),
        "read row by row, never packed"
    );
}

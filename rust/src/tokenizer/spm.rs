//! SentencePiece BPE tokenizer in pure Rust.
//!
//! Gives the same ids as the SentencePiece library for BPE `tokenizer.model`
//! files (Llama 2, Mistral, ...) and for GGUF vocabularies of type "llama"
//! (tokens + scores + token types, no .model file).
//!
//! What SentencePiece does, and so what this does:
//! - Normalization (identity rule only): optional dummy-prefix space for a
//!   non-empty text, optional removal of extra spaces, ' ' -> U+2581 '▁'.
//! - BPE over the whole normalized text (no pre-split on whitespace): start
//!   from UTF-8 characters (user-defined pieces are whole, frozen symbols) and
//!   repeatedly merge the adjacent pair whose concatenation is a piece with
//!   the highest score, leftmost on ties. A heap of candidate pairs keeps this
//!   O(n log n); stale candidates are dropped when popped. The text is cut
//!   only between two characters that no piece contains side by side: no
//!   merge can cross such a cut, so the result is the same, with small heaps.
//! - Pieces of type UNUSED may be used as intermediate merges but are split
//!   back into the pieces they were merged from.
//! - A final symbol that is not a piece becomes its UTF-8 bytes as `<0xXX>`
//!   tokens (byte fallback), or one unknown token per run of such symbols.
//! - Decoding: '▁' -> ' ', byte tokens -> bytes, and the dummy-prefix space
//!   dropped from the start of the output.
//!
//! Beyond SentencePiece, `encode(text, true)` turns text such as "<s>" into
//! its special token, llama.cpp-style.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;

use crate::error::{invalid_argument, io_error, out_of_range, unsupported, Error, Result};

/// U+2581, which SentencePiece writes in place of a space.
const SPACE_SYMBOL: &str = "\u{2581}";
/// What SentencePiece decodes the unknown token to unless the model says otherwise.
const DEFAULT_UNK_SURFACE: &str = " \u{2047} ";

/// Piece types; the numbers are those of SentencePiece's proto enum, which
/// GGUF's `tokenizer.ggml.token_type` uses too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum TokenType {
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

impl TokenType {
    /// The type with this proto/GGUF number, None for numbers outside 1..=6.
    pub fn from_i32(v: i32) -> Option<TokenType> {
        Some(match v {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }

    /// SentencePiece's `pieces_` map: the types BPE may merge into. Others
    /// (unknown, control, byte) are reachable only by id.
    fn is_mergeable(self) -> bool {
        matches!(
            self,
            TokenType::Normal | TokenType::UserDefined | TokenType::Unused
        )
    }
}

/// A SentencePiece BPE tokenizer. Immutable after construction; share it freely.
pub struct SpmTokenizer {
    pieces: Vec<String>,
    scores: Vec<f32>,
    types: Vec<TokenType>,
    /// piece -> id for NORMAL / USER_DEFINED / UNUSED pieces (what merges may produce).
    mergeable: HashMap<Box<str>, u32, FxBuild>,
    /// piece -> id for the other types; SentencePiece's PieceToId looks here first.
    reserved: HashMap<Box<str>, u32, FxBuild>,
    /// Longest mergeable piece in bytes: longer pairs need no lookup.
    max_piece_len: usize,
    /// Every pair of adjacent characters inside a mergeable piece (packed with
    /// `pack_char`). A boundary between two characters not in here can never
    /// be merged across, so the text splits there into independent runs.
    bigrams: HashSet<u64, FxBuild>,
    has_unused: bool,
    byte_fallback: bool,
    byte_ids: [Option<u32>; 256],
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
    unk_surface: String,
    /// USER_DEFINED pieces, matched whole (longest first) on the normalized text.
    user_defined: Trie,
    /// CONTROL / USER_DEFINED / UNKNOWN pieces, matched on the raw text when
    /// `encode` is asked to parse special tokens (as llama.cpp does).
    specials: Trie,
}

/// Settings that come from the .model file's specs, or from the caller for GGUF.
struct Options {
    byte_fallback: bool,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
    unk_surface: String,
}

impl SpmTokenizer {
    /// Load a SentencePiece `tokenizer.model` file (BPE models only).
    pub fn from_model_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
        Self::from_model_bytes(&bytes)
            .map_err(|e| Error::new(e.kind, format!("{}: {}", path.display(), e.message)))
    }

    /// Parse the bytes of a SentencePiece `ModelProto` (BPE models only).
    pub fn from_model_bytes(bytes: &[u8]) -> Result<Self> {
        let proto = ModelProto::parse(bytes)?;
        let t = &proto.trainer;
        if t.model_type != MODEL_TYPE_BPE {
            let name = match t.model_type {
                1 => "UNIGRAM".to_string(),
                3 => "WORD".to_string(),
                4 => "CHAR".to_string(),
                n => format!("unknown ({n})"),
            };
            return Err(unsupported(format!(
                "SentencePiece model type {name} is not supported; only BPE models are"
            )));
        }
        if t.treat_whitespace_as_suffix {
            return Err(unsupported(
                "SentencePiece models with treat_whitespace_as_suffix are not supported",
            ));
        }
        let n = &proto.normalizer;
        if n.has_charsmap {
            // A precompiled charsmap is a normalization rule (e.g. nmt_nfkc) we do
            // not implement; ignoring it would silently give different ids.
            let name = if n.name.is_empty() {
                "custom"
            } else {
                n.name.as_str()
            };
            return Err(unsupported(format!(
                "SentencePiece normalization rule '{name}' (precompiled charsmap) is not supported; only 'identity' is"
            )));
        }
        let count = proto.pieces.len();
        let mut pieces = Vec::with_capacity(count);
        let mut scores = Vec::with_capacity(count);
        let mut types = Vec::with_capacity(count);
        for (piece, score, ty) in proto.pieces {
            pieces.push(piece);
            scores.push(score);
            types.push(ty);
        }
        let id = |what: &str, v: i32| -> Result<Option<u32>> {
            if v < 0 {
                Ok(None)
            } else if (v as usize) < count {
                Ok(Some(v as u32))
            } else {
                Err(invalid_argument(format!(
                    "SentencePiece model: {what} {v} is outside the vocabulary of {count} pieces"
                )))
            }
        };
        // SentencePiece's encoder uses the piece typed UNKNOWN; unk_id only if none is.
        let unk = match types.iter().position(|&t| t == TokenType::Unknown) {
            Some(i) => Some(i as u32),
            None => id("unk_id", t.unk_id)?,
        };
        let opts = Options {
            byte_fallback: t.byte_fallback,
            bos: id("bos_id", t.bos_id)?,
            eos: id("eos_id", t.eos_id)?,
            unk,
            pad: id("pad_id", t.pad_id)?,
            add_dummy_prefix: n.add_dummy_prefix,
            remove_extra_whitespaces: n.remove_extra_whitespaces,
            escape_whitespaces: n.escape_whitespaces,
            unk_surface: t
                .unk_surface
                .clone()
                .unwrap_or_else(|| DEFAULT_UNK_SURFACE.to_string()),
        };
        Self::build(pieces, scores, types, opts)
    }

    /// Build from a GGUF "llama" vocabulary: `types` use the proto numbering
    /// (0, GGUF's "undefined", is taken as NORMAL). Byte fallback is on when
    /// any BYTE token exists. `unk` None means the token typed UNKNOWN, if any.
    /// No extra-whitespace removal (llama.cpp does none for these vocabularies).
    #[allow(clippy::too_many_arguments)]
    pub fn from_vocab(
        tokens: Vec<String>,
        scores: Vec<f32>,
        types: Vec<i32>,
        bos: Option<u32>,
        eos: Option<u32>,
        unk: Option<u32>,
        pad: Option<u32>,
        add_dummy_prefix: bool,
    ) -> Result<Self> {
        let n = tokens.len();
        if scores.len() != n || types.len() != n {
            return Err(invalid_argument(format!(
                "vocabulary has {} tokens but {} scores and {} token types",
                n,
                scores.len(),
                types.len()
            )));
        }
        let mut ttypes = Vec::with_capacity(n);
        for (i, &t) in types.iter().enumerate() {
            let ty = if t == 0 {
                Some(TokenType::Normal)
            } else {
                TokenType::from_i32(t)
            };
            match ty {
                Some(ty) => ttypes.push(ty),
                None => {
                    return Err(invalid_argument(format!(
                        "token {i} has unknown token type {t}"
                    )))
                }
            }
        }
        for (what, id) in [("bos", bos), ("eos", eos), ("unk", unk), ("pad", pad)] {
            if let Some(id) = id {
                if id as usize >= n {
                    return Err(invalid_argument(format!(
                        "{what} token id {id} is outside the vocabulary of {n} tokens"
                    )));
                }
            }
        }
        let unk = unk.or_else(|| {
            ttypes
                .iter()
                .position(|&t| t == TokenType::Unknown)
                .map(|i| i as u32)
        });
        let opts = Options {
            byte_fallback: ttypes.contains(&TokenType::Byte),
            bos,
            eos,
            unk,
            pad,
            add_dummy_prefix,
            remove_extra_whitespaces: false,
            escape_whitespaces: true,
            unk_surface: DEFAULT_UNK_SURFACE.to_string(),
        };
        Self::build(tokens, scores, ttypes, opts)
    }

    fn build(
        pieces: Vec<String>,
        scores: Vec<f32>,
        types: Vec<TokenType>,
        o: Options,
    ) -> Result<Self> {
        let n = pieces.len();
        if n == 0 {
            return Err(invalid_argument("the vocabulary is empty"));
        }
        if n > u32::MAX as usize {
            return Err(invalid_argument(format!(
                "vocabulary of {n} tokens is too large"
            )));
        }
        let mut mergeable: HashMap<Box<str>, u32, FxBuild> = HashMap::default();
        let mut reserved: HashMap<Box<str>, u32, FxBuild> = HashMap::default();
        let mut byte_ids = [None; 256];
        let mut user_defined = Trie::new();
        let mut specials = Trie::new();
        let mut max_piece_len = 0;
        let mut bigrams: HashSet<u64, FxBuild> = HashSet::default();
        let mut has_unused = false;
        for (i, (piece, &ty)) in pieces.iter().zip(&types).enumerate() {
            let id = i as u32;
            if ty == TokenType::Byte {
                let b = parse_byte_piece(piece).ok_or_else(|| {
                    invalid_argument(format!(
                        "token {i} is of type BYTE but is {piece:?}, not <0xXX>"
                    ))
                })?;
                byte_ids[b as usize].get_or_insert(id);
            }
            // Empty pieces (unused GGUF slots) can never be matched; keep them out.
            if piece.is_empty() {
                continue;
            }
            // First occurrence wins for duplicated pieces.
            if ty.is_mergeable() {
                mergeable.entry(piece.as_str().into()).or_insert(id);
                max_piece_len = max_piece_len.max(piece.len());
                let mut chars = piece
                    .char_indices()
                    .map(|(i, c)| pack_char(&piece.as_bytes()[i..i + c.len_utf8()]));
                if let Some(mut prev) = chars.next() {
                    for c in chars {
                        bigrams.insert((prev as u64) << 32 | c as u64);
                        prev = c;
                    }
                }
            } else {
                reserved.entry(piece.as_str().into()).or_insert(id);
            }
            has_unused |= ty == TokenType::Unused;
            if ty == TokenType::UserDefined {
                user_defined.insert(piece.as_bytes(), id);
            }
            if matches!(
                ty,
                TokenType::Control | TokenType::UserDefined | TokenType::Unknown
            ) {
                specials.insert(piece.as_bytes(), id);
            }
        }
        let byte_fallback = o.byte_fallback && byte_ids.iter().any(Option::is_some);
        // Every character must map to something: all 256 bytes, or the unknown token.
        if o.unk.is_none() && !(byte_fallback && byte_ids.iter().all(Option::is_some)) {
            return Err(invalid_argument(
                "vocabulary has neither an unknown token nor all 256 byte tokens, so some text cannot be encoded",
            ));
        }
        Ok(SpmTokenizer {
            pieces,
            scores,
            types,
            mergeable,
            reserved,
            max_piece_len,
            bigrams,
            has_unused,
            byte_fallback,
            byte_ids,
            bos: o.bos,
            eos: o.eos,
            unk: o.unk,
            pad: o.pad,
            add_dummy_prefix: o.add_dummy_prefix,
            remove_extra_whitespaces: o.remove_extra_whitespaces,
            escape_whitespaces: o.escape_whitespaces,
            unk_surface: o.unk_surface,
            user_defined,
            specials,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }
    pub fn unk_id(&self) -> Option<u32> {
        self.unk
    }
    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }
    /// Whether a leading space is added to non-empty text before encoding.
    pub fn add_dummy_prefix(&self) -> bool {
        self.add_dummy_prefix
    }
    /// Whether unknown characters become `<0xXX>` byte tokens.
    pub fn byte_fallback(&self) -> bool {
        self.byte_fallback
    }
    /// The type of token `id`, None when `id` is outside the vocabulary.
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }
    /// The piece text of token `id` ('▁' for spaces, `<0xXX>` for bytes);
    /// "" when `id` is outside the vocabulary.
    pub fn piece(&self, id: u32) -> &str {
        self.pieces.get(id as usize).map_or("", String::as_str)
    }
    /// The score of token `id`; 0 when `id` is outside the vocabulary.
    pub fn score(&self, id: u32) -> f32 {
        self.scores.get(id as usize).copied().unwrap_or(0.0)
    }
    /// The id of a piece text, as SentencePiece's PieceToId (but None instead of unk).
    pub fn token_id(&self, piece: &str) -> Option<u32> {
        self.reserved
            .get(piece)
            .or_else(|| self.mergeable.get(piece))
            .copied()
    }

    /// Encode `text` to ids, without BOS/EOS (the caller adds them).
    ///
    /// With `parse_special`, text equal to a CONTROL, USER_DEFINED or UNKNOWN
    /// piece (like "<s>") becomes that token, and the text between such matches
    /// is encoded piecewise, each piece as a text of its own (so with its own
    /// dummy prefix), as llama.cpp does. Without it, "<s>" is ordinary text, as
    /// in SentencePiece.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if !parse_special || self.specials.is_empty() {
            self.encode_text(text, &mut out);
            return out;
        }
        let bytes = text.as_bytes();
        let (mut start, mut pos) = (0, 0);
        while pos < bytes.len() {
            // Pieces start with a UTF-8 lead byte, so matches fall on char boundaries.
            if self.specials.starts_with(bytes[pos]) {
                if let Some((len, id)) = self.specials.longest_prefix(&bytes[pos..]) {
                    self.encode_text(&text[start..pos], &mut out);
                    out.push(id);
                    pos += len;
                    start = pos;
                    continue;
                }
            }
            pos += 1;
        }
        self.encode_text(&text[start..], &mut out);
        out
    }

    /// SentencePiece's Encode of one text: normalize, BPE, then map final symbols to ids.
    fn encode_text(&self, text: &str, out: &mut Vec<u32>) {
        let normalized = self.normalize(text);
        if normalized.is_empty() {
            return;
        }
        let mut prev_unk = false;
        for (w, id) in self.bpe(&normalized) {
            let is_unk = match id {
                None => true,
                Some(id) => self.types[id as usize] == TokenType::Unknown,
            };
            if is_unk && self.byte_fallback {
                for &b in w.as_bytes() {
                    // `build` ensures unk exists when a byte token is missing.
                    if let Some(id) = self.byte_ids[b as usize].or(self.unk) {
                        out.push(id);
                    }
                }
            } else if is_unk {
                // One unknown token per run of unknown symbols, as SentencePiece.
                if !prev_unk {
                    if let Some(unk) = self.unk {
                        out.push(unk);
                    }
                }
            } else if let Some(id) = id {
                out.push(id);
            }
            prev_unk = is_unk;
        }
    }

    /// SentencePiece's normalizer with the identity rule.
    fn normalize(&self, text: &str) -> String {
        let mut input = text;
        if self.remove_extra_whitespaces {
            input = input.trim_start_matches(' ');
        }
        if input.is_empty() {
            return String::new();
        }
        let space = if self.escape_whitespaces {
            SPACE_SYMBOL
        } else {
            " "
        };
        let mut out = String::with_capacity(input.len() + input.len() / 2 + 3);
        if self.add_dummy_prefix {
            out.push_str(space);
        }
        if !self.remove_extra_whitespaces {
            if self.escape_whitespaces {
                for (i, part) in input.split(' ').enumerate() {
                    if i > 0 {
                        out.push_str(SPACE_SYMBOL);
                    }
                    out.push_str(part);
                }
            } else {
                out.push_str(input);
            }
            return out;
        }
        // Collapse runs of spaces to one and drop trailing ones.
        let mut prev_space = true;
        for c in input.chars() {
            if c == ' ' {
                if !prev_space {
                    out.push_str(space);
                }
                prev_space = true;
            } else {
                out.push(c);
                prev_space = false;
            }
        }
        while out.ends_with(space) {
            out.truncate(out.len() - space.len());
        }
        out
    }

    /// The BPE merge loop over one normalized text. Returns the final symbols
    /// (after splitting UNUSED pieces back) with their ids, None for non-pieces.
    fn bpe<'a>(&self, s: &'a str) -> Vec<(&'a str, Option<u32>)> {
        self.bpe_with(s, !self.has_unused)
    }

    /// `bpe`, splitting into independent runs or not (the tests compare both).
    fn bpe_with<'a>(&self, s: &'a str, segment: bool) -> Vec<(&'a str, Option<u32>)> {
        let bytes = s.as_bytes();
        // Symbol offsets are u32 to halve memory on long texts.
        assert!(
            bytes.len() < u32::MAX as usize,
            "text too long to encode at once (4 GiB or more)"
        );
        let mut syms: Vec<Sym> = Vec::with_capacity(bytes.len().min(1 << 20));
        // Split into runs that no merge can cross, so the heap holds one run at a
        // time: the same merges in the same order, but small, cache-friendly heaps.
        // Not with UNUSED pieces: their split-back record depends on the global
        // order in which pairs are queued.
        let mut segments = vec![0u32];
        let mut pos = 0;
        let mut prev_char = None;
        while pos < bytes.len() {
            let (len, freeze) = match self.user_defined.longest_prefix(&bytes[pos..]) {
                Some((len, _)) => (len, true),
                None => (utf8_len(bytes[pos]).min(bytes.len() - pos), false),
            };
            let i = syms.len() as u32;
            let this_char = if freeze {
                None
            } else {
                Some(pack_char(&bytes[pos..pos + len]))
            };
            if segment && i > 0 {
                let spannable = match (prev_char, this_char) {
                    (Some(a), Some(b)) => self.bigrams.contains(&((a as u64) << 32 | b as u64)),
                    _ => false, // a user-defined symbol is never merged
                };
                if !spannable {
                    segments.push(i);
                }
            }
            prev_char = this_char;
            syms.push(Sym {
                start: pos as u32,
                len: len as u32,
                prev: i.wrapping_sub(1),
                next: i + 1,
                freeze,
            });
            pos += len;
        }
        if let Some(last) = syms.last_mut() {
            last.next = NONE;
        }
        segments.push(syms.len() as u32);

        let mut heap = BinaryHeap::new();
        // Only needed when UNUSED pieces exist: merged piece id -> length of its left part.
        let mut rev_merge: HashMap<u32, u32, FxBuild> = HashMap::default();
        for w in segments.windows(2) {
            let (first, end) = (w[0], w[1]);
            if end - first < 2 {
                continue;
            }
            for i in first + 1..end {
                self.add_pair(s, &syms, i - 1, i, &mut heap, &mut rev_merge);
            }
            // Pairs across a run boundary are never pieces, so none gets queued.
            self.merge_loop(s, &mut syms, &mut heap, &mut rev_merge);
        }
        drop(heap);

        let mut out = Vec::with_capacity(syms.len() / 2 + 1);
        let mut stack: Vec<&'a str> = Vec::new();
        let mut i = if syms.is_empty() { NONE } else { 0 };
        while i != NONE {
            let sym = &syms[i as usize];
            stack.push(&s[sym.start as usize..(sym.start + sym.len) as usize]);
            // Split UNUSED pieces back into the pieces they were merged from.
            while let Some(w) = stack.pop() {
                let id = self.token_id(w);
                if let Some(id) = id {
                    if self.types[id as usize] == TokenType::Unused {
                        if let Some(&left) = rev_merge.get(&id) {
                            let (a, b) = w.split_at(left as usize);
                            stack.push(b);
                            stack.push(a);
                            continue;
                        }
                    }
                }
                out.push((w, id));
            }
            i = sym.next;
        }
        out
    }

    /// Pop and apply merges until the heap is empty.
    fn merge_loop(
        &self,
        s: &str,
        syms: &mut [Sym],
        heap: &mut BinaryHeap<Candidate>,
        rev_merge: &mut HashMap<u32, u32, FxBuild>,
    ) {
        while let Some(top) = heap.pop() {
            let (l, r) = (top.left as usize, top.right as usize);
            // Stale: one side was merged away or grew since this pair was queued.
            if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != top.size {
                continue;
            }
            syms[l].len = top.size;
            syms[l].next = syms[r].next;
            if syms[r].next != NONE {
                let next = syms[r].next as usize;
                syms[next].prev = top.left;
            }
            syms[r].len = 0;
            let (prev, next) = (syms[l].prev, syms[l].next);
            self.add_pair(s, syms, prev, top.left, heap, rev_merge);
            self.add_pair(s, syms, top.left, next, heap, rev_merge);
        }
    }

    /// Queue the merge of symbols `left` and `right` if their concatenation is a piece.
    fn add_pair(
        &self,
        s: &str,
        syms: &[Sym],
        left: u32,
        right: u32,
        heap: &mut BinaryHeap<Candidate>,
        rev_merge: &mut HashMap<u32, u32, FxBuild>,
    ) {
        if left == NONE || right == NONE {
            return;
        }
        let (a, b) = (&syms[left as usize], &syms[right as usize]);
        if a.freeze || b.freeze {
            return;
        }
        let size = a.len + b.len;
        if size as usize > self.max_piece_len {
            return;
        }
        let start = a.start as usize;
        let Some(&id) = self.mergeable.get(&s[start..start + size as usize]) else {
            return;
        };
        heap.push(Candidate {
            score: heap_score(self.scores[id as usize]),
            left,
            right,
            size,
        });
        // Keyed by piece, last pair queued wins, exactly as SentencePiece's rev_merge.
        if self.has_unused && self.types[id as usize] == TokenType::Unused {
            rev_merge.insert(id, a.len);
        }
    }

    /// Decode ids to bytes (byte tokens may form partial UTF-8), as
    /// SentencePiece: '▁' -> ' ', byte tokens -> their byte, unknown -> " ⁇ ",
    /// the space of the dummy prefix dropped from the start. CONTROL tokens are
    /// dropped with `skip_special`, else written as their piece text (which does
    /// not count as text for the dummy-prefix rule).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        let strip_prefix = self.add_dummy_prefix || self.remove_extra_whitespaces;
        // SentencePiece's state: whether a leading '▁' may still be dropped,
        // whether the last piece had one dropped, and whether text was written.
        let mut at_start = true;
        let mut stripped_last = false;
        let mut written = false;
        for &id in ids {
            let ty = self.checked_type(id)?;
            let piece = self.pieces[id as usize].as_str();
            match ty {
                TokenType::Byte => {
                    out.push(parse_byte_piece(piece).unwrap_or(0));
                    written = true;
                }
                TokenType::Control => {
                    if !skip_special {
                        out.extend_from_slice(piece.as_bytes());
                    }
                }
                _ => {
                    if stripped_last || written {
                        at_start = false;
                    }
                    stripped_last = false;
                    let before = out.len();
                    if ty == TokenType::Unknown {
                        out.extend_from_slice(self.unk_surface.as_bytes());
                    } else {
                        let mut p = piece;
                        if at_start && strip_prefix {
                            if let Some(rest) = p.strip_prefix(SPACE_SYMBOL) {
                                p = rest;
                                // With extra-space removal SentencePiece keeps dropping.
                                stripped_last = !self.remove_extra_whitespaces;
                            }
                        }
                        push_unescaped(&mut out, p);
                    }
                    written |= out.len() > before;
                }
            }
        }
        Ok(out)
    }

    /// The bytes of one token: '▁' -> ' ', a byte token's byte, the unknown
    /// token's surface (" ⁇ "), a control token's piece text. No dummy-prefix
    /// stripping (that depends on position, see `decode`).
    pub fn token_to_bytes(&self, id: u32) -> Result<Vec<u8>> {
        let ty = self.checked_type(id)?;
        let piece = self.pieces[id as usize].as_str();
        let mut out = Vec::with_capacity(piece.len());
        match ty {
            TokenType::Byte => out.push(parse_byte_piece(piece).unwrap_or(0)),
            TokenType::Control => out.extend_from_slice(piece.as_bytes()),
            TokenType::Unknown => out.extend_from_slice(self.unk_surface.as_bytes()),
            _ => push_unescaped(&mut out, piece),
        }
        Ok(out)
    }

    fn checked_type(&self, id: u32) -> Result<TokenType> {
        self.types.get(id as usize).copied().ok_or_else(|| {
            out_of_range(format!(
                "token id {id} is outside the vocabulary of {} tokens",
                self.pieces.len()
            ))
        })
    }
}

/// Append `piece` with every '▁' turned back into a space.
fn push_unescaped(out: &mut Vec<u8>, piece: &str) {
    let mut rest = piece;
    while let Some(i) = rest.find(SPACE_SYMBOL) {
        out.extend_from_slice(&rest.as_bytes()[..i]);
        out.push(b' ');
        rest = &rest[i + SPACE_SYMBOL.len()..];
    }
    out.extend_from_slice(rest.as_bytes());
}

/// `<0xXX>` -> the byte.
pub(crate) fn parse_byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// One UTF-8 character's bytes (1 to 4, none zero but a lone NUL) as a u32 key.
fn pack_char(b: &[u8]) -> u32 {
    let mut k = [0u8; 4];
    let n = b.len().min(4);
    k[..n].copy_from_slice(&b[..n]);
    u32::from_le_bytes(k)
}

/// Length of the UTF-8 sequence starting with `lead` (input is valid UTF-8).
fn utf8_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

// ---------------------------------------------------------------------------
// BPE working state

const NONE: u32 = u32::MAX;

/// One symbol of the merge loop: a byte range of the normalized text in a
/// doubly linked list. `len == 0` marks a symbol merged into its left neighbour.
#[derive(Clone, Copy)]
struct Sym {
    start: u32,
    len: u32,
    prev: u32,
    next: u32,
    /// A user-defined piece: never merged.
    freeze: bool,
}

/// A queued merge. Max-heap order: highest score, then leftmost.
#[derive(Clone, Copy)]
struct Candidate {
    score: f32,
    left: u32,
    right: u32,
    /// Byte length of the merged piece; a mismatch when popped means stale.
    size: u32,
}

/// Scores made totally ordered the way `<`/`==` order them in SentencePiece:
/// -0.0 equals 0.0; NaN (never in real models) sorts last.
fn heap_score(s: f32) -> f32 {
    if s.is_nan() {
        f32::NEG_INFINITY
    } else if s == 0.0 {
        0.0
    } else {
        s
    }
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for Candidate {}

// ---------------------------------------------------------------------------
// Longest-prefix matching of a few special strings

/// A byte trie; few keys, so children are small sorted vectors.
struct Trie {
    nodes: Vec<TrieNode>,
    /// Whether any key starts with this byte: skips most positions cheaply.
    first: [bool; 256],
}

#[derive(Default)]
struct TrieNode {
    children: Vec<(u8, u32)>,
    value: Option<u32>,
}

impl Trie {
    fn new() -> Self {
        Trie {
            nodes: vec![TrieNode::default()],
            first: [false; 256],
        }
    }

    fn is_empty(&self) -> bool {
        self.nodes.len() == 1
    }

    fn starts_with(&self, b: u8) -> bool {
        self.first[b as usize]
    }

    /// Insert `key` (non-empty) with `value`; an existing key keeps its value.
    fn insert(&mut self, key: &[u8], value: u32) {
        let mut node = 0usize;
        for &b in key {
            let children = &self.nodes[node].children;
            node = match children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => children[i].1 as usize,
                Err(i) => {
                    let child = self.nodes.len();
                    self.nodes[node].children.insert(i, (b, child as u32));
                    self.nodes.push(TrieNode::default());
                    child
                }
            };
        }
        self.first[key[0] as usize] = true;
        self.nodes[node].value.get_or_insert(value);
    }

    /// The longest key that `text` starts with: (its length, its value).
    fn longest_prefix(&self, text: &[u8]) -> Option<(usize, u32)> {
        if text.is_empty() || !self.first[text[0] as usize] {
            return None;
        }
        let mut node = 0usize;
        let mut best = None;
        for (i, &b) in text.iter().enumerate() {
            let children = &self.nodes[node].children;
            match children.binary_search_by_key(&b, |c| c.0) {
                Ok(j) => node = children[j].1 as usize,
                Err(_) => break,
            }
            if let Some(v) = self.nodes[node].value {
                best = Some((i + 1, v));
            }
        }
        best
    }
}

// ---------------------------------------------------------------------------
// A fast non-cryptographic hash for the piece maps (keys are the vocabulary,
// not attacker-chosen, so flooding is not a concern).

#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

const FX_K: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(FX_K);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().unwrap()));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf) ^ ((rest.len() as u64) << 59));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxBuild = BuildHasherDefault<FxHasher>;

// ---------------------------------------------------------------------------
// Minimal protobuf reader for sentencepiece_model.proto (proto2).

const MODEL_TYPE_BPE: i32 = 2;

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

fn malformed(what: impl std::fmt::Display) -> Error {
    invalid_argument(format!("malformed SentencePiece model: {what}"))
}

/// A bounds-checked cursor over protobuf wire format. Every length is checked
/// against what is left, so a bad file errors and never allocates much.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(malformed(format!("truncated varint at byte {}", self.pos)));
            };
            self.pos += 1;
            v |= ((b & 0x7f) as u64).wrapping_shl(shift);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(malformed(format!(
            "varint longer than 10 bytes ending at byte {}",
            self.pos
        )))
    }

    /// A field key: (field number, wire type).
    fn key(&mut self) -> Result<(u64, u8)> {
        let k = self.varint()?;
        Ok((k >> 3, (k & 7) as u8))
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let left = (self.buf.len() - self.pos) as u64;
        if n > left {
            return Err(malformed(format!(
                "{what} of {n} bytes at byte {} runs past the end ({left} bytes left)",
                self.pos
            )));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn len_delimited(&mut self) -> Result<&'a [u8]> {
        let n = self.varint()?;
        self.take(n, "length-delimited field")
    }

    fn fixed32(&mut self) -> Result<u32> {
        let b = self.take(4, "fixed32 field")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn skip(&mut self, field: u64, wire: u8) -> Result<()> {
        match wire {
            WIRE_VARINT => self.varint().map(drop),
            WIRE_FIXED64 => self.take(8, "fixed64 field").map(drop),
            WIRE_LEN => self.len_delimited().map(drop),
            WIRE_FIXED32 => self.take(4, "fixed32 field").map(drop),
            // Groups (3, 4) are unused by this proto; anything else is garbage.
            _ => Err(malformed(format!(
                "field {field} has unsupported wire type {wire}"
            ))),
        }
    }

    /// Read a field we know, checking its wire type.
    fn expect(&self, field: u64, wire: u8, want: u8) -> Result<()> {
        if wire == want {
            Ok(())
        } else {
            Err(malformed(format!(
                "field {field} has wire type {wire}, expected {want}"
            )))
        }
    }

    fn int32(&mut self) -> Result<i32> {
        // int32 negatives are 10-byte sign-extended varints; truncation is the proto rule.
        Ok(self.varint()? as i32)
    }

    fn bool(&mut self) -> Result<bool> {
        Ok(self.varint()? != 0)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let b = self.len_delimited()?;
        String::from_utf8(b.to_vec())
            .map_err(|_| malformed(format!("{what} at byte {at} is not UTF-8")))
    }
}

struct TrainerSpec {
    model_type: i32,
    byte_fallback: bool,
    treat_whitespace_as_suffix: bool,
    unk_id: i32,
    bos_id: i32,
    eos_id: i32,
    pad_id: i32,
    unk_surface: Option<String>,
}

impl Default for TrainerSpec {
    /// The proto2 defaults.
    fn default() -> Self {
        TrainerSpec {
            model_type: 1,
            byte_fallback: false,
            treat_whitespace_as_suffix: false,
            unk_id: 0,
            bos_id: 1,
            eos_id: 2,
            pad_id: -1,
            unk_surface: None,
        }
    }
}

struct NormalizerSpec {
    name: String,
    has_charsmap: bool,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
}

impl Default for NormalizerSpec {
    /// The proto2 defaults (all three flags default to true).
    fn default() -> Self {
        NormalizerSpec {
            name: String::new(),
            has_charsmap: false,
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        }
    }
}

struct ModelProto {
    pieces: Vec<(String, f32, TokenType)>,
    trainer: TrainerSpec,
    normalizer: NormalizerSpec,
}

impl ModelProto {
    fn parse(bytes: &[u8]) -> Result<Self> {
        let mut m = ModelProto {
            pieces: Vec::new(),
            trainer: TrainerSpec::default(),
            normalizer: NormalizerSpec::default(),
        };
        let mut r = Reader::new(bytes);
        while !r.done() {
            let (field, wire) = r.key()?;
            match field {
                1 => {
                    r.expect(field, wire, WIRE_LEN)?;
                    let body = r.len_delimited()?;
                    let index = m.pieces.len();
                    m.pieces.push(parse_piece(body, index)?);
                }
                2 => {
                    r.expect(field, wire, WIRE_LEN)?;
                    // Repeated occurrences of a message merge, as in protobuf.
                    parse_trainer_spec(r.len_delimited()?, &mut m.trainer)?;
                }
                3 => {
                    r.expect(field, wire, WIRE_LEN)?;
                    parse_normalizer_spec(r.len_delimited()?, &mut m.normalizer)?;
                }
                _ => r.skip(field, wire)?,
            }
        }
        if m.pieces.is_empty() {
            return Err(malformed("no pieces"));
        }
        Ok(m)
    }
}

fn parse_piece(body: &[u8], index: usize) -> Result<(String, f32, TokenType)> {
    let mut r = Reader::new(body);
    let (mut piece, mut score, mut ty) = (String::new(), 0.0f32, TokenType::Normal);
    while !r.done() {
        let (field, wire) = r.key()?;
        match field {
            1 => {
                r.expect(field, wire, WIRE_LEN)?;
                piece = r.string("piece")?;
            }
            2 => {
                r.expect(field, wire, WIRE_FIXED32)?;
                score = f32::from_bits(r.fixed32()?);
            }
            3 => {
                r.expect(field, wire, WIRE_VARINT)?;
                let v = r.int32()?;
                ty = TokenType::from_i32(v)
                    .ok_or_else(|| malformed(format!("piece {index} has unknown type {v}")))?;
            }
            _ => r.skip(field, wire)?,
        }
    }
    Ok((piece, score, ty))
}

fn parse_trainer_spec(body: &[u8], t: &mut TrainerSpec) -> Result<()> {
    let mut r = Reader::new(body);
    while !r.done() {
        let (field, wire) = r.key()?;
        match field {
            3 | 24 | 35 | 40 | 41 | 42 | 43 => {
                r.expect(field, wire, WIRE_VARINT)?;
                let v = r.int32()?;
                match field {
                    3 => t.model_type = v,
                    24 => t.treat_whitespace_as_suffix = v != 0,
                    35 => t.byte_fallback = v != 0,
                    40 => t.unk_id = v,
                    41 => t.bos_id = v,
                    42 => t.eos_id = v,
                    _ => t.pad_id = v,
                }
            }
            44 => {
                r.expect(field, wire, WIRE_LEN)?;
                t.unk_surface = Some(r.string("unk_surface")?);
            }
            _ => r.skip(field, wire)?,
        }
    }
    Ok(())
}

fn parse_normalizer_spec(body: &[u8], n: &mut NormalizerSpec) -> Result<()> {
    let mut r = Reader::new(body);
    while !r.done() {
        let (field, wire) = r.key()?;
        match field {
            1 => {
                r.expect(field, wire, WIRE_LEN)?;
                n.name = r.string("normalizer name")?;
            }
            2 => {
                r.expect(field, wire, WIRE_LEN)?;
                n.has_charsmap = !r.len_delimited()?.is_empty();
            }
            3 | 4 | 5 => {
                r.expect(field, wire, WIRE_VARINT)?;
                let v = r.bool()?;
                match field {
                    3 => n.add_dummy_prefix = v,
                    4 => n.remove_extra_whitespaces = v,
                    _ => n.escape_whitespaces = v,
                }
            }
            _ => r.skip(field, wire)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    // A tiny protobuf writer to build synthetic .model files.
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn key(field: u64, wire: u64, out: &mut Vec<u8>) {
        varint(field << 3 | wire, out);
    }
    fn int_field(field: u64, v: i64, out: &mut Vec<u8>) {
        key(field, 0, out);
        varint(v as u64, out);
    }
    fn bytes_field(field: u64, b: &[u8], out: &mut Vec<u8>) {
        key(field, 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }
    fn model(
        pieces: &[(&str, f32, i32)],
        trainer: &[(u64, i64)],
        normalizer: &[(u64, i64)],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        for &(p, s, t) in pieces {
            let mut m = Vec::new();
            bytes_field(1, p.as_bytes(), &mut m);
            key(2, 5, &mut m);
            m.extend_from_slice(&s.to_le_bytes());
            int_field(3, t as i64, &mut m);
            bytes_field(1, &m, &mut out);
        }
        let mut t = Vec::new();
        for &(f, v) in trainer {
            int_field(f, v, &mut t);
        }
        bytes_field(2, &t, &mut out);
        let mut n = Vec::new();
        bytes_field(1, b"identity", &mut n);
        for &(f, v) in normalizer {
            int_field(f, v, &mut n);
        }
        bytes_field(3, &n, &mut out);
        out
    }

    /// <unk> <s> </s> ▁ a b c ab(UNUSED) ▁ab aa <x>(USER_DEFINED) x
    fn toy(add_dummy_prefix: bool) -> SpmTokenizer {
        let v: Vec<(&str, f32, i32)> = vec![
            ("<unk>", 0.0, 2),
            ("<s>", 0.0, 3),
            ("</s>", 0.0, 3),
            ("▁", -1.0, 1),
            ("a", -2.0, 1),
            ("b", -3.0, 1),
            ("c", -4.0, 1),
            ("ab", 10.0, 5),
            ("▁ab", 5.0, 1),
            ("aa", 1.0, 1),
            ("<x>", 0.0, 4),
            ("x", -5.0, 1),
        ];
        SpmTokenizer::from_vocab(
            v.iter().map(|p| p.0.to_string()).collect(),
            v.iter().map(|p| p.1).collect(),
            v.iter().map(|p| p.2).collect(),
            Some(1),
            Some(2),
            None,
            None,
            add_dummy_prefix,
        )
        .unwrap()
    }

    #[test]
    fn reader_varints_and_bounds() {
        let mut b = Vec::new();
        varint(300, &mut b);
        varint(u64::MAX, &mut b); // -1 as int32 is a 10-byte varint
        let mut r = Reader::new(&b);
        assert_eq!(r.varint().unwrap(), 300);
        assert_eq!(r.int32().unwrap(), -1);
        assert!(r.done());
        assert_eq!(
            Reader::new(&[0x80, 0x80]).varint().unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            Reader::new(&[0xff; 11]).varint().unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
        // A length far past the end is refused before anything is allocated.
        let mut b = Vec::new();
        varint(u64::MAX / 2, &mut b);
        assert_eq!(
            Reader::new(&b).len_delimited().unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            Reader::new(&[1, 2, 3]).fixed32().unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
        assert!(Reader::new(&[0]).skip(1, 3).is_err());
    }

    #[test]
    fn merges_take_best_score_then_leftmost() {
        let t = toy(true);
        // ▁ a a a: "aa" at 1-2 and 2-3 tie, the left one wins.
        assert_eq!(t.encode("aaa", false), vec![3, 9, 4]);
    }

    #[test]
    fn unused_pieces_are_split_back() {
        let t = toy(false);
        // "ab" (UNUSED, score 10) merges first but is emitted as a, b ...
        assert_eq!(t.encode("ab", false), vec![4, 5]);
        // ... unless a further merge uses it.
        assert_eq!(toy(true).encode("ab", false), vec![8]);
    }

    #[test]
    fn unknown_runs_become_one_unk_without_byte_fallback() {
        let t = toy(false);
        assert!(!t.byte_fallback());
        assert_eq!(t.encode("a€€b", false), vec![4, 0, 5]);
        assert_eq!(
            t.decode(&[4, 0, 5], false).unwrap(),
            "a \u{2047} b".as_bytes()
        );
    }

    #[test]
    fn user_defined_is_one_frozen_symbol() {
        let t = toy(false);
        assert_eq!(t.encode("x<x>x", false), vec![11, 10, 11]);
        assert_eq!(t.encode("x<x>x", true), vec![11, 10, 11]);
        // Control pieces are text unless parse_special; then each side gets the dummy prefix.
        assert_eq!(t.encode("<s>", false), vec![0]);
        let t = toy(true);
        assert_eq!(t.encode("ab<s>ab", true), vec![8, 1, 8]);
        assert_eq!(t.encode("<s>", true), vec![1]);
    }

    #[test]
    fn normalization_flags() {
        let pieces = [
            ("<unk>", 0.0, 2),
            ("▁", -1.0, 1),
            ("a", -2.0, 1),
            (" ", -3.0, 1),
        ];
        let bpe = (3, 2);
        // Proto defaults: dummy prefix, extra-space removal, escaping all on.
        let t = SpmTokenizer::from_model_bytes(&model(&pieces, &[bpe], &[])).unwrap();
        assert_eq!(t.normalize("  a   a  "), "▁a▁a");
        assert_eq!(t.normalize("   "), "");
        let t = SpmTokenizer::from_model_bytes(&model(&pieces, &[bpe], &[(3, 0), (4, 0)])).unwrap();
        assert_eq!(t.normalize("  a "), "▁▁a▁");
        let t = SpmTokenizer::from_model_bytes(&model(&pieces, &[bpe], &[(4, 0), (5, 0)])).unwrap();
        assert_eq!(t.normalize("a a"), " a a");
        assert_eq!(t.encode("a a", false), vec![3, 2, 3, 2]);
    }

    #[test]
    fn model_spec_fields_are_read() {
        let pieces = [
            ("<unk>", 0.0, 2),
            ("<s>", 0.0, 3),
            ("</s>", 0.0, 3),
            ("<pad>", 0.0, 3),
            ("a", -1.0, 1),
        ];
        let t = SpmTokenizer::from_model_bytes(&model(
            &pieces,
            &[(3, 2), (40, 0), (41, 1), (42, 2), (43, 3)],
            &[],
        ))
        .unwrap();
        assert_eq!(
            (t.unk_id(), t.bos_id(), t.eos_id(), t.pad_id()),
            (Some(0), Some(1), Some(2), Some(3))
        );
        let t = SpmTokenizer::from_model_bytes(&model(&pieces, &[(3, 2), (41, -1), (43, -1)], &[]))
            .unwrap();
        assert_eq!((t.bos_id(), t.pad_id()), (None, None));
        assert_eq!(t.token_type(3), Some(TokenType::Control));
        assert_eq!(t.token_type(99), None);
        assert_eq!(t.piece(4), "a");
        assert_eq!(t.piece(99), "");
        let e = SpmTokenizer::from_model_bytes(&model(&pieces, &[(3, 2), (42, 77)], &[]))
            .err()
            .unwrap();
        assert_eq!(e.kind, ErrorKind::InvalidArgument, "{}", e.message);
    }

    #[test]
    fn non_bpe_and_charsmap_models_are_unsupported() {
        let pieces = [("<unk>", 0.0, 2), ("a", -1.0, 1)];
        for trainer in [&[][..], &[(3, 1)][..], &[(3, 4)][..]] {
            let e = SpmTokenizer::from_model_bytes(&model(&pieces, trainer, &[]))
                .err()
                .unwrap();
            assert_eq!(e.kind, ErrorKind::Unsupported, "{}", e.message);
        }
        let e = SpmTokenizer::from_model_bytes(&model(&pieces, &[(3, 1)], &[]))
            .err()
            .unwrap();
        assert!(e.message.contains("UNIGRAM"), "{}", e.message);
        let mut m = model(&pieces, &[(3, 2)], &[]);
        let mut n = Vec::new();
        bytes_field(2, b"\x04\0\0\0abcd", &mut n);
        bytes_field(3, &n, &mut m);
        let e = SpmTokenizer::from_model_bytes(&m).err().unwrap();
        assert_eq!(e.kind, ErrorKind::Unsupported, "{}", e.message);
    }

    #[test]
    fn from_vocab_checks_its_input() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let bad = [
            SpmTokenizer::from_vocab(vec![], vec![], vec![], None, None, None, None, true),
            SpmTokenizer::from_vocab(
                s(&["<unk>", "a"]),
                vec![0.0],
                vec![2, 1],
                None,
                None,
                None,
                None,
                true,
            ),
            SpmTokenizer::from_vocab(
                s(&["<unk>", "a"]),
                vec![0.0; 2],
                vec![2, 9],
                None,
                None,
                None,
                None,
                true,
            ),
            SpmTokenizer::from_vocab(
                s(&["<unk>", "a"]),
                vec![0.0; 2],
                vec![2, 1],
                Some(2),
                None,
                None,
                None,
                true,
            ),
            SpmTokenizer::from_vocab(
                s(&["<0xZZ>", "a"]),
                vec![0.0; 2],
                vec![6, 1],
                None,
                None,
                None,
                None,
                true,
            ),
            // Nothing to encode unknown characters with.
            SpmTokenizer::from_vocab(s(&["a"]), vec![0.0], vec![1], None, None, None, None, true),
        ];
        for r in bad {
            assert_eq!(r.err().unwrap().kind, ErrorKind::InvalidArgument);
        }
        // GGUF type 0 ("undefined") is taken as normal; unk found by type.
        let t = SpmTokenizer::from_vocab(
            s(&["<unk>", "a"]),
            vec![0.0; 2],
            vec![2, 0],
            None,
            None,
            None,
            None,
            false,
        )
        .unwrap();
        assert_eq!(t.unk_id(), Some(0));
        assert_eq!(t.encode("ab", false), vec![1, 0]);
    }

    #[test]
    fn decode_rules() {
        let t = toy(true);
        let sp = t.token_id("▁").unwrap();
        // Only the first piece loses its dummy-prefix space.
        assert_eq!(t.decode(&[8, 8], false).unwrap(), b"ab ab");
        assert_eq!(t.decode(&[sp, 8], false).unwrap(), b" ab");
        // Control tokens: hidden with skip_special, else their text; they don't end the start.
        assert_eq!(t.decode(&[1, 8, 2], true).unwrap(), b"ab");
        assert_eq!(t.decode(&[1, 8, 2], false).unwrap(), b"<s>ab</s>");
        assert_eq!(t.token_to_bytes(8).unwrap(), b" ab");
        assert_eq!(t.token_to_bytes(1).unwrap(), b"<s>");
        let e = t.decode(&[4, 1000], false).unwrap_err();
        assert_eq!(e.kind, ErrorKind::OutOfRange);
        assert!(e.message.contains("1000"), "{}", e.message);
        assert_eq!(
            t.token_to_bytes(12).unwrap_err().kind,
            ErrorKind::OutOfRange
        );
        assert_eq!(t.decode(&[], false).unwrap(), b"");
    }

    #[test]
    fn runs_give_the_same_merges_as_one_heap() {
        let dir = std::env::var_os("PYFFI_FIXTURES")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures").into()
            });
        let t = SpmTokenizer::from_model_file(&dir.join("text/llama2-tokenizer.model")).unwrap();
        let mut text = String::new();
        for (i, w) in [
            "Hello", " ", "  ", "wörld", "\n", "\t", "中文", "🦙", "aaaa", "x", "<s>", "3.14", "▁",
        ]
        .iter()
        .cycle()
        .take(4000)
        .enumerate()
        {
            text.push_str(w);
            if i % 3 == 0 {
                text.push(' ');
            }
        }
        let n = t.normalize(&text);
        assert_eq!(t.bpe_with(&n, true), t.bpe_with(&n, false));
    }

    #[test]
    fn trie_longest_prefix() {
        let mut t = Trie::new();
        t.insert(b"<s>", 1);
        t.insert(b"<s>x", 2);
        t.insert(b"<s>", 9);
        assert_eq!(t.longest_prefix(b"<s>xy"), Some((4, 2)));
        assert_eq!(t.longest_prefix(b"<s>y"), Some((3, 1)));
        assert_eq!(t.longest_prefix(b"<t>"), None);
        assert_eq!(t.longest_prefix(b""), None);
    }
}

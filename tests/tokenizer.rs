//! dtrain's GPT-2 tokenizer against tiktoken's `r50k_base`, the same
//! encoding implemented independently.

use dtrain::data::tokenizer::{EOT, gpt2};
use dtrain::rng::Rng;

fn reference(text: &str) -> Vec<u32> {
    tiktoken_rs::r50k_base_singleton().encode_with_special_tokens(text)
}

fn check(text: &str) {
    let ours = gpt2().encode(text);
    let want = reference(text);
    if let Some(i) = (0..ours.len().max(want.len())).find(|&i| ours.get(i) != want.get(i)) {
        let near = |v: &[u32]| gpt2().decode(&v[i.saturating_sub(5)..(i + 5).min(v.len())]);
        panic!(
            "token {i} differs: ours {:?} ({:?}), tiktoken {:?} ({:?}), in a text of {} bytes",
            ours.get(i),
            near(&ours),
            want.get(i),
            near(&want),
            text.len()
        );
    }
    assert_eq!(gpt2().decode(&ours), text, "decode does not round-trip {text:?}");
}

#[test]
fn matches_tiktoken_on_a_varied_corpus() {
    for text in [
        "",
        "Hello world!  How are   you?",
        "Line one\r\nLine two\r\n\r\n\tTabbed\n",
        "fn main() {\n    let x: Vec<u32> = (0..10).map(|i| i * 2).collect();\n    println!(\"{x:?}\");\n}\n",
        "def f(a, b=3):\n\treturn a**b  # comment\n",
        "日本語のテキストです。中文文本。한국어 텍스트.",
        "مرحبا بالعالم، هذا نص عربي.",
        "👨‍👩‍👧‍👦 family, 🏳️‍🌈 flag, 👍🏽 thumbs, ❤️",
        "a<|endoftext|>b <|endoftext|> c<|endoftext|>",
        "  leading spaces and trailing   ",
        "'s 've 're 'll 'd 'm 't 'S 'VE I'm don't",
        "\u{a0}no-break\u{2003}em\u{3000}ideographic\u{200b}zero-width\u{feff}bom",
        "12345 678.9e10 3,141,592 0x1F 1_000_000",
        "Ünïcödé ñ ç ß ø å æ œ — “quotes” ‘single’ …",
        "\u{1d400}\u{1d401} math bold, \u{10ffff} last code point",
        "<|endoftext|>",
        "<|endoftext",
        "   \n\n\n   \t\t  ",
    ] {
        check(text);
    }
}

#[test]
fn matches_tiktoken_on_random_mixtures() {
    let pool: Vec<&str> = vec![
        "a",
        "Z",
        "é",
        " ",
        "  ",
        "\n",
        "\r\n",
        "\t",
        "'s",
        "'",
        "0",
        "42",
        ".",
        ",",
        "!?",
        "日",
        "本",
        "ا",
        "ل",
        "👍",
        "\u{200d}",
        "🏽",
        "\u{a0}",
        "<|endoftext|>",
        "the",
        " the",
        "The",
        "-",
        "_",
        "#",
        "\\",
        "\"",
        "ß",
        "\u{3000}",
        "€",
        "𝐀",
    ];
    let mut rng = Rng::new(17);
    for _ in 0..400 {
        let n = 1 + rng.below(60) as usize;
        let text: String = (0..n).map(|_| pool[rng.below(pool.len() as u64) as usize]).collect();
        check(&text);
    }
}

#[test]
fn long_texts_encoded_in_pieces_match_one_piece() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/data/shakespeare.txt")).unwrap();
    assert!(text.len() > 300_000);
    check(&text);
    // Long random mixtures: the cuts land in every kind of context.
    let pool = ["a", "Bc", " ", "\n", "\n\n", "\r\n", "\t", "'s", ".", "7", "日", "👍", "\u{a0}", "<|endoftext|>", "\u{3000}", "-"];
    let mut rng = Rng::new(99);
    for _ in 0..3 {
        let text: String = (0..150_000).map(|_| pool[rng.below(pool.len() as u64) as usize]).collect();
        check(&text);
    }
    // Texts whose newlines are all followed by whitespace cannot be cut.
    let ragged = "word \n  indented\n\n\n ".repeat(20_000);
    check(&ragged);
}

#[test]
fn batch_encoding_equals_one_by_one() {
    let texts = ["first document", "second <|endoftext|> one", "", "三"];
    let batch = gpt2().encode_batch(&texts);
    for (t, ids) in texts.iter().zip(&batch) {
        assert_eq!(ids, &reference(t));
    }
    assert_eq!(gpt2().encode("<|endoftext|>"), vec![EOT]);
    // Out-of-vocabulary ids are skipped, not a panic.
    assert_eq!(gpt2().decode(&[15496, 99_999, 995]), "Hello world");
}

#[test]
fn whitespace_runs_split_exactly_like_the_lookahead_regex() {
    // GPT-2's `\s+(?!\S)` is emulated without look-ahead: hammer it with
    // runs of every kind of whitespace before letters, digits, symbols,
    // special tokens and the end of the text.
    let pool = [" ", " ", "\t", "\n", "\r", "\u{a0}", "\u{3000}", "\u{2028}", "\u{85}", "a", "Ω", "7", "!", "'s", "<|endoftext|>"];
    let mut rng = Rng::new(5);
    for _ in 0..3000 {
        let n = 1 + rng.below(12) as usize;
        let text: String = (0..n).map(|_| pool[rng.below(pool.len() as u64) as usize]).collect();
        check(&text);
    }
}

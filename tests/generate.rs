//! Generation with a key/value cache, against transformers and against the
//! full forward pass: greedy continuations equal
//! `GPT2LMHeadModel.generate(do_sample=False)` token for token (fixtures
//! by tests/fixtures/make_generate_fixture.py); every cached step's logits
//! equal transformers' logits of the same position and the full forward
//! pass's; sampling draws from the softmax it claims to, reproducibly by
//! seed, and top-k / top-p cut where they say; a full context stops
//! generation instead of failing.

mod common;
use common::*;
use dtrain::engine::cpu::CpuEngine;
use dtrain::model::generate::{Sampling, generate};
use dtrain::model::{Gpt, checkpoint};
use dtrain::rng::Rng;

fn generate_model() -> Gpt<CpuEngine> {
    checkpoint::load_model(&fixture_dir().join("generate_model"), CpuEngine::new()).expect("the fixture loads")
}

#[test]
fn greedy_continuations_equal_transformers_token_for_token() {
    let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("generate.json")).unwrap()).unwrap();
    let mut model = generate_model();
    for case in fixture["cases"].as_array().unwrap() {
        let prompt: Vec<u32> = case["prompt"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let want: Vec<u32> = case["greedy"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let mut streamed = Vec::new();
        let got = generate(&mut model, &prompt, want.len(), Sampling::GREEDY, 0, None, |t| streamed.push(t)).unwrap();
        assert_eq!(got, want, "prompt {prompt:?}");
        assert_eq!(streamed, want, "the tokens streamed as they came");
    }
}

#[test]
fn every_cached_step_gives_the_logits_of_transformers_and_of_the_full_forward_pass() {
    // transformers' logits of the fixture's first batch, row 0 (T positions).
    let r = Reference::load();
    let (all, shape) = r.batches();
    let (inputs, targets) = split_batch(&all, &shape, 0);
    let (b, t) = (shape[1], shape[2] - 1);
    let reference = r.f32("logits");
    let mut model = checkpoint::load_model(&fixture_dir().join("model"), CpuEngine::new()).unwrap();
    let v = model.config.vocab_size;
    for row in 0..b {
        let mut cache = model.kv_cache().unwrap();
        for pos in 0..t {
            let logits = model.decode_step(&mut cache, inputs[row * t + pos]).unwrap();
            let want = &reference[(row * t + pos) * v..(row * t + pos + 1) * v];
            let err = rel_err(&logits, want);
            assert!(err < 1e-5, "row {row} position {pos}: relative error {err:e} against transformers");
        }
        assert_eq!(cache.len(), t);
    }
    // And the full forward pass over a longer sequence of the wandering model.
    let mut model = generate_model();
    let seq: Vec<u32> = (0..60u32).map(|i| (i * 37 + 11) % 300).collect();
    let (_, full) = model.forward_logits(&seq, &seq, 1, seq.len()).unwrap();
    let mut cache = model.kv_cache().unwrap();
    for (pos, &tok) in seq.iter().enumerate() {
        let step = model.decode_step(&mut cache, tok).unwrap();
        let err = rel_err(&step, &full[pos * v..(pos + 1) * v]);
        assert!(err < 1e-5, "position {pos}: relative error {err:e} against the full forward pass");
    }
    let _ = targets;
}

#[test]
fn sampling_draws_from_the_softmax_and_cuts_where_it_says() {
    let logits = [2.0f32, 1.0, 0.5, 0.0, -1.0, f32::NEG_INFINITY];
    let softmax = |temp: f32| -> Vec<f64> {
        let e: Vec<f64> = logits.iter().map(|&l| ((l / temp) as f64).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|x| x / s).collect()
    };
    let draws = 200_000;
    for temp in [1.0f32, 0.5] {
        let s = Sampling { temperature: temp, top_k: 0, top_p: 1.0 };
        let mut rng = Rng::new(5);
        let mut counts = [0usize; 6];
        for _ in 0..draws {
            counts[s.pick(&logits, &mut rng) as usize] += 1;
        }
        for (i, p) in softmax(temp).iter().enumerate() {
            let f = counts[i] as f64 / draws as f64;
            // Five standard deviations of a binomial proportion.
            let tol = 5.0 * (p * (1.0 - p) / draws as f64).sqrt() + 1e-9;
            assert!((f - p).abs() <= tol, "temperature {temp}, token {i}: {f} vs {p}");
        }
        assert_eq!(counts[5], 0, "a -inf logit is never drawn");
    }
    // top-k 2: only the two best, in their renormalised proportion.
    let s = Sampling { temperature: 1.0, top_k: 2, top_p: 1.0 };
    let mut rng = Rng::new(6);
    let picks: Vec<u32> = (0..20_000).map(|_| s.pick(&logits, &mut rng)).collect();
    assert!(picks.iter().all(|&p| p < 2));
    let share = picks.iter().filter(|&&p| p == 0).count() as f64 / picks.len() as f64;
    let want = 1.0 / (1.0 + (-1f64).exp());
    assert!((share - want).abs() < 0.02, "{share} vs {want}");
    // top-p below the best token's probability: greedy.
    let s = Sampling { temperature: 1.0, top_k: 0, top_p: 0.3 };
    assert!((0..1000).all(|_| s.pick(&logits, &mut rng) == 0));
    // The same seed, the same draws; greedy ignores the seed.
    let hot = Sampling { temperature: 1.5, top_k: 0, top_p: 0.95 };
    let mut model = generate_model();
    let a = generate(&mut model, &[5, 6, 7], 30, hot, 42, None, |_| {}).unwrap();
    let b = generate(&mut model, &[5, 6, 7], 30, hot, 42, None, |_| {}).unwrap();
    let c = generate(&mut model, &[5, 6, 7], 30, hot, 43, None, |_| {}).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn generation_stops_at_the_stop_token_or_a_full_context() {
    let mut model = generate_model();
    let ctx = model.config.max_seq_len;
    let prompt: Vec<u32> = (1..=12).collect();
    let out = generate(&mut model, &prompt, 1000, Sampling::GREEDY, 0, None, |_| {}).unwrap();
    // The last position's logits give one more token than positions.
    assert_eq!(out.len(), ctx - prompt.len() + 1);
    let first = out[0];
    let stopped = generate(&mut model, &prompt, 1000, Sampling::GREEDY, 0, Some(first), |_| {}).unwrap();
    assert_eq!(stopped, [first]);
    assert!(generate(&mut model, &[], 5, Sampling::GREEDY, 0, None, |_| {}).is_err());
    assert!(generate(&mut model, &[300], 5, Sampling::GREEDY, 0, None, |_| {}).is_err(), "a token outside the vocabulary");
    let too_long: Vec<u32> = vec![1; ctx + 1];
    assert!(generate(&mut model, &too_long, 5, Sampling::GREEDY, 0, None, |_| {}).is_err(), "a prompt longer than the context");
}

#[test]
fn dtrain_generate_streams_the_greedy_text_and_repeats_a_seeded_sample() {
    use dtrain::data::tokenizer::gpt2;
    let dir = fresh_dir("generate-cli");
    let mut model = Gpt::new(CpuEngine::new(), dtrain::model::GptConfig::preset("small").unwrap()).unwrap();
    model.init_random(9);
    checkpoint::save(&dir.join("ck"), &model, None, &[]).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dtrain"))
            .args(["-q", "generate", "--device", "cpu", "--checkpoint"])
            .arg(dir.join("ck"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    // Greedy: the prompt, then what the library's greedy decoding gives.
    let prompt = "The river";
    let text = run(&["--prompt", prompt, "--max-tokens", "12", "--temperature", "0", "--ignore-eot"]);
    let ids = gpt2().encode(prompt);
    let want = generate(&mut model, &ids, 12, Sampling::GREEDY, 0, None, |_| {}).unwrap();
    assert_eq!(text, format!("{prompt}{}\n", gpt2().decode(&want)));
    // Sampled: the same seed, the same text; another seed, other text.
    let a = run(&["--prompt", prompt, "--max-tokens", "12", "--seed", "1", "--ignore-eot"]);
    let b = run(&["--prompt", prompt, "--max-tokens", "12", "--seed", "1", "--ignore-eot"]);
    let c = run(&["--prompt", prompt, "--max-tokens", "12", "--seed", "2", "--ignore-eot"]);
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.starts_with(prompt));
    // Clear refusals.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_dtrain"))
        .args(["-q", "generate", "--device", "cpu", "--top-p", "0", "--checkpoint"])
        .arg(dir.join("ck"))
        .output()
        .unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--top-p"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_cuda_engine_generates_through_the_same_trait_in_its_emulation() {
    use dtrain::engine::cuda::emu::Emu;
    use dtrain::engine::cuda::{CudaEngine, Precision};
    assert!(Emu::available(), "the kernels' CPU emulation was not built: build.rs needs a C++ compiler (g++ or clang++)");
    let fixture: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("generate.json")).unwrap()).unwrap();
    let case = &fixture["cases"][0];
    let prompt: Vec<u32> = case["prompt"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let want: Vec<u32> = case["greedy"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    // fp32: transformers' greedy tokens, as on the CPU engine.
    let engine = CudaEngine::new(Emu).with_precision(Precision::Fp32);
    let mut gpu = checkpoint::load_model(&fixture_dir().join("generate_model"), engine).unwrap();
    let got = generate(&mut gpu, &prompt, want.len(), Sampling::GREEDY, 0, None, |_| {}).unwrap();
    assert_eq!(got, want);
    // bf16 (parameters, activations and the cache): its first steps' logits
    // within bf16's error of the CPU engine's.
    let engine = CudaEngine::new(Emu).with_precision(Precision::Bf16);
    let mut gpu = checkpoint::load_model(&fixture_dir().join("generate_model"), engine).unwrap();
    let mut cpu = generate_model();
    let (mut gc, mut cc) = (gpu.kv_cache().unwrap(), cpu.kv_cache().unwrap());
    for &t in &prompt {
        let (g, c) = (gpu.decode_step(&mut gc, t).unwrap(), cpu.decode_step(&mut cc, t).unwrap());
        let err = rel_err(&g, &c);
        assert!(err < 5e-2, "bf16 logits off by {err:e}");
    }
}

//! Mutation fuzzing (see `tests/common/fuzz.rs`) of the predictor's readers of user files: the
//! submission/solution CSVs of `predictor score` and the saved-logits safetensors of
//! `--save-logits`. Each returns `Ok` or a clean `Err` on any input, never panics.
use proptest::prelude::*;

#[path = "../../../tests/common/fuzz.rs"]
mod fuzz;
use fuzz::{config, corpus, mutate, mutation};

use sorbier_predict::engine::ensemble::{Average, Outputs};

fn logits_seed() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("l.safetensors");
    let out = Outputs {
        classes: vec!["a".into(), "b".into(), "c".into()],
        mean: ndarray::array![[1.0, 2.0, 0.5], [f32::NAN, f32::NAN, f32::NAN]],
        members: vec![ndarray::array![[1.0, 2.0, 0.5], [f32::NAN, f32::NAN, f32::NAN]]],
        failed: vec![(1, "bad".into())],
        average: Average::Logits,
        images_per_s: 1.0,
    };
    sorbier_predict::output::logits::save(&p, &["x.jpg".into(), "y.jpg".into()], &out, &["m.onnx".into()], &[1.0], sorbier_predict::engine::Tta::None).unwrap();
    std::fs::read(&p).unwrap()
}

fn in_file<T>(bytes: &[u8], f: impl FnOnce(&std::path::Path) -> T) -> T {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    std::fs::write(&p, bytes).unwrap();
    f(&p)
}

#[test]
fn the_seeds_are_read() {
    for (name, bytes) in corpus("csv").into_iter().filter(|c| c.0 != "history.csv") {
        let rows = in_file(&bytes, sorbier_predict::commands::score::read_rows).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert!(rows.len() >= 2, "{name}");
    }
    let saved = in_file(&logits_seed(), sorbier_predict::output::logits::load).unwrap();
    assert_eq!(saved.mean.dim(), (2, 3));
    // Two different seeds are scored against each other: the fuzz below reaches the paths that
    // compare a submission with a solution that does not match it.
    let seeds = corpus("csv");
    let (sub, sol) = (&seeds[0], &seeds[seeds.len() - 1]);
    let err = in_file(&sub.1, |a| in_file(&sol.1, |b| sorbier_predict::commands::score::score_files(a, b))).unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("missing from the submission") && err.contains("not in the solution"), "{} against {}: {err}", sub.0, sol.0);
}

/// Scores `submission` against `solution`, each written to its own file.
fn score(submission: &[u8], solution: &[u8]) -> anyhow::Result<sorbier_predict::commands::score::Score> {
    in_file(submission, |a| in_file(solution, |b| sorbier_predict::commands::score::score_files(a, b)))
}

proptest! {
    #![proptest_config(config())]

    /// A mutated submission against the intact solution it came from, and an intact
    /// submission against a mutated solution: rows go missing, appear, repeat or change class.
    #[test]
    fn scoring_never_panics(seed in 0usize..64, m in mutation(), mutate_solution in any::<bool>()) {
        let seeds = corpus("csv");
        let (_, bytes) = &seeds[seed % seeds.len()];
        let mutated = mutate(bytes, &m);
        let _ = if mutate_solution { score(bytes, &mutated) } else { score(&mutated, bytes) };
    }

    #[test]
    fn the_saved_logits_reader_never_panics(m in mutation()) {
        let _ = in_file(&mutate(&logits_seed(), &m), sorbier_predict::output::logits::load);
    }
}

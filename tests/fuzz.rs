//! Mutation fuzzing (see `tests/common/fuzz.rs`) of the core's readers of user files: image
//! decoding, the ONNX model card, the sample-submission CSV and `history.csv`. Each must
//! return `Ok` or a clean `Err` on any input, never panic.
use std::io::Write;

use proptest::prelude::*;
use prost::Message;

#[path = "common/fuzz.rs"]
mod fuzz;
use fuzz::{config, corpus, mutate, mutation};

use sorbier::meta::ModelMeta;
use sorbier::onnx::{ModelProto, StringStringEntryProto};
use sorbier::transforms::{decode_rgb, Preprocess};

/// A model card as `trainer export` writes it, in an otherwise empty ONNX model.
fn model_card_seed() -> Vec<u8> {
    let meta = ModelMeta {
        classes: vec!["daisy".into(), "10".into(), "roses".into()],
        arch: "resnet18".into(),
        preprocess: Preprocess::for_crop(64),
        metrics: [("top1".to_string(), 0.5)].into_iter().collect(),
        data_fingerprint: "f94cbf40d08d322a".into(),
        sorbier_version: sorbier::VERSION.into(),
        precision: "float32".into(),
        source: "runs/r:best".into(),
    };
    let props = meta.to_props().unwrap();
    let model = ModelProto {
        ir_version: Some(sorbier::export::IR_VERSION),
        producer_name: Some("sorbier".into()),
        metadata_props: props.into_iter().map(|(k, v)| StringStringEntryProto { key: Some(k), value: Some(v) }).collect(),
        ..Default::default()
    };
    model.encode_to_vec()
}

fn temp_file(bytes: &[u8], name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::File::create(&path).unwrap().write_all(bytes).unwrap();
    (dir, path)
}

#[test]
fn the_seeds_are_read() {
    for (name, bytes) in corpus("images") {
        let r = decode_rgb(&bytes, &name);
        // GIF is not a supported format: its seed exercises the refusal path.
        assert_eq!(r.is_ok(), !name.ends_with(".gif"), "{name}: {r:?}");
    }
    let (_d, p) = temp_file(&model_card_seed(), "m.onnx");
    let model = sorbier::export::read_model(&p).unwrap();
    assert_eq!(sorbier::export::model_meta(&model).unwrap().classes.len(), 3);
    let (_d, p) = temp_file(&corpus("csv").into_iter().find(|c| c.0 == "history.csv").unwrap().1, "history.csv");
    assert_eq!(sorbier::run::read_history(&p).unwrap().len(), 2);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn image_decoding_never_panics(seed in 0usize..64, m in mutation()) {
        let seeds = corpus("images");
        let (name, bytes) = &seeds[seed % seeds.len()];
        let input = mutate(bytes, &m);
        if let Ok(img) = decode_rgb(&input, name) {
            prop_assert!(img.width() > 0 && img.height() > 0);
        }
    }

    #[test]
    fn the_model_card_reader_never_panics(m in mutation()) {
        let input = mutate(&model_card_seed(), &m);
        let (_d, p) = temp_file(&input, "m.onnx");
        if let Ok(model) = sorbier::export::read_model(&p) {
            let _ = sorbier::export::model_meta(&model);
        }
    }

    #[test]
    fn model_card_fields_of_any_text_never_panic(key in "sorbier\\.[a-z_]{1,20}", value in ".{0,40}") {
        let _ = ModelMeta::from_props([(key.as_str(), value.as_str())]);
    }

    #[test]
    fn the_sample_submission_reader_never_panics(seed in 0usize..64, m in mutation()) {
        let seeds = corpus("csv");
        let (_, bytes) = &seeds[seed % seeds.len()];
        let input = mutate(bytes, &m);
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("test");
        std::fs::create_dir(&images).unwrap();
        std::fs::write(images.join("img_0001.jpg"), corpus("images")[0].1.clone()).unwrap();
        let sample = dir.path().join("sample_submission.csv");
        std::fs::write(&sample, &input).unwrap();
        let _ = sorbier::data::TestSet::scan(&images, Some(&sample));
    }

    #[test]
    fn the_history_reader_never_panics(m in mutation()) {
        let seed = corpus("csv").into_iter().find(|c| c.0 == "history.csv").unwrap().1;
        let (_d, p) = temp_file(&mutate(&seed, &m), "history.csv");
        let _ = sorbier::run::read_history(&p);
        let _ = sorbier::report::tables::read_history(&p);
    }
}

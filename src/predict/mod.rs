//! Batched ONNX Runtime inference, ensembles, test-time augmentation and submissions.

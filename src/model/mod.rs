//! The libtorch side of the models: a ResNet built by walking `arch::ResNetSpec`, with
//! torchvision's parameter names, and weight loading/saving that reports every mismatch.

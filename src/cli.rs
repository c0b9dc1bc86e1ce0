//! What the binaries' command lines share (the `cli` feature, which only the binaries' crates
//! turn on for them): a clap value parser for any [`Spelling`] enum, so a flag accepts exactly
//! the spellings the files use and `--help` lists them.
use clap::builder::{PossibleValue, TypedValueParser};
use clap::error::{ContextKind, ContextValue, ErrorKind};

use crate::spelling::Spelling;

/// The clap value parser of a [`Spelling`] enum: `#[arg(long, value_parser = spelled::<Arch>())]`.
pub fn spelled<T: Spelling>() -> SpelledParser<T> {
    SpelledParser(std::marker::PhantomData)
}

#[derive(Clone, Copy, Debug)]
pub struct SpelledParser<T>(std::marker::PhantomData<T>);

impl<T: Spelling> TypedValueParser for SpelledParser<T> {
    type Value = T;

    fn parse_ref(&self, cmd: &clap::Command, arg: Option<&clap::Arg>, value: &std::ffi::OsStr) -> Result<T, clap::Error> {
        let text = value.to_string_lossy();
        T::parse(&text).map_err(|_| {
            let mut err = clap::Error::new(ErrorKind::InvalidValue).with_cmd(cmd);
            if let Some(arg) = arg {
                err.insert(ContextKind::InvalidArg, ContextValue::String(arg.to_string()));
            }
            err.insert(ContextKind::InvalidValue, ContextValue::String(text.into_owned()));
            err.insert(ContextKind::ValidValue, ContextValue::Strings(T::ALL.iter().map(|v| v.name().to_string()).collect()));
            err
        })
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(T::ALL.iter().map(|v| PossibleValue::new(v.name()))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::Arch;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Args {
        #[arg(long, value_parser = spelled::<Arch>(), default_value = "resnet18")]
        arch: Arch,
    }

    #[test]
    fn flags_take_the_file_spelling_and_refuse_others() {
        assert_eq!(Args::try_parse_from(["x"]).unwrap().arch, Arch::Resnet18);
        assert_eq!(Args::try_parse_from(["x", "--arch", "efficientnet-lite0"]).unwrap().arch, Arch::EfficientnetLite0);
        let err = Args::try_parse_from(["x", "--arch", "EfficientnetLite0"]).unwrap_err().to_string();
        assert!(err.contains("invalid value 'EfficientnetLite0'") && err.contains("efficientnet-lite0"), "{err}");
    }
}

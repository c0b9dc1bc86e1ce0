//! One string form per value: the settings that travel from the command line into files
//! (`config.json`, the model card, saved logits, a served model's version) are typed enums
//! whose only spelling is serde's. [`Spelling`] lists an enum's values and reads and writes
//! that spelling; the binaries build their clap value parsers from it ([`crate::cli`], behind
//! the `cli` feature), so the library types never depend on clap and renaming a variant's
//! serde name is the one place a spelling changes.
use serde::de::DeserializeOwned;
use serde::Serialize;

/// An enum whose values have one string form: serde's.
pub trait Spelling: Copy + PartialEq + std::fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Every value, in the order help texts list them.
    const ALL: &'static [Self];
    /// What the values are, for messages ("architecture", "averaging").
    const WHAT: &'static str;

    /// The value's string form (serde's), computed once per type by [`spelled!`].
    fn name(&self) -> &'static str;

    /// The value spelled `text`, or a message listing every spelling.
    fn parse(text: &str) -> Result<Self, String> {
        Self::ALL.iter().copied().find(|v| v.name() == text).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(Spelling::name).collect();
            format!("unknown {} {text:?} (expected one of: {})", Self::WHAT, names.join(", "))
        })
    }
}

/// serde's string form of a unit variant (what [`Spelling::name`] caches).
pub fn serde_name<T: Serialize + std::fmt::Debug>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        // Only unit variants implement Spelling; `check_spelling` tests every type for this.
        _ => format!("{v:?}"),
    }
}

/// Implements [`Spelling`], `Display` and `FromStr` for a unit-variant enum that derives
/// `Serialize` and `Deserialize`: `spelled!(Average, "averaging", [Logits, Probs]);`
#[macro_export]
macro_rules! spelled {
    ($ty:ident, $what:literal, [$($variant:ident),+ $(,)?]) => {
        impl $crate::spelling::Spelling for $ty {
            const ALL: &'static [Self] = &[$($ty::$variant),+];
            const WHAT: &'static str = $what;
            fn name(&self) -> &'static str {
                static NAMES: ::std::sync::OnceLock<Vec<String>> = ::std::sync::OnceLock::new();
                let all: &[Self] = <Self as $crate::spelling::Spelling>::ALL;
                let names = NAMES.get_or_init(|| all.iter().map($crate::spelling::serde_name).collect());
                // Every value is in ALL (the macro lists the variants; `check_spelling` tests it).
                all.iter().position(|v| v == self).map_or("?", |i| names[i].as_str())
            }
        }
        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str($crate::spelling::Spelling::name(self))
            }
        }
        impl ::std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> ::std::result::Result<Self, String> {
                <$ty as $crate::spelling::Spelling>::parse(s)
            }
        }
    };
}

/// Checks a [`Spelling`] type: every value has a distinct plain-string name that serde reads
/// back to the same value and [`Spelling::parse`] finds. For the unit tests of each type.
pub fn check_spelling<T: Spelling + std::fmt::Debug>() -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for v in T::ALL {
        let name = v.name().to_string();
        if !matches!(serde_json::to_value(v), Ok(serde_json::Value::String(_))) {
            return Err(format!("{v:?} does not serialise to a plain string"));
        }
        if !seen.insert(name.clone()) {
            return Err(format!("{name:?} names two values"));
        }
        let back: T = serde_json::from_value(serde_json::Value::String(name.clone())).map_err(|e| format!("{name:?}: {e}"))?;
        if back != *v || T::parse(&name)? != *v {
            return Err(format!("{name:?} reads back as another value"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    enum Colour {
        Red,
        DarkBlue,
    }
    crate::spelled!(Colour, "colour", [Red, DarkBlue]);

    #[test]
    fn one_spelling_from_serde_for_display_parse_and_files() {
        check_spelling::<Colour>().unwrap();
        assert_eq!(Colour::DarkBlue.to_string(), "dark-blue");
        assert_eq!("dark-blue".parse::<Colour>(), Ok(Colour::DarkBlue));
        assert_eq!(serde_json::to_string(&Colour::DarkBlue).unwrap(), "\"dark-blue\"");
        let err = "DarkBlue".parse::<Colour>().unwrap_err();
        assert!(err.contains("unknown colour \"DarkBlue\"") && err.contains("red, dark-blue"), "{err}");
    }
}

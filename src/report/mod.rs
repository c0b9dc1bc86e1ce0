//! Reports users look at: tables (CSV/JSON) and pictures.

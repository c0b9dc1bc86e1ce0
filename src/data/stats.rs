//! Class statistics (pandas `describe` of class sizes) and an image-size summary.

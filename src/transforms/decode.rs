//! Decoding any supported image file to 8-bit RGB: JPEG, PNG, WebP, BMP; EXIF orientation
//! applied; grayscale, CMYK, alpha and 16-bit inputs converted. Errors name the file.
//!
//! The format is guessed from the content (magic bytes), never from the extension, as Pillow's
//! `Image.open` does. The conversions follow torchvision's `pil_loader` (`.convert('RGB')`):
//! - alpha is dropped, not composited (Pillow's `RGBA → RGB` keeps the colour channels as they
//!   are, so a transparent pixel keeps whatever colour the file stores under it);
//! - grayscale is replicated into the three channels;
//! - 16-bit samples are scaled to 8 bits (`round(v·255/65535)`; Pillow keeps the high byte of
//!   16-bit RGB, a difference of at most one level, and clips 16-bit grayscale at 255, which
//!   turns most images white — we scale instead);
//! - CMYK/YCCK JPEGs (Adobe, inverted as Photoshop writes them) go through zune-jpeg's
//!   `R = C·K/255` conversion, the same naive formula libjpeg-based readers use.
//!
//! JPEGs are decoded with zune-jpeg directly (one header parse, EXIF from the same pass) in
//! strict mode, so a truncated file is an error like Pillow's "image file is truncated" rather
//! than an image padded with grey; a complete file with minor stream damage (which libjpeg
//! only warns about) is retried leniently.
//!
//! Decompression bombs: the pixel count the header claims is checked before any pixel buffer
//! is allocated (a 2 KB PNG can claim 50,000 × 50,000 pixels, 7.5 GB of RGB). The default limit
//! is Pillow's, which refuses images above `2 × Image.MAX_IMAGE_PIXELS` with a
//! `DecompressionBombError`; [`decode_rgb_limited`] takes another.
use std::io::Cursor;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;

/// Pillow's decompression-bomb limit: `2 × Image.MAX_IMAGE_PIXELS` (89,478,485) pixels.
pub const DEFAULT_MAX_PIXELS: u64 = 2 * 89_478_485;

/// Reads and decodes `path` to upright 8-bit RGB.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("reading image {}", path.display()))?;
    decode_rgb(&bytes, &path.display().to_string())
}

/// Decodes an in-memory image file to upright 8-bit RGB; `name` (usually the path) is used in
/// error messages. Images above [`DEFAULT_MAX_PIXELS`] are refused from their header.
pub fn decode_rgb(bytes: &[u8], name: &str) -> Result<RgbImage> {
    decode_rgb_limited(bytes, name, DEFAULT_MAX_PIXELS)
}

/// [`decode_rgb`], refusing images whose header claims more than `max_pixels` pixels before
/// anything the size of the image is allocated.
pub fn decode_rgb_limited(bytes: &[u8], name: &str, max_pixels: u64) -> Result<RgbImage> {
    decode_inner(bytes, max_pixels).with_context(|| format!("cannot decode image {name}"))
}

/// Refuses a `w × h` image above `max_pixels`.
fn check_pixels(w: u64, h: u64, max_pixels: u64) -> Result<()> {
    if w.saturating_mul(h) > max_pixels {
        bail!("the image claims {w} × {h} = {} pixels, more than the limit of {max_pixels} (a decompression bomb?)", w.saturating_mul(h));
    }
    Ok(())
}

fn decode_inner(bytes: &[u8], max_pixels: u64) -> Result<RgbImage> {
    if bytes.is_empty() {
        bail!("the file is empty");
    }
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format()?;
    match reader.format() {
        Some(ImageFormat::Jpeg) => decode_jpeg(bytes, max_pixels),
        Some(_) => {
            let mut decoder = reader.into_decoder()?;
            let (w, h) = decoder.dimensions();
            check_pixels(w as u64, h as u64, max_pixels)?;
            let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
            let mut img = DynamicImage::from_decoder(decoder)?;
            img.apply_orientation(orientation);
            Ok(to_rgb8(img))
        }
        None => bail!("unrecognised image format (not JPEG, PNG, WebP or BMP)"),
    }
}

/// 8-bit RGB from any decoded layout; alpha dropped, 16-bit and float scaled.
fn to_rgb8(img: DynamicImage) -> RgbImage {
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    }
}

fn decode_jpeg(bytes: &[u8], max_pixels: u64) -> Result<RgbImage> {
    match decode_jpeg_with(bytes, true, max_pixels) {
        Ok(img) => Ok(img),
        Err(strict_err) => {
            // Truncation is an error, as in Pillow; other stream damage in a file that ends
            // properly is decoded as far as possible, as libjpeg does (with a warning there).
            let msg = strict_err.to_string().to_lowercase();
            if msg.contains("premature") || msg.contains("end of") || msg.contains("eof") || !ends_with_eoi(bytes) {
                return Err(strict_err);
            }
            decode_jpeg_with(bytes, false, max_pixels).map_err(|_| strict_err)
        }
    }
}

/// Whether the last bytes (ignoring trailing padding) hold the JPEG end-of-image marker.
fn ends_with_eoi(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(64)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

fn decode_jpeg_with(bytes: &[u8], strict: bool, max_pixels: u64) -> Result<RgbImage> {
    let options = DecoderOptions::default()
        .set_strict_mode(strict)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX);
    let mut dec = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    dec.decode_headers().map_err(|e| anyhow!("JPEG: {e:?}"))?;
    let input = dec.input_colorspace().ok_or_else(|| anyhow!("JPEG: headers not decoded"))?;
    let (w, h) = dec.dimensions().ok_or_else(|| anyhow!("JPEG: headers not decoded"))?;
    check_pixels(w as u64, h as u64, max_pixels)?;
    let orientation = dec.exif().and_then(|e| Orientation::from_exif_chunk(e)).unwrap_or(Orientation::NoTransforms);
    let gray = matches!(input, ColorSpace::Luma | ColorSpace::LumaA);
    let out_cs = if gray { ColorSpace::Luma } else { ColorSpace::RGB };
    dec.set_options(options.jpeg_set_out_colorspace(out_cs));
    let (w, h) = (w as u32, h as u32);
    let mut img = if gray {
        let mut buf = vec![0u8; w as usize * h as usize];
        dec.decode_into(&mut buf).map_err(|e| anyhow!("JPEG: {e:?}"))?;
        let luma = image::GrayImage::from_raw(w, h, buf).ok_or_else(|| anyhow!("JPEG: bad buffer size"))?;
        DynamicImage::ImageLuma8(luma).to_rgb8()
    } else {
        let mut buf = vec![0u8; w as usize * h as usize * 3];
        dec.decode_into(&mut buf).map_err(|e| anyhow!("JPEG: {e:?}"))?;
        RgbImage::from_raw(w, h, buf).ok_or_else(|| anyhow!("JPEG: bad buffer size"))?
    };
    if orientation != Orientation::NoTransforms {
        let mut dynimg = DynamicImage::ImageRgb8(img);
        dynimg.apply_orientation(orientation);
        img = to_rgb8(dynimg);
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python() -> std::path::PathBuf {
        let p = std::path::PathBuf::from(env!("SORBIER_PYTHON"));
        if p.is_absolute() {
            p
        } else {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
        }
    }

    /// Runs a Python snippet (PIL from the venv) that writes fixtures into `dir`.
    fn run_py(dir: &Path, code: &str) {
        let py = python();
        assert!(py.exists(), "the venv python {} is missing: run tools/setup.sh", py.display());
        let out = std::process::Command::new(&py).arg("-c").arg(code).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "python failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// An asymmetric 4×2 test picture: each pixel distinct, so any flip/rotation shows.
    fn asym_png(dir: &Path) -> RgbImage {
        let mut img = RgbImage::new(4, 2);
        for (x, y, p) in img.enumerate_pixels_mut() {
            *p = image::Rgb([(x * 60) as u8, (y * 200) as u8, 30]);
        }
        img.save(dir.join("asym.png")).unwrap();
        img
    }

    #[test]
    fn exif_orientation_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        asym_png(dir.path());
        // Orientation 6 = "rotate 90° clockwise to display"; 3 = 180°. Large blocks so JPEG
        // compression keeps the layout readable.
        run_py(
            dir.path(),
            "from PIL import Image\n\
             im = Image.new('RGB', (64, 32), (255, 0, 0))\n\
             im.paste((0, 0, 255), (0, 0, 16, 16))\n\
             for o in (1, 3, 6, 8):\n\
             \x20   ex = Image.Exif(); ex[0x0112] = o\n\
             \x20   im.save(f'o{o}.jpg', quality=95, exif=ex.tobytes())\n\
             \x20   Image.open(f'o{o}.jpg').convert('RGB')\n\
             from PIL import ImageOps\n\
             for o in (1, 3, 6, 8):\n\
             \x20   ImageOps.exif_transpose(Image.open(f'o{o}.jpg')).convert('RGB').save(f'ref{o}.png')\n",
        );
        for o in [1, 3, 6, 8] {
            let got = load_rgb(&dir.path().join(format!("o{o}.jpg"))).unwrap();
            let want = image::open(dir.path().join(format!("ref{o}.png"))).unwrap().to_rgb8();
            assert_eq!(got.dimensions(), want.dimensions(), "orientation {o}");
            let (w, h) = got.dimensions();
            if o == 6 || o == 8 {
                assert_eq!((w, h), (32, 64));
            }
            // Same upright picture as Pillow's exif_transpose (JPEG decoders differ by a level or two).
            let max = got.as_raw().iter().zip(want.as_raw()).map(|(a, b)| (*a as i32 - *b as i32).abs()).max().unwrap();
            assert!(max <= 8, "orientation {o}: max diff {max}");
        }
        // The blue block is top-left in the file; after a 90° clockwise turn it is top-right.
        let o6 = load_rgb(&dir.path().join("o6.jpg")).unwrap();
        assert!(o6.get_pixel(28, 4)[2] > 200 && o6.get_pixel(4, 4)[0] > 200);
    }

    #[test]
    fn gray_alpha_16bit_cmyk_inputs_become_rgb() {
        let dir = tempfile::tempdir().unwrap();
        run_py(
            dir.path(),
            "from PIL import Image\n\
             import numpy as np\n\
             Image.new('L', (8, 6), 77).save('gray.png')\n\
             Image.new('L', (8, 6), 77).save('gray.jpg', quality=100)\n\
             Image.new('LA', (8, 6), (77, 10)).save('la.png')\n\
             Image.new('RGBA', (8, 6), (10, 200, 30, 0)).save('rgba.png')\n\
             Image.new('RGBA', (8, 6), (10, 200, 30, 128)).save('rgba.webp', lossless=True)\n\
             Image.new('P', (8, 6), 0).save('pal.png')\n\
             a = np.full((6, 8, 3), 40000, dtype='>u2')\n\
             import zlib, struct\n\
             def chunk(t, d): return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d) & 0xffffffff)\n\
             raw = b''.join(b'\\x00' + a[y].tobytes() for y in range(6))\n\
             png = b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 8, 6, 16, 2, 0, 0, 0)) + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b'')\n\
             open('rgb16.png', 'wb').write(png)\n\
             g = np.full((6, 8), 40000, dtype=np.uint16)\n\
             Image.fromarray(g).save('gray16.png')\n\
             Image.new('CMYK', (16, 16), (0, 255, 255, 0)).save('cmyk.jpg', quality=100)\n\
             Image.new('CMYK', (16, 16), (0, 0, 0, 128)).save('cmyk_k.jpg', quality=100)\n\
             Image.new('RGB', (8, 6), (200, 100, 50)).save('rgb.bmp')\n\
             for f in ('cmyk.jpg', 'cmyk_k.jpg'):\n\
             \x20   print(f, Image.open(f).convert('RGB').getpixel((8, 8)))\n",
        );
        let px = |f: &str| {
            let img = load_rgb(&dir.path().join(f)).unwrap();
            assert_eq!(img.dimensions().0 >= 8, true, "{f}");
            *img.get_pixel(4, 3)
        };
        assert_eq!(px("gray.png").0, [77, 77, 77]);
        let g = px("gray.jpg").0;
        assert!(g.iter().all(|v| (*v as i32 - 77).abs() <= 1), "{g:?}");
        assert_eq!(px("la.png").0, [77, 77, 77]);
        // Alpha dropped as Pillow's convert('RGB') does, even where fully transparent.
        assert_eq!(px("rgba.png").0, [10, 200, 30]);
        assert_eq!(px("rgba.webp").0, [10, 200, 30]);
        assert_eq!(px("pal.png").0, [0, 0, 0]);
        // 40000/65535·255 = 155.6 → 156.
        assert_eq!(px("rgb16.png").0, [156, 156, 156]);
        assert_eq!(px("gray16.png").0, [156, 156, 156]);
        assert_eq!(px("rgb.bmp").0, [200, 100, 50]);
        // Pure magenta-free red in CMYK (C=0, M=Y=255) must come out red; K=128 mid grey.
        let red = load_rgb(&dir.path().join("cmyk.jpg")).unwrap().get_pixel(8, 8).0;
        assert!(red[0] > 240 && red[1] < 15 && red[2] < 15, "CMYK red decoded as {red:?}");
        let grey = load_rgb(&dir.path().join("cmyk_k.jpg")).unwrap().get_pixel(8, 8).0;
        assert!(grey.iter().all(|v| (*v as i32 - 127).abs() <= 3), "CMYK grey decoded as {grey:?}");
    }

    #[test]
    fn corrupt_truncated_and_empty_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.jpg");
        let mut img = RgbImage::new(64, 48);
        for (x, y, p) in img.enumerate_pixels_mut() {
            *p = image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x * y) % 256) as u8]);
        }
        img.save(&good).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        assert!(load_rgb(&good).is_ok());

        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("truncated_half.jpg", bytes[..bytes.len() / 2].to_vec()),
            ("truncated_header.jpg", bytes[..20].to_vec()),
            ("garbage.jpg", (0..500u32).map(|i| (i * 7919 % 251) as u8).collect()),
            ("empty.png", vec![]),
            ("truncated.png", {
                let mut v = Vec::new();
                img.write_to(&mut Cursor::new(&mut v), ImageFormat::Png).unwrap();
                v.truncate(v.len() / 2);
                v
            }),
        ];
        for (name, data) in cases {
            let p = dir.path().join(name);
            std::fs::write(&p, data).unwrap();
            let err = load_rgb(&p).expect_err(name);
            let msg = format!("{err:#}");
            assert!(msg.contains(name), "error for {name} does not name it: {msg}");
        }
        let missing = dir.path().join("missing.jpg");
        assert!(format!("{:#}", load_rgb(&missing).unwrap_err()).contains("missing.jpg"));
    }

    /// Files whose headers claim 50,000 × 50,000 pixels (tests/corpus/bombs: a PNG of 69 bytes
    /// with a valid IHDR, and the corpus's rgb.jpg with its SOF0 size patched), refused from
    /// the header as Pillow refuses them (`DecompressionBombError` above the same limit).
    #[test]
    fn decompression_bombs_are_refused_from_the_header() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/bombs");
        for name in ["png_50000x50000.png", "jpeg_50000x50000.jpg"] {
            let bytes = std::fs::read(dir.join(name)).unwrap();
            let msg = format!("{:#}", decode_rgb(&bytes, name).unwrap_err());
            assert!(msg.contains(name) && msg.contains("50000 × 50000 = 2500000000 pixels") && msg.contains("178956970"), "{msg}");
        }
        // A smaller limit applies to ordinary files too; the limit itself is allowed.
        let mut v = Vec::new();
        RgbImage::new(40, 30).write_to(&mut Cursor::new(&mut v), ImageFormat::Png).unwrap();
        assert!(decode_rgb_limited(&v, "x.png", 1200).is_ok());
        let msg = format!("{:#}", decode_rgb_limited(&v, "x.png", 1199).unwrap_err());
        assert!(msg.contains("40 × 30 = 1200 pixels, more than the limit of 1199"), "{msg}");
        let jpeg = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/images/rgb.jpg")).unwrap();
        assert!(decode_rgb_limited(&jpeg, "rgb.jpg", 24 * 16).is_ok());
        assert!(decode_rgb_limited(&jpeg, "rgb.jpg", 24 * 16 - 1).is_err());
    }

    #[test]
    fn format_comes_from_content_not_extension() {
        let dir = tempfile::tempdir().unwrap();
        let want = asym_png(dir.path());
        std::fs::copy(dir.path().join("asym.png"), dir.path().join("really_png.JPG")).unwrap();
        let got = load_rgb(&dir.path().join("really_png.JPG")).unwrap();
        assert_eq!(got, want);
    }
}

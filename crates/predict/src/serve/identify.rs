//! `POST /v1/identify`: photos of one plant in, ranked species out, in the shape of Pl@ntNet's
//! identification API (`bestMatch`, `results[].score`).
//!
//! The photos come as a multipart form (file fields `images`, as Pl@ntNet names them, or
//! `image`; text fields `top_k` and `weights`; Pl@ntNet's `organs` is accepted and ignored) or
//! as the raw body (one photo, any image content type). `top_k` (default 5, at most the number
//! of classes) and `weights` (comma-separated, one positive number per photo) may also be
//! query parameters. Each photo runs through the served ensemble exactly as `predict` runs a
//! file; several photos of the same plant are then combined like ensemble members: their
//! outputs are averaged (weighted) in the averaging space, and the scores are the softmax of
//! the averaged logits (or the averaged probabilities).
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ndarray::Array2;
use serde::Deserialize;
use serde_json::json;

use super::batcher::Target;
use super::http::{read_body, ApiError, Images, ReadBody};
use super::AppState;
use crate::engine::ensemble::{check_weights, probabilities, weighted_mean};
use crate::engine::ensemble::top_k;

/// Results returned when `top_k` is not given (fewer when the model has fewer classes).
pub const DEFAULT_TOP_K: usize = 5;

#[derive(Debug, Default, Deserialize)]
pub struct IdentifyQuery {
    top_k: Option<String>,
    weights: Option<String>,
}

/// The request, whichever way it came.
#[derive(Default)]
struct Upload {
    photos: Vec<(String, Bytes)>,
    top_k: Option<String>,
    weights: Vec<String>,
}

fn parse_top_k(text: Option<&str>, classes: usize) -> Result<usize, ApiError> {
    let Some(text) = text else { return Ok(DEFAULT_TOP_K.min(classes)) };
    match text.trim().parse::<usize>() {
        Ok(k) if (1..=classes).contains(&k) => Ok(k),
        _ => Err(ApiError::bad_request(format!("top_k must be a whole number from 1 to {classes} (the model's classes), got {text:?}"))),
    }
}

fn parse_weights(texts: &[String], photos: usize) -> Result<Vec<f64>, ApiError> {
    if texts.is_empty() {
        return Ok(vec![1.0; photos]);
    }
    let weights = texts
        .iter()
        .flat_map(|t| t.split(','))
        .map(|w| w.trim().parse::<f64>().map_err(|_| ApiError::bad_request(format!("weights must be numbers, got {w:?}"))))
        .collect::<Result<Vec<f64>, _>>()?;
    check_weights(&weights, photos, "photos").map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    Ok(weights)
}

/// Reads the photos and fields of a multipart form.
async fn read_form(req: Request, max_images: usize, up: &mut Upload) -> Result<(), ApiError> {
    let mut form = axum::extract::Multipart::from_request(req, &()).await.map_err(|e| ApiError::bad_request(format!("malformed multipart form: {}", e.body_text())))?;
    let field_error = |e: axum::extract::multipart::MultipartError| ApiError::new(e.status(), format!("malformed multipart form: {}", e.body_text()));
    while let Some(field) = form.next_field().await.map_err(field_error)? {
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "images" | "image" => {
                if up.photos.len() == max_images {
                    return Err(ApiError::bad_request(format!("more than {max_images} photos in one request (--max-images)")));
                }
                let label = field.file_name().map_or_else(|| format!("photo {}", up.photos.len() + 1), str::to_string);
                up.photos.push((label, field.bytes().await.map_err(field_error)?));
            }
            "top_k" => up.top_k = Some(field.text().await.map_err(field_error)?),
            "weights" => up.weights.push(field.text().await.map_err(field_error)?),
            "organs" => {
                field.bytes().await.map_err(field_error)?;
            }
            other => return Err(ApiError::bad_request(format!("unknown form field {other:?}: send photos in \"images\", and optionally \"top_k\" and \"weights\""))),
        }
    }
    Ok(())
}

pub async fn identify(State(state): State<Arc<AppState>>, Query(query): Query<IdentifyQuery>, req: Request) -> Result<Response, ApiError> {
    let start = Instant::now();
    let multipart = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("multipart/form-data"));
    let ReadBody { parts, bytes: body, room: _room } = read_body(&state, req).await?;
    let mut up = Upload { top_k: query.top_k, weights: query.weights.into_iter().collect(), ..Default::default() };
    if multipart {
        read_form(Request::from_parts(parts, Body::from(body)), state.limits.max_images, &mut up).await?;
    } else if body.is_empty() {
        return Err(ApiError::bad_request("the request has no photo: send it as the body, or as files in the multipart field \"images\""));
    } else {
        up.photos.push(("the request body".to_string(), body));
    }
    let n = up.photos.len();
    if n == 0 {
        return Err(ApiError::bad_request("the form has no photo: send files in the field \"images\""));
    }
    let c = state.catalog.classes.len();
    let k = parse_top_k(up.top_k.as_deref(), c)?;
    let weights = parse_weights(&up.weights, n)?;

    let admitted = state.admit(n)?;
    let names: Vec<String> = up.photos.iter().map(|p| p.0.clone()).collect();
    let decoding: Vec<_> = up.photos.into_iter().map(|(name, bytes)| tokio::spawn(state.prep.clone().photo(bytes, name, admitted.ticket()))).collect();
    let mut photos = Vec::with_capacity(n);
    for task in decoding {
        photos.push(task.await.map_err(|e| ApiError::internal(format!("the decoding task failed: {e}")))??);
    }
    let decode_ms = start.elapsed().as_secs_f64() * 1e3;
    let sizes: Vec<(u32, u32)> = photos.iter().map(|p| (p.width, p.height)).collect();
    let reply = state.run(Target::Ensemble, photos.into_iter().map(|p| p.item).collect(), admitted.ticket()).await?;
    admitted.done();

    // Photos of one plant are combined like ensemble members.
    let rows: Vec<Array2<f32>> = reply.rows.rows().into_iter().map(|r| r.to_owned().insert_axis(ndarray::Axis(0))).collect();
    let combined = weighted_mean(&rows, &weights).row(0).to_vec();
    let probs = probabilities(&combined, state.catalog.average);
    let best = top_k(&probs, k);
    let classes = &state.catalog.classes;
    let model = state.catalog.primary();
    let body = json!({
        "bestMatch": classes[best[0]],
        "results": best.iter().map(|&i| json!({ "species": classes[i], "score": probs[i], "index": i })).collect::<Vec<_>>(),
        "model": {
            "name": model.name,
            "version": model.version,
            "runs": model.runs,
            "average": state.catalog.average.to_string(),
            "tta": state.catalog.tta.to_string(),
        },
        "images": names.iter().zip(&sizes).zip(&weights).map(|((name, (w, h)), weight)| json!({ "name": name, "width": w, "height": h, "weight": weight })).collect::<Vec<_>>(),
        "batch_size": reply.batch_images,
        "timing_ms": {
            "decode": decode_ms,
            "queue": reply.queue_ms,
            "inference": reply.inference_ms,
            "total": start.elapsed().as_secs_f64() * 1e3,
        },
    });
    let mut resp = Json(body).into_response();
    resp.extensions_mut().insert(Images(n));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_and_weights_are_checked() {
        assert_eq!(parse_top_k(None, 3).unwrap(), 3);
        assert_eq!(parse_top_k(None, 50).unwrap(), DEFAULT_TOP_K);
        assert_eq!(parse_top_k(Some(" 2 "), 3).unwrap(), 2);
        for bad in ["0", "4", "x", "-1"] {
            let e = parse_top_k(Some(bad), 3).unwrap_err();
            assert!(e.status == 400 && e.message.contains("from 1 to 3"), "{bad}: {}", e.message);
        }
        assert_eq!(parse_weights(&[], 2).unwrap(), vec![1.0, 1.0]);
        assert_eq!(parse_weights(&["1,2".into(), "3".into()], 3).unwrap(), vec![1.0, 2.0, 3.0]);
        assert!(parse_weights(&["1,2".into()], 3).unwrap_err().message.contains("2 weights given for 3 photos"));
        assert!(parse_weights(&["1,-2".into()], 2).unwrap_err().message.contains("positive"));
        assert!(parse_weights(&["1,a".into()], 2).unwrap_err().message.contains("numbers"));
    }
}

//! # fms-transformer
//!
//! The transformer service: the operation language ([`ops`], version [`ops::VERSION`], JSON
//! and compact forms, one canonical string per transform — the key of the picker's result
//! cache); the image pipeline ([`image_ops`]: header checked before decoding, decoder
//! limits, EXIF orientation, resize with `fast_image_resize`, crop, rotate, flip/flop, blur,
//! sharpen, grayscale, encode to JPEG / PNG / WebP); text recognition with tesseract
//! ([`ocr`]); streaming `compress` / `decompress` with zstd and gzip ([`codec`]).
//!
//! The gRPC service ([`service`]): `TransformFile` takes the transform in the compact form
//! and the source as a stream, and answers with the result as a stream; work runs on blocking
//! threads, at most one per core (more: refused at once).

pub mod codec;
pub mod fuzz;
pub mod image_ops;
pub mod ocr;
pub mod ops;
pub mod service;

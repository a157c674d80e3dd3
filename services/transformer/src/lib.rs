//! # fms-transformer
//!
//! What the transformer service will run: the operation language ([`ops`], version
//! [`ops::VERSION`], JSON and compact forms, one canonical string per transform — the key of
//! the result cache) and the image pipeline ([`image_ops`]: header checked before decoding,
//! EXIF orientation, resize with `fast_image_resize`, crop, rotate, flip/flop, blur,
//! sharpen, grayscale, encode to JPEG / PNG / lossless WebP).
//!
//! The gRPC service ([`service`]): `TransformFile` takes the transform in the compact form,
//! bounded input, work on blocking threads at most one per core (more: refused at once).
//!
//! Not yet: the picker's jobs (`POST /api/transform/{id}`) and on-the-fly reads, the result
//! cache, OCR, streaming compress/decompress/archive (issue 8 continues).

pub mod image_ops;
pub mod ops;
pub mod service;

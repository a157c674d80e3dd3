//! # fms-transformer
//!
//! What the transformer service will run: the operation language ([`ops`], version
//! [`ops::VERSION`], JSON and compact forms, one canonical string per transform — the key of
//! the result cache) and the image pipeline ([`image_ops`]: header checked before decoding,
//! EXIF orientation, resize with `fast_image_resize`, crop, rotate, flip/flop, blur,
//! sharpen, grayscale, encode to JPEG / PNG / lossless WebP).
//!
//! Not yet: the gRPC service, the picker's jobs and on-the-fly reads, the result cache, OCR,
//! streaming compress/decompress/archive (issue 8 continues).

pub mod image_ops;
pub mod ops;

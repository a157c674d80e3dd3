//! The fms gRPC contracts.
//!
//! One module per versioned package (`fms.<service>.v1`), generated at build time from
//! `proto/fms/**/*.proto`. Errors follow `google.rpc` conventions: see
//! [`common::v1::ErrorReason`].

#![allow(clippy::all, missing_docs)]

/// `fms.common.v1`: shared error reasons.
pub mod common {
    pub mod v1 {
        tonic::include_proto!("fms.common.v1");
    }
}

/// `fms.picker.v1`: the picker's internal API and public bulk API.
pub mod picker {
    pub mod v1 {
        tonic::include_proto!("fms.picker.v1");
    }
}

/// `fms.downloader.v1`: imports from URLs and cloud drives.
pub mod downloader {
    pub mod v1 {
        tonic::include_proto!("fms.downloader.v1");
    }
}

/// `fms.transformer.v1`: image operations and OCR.
pub mod transformer {
    pub mod v1 {
        tonic::include_proto!("fms.transformer.v1");
    }
}

/// `fms.permission.v1`: grants and checks.
pub mod permission {
    pub mod v1 {
        tonic::include_proto!("fms.permission.v1");
    }
}

/// `fms.notification.v1`: events to users.
pub mod notification {
    pub mod v1 {
        tonic::include_proto!("fms.notification.v1");
    }
}

/// Encoded `FileDescriptorSet` of every fms proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/fms_descriptor.bin"));

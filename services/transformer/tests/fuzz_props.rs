//! The fuzz targets' bodies (`fms_transformer::fuzz`) on generated inputs, in every test run:
//! operation-language strings (random and mutated valid ones) and images of every input
//! format with bytes flipped, inserted, cut and dimensions patched. A long run is
//! `cargo fuzz run ops|decode` in `services/transformer/fuzz`.

use std::io::Cursor;

use fms_transformer::fuzz;
use image::{DynamicImage, ImageFormat, RgbImage};
use proptest::prelude::*;

const VALID: &[&str] = &[
    "resize:w=800,fit=cover/output:f=webp",
    "thumbnail:size=200",
    "crop:x=1,y=2,w=3,h=4/rotate:d=90/flip/flop/blur:sigma=1.5/sharpen:s=2/grayscale/output:f=jpeg,q=70",
    "compress:f=gzip,level=9",
    "decompress:f=auto",
    "grayscale/ocr:lang=eng+deu,f=tsv",
];

fn samples() -> Vec<Vec<u8>> {
    let img = RgbImage::from_fn(24, 16, |x, y| {
        image::Rgb([(x * 10) as u8, (y * 15) as u8, 99])
    });
    [
        ImageFormat::Png,
        ImageFormat::Jpeg,
        ImageFormat::Gif,
        ImageFormat::Bmp,
        ImageFormat::Tiff,
        ImageFormat::WebP,
    ]
    .into_iter()
    .map(|f| {
        let mut out = Cursor::new(Vec::new());
        let d = if f == ImageFormat::WebP {
            DynamicImage::ImageRgba8(DynamicImage::ImageRgb8(img.clone()).to_rgba8())
        } else {
            DynamicImage::ImageRgb8(img.clone())
        };
        d.write_to(&mut out, f).unwrap();
        out.into_inner()
    })
    .collect()
}

#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Cut(usize),
    Big(usize, u32),
}

fn apply(mut b: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        if b.is_empty() {
            break;
        }
        match e {
            Edit::Flip(at, x) => {
                let i = at % b.len();
                b[i] ^= x | 1;
            }
            Edit::Insert(at, bytes) => {
                let i = at % b.len();
                b.splice(i..i, bytes.iter().copied());
            }
            Edit::Cut(at) => b.truncate(at % b.len()),
            Edit::Big(at, v) => {
                let i = at % b.len();
                let end = (i + 4).min(b.len());
                b[i..end].copy_from_slice(&v.to_be_bytes()[..end - i]);
            }
        }
    }
    b
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(a, x)| Edit::Flip(a, x)),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..64)
        )
            .prop_map(|(a, v)| Edit::Insert(a, v)),
        any::<usize>().prop_map(Edit::Cut),
        (
            any::<usize>(),
            prop_oneof![
                Just(u32::MAX),
                Just(65_535),
                Just(100_000),
                Just(0),
                any::<u32>()
            ]
        )
            .prop_map(|(a, v)| Edit::Big(a, v)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn operation_language_strings(s in "[a-z:=,/0-9.+_ -]{0,60}") {
        fuzz::ops(s.as_bytes());
    }

    #[test]
    fn mutated_valid_transforms(
        pick in 0..VALID.len(),
        at in any::<usize>(),
        insert in "[a-z:=,/0-9.+-]{0,6}",
        cut in 0usize..8,
    ) {
        let v = VALID[pick];
        let i = at % (v.len() + 1);
        let mut s = v[..i].to_string();
        s.push_str(&insert);
        s.push_str(&v[(i + cut).min(v.len())..]);
        fuzz::ops(s.as_bytes());
    }

    #[test]
    fn json_transforms(op in "[a-z]{0,10}", k in "[a-z]{0,6}", n in any::<i64>(), f in any::<f64>()) {
        let v = format!(r#"{{"operations": [{{"op": "{op}", "{k}": {n}}}, {{"op": "blur", "sigma": {f}}}]}}"#);
        fuzz::ops(v.as_bytes());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn mutated_images(pick in 0usize..6, edits in proptest::collection::vec(edit(), 1..6)) {
        let s = &samples()[pick];
        fuzz::decode(&apply(s.clone(), &edits));
    }

    #[test]
    fn random_bytes(b in proptest::collection::vec(any::<u8>(), 0..2048)) {
        fuzz::decode(&b);
    }
}

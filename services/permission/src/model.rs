//! The vocabulary: rights, sets of rights, ids and page tokens.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::Error;

/// Something a user may do to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Right {
    Read,
    Write,
    Delete,
    Share,
}

impl Right {
    pub const ALL: [Right; 4] = [Right::Read, Right::Write, Right::Delete, Right::Share];

    /// The `relation` column of a tuple granting this right.
    pub fn relation(self) -> &'static str {
        match self {
            Right::Read => "read",
            Right::Write => "write",
            Right::Delete => "delete",
            Right::Share => "share",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Right::Read => READ,
            Right::Write => WRITE,
            Right::Delete => DELETE,
            Right::Share => SHARE,
        }
    }

    /// From the wire enum; `UNSPECIFIED` and unknown numbers are refused.
    pub fn from_proto(value: i32, field: &str) -> Result<Right, Error> {
        use fms_proto::permission::v1::Right as P;
        match P::try_from(value) {
            Ok(P::Read) => Ok(Right::Read),
            Ok(P::Write) => Ok(Right::Write),
            Ok(P::Delete) => Ok(Right::Delete),
            Ok(P::Share) => Ok(Right::Share),
            Ok(P::Unspecified) => Err(Error::invalid(format!("{field}: a right is required"))),
            Err(_) => Err(Error::invalid(format!("{field}: unknown right {value}"))),
        }
    }

    pub fn to_proto(self) -> i32 {
        use fms_proto::permission::v1::Right as P;
        match self {
            Right::Read => P::Read as i32,
            Right::Write => P::Write as i32,
            Right::Delete => P::Delete as i32,
            Right::Share => P::Share as i32,
        }
    }
}

const OWNER: u8 = 1;
const READ: u8 = 2;
const WRITE: u8 = 4;
const DELETE: u8 = 8;
const SHARE: u8 = 16;

/// What one user holds on one object: ownership and granted rights. Small enough to cache
/// by the million.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rights(u8);

impl Rights {
    pub const NONE: Rights = Rights(0);
    pub const OWNER: Rights = Rights(OWNER);

    /// From the `relation` column (unknown relations, from a newer schema, count for nothing).
    pub fn from_relation(relation: &str) -> Rights {
        Rights(match relation {
            "owner" => OWNER,
            "read" => READ,
            "write" => WRITE,
            "delete" => DELETE,
            "share" => SHARE,
            _ => 0,
        })
    }

    /// From a sum of the weights ListAccessible's SQL adds up (owner 1, read 2, write 4,
    /// delete 8, share 16; each relation at most once per subject and object).
    pub fn from_bits(bits: i64) -> Rights {
        Rights((bits & 0x1f) as u8)
    }

    pub fn of(right: Right) -> Rights {
        Rights(right.bit())
    }

    pub fn union(self, other: Rights) -> Rights {
        Rights(self.0 | other.0)
    }

    pub fn is_owner(self) -> bool {
        self.0 & OWNER != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The owner holds every right; anyone else what was granted.
    pub fn allows(self, right: Right) -> bool {
        self.is_owner() || self.0 & right.bit() != 0
    }

    /// Every right held, in enum order.
    pub fn rights(self) -> Vec<Right> {
        Right::ALL.into_iter().filter(|r| self.allows(*r)).collect()
    }
}

/// Longest id accepted (file ids and user ids are UUIDs today; this leaves room).
pub const MAX_ID_LEN: usize = 128;

/// Ids are 1..=128 printable ASCII characters without spaces.
pub fn check_id<'a>(id: &'a str, field: &str) -> Result<&'a str, Error> {
    if id.is_empty() {
        return Err(Error::invalid(format!("{field} must not be empty")));
    }
    if id.len() > MAX_ID_LEN {
        return Err(Error::invalid(format!(
            "{field} is longer than {MAX_ID_LEN} bytes"
        )));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid(format!(
            "{field} must be printable ASCII without spaces"
        )));
    }
    Ok(id)
}

pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Where the next ListAccessible page starts: after `after`, for `right`. Opaque to
/// clients; tampering with it can only move the start of a listing that is filtered by the
/// caller's own grants anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageToken {
    pub right: Right,
    pub after: String,
}

impl PageToken {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("v1:{}:{}", self.right.relation(), self.after))
    }

    pub fn decode(token: &str) -> Result<PageToken, Error> {
        let bad = || Error::invalid("page_token is malformed (pass back next_page_token as is)");
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let mut parts = text.splitn(3, ':');
        let (Some("v1"), Some(relation), Some(after)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let right = Right::ALL
            .into_iter()
            .find(|r| r.relation() == relation)
            .ok_or_else(bad)?;
        check_id(after, "page_token").map_err(|_| bad())?;
        Ok(PageToken {
            right,
            after: after.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_holds_everything_others_what_was_granted() {
        assert!(Right::ALL.iter().all(|r| Rights::OWNER.allows(*r)));
        let r = Rights::of(Right::Read).union(Rights::of(Right::Share));
        assert_eq!(r.rights(), vec![Right::Read, Right::Share]);
        assert!(!r.allows(Right::Write));
        assert!(Rights::NONE.rights().is_empty());
        assert_eq!(
            Rights::from_bits(1 + 4),
            Rights::OWNER.union(Rights::of(Right::Write))
        );
        assert_eq!(Rights::from_relation("viewer"), Rights::NONE);
    }

    #[test]
    fn ids_and_tokens_are_checked() {
        assert!(check_id("", "file_id").is_err());
        assert!(check_id("a b", "file_id").is_err());
        assert!(check_id(&"x".repeat(129), "file_id").is_err());
        assert!(check_id("0190-abc", "file_id").is_ok());
        let t = PageToken {
            right: Right::Write,
            after: "f:1".into(),
        };
        assert_eq!(PageToken::decode(&t.encode()).unwrap(), t);
        for bad in ["", "!!", "djE6cmVhZA", "djI6cmVhZDp4"] {
            assert!(PageToken::decode(bad).is_err(), "{bad}");
        }
    }
}

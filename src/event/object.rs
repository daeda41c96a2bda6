//! `data` read in the same pass as its envelope, only from a JSON object.
//!
//! serde's derive reads a struct from an object or from an array (the
//! fields by position), which no other language writes; warren refuses the
//! array. [`Object`] deserializes its type through [`MapOnly`], which asks
//! the JSON reader for a map where the derive asks for a struct: an array
//! then fails instead of filling the fields in order.

use serde::de::{Deserialize, Deserializer, Visitor};

/// `E`, read only from a JSON object.
pub(crate) struct Object<E>(pub(crate) E);

impl<'de, E: Deserialize<'de>> Deserialize<'de> for Object<E> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        E::deserialize(MapOnly(d)).map(Object)
    }
}

/// A deserializer that reads a struct as a map, and anything else as it is.
struct MapOnly<D>(D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for MapOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::UserLogin;

    #[test]
    fn an_object_is_read_and_an_array_is_refused() {
        let object = r#"{"user_id": 7, "username": "ann", "email": "a@example.com",
            "login_timestamp": "2025-01-20T10:30:00Z", "ip_address": "192.0.2.1"}"#;
        let Object(login) = serde_json::from_str::<Object<UserLogin>>(object).expect("an object");
        assert_eq!(login.user_id, 7);
        // serde's derive alone takes the same fields by position.
        let array = r#"[7, "ann", "a@example.com", "2025-01-20T10:30:00Z", "192.0.2.1"]"#;
        assert!(
            serde_json::from_str::<UserLogin>(array).is_ok(),
            "the derive's own behaviour"
        );
        let refused = serde_json::from_str::<Object<UserLogin>>(array)
            .map(|_| ())
            .unwrap_err();
        assert!(refused.to_string().contains("invalid type: sequence"), "{refused}");
    }
}

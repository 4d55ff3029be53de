//! Canonical JSON written straight from a typed value (anything `Serialize`), without building a
//! `serde_json::Value` first.
//!
//! The bytes are those of [`super::to_canonical_string`] over `serde_json::to_value(v)`: the same
//! scalars, the same member order (RFC 8785's), the same rule for a name given twice (the last
//! value stays). Each object is written where it stands; only an object whose members arrive out
//! of order is copied once to be put in order. What this writer does not reproduce itself (a
//! raw JSON value, a map name that is neither a string nor an integer, objects nested deeper
//! than [`MAX_DEPTH`], every error) goes the `Value` way, so the result never differs from it.

use super::{bytes_sort_as_utf16, name_order, sha256_tagged, write_float, write_string};
use serde::ser::{self, Impossible, Serialize};
use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt::Write as _;

/// The canonical bytes of `value`: exactly those of its `serde_json::Value`.
///
/// # Errors
/// What `serde_json::to_value` says of it: a failing `Serialize`, a number out of range, a map
/// name that is not a string.
pub fn to_canonical_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    match write_checked(value, &mut |_| true) {
        Some(out) => Ok(out.into_bytes()),
        None => serde_json::to_value(value).map(|v| super::to_canonical_string(&v).into_bytes()),
    }
}

/// `sha256:<hex>` over the canonical form of `value`: what [`super::json_digest`] gives for its
/// `serde_json::Value`.
///
/// # Errors
/// As [`to_canonical_bytes`].
pub fn typed_digest<T: Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    to_canonical_bytes(value).map(|b| sha256_tagged(&b))
}

/// The digest of `value` (as [`typed_digest`]) if `pass` holds for every string of its JSON
/// form, member names included, and for every number as written; `None` as soon as one fails,
/// or for a value this writer leaves to the `Value` path. One pass both checks and hashes: a
/// result with nothing to redact is never turned into a `Value`.
pub fn digest_if_every_string_and_number<T: Serialize + ?Sized>(
    value: &T,
    mut pass: impl FnMut(&str) -> bool,
) -> Option<String> {
    write_checked(value, &mut pass).map(|out| sha256_tagged(out.as_bytes()))
}

/// The canonical form of `value`, or `None` if a string or a number failed `check` or the value
/// is one the `Value` path writes.
fn write_checked<T, C>(value: &T, check: &mut C) -> Option<String>
where
    T: Serialize + ?Sized,
    C: FnMut(&str) -> bool,
{
    let mut out = String::new();
    value
        .serialize(Writer {
            out: &mut out,
            check,
            depth: 0,
        })
        .ok()
        .map(|()| out)
}

/// The writer met something it leaves to the `Value` path (or an error, which that path reports
/// in serde_json's words).
#[derive(Debug)]
struct TakeTheValuePath;

impl std::fmt::Display for TakeTheValuePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("written through serde_json::Value instead")
    }
}

impl std::error::Error for TakeTheValuePath {}

impl ser::Error for TakeTheValuePath {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        TakeTheValuePath
    }
}

type Step<T> = Result<T, TakeTheValuePath>;

/// Writes one value at the end of `out`, every string (value or name) first shown to `check`.
struct Writer<'a, C> {
    out: &'a mut String,
    check: &'a mut C,
    /// How many objects this value is inside.
    depth: usize,
}

/// The deepest object this writer puts in order itself. Putting an object in order copies it,
/// and with it every object inside it, so each level copies its whole content once more: past
/// this depth (which results and records do not reach in practice) the `Value` path, which
/// writes every object once, is cheaper, and a hostile upstream's deeply nested answer costs a
/// bounded number of copies.
const MAX_DEPTH: usize = 8;

/// Writes `s` as a JSON string if it passes `check`.
fn string<C: FnMut(&str) -> bool>(out: &mut String, check: &mut C, s: &str) -> Step<()> {
    if !check(s) {
        return Err(TakeTheValuePath);
    }
    write_string(out, s);
    Ok(())
}

/// Checks the number `out` holds from `start` on, as written: digits can carry what a string
/// would (a card number, a numeric secret).
fn number<C: FnMut(&str) -> bool>(out: &str, start: usize, check: &mut C) -> Step<()> {
    match out.get(start..) {
        Some(text) if check(text) => Ok(()),
        _ => Err(TakeTheValuePath),
    }
}

impl<C: FnMut(&str) -> bool> Writer<'_, C> {
    fn integer(self, n: impl std::fmt::Display) -> Step<()> {
        let start = self.out.len();
        let _ = write!(self.out, "{n}");
        number(self.out, start, self.check)
    }

    /// `{"variant":` before a variant's content, which its writer closes with one more `}`.
    fn open_variant(&mut self, variant: &str) -> Step<()> {
        self.out.push('{');
        string(self.out, self.check, variant)?;
        self.out.push(':');
        Ok(())
    }
}

impl<'a, C: FnMut(&str) -> bool> ser::Serializer for Writer<'a, C> {
    type Ok = ();
    type Error = TakeTheValuePath;
    type SerializeSeq = Array<'a, C>;
    type SerializeTuple = Array<'a, C>;
    type SerializeTupleStruct = Array<'a, C>;
    type SerializeTupleVariant = Array<'a, C>;
    type SerializeMap = Object<'a, C>;
    type SerializeStruct = Object<'a, C>;
    type SerializeStructVariant = Object<'a, C>;

    fn serialize_bool(self, v: bool) -> Step<()> {
        self.out.push_str(if v { "true" } else { "false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Step<()> {
        self.integer(v)
    }
    fn serialize_i16(self, v: i16) -> Step<()> {
        self.integer(v)
    }
    fn serialize_i32(self, v: i32) -> Step<()> {
        self.integer(v)
    }
    fn serialize_i64(self, v: i64) -> Step<()> {
        self.integer(v)
    }
    fn serialize_i128(self, v: i128) -> Step<()> {
        // serde_json keeps what fits in 64 bits and refuses the rest.
        if i64::try_from(v).is_ok() || u64::try_from(v).is_ok() {
            self.integer(v)
        } else {
            Err(TakeTheValuePath)
        }
    }
    fn serialize_u8(self, v: u8) -> Step<()> {
        self.integer(v)
    }
    fn serialize_u16(self, v: u16) -> Step<()> {
        self.integer(v)
    }
    fn serialize_u32(self, v: u32) -> Step<()> {
        self.integer(v)
    }
    fn serialize_u64(self, v: u64) -> Step<()> {
        self.integer(v)
    }
    fn serialize_u128(self, v: u128) -> Step<()> {
        if u64::try_from(v).is_ok() {
            self.integer(v)
        } else {
            Err(TakeTheValuePath)
        }
    }
    fn serialize_f32(self, v: f32) -> Step<()> {
        // serde_json widens an f32 to f64 before it is written.
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Step<()> {
        // A value that is not finite has no JSON form: serde_json makes it `null`.
        if v.is_finite() {
            let start = self.out.len();
            write_float(self.out, v);
            number(self.out, start, self.check)
        } else {
            self.out.push_str("null");
            Ok(())
        }
    }
    fn serialize_char(self, v: char) -> Step<()> {
        string(self.out, self.check, v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Step<()> {
        string(self.out, self.check, v)
    }
    fn serialize_bytes(self, v: &[u8]) -> Step<()> {
        // Bytes are an array of numbers.
        self.out.push('[');
        for (i, b) in v.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            let _ = write!(self.out, "{b}");
        }
        self.out.push(']');
        Ok(())
    }
    fn serialize_none(self) -> Step<()> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Step<()> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Step<()> {
        self.out.push_str("null");
        Ok(())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Step<()> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Step<()> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Step<()> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        mut self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Step<()> {
        self.open_variant(variant)?;
        value.serialize(Writer {
            out: self.out,
            check: self.check,
            depth: self.depth,
        })?;
        self.out.push('}');
        Ok(())
    }
    fn serialize_seq(self, _len: Option<usize>) -> Step<Array<'a, C>> {
        Ok(Array::open(self, "]"))
    }
    fn serialize_tuple(self, len: usize) -> Step<Array<'a, C>> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Step<Array<'a, C>> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        mut self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _len: usize,
    ) -> Step<Array<'a, C>> {
        self.open_variant(variant)?;
        Ok(Array::open(self, "]}"))
    }
    fn serialize_map(self, _len: Option<usize>) -> Step<Object<'a, C>> {
        Object::open(self, "}")
    }
    fn serialize_struct(self, name: &'static str, len: usize) -> Step<Object<'a, C>> {
        // serde_json's raw values and exact numbers are structs under private names that its
        // own serializer treats apart.
        if name.starts_with("$serde_json::private::") {
            return Err(TakeTheValuePath);
        }
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        mut self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _len: usize,
    ) -> Step<Object<'a, C>> {
        self.open_variant(variant)?;
        Object::open(self, "}}")
    }
}

/// An array being written: `[`, the items separated by commas, then `close`.
struct Array<'a, C> {
    out: &'a mut String,
    check: &'a mut C,
    depth: usize,
    empty: bool,
    close: &'static str,
}

impl<'a, C: FnMut(&str) -> bool> Array<'a, C> {
    fn open(w: Writer<'a, C>, close: &'static str) -> Self {
        w.out.push('[');
        Array {
            out: w.out,
            check: w.check,
            depth: w.depth,
            empty: true,
            close,
        }
    }

    fn item<T: Serialize + ?Sized>(&mut self, value: &T) -> Step<()> {
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        value.serialize(Writer {
            out: self.out,
            check: self.check,
            depth: self.depth,
        })
    }

    fn close(self) -> Step<()> {
        self.out.push_str(self.close);
        Ok(())
    }
}

/// serde's four kinds of sequence are all written as one array.
macro_rules! array_kind {
    ($($kind:ident :: $add:ident),*) => {$(
        impl<C: FnMut(&str) -> bool> ser::$kind for Array<'_, C> {
            type Ok = ();
            type Error = TakeTheValuePath;
            fn $add<T: Serialize + ?Sized>(&mut self, value: &T) -> Step<()> {
                self.item(value)
            }
            fn end(self) -> Step<()> {
                self.close()
            }
        }
    )*};
}

array_kind!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

/// One member written so far: its name, and where its `"name":value` text lies in the output.
struct Member {
    name: Cow<'static, str>,
    start: usize,
    end: usize,
}

/// An object being written: members go out in the order they come, each `"name":value`; at
/// the end, if that order is not RFC 8785's (or a name came twice), the members are copied
/// once into that order.
struct Object<'a, C> {
    out: &'a mut String,
    check: &'a mut C,
    /// How many objects this one is inside, itself included.
    depth: usize,
    /// Where the object's members begin (just after its `{`).
    base: usize,
    members: Vec<Member>,
    /// A map's name waiting for its value.
    name: Option<Cow<'static, str>>,
    close: &'static str,
}

impl<'a, C: FnMut(&str) -> bool> Object<'a, C> {
    fn open(w: Writer<'a, C>, close: &'static str) -> Step<Self> {
        if w.depth >= MAX_DEPTH {
            return Err(TakeTheValuePath);
        }
        w.out.push('{');
        Ok(Object {
            base: w.out.len(),
            out: w.out,
            check: w.check,
            depth: w.depth + 1,
            members: Vec::new(),
            name: None,
            close,
        })
    }

    fn member<T: Serialize + ?Sized>(&mut self, name: Cow<'static, str>, value: &T) -> Step<()> {
        if !self.members.is_empty() {
            self.out.push(',');
        }
        let start = self.out.len();
        string(self.out, self.check, &name)?;
        self.out.push(':');
        value.serialize(Writer {
            out: self.out,
            check: self.check,
            depth: self.depth,
        })?;
        self.members.push(Member {
            name,
            start,
            end: self.out.len(),
        });
        Ok(())
    }

    fn close(mut self) -> Step<()> {
        let bytewise = self.members.iter().all(|m| bytes_sort_as_utf16(&m.name));
        let order = |a: &str, b: &str| name_order(bytewise, a, b);
        let in_order = self
            .members
            .iter()
            .zip(self.members.iter().skip(1))
            .all(|(a, b)| order(&a.name, &b.name) == Ordering::Less);
        if !in_order {
            self.reorder(order);
        }
        self.out.push_str(self.close);
        Ok(())
    }

    /// Rewrites the members in `order`; of a name given more than once, the last value stays
    /// (as in a `serde_json::Map`).
    fn reorder(&mut self, order: impl Fn(&str, &str) -> Ordering) {
        let written = self.out.split_off(self.base);
        // A stable sort keeps a repeated name's members in the order they came.
        self.members.sort_by(|a, b| order(&a.name, &b.name));
        let mut first = true;
        for (i, m) in self.members.iter().enumerate() {
            if self
                .members
                .get(i + 1)
                .is_some_and(|next| next.name == m.name)
            {
                continue;
            }
            if !first {
                self.out.push(',');
            }
            first = false;
            // Member texts start and end on character boundaries (a `"` and a value's end).
            let text = written.get(m.start - self.base..m.end - self.base);
            self.out.push_str(text.unwrap_or_default());
        }
    }
}

impl<C: FnMut(&str) -> bool> ser::SerializeMap for Object<'_, C> {
    type Ok = ();
    type Error = TakeTheValuePath;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Step<()> {
        self.name = Some(Cow::Owned(key.serialize(Name)?));
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Step<()> {
        let name = self.name.take().ok_or(TakeTheValuePath)?;
        self.member(name, value)
    }
    fn end(self) -> Step<()> {
        self.close()
    }
}

/// A struct and a struct variant's fields are an object's members, named by the field.
macro_rules! struct_kind {
    ($($kind:ident),*) => {$(
        impl<C: FnMut(&str) -> bool> ser::$kind for Object<'_, C> {
            type Ok = ();
            type Error = TakeTheValuePath;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Step<()> {
                self.member(Cow::Borrowed(key), value)
            }
            fn end(self) -> Step<()> {
                self.close()
            }
        }
    )*};
}

struct_kind!(SerializeStruct, SerializeStructVariant);

/// A map's member name: a string, a character, an integer (written in decimal), a unit
/// variant's name, or a newtype around one of those. Anything else goes the `Value` way.
struct Name;

impl Name {
    fn integer(n: impl std::fmt::Display) -> Step<String> {
        Ok(n.to_string())
    }
}

impl ser::Serializer for Name {
    type Ok = String;
    type Error = TakeTheValuePath;
    type SerializeSeq = Impossible<String, TakeTheValuePath>;
    type SerializeTuple = Impossible<String, TakeTheValuePath>;
    type SerializeTupleStruct = Impossible<String, TakeTheValuePath>;
    type SerializeTupleVariant = Impossible<String, TakeTheValuePath>;
    type SerializeMap = Impossible<String, TakeTheValuePath>;
    type SerializeStruct = Impossible<String, TakeTheValuePath>;
    type SerializeStructVariant = Impossible<String, TakeTheValuePath>;

    fn serialize_str(self, v: &str) -> Step<String> {
        Ok(v.to_owned())
    }
    fn serialize_char(self, v: char) -> Step<String> {
        Ok(v.to_string())
    }
    fn serialize_i8(self, v: i8) -> Step<String> {
        Self::integer(v)
    }
    fn serialize_i16(self, v: i16) -> Step<String> {
        Self::integer(v)
    }
    fn serialize_i32(self, v: i32) -> Step<String> {
        Self::integer(v)
    }
    fn serialize_i64(self, v: i64) -> Step<String> {
        Self::integer(v)
    }
    fn serialize_u8(self, v: u8) -> Step<String> {
        Self::integer(v)
    }
    fn serialize_u16(self, v: u16) -> Step<String> {
        Self::integer(v)
    }
    fn serialize_u32(self, v: u32) -> Step<String> {
        Self::integer(v)
    }
    fn serialize_u64(self, v: u64) -> Step<String> {
        Self::integer(v)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Step<String> {
        Ok(variant.to_owned())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Step<String> {
        value.serialize(self)
    }

    // Names serde_json writes in its own way (booleans, floats) or refuses.
    fn serialize_bool(self, _: bool) -> Step<String> {
        Err(TakeTheValuePath)
    }
    fn serialize_f32(self, _: f32) -> Step<String> {
        Err(TakeTheValuePath)
    }
    fn serialize_f64(self, _: f64) -> Step<String> {
        Err(TakeTheValuePath)
    }
    fn serialize_bytes(self, _: &[u8]) -> Step<String> {
        Err(TakeTheValuePath)
    }
    fn serialize_none(self) -> Step<String> {
        Err(TakeTheValuePath)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Step<String> {
        Err(TakeTheValuePath)
    }
    fn serialize_unit(self) -> Step<String> {
        Err(TakeTheValuePath)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Step<String> {
        Err(TakeTheValuePath)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Step<String> {
        Err(TakeTheValuePath)
    }
    fn serialize_seq(self, _: Option<usize>) -> Step<Self::SerializeSeq> {
        Err(TakeTheValuePath)
    }
    fn serialize_tuple(self, _: usize) -> Step<Self::SerializeTuple> {
        Err(TakeTheValuePath)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Step<Self::SerializeTupleStruct> {
        Err(TakeTheValuePath)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Step<Self::SerializeTupleVariant> {
        Err(TakeTheValuePath)
    }
    fn serialize_map(self, _: Option<usize>) -> Step<Self::SerializeMap> {
        Err(TakeTheValuePath)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Step<Self::SerializeStruct> {
        Err(TakeTheValuePath)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Step<Self::SerializeStructVariant> {
        Err(TakeTheValuePath)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Serialize;
    use serde_json::{json, Value};
    use std::collections::{BTreeMap, HashMap};

    /// What the writer must give: the canonical form of serde_json's `Value` of `v`.
    fn through_value<T: Serialize>(v: &T) -> Vec<u8> {
        super::super::to_canonical_string(&serde_json::to_value(v).unwrap()).into_bytes()
    }

    #[derive(Serialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Tagged {
        First {
            zeta: u8,
            alpha: Option<String>,
            nested: Inner,
        },
        Second(Inner),
    }

    #[derive(Serialize)]
    struct Inner {
        b: f64,
        a: Vec<(i32, char)>,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u8>,
        unit: (),
        bytes: serde_bytes_like::Bytes,
    }

    mod serde_bytes_like {
        /// Serialized with `serialize_bytes`, as `serde_bytes` does.
        pub struct Bytes(pub Vec<u8>);
        impl serde::Serialize for Bytes {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }
    }

    #[derive(Serialize)]
    enum External {
        Unit,
        Newtype(u64),
        Tuple(i8, String),
        Struct { y: bool, x: f32 },
    }

    #[derive(Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
    enum Key {
        Left,
    }

    #[derive(Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
    struct Wrapped(i64);

    fn inner() -> Inner {
        Inner {
            b: -0.0,
            a: vec![(-3, '"'), (7, '\u{1F600}')],
            skipped: None,
            unit: (),
            bytes: serde_bytes_like::Bytes(vec![0, 255]),
        }
    }

    #[test]
    fn every_shape_serde_has_is_written_as_its_value_is() {
        let tagged = [
            Tagged::First {
                zeta: 1,
                alpha: None,
                nested: inner(),
            },
            Tagged::Second(inner()),
        ];
        assert_eq!(to_canonical_bytes(&tagged).unwrap(), through_value(&tagged));
        let external = [
            External::Unit,
            External::Newtype(u64::MAX),
            External::Tuple(-1, "t\n".into()),
            External::Struct { y: true, x: 1.5 },
        ];
        assert_eq!(
            to_canonical_bytes(&external).unwrap(),
            through_value(&external)
        );
        let floats = [1.0, 2.5, f64::NAN, f64::INFINITY, 1e21, 1e-7, -0.0];
        assert_eq!(to_canonical_bytes(&floats).unwrap(), through_value(&floats));
        let wide = (i128::from(i64::MIN), u128::from(u64::MAX), 1.25_f32);
        assert_eq!(to_canonical_bytes(&wide).unwrap(), through_value(&wide));
    }

    #[test]
    fn map_names_are_strings_integers_characters_or_unit_variants() {
        let ints: BTreeMap<i32, u8> = [(10, 1), (9, 2), (-1, 3)].into_iter().collect();
        assert_eq!(to_canonical_bytes(&ints).unwrap(), through_value(&ints));
        assert_eq!(
            to_canonical_bytes(&ints).unwrap(),
            br#"{"-1":3,"10":1,"9":2}"#
        );
        let chars: HashMap<char, u8> = [('b', 1), ('a', 2)].into_iter().collect();
        assert_eq!(to_canonical_bytes(&chars).unwrap(), through_value(&chars));
        let variants: BTreeMap<Key, u8> = [(Key::Left, 1)].into_iter().collect();
        assert_eq!(
            to_canonical_bytes(&variants).unwrap(),
            through_value(&variants)
        );
        let newtypes: BTreeMap<Wrapped, u8> = [(Wrapped(5), 1)].into_iter().collect();
        assert_eq!(
            to_canonical_bytes(&newtypes).unwrap(),
            through_value(&newtypes)
        );
        // Booleans go the `Value` way and come out as serde_json writes them.
        let bools: BTreeMap<bool, u8> = [(true, 1), (false, 2)].into_iter().collect();
        assert_eq!(to_canonical_bytes(&bools).unwrap(), through_value(&bools));
    }

    #[test]
    fn a_name_given_twice_keeps_its_last_value_as_a_value_map_does() {
        struct Twice;
        impl Serialize for Twice {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap as _;
                let mut m = s.serialize_map(None)?;
                m.serialize_entry("b", &1)?;
                m.serialize_entry("a", &2)?;
                m.serialize_entry("b", &3)?;
                m.end()
            }
        }
        assert_eq!(to_canonical_bytes(&Twice).unwrap(), br#"{"a":2,"b":3}"#);
        assert_eq!(to_canonical_bytes(&Twice).unwrap(), through_value(&Twice));
    }

    #[test]
    fn errors_are_serde_jsons_own() {
        let too_wide = u128::MAX;
        let direct = to_canonical_bytes(&too_wide).unwrap_err().to_string();
        assert_eq!(
            direct,
            serde_json::to_value(too_wide).unwrap_err().to_string()
        );
        let unnamed: BTreeMap<Vec<u8>, u8> = [(vec![1], 1)].into_iter().collect();
        assert!(to_canonical_bytes(&unnamed).is_err());
    }

    #[test]
    fn the_digest_is_json_digest_of_the_value() {
        let v = json!({"b": [1, 2.5, null], "a": {"y": "\u{E000}", "x": "\u{1F600}"}});
        assert_eq!(typed_digest(&v).unwrap(), super::super::json_digest(&v));
    }

    #[test]
    fn the_checked_digest_sees_every_string_name_and_number() {
        let v = json!({"name": ["value", {"inner": "deep"}], "n": 1});
        let mut seen = Vec::new();
        let digest = digest_if_every_string_and_number(&v, |s| {
            seen.push(s.to_owned());
            true
        });
        assert_eq!(digest, Some(super::super::json_digest(&v)));
        seen.sort();
        assert_eq!(seen, ["1", "deep", "inner", "n", "name", "value"]);
        // One failing string, value or name, anywhere: no digest.
        assert_eq!(digest_if_every_string_and_number(&v, |s| s != "deep"), None);
        assert_eq!(
            digest_if_every_string_and_number(&v, |s| s != "inner"),
            None
        );
        let variants = [External::Tuple(1, "x".into()), External::Unit];
        assert_eq!(
            digest_if_every_string_and_number(&variants, |s| s != "Tuple"),
            None
        );
        assert_eq!(
            digest_if_every_string_and_number(&variants, |s| s != "Unit"),
            None
        );
        assert_eq!(
            digest_if_every_string_and_number(&['c'], |s| s != "c"),
            None
        );
        // Numbers as written: an integer, a float, a number given as a typed field.
        let card = json!({"amount": 12.5, "card": 4_111_111_111_111_111_u64});
        assert_eq!(
            digest_if_every_string_and_number(&card, |s| s != "4111111111111111"),
            None
        );
        assert_eq!(
            digest_if_every_string_and_number(&card, |s| s != "12.5"),
            None
        );
        assert_eq!(
            digest_if_every_string_and_number(&[-7_i32], |s| s != "-7"),
            None
        );
        // What the `Value` path writes is not checked here either.
        assert_eq!(
            digest_if_every_string_and_number(&u128::MAX, |_| true),
            None
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let text = prop_oneof![
            "[a-z\"\\\\]{0,4}",
            "[\u{0}-\u{1f}\u{7f}]{0,2}",
            "[\u{e000}-\u{e002}\u{fff0}-\u{ffff}\u{10000}-\u{10002}]{0,2}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<u64>().prop_map(|u| json!(u)),
            any::<f64>().prop_map(|f| json!(f)),
            text.clone().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(text.clone(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A JSON object whose members are handed to the serializer in the order given, repeated
    /// names included (as a `serde_json::Map` that keeps an upstream's order hands them over).
    #[derive(Debug, Clone)]
    enum Node {
        Leaf(Value),
        Object(Vec<(String, Node)>),
    }

    impl Serialize for Node {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeMap as _;
            match self {
                Node::Leaf(v) => v.serialize(s),
                Node::Object(members) => {
                    let mut m = s.serialize_map(Some(members.len()))?;
                    for (name, value) in members {
                        m.serialize_entry(name, value)?;
                    }
                    m.end()
                }
            }
        }
    }

    fn arb_node() -> impl Strategy<Value = Node> {
        let name = prop_oneof!["[a-c]", "[a-z\"]{0,3}", "[\u{e000}\u{1f600}]"];
        arb_json()
            .prop_map(Node::Leaf)
            .prop_recursive(5, 64, 6, move |inner| {
                prop::collection::vec((name.clone(), inner), 0..6).prop_map(Node::Object)
            })
    }

    /// `depth` objects, each the only member of the one around it.
    fn nested(depth: usize) -> Value {
        (0..depth).fold(json!("core"), |inner, _| json!({ "z": inner, "a": 1 }))
    }

    #[test]
    fn objects_nested_past_the_depth_it_orders_itself_take_the_value_path() {
        for depth in [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 40] {
            let v = nested(depth);
            assert_eq!(
                to_canonical_bytes(&v).unwrap(),
                through_value(&v),
                "{depth}"
            );
            let checked = digest_if_every_string_and_number(&v, |_| true);
            assert_eq!(checked.is_some(), depth <= MAX_DEPTH, "{depth}");
            assert!(checked.is_none_or(|d| d == super::super::json_digest(&v)));
        }
    }

    proptest! {
        #[test]
        fn members_in_any_order_and_repeated_names_come_out_as_their_value_does(n in arb_node()) {
            prop_assert_eq!(to_canonical_bytes(&n).unwrap(), through_value(&n));
        }

        #[test]
        fn a_values_typed_form_is_its_canonical_form(v in arb_json()) {
            prop_assert_eq!(to_canonical_bytes(&v).unwrap(), through_value(&v));
        }

        #[test]
        fn structs_with_members_out_of_order_match_their_values(
            zeta in any::<u8>(),
            alpha in proptest::option::of("[a-z\u{e000}\u{1f600}]{0,3}"),
            b in any::<f64>(),
        ) {
            let t = Tagged::First { zeta, alpha, nested: Inner { b, ..inner() } };
            prop_assert_eq!(to_canonical_bytes(&t).unwrap(), through_value(&t));
        }
    }
}

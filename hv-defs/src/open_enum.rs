//! The `open_enum!` macro: a transparent newtype with associated constants.
//!
//! Guest-visible TLFS enumerations (call codes, register names, status codes) must
//! round-trip values this crate does not know, so they are not Rust `enum`s. An open
//! enum is a `#[repr(transparent)]` newtype over its integer with one associated
//! constant per known value. `Debug` prints the constant's name when it has one and
//! the raw number otherwise.

/// Defines an open enum: a transparent newtype over an integer with associated
/// constants, a `name()` lookup, `Debug`, and conversions from and to the integer.
///
/// ```
/// hv_defs::open_enum! {
///     /// A colour, as a guest might send it.
///     pub struct Colour(u8) {
///         /// Red.
///         RED = 1,
///         /// Green.
///         GREEN = 2,
///     }
/// }
/// assert_eq!(Colour::RED.0, 1);
/// assert_eq!(Colour::from(2), Colour::GREEN);
/// assert_eq!(Colour(7).name(), None);
/// assert_eq!(format!("{:?}", Colour::GREEN), "GREEN");
/// assert_eq!(format!("{:?}", Colour(7)), "Colour(0x7)");
/// ```
#[macro_export]
macro_rules! open_enum {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident($int:ty) {
            $(
                $(#[$cmeta:meta])*
                $cname:ident = $cval:expr,
            )*
        }
    ) => {
        $(#[$meta])*
        #[repr(transparent)]
        #[derive(
            Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default,
            $crate::__zerocopy::FromBytes,
            $crate::__zerocopy::IntoBytes,
            $crate::__zerocopy::Immutable,
            $crate::__zerocopy::KnownLayout,
        )]
        $vis struct $name(pub $int);

        #[allow(clippy::allow_attributes)]
        #[allow(dead_code)]
        impl $name {
            $(
                $(#[$cmeta])*
                pub const $cname: $name = $name($cval);
            )*

            /// Every value this crate knows, in declaration order.
            pub const KNOWN: &'static [$name] = &[$($name::$cname),*];

            /// The constant's name, or `None` for a value this crate does not know.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $(v if v == $cval => Some(stringify!($cname)),)*
                    _ => None,
                }
            }

            /// Whether this value is one of the associated constants.
            pub const fn is_known(self) -> bool {
                self.name().is_some()
            }
        }

        impl ::core::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, concat!(stringify!($name), "({:#x})"), self.0),
                }
            }
        }

        impl ::core::convert::From<$int> for $name {
            fn from(v: $int) -> Self {
                $name(v)
            }
        }

        impl ::core::convert::From<$name> for $int {
            fn from(v: $name) -> Self {
                v.0
            }
        }
    };
}

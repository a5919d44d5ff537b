//! The OpenAPI schemas of the domain's enums the API shows (`domain` knows no wire
//! format): each a string with the values serde writes for it.

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

use crate::domain::{Admit, LineOrder, OrderStatus, SaleStatus, TicketStatus};

macro_rules! string_enum_schema {
    ($ty:ident, $description:literal, [$($variant:ident),+ $(,)?]) => {
        impl utoipa::PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                let values = [$($ty::$variant),+]
                    .map(|v| serde_json::to_value(v).expect("a plain enum serializes"));
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some($description))
                    .enum_values(Some(values))
                    .into()
            }
        }
        impl utoipa::ToSchema for $ty {}
    };
}

string_enum_schema!(
    SaleStatus,
    "Where the sale stands",
    [Scheduled, Live, Paused, SoldOut, Ended]
);
string_enum_schema!(
    OrderStatus,
    "Where the order stands",
    [Pending, Paid, Cancelled, Expired, Failed]
);
string_enum_schema!(
    TicketStatus,
    "Where a ticket in a line stands",
    [Waiting, Decided, Timeout, Closed]
);
string_enum_schema!(
    Admit,
    "How the ticket at the head of a line is admitted (`decide`: the engine decides its purchase)",
    [Decide]
);
string_enum_schema!(
    LineOrder,
    "In which order a line is served (`arrival`: first come, first served)",
    [Arrival]
);

#[cfg(test)]
mod tests {
    use utoipa::PartialSchema;

    use super::*;

    /// A value serde writes is one the schema lists (a variant missing from the macro's
    /// list would be answered but not described).
    #[test]
    fn the_schemas_list_what_serde_writes() {
        let listed = |schema: RefOr<Schema>| serde_json::to_value(schema).unwrap()["enum"].clone();
        assert_eq!(
            listed(SaleStatus::schema()),
            serde_json::json!(["scheduled", "live", "paused", "sold_out", "ended"])
        );
        assert_eq!(
            listed(TicketStatus::schema()),
            serde_json::json!(["waiting", "decided", "timeout", "closed"])
        );
        assert_eq!(
            listed(OrderStatus::schema()),
            serde_json::json!(["pending", "paid", "cancelled", "expired", "failed"])
        );
    }
}

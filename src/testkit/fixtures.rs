//! Builders of sales and orders, with the defaults most tests want:
//!
//! ```ignore
//! let s = sale().stocks(&[5, 1]).limit(2).build();
//! let o = order(&s).id("o1").user("a").quantity(2).key("k").build();
//! ```
//!
//! A sale is made by `NewSale::into_sale` (the API's own checks of name, limit and
//! window), then given the builder's items as they are: the gate's tests use shapes the
//! API refuses (a stock of 0, more items than a sale may have). An order is made by
//! `validate_purchase` and `Order::new`, as the engine makes it.

use std::collections::BTreeMap;

use crate::api::requests;
use crate::domain::{
    DEFAULT_ITEM, Item, Millis, NewSale, Order, OrderStatus, PurchaseRequest, Sale, ValidPurchase,
    validate_purchase,
};

/// A sale: id `sale`, one item `default` of 5 units, 1 per buyer, started at 0 and
/// without an end, paid at once (no payment window), created at 0.
pub fn sale() -> SaleBuilder {
    SaleBuilder {
        id: "sale".into(),
        name: "test".into(),
        items: vec![(DEFAULT_ITEM.into(), 5)],
        per_user_limit: 1,
        starts_at: 0,
        ends_at: None,
        payment_window: 0,
        created_at: 0,
        paused: false,
        shards: 1,
        queue: None,
    }
}

#[derive(Debug, Clone)]
pub struct SaleBuilder {
    id: String,
    name: String,
    items: Vec<(String, u32)>,
    per_user_limit: u32,
    starts_at: Millis,
    ends_at: Option<Millis>,
    payment_window: u32,
    created_at: Millis,
    paused: bool,
    shards: u32,
    queue: Option<requests::NewQueue>,
}

impl SaleBuilder {
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// A fresh random id (tests that share a gate, e.g. Redis).
    pub fn random_id(self) -> Self {
        self.id(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// One item, `default`, of `stock` units.
    pub fn stock(mut self, stock: u32) -> Self {
        self.items = vec![(DEFAULT_ITEM.into(), stock)];
        self
    }

    /// One item per stock, named `I0`, `I1`, …
    pub fn stocks(mut self, stocks: &[u32]) -> Self {
        self.items = stocks
            .iter()
            .enumerate()
            .map(|(i, &stock)| (format!("I{i}"), stock))
            .collect();
        self
    }

    /// Named items and their stocks.
    pub fn items(mut self, items: &[(&str, u32)]) -> Self {
        self.items = items.iter().map(|&(id, s)| (id.into(), s)).collect();
        self
    }

    /// Units one buyer may hold.
    pub fn limit(mut self, per_user_limit: u32) -> Self {
        self.per_user_limit = per_user_limit;
        self
    }

    /// Starts at `starts_at` and ends at `ends_at` (ms).
    pub fn window(mut self, starts_at: Millis, ends_at: Option<Millis>) -> Self {
        self.starts_at = starts_at;
        self.ends_at = ends_at;
        self
    }

    /// Seconds a buyer has to pay (0: paid when placed).
    pub fn payment_window(mut self, seconds: u32) -> Self {
        self.payment_window = seconds;
        self
    }

    pub fn created_at(mut self, at: Millis) -> Self {
        self.created_at = at;
        self
    }

    /// Sub-stocks of the Redis gate.
    pub fn shards(mut self, shards: u32) -> Self {
        self.shards = shards;
        self
    }

    /// Bought through a line (issue #25).
    pub fn queue(mut self, queue: requests::NewQueue) -> Self {
        self.queue = Some(queue);
        self
    }

    pub fn paused(mut self, paused: bool) -> Self {
        self.paused = paused;
        self
    }

    /// What `POST /api/sales` would be sent for this sale (its window included only if
    /// it is not the default).
    pub fn new_sale(&self) -> requests::NewSale {
        let time = |ms: Millis| chrono::DateTime::from_timestamp_millis(ms).expect("a time");
        requests::NewSale {
            name: self.name.clone(),
            stock: match self.items.as_slice() {
                [(id, stock)] if id == DEFAULT_ITEM => Some(*stock),
                _ => None,
            },
            items: match self.items.as_slice() {
                [(id, _)] if id == DEFAULT_ITEM => None,
                items => Some(
                    items
                        .iter()
                        .map(|(id, stock)| requests::NewItem {
                            id: id.clone(),
                            stock: *stock,
                        })
                        .collect(),
                ),
            },
            per_user_limit: Some(self.per_user_limit),
            starts_at: (self.starts_at != 0).then(|| time(self.starts_at)),
            ends_at: self.ends_at.map(time),
            payment_window: Some(self.payment_window),
            rate_limits: None,
            shards: (self.shards != 1).then_some(self.shards),
            queue: self.queue.clone(),
        }
    }

    pub fn build(self) -> Sale {
        let checked = NewSale {
            name: self.name,
            stock: Some(1),
            items: None,
            per_user_limit: Some(self.per_user_limit),
            starts_at: Some(self.starts_at),
            ends_at: self.ends_at,
            payment_window: Some(self.payment_window),
            rate_limits: None,
            shards: Some(self.shards),
            queue: self.queue.map(Into::into),
        };
        let mut sale = checked
            .into_sale(self.id, self.created_at)
            .expect("a sale the builder can make");
        sale.items = self
            .items
            .into_iter()
            .map(|(id, stock)| Item { id, stock })
            .collect();
        sale.paused = self.paused;
        sale
    }
}

/// An order of `sale`: id `o1`, buyer `u`, one unit of its first item, no key, placed at
/// the sale's start; paid or pending as the sale's payment window says.
pub fn order(sale: &Sale) -> OrderBuilder<'_> {
    OrderBuilder {
        sale,
        id: "o1".into(),
        user: "u".into(),
        units: vec![(sale.items[0].id.clone(), 1)],
        key: None,
        at: sale.starts_at,
        status: None,
    }
}

#[derive(Debug, Clone)]
pub struct OrderBuilder<'a> {
    sale: &'a Sale,
    id: String,
    user: String,
    units: Vec<(String, u32)>,
    key: Option<String>,
    at: Millis,
    status: Option<OrderStatus>,
}

impl OrderBuilder<'_> {
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }

    /// Units of the sale's first item.
    pub fn quantity(mut self, units: u32) -> Self {
        self.units = vec![(self.sale.items[0].id.clone(), units)];
        self
    }

    /// Units per item id.
    pub fn items(mut self, items: &[(&str, u32)]) -> Self {
        self.units = items.iter().map(|&(id, n)| (id.into(), n)).collect();
        self
    }

    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// When it was placed (ms).
    pub fn at(mut self, at: Millis) -> Self {
        self.at = at;
        self
    }

    /// A status other than the one `Order::new` gives.
    pub fn status(mut self, status: OrderStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// The purchase request this order answers.
    pub fn request(&self) -> PurchaseRequest {
        PurchaseRequest {
            user_id: self.user.clone(),
            quantity: None,
            items: Some(self.units.iter().cloned().collect::<BTreeMap<_, _>>()),
        }
    }

    /// The checked purchase this order is made of.
    pub fn purchase(&self) -> ValidPurchase {
        validate_purchase(self.sale, self.request()).expect("a valid purchase")
    }

    pub fn build(self) -> Order {
        let purchase = self.purchase();
        let mut order = Order::new(self.id, self.sale, &purchase, self.key, self.at);
        if let Some(status) = self.status {
            order.status = status;
        }
        order
    }
}

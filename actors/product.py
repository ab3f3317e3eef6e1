"""Product(sku): what a SKU is and costs, on every channel, and its reviews.

Prices are integers in minor units (fen, cents) of the deployment's currency; a
channel may have its own price (``channel_prices``), else the base price is its
``effective_price``. A price change is a ``price`` event on the SKU's stream
(shared with its stock), so shelf labels and apps follow it live. Reviews are
one per uid and SKU: a second replaces the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import msgspec

from omnigrid.actors.declaration import (
    ALIAS_QUERY,
    MAX_COUNT,
    Grid,
    Id,
    Input,
    Kind,
    Op,
    Refusal,
    Route,
    Stream,
    View,
    one_call,
)
from omnigrid.actors.entity import Entity, Outcome, intern, newest_first
from omnigrid.actors.order_lists import BOUGHT_SKUS
from omnigrid.actors.protocol import Command
from omnigrid.persistence.events import rfc3339

CURRENCY = "CNY"
MAX_REVIEW_CHARS = 2_000
MAX_REVIEWS_PAGE = 100
PRICE = "product.price"  # query: [base price, channel prices] (None: no product)
INFO = "product.info"  # query: [base price, channel prices, category] (None: no product)
UNKNOWN_PRODUCT = Refusal("unknown_product", 404, "Unknown product")

Price = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT, description="minor units")]
ChannelPrices = dict[Annotated[str, msgspec.Meta(max_length=32)], Price]


class ProductPut(Input):
    title: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    price: Price
    category: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    details: dict[str, Any] | None = None
    channel_prices: ChannelPrices | None = None


class PriceChange(Input):
    price: Price
    channel_prices: ChannelPrices | None = None


class ProductRead(Input):
    channel: Annotated[str, msgspec.Meta(max_length=32)] | None = None


class ReviewPost(Input):
    uid: Id
    rating: Annotated[int, msgspec.Meta(ge=1, le=5)]
    text: Annotated[str, msgspec.Meta(max_length=MAX_REVIEW_CHARS)] = ""
    verified: bool | None = None  # decided: the uid has a paid order of this SKU


class ReviewsPage(Input):
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_REVIEWS_PAGE)] = 20
    cursor: Annotated[int, msgspec.Meta(ge=0)] = 0


class ProductView(View):
    sku: str
    title: str | None
    price: int | None
    currency: str
    channel_prices: dict[str, int]
    effective_price: Annotated[
        int | None, msgspec.Meta(description="the price on the channel read for")
    ]
    category: str | None
    details: dict[str, Any]
    version: int
    updated_at: str | None


class ReviewView(View):
    review_id: str
    uid: str
    rating: int
    text: str
    channel: str
    verified_purchase: bool
    at: str


class ReviewsView(View):
    rating_avg: float | None
    count: int
    reviews: list[ReviewView]
    next_cursor: int | None


@dataclass(slots=True)
class Review:
    rating: int
    text: str
    channel: str
    at: float
    verified: bool


def channel_price(
    price: int | None, channel_prices: dict[str, int], channel: str | None
) -> int | None:
    """What a channel pays: its own price if it has one, else the base price."""
    if channel is not None and channel in channel_prices:
        return channel_prices[channel]
    return price


class Product(Entity):
    __slots__ = ("category", "channel_prices", "details", "price", "reviews", "title")

    kind: ClassVar[str] = "product"

    def __init__(self, key: str, ident: str) -> None:
        super().__init__(key, ident)
        self.title: str | None = None
        self.price: int | None = None
        self.category: str | None = None
        self.details: dict[str, Any] = {}
        self.channel_prices: dict[str, int] = {}
        self.reviews: dict[str, Review] = {}  # uid -> review, oldest first

    def effective_price(self, channel: str | None) -> int | None:
        return channel_price(self.price, self.channel_prices, channel)

    def view(self, channel: str | None = None) -> dict[str, Any]:
        return {
            "sku": self.ident,
            "title": self.title,
            "price": self.price,
            "currency": CURRENCY,
            "channel_prices": dict(self.channel_prices),
            "effective_price": self.effective_price(channel),
            "category": self.category,
            "details": self.details,
            "version": self.version,
            "updated_at": rfc3339(self.updated_at),
        }

    def review_view(self, uid: str) -> dict[str, Any]:
        r = self.reviews[uid]
        return {"review_id": f"{self.ident}:{uid}", "uid": uid, "rating": r.rating,
                "text": r.text, "channel": r.channel, "verified_purchase": r.verified,
                "at": rfc3339(r.at)}  # fmt: skip

    def kind_state(self) -> Any:
        reviews = [
            [u, r.rating, r.text, r.channel, r.at, r.verified] for u, r in self.reviews.items()
        ]
        return [self.title, self.price, self.category, self.details, self.channel_prices, reviews]

    def load_kind_state(self, data: Any) -> None:
        self.title, self.price, self.category, self.details, self.channel_prices, rows = data
        self.reviews = {u: Review(r, t, intern(c), at, v) for u, r, t, c, at, v in rows}

    def _require(self) -> None:
        if not self.exists:
            raise UNKNOWN_PRODUCT(f"SKU {self.ident!r} has no product")

    def get(self, inp: ProductRead, channel: str, now: float) -> Outcome:
        self._require()
        return Outcome(200, self.view(inp.channel or channel), changed=False)

    def put(self, inp: ProductPut, channel: str, now: float) -> Outcome:
        details, prices = inp.details or {}, inp.channel_prices or {}
        new = (inp.title, inp.price, inp.category, details, prices)
        old = (self.title, self.price, self.category, self.details, self.channel_prices)
        changed = new != old or not self.exists
        self.title, self.price, self.category = inp.title, inp.price, inp.category
        self.details, self.channel_prices = details, dict(prices)
        return Outcome(200, None, changed=changed)

    def set_price(self, inp: PriceChange, channel: str, now: float) -> Outcome:
        self._require()
        prices = inp.channel_prices if inp.channel_prices is not None else self.channel_prices
        changed = (inp.price, prices) != (self.price, self.channel_prices)
        self.price, self.channel_prices = inp.price, dict(prices)
        return Outcome(200, None, changed=changed)

    def review(self, inp: ReviewPost, channel: str, now: float) -> Outcome:
        self._require()
        self.reviews.pop(inp.uid, None)  # a second replaces the first, as the newest
        verified = bool(inp.verified)
        self.reviews[inp.uid] = Review(inp.rating, inp.text, intern(channel), now, verified)
        return Outcome(201, self.review_view(inp.uid), changed=True)

    def list_reviews(self, page: ReviewsPage, channel: str, now: float) -> Outcome:
        self._require()
        chosen, next_cursor = newest_first(list(self.reviews), page.cursor, page.limit)
        ratings = [r.rating for r in self.reviews.values()]
        answer = {
            "rating_avg": round(sum(ratings) / len(ratings), 2) if ratings else None,
            "count": len(ratings),
            "reviews": [self.review_view(uid) for uid in chosen],
            "next_cursor": next_cursor,
        }
        return Outcome(200, answer, changed=False)


async def reviewed(grid: Grid, cmd: Command) -> tuple[int, Any]:
    """A review, ``verified_purchase`` when the uid has a paid order of the SKU; a
    merged uid's review is its survivor's (one review per user and SKU)."""
    uid = cmd.args["uid"]
    for _ in range(3):  # a survivor merged in turn: its own survivor
        member, orders = f"member:{uid}", f"user_orders:{uid}"
        found = await grid.query({member: ALIAS_QUERY, orders: BOUGHT_SKUS})
        if found[member] is None:
            break
        uid = found[member]
    cmd.args["uid"] = uid
    cmd.args["verified"] = cmd.key.partition(":")[2] in (found[orders] or ())
    return await one_call(grid, cmd)


KIND = Kind(
    name="product",
    scope="products",
    entity=Product,
    ident="sku",
    view=ProductView,
    ops=(
        Op("product.get", Product.get, ProductRead, read=True),
        Op("product.reviews", Product.list_reviews, ReviewsPage, read=True),
        Op("product.put", Product.put, ProductPut),
        Op("product.set_price", Product.set_price, PriceChange),
        Op("product.review", Product.review, ReviewPost, decided=frozenset({"verified"})),
    ),
    routes=(
        Route(
            "PUT",
            "/v1/products/{sku}",
            "put_product",
            "product.put",
            "Create or replace a product",
            ProductView,
        ),
        Route(
            "GET",
            "/v1/products/{sku}",
            "get_product",
            "product.get",
            "Read a product; effective_price for ?channel=",
            ProductView,
            refusals=("unknown_product",),
            query_fields=("channel",),
            scope="",
        ),
        Route(
            "POST",
            "/v1/products/{sku}/price",
            "set_price",
            "product.set_price",
            "Change a price: a price event on the SKU's stream",
            ProductView,
            refusals=("unknown_product",),
        ),
        Route(
            "POST",
            "/v1/products/{sku}/reviews",
            "post_review",
            "product.review",
            "Review a product (one per uid: a second replaces the first)",
            ReviewView,
            status=201,
            refusals=("unknown_product",),
            flow=reviewed,
            scope="members:write",
        ),
        Route(
            "GET",
            "/v1/products/{sku}/reviews",
            "list_reviews",
            "product.reviews",
            "A product's reviews, newest first",
            ReviewsView,
            refusals=("unknown_product",),
            query_fields=("limit", "cursor"),
            scope="",
        ),
    ),
    queries={
        PRICE: lambda p: [p.price, p.channel_prices],
        INFO: lambda p: [p.price, p.channel_prices, p.category] if p.exists else None,
    },
    stream=Stream(
        "/v1/streams/skus/{sku}",
        "sku_stream",
        "Server-Sent Events: every change to the SKU's stock (resumable with Last-Event-ID)",
    ),
    stream_events={"product.set_price": "price"},
    refusals=(UNKNOWN_PRODUCT,),
)

"""A conversational, stateful suite: a small shop with a cart and orders, several user turns a task.

The session state is live Python objects (a ``Store`` holding ``Product`` objects, a ``Cart`` and
``Order`` objects; ``Suite.snapshot`` gives the checkers a JSON view of them). A task is a
conversation: the user asks, the agent calls tools and answers, the user follows up on the same state
("now check out", "how much is my cart?"), and some turns need no tool at all ("Thanks, that is
all."). The catalog has 11 tools; each task may use only the few its kind needs plus two others
(``Task.tools``), so its prompt lists only those. ``add_items`` is declared as a JSON Schema (an array
of objects with an enum and a minimum) rather than from type hints.

Reward rules (what the reward worker reads):
* SuccCalling: the call parsed, named one of the task's tools, its arguments fit the schema and it ran
  (an unknown product, a quantity over the stock, an unknown order fail).
* Contribution: 1 for a tool step whose call is one of its user turn's expected calls not made before
  in that turn; 0 otherwise (look-ups nobody asked for, repeated or wrong calls).
* Per-turn check (``turn_correct``): 1 if after the turn the cart and the orders equal the expected
  ones, the reply contains the number the user asked for (a price, a total, an order id), and a turn
  that needs no tool made no call; else 0.
* IsSolved: 1 if every user turn passed its check, else 0 (the final answer is the reply to the last
  user turn; a conversation cut by a budget has no IsSolved).
"""

from __future__ import annotations

import json
import random
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

from tools_env.suite import Suite, Task, register_suite
from tools_env.suites.atlas import call_text
from tools_env.tools import ToolError, tool

PRODUCTS = ["tea", "mug", "pen", "book", "lamp", "soap", "rice", "milk", "bread", "jam"]
KINDS = ("buy_total", "buy_checkout", "price_then_buy", "status_cancel", "remove_total")
THANKS = ["Thanks, that is all.", "Great, thank you!", "Perfect, thanks."]
WELCOME = "You are welcome."
NEEDS = {  # the tools each kind of task needs; two more from the catalog are offered as well
    "buy_total": ["add_to_cart", "view_cart"],
    "buy_checkout": ["add_to_cart", "checkout"],
    "price_then_buy": ["get_price", "add_to_cart"],
    "status_cancel": ["order_status", "cancel_order"],
    "remove_total": ["remove_from_cart", "view_cart"],
}
CATALOG = sorted(
    ["add_items", "add_to_cart", "apply_coupon", "cancel_order", "checkout", "get_price", "get_stock",
     "order_status", "remove_from_cart", "track_shipment", "view_cart"]
)  # fmt: skip

ADD_ITEMS_SCHEMA = {
    "type": "function",
    "function": {
        "name": "add_items",
        "description": "Add several products to the cart at once.",
        "parameters": {
            "type": "object",
            "properties": {
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "properties": {
                            "product": {"type": "string", "enum": PRODUCTS},
                            "quantity": {"type": "integer", "minimum": 1},
                        },
                        "required": ["product", "quantity"],
                        "additionalProperties": False,
                    },
                }
            },
            "required": ["items"],
            "additionalProperties": False,
        },
    },
}


@dataclass
class Product:
    name: str
    price: int
    stock: int


@dataclass
class Order:
    order_id: int
    lines: dict[str, int]
    total: int
    status: str = "pending"


@dataclass
class Store:
    """The live state of one session: products, the customer's cart and orders."""

    products: dict[str, Product]
    cart: dict[str, int] = field(default_factory=dict)
    orders: dict[int, Order] = field(default_factory=dict)
    closed: bool = False

    def product(self, name: str) -> Product:
        if name not in self.products:
            raise ToolError(f"no product {name!r}; products: {', '.join(sorted(self.products))}")
        return self.products[name]

    def add(self, name: str, quantity: int) -> None:
        product = self.product(name)
        if quantity <= 0:
            raise ToolError("quantity must be positive")
        if self.cart.get(name, 0) + quantity > product.stock:
            raise ToolError(f"only {product.stock} {name} in stock")
        self.cart[name] = self.cart.get(name, 0) + quantity

    def total(self) -> int:
        return sum(self.products[n].price * q for n, q in self.cart.items())

    def checkout(self) -> Order:
        if not self.cart:
            raise ToolError("the cart is empty")
        order = Order(max(self.orders, default=0) + 1, dict(self.cart), self.total())
        for name, qty in self.cart.items():
            self.products[name].stock -= qty
        self.orders[order.order_id] = order
        self.cart = {}
        return order

    def order(self, order_id: int) -> Order:
        if order_id not in self.orders:
            raise ToolError(f"no order {order_id}")
        return self.orders[order_id]

    def view(self) -> dict[str, Any]:
        """The JSON view the checkers read."""
        return {
            "cart": dict(sorted(self.cart.items())),
            "orders": {str(o.order_id): {"lines": dict(o.lines), "total": o.total, "status": o.status}
                       for o in self.orders.values()},
        }  # fmt: skip


def build_store(meta: dict[str, Any]) -> Store:
    store = Store({n: Product(n, p, s) for n, (p, s) in meta["products"].items()})
    store.cart = dict(meta.get("cart", {}))
    for oid, o in meta.get("orders", {}).items():
        store.orders[int(oid)] = Order(int(oid), dict(o["lines"]), o["total"], o["status"])
    return store


def _turns(kind: str, meta: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    """The user turns of a task: message, expected calls, the number the reply must contain."""
    store = build_store(meta)
    a, b = meta["picks"]
    thanks = {"user": rng.choice(THANKS), "calls": [], "say": None, "reply": WELCOME}
    if kind in ("buy_total", "buy_checkout"):
        q = rng.randint(1, min(3, store.products[a].stock))
        turns = [{"user": f"Add {q} {a} to my cart.", "calls": [("add_to_cart", {"product": a, "quantity": q})],
                  "say": None, "reply": f"Added {q} {a}."}]  # fmt: skip
        store.add(a, q)
        if kind == "buy_total":
            total = store.total()
            turns.append({"user": "How much is my cart?", "calls": [("view_cart", {})], "say": total,
                          "reply": f"Your cart costs {total}."})  # fmt: skip
        else:
            order = store.checkout()
            turns.append({"user": "Please check out.", "calls": [("checkout", {})], "say": order.order_id,
                          "reply": f"Order {order.order_id} placed, total {order.total}."})  # fmt: skip
        return [*turns, thanks]
    if kind == "price_then_buy":
        price = store.products[a].price
        q = rng.randint(1, min(3, store.products[a].stock))
        return [
            {"user": f"What does {a} cost?", "calls": [("get_price", {"product": a})], "say": price,
             "reply": f"{a} costs {price}."},
            {"user": f"Add {q} {a} to my cart.", "calls": [("add_to_cart", {"product": a, "quantity": q})],
             "say": None, "reply": f"Added {q} {a}."},
        ]  # fmt: skip
    if kind == "status_cancel":
        oid = next(iter(meta["orders"]))
        return [
            {"user": f"What is the status of order {oid}?", "calls": [("order_status", {"order_id": int(oid)})],
             "say": "pending", "reply": f"Order {oid} is pending."},
            {"user": f"Please cancel order {oid}.", "calls": [("cancel_order", {"order_id": int(oid)})],
             "say": None, "reply": f"Order {oid} is cancelled."},
            thanks,
        ]  # fmt: skip
    # remove_total: the cart already holds a and b
    store.cart.pop(a)
    total = store.total()
    return [
        {"user": f"Remove the {a} from my cart.", "calls": [("remove_from_cart", {"product": a})], "say": None,
         "reply": f"Removed {a}."},
        {"user": "How much is my cart now?", "calls": [("view_cart", {})], "say": total,
         "reply": f"Your cart costs {total}."},
    ]  # fmt: skip


def _expected_views(task: Task) -> list[dict[str, Any]]:
    """The state view expected after each user turn (the expected calls applied in order)."""
    store = build_store(task.meta)
    suite = ShopSuite()
    views = []
    for turn in task.meta["turns"]:
        for name, args in turn["calls"]:
            getattr(suite, name)({"store": store}, **args)
        views.append(store.view())
    return views


@register_suite("shop")
class ShopSuite(Suite):
    system_prompt = "You are a shop assistant. Use the tools to serve the customer, then reply briefly."

    # ---- state ----------------------------------------------------------------------------
    def initial_state(self, task: Task) -> dict[str, Any]:
        return {"store": build_store(task.meta)}

    def snapshot(self, task: Task, state: dict[str, Any]) -> dict[str, Any]:
        return state["store"].view()

    def close_state(self, task: Task, state: dict[str, Any]) -> None:
        state["store"].closed = True

    # ---- tools ----------------------------------------------------------------------------
    @tool
    def get_price(self, state: dict, product: str) -> str:
        """The price of a product.

        Args:
            product: the product name
        """
        return str(state["store"].product(product).price)

    @tool
    def get_stock(self, state: dict, product: str) -> str:
        """How many of a product are in stock.

        Args:
            product: the product name
        """
        return str(state["store"].product(product).stock)

    @tool
    def add_to_cart(self, state: dict, product: str, quantity: int) -> str:
        """Add a product to the cart.

        Args:
            product: the product name
            quantity: how many
        """
        state["store"].add(product, quantity)
        return f"Added {quantity} {product}."

    @tool(schema=ADD_ITEMS_SCHEMA)
    def add_items(self, state: dict, items: list[dict[str, Any]]) -> str:
        store: Store = state["store"]
        for item in items:
            store.product(item["product"])
        for item in items:
            store.add(item["product"], item["quantity"])
        return f"Added {len(items)} products."

    @tool
    def remove_from_cart(self, state: dict, product: str) -> str:
        """Remove a product from the cart.

        Args:
            product: the product name
        """
        if product not in state["store"].cart:
            raise ToolError(f"{product} is not in the cart")
        del state["store"].cart[product]
        return f"Removed {product}."

    @tool
    def view_cart(self, state: dict) -> str:
        """The cart's contents and total."""
        store: Store = state["store"]
        lines = ", ".join(f"{q} {n}" for n, q in sorted(store.cart.items())) or "empty"
        return f"{lines}; total {store.total()}"

    @tool
    def checkout(self, state: dict) -> str:
        """Buy what is in the cart."""
        order = state["store"].checkout()
        return f"Order {order.order_id} placed, total {order.total}."

    @tool
    def order_status(self, state: dict, order_id: int) -> str:
        """The status of an order.

        Args:
            order_id: the order number
        """
        return state["store"].order(order_id).status

    @tool
    def cancel_order(self, state: dict, order_id: int) -> str:
        """Cancel a pending order.

        Args:
            order_id: the order number
        """
        order = state["store"].order(order_id)
        if order.status != "pending":
            raise ToolError(f"order {order_id} is {order.status}")
        order.status = "cancelled"
        for name, qty in order.lines.items():
            state["store"].products[name].stock += qty
        return f"Order {order_id} cancelled."

    @tool
    def track_shipment(self, state: dict, order_id: int) -> str:
        """Where a shipped order is.

        Args:
            order_id: the order number
        """
        order = state["store"].order(order_id)
        return "not shipped yet" if order.status == "pending" else order.status

    @tool
    def apply_coupon(self, state: dict, code: str) -> str:
        """Apply a coupon code to the cart.

        Args:
            code: the coupon code
        """
        raise ToolError(f"coupon {code!r} is not valid")

    # ---- tasks ----------------------------------------------------------------------------
    def tasks(self, split: str, n: int, seed: int) -> list[Task]:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        rng = random.Random(f"shop-{split}-{seed}")
        out: list[Task] = []
        seen: set[str] = set()
        while len(out) < n:
            kind = rng.choice(KINDS)
            names = rng.sample(PRODUCTS, 4)
            products = {p: [rng.randint(2, 30), rng.randint(3, 9)] for p in names}
            meta: dict[str, Any] = {"kind": kind, "products": products, "picks": names[:2]}
            if kind == "status_cancel":
                oid = rng.randint(1, 9)
                meta["orders"] = {
                    str(oid): {"lines": {names[1]: 1}, "total": products[names[1]][0], "status": "pending"}
                }
            if kind == "remove_total":
                meta["cart"] = {names[0]: 1, names[1]: rng.randint(1, 2)}
            meta["turns"] = json.loads(json.dumps(_turns(kind, meta, rng)))  # JSON: a task travels
            signature = repr(sorted(meta.items()))
            if ("test" if zlib.crc32(signature.encode()) % 5 == 0 else "train") != split or signature in seen:
                continue
            seen.add(signature)
            others = [t for t in CATALOG if t not in NEEDS[kind]]
            tools = sorted(NEEDS[kind] + rng.sample(others, 2))
            turns = meta["turns"]
            out.append(Task(f"shop-{split}-{len(out)}", "shop", turns[0]["user"], turns[-1]["reply"], meta,
                            followups=[t["user"] for t in turns[1:]], tools=tools))  # fmt: skip
        return out

    # ---- rules ----------------------------------------------------------------------------
    def turn_correct(self, task, turn, answer, state, steps) -> float:
        spec = task.meta["turns"][turn]
        if state != _expected_views(task)[turn]:
            return 0.0
        if not spec["calls"] and any(s.get("calls") for s in steps):
            return 0.0  # nothing to do here, and the agent called a tool anyway
        if spec["say"] is not None and str(spec["say"]) not in _words(answer):
            return 0.0
        return 1.0

    def final_answer_correct(self, task, final_answer, state, steps=None) -> float:
        """1 if every user turn passed its check (the replies' snapshots are in ``steps``)."""
        steps = steps or []
        last = len(task.meta["turns"]) - 1
        replies = [s for s in steps if s.get("is_reply")]
        if len(replies) != last:
            return 0.0
        for s in replies:
            turn_steps = [
                x["info"] for x in steps if x["turn"] == s["turn"] and not x["is_reply"] and not x["is_final"]
            ]
            if (
                self.turn_correct(
                    task, s["turn"], s["info"].get("answer"), s["info"].get("turn_state"), turn_steps
                )
                < 1
            ):
                return 0.0
        final_steps = [x["info"] for x in steps if x["turn"] == last and not x["is_final"]]
        return self.turn_correct(task, last, final_answer, state, final_steps)

    def contributions(self, task, steps, final_answer) -> list[float]:
        pending = {t: [[n, a] for n, a in spec["calls"]] for t, spec in enumerate(task.meta["turns"])}
        scores = []
        for step in steps:
            score = 0.0
            todo = pending.get(step.get("turn", 0), [])
            for call in step.get("calls", []):
                entry = [call.get("name"), call.get("arguments")]
                if call.get("ok") and entry in todo:
                    todo.remove(entry)
                    score = 1.0
            scores.append(score)
        return scores

    # ---- demonstrations -------------------------------------------------------------------
    def demonstration(self, task: Task, rng: random.Random, suboptimal_share: float) -> list[dict[str, Any]]:
        """The conversation, each turn's expected calls then its reply; a share of demonstrations
        makes one needless look-up (``view_cart`` or ``get_stock``) before a turn's calls."""
        state = self.initial_state(task)
        flaw_turn = rng.randrange(len(task.meta["turns"])) if rng.random() < suboptimal_share else None
        messages: list[dict[str, Any]] = []
        for t, spec in enumerate(task.meta["turns"]):
            messages.append({"role": "user", "content": spec["user"]})
            calls = [(n, dict(a)) for n, a in spec["calls"]]
            if t == flaw_turn and calls:
                extra = [x for x in ("view_cart", "get_stock") if x in task.tools]
                if extra:
                    name = rng.choice(extra)
                    calls.insert(0, (name, {} if name == "view_cart" else {"product": task.meta["picks"][0]}))
            for name, args in calls:
                messages.append({"role": "assistant", "content": call_text(name, args)})
                try:
                    observation = str(getattr(self, name)(state, **args))
                except ToolError as e:
                    observation = f"Error: {e}"
                messages.append({"role": "tool", "content": observation})
            messages.append({"role": "assistant", "content": spec["reply"]})
        return messages


def _words(text: str | None) -> list[str]:
    return re.findall(r"[a-z0-9]+", (text or "").lower())
